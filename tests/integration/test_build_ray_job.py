"""A build on a real Ray cluster started the way a user starts one (``ray start --head``), over the mini-web:

* submitted as a Ray job (``ray job submit --working-dir``, the way KubeRay's RayJob submits one), and
* run from a driver that joins the cluster through ``RAY_ADDRESS``;

each runs crawl, filter, balance, eval-index, download and report, with the crawl and download tasks on the
cluster, and gives the funnel of the same build run on a local Ray. The cluster has one node (the head, with
2 CPUs), token authentication on (as ``authOptions.mode: token`` in infra/kuberay), and it listens on 127.0.0.1
only. Head, job and driver share this machine's disk, as the pods of infra/kuberay share a volume.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from pipeline.core.env import QUIET_ENV
from pipeline.core.executor import LOCAL_ONLY_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
STAGES = ["crawl", "filter", "balance", "eval_index", "download", "report"]
STAT_FOLDERS = ["candidates", "pairs", "balanced", "eval/miniweb", "shards"]
RUN_TIMEOUT_S = 420


@dataclasses.dataclass
class Head:
    gcs: str  # 127.0.0.1:PORT, for RAY_ADDRESS
    dashboard: str  # http://127.0.0.1:PORT, the job server
    pgid: int  # `ray start` ran in a session of its own: its daemons are in this process group
    env: dict[str, str]  # what a client of this cluster needs (the token, the quiet env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env() -> dict[str, str]:
    """This environment without RAY_ADDRESS, quiet, with this interpreter's ``python``, ``ray`` and ``wit``
    first on PATH (as the image of infra/kuberay has them)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(QUIET_ENV)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a session of its own; on a time-out its whole process group (Prefect's temporary server,
    Ray workers of a local Ray) is killed, not only the command."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:4])}... timed out after {RUN_TIMEOUT_S}s; stderr ends: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# ---- the cluster: started with `ray start --head`, stopped by process group (never `ray stop`, which would
# stop every Ray on this machine)

def _psutil() -> Any:
    import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
    import psutil

    return psutil


def cluster_processes(pgid: int) -> list[Any]:
    """The cluster's daemons (GCS, raylet, dashboard, monitors) and their children (agents, workers, job
    drivers and what those started), which Ray gives process groups of their own."""
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


def stop_cluster(pgid: int) -> None:
    psutil = _psutil()
    procs = cluster_processes(pgid)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=15)  # the GCS may take its time over SIGTERM
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)


def start_head(temp_dir: Path) -> Head:
    """``ray start --head`` on 127.0.0.1 with 2 CPUs, the dashboard (its job server) on 127.0.0.1, every port
    a free one, token authentication with a token of its own. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (see
    pipeline.core.executor.LOCAL_ONLY_ENV): without it Ray 2.60 turns --node-ip-address 127.0.0.1 into this
    host's LAN address and listens on 0.0.0.0."""
    env = {**base_env(), **LOCAL_ONLY_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    dashboard_port = free_port()
    cmd = ["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", "0", "--num-cpus", "2",
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
           "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
           "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        stop_cluster(proc.pid)
        pytest.fail(f"ray start failed ({proc.returncode}): {out[-2000:]}")
    gcs = (temp_dir / "ray_current_cluster").read_text().strip()
    return Head(gcs, f"http://127.0.0.1:{dashboard_port}", proc.pid, env)


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    temp_dir = Path(tempfile.mkdtemp(prefix="wit-rh-"))  # short: Ray's socket paths must stay under 108 bytes
    cluster = start_head(temp_dir)
    try:
        yield cluster
    finally:
        stop_cluster(cluster.pgid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_list(head: Head, what: str) -> list[dict[str, Any]]:
    """``ray list nodes|jobs|tasks`` of the cluster, as a user would ask (the state API over the dashboard)."""
    done = run(["ray", "list", what, "--address", head.dashboard, "--format", "json", "--limit", "10000"], head.env)
    assert done.returncode == 0, done.stderr[-2000:]
    if done.stdout.strip() in ("", "No resource in the cluster"):  # what it prints for none, even with json
        return []
    return json.loads(done.stdout)


# ---- the builds

@pytest.fixture(scope="module")
def miniweb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from pipeline.miniweb.generate import generate_miniweb, serve_miniweb

    root = tmp_path_factory.mktemp("miniweb")
    with serve_miniweb(root, port=0) as server:
        generate_miniweb(root, server.base_url, n_pairs=300, seed=0)
        yield root


def write_config(miniweb: Path, build_dir: Path) -> Path:
    """The build of this module: crawl on Ray even for the mini-web's two archives (ray_min_files 1), small
    images, two shards."""
    config = {
        "build_dir": str(build_dir),
        "inputs": [str(p) for p in sorted((miniweb / "archives").glob("*.gz"))],
        "eval_sets": {"miniweb": str(miniweb / "eval")},
        "stages": STAGES,
        "crawl": {"ray_min_files": 1, "workers": 2},
        "download": {"allow_private_networks": True, "image_size": 64, "number_sample_per_shard": 128,
                     "processes_count": 2},
    }
    path = build_dir.parent / f"{build_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def build_counts(build_dir: Path) -> dict[str, Any]:
    """What must not depend on where the build ran: the funnel and its checks, and each stage's counts."""
    report = json.loads((build_dir / "reports" / "stats.json").read_text())
    stages = {}
    for folder in STAT_FOLDERS:
        stats = json.loads((build_dir / folder / "_stats.json").read_text())
        stages[folder] = {key: stats[key] for key in ("stage", "inputs", "kept", "dropped")}
    return {"funnel": report["funnel"], "checks": report["checks"], "stages": stages}


def shard_nodes(build_dir: Path) -> set[str]:
    return {json.loads(p.read_text())["node"] for p in (build_dir / "shards").glob("0*_stats.json")}


@pytest.fixture(scope="module")
def local_build(miniweb: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same build on a local Ray (no RAY_ADDRESS), before the cluster starts."""
    build_dir = tmp_path_factory.mktemp("local") / "build"
    done = run([sys.executable, "-m", "flows.cli", "build", "--config", str(write_config(miniweb, build_dir))],
               base_env())
    assert done.returncode == 0, done.stderr[-3000:]
    counts = build_counts(build_dir)
    assert counts["funnel"]["candidates"] == 300 and counts["funnel"]["samples"] > 150, counts["funnel"]
    assert all(counts["checks"].values()), counts["checks"]
    return counts


def task_ids(head: Head) -> set[str]:
    return {t["task_id"] for t in ray_list(head, "tasks")}


def assert_ran_on_cluster(head: Head, tasks_before: set[str], build_dir: Path) -> None:
    """The crawl's two archives and the download's two shards ran as tasks on the cluster's (only) node (the
    tasks that were not there before the build; each stage's ray_session is a Ray job of its own)."""
    [node] = [n["node_id"] for n in ray_list(head, "nodes")]
    tasks = [t for t in ray_list(head, "tasks") if t["task_id"] not in tasks_before]
    names = sorted(t["name"] for t in tasks if t["name"] in ("_crawl_task", "download_shard"))
    assert names == ["_crawl_task"] * 2 + ["download_shard"] * 2, names
    assert {(t["state"], t["node_id"]) for t in tasks} == {("FINISHED", node)}
    assert shard_nodes(build_dir) == {node}


def test_build_submitted_as_ray_job(miniweb: Path, local_build: dict[str, Any], head: Head,
                                    tmp_path: Path) -> None:
    build_dir = tmp_path / "build"
    config = write_config(miniweb, build_dir)
    submission_id = f"wit-build-{secrets.token_hex(4)}"
    tasks_before = task_ids(head)
    done = run(["ray", "job", "submit", "--address", head.dashboard, "--working-dir", str(REPO),
                "--submission-id", submission_id, "--", "python", "-m", "flows.cli", "build", "--config",
                str(config)], head.env, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "check downloaded == samples in shards: ok" in done.stdout  # the job's output, followed by submit

    [job] = [j for j in ray_list(head, "jobs") if j["submission_id"] == submission_id]
    assert (job["status"], job["type"]) == ("SUCCEEDED", "SUBMISSION")
    assert_ran_on_cluster(head, tasks_before, build_dir)
    assert build_counts(build_dir) == local_build


def test_build_driver_joins_cluster_by_ray_address(miniweb: Path, local_build: dict[str, Any], head: Head,
                                                   tmp_path: Path) -> None:
    """``wit build`` here with RAY_ADDRESS set: the stages' ray_address default. The driver needs
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 too (head.env has it): otherwise Ray rewrites 127.0.0.1:PORT to this
    host's LAN address, where nothing of this cluster listens, and ray.init keeps retrying (still after 10
    minutes when tried)."""
    build_dir = tmp_path / "build"
    config = write_config(miniweb, build_dir)
    tasks_before = task_ids(head)
    done = run([sys.executable, "-m", "flows.cli", "build", "--config", str(config)],
               {**head.env, "RAY_ADDRESS": head.gcs})
    assert done.returncode == 0, done.stderr[-3000:]

    assert_ran_on_cluster(head, tasks_before, build_dir)
    assert build_counts(build_dir) == local_build


def test_cluster_listens_on_loopback_only(head: Head) -> None:
    """After the builds (agents and workers started): no process of the cluster listens beyond 127.0.0.1."""
    psutil = _psutil()
    listening = set()
    for proc in cluster_processes(head.pgid):
        try:
            listening |= {(proc.name(), c.laddr.ip) for c in proc.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            continue
    assert listening and {ip for _, ip in listening} <= LOOPBACK, sorted(listening)
