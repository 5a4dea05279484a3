"""Benchmark: the download stage (with pHash and eval dedup) against standalone img2dataset, same URLs.

Setup, all on this machine: ``--images`` JPEGs (default 5,000; 300-1000 px per side, photo-like content:
smooth shapes, texture and sensor noise, quality 80-92, about 2 bits per pixel) generated once into
``/tmp/wit-bench-download/``; an eval set of 1,000 images, 40 of them downscaled copies of served images,
indexed with ``dedup.index``; a threaded HTTP/1.1 server (``ThreadingHTTPServer``, TCP_NODELAY, keep-alive
when the client wants it) in a separate process on 127.0.0.1 serving the files.

Runs, interleaved round by round so both see the same machine load (this machine is shared):
``ours`` (``run_download``: local Ray, fetch + decode once + pHash + eval match + resize + encode),
optionally ``ours_full_decode`` (``fast_decode=False``), and ``img2dataset`` (its CLI, multiprocessing
distributor), all with the same cores (``processes_count``), 64 threads, image_size 256 keep_ratio,
jpg quality 95, sha256, no exif, 500 URLs per shard, webdataset output. Each run is a fresh process tree.

Reported per run: wall time and images/s end to end (process start to exit, startup included), images/s of
the download phase (first shard start to last shard end, from the shards' ``_stats.json``), CPU seconds of
the process tree and of the server, peak memory of the process tree (sum of PSS and of RSS over all its
processes, sampled every 0.5 s), samples written. Also the decode+resize ceiling (one process: cv2 decode,
INTER_AREA resize to 256, jpg encode, from memory) and our per-image pipeline in one process.
Writes ``benchmarks/results/download.json``.

    .venv/bin/python benchmarks/bench_download.py [--images 5000] [--rounds 2] [--variants ours,img2dataset]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchinfo import machine_info

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULT = REPO / "benchmarks" / "results" / "download.json"
WORK = Path("/tmp/wit-bench-download")
PY = sys.executable
SHARD = 500
THREADS = 64
N_EVAL, N_PLANTED = 1000, 40

OURS_SCRIPT = """
import json, sys
from pipeline.download.stage import DownloadConfig, run_download
cfg = DownloadConfig(processes_count={cores}, number_sample_per_shard={shard}, thread_count={threads}, image_size=256,
                     resize_mode="keep_ratio", encode_quality=95, allowed_networks=("127.0.0.1/32",),
                     fast_decode={fast}, keep_columns=())
stats = run_download(sys.argv[1], sys.argv[2], cfg, {{"bench": sys.argv[3]}}, sys.argv[4])
print(json.dumps(stats.to_dict()))
"""


# ---------------------------------------------------------------- data

def _photo(args: tuple[int, Path]) -> int:
    """One photo-like JPEG: smooth colour field, a few soft-edged shapes, texture and sensor noise."""
    import cv2
    import numpy as np

    seed, path = args
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(300, 1001, 2))
    img = cv2.resize(rng.integers(0, 256, (rng.integers(3, 8), rng.integers(3, 8), 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(3, 9))):
        color = rng.integers(0, 256, 3).tolist()
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, center, int(rng.integers(20, max(21, min(w, h) // 2))), color, -1, cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), 2.0)
    texture = cv2.resize(rng.integers(-24, 25, (h // 6 + 1, w // 6 + 1), dtype=np.int16), (w, h),
                         interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
    img = np.clip(img.astype(np.int16) + texture[..., None] + noise, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(80, 93))])
    path.write_bytes(buf.tobytes())
    return len(buf)


def generate(n: int) -> list[str]:
    """``n`` photo-like JPEGs in WORK/web (reused when already there)."""
    web = WORK / "web"
    names = [f"{i:06d}.jpg" for i in range(n)]
    missing = [(i, web / name) for i, name in enumerate(names) if not (web / name).is_file()]
    if missing:
        web.mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(_photo, missing, chunksize=32))
    return names


def make_eval(names: list[str]) -> Path:
    """An ImageFolder of N_EVAL images, N_PLANTED of them 128-px copies of served images, and its index."""
    from PIL import Image

    from dedup.index import build_eval_index

    index = WORK / "eval_index" / "bench"
    if (index / "index.parquet").is_file():
        return index
    root = WORK / "eval_images"
    shutil.rmtree(root, ignore_errors=True)
    (root / "planted").mkdir(parents=True)
    (root / "other").mkdir()
    step = len(names) // N_PLANTED
    for k in range(N_PLANTED):
        with Image.open(WORK / "web" / names[k * step]) as img:
            img.convert("RGB").resize((128, 128)).save(root / "planted" / f"{k}.jpg", quality=90)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_photo, [(10**6 + i, root / "other" / f"{i}.jpg") for i in range(N_EVAL - N_PLANTED)]))
    build_eval_index("bench", root, WORK / "eval_index")
    return index


def url_list(base_url: str, names: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = WORK / "urls" / "urls.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"url": [f"{base_url}/{n}" for n in names],
                             "caption": [f"a photo number {i}" for i in range(len(names))]}), path)
    return path


# ---------------------------------------------------------------- server (separate process)

def serve(folder: str) -> None:
    root = Path(folder)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802
            try:
                body = (root / self.path.lstrip("/")).read_bytes()
            except OSError:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024

    httpd = Server(("127.0.0.1", 0), Handler)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


# ---------------------------------------------------------------- measuring a process tree

def _proc_table() -> dict[int, int]:
    """pid -> ppid of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    table[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return table


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in _proc_table().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB."""
    values = {"Pss:": 0, "Rss:": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key = line.split(":", 1)[0] + ":"
                if key in values:
                    values[key] = int(line.split()[1])
    except OSError:
        pass
    return values["Pss:"], values["Rss:"]


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class TreeSampler(threading.Thread):
    """Peak summed PSS/RSS and the CPU time of a process tree, sampled every ``interval`` seconds."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_pss = self.peak_rss = 0
        self.cpu: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            pids = _descendants(self.root)
            mem = [_memory_kib(p) for p in pids]
            self.peak_pss = max(self.peak_pss, sum(m[0] for m in mem))
            self.peak_rss = max(self.peak_rss, sum(m[1] for m in mem))
            for p in pids:
                self.cpu[p] = max(self.cpu.get(p, 0.0), cpu_seconds(p))


def run_measured(cmd: list[str], server_pid: int, env: dict[str, str]) -> dict[str, Any]:
    start, server_cpu = time.time(), cpu_seconds(server_pid)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    sampler.done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}): {err[-2000:]}")
    return {"wall_s": round(time.time() - start, 2), "peak_pss_mib": round(sampler.peak_pss / 1024),
            "peak_rss_mib": round(sampler.peak_rss / 1024), "cpu_s": round(sum(sampler.cpu.values()), 1),
            "server_cpu_s": round(cpu_seconds(server_pid) - server_cpu, 1), "stdout": out}


def shard_phase(folder: Path) -> dict[str, Any]:
    """Samples and download-phase rate from the shards' ``_stats.json`` (both tools write them)."""
    stats = [json.loads(p.read_text()) for p in folder.glob("*_stats.json") if p.name[0].isdigit()]
    span = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
    count, ok = sum(s["count"] for s in stats), sum(s["successes"] for s in stats)
    return {"urls": count, "samples": ok, "phase_s": round(span, 2), "phase_images_per_s": round(ok / span, 1)}


def run_variant(variant: str, urls: Path, index: Path, cores: int, server_pid: int, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    if variant == "img2dataset":
        cmd = [str(Path(PY).parent / "img2dataset"), "--url_list", str(urls), "--input_format", "parquet",
               "--url_col", "url", "--caption_col", "caption", "--output_format", "webdataset",
               "--output_folder", str(out), "--processes_count", str(cores), "--thread_count", str(THREADS),
               "--image_size", "256", "--resize_mode", "keep_ratio", "--encode_quality", "95",
               "--number_sample_per_shard", str(SHARD), "--distributor", "multiprocessing", "--timeout", "10",
               "--extract_exif", "False", "--enable_wandb", "False", "--compute_hash", "sha256"]
    else:
        script = OURS_SCRIPT.format(cores=cores, shard=SHARD, threads=THREADS, fast=variant == "ours")
        cmd = [PY, "-c", script, str(urls), str(out), str(index), str(out.parent / f"{out.name}-overlap")]
    result = run_measured(cmd, server_pid, env)
    result.update(shard_phase(out))
    result["images_per_s"] = round(result["samples"] / result["wall_s"], 1)
    if variant != "img2dataset":
        stats = json.loads(result["stdout"].strip().splitlines()[-1])
        result["eval_duplicates"] = stats["extra"]["eval_duplicates"]["bench"]
    result.pop("stdout")
    shutil.rmtree(out, ignore_errors=True)
    return result


# ---------------------------------------------------------------- single-process rates

def ceiling(names: list[str], n: int = 400) -> dict[str, Any]:
    """Images/s of one process: img2dataset's per-image work (cv2 decode, INTER_AREA resize, encode q95)
    and our worker's (ImageProcessor: decode once, pHash, resize, encode), from memory."""
    import cv2
    import numpy as np

    from pipeline.download.config import DownloadConfig
    from pipeline.download.image import ImageProcessor

    cv2.setNumThreads(1)
    blobs = [(WORK / "web" / name).read_bytes() for name in names[:n]]

    def decode_resize(data: bytes) -> None:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        h, w = img.shape[:2]
        s = 256 / min(h, w)
        small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 95])

    rates = {}
    for name, fn in (("decode_resize_encode", decode_resize),
                     ("ours_fast_decode", ImageProcessor(DownloadConfig())),
                     ("ours_full_decode", ImageProcessor(DownloadConfig(fast_decode=False)))):
        best = 0.0
        for _ in range(3):  # best of 3: the machine is shared
            t = time.perf_counter()
            for data in blobs:
                fn(data)
            best = max(best, len(blobs) / (time.perf_counter() - t))
        rates[name] = round(best, 1)
    return {"images": len(blobs), "images_per_s_one_process": rates,
            "mean_jpeg_kib": round(sum(map(len, blobs)) / len(blobs) / 1024, 1)}


# ---------------------------------------------------------------- report

def machine() -> dict[str, Any]:
    return machine_info(("img2dataset", "ray", "pillow", "opencv-python-headless", "numpy"))


def summarize(runs: list[dict[str, Any]], cores: int, ceil: dict[str, Any]) -> dict[str, Any]:
    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["variant"] == variant)

    summary: dict[str, Any] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        summary[variant] = {k: med(variant, k) for k in ("images_per_s", "phase_images_per_s", "wall_s", "cpu_s",
                                                          "peak_pss_mib", "peak_rss_mib")}
        summary[variant]["images_per_s_per_core"] = round(summary[variant]["images_per_s"] / cores, 1)
        summary[variant]["cpu_ms_per_image"] = round(1000 * med(variant, "cpu_s") / med(variant, "samples"), 2)
    base = "img2dataset"
    for variant in summary:
        if variant != base and base in summary:
            pairs = [(a, b) for a, b in zip([r for r in runs if r["variant"] == variant],
                                            [r for r in runs if r["variant"] == base])]
            summary[variant]["ratio_vs_img2dataset"] = {
                key: round(statistics.median(a[key] / b[key] for a, b in pairs), 2)
                for key in ("images_per_s", "phase_images_per_s")}
    ceiling_rate = ceil["images_per_s_one_process"]["decode_resize_encode"]
    for variant, row in summary.items():
        row["phase_images_per_s_per_core"] = round(row["phase_images_per_s"] / cores, 1)
        row["fraction_of_ceiling_per_core"] = {"end_to_end": round(row["images_per_s_per_core"] / ceiling_rate, 2),
                                               "phase": round(row["phase_images_per_s_per_core"] / ceiling_rate, 2)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="ours,img2dataset")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    info = machine()
    t = time.time()
    names = generate(args.images)
    index = make_eval(names)
    print(f"data ready in {time.time() - t:.0f} s", flush=True)
    server = subprocess.Popen([PY, __file__, "--serve", str(WORK / "web")], stdout=subprocess.PIPE, text=True)
    try:
        base_url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        urls = url_list(base_url, names)
        runs = []
        for round_no in range(args.rounds):
            for variant in args.variants.split(","):
                result = run_variant(variant, urls, index, args.cores, server.pid, WORK / "out" / variant)
                runs.append({"round": round_no, "variant": variant, **result})
                print(json.dumps(runs[-1]), flush=True)
    finally:
        server.terminate()
        server.wait()
    ceil = ceiling(names)
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {"benchmark": "download", "machine": info, "images": args.images, "cores_used": args.cores,
              "settings": {"image_size": 256, "resize_mode": "keep_ratio", "encode": "jpg q95", "threads": THREADS,
                           "urls_per_shard": SHARD, "eval_index": N_EVAL, "planted_eval_duplicates": N_PLANTED},
              "ceiling": ceil, "runs": runs, "summary": summarize(runs, args.cores, ceil)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
