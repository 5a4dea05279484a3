"""``wit crawl`` and ``wit download`` writing their build folders to ``s3://`` (an S3 API server on 127.0.0.1,
moto's, found through ``AWS_ENDPOINT_URL`` as in test_crawl_s3.py), their Ray tasks sharing no disk with the
driver but the store: the mini-web downloaded into shards on the store equals the same download into a local
folder (rows, statuses, samples, overlap with an eval index read from the store); a re-run skips every shard;
a shard whose marker (``<shard>_stats.json``) is gone is rebuilt, alone. A real Common Crawl WARC crawled into
the store on Ray equals the local crawl (rows and stats)."""
from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3server import s3_server

from dedup.index import build_eval_index
from pipeline.core.errors import WitError
from pipeline.core.stats import StageStats
from pipeline.core.storage import Folder
from pipeline.crawl.stage import CrawlConfig, run_crawl
from pipeline.download.config import DownloadConfig
from pipeline.download.img2dataset_engine import run_img2dataset_download
from pipeline.download.stage import run_download
from pipeline.miniweb.generate import generate_miniweb, serve_miniweb

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]
BUCKET = "wit-build"
S3 = f"s3://{BUCKET}"
CONFIG = DownloadConfig(number_sample_per_shard=16, processes_count=2, thread_count=8, image_size=64,
                        allow_private_networks=True, progress=False)
ROW_COLUMNS = ["key", "uid", "url", "caption", "status", "reason", "width", "height", "sha256", "phash"]


@dataclasses.dataclass
class Build:
    web: Path
    candidates: Path
    eval_index: Path
    local: Path
    local_stats: StageStats
    remote_stats: StageStats


@pytest.fixture(scope="module")
def bucket() -> Iterator[Any]:
    with s3_server(BUCKET) as client:
        yield client


@pytest.fixture(scope="module")
def build(bucket: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Build]:
    """The mini-web (served on 127.0.0.1) crawled here, then downloaded into a local folder and into the store,
    with its eval set's index (local for one, on the store for the other)."""
    root = tmp_path_factory.mktemp("s3build")
    with serve_miniweb(root / "web", port=0, slow_delay_s=0.2) as server:
        web = generate_miniweb(root / "web", server.base_url, n_pairs=60, seed=0, eval_per_class=4)
        run_crawl([str(p) for p in web.archives], root / "candidates", CrawlConfig(workers=1, progress=False))
        build_eval_index("miniweb", web.eval_dir, root / "eval")
        index = root / "eval" / "miniweb"
        Folder(f"{S3}/eval/miniweb").write_bytes("index.parquet", (index / "index.parquet").read_bytes())
        local = run_download(root / "candidates", root / "shards", CONFIG, {"miniweb": index}, root / "overlap")
        remote = run_download(root / "candidates", f"{S3}/shards", CONFIG, {"miniweb": f"{S3}/eval/miniweb"},
                              f"{S3}/overlap")
        yield Build(root / "web", root / "candidates", index, root, local, remote)


def shard_files(folder: Folder, suffix: str) -> list[str]:
    return [n for n in folder.names(pattern=f"*{suffix}") if n[:5].isdigit()]


def rows(folder: Folder) -> list[tuple]:
    """Every shard row (the columns that do not depend on timing), sorted by key."""
    tables = [pq.read_table(io.BytesIO(folder.read_bytes(n)), columns=ROW_COLUMNS)
              for n in shard_files(folder, ".parquet")]
    return sorted(tuple(r.values()) for t in tables for r in t.to_pylist())


def samples(folder: Folder) -> dict[str, bytes]:
    """Tar member name -> bytes of the images and captions of every shard."""
    found = {}
    for name in shard_files(folder, ".tar"):
        with tarfile.open(fileobj=io.BytesIO(folder.read_bytes(name))) as tar:
            for member in tar:
                if not member.name.endswith(".json"):  # the json holds timings
                    found[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return found


def overlap(folder: Folder) -> list[dict[str, Any]]:
    table = pq.read_table(io.BytesIO(folder.read_bytes("overlap.parquet")))
    return table.drop_columns([c for c in table.column_names if c not in ("eval_set", "eval_id", "key", "url",
                                                                          "distance")]).to_pylist()


def counts(stats: StageStats) -> tuple:
    extra = stats.extra
    return (stats.inputs, stats.kept, dict(stats.dropped), extra["shards"], extra["failed_shards"],
            extra["bytes"] > 0, extra["eval_duplicates"], extra["eval_duplicate_samples"])


def test_download_to_s3_equals_local(build: Build) -> None:
    local, remote = Folder(build.local / "shards"), Folder(f"{S3}/shards")
    assert build.local_stats.kept > 30 and build.local_stats.extra["shards"] >= 4
    assert counts(build.remote_stats) == counts(build.local_stats)
    assert build.remote_stats.extra["downloaded_shards"] == build.local_stats.extra["shards"]
    assert rows(remote) == rows(local) and {r[4] for r in rows(remote)} >= {"success", "failed_to_download"}
    assert samples(remote) == samples(local) and samples(local)
    assert overlap(Folder(f"{S3}/overlap")) == overlap(Folder(build.local / "overlap"))
    assert overlap(Folder(build.local / "overlap")), "no planted eval near-duplicate was found"
    assert remote.read_json("sizes.json") == local.read_json("sizes.json")
    assert StageStats.read(remote).kept == build.local_stats.kept
    assert remote.exists("_input/urls.parquet") and remote.exists("_input/plan.json")
    assert not remote.tree("_work") and not any((build.local / "shards" / "_work").iterdir())
    assert {n.split("/")[-1] for n in remote.tree("_overlap")} == set(shard_files(local, ".parquet"))


def test_rerun_skips_every_shard(build: Build) -> None:
    remote = Folder(f"{S3}/shards")
    before = {n: remote.read_json(n)["start_time"] for n in shard_files(remote, "_stats.json")}
    again = run_download(build.candidates, f"{S3}/shards", CONFIG, {"miniweb": f"{S3}/eval/miniweb"},
                         f"{S3}/overlap")
    assert again.extra["downloaded_shards"] == 0 and again.extra["rematched_shards"] == 0
    assert counts(again) == counts(build.local_stats)
    assert {n: remote.read_json(n)["start_time"] for n in shard_files(remote, "_stats.json")} == before


def test_shard_without_marker_is_rebuilt_alone(build: Build) -> None:
    remote = Folder(f"{S3}/shards")
    before = {n: remote.read_json(n)["start_time"] for n in shard_files(remote, "_stats.json")}
    remote.remove("00001_stats.json")  # as a task killed between its data and its marker leaves it
    again = run_download(build.candidates, f"{S3}/shards", CONFIG, {"miniweb": f"{S3}/eval/miniweb"},
                         f"{S3}/overlap")
    assert again.extra["downloaded_shards"] == 1 and again.extra["failed_shards"] == 0
    after = {n: remote.read_json(n)["start_time"] for n in shard_files(remote, "_stats.json")}
    assert after.keys() == before.keys() and after["00001_stats.json"] > before["00001_stats.json"]
    assert {n: t for n, t in after.items() if n != "00001_stats.json"} == \
        {n: t for n, t in before.items() if n != "00001_stats.json"}
    local = Folder(build.local / "shards")
    assert rows(remote) == rows(local) and samples(remote) == samples(local)
    assert counts(again) == counts(build.local_stats)


def test_img2dataset_engine_refuses_a_store(build: Build) -> None:
    with pytest.raises(WitError, match="local folders only"):
        run_img2dataset_download(build.candidates, f"{S3}/i2d-shards")


def test_missing_remote_eval_index_is_one_line(build: Build) -> None:
    with pytest.raises(WitError, match="eval index 'x': .*/eval/none/index.parquet: eval index not found"):
        run_download(build.candidates, f"{S3}/shards", CONFIG, {"x": f"{S3}/eval/none"}, f"{S3}/overlap")


def test_shard_tasks_are_retried_by_ray() -> None:
    """A lost node's shard is run again elsewhere (Ray's retries) and rebuilt whole, its marker last."""
    assert DownloadConfig().shard_retries >= 1


# ---------------------------------------------------------------- crawl

def crawl_rows(folder: Folder) -> list[tuple]:
    names = [n for n in folder.names(pattern="*.parquet") if not n.startswith("_")]
    tables = [pq.read_table(io.BytesIO(folder.read_bytes(n))) for n in names]
    return sorted(tuple(r.values()) for r in pa.concat_tables(tables).to_pylist())


def test_crawl_to_s3_equals_local(bucket: Any, whirlwind_warc: Path, tmp_path: Path) -> None:
    """On Ray (ray_min_files 1): each archive's task publishes its part and sidecar into the store."""
    cfg = CrawlConfig(workers=2, ray_min_files=1, progress=False)
    local = run_crawl([str(whirlwind_warc)], tmp_path / "candidates", CrawlConfig(workers=1, progress=False))
    remote = run_crawl([str(whirlwind_warc)], f"{S3}/candidates", cfg)
    assert local.kept > 0 and remote.to_dict() == local.to_dict()
    out = Folder(f"{S3}/candidates")
    assert crawl_rows(out) == crawl_rows(Folder(tmp_path / "candidates"))
    assert out.names("_parts") == [p.name for p in (tmp_path / "candidates" / "_parts").iterdir()]
    assert StageStats.read(out).to_dict() == local.to_dict()
    again = run_crawl([str(whirlwind_warc)], f"{S3}/candidates", cfg)
    assert again.extra["skipped_files"] == 1 and again.kept == local.kept
