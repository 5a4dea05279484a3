"""`prefect deployment run build-wit/<name>` against a real `prefect server start` (SQLite).

Starts the server and `wit serve` as subprocesses, triggers a run with the Prefect CLI, and checks the
build it made: a small mini-web (60 pairs) through crawl, filter, eval index, download and report.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout}s")


@pytest.fixture()
def prefect_server(tmp_path: Path):
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    api = f"http://127.0.0.1:{port}/api"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(api, proc)
        yield {**env, "PREFECT_API_URL": api}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_deployment_run_builds(prefect_server: dict, tmp_path: Path) -> None:
    from flows.demo import demo_config
    from pipeline.miniweb.generate import generate_miniweb, serve_miniweb

    build_dir = tmp_path / "build"
    with serve_miniweb(tmp_path / "web", port=0) as server:
        generate_miniweb(tmp_path / "web", server.base_url, n_pairs=60, seed=1)
        cfg = demo_config(build_dir, sorted((tmp_path / "web" / "archives").glob("*.gz")), tmp_path / "web" / "eval",
                          stages=["crawl", "filter", "eval_index", "download", "report"])
        config_path = tmp_path / "build.yaml"
        config_path.write_text(yaml.safe_dump(cfg))
        serve_log = open(tmp_path / "serve.log", "w")
        serve = subprocess.Popen([str(BIN / "wit"), "serve", "--name", "itest", "--config", str(config_path)],
                                 env=prefect_server, stdout=serve_log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            run = _run_deployment(prefect_server, serve)
        finally:
            serve.terminate()
            serve.wait(timeout=30)
            serve_log.close()
    assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "serve.log").read_text()[-3000:]
    assert "Completed" in run.stdout + run.stderr
    report = json.loads((build_dir / "reports" / "stats.json").read_text())
    assert report["funnel"]["candidates"] == 60
    assert report["checks"] and all(report["checks"].values())
    for listing in (["deployment", "ls"], ["flow-run", "ls"], ["artifact", "inspect", "build-wit-report"]):
        out = subprocess.run([str(BIN / "prefect"), *listing], env=prefect_server, capture_output=True, text=True)
        assert out.returncode == 0, (listing, out.stdout[-2000:], out.stderr[-2000:])  # what users read
    assert "candidates" in out.stdout and "Funnel" in out.stdout


def test_infra_prefect_yaml_deploys_to_a_work_pool(prefect_server: dict) -> None:
    """infra/prefect/prefect.yaml registers build-wit/example on a process work pool."""
    repo = Path(__file__).resolve().parents[2]
    env = {**prefect_server, "WIT_BUILDER_HOME": str(repo)}
    pool = subprocess.run([str(BIN / "prefect"), "work-pool", "create", "wit-process", "--type", "process"],
                          env=env, capture_output=True, text=True)
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file",
                             str(repo / "infra" / "prefect" / "prefect.yaml")], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    inspect = subprocess.run([str(BIN / "prefect"), "deployment", "inspect", "build-wit/example"], env=env,
                             capture_output=True, text=True)
    assert inspect.returncode == 0 and "wit-process" in inspect.stdout


def _run_deployment(env: dict, serve: subprocess.Popen) -> subprocess.CompletedProcess:
    """Wait for `wit serve` to register the deployment, then run it and watch it to the end."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert serve.poll() is None, "wit serve exited early"
        probe = subprocess.run([str(BIN / "prefect"), "deployment", "inspect", "build-wit/itest"],
                               env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            break
        time.sleep(1)
    return subprocess.run([str(BIN / "prefect"), "deployment", "run", "build-wit/itest", "--watch",
                           "--watch-timeout", "600"], env=env, capture_output=True, text=True, timeout=700)
