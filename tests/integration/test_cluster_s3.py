"""A build on a real multi-node Ray cluster whose only shared storage is object storage.

A head and two worker nodes are started with ``ray start`` as separate processes, each with its own temp folder,
working directory and scratch folder (``WIT_SCRATCH``), all on 127.0.0.1 with token authentication on (as
``authOptions.mode: token`` in infra/kuberay). An S3 API server on 127.0.0.1 (moto) holds the archives to crawl,
the config file and the build directory (``build_dir: s3://...``): every path a task is given is an ``s3://`` URL,
so nothing passes between nodes through this machine's disk. The mini-web serves the images on 127.0.0.1.

* ``wit build`` from a driver outside the cluster (``RAY_ADDRESS``) runs the demo build (every stage, training
  and the overlap analysis included) while a worker node is killed in the middle of the download: its shard
  tasks run again elsewhere, and the funnel equals the same build's on a local Ray, no sample lost or doubled;
* ``ray job submit -- wit build --config s3://.../build.yaml`` runs the data stages with the driver on the
  cluster, with the same funnel;
* no process of the cluster listens beyond 127.0.0.1.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from flows.demo import demo_config
from pipeline.core.env import QUIET_ENV
from pipeline.core.executor import LOCAL_ONLY_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
DATA_STAGES = ["crawl", "filter", "balance", "eval_index", "download", "report"]
STAT_FOLDERS = ["candidates", "pairs", "balanced", "eval/miniweb", "shards"]
RUN_TIMEOUT_S = 600
BUCKET = "wit-cluster"
N_PAIRS = 300
PER_SHARD = 16  # many small shards: the download is still running when a node is killed
#: The Ray tasks of crawl, filter (duplicate shuffle: map, reduce; then the parts), balance (count, decide) and
#: download: each stage of a build runs its parts on the cluster it is given.
STAGE_TASKS = {"_crawl_task", "map_part", "reduce_bucket", "filter_task", "_count_task", "_balance_task",
               "download_shard"}


@dataclasses.dataclass
class Node:
    name: str  # "head", "w1", "w2": also a custom resource of the node, to find it in `ray list nodes`
    pgid: int  # `ray start` ran in a session of its own: its daemons are in this process group
    root: Path  # its own temp, working and scratch folders


@dataclasses.dataclass
class Cluster:
    gcs: str  # 127.0.0.1:PORT, for RAY_ADDRESS
    dashboard: str  # http://127.0.0.1:PORT, the job server
    env: dict[str, str]  # what a client of this cluster needs (token, quiet env, the S3 endpoint)
    nodes: dict[str, Node]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env() -> dict[str, str]:
    """This environment without RAY_ADDRESS, quiet, with this interpreter's ``python``, ``ray`` and ``wit``
    first on PATH (as the image of infra/kuberay has them), and the S3 server's endpoint and keys."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(QUIET_ENV)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(REPO)
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``cmd`` to its end (see :func:`start`)."""
    return finish(start(cmd, env, cwd), cmd)


def start(cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own, so that on a time-out its whole process group (Prefect's temporary
    server, Ray workers of a local Ray) is killed, not only the command."""
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:4])}... timed out after {RUN_TIMEOUT_S}s; stderr ends: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# ---- the cluster: started with `ray start`, stopped by process group (never `ray stop`, which would stop
# every Ray on this machine)

def _psutil() -> Any:
    import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
    import psutil

    return psutil


def node_processes(pgid: int) -> list[Any]:
    """A node's daemons (GCS, raylet, dashboard, monitors) and their children (agents, workers, job drivers and
    what those started), which Ray gives process groups of their own."""
    psutil = _psutil()
    daemons = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                daemons.append(proc)
        except ProcessLookupError:
            continue
    found = {p.pid: p for p in daemons}
    for proc in daemons:
        try:
            found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def stop_node(pgid: int, kill: bool = False) -> None:
    """Stop a node's processes (SIGTERM, then SIGKILL after 15 s), or ``kill`` them at once, as a lost machine."""
    psutil = _psutil()
    procs = node_processes(pgid)
    for proc in procs:
        try:
            proc.kill() if kill else proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=15)  # the GCS may take its time over SIGTERM
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)


#: ``ray start`` of a worker node that stays on 127.0.0.1. With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (which keeps
#: every address 127.0.0.1) the CLI refuses to join a cluster ("Multi-node Ray clusters are not supported on
#: Windows and OSX"); that check is the CLI's only use of the flag, so the CLI runs with it on and its
#: localhost-to-LAN-address rewrite off, while the raylet and workers it starts inherit the variable at 0.
RAY_START_LOOPBACK = [sys.executable, "-c", "import sys; from ray._private import ray_constants, services; "
                      "ray_constants.ENABLE_RAY_CLUSTER = True; services.resolve_ip_for_localhost = lambda h: h; "
                      "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()", "start"]


def start_node(name: str, root: Path, env: dict[str, str], args: list[str]) -> Node:
    """``ray start`` of one node with 1 CPU, its own temp folder and working directory, on 127.0.0.1.
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (see pipeline.core.executor.LOCAL_ONLY_ENV): without it Ray 2.60 turns
    --node-ip-address 127.0.0.1 into this host's LAN address and listens on 0.0.0.0."""
    for sub in ("tmp", "cwd", "scratch"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cmd = [*(RAY_START_LOOPBACK if "--head" not in args else ["ray", "start"]), *args,
           "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
           "--resources", json.dumps({name: 1}), "--temp-dir", str(root / "tmp"), "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env={**env, "WIT_SCRATCH": str(root / "scratch")}, cwd=root / "cwd",
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        stop_node(proc.pid)
        pytest.fail(f"ray start of {name} failed ({proc.returncode}): {out[-2000:]}")
    return Node(name, proc.pid, root)


def start_cluster(root: Path, env: dict[str, str]) -> Cluster:
    """A head and two workers; the dashboard (its job server) on 127.0.0.1, every port a free one, token
    authentication with a token of its own."""
    env = {**env, **LOCAL_ONLY_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    dashboard_port = free_port()
    head = start_node("head", root / "head", env, [
        "--head", "--port", "0", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard_port), "--dashboard-agent-listen-port", str(free_port()),
        "--ray-client-server-port", str(free_port())])
    gcs = (root / "head" / "tmp" / "ray_current_cluster").read_text().strip()
    nodes = {"head": head}
    try:
        for name in ("w1", "w2"):
            nodes[name] = start_node(name, root / name, env, ["--address", gcs, "--dashboard-agent-listen-port",
                                                               str(free_port())])
    except BaseException:  # pytest.fail included: stop what was started
        for node in reversed(list(nodes.values())):
            stop_node(node.pgid)
        raise
    return Cluster(gcs, f"http://127.0.0.1:{dashboard_port}", env, nodes)


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    from s3server import s3_server

    with s3_server(BUCKET) as client:
        yield client


@pytest.fixture(scope="module")
def cluster(s3: Any) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="wit-rc-"))  # short: Ray's socket paths must stay under 108 bytes
    started = start_cluster(root, base_env())
    try:
        yield started
    finally:
        for node in reversed(list(started.nodes.values())):
            stop_node(node.pgid)
        shutil.rmtree(root, ignore_errors=True)


def ray_list(cluster: Cluster, what: str, *args: str) -> list[dict[str, Any]]:
    """``ray list nodes|jobs|tasks`` of the cluster, as a user would ask (the state API over the dashboard)."""
    done = run(["ray", "list", what, "--address", cluster.dashboard, "--format", "json", "--limit", "10000",
                *args], cluster.env)
    assert done.returncode == 0, done.stderr[-2000:]
    if done.stdout.strip() in ("", "No resource in the cluster"):  # what it prints for none, even with json
        return []
    return json.loads(done.stdout)


def node_ids(cluster: Cluster) -> dict[str, str]:
    """``{node name: Ray node id}`` (by the custom resource each node was started with)."""
    found = {}
    for node in ray_list(cluster, "nodes", "--detail"):
        names = set(node.get("resources_total", {})) & set(cluster.nodes)
        if names:
            found[names.pop()] = node["node_id"]
    return found


# ---- the builds

@pytest.fixture(scope="module")
def miniweb(tmp_path_factory: pytest.TempPathFactory, s3: Any) -> Iterator[Path]:
    """The mini-web on 127.0.0.1 (slow images slower, so shards take a while); its archives copied to S3."""
    from pipeline.miniweb.generate import generate_miniweb, serve_miniweb

    root = tmp_path_factory.mktemp("miniweb")
    with serve_miniweb(root, port=0, slow_delay_s=2.0) as server:
        generate_miniweb(root, server.base_url, n_pairs=N_PAIRS, seed=0)
        for archive in sorted((root / "archives").glob("*.gz")):
            s3.upload_file(str(archive), BUCKET, f"inputs/{archive.name}")
        yield root


def build_config(miniweb: Path, build_dir: str, stages: list[str] | None, remote: bool) -> dict[str, Any]:
    """The demo's build (flows.demo.demo_config) of this mini-web, as it is but for smaller shards (the download
    must still be running when a node is killed). On a cluster every stage sends its parts there."""
    archives = sorted((miniweb / "archives").glob("*.gz"))
    inputs = [f"s3://{BUCKET}/inputs/{a.name}" for a in archives] if remote else [str(a) for a in archives]
    config = demo_config(build_dir, inputs, miniweb / "eval", stages)
    config["download"]["number_sample_per_shard"] = PER_SHARD
    return config


def build_counts(read_json: Any) -> dict[str, Any]:
    """What must not depend on where the build ran: the funnel and its checks, and each stage's counts."""
    report = read_json("reports/stats.json")
    stages = {}
    for folder in STAT_FOLDERS:
        stats = read_json(f"{folder}/_stats.json")
        stages[folder] = {key: stats[key] for key in ("stage", "inputs", "kept", "dropped")}
    return {"funnel": report["funnel"], "checks": report["checks"], "stages": stages}


def s3_json(s3: Any, prefix: str) -> Any:
    return lambda key: json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read())


def s3_keys(s3: Any, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
    return sorted(obj["Key"][len(prefix) + 1:] for page in pages for obj in page.get("Contents", []))


@pytest.fixture(scope="module")
def local_build(miniweb: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same build on a local Ray (no RAY_ADDRESS) into a local folder, before the cluster starts."""
    root = tmp_path_factory.mktemp("local")
    config = root / "build.yaml"
    config.write_text(yaml.safe_dump(build_config(miniweb, str(root / "build"), DATA_STAGES, remote=False)))
    done = run([sys.executable, "-m", "flows.cli", "build", "--config", str(config)], base_env())
    assert done.returncode == 0, done.stderr[-3000:]
    counts = build_counts(lambda key: json.loads((root / "build" / key).read_text()))
    assert counts["funnel"]["candidates"] == N_PAIRS and counts["funnel"]["samples"] > N_PAIRS // 2, counts
    assert all(counts["checks"].values()), counts["checks"]
    return counts


def task_ids(cluster: Cluster) -> set[str]:
    return {t["task_id"] for t in ray_list(cluster, "tasks")}


def assert_no_lost_or_doubled_samples(s3: Any, prefix: str, counts: dict[str, Any]) -> None:
    """Every shard listed once in sizes.json with its marker, keys unique across shards, and as many samples
    as the funnel says were downloaded."""
    keys = s3_keys(s3, f"{prefix}/shards")
    sizes = s3_json(s3, f"{prefix}/shards")("sizes.json")
    markers = [k for k in keys if k.endswith("_stats.json") and k[0].isdigit()]
    assert sorted(sizes) == sorted(m.replace("_stats.json", ".tar") for m in markers)
    samples = []
    for tar in sizes:
        body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/shards/{tar}")["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(body)) as tf:
            samples += sorted({m.name.split(".")[0] for m in tf.getmembers()})
    assert len(samples) == len(set(samples)) == sum(sizes.values()) == counts["funnel"]["samples"]


def assert_build_on_s3_only(cluster: Cluster, prefix: str, keys: list[str]) -> None:
    """The build is on S3 (every stage's outputs), and no node's working directory got a build folder."""
    for folder in ("candidates/_stats.json", "pairs/_stats.json", "balanced/_stats.json", "shards/sizes.json",
                   "eval/miniweb/index.parquet", "reports/stats.json", "reports/dashboard.html"):
        assert folder in keys, (folder, prefix)
    for node in cluster.nodes.values():
        assert not any((node.root / "cwd").iterdir()), list((node.root / "cwd").iterdir())


def kill_a_worker_mid_download(cluster: Cluster, proc: subprocess.Popen) -> str:
    """Wait until a shard task runs on a worker node while others are still to come, then kill that node's
    processes (as a machine lost); return its name."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        running = ray_list(cluster, "tasks", "--filter", "name=download_shard", "--filter", "state=RUNNING")
        ids = {v: k for k, v in node_ids(cluster).items()}
        victims = sorted({ids.get(t["node_id"]) for t in running} & {"w1", "w2"})
        if victims:
            stop_node(cluster.nodes[victims[0]].pgid, kill=True)
            return victims[0]
        time.sleep(0.5)
    pytest.fail("no shard task ran on a worker node: " + (proc.stderr.read()[-2000:] if proc.stderr else ""))


def test_demo_build_on_s3_with_a_worker_killed(miniweb: Path, local_build: dict[str, Any], cluster: Cluster,
                                               s3: Any, tmp_path: Path) -> None:
    """``wit build`` here with RAY_ADDRESS set (the stages' ray_address default), the whole demo build. The
    driver needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 too (cluster.env has it): otherwise Ray rewrites
    127.0.0.1:PORT to this host's LAN address, where nothing of this cluster listens."""
    prefix = "builds/driver"
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump(build_config(miniweb, f"s3://{BUCKET}/{prefix}", None, remote=True)))
    cmd = [sys.executable, "-m", "flows.cli", "build", "--config", str(config)]
    proc = start(cmd, {**cluster.env, "RAY_ADDRESS": cluster.gcs, "WIT_SCRATCH": str(tmp_path / "scratch")})
    killed = kill_a_worker_mid_download(cluster, proc)
    done = finish(proc, cmd)
    assert done.returncode == 0, done.stderr[-3000:]

    counts = build_counts(s3_json(s3, prefix))
    assert counts == local_build, killed
    assert_no_lost_or_doubled_samples(s3, prefix, counts)
    keys = s3_keys(s3, prefix)
    assert_build_on_s3_only(cluster, prefix, keys)
    assert "reports/overlap.json" in keys and any(k.startswith("train/") and k.endswith(".pt") for k in keys)
    retried = [t for t in ray_list(cluster, "tasks", "--filter", "name=download_shard", "--detail")
               if t.get("attempt_number", 0) > 0]
    assert retried, f"no shard task ran again after {killed} was killed"


def test_build_submitted_as_ray_job(miniweb: Path, local_build: dict[str, Any], cluster: Cluster, s3: Any,
                                    tmp_path: Path) -> None:
    """``ray job submit -- wit build --config s3://...``: the driver on the cluster, the config on S3."""
    prefix = "builds/job"
    body = yaml.safe_dump(build_config(miniweb, f"s3://{BUCKET}/{prefix}", DATA_STAGES, remote=True))
    s3.put_object(Bucket=BUCKET, Key="configs/job.yaml", Body=body.encode())
    submission_id = f"wit-build-{secrets.token_hex(4)}"
    done = run(["ray", "job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO),
                "--submission-id", submission_id, "--", "python", "-m", "flows.cli", "build", "--config",
                f"s3://{BUCKET}/configs/job.yaml"], cluster.env, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "check downloaded == samples in shards: ok" in done.stdout  # the job's output, followed by submit

    [job] = [j for j in ray_list(cluster, "jobs") if j["submission_id"] == submission_id]
    assert (job["status"], job["type"]) == ("SUCCEEDED", "SUBMISSION")
    ran = {t["name"] for t in ray_list(cluster, "tasks", "--filter", "state=FINISHED")}
    assert STAGE_TASKS <= ran, STAGE_TASKS - ran  # every data stage sent its parts to the cluster
    counts = build_counts(s3_json(s3, prefix))
    assert counts == local_build
    assert_no_lost_or_doubled_samples(s3, prefix, counts)
    live = {node["node_id"] for node in ray_list(cluster, "nodes") if node["state"] == "ALIVE"}
    nodes = {s3_json(s3, f"{prefix}/shards")(k)["node"] for k in s3_keys(s3, f"{prefix}/shards")
             if k.endswith("_stats.json") and k[0].isdigit()}
    assert len(nodes) >= 2 and nodes <= live, (nodes, live)  # the shards were shared between the nodes left


def test_cluster_listens_on_loopback_only(cluster: Cluster) -> None:
    """After the builds (agents and workers started): no process of the cluster listens beyond 127.0.0.1."""
    psutil = _psutil()
    listening = set()
    for node in cluster.nodes.values():
        for proc in node_processes(node.pgid):
            try:
                listening |= {(proc.name(), c.laddr.ip) for c in proc.net_connections(kind="inet")
                              if c.status == psutil.CONN_LISTEN}
            except psutil.NoSuchProcess:
                continue
    assert listening and {ip for _, ip in listening} <= LOOPBACK, sorted(listening)


def kill_when(proc: subprocess.Popen, ready: Any, what: str) -> None:
    """SIGKILL ``proc``'s process group once ``ready()`` holds (as a machine that loses power)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return
        time.sleep(0.3)
    pytest.fail(f"the build ended before {what}: " + (proc.stderr.read()[-2000:] if proc.stderr else ""))


def kill_leftovers(marker: str) -> None:
    """Kill what the killed driver's local Ray left running (its processes name ``marker``, their temp folder)."""
    psutil = _psutil()
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in proc.info["cmdline"] or []):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue


def test_a_killed_build_on_s3_resumes_to_the_clean_result(miniweb: Path, local_build: dict[str, Any], s3: Any,
                                                          tmp_path: Path) -> None:
    """``wit build`` on a local Ray into S3, killed (SIGKILL, driver and its Ray) once some shards are on the
    store, then run again: the funnel of a clean build, no sample lost or doubled."""
    prefix = "builds/killed"
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump(build_config(miniweb, f"s3://{BUCKET}/{prefix}", DATA_STAGES, remote=True)))
    cmd = [sys.executable, "-m", "flows.cli", "build", "--config", str(config)]
    ray_tmp = tempfile.mkdtemp(prefix="wit-k-")  # short: Ray's socket paths must stay under 108 bytes
    env = {**base_env(), "TMPDIR": ray_tmp, "WIT_SCRATCH": str(tmp_path / "scratch")}
    proc = start(cmd, env)
    try:
        kill_when(proc, lambda: any(k.endswith("_stats.json") and k[0].isdigit()
                                    for k in s3_keys(s3, f"{prefix}/shards")), "a shard was committed")
    finally:
        kill_leftovers(ray_tmp)
    assert "reports/stats.json" not in s3_keys(s3, prefix)

    try:
        done = run(cmd, env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = build_counts(s3_json(s3, prefix))
    assert counts == local_build
    assert_no_lost_or_doubled_samples(s3, prefix, counts)
