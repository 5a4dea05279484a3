"""A local Ray started by ``ray_session`` stays local and dies with its driver; the CLI's stdout stays JSON.

* every process of the session listens on the loopback address only, and none connects anywhere else (no
  cloud-metadata probe of 169.254.169.254 or metadata.google.internal: checked under ``strace``, skipped
  where strace is not installed);
* SIGTERM, SIGHUP or SIGINT to the driver shuts the whole session down (GCS, raylet, agents, workers) within
  seconds, with the shell's exit code;
* ``wit download`` prints only its JSON result on stdout although its Ray worker prints (on stdout too).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.executor import LOCAL_ONLY_ENV, ray_session

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
# A driver holding a local session: runs one task, says READY on the real stdout, waits to be signalled (as
# a foreground command would: the test's own runner may ignore SIGHUP or SIGINT, and its children inherit that).
DRIVER = """
import signal, sys, time
import ray
from pipeline.core.executor import ray_session

signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
with ray_session(None, 1):
    print(ray.get(ray.remote(lambda: "task ran").remote()), file=sys.stderr)
    print("READY", file=sys.__stdout__, flush=True)
    if "--wait" in sys.argv:
        time.sleep(300)
"""
# Makes every Ray worker print on its stdout and stderr while it lives (a task's prints, without a task).
NOISY_WORKER = """
import sys, threading, time

if sys.argv and sys.argv[0].endswith("default_worker.py"):
    def _noise():
        while True:
            print("worker noise on stdout", flush=True)
            print("worker noise on stderr", file=sys.stderr, flush=True)
            time.sleep(0.1)

    threading.Thread(target=_noise, daemon=True).start()
"""


def _env(*paths: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), str(REPO)])}


def _psutil():
    import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
    import psutil

    return psutil


def test_local_ray_listens_on_loopback_only() -> None:
    import ray

    psutil = _psutil()
    assert not ray.is_initialized(), "another test left Ray initialised"
    sigterm, env = signal.getsignal(signal.SIGTERM), {key: os.environ.get(key) for key in LOCAL_ONLY_ENV}
    with ray_session(None, 1):
        assert ray.get(ray.remote(lambda: 1).remote()) == 1
        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        listening = [(p.name(), c.laddr) for p in procs for c in p.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        cmdlines = [" ".join(p.cmdline()) for p in procs[1:]]
    assert any(name == "raylet" for name, _ in listening) and any(name == "gcs_server" for name, _ in listening)
    assert [(name, addr) for name, addr in listening if addr.ip not in LOOPBACK] == []
    # Ray's cloud-provider detection runs in the dashboard process (UsageStatsHead), whatever the usage stats say
    assert not [c for c in cmdlines if "dashboard/dashboard.py" in c]
    assert signal.getsignal(signal.SIGTERM) is sigterm  # Ray's SIGTERM handler (exit code 15) is gone
    assert {key: os.environ.get(key) for key in LOCAL_ONLY_ENV} == env


def _strace_works() -> str | None:
    """Why strace cannot be used here, or None."""
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install -y strace)"
    probe = subprocess.run(["strace", "-f", "-o", os.devnull, "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"strace cannot trace here: {probe.stderr.strip()[:200]}"


def _inet_addresses(trace: str) -> list[str]:
    """The addresses of every AF_INET/AF_INET6 connect() and bind() in an strace log."""
    pattern = re.compile(r'(?:inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)")')
    return [a or b for line in trace.splitlines() if re.search(r"\b(connect|bind)\(", line)
            for a, b in pattern.findall(line)]


def test_local_ray_connects_nowhere_but_loopback(tmp_path: Path) -> None:
    why = _strace_works()
    if why:
        pytest.skip(why)
    (tmp_path / "driver.py").write_text(DRIVER)
    log = tmp_path / "strace.log"
    run = subprocess.run(["strace", "-f", "-qq", "-e", "trace=connect,bind", "-o", str(log), sys.executable,
                          str(tmp_path / "driver.py")], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    trace = log.read_text()
    addresses = _inet_addresses(trace)
    assert addresses, "strace saw no inet socket: the trace is not of Ray"
    assert sorted(set(addresses) - LOOPBACK) == []  # 169.254.169.254, 8.8.8.8 (route probe), LAN address...
    assert "htons(53)" not in trace  # no DNS query (metadata.google.internal), not even to a local resolver


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGHUP, 128 + signal.SIGHUP),
                                       (signal.SIGINT, -signal.SIGINT)])
def test_signal_to_driver_ends_the_session(tmp_path: Path, sig: int, code: int) -> None:
    psutil = _psutil()
    (tmp_path / "driver.py").write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), "--wait"], cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert driver.stdout.readline().strip() == "READY"
        session = psutil.Process(driver.pid).children(recursive=True)
        assert {"raylet", "gcs_server"} <= {p.name() for p in session}
        driver.send_signal(sig)
        assert driver.wait(60) == code
        deadline = time.monotonic() + 10
        while (alive := [p for p in session if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [f"{p.pid} {p.name()}" for p in alive] == []
    finally:
        driver.kill()
        driver.wait()


def _alive(proc) -> bool:
    psutil = _psutil()
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cli_stdout_holds_only_the_result_json(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NOISY_WORKER)
    (tmp_path / "kept").mkdir()
    urls = ["http://127.0.0.1:9/a.jpg", "http://127.0.0.1:9/b.jpg"]  # refused by the address guard: no network
    pq.write_table(pa.table({"url": urls, "caption": ["a cat", "a dog"]}), tmp_path / "kept" / "part-00000.parquet")
    run = subprocess.run([sys.executable, "-m", "flows.cli", "download", "--json", str(tmp_path / "kept"),
                          str(tmp_path / "shards"), "--overlap-dir", str(tmp_path / "overlap"),
                          "--processes-count", "1"], cwd=REPO, env=_env(hook), capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "worker noise on stdout" in run.stderr  # the worker printed, and Ray forwarded it (to stderr)
    result = json.loads(run.stdout)  # nothing else on stdout
    assert (result["stage"], result["inputs"], result["dropped"]) == ("download", 2, {"private_address": 2})
