"""Benchmark: what a build costs per core, stage by stage, and how the Ray-parallel download stage behaves
on 1, 2 and 3 local Ray nodes (docs/scale.md turns the figures into a cost model for 400M and 5B pairs).

Three sections, each written into ``benchmarks/results/scale.json`` with the machine it ran on
(``--only`` re-measures some of them and keeps the others from the previous file):

``rates`` (a): per-core rates of every stage. Those the other benchmarks measure well are taken from
their latest result files, each with its source named (crawl MB/s and pairs per CPU-s from crawl.json,
filter captions/s from filter.json, balance from match.json, download images/s from download.json, dedup
lookups/s from search.json, CPU training samples/s from train.json); measured in this run: the bytes per
candidate pair of the crawl's parquet parts (a small WARC and WAT made by ``bench_crawl.generate``, read
by ``crawl_file``) and, from the ``nodes`` runs, download images/s on one 1-CPU Ray node and the bytes
per sample of the shards at 256 px.

``nodes`` (b): the download stage (``run_download``: fetch, decode, pHash, eval match against a 1,000-image
index, resize to 256 px keep_ratio, JPEG q95) on a real multi-node local Ray cluster
(``ray.cluster_utils.Cluster``: a head and worker nodes, each its own raylet with 1 CPU, every process on
127.0.0.1) with 1, 2 and 3 nodes, the same input each time (``bench_download``'s photo-like JPEGs served by
its HTTP server in its own process on 127.0.0.1). Nodes are added and removed on one cluster, in the
order 1,2,3 then 3,2,1 (and so on), so drifts of the shared machine's load hit every size alike; each node's
worker is warmed up (imports) before it is measured. Reported per run: wall time of ``run_download``,
images/s end to end and in the download phase (first shard start to last shard end), CPU seconds of every
process of the cluster and the driver (the HTTP server left out), shards per node; per size the median,
and the ratio to 1 node measured in the same round. **This machine has 2 cores**: the 3rd node (and the
GCS, raylets and driver) share them, so the ratios show the engine's overhead, not a speed-up.

``memory`` (c): peak RSS of each Ray worker process (sampled from /proc every 0.25 s) while the download
stage runs on a fresh 2-node cluster, for ``--memory-images`` (default 500 and 5,000: 10x) URLs at 500
URLs per shard; also the driver's RSS and, from filter.json, the filter process's peak RSS at 500,000
and 5,000,000 rows.

``cost_model``: the per-core rates turned into core-hours, node-hours, cost and wall time for 400M and 5B
candidate pairs, with the assumptions (instance type and price, bytes per image) stated in the JSON.

Ray is shut down (``Cluster.shutdown``) and any process of ours still alive afterwards is killed by pid;
``ray stop`` is never used (it stops every Ray on the machine, other users' too).

    .venv/bin/python benchmarks/bench_scale.py                  # --quick: ~2.5 min (+1 min to make the images once)
    .venv/bin/python benchmarks/bench_scale.py --full           # 6,000 images a run: ~5 min
    .venv/bin/python benchmarks/bench_scale.py --only nodes     # one section, the others kept
"""
from __future__ import annotations

import os

# before ray is imported anywhere: a node's address is then 127.0.0.1 (see pipeline.core.executor.LOCAL_ONLY_ENV)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402
from unittest import mock  # noqa: E402

import bench_download as bd  # noqa: E402  (puts the repository on sys.path)
from benchinfo import machine_info  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RESULT = RESULTS / "scale.json"
WORK = Path("/tmp/wit-bench-scale")
SECTIONS = ("rates", "nodes", "memory")
NOTE_NODES = ("All nodes run on one 2-core machine shared with other jobs: with 2 and 3 nodes of 1 CPU each the "
              "workers, raylets, agents, GCS, driver and HTTP server share the same 2 cores, so these ratios show "
              "the engine's overhead (cpu_ms_per_image: every process of the cluster and the driver per stored "
              "image), not a speed-up. The wall-clock ratio of 2 nodes can exceed 1 only because the 1-node run "
              "leaves part of the second core to the driver and the HTTP server; it swings with the other jobs' "
              "load (see info). A real multi-node cluster was not measured.")

# ---------------------------------------------------------------- cost-model assumptions (not measurements)

PAIRS = {"400M": 400_000_000, "5B": 5_000_000_000}
NODES = (1, 10)
INSTANCE = {
    "type": "AWS c6i.4xlarge (16 vCPU, 32 GiB; the instance img2dataset's laion5B example uses)",
    "vcpus": 16,
    "usd_per_hour": 0.68,
    "price_basis": "on-demand Linux, us-east-1, as AWS listed it in 2024; an assumption, not a quote: check the "
                   "current price",
    "core_equivalence": "one measured core of this machine (a cloud VM's vCPU) counted as one vCPU",
}
PUBLISHED = {
    "img2dataset_single_node": {
        "images_per_s": 1350, "vcpus": 16,
        "source": "img2dataset README (github.com/rom1504/img2dataset, commit 95523bc, 2025-08-16), 'Benchmarks': "
                  "'1350 images/s is the currently observed performance'; dataset_examples/laion400m.md: "
                  "'1300 sample/s ... 3.5 days to download with one 16 cores 2Gbps machine', result 10TB"},
    "laion5b_download": {
        "images": 5_800_000_000, "days": 7, "nodes": 10, "vcpus_per_node": 16, "images_per_s": 9500,
        "source": "img2dataset README, '5B benchmark': 'downloading 5.8B images from the laion5B dataset took 7 "
                  "days (result 240TB), average of 9500 sample/s on 10 machines'; dataset_examples/laion5B.md: "
                  "c6i.4xlarge (16 intel cores), ~1000 sample/s per instance. LAION's blog (laion.ai/blog/laion-5b) "
                  "gives the dataset's size (5.85B pairs), not the download time"},
    "img2dataset_bytes_per_image": {
        "bytes": 130_000,
        "source": "img2dataset README, 'Architecture notes': 'downloading a thousand average image per second "
                  "requires about 130MB/s'"},
}


# ---------------------------------------------------------------- small helpers

def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def rnd(x: float, digits: int = 3) -> float:
    """``x`` to ``digits`` significant digits (for figures derived from measurements)."""
    if x == 0:
        return 0.0
    from math import floor, log10
    return round(x, max(0, digits - 1 - floor(log10(abs(x)))))


def now_info(**extra: Any) -> dict[str, Any]:
    return {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], **extra}


# ---------------------------------------------------------------- (a) per-core rates from the result files

def rates_from_results() -> dict[str, Any]:
    """Per-core rates of every stage from the latest results files, each with its source."""
    crawl = load("crawl.json")
    crawl_rates = {}
    for name, a in crawl["archives"].items():
        best_cpu = min(a["crawl"]["runs_cpu_seconds"])
        crawl_rates["warc" if "warc" in name else "wat"] = {
            "mb_per_cpu_s": a["crawl"]["mb_per_cpu_s"], "pairs_per_cpu_s": round(a["crawl"]["rows"] / best_cpu),
            "archive_bytes_per_pair": round(a["uncompressed_bytes"] / a["crawl"]["rows"]),
            "compressed_bytes_per_pair": round(a["compressed_bytes"] / a["crawl"]["rows"])}
    filt = load("filter.json")
    by_rows = {r["rows"]: r for r in filt["runs"]}
    balance = load("match.json")
    stage = {b["matching"]: b for b in balance["balance_stage"]}
    matching = {m: next(x for x in v["matching"] if x["batch"] == 65536)["median_captions_per_cpu_s"]
                for m, v in balance["modes"].items()}
    dl = load("download.json")["summary"]["ours"]
    search = {(c["index_hashes"], c["radius"]): c for c in load("search.json")["cases"]}
    train = load("train.json")
    return {
        "crawl": {
            "source": "benchmarks/results/crawl.json (archives.*.crawl, best of 3; generated Common Crawl-like "
                      "archives: pairs per MB depend on the pages)",
            **crawl_rates},
        "filter": {
            "source": "benchmarks/results/filter.json (runs: run_filter end to end on one core, web-like mix; "
                      "worst_case_all_distinct_english)",
            "captions_per_cpu_s": by_rows[max(by_rows)]["captions_per_cpu_s"],
            "captions_per_cpu_s_500k_rows": by_rows[min(by_rows)]["captions_per_cpu_s"],
            "captions_per_cpu_s_worst_case": filt["worst_case_all_distinct_english"]["captions_per_cpu_s"],
            "kept_fraction_of_mix": round(by_rows[max(by_rows)]["kept"] / max(by_rows), 3)},
        "balance": {
            "source": "benchmarks/results/match.json (balance_stage: run_balance end to end on 200,000 rows, "
                      "loading 500,000 queries and building the automaton included; modes.*.matching: matching "
                      "alone at batch 65,536)",
            **{f"rows_per_cpu_s_stage_{m}": round(b["rows"] / b["cpu_seconds"]) for m, b in stage.items()},
            **{f"captions_per_cpu_s_matching_{m}": r for m, r in matching.items()},
            **{f"rows_per_cpu_s_two_matching_passes_{m}": r // 2 for m, r in matching.items()},
            "automaton_build_s_words": balance["modes"]["words"]["automaton_build_s"]},
        "download": {
            "source": "benchmarks/results/download.json (summary.ours: run_download on local Ray with 2 cores, "
                      "5,000 photo-like JPEGs from 127.0.0.1, pHash + eval match on, 256 px keep_ratio q95)",
            "images_per_s_per_core_end_to_end": dl["images_per_s_per_core"],
            "images_per_s_per_core_phase": dl["phase_images_per_s_per_core"],
            "cpu_ms_per_image": dl["cpu_ms_per_image"],
            "images_per_cpu_s": round(1000 / dl["cpu_ms_per_image"], 1),
            "mean_bytes_per_image": round(load("download.json")["ceiling"]["mean_jpeg_kib"] * 1024),
            "img2dataset_images_per_s_per_core_same_machine":
                load("download.json")["summary"]["img2dataset"]["images_per_s_per_core"]},
        "dedup": {
            "source": "benchmarks/results/search.json (far queries at radius 8, in calls of 20,000 as a shard "
                      "makes them; 2 lookups per image, 4 with a trimmed border); the download rates above "
                      "already include matching in the workers",
            "lookups_per_cpu_s_100k_hashes": search[(100000, 8)]["far"]["mih_lookups_per_cpu_s_in_batches"],
            "lookups_per_cpu_s_2_7m_hashes": search[(2700000, 8)]["far"]["mih_lookups_per_cpu_s_in_batches"],
            "images_per_cpu_s_100k_eval_images": search[(2700000, 8)]["far"]["mih_lookups_per_cpu_s_in_batches"] // 2},
        "train_cpu": {
            "source": "benchmarks/results/train.json (wit_train: open_clip 'wit-tiny' at 64 px, fp32, CPU, 2 torch "
                      "threads, batch 64); not a figure for real training, which runs on GPUs (not measured)",
            "samples_per_s": train["wit_train"]["samples_per_s_median"],
            "torch_threads": train["machine"].get("torch_threads")},
    }


def parquet_bytes_per_pair(mb: int = 20) -> dict[str, Any]:
    """Bytes per candidate pair of the crawl's parquet parts, from a small generated WARC and WAT."""
    import bench_crawl

    import pipeline.crawl.stage as crawl

    out: dict[str, Any] = {"archive_mb_each": mb,
                           "note": "generated archives (bench_crawl.generate): URLs and captions of generated "
                                   "pages; real Common Crawl URLs and alt texts are longer or shorter"}
    with tempfile.TemporaryDirectory(prefix="wit-scale-crawl-") as tmp:
        folder = Path(tmp)
        bench_crawl.generate(folder, mb)
        for name in ("bench.warc.gz", "bench.wat.gz"):
            part = folder / f"{name}.parquet"
            cpu = time.process_time()
            stats = crawl.crawl_file(str(folder / name), part, crawl.CrawlConfig(progress=False))
            cpu = time.process_time() - cpu
            out["warc" if "warc" in name else "wat"] = {
                "pairs": stats.kept, "parquet_bytes": part.stat().st_size,
                "parquet_bytes_per_pair": round(part.stat().st_size / stats.kept, 1),
                "pairs_per_cpu_s_small_archive": round(stats.kept / cpu)}
    return out


# ---------------------------------------------------------------- processes: CPU and memory from /proc

def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def kind_of(pid: int, cmd: str) -> str:
    if pid == os.getpid():
        return "driver"
    if cmd.startswith("ray::") and not cmd.endswith("Agent"):  # ray::IDLE, ray::download_shard, ...
        return "worker"
    for name in ("DashboardAgent", "RuntimeEnvAgent", "raylet", "gcs_server", "log_monitor", "monitor.py"):
        if name in cmd:
            return name
    return "other"


class Sampler(threading.Thread):
    """Every ``interval`` s: RSS of every process under this one (the HTTP server's tree left out) by kind,
    peak per worker pid, and the largest CPU time seen per pid (for the CPU spent in a run)."""

    def __init__(self, exclude: set[int], interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.exclude, self.interval = exclude, interval
        self.cpu: dict[int, float] = {}
        self.worker_peak_rss: dict[int, int] = {}
        self.worker_peak_pss: dict[int, int] = {}
        self.driver_peak_rss = 0
        self.total_peak_rss = 0
        self.kind_peak_rss: dict[str, int] = {}  # peak of the summed RSS of each kind of process
        self.done = threading.Event()
        self.sample()

    def pids(self) -> list[int]:
        return [p for p in bd._descendants(os.getpid()) if p not in self.exclude]

    def sample(self) -> None:
        total, kinds = 0, {}
        for pid in self.pids():
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), bd.cpu_seconds(pid))
            kind = kind_of(pid, _cmdline(pid))
            pss, rss = bd._memory_kib(pid)
            total += rss
            kinds[kind] = kinds.get(kind, 0) + rss
            if kind == "worker":
                self.worker_peak_rss[pid] = max(self.worker_peak_rss.get(pid, 0), rss)
                self.worker_peak_pss[pid] = max(self.worker_peak_pss.get(pid, 0), pss)
            elif kind == "driver":
                self.driver_peak_rss = max(self.driver_peak_rss, rss)
        self.total_peak_rss = max(self.total_peak_rss, total)
        for kind, rss in kinds.items():
            self.kind_peak_rss[kind] = max(self.kind_peak_rss.get(kind, 0), rss)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.sample()


def tree_cpu(exclude: set[int]) -> dict[int, float]:
    return {p: bd.cpu_seconds(p) for p in bd._descendants(os.getpid()) if p not in exclude}


# ---------------------------------------------------------------- the local cluster

@contextlib.contextmanager
def local_cluster(temp_dir: Path) -> Iterator[Any]:
    """A ``ray.cluster_utils.Cluster`` whose head node has 1 CPU, every process on 127.0.0.1 and no dashboard
    process (``pipeline.core.executor._no_api_server``: its usage module would ask cloud metadata servers),
    the driver connected. Shut down on exit, and any process of ours still alive afterwards killed by pid."""
    import ray
    from ray._private import node as ray_node
    from ray.cluster_utils import Cluster

    from pipeline.core.executor import _no_api_server

    before = set(bd._descendants(os.getpid()))
    cluster = None
    try:
        with mock.patch.object(ray_node.Node, "start_api_server", _no_api_server):
            cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args={
                "num_cpus": 1, "include_dashboard": False, "temp_dir": str(temp_dir),
                "node_ip_address": "127.0.0.1", "object_store_memory": 100 << 20})
        ray.init(address=cluster.address, logging_level="WARNING")
        cluster.nodes = [cluster.head_node]
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()
        time.sleep(1)
        for pid in set(bd._descendants(os.getpid())) - before:  # only processes this cluster started
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def wait_cpus(n: int, timeout: float = 60) -> None:
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [x for x in ray.nodes() if x["Alive"]]
        if len(alive) == n and ray.cluster_resources().get("CPU", 0) == n \
                and ray.available_resources().get("CPU", 0) == n:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the cluster did not reach {n} nodes of 1 CPU: {ray.cluster_resources()}")


def warm(cluster: Any) -> None:
    """One task on every node that imports the download stage, so its worker is started and warm."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=1)
    def imports() -> str:
        import cv2  # noqa: F401

        import pipeline.download.shard  # noqa: F401
        import pipeline.download.stage  # noqa: F401
        return ray.get_runtime_context().get_node_id()

    refs = [imports.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)).remote()
            for node in cluster.nodes]
    ray.get(refs)


def set_nodes(cluster: Any, n: int) -> None:
    """Add or remove worker nodes (1 CPU each, on 127.0.0.1) until the cluster has ``n`` nodes."""
    while len(cluster.nodes) < n:
        cluster.nodes.append(cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1",
                                              object_store_memory=100 << 20))
    while len(cluster.nodes) > n:
        cluster.remove_node(cluster.nodes.pop())
    wait_cpus(n)
    warm(cluster)


def listening_addresses(exclude: set[int]) -> list[str]:
    """Local addresses our processes listen on (TCP), from /proc/net/tcp{,6} and their sockets' inodes."""
    inodes: set[str] = set()
    for pid in bd._descendants(os.getpid()):
        if pid in exclude:
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    found.add(_address(fields[1].split(":")[0]))
    return sorted(found)


def _address(hexaddr: str) -> str:
    import ipaddress

    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


# ---------------------------------------------------------------- one download run

def write_urls(base_url: str, names: list[str], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"url": [f"{base_url}/{n}" for n in names],
                             "caption": [f"a photo number {i}" for i in range(len(names))]}), path)
    return path


def download_once(cluster: Any, urls: Path, index: Path, per_shard: int, exclude: set[int],
                  out: Path) -> dict[str, Any]:
    """``run_download`` of ``urls`` on the cluster as it is: rates, CPU of our processes, memory."""
    from pipeline.download.stage import DownloadConfig, run_download

    shutil.rmtree(out, ignore_errors=True)
    cfg = DownloadConfig(number_sample_per_shard=per_shard, thread_count=bd.THREADS, image_size=256,
                         resize_mode="keep_ratio", encode_quality=95, allowed_networks=("127.0.0.1/32",),
                         keep_columns=(), ray_address=cluster.address)
    cpu_before = tree_cpu(exclude)
    sampler = Sampler(exclude)
    sampler.start()
    start = time.perf_counter()
    stats = run_download(urls, out / "shards", cfg, {"bench": index}, out / "overlap")
    wall = time.perf_counter() - start
    sampler.stop()
    cpu = sum(c - cpu_before.get(p, 0.0) for p, c in sampler.cpu.items())
    phase = bd.shard_phase(out / "shards")
    shard_stats = [json.loads(p.read_text()) for p in (out / "shards").glob("0*_stats.json")]
    per_node: dict[str, int] = {}
    for s in shard_stats:
        per_node[s.get("node", "")] = per_node.get(s.get("node", ""), 0) + 1
    tars = list((out / "shards").glob("*.tar"))
    metas = list((out / "shards").glob("[0-9]*.parquet"))
    result = {"urls": phase["urls"], "samples": phase["samples"], "wall_s": round(wall, 2),
              "images_per_s": round(phase["samples"] / wall, 1), "phase_s": phase["phase_s"],
              "phase_images_per_s": phase["phase_images_per_s"], "cpu_s": round(cpu, 1),
              "cpu_ms_per_image": round(1000 * cpu / max(1, phase["samples"]), 2),
              "shards_per_node": sorted(per_node.values(), reverse=True),
              "shard_tar_bytes_per_sample": round(sum(p.stat().st_size for p in tars) / max(1, phase["samples"])),
              "shard_parquet_bytes_per_url": round(sum(p.stat().st_size for p in metas) / max(1, phase["urls"]), 1),
              "eval_duplicates": stats.extra["eval_duplicates"]["bench"],
              "worker_peak_rss_mib": sorted((round(v / 1024) for v in sampler.worker_peak_rss.values()), reverse=True),
              "worker_peak_pss_mib": sorted((round(v / 1024) for v in sampler.worker_peak_pss.values()), reverse=True),
              "driver_peak_rss_mib": round(sampler.driver_peak_rss / 1024),
              "all_processes_peak_rss_mib": round(sampler.total_peak_rss / 1024),
              "peak_rss_mib_by_kind": {k: round(v / 1024) for k, v in sorted(sampler.kind_peak_rss.items())}}
    shutil.rmtree(out, ignore_errors=True)
    return result


# ---------------------------------------------------------------- (b) 1, 2, 3 nodes

def measure_nodes(names: list[str], index: Path, base_url: str, server_pids: set[int], images: int,
                  per_shard: int, rounds: int, sizes: tuple[int, ...] = (1, 2, 3)) -> dict[str, Any]:
    urls = write_urls(base_url, names[:images], WORK / "urls" / f"nodes-{images}.parquet")
    warmup = write_urls(base_url, names[-per_shard:], WORK / "urls" / "warmup.parquet")
    runs: list[dict[str, Any]] = []
    temp_dir = Path(tempfile.mkdtemp(prefix="wit-scale-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        with local_cluster(temp_dir) as cluster:
            set_nodes(cluster, 1)
            download_once(cluster, warmup, index, per_shard, server_pids, WORK / "out")  # driver-side imports
            listening = listening_addresses(server_pids)
            for r in range(rounds):
                order = sizes if r % 2 == 0 else tuple(reversed(sizes))
                for n in order:
                    set_nodes(cluster, n)
                    run = {"round": r, "nodes": n, **download_once(cluster, urls, index, per_shard, server_pids,
                                                                   WORK / "out")}
                    runs.append(run)
                    print(json.dumps(run), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    summary: dict[str, Any] = {}
    for n in sizes:
        mine = [x for x in runs if x["nodes"] == n]
        summary[str(n)] = {k: statistics.median(x[k] for x in mine)
                           for k in ("images_per_s", "phase_images_per_s", "wall_s", "cpu_s", "cpu_ms_per_image")}
        summary[str(n)]["shards_per_node"] = mine[-1]["shards_per_node"]
        summary[str(n)]["worker_peak_rss_mib"] = max(max(x["worker_peak_rss_mib"]) for x in mine)
        summary[str(n)]["per_node_services_rss_mib"] = round(statistics.median(  # raylet + its two agents
            sum(x["peak_rss_mib_by_kind"].get(k, 0) for k in ("raylet", "DashboardAgent", "RuntimeEnvAgent")) / n
            for x in mine))
        summary[str(n)]["all_processes_peak_rss_mib"] = max(x["all_processes_peak_rss_mib"] for x in mine)
        ratios = []
        for x in mine:
            one = next(y for y in runs if y["nodes"] == sizes[0] and y["round"] == x["round"])
            ratios.append({k: x[k] / one[k] for k in ("images_per_s", "phase_images_per_s", "cpu_ms_per_image")})
        summary[str(n)]["ratio_to_1_node"] = {k: round(statistics.median(r[k] for r in ratios), 3)
                                              for k in ratios[0]}
    return {"images": images, "urls_per_shard": per_shard, "rounds": rounds, "note": NOTE_NODES,
            "cluster": "ray.cluster_utils.Cluster: head + worker nodes, each its own raylet with num_cpus=1 and a "
                       "100 MiB object store, node_ip_address 127.0.0.1, no dashboard process; driver = this process",
            "listening_addresses": listening, "summary": summary, "runs": runs}


# ---------------------------------------------------------------- (c) worker memory as the input grows

def measure_memory(names: list[str], index: Path, base_url: str, server_pids: set[int], sizes: list[int],
                   per_shard: int = 500, nodes: int = 2) -> dict[str, Any]:
    runs = []
    for n in sizes:
        urls = write_urls(base_url, names[:n], WORK / "urls" / f"memory-{n}.parquet")
        temp_dir = Path(tempfile.mkdtemp(prefix="wit-scale-", dir="/tmp"))
        try:
            with local_cluster(temp_dir) as cluster:  # a fresh cluster per size: no worker carries over
                set_nodes(cluster, nodes)
                run = {"images": n, **download_once(cluster, urls, index, per_shard, server_pids, WORK / "out")}
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
        runs.append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    small, large = runs[0], runs[-1]
    worker = {r["images"]: max(r["worker_peak_rss_mib"]) for r in runs}
    filt = {r["rows"]: r["peak_rss_mib"] for r in load("filter.json")["runs"]}
    return {
        "download_workers": {
            "nodes": nodes, "cpus_per_node": 1, "urls_per_shard": per_shard,
            "peak_rss_mib_of_busiest_worker": {str(k): v for k, v in worker.items()},
            "ratio_large_to_small": round(worker[large["images"]] / worker[small["images"]], 3),
            "input_ratio": large["images"] / small["images"],
            "driver_peak_rss_mib": {str(r["images"]): r["driver_peak_rss_mib"] for r in runs},
            "note": "RSS of each Ray worker process (cmdline 'ray::...'), sampled every 0.25 s; a worker holds one "
                    "shard at a time (URLs per shard fixed), so its memory should not follow the input's size",
            "runs": runs},
        "filter_process": {
            "source": "benchmarks/results/filter.json (runs: run_filter in a fresh process, ru_maxrss)",
            "peak_rss_mib": {str(k): v for k, v in sorted(filt.items())},
            "ratio_large_to_small": round(filt[max(filt)] / filt[min(filt)], 3),
            "input_ratio": max(filt) / min(filt)},
    }


# ---------------------------------------------------------------- cost model

def cost_model(rates: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """Core-hours per stage for each pair count (every stage charged for every candidate pair: an upper
    bound, later stages see only what earlier ones keep), node-hours and cost on the assumed instance, wall
    time on 1 and 10 nodes (every stage's parts are Ray tasks: wall time = node-hours / nodes, the reduce steps
    on the driver left out), bandwidth and storage."""
    vcpus, price = INSTANCE["vcpus"], INSTANCE["usd_per_hour"]
    dl = rates["download"]
    bytes_per_image = dl["mean_bytes_per_image"]
    shards_per_sample = measured.get("shard_tar_bytes_per_sample")
    parquet_per_pair = measured.get("candidates_parquet_bytes_per_pair")
    stage_rates = {  # per core-second; which figure, and whether Ray spreads the stage over nodes
        "crawl (WAT)": (rates["crawl"]["wat"]["pairs_per_cpu_s"], True),
        "crawl (WARC)": (rates["crawl"]["warc"]["pairs_per_cpu_s"], True),
        "filter": (rates["filter"]["captions_per_cpu_s"], True),
        "balance": (rates["balance"]["rows_per_cpu_s_stage_words"], True),
        "download (incl. pHash + eval match)": (dl["images_per_s_per_core_end_to_end"], True),
    }
    steady = measured.get("download_one_node", {}).get("cpu_ms_per_image_all_processes")
    if steady:  # warm workers, CPU time of every process of the cluster and the driver: the optimistic bound
        stage_rates["download, steady state (optimistic)"] = (round(1000 / steady, 1), True)
    out: dict[str, Any] = {"instance": INSTANCE, "assumptions": [
        "every stage is charged for every candidate pair (upper bound: the filter kept 54 % of the benchmark's "
        "mix, and only balanced pairs are downloaded)",
        "download rate: images/s per core end to end from 127.0.0.1 (download.json, Ray and worker start-up "
        "included, loaded machine); 'steady state' = 1000 / CPU ms per image of this benchmark's warm 1-node runs "
        "(every process of the cluster and the driver counted). Both over plain HTTP from 127.0.0.1: no DNS, TLS, "
        "latency, failed or slow hosts, synthetic ~76 KiB JPEGs; the real web costs more CPU per stored image",
        "crawl: the WAT figure is the stage's rate on WAT files (the usual input); WARC shown for comparison; "
        "reading archives from object storage not measured",
        "filter and balance run their parts as Ray tasks (the filter's exact-duplicate shuffle: a map and a reduce "
        "task per part and bucket; balance: per-part counts, a sum on the driver, per-part decisions): wall time "
        "= node-hours / nodes. Their per-core rates were measured in one process; the shuffle's extra pass over "
        "the (url, caption) keys and the small objects it writes to a store are not measured",
        f"a node = {INSTANCE['type']}; 1 measured core = 1 vCPU; price {price} USD/h ({INSTANCE['price_basis']})",
        f"bytes per downloaded image: {bytes_per_image} (the benchmark's mean JPEG); img2dataset's README "
        "implies ~130 KB for web images"], "pairs": {}}
    for label, pairs in PAIRS.items():
        stages = {}
        for stage, (rate, parallel) in stage_rates.items():
            core_h = pairs / rate / 3600
            node_h = core_h / vcpus
            stages[stage] = {"rate_per_core_s": rate, "core_hours": rnd(core_h), "node_hours": rnd(node_h),
                             "usd": rnd(node_h * price), "ray_parallel": parallel,
                             **{f"wall_hours_{n}_nodes": rnd(node_h / n if parallel else core_h) for n in NODES}}
        dl_row = stages["download (incl. pHash + eval match)"]
        node_rate = dl["images_per_s_per_core_end_to_end"] * vcpus
        main_path = [k for k in stages if k != "crawl (WARC)" and "optimistic" not in k]
        total_h = {n: sum(stages[k][f"wall_hours_{n}_nodes"] for k in main_path) for n in NODES}
        out["pairs"][label] = {
            "pairs": pairs, "stages": stages,
            "main_path": main_path,
            "total_usd_main_path": rnd(sum(stages[k]["usd"] for k in main_path)),
            **{f"total_wall_hours_{n}_nodes_main_path": rnd(total_h[n]) for n in NODES},
            "download_bytes_tb": rnd(pairs * bytes_per_image / 1e12),
            "download_bytes_tb_at_130kb": rnd(pairs * 130_000 / 1e12),
            "download_gbit_per_s_per_node": rnd(node_rate * bytes_per_image * 8 / 1e9),
            "download_gbit_per_s_per_node_at_130kb": rnd(node_rate * 130_000 * 8 / 1e9),
            "download_images_per_s_per_node": rnd(node_rate),
            "shards_tb_256px": rnd(pairs * shards_per_sample / 1e12) if shards_per_sample else None,
            "candidates_parquet_tb": rnd(pairs * parquet_per_pair / 1e12) if parquet_per_pair else None,
            "shard_parquet_tb": rnd(pairs * measured["shard_parquet_bytes_per_url"] / 1e12)
            if measured.get("shard_parquet_bytes_per_url") else None,
            "download_usd": dl_row["usd"],
        }
    i2d, laion = PUBLISHED["img2dataset_single_node"], PUBLISHED["laion5b_download"]
    out["published"] = PUBLISHED
    out["per_core_comparison"] = {
        "ours_images_per_s_per_core_localhost": dl["images_per_s_per_core_end_to_end"],
        "img2dataset_images_per_s_per_core_localhost_same_machine": dl["img2dataset_images_per_s_per_core_same_machine"],
        "img2dataset_published_images_per_s_per_vcpu_web": rnd(i2d["images_per_s"] / i2d["vcpus"]),
        "laion5b_published_images_per_s_per_vcpu_web": rnd(laion["images_per_s"] / (laion["nodes"] * laion["vcpus_per_node"])),
        "laion5b_check_images_per_s": rnd(laion["images"] / (laion["days"] * 86400)),
        "ours_5_8b_on_10_nodes_days_localhost_rate": rnd(
            laion["images"] / (dl["images_per_s_per_core_end_to_end"] * vcpus * laion["nodes"]) / 86400),
        "web_factor_img2dataset": rnd(i2d["images_per_s"] / i2d["vcpus"] / dl["img2dataset_images_per_s_per_core_same_machine"]),
        "note": "published figures are real web downloads (DNS, latency, failures) on other CPUs; ours are from "
                "127.0.0.1 on this machine. web_factor_img2dataset = img2dataset's published per-vCPU rate on the "
                "web / its per-core rate here on 127.0.0.1 (different CPUs: a rough guide only)",
    }
    return out


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the default: 2,400 images x 3 rounds, 500 vs 5,000")
    mode.add_argument("--full", action="store_true", help="6,000 images x 3 rounds, 500 vs 5,000")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"sections to measure: {','.join(SECTIONS)} (empty: recompute the cost model only)")
    parser.add_argument("--memory-images", default="500,5000", help="URL counts of the memory runs")
    parser.add_argument("--images", type=int, help="URLs of each 1/2/3-node run (overrides the mode's)")
    parser.add_argument("--per-shard", type=int, help="URLs per shard in the 1/2/3-node runs")
    parser.add_argument("--rounds", type=int, help="rounds of 1/2/3-node runs")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    if unknown := set(only) - set(SECTIONS):
        parser.error(f"unknown sections: {sorted(unknown)}")
    images, per_shard, rounds = (6000, 500, 3) if args.full else (2400, 200, 3)
    images, per_shard, rounds = args.images or images, args.per_shard or per_shard, args.rounds or rounds
    memory_sizes = [int(x) for x in args.memory_images.split(",")]

    from pipeline.core.env import set_quiet_env

    set_quiet_env()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    os.environ.pop("RAY_ADDRESS", None)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report: dict[str, Any] = {"benchmark": "scale: per-core rates, download on 1/2/3 local Ray nodes, worker memory",
                              "machine": machine_info(("ray", "pyarrow", "numpy", "opencv-python-headless")),
                              "mode": "full" if args.full else "quick", "measured_sections": only}
    for section in SECTIONS + ("measured_here",):
        if section in previous and section not in only:
            report[section] = previous[section]
    report["rates"] = rates_from_results() | {"info": now_info()}
    if not only and previous:  # nothing measured: the machine and sections of the last measuring run stay
        report["machine"], report["measured_sections"] = previous["machine"], previous["measured_sections"]

    measured = dict(previous.get("measured_here", {}))
    if "rates" in only:
        t = time.time()
        measured["candidates_parquet"] = parquet_bytes_per_pair()
        measured["candidates_parquet"]["seconds"] = round(time.time() - t, 1)
    if {"nodes", "memory"} & set(only):
        t = time.time()
        names = bd.generate(max(images, max(memory_sizes)) + per_shard)
        index = bd.make_eval(names)
        print(f"data ready in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
        server = subprocess.Popen([sys.executable, bd.__file__, "--serve", str(bd.WORK / "web")],
                                  stdout=subprocess.PIPE, text=True)
        try:
            base_url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
            server_pids = set(bd._descendants(server.pid))
            if "nodes" in only:
                info = now_info()
                report["nodes"] = measure_nodes(names, index, base_url, server_pids, images, per_shard, rounds)
                report["nodes"]["info"] = info | {"load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
            if "memory" in only:
                info = now_info()
                report["memory"] = measure_memory(names, index, base_url, server_pids, memory_sizes)
                report["memory"]["info"] = info | {"load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
        finally:
            server.terminate()
            server.wait()
    if "nodes" in report:
        one = [r for r in report["nodes"]["runs"] if r["nodes"] == 1]
        measured["download_one_node"] = {
            "source": "this benchmark's 1-node runs (one Ray node with num_cpus=1; driver, GCS, raylet and the HTTP "
                      "server on the machine's other core)",
            "images_per_s": statistics.median(r["images_per_s"] for r in one),
            "phase_images_per_s": statistics.median(r["phase_images_per_s"] for r in one),
            "cpu_ms_per_image_all_processes": statistics.median(r["cpu_ms_per_image"] for r in one)}
        runs = report["nodes"]["runs"]
        measured["shard_tar_bytes_per_sample"] = round(statistics.median(r["shard_tar_bytes_per_sample"] for r in runs))
        measured["shard_parquet_bytes_per_url"] = statistics.median(r["shard_parquet_bytes_per_url"] for r in runs)
    if "candidates_parquet" in measured:
        cp = measured["candidates_parquet"]
        measured["candidates_parquet_bytes_per_pair"] = cp["wat"]["parquet_bytes_per_pair"]
    report["measured_here"] = measured
    report["cost_model"] = cost_model(report["rates"], measured)
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("measured_here",)}, indent=2))
    if "nodes" in report:
        print(json.dumps(report["nodes"]["summary"], indent=2))
    if "memory" in report:
        print(json.dumps({k: v for k, v in report["memory"]["download_workers"].items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
