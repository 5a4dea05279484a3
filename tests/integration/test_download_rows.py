"""Download, row by row: a malformed URL fails its own row (with a reason), never its shard; retries wait
as long as the server asks (Retry-After) or back off with jitter, and never repeat a 404/410.
Real local Ray, real HTTP on 127.0.0.1 (tests/faultserver.py)."""
from __future__ import annotations

import collections
import dataclasses
import socket
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from downloadsite import local_ray  # noqa: F401  (fixture: this module's local Ray)
from faultserver import FaultServer, _Handler, jpeg_bytes, smooth_image

from pipeline.download.stage import DownloadConfig, run_download
from pipeline.download.fetch import FetchOptions, Fetcher, retry_after_seconds, retry_delay
from pipeline.download.reasons import Dropped

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


class LaterHandler(_Handler):
    """The fault server plus ``/later/<n>/<wait>/<name>``: 429 with ``Retry-After: <wait>`` (``date<s>``: an
    HTTP-date ``s`` seconds ahead) for the first ``n`` requests of the path, then the image."""

    times: dict[str, list[float]] = collections.defaultdict(list)

    def _r_later(self, args: list[str], q: dict[str, str]) -> None:
        self.times[self.path].append(time.monotonic())
        if self.server.state.hits[self.path] > int(args[0]):
            self._send(200, self._image(args[2]))
            return
        wait = args[1]
        value = formatdate(time.time() + float(wait[4:]), usegmt=True) if wait.startswith("date") else wait
        self._send(429, b"slow down", "text/plain", headers={"Retry-After": value})


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    srv = FaultServer({f"g{i}": jpeg_bytes(smooth_image(i)) for i in range(6)})
    srv.httpd.RequestHandlerClass = LaterHandler
    with srv:
        yield srv


def config(**kw: Any) -> DownloadConfig:
    """Guard on, only the test server's address allowed; short timeouts."""
    base = DownloadConfig(number_sample_per_shard=4, processes_count=2, thread_count=4, image_size=64,
                          allowed_networks=("127.0.0.1/32",), connect_timeout=1, read_timeout=2, timeout=4)
    return dataclasses.replace(base, **kw)


def write_input(folder: Path, urls: pa.Array) -> Path:
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"uid": [f"u{i}" for i in range(len(urls))], "url": urls}), folder / "part-00000.parquet")
    return folder


def shard_rows(shards: Path) -> dict[str, dict[str, Any]]:
    return {r["uid"]: r for p in sorted(shards.glob("0*.parquet")) for r in pq.read_table(p).to_pylist()}


# ---------------------------------------------------------------- malformed URLs: per-row failures

def mixed_urls(srv: FaultServer) -> list[tuple[str | None, str | None]]:
    """(URL, expected reason) with good ones among malformed ones, so that every shard holds some."""
    port = srv.httpd.server_address[1]
    return [
        (srv.url("/img/g0"), None),
        ("http://127.0.0.1:99999/x.jpg", "bad_url"),  # used to fail its shard on every run
        (None, "bad_url"),  # same
        (srv.url("/img/g1"), None),
        ("", "bad_url"),
        ("ftp://127.0.0.1/x.jpg", "bad_url"),
        (srv.url("/img/g2?q=") + "a" * 2100, "bad_url"),
        (srv.url("/img/g2"), None),
        (f"http://%31%32%37.0.0.1:{port}/img/g3", "bad_url"),
        ("http://[::1/x.jpg", "bad_url"),
        (srv.url("/status/404?r=rows"), "http_404"),
        (srv.url("/img/g3"), None),
        ("not a url", "bad_url"),
        (f"http://127.0.0.1:{port}:80/x.jpg", "bad_url"),
    ]


def test_malformed_urls_fail_their_rows_not_their_shard(server: FaultServer, tmp_path: Path) -> None:
    cases = mixed_urls(server)
    inputs = write_input(tmp_path / "in", pa.array([u for u, _ in cases], pa.string()))
    shards, overlap = tmp_path / "shards", tmp_path / "overlap"
    stats = run_download(inputs, shards, config(), None, overlap)
    assert stats.extra["failed_shards"] == 0 and stats.extra["shards"] == 4, stats.extra
    rows = shard_rows(shards)
    got = {uid: (r["status"], r["reason"]) for uid, r in rows.items()}
    expected = {f"u{i}": ("success", None) if reason is None else ("failed_to_download", reason)
                for i, (_, reason) in enumerate(cases)}
    assert got == expected
    assert all(rows[f"u{i}"]["url"] == url for i, (url, _) in enumerate(cases))
    assert all(len(r["error_message"] or "") <= 300 for r in rows.values())
    assert (stats.inputs, stats.kept) == (len(cases), 4) and stats.accounted()
    assert stats.dropped == collections.Counter(r for _, r in cases if r is not None)
    again = run_download(inputs, shards, config(), None, overlap)  # a finished folder: nothing to redo
    assert again.extra["downloaded_shards"] == 0 and (again.kept, again.dropped) == (stats.kept, stats.dropped)


def test_non_string_urls_are_bad_type(tmp_path: Path) -> None:
    inputs = write_input(tmp_path / "in", pa.array([1, 2, 3, None, 5], pa.int64()))
    stats = run_download(inputs, tmp_path / "shards", config(), None, tmp_path / "overlap")
    assert stats.extra["failed_shards"] == 0 and stats.accounted(), stats.extra
    assert (stats.kept, dict(stats.dropped)) == (0, {"bad_type": 4, "bad_url": 1})
    assert {r["reason"] for r in shard_rows(tmp_path / "shards").values()} == {"bad_type", "bad_url"}


# ---------------------------------------------------------------- retries

def fetcher(retries: int, **kw: Any) -> Fetcher:
    opts = FetchOptions.from_config(config(retries=retries))
    return Fetcher(dataclasses.replace(opts, **kw), pool_size=4)


def fetch(url: str, retries: int, **kw: Any) -> Any:
    f = fetcher(retries, **kw)
    try:
        return f.fetch(url)
    finally:
        f.close()


@pytest.mark.parametrize("wait", ["1", "date2"])
def test_retry_after_is_honoured(server: FaultServer, wait: str) -> None:
    path = f"/later/1/{wait}/g4"
    fetched = fetch(server.url(path), retries=2)
    assert fetched.data is not None and fetched.attempts == 2, fetched
    first, second = LaterHandler.times[path]
    assert second - first >= 0.95  # an HTTP-date has whole seconds: 2 s ahead is at least 1 s


def test_retry_after_over_the_cap_ends_the_retries(server: FaultServer) -> None:
    started = time.monotonic()
    fetched = fetch(server.url("/later/1/30/g5"), retries=2, max_retry_after=5)
    assert (fetched.reason, fetched.attempts) == ("http_429", 1) and time.monotonic() - started < 5
    assert server.state.hits["/later/1/30/g5"] == 1


@pytest.mark.parametrize("code", [404, 410])
def test_gone_is_never_retried(server: FaultServer, code: int) -> None:
    path = f"/status/{code}?r=retry"
    fetched = fetch(server.url(path), retries=3)
    assert (fetched.reason, fetched.attempts) == (f"http_{code}", 1) and server.state.hits[path] == 1


def test_server_and_connection_errors_back_off(server: FaultServer) -> None:
    fetched = fetch(server.url("/flaky/2/g0?r=backoff"), retries=2)
    assert fetched.data is not None and fetched.attempts == 3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once closed
    fetched = fetch(f"http://127.0.0.1:{closed}/x.jpg", retries=1)
    assert (fetched.reason, fetched.attempts) == ("connection_error", 2), fetched


def test_retry_delays() -> None:
    assert retry_delay(Dropped("http_404", "HTTP Error 404"), 0, 60) is None
    assert retry_delay(Dropped("http_429", "HTTP Error 429", retry_after=120), 0, 60) is None
    assert 3 <= retry_delay(Dropped("http_429", "HTTP Error 429", retry_after=3), 0, 60) <= 3.5  # type: ignore
    for attempt, (low, high) in enumerate([(0.25, 0.5), (0.5, 1), (1, 2), (2, 4), (4, 8), (4, 8)]):
        delays = {retry_delay(Dropped("timeout", "timed out"), attempt, 60) for _ in range(20)}
        assert all(low <= d <= high for d in delays) and len(delays) > 1, (attempt, delays)  # type: ignore


def test_retry_after_values() -> None:
    now = time.time()
    assert retry_after_seconds("120") == 120 and retry_after_seconds(" 3 ") == 3
    assert 29 <= retry_after_seconds(formatdate(now + 30, usegmt=True), now) <= 30  # type: ignore
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now) == 0
    assert [retry_after_seconds(v) for v in (None, "", "soon", "-5", "1.5")] == [None] * 5
