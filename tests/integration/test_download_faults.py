"""Download reliability: every injected fault ends as a counted reason, and killed workers or runs lose
or duplicate nothing. Real local Ray, real HTTP on 127.0.0.1 (tests/faultserver.py)."""
from __future__ import annotations

import collections
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from downloadsite import local_ray  # noqa: F401  (fixture: this module's local Ray)
from faultserver import FaultServer, corrupt_jpeg, jpeg_bytes, png_header_bomb, smooth_image

from pipeline.download.stage import DownloadConfig, run_download
from pipeline.download.shard import WORK_DIR
from pipeline.core.io import read_json
from pipeline.core.stats import StageStats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    images = {f"g{i}": jpeg_bytes(smooth_image(i)) for i in range(12)}
    images["corrupt"] = corrupt_jpeg(images["g0"])
    images["bomb"] = png_header_bomb(10_000, 10_000)
    with FaultServer(images) as srv:
        yield srv


def config(**kw: Any) -> DownloadConfig:
    """Guard on, only the test server's address allowed; short timeouts."""
    base = DownloadConfig(number_sample_per_shard=8, processes_count=2, thread_count=8, image_size=64,
                          allowed_networks=("127.0.0.1/32",), connect_timeout=1, read_timeout=1, timeout=3,
                          max_image_bytes=2_000_000, max_redirects=3)
    return dataclasses.replace(base, **kw)


def write_input(folder: Path, urls: list[str]) -> Path:
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"uid": [f"u{i}" for i in range(len(urls))], "url": urls,
                             "caption": [f"caption {i}" for i in range(len(urls))]}), folder / "part-00000.parquet")
    return folder


def shard_rows(shards: Path) -> list[dict[str, Any]]:
    return [r for p in sorted(shards.glob("0*.parquet")) for r in pq.read_table(p).to_pylist()]


def tar_keys(shards: Path) -> list[str]:
    import webdataset as wds

    return [s["__key__"] for s in wds.WebDataset([str(p) for p in sorted(shards.glob("*.tar"))], shardshuffle=False)]


def assert_consistent(shards: Path, urls: list[str], stats: StageStats) -> list[dict[str, Any]]:
    """One row per input URL, unique keys, tar samples == successful rows == sizes.json == stats.kept."""
    rows = shard_rows(shards)
    assert sorted(r["url"] for r in rows) == sorted(urls)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys))
    success = sorted(r["key"] for r in rows if r["status"] == "success")
    samples = tar_keys(shards)
    assert sorted(samples) == success and len(samples) == len(set(samples))
    assert sum(read_json(shards / "sizes.json").values()) == len(success) == stats.kept
    assert stats.accounted() and stats.inputs == len(urls)
    assert not any((shards / WORK_DIR).iterdir())
    return rows


# ---------------------------------------------------------------- faults

def fault_urls(srv: FaultServer) -> dict[str, str | None]:
    """URL -> expected reason (None: success)."""
    u = srv.url
    return {
        **{u(f"/img/g{i}"): None for i in range(4)},
        u("/status/404"): "http_404",
        u("/status/500"): "http_5xx",
        u("/status/503"): "http_5xx",
        srv.blackhole_url: "timeout",  # connect timeout
        u("/sleep/3"): "timeout",  # read timeout
        u("/drip/g5"): "timeout",  # bytes keep coming, too slowly
        u("/truncated/g6"): "truncated",  # shorter than its Content-Length
        u("/cut/g6"): "decode_error",  # a cut-short JPEG
        u("/img/corrupt"): "decode_error",
        u("/img/bomb"): "too_large",  # 100-megapixel header
        u("/bytes/3000000"): "too_large",  # Content-Length over max_image_bytes
        u("/bytes/3000000?length=0"): "too_large",  # no Content-Length: stopped while reading
        u("/html"): "not_image",
        u("/loop/0"): "too_many_redirects",
        srv.robots_url("noai", "g7"): "opted_out",
        srv.robots_url("wit-builder: noimageai", "g7"): "opted_out",
        srv.robots_url("noindex, nofollow", "g7"): "opted_out",
        srv.robots_url("otherbot: noai", "g8"): None,  # scoped to another crawler
        srv.robots_url("unavailable_after: 25 Jun 2010 15:00:00 PST", "g8"): None,
        u("/redirect?to=http://169.254.169.254/latest/meta-data/"): "private_address",
        u("/redirect?to=http://10.255.255.1/x.jpg"): "private_address",
        u("/redirect?to=/img/g9"): None,
        u("/flaky/1/g10"): None,  # 503 once, then fine: retried within the run (retries=1)
        "ftp://127.0.0.1/x.jpg": "bad_url",
    }


def test_every_fault_is_a_counted_reason(server: FaultServer, tmp_path: Path) -> None:
    expected = fault_urls(server)
    urls = list(expected)
    shards = tmp_path / "shards"
    stats = run_download(write_input(tmp_path / "in", urls), shards, config(retries=1), None, tmp_path / "overlap")
    rows = assert_consistent(shards, urls, stats)
    got = {r["url"]: r["reason"] for r in rows}
    assert got == expected, {u: (got[u], e) for u, e in expected.items() if got[u] != e}
    assert stats.dropped == collections.Counter(r for r in expected.values() if r is not None)
    assert server.state.hits["/status/404"] == 1 and server.state.hits["/status/503"] == 2  # only 5xx retried
    assert all("wit-builder" in ua for ua in server.state.user_agents if ua)
    bomb = next(r for r in rows if r["url"].endswith("/img/bomb"))
    assert (bomb["original_width"], bomb["original_height"]) == (10_000, 10_000)


def test_per_host_limit(server: FaultServer, tmp_path: Path) -> None:
    urls = [server.url(f"/img/g{i % 12}?delay=0.2&n={i}") for i in range(12)]
    server.state.max_delaying = 0
    stats = run_download(write_input(tmp_path / "in", urls), tmp_path / "shards",
                         config(number_sample_per_shard=12, thread_count=16, max_per_host=2), None, tmp_path / "ov")
    assert stats.kept == 12 and server.state.max_delaying == 2  # one shard task: one limiter


def test_retry_failed_merges_without_duplicates(server: FaultServer, tmp_path: Path) -> None:
    good = [server.url(f"/img/g{i}?r={i}") for i in range(10)]
    flaky = [server.url(f"/flaky/1/g{i}?r=retry") for i in range(4)]
    urls = good[:5] + flaky[:2] + [server.url("/status/404?r=retry")] + good[5:] + flaky[2:] + \
        [server.url("/sleep/2?r=retry")]
    inputs, shards, overlap = write_input(tmp_path / "in", urls), tmp_path / "shards", tmp_path / "overlap"
    first = run_download(inputs, shards, config(), None, overlap)
    assert first.kept == 10 and first.dropped == {"http_5xx": 4, "http_404": 1, "timeout": 1}
    keys_before = {r["url"]: r["key"] for r in shard_rows(shards)}
    second = run_download(inputs, shards, config(retry_failed=True), None, overlap)
    assert second.kept == 14 and second.dropped == {"http_404": 1, "timeout": 1}
    assert second.extra["retried_urls"] == 5 and server.state.hits["/status/404?r=retry"] == 1
    rows = assert_consistent(shards, urls, second)
    assert {r["url"]: r["key"] for r in rows} == keys_before
    third = run_download(inputs, shards, config(retry_failed=True), None, overlap)
    assert third.extra["retried_urls"] == 1 and third.kept == 14  # only the timeout is left to retry
    assert_consistent(shards, urls, third)


# ---------------------------------------------------------------- killed workers and runs

def slow_urls(server: FaultServer, n: int, tag: str) -> list[str]:
    return [server.url(f"/img/g{i % 12}?delay=0.25&{tag}={i}") for i in range(n)]


def my_shard_workers() -> list[int]:
    """Pids of Ray workers running a shard task of this process's Ray (worker -> raylet -> this process)."""
    def ppid(pid: int) -> int:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])

    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if fh.read().startswith(b"ray::download_shard") and ppid(ppid(int(entry))) == os.getpid():
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_killed_worker_shard_is_retried(server: FaultServer, tmp_path: Path) -> None:
    urls = slow_urls(server, 60, "kw")
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            fetching = sum(server.state.hits[u[len(server.base_url):]] for u in urls) >= 8
            pids = my_shard_workers() if fetching and server.state.in_flight else []
            if pids:  # both workers are mid-shard now
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    stats = run_download(write_input(tmp_path / "in", urls), tmp_path / "shards",
                         config(number_sample_per_shard=6, thread_count=2, max_per_host=2), None, tmp_path / "ov")
    thread.join(5)
    assert killed, "no shard worker was found to kill"
    assert stats.kept == 60 and stats.extra["failed_shards"] == 0
    assert_consistent(tmp_path / "shards", urls, stats)
    refetched = [u for u in urls if server.state.hits[u[len(server.base_url):]] > 1]
    assert refetched, "the killed worker's shard was not run again"


RUN_SCRIPT = """
import sys
from pipeline.download.stage import DownloadConfig, run_download
cfg = DownloadConfig(number_sample_per_shard=6, processes_count=2, thread_count=2, max_per_host=2, image_size=64,
                     allowed_networks=("127.0.0.1/32",), max_image_bytes=2_000_000, max_redirects=3)
run_download(sys.argv[1], sys.argv[2], cfg, None, sys.argv[3])
"""


def _session_alive(sid: int) -> bool:
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                return True
        except (OSError, ValueError, IndexError):
            continue
    return False


def test_killed_run_resumes_without_duplicates(server: FaultServer, tmp_path: Path) -> None:
    urls = slow_urls(server, 72, "kr")
    inputs, shards, overlap = write_input(tmp_path / "in", urls), tmp_path / "shards", tmp_path / "ov"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, str(inputs), str(shards), str(overlap)], env=env,
                            cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while len(list(shards.glob("*_stats.json"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    deadline = time.monotonic() + 30
    while _session_alive(proc.pid) and time.monotonic() < deadline:  # Ray workers exit once their raylet is gone
        time.sleep(0.2)
    finished = sorted(int(p.name[:5]) for p in shards.glob("0*_stats.json"))
    assert 2 <= len(finished) < 12, finished
    stats = run_download(inputs, shards, config(number_sample_per_shard=6, thread_count=4), None, overlap)
    assert stats.kept == 72 and stats.extra["downloaded_shards"] == 12 - len(finished)
    assert_consistent(shards, urls, stats)
    for shard_id in finished:  # finished shards were not fetched again
        assert all(server.state.hits[u[len(server.base_url):]] == 1 for u in urls[6 * shard_id:6 * shard_id + 6])
