"""``wit crawl`` on ``s3://`` inputs (an S3 glob and a Common Crawl-style path listing with a bucket prefix),
read through fsspec's real s3fs client from an S3 API server on 127.0.0.1 (moto's server, found through
``AWS_ENDPOINT_URL`` the way MinIO or any S3-compatible store is). Rows equal those of the local crawl."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest
from s3server import s3_server

from pipeline.crawl.stage import CrawlConfig, run_crawl
from pipeline.core.errors import WitError

pytestmark = pytest.mark.integration
BUCKET = "commoncrawl-test"


@pytest.fixture(scope="module")
def s3(whirlwind_warc: Path) -> Iterator[str]:
    """An S3 API on 127.0.0.1 holding the Common Crawl WARC twice and a listing; yields the bucket URL."""
    with s3_server(BUCKET) as client:
        body = whirlwind_warc.read_bytes()
        for name in ("a", "b"):
            client.put_object(Bucket=BUCKET, Key=f"crawl/segments/{name}.warc.gz", Body=body)
        listing = "crawl/segments/a.warc.gz\ncrawl/segments/b.warc.gz\n"
        client.put_object(Bucket=BUCKET, Key="crawl/warc.paths.gz", Body=gzip.compress(listing.encode()))
        yield f"s3://{BUCKET}"


def rows(out: Path) -> list[tuple]:
    table = pq.read_table(out, columns=["url", "caption", "page_url", "caption_attr"]) if any(out.glob("*.parquet")) \
        else None
    return sorted(tuple(r.values()) for r in table.to_pylist()) if table is not None else []


def test_s3_glob_equals_local_crawl(s3: str, whirlwind_warc: Path, tmp_path: Path) -> None:
    local = run_crawl([str(whirlwind_warc)], tmp_path / "local")
    remote = run_crawl([f"{s3}/crawl/segments/*.warc.gz"], tmp_path / "s3")
    assert local.kept > 0 and remote.inputs == 2 * local.inputs and remote.extra["files"] == 2
    # the same archive twice: the same pairs, each twice, before any dedup
    assert rows(tmp_path / "s3") == sorted(rows(tmp_path / "local") * 2)
    again = run_crawl([f"{s3}/crawl/segments/*.warc.gz"], tmp_path / "s3")
    assert again.extra["skipped_files"] == 2 and rows(tmp_path / "s3") == sorted(rows(tmp_path / "local") * 2)


def test_s3_paths_listing_with_bucket_prefix(s3: str, tmp_path: Path) -> None:
    stats = run_crawl([f"{s3}/crawl/warc.paths.gz"], tmp_path / "out", CrawlConfig(paths_prefix=f"{s3}/"))
    assert stats.kept > 0 and len(list((tmp_path / "out").glob("*.parquet"))) == 2


def test_missing_s3_object_is_a_one_line_error(s3: str, tmp_path: Path) -> None:
    with pytest.raises(WitError, match="nothing.warc.gz"):
        run_crawl([f"{s3}/crawl/nothing.warc.gz"], tmp_path / "out")
