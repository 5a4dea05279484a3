"""The img2dataset engine (`wit download --engine img2dataset`): Download stage against a real HTTP server on 127.0.0.1, with a real local Ray and img2dataset."""
from __future__ import annotations

import shutil

import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from downloadsite import (N_INPUTS, SCREEN_REASONS, SCREEN_URLS, SMALL_RUN, Site, check_bad_inputs, check_overlap,
                          check_shards_read_back, check_site_stats, download_refused, downloaded_fixture,
                          rerun_changes_nothing)
from downloadsite import site  # noqa: F401  (fixture: this module's site; the engine starts its own Ray)

from pipeline.download import netguard_urllib as netguard
from pipeline.download.img2dataset_engine import Img2datasetConfig as DownloadConfig, error_reason
from pipeline.download.img2dataset_engine import run_img2dataset_download as run_download
from pipeline.core.errors import WitError
from pipeline.core.io import read_json
from pipeline.core.stats import StageStats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module", autouse=True)
def tidy_ray() -> Iterator[None]:
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def small_config(**kw: object) -> DownloadConfig:
    return DownloadConfig(**{**SMALL_RUN, **kw})


downloaded = downloaded_fixture(run_download, small_config)


# ---------------------------------------------------------------- fast checks (no Ray)

def test_private_hosts_refused_without_flag(site: Site) -> None:
    shards = download_refused(site, run_download, small_config())
    refused = pq.read_table(shards / "_refused.parquet")
    assert refused.num_rows == N_INPUTS and set(refused["status"].to_pylist()) == {"refused"}
    assert list(shards.glob("*.tar")) == [] and read_json(shards / "sizes.json") == {}


def test_screen_urls_reasons() -> None:
    assert netguard.screen_urls(SCREEN_URLS) == SCREEN_REASONS
    assert netguard.screen_urls(SCREEN_URLS[:3], allow_private_networks=True) == [None] * 3


def test_connection_guard_blocks_loopback(site: Site) -> None:
    url = site.base_url + "/img200.jpg"
    try:
        netguard.set_guard(True)
        with pytest.raises(urllib.error.URLError, match="private address refused"):
            urllib.request.urlopen(url, timeout=5)
    finally:
        netguard.set_guard(False)
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200


def test_error_reasons() -> None:
    assert error_reason("failed_to_download", "HTTP Error 404: Not Found") == "http_404"
    assert error_reason("failed_to_download", "HTTP Error 503: Service Unavailable") == "http_5xx"
    assert error_reason("failed_to_download", "<urlopen error timed out>") == "timeout"
    assert error_reason("failed_to_download", "The read operation timed out") == "timeout"
    assert error_reason("failed_to_download", "<urlopen error [Errno -2] Name or service not known>") == "dns_error"
    assert error_reason("failed_to_download", "<urlopen error [Errno 111] Connection refused>") == "connection_error"
    assert error_reason("failed_to_resize", "Image decoding error") == "decode_error"
    assert error_reason("failed_to_download", "<urlopen error private address refused: a -> 10.0.0.1>") \
        == "private_address"
    assert error_reason("failed_to_resize", "something new") == "resize_error"


def test_bad_inputs(tmp_path: Path) -> None:
    check_bad_inputs(run_download, tmp_path)


# ---------------------------------------------------------------- the real download

def test_stats_account_for_every_url(downloaded: tuple[Site, StageStats]) -> None:
    site, stats = downloaded
    check_site_stats(site, stats)
    assert dict(stats.dropped) == {"http_404": 1, "decode_error": 2, "bad_url": 1}
    shards = site.root / "shards"
    tables = [pq.read_table(p) for p in sorted(shards.glob("0*.parquet"))]
    statuses = [s for t in tables for s in t["status"].to_pylist()]
    statuses += pq.read_table(shards / "_refused.parquet")["status"].to_pylist()
    assert len(statuses) == N_INPUTS
    assert {s: statuses.count(s) for s in set(statuses)} == \
        {"success": 10, "failed_to_download": 1, "failed_to_resize": 2, "refused": 1}
    urls = [u for t in tables for u in t["url"].to_pylist()] + \
        pq.read_table(shards / "_refused.parquet")["url"].to_pylist()
    assert sorted(urls) == sorted(site.captions)


def test_shards_read_back_with_webdataset(downloaded: tuple[Site, StageStats]) -> None:
    check_shards_read_back(downloaded[0])


def test_phash_column(downloaded: tuple[Site, StageStats]) -> None:
    site, _ = downloaded
    for p in sorted((site.root / "shards").glob("0*.parquet")):
        t = pq.read_table(p)
        assert t.schema.field("phash").type == pa.int64() and "phash_flip" in t.column_names
        for status, h in zip(t["status"].to_pylist(), t["phash"].to_pylist()):
            assert (h is not None) == (status == "success")


def test_overlap_finds_near_duplicates_only(downloaded: tuple[Site, StageStats]) -> None:
    check_overlap(downloaded[0], DownloadConfig().max_distance)


def test_rerun_is_a_noop(downloaded: tuple[Site, StageStats], tmp_path: Path) -> None:
    """A re-run with the same options does nothing; with another output option the shards are rebuilt."""
    site, first = downloaded
    shards = site.root / "shards"
    again = rerun_changes_nothing(site, first, run_download, small_config(allow_private_networks=True))
    assert again.extra["hashed_shards"] == 0 and first.extra["hashed_shards"] == 3
    keys = [k for p in sorted(shards.glob("0*.parquet")) for k in pq.read_table(p)["key"].to_pylist()]
    assert len(keys) == len(set(keys)) == 13
    copy = tmp_path / "shards-copy"  # the fixture's shards stay as they are for the other tests
    shutil.copytree(shards, copy)
    rebuilt = run_download(site.input_dir, copy, small_config(allow_private_networks=True, image_size=128))
    assert rebuilt.extra["hashed_shards"] == 3 and rebuilt.inputs == first.inputs and rebuilt.accounted()


def test_guard_in_ray_workers_blocks_what_screening_missed(site: Site, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that passes the screen but connects to a private address (DNS rebinding, a redirect)
    is refused by the connection guard inside img2dataset's Ray tasks."""
    monkeypatch.setattr(netguard, "screen_urls", lambda urls, *a, **k: [None for _ in urls])
    urls = [site.base_url + "/img200.jpg", site.base_url + "/img201.jpg"]
    pq.write_table(pa.table({"url": urls, "caption": ["x", "y"]}), tmp_path / "part-00000.parquet")
    stats = run_download(tmp_path / "part-00000.parquet", tmp_path / "shards", small_config(), None,
                         tmp_path / "overlap")
    assert (stats.inputs, stats.kept, dict(stats.dropped)) == (2, 0, {"private_address": 2})
    messages = pq.read_table(tmp_path / "shards" / "00000.parquet")["error_message"].to_pylist()
    assert all("private address refused" in m for m in messages)



def test_engine_option_runs_img2dataset_through_run_download(site: Site, tmp_path: Path) -> None:
    """`wit download --engine img2dataset` goes through the public entry point with the shared options."""
    from pipeline.download.stage import run_download as public_run_download
    from pipeline.download.config import DownloadConfig as PublicConfig

    cfg = PublicConfig(engine="img2dataset", allow_private_networks=True, number_sample_per_shard=5,
                       processes_count=2, thread_count=8, timeout=5)
    stats = public_run_download(site.input_dir, tmp_path / "shards", cfg, site.eval_indexes, tmp_path / "overlap")
    assert stats.stage == "download" and stats.accounted() and stats.kept >= 1
    assert (tmp_path / "shards" / "sizes.json").is_file() and (tmp_path / "overlap" / "overlap.parquet").is_file()
