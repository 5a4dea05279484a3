"""The per-part stage skeleton as a hostile user meets it: re-runs with other options, changed inputs, a
killed run resumed, two writers in one folder. Each case failed on the layout before run keys and locks."""
from __future__ import annotations

import io
import multiprocessing
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline.balance.stage import BalanceConfig, run_balance
from pipeline.core.errors import WitError
from pipeline.core.lock import output_lock
from pipeline.core.parts import PartStore, run_key
from pipeline.crawl.extract import make_uid
from pipeline.crawl.stage import CrawlConfig, run_crawl
from pipeline.download.config import DownloadConfig
from pipeline.download.plan import fingerprint
from pipeline.download.stage import run_download
from pipeline.filter.stage import FilterConfig, run_filter

CAPTIONS = ["A black dog running on the beach at sunset", "Portrait of a young woman in a red dress",
            "The Golden Gate Bridge in San Francisco at night", "A bowl of fresh strawberries on a table"]


def _warc(path: Path, pages: list[tuple[str, str]]) -> Path:
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for url, html in pages:
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(html.encode()),
                                                          http_headers=http))
    return path


def _page(i: int) -> tuple[str, str]:
    imgs = "".join(f"<img src='{i}-{k}.jpg' alt='{c}'>" for k, c in enumerate(CAPTIONS))
    return f"http://site{i}.test/", imgs


def _candidates(folder: Path, rows: list[tuple[str, str]], name: str) -> Path:
    table = pa.table({"uid": [make_uid(u, c) for u, c in rows], "url": [u for u, _ in rows],
                      "caption": [c for _, c in rows], "page_url": ["http://x.test/"] * len(rows)})
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)
    return folder / name


def test_crawl_rerun_with_other_option_recomputes(tmp_path: Path) -> None:
    archive = _warc(tmp_path / "a.warc.gz", [_page(1), _page(2)])
    out = tmp_path / "out"
    first = run_crawl([str(archive)], out)
    again = run_crawl([str(archive)], out, CrawlConfig(max_caption_chars=10))
    fresh = run_crawl([str(archive)], tmp_path / "fresh", CrawlConfig(max_caption_chars=10))
    assert first.kept == 8 and again.extra["skipped_files"] == 0
    assert (again.kept, dict(again.dropped)) == (fresh.kept, dict(fresh.dropped)) == (0, {"caption_too_long": 8})
    assert run_crawl([str(archive)], out, CrawlConfig(max_caption_chars=10)).extra["skipped_files"] == 1


def test_crawl_archive_that_gets_content_is_crawled_again(tmp_path: Path) -> None:
    archive = tmp_path / "late.warc.gz"
    archive.write_bytes(b"")
    out = tmp_path / "out"
    assert run_crawl([str(archive)], out).kept == 0
    _warc(archive, [_page(1)])
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert run_crawl([str(archive)], out).kept == 4


def test_filter_rerun_with_other_threshold_recomputes_every_part(tmp_path: Path) -> None:
    inp = tmp_path / "cand"
    _candidates(inp, [(f"http://a.test/{i}.jpg", c) for i, c in enumerate(CAPTIONS)], "part-a.parquet")
    _candidates(inp, [(f"http://b.test/{i}.jpg", c) for i, c in enumerate(CAPTIONS)], "part-b.parquet")
    out = tmp_path / "out"
    loose = run_filter(inp, out, FilterConfig(min_lang_score=0.1))
    strict = run_filter(inp, out, FilterConfig(min_lang_score=0.9999))
    fresh = run_filter(inp, tmp_path / "fresh", FilterConfig(min_lang_score=0.9999))
    assert loose.kept == 8 and strict.extra["skipped_parts"] == 0
    assert (strict.kept, dict(strict.dropped)) == (fresh.kept, dict(fresh.dropped))
    assert strict.kept < loose.kept


def test_filter_resumed_after_a_lost_part_gives_the_clean_rows_and_reasons(tmp_path: Path) -> None:
    inp = tmp_path / "cand"
    german = "Ein schwarzer Hund läuft bei Sonnenuntergang am Strand entlang"
    _candidates(inp, [("http://a.test/1.jpg", german), ("http://a.test/2.jpg", CAPTIONS[0])], "part-a.parquet")
    _candidates(inp, [("http://a.test/1.jpg", german), ("http://b.test/2.jpg", CAPTIONS[1])], "part-b.parquet")
    clean = run_filter(inp, tmp_path / "clean")
    out = tmp_path / "out"
    run_filter(inp, out)
    PartStore(out, "filter").sidecar("part-b.parquet").unlink()  # as if killed before part-b was recorded
    resumed = run_filter(inp, out)
    assert resumed.extra["skipped_parts"] == 1
    assert dict(resumed.dropped) == dict(clean.dropped) == {"language": 1, "duplicate": 1}
    rejected = pq.read_table(out / "rejected" / "part-b.parquet").column("reason").to_pylist()
    assert rejected == ["duplicate"]


def test_balance_rerun_with_other_t_recomputes(tmp_path: Path) -> None:
    inp = tmp_path / "kept"
    _candidates(inp, [(f"http://a.test/{i}.jpg", "a dog on a beach") for i in range(40)], "part-a.parquet")
    queries = tmp_path / "queries.txt"
    queries.write_text("dog\nbeach\n")
    out = tmp_path / "out"
    big = run_balance(inp, out, BalanceConfig(queries=str(queries), t=1000))
    small = run_balance(inp, out, BalanceConfig(queries=str(queries), t=2))
    assert big.kept == 40 and small.extra["skipped_parts"] == 0 and small.kept < 40


def test_run_key_changes_with_output_options_only() -> None:
    base = run_key("crawl", CrawlConfig(), [{"path": "a", "size": 1}])
    assert run_key("crawl", CrawlConfig(workers=3, progress=False), [{"path": "a", "size": 1}]) == base
    assert run_key("crawl", CrawlConfig(max_caption_chars=9), [{"path": "a", "size": 1}]) != base
    assert run_key("crawl", CrawlConfig(), [{"path": "a", "size": 2}]) != base


def _hold(folder: str, ready: multiprocessing.Event, release: multiprocessing.Event) -> None:
    with output_lock(folder, "download"):
        ready.set()
        release.wait(30)


def test_second_writer_gets_one_line_naming_the_holder(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(WitError, match=rf"in use by pid {holder.pid} on .* since "):
            run_crawl([str(_warc(tmp_path.parent / "x.warc.gz", [_page(1)]))], tmp_path)
    finally:
        release.set()
        holder.join(30)
    assert run_crawl([str(tmp_path.parent / "x.warc.gz")], tmp_path).kept == 4  # released when the holder ends


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(30)
    holder.kill()
    holder.join(30)
    with output_lock(tmp_path, "crawl"):
        pass


def test_download_plan_key_covers_every_output_option(tmp_path: Path) -> None:
    """``--max-image-bytes 1000`` or another opt-out list re-used the finished shards before."""
    part = _candidates(tmp_path / "in", [("http://a.test/1.jpg", CAPTIONS[0])], "p.parquet")
    base = fingerprint([part], DownloadConfig())
    assert fingerprint([part], DownloadConfig(max_image_bytes=1000)) != base
    assert fingerprint([part], DownloadConfig(disallowed_header_directives=("noai",))) != base
    assert fingerprint([part], DownloadConfig(thread_count=3, processes_count=1, retries=2)) == base


def test_second_download_into_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    part = _candidates(tmp_path / "in", [("http://a.test/1.jpg", CAPTIONS[0])], "p.parquet")
    with output_lock(tmp_path / "shards", "download"):
        with pytest.raises(WitError, match=r"shards: download output folder in use by pid \d+"):
            run_download(part, tmp_path / "shards")
