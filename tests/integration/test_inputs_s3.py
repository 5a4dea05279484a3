"""Filter, balance and download on ``s3://`` inputs (a prefix, a glob, a list mixing local and remote parts),
read through fsspec's real s3fs client from an S3 API server on 127.0.0.1 (moto's server, found through
``AWS_ENDPOINT_URL`` as in test_crawl_s3.py). Outputs equal those of the same parts read from disk; a re-run
skips every part (run keys from size and ETag) until an object is overwritten; bad inputs are one line."""
from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from downloadsite import serve
from faultserver import jpeg_bytes, smooth_image
from s3server import clear_s3fs_cache, free_port, s3_server

from pipeline.balance.stage import BalanceConfig, run_balance
from pipeline.core.errors import WitError
from pipeline.download.plan import PLAN_DIR, URLS_FILE, make_plan, open_plan
from pipeline.download.stage import DownloadConfig, run_download
from pipeline.filter.stage import FilterConfig, run_filter

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]
BUCKET = "wit-inputs"
S3 = f"s3://{BUCKET}"
FILTER = FilterConfig(batch_rows=7, progress=False)  # several batches per part






@dataclasses.dataclass
class Bucket:
    client: Any

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=body)

    def upload(self, prefix: str, files: list[Path]) -> None:
        for f in files:
            self.put(f"{prefix}/{f.name}", f.read_bytes())


@pytest.fixture(scope="module")
def bucket() -> Iterator[Bucket]:
    """An S3 API on 127.0.0.1 with an empty bucket; the environment points fsspec's s3fs at it."""
    with s3_server(BUCKET) as client:
        yield Bucket(client)


def good_caption(part: int, i: int) -> str:
    return f"A photo of a red bicycle number {i} leaning on a wall in part {part}"


def candidate_table(part: int, n: int = 12) -> pa.Table:
    """Candidates with a bit of every fate: kept, file names, too short, not English; parts after the first
    start with two repeats of pairs of part 0."""
    captions = [[good_caption(part, i), f"IMG_{part}{i:03d}.JPG", "ok",
                 f"Una foto de una bicicleta roja número {i} apoyada en la pared"][i % 4] for i in range(n)]
    urls = [f"http://img.test/{part}/{i}.jpg" for i in range(n)]
    if part:
        urls[:2] = ["http://img.test/0/0.jpg", "http://img.test/0/4.jpg"]
        captions[:2] = [good_caption(0, 0), good_caption(0, 4)]
    return pa.table({"uid": [f"p{part}-{i}" for i in range(n)], "url": urls, "caption": captions})


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=5)
    return buf.getvalue()


def write_local(folder: Path, tables: dict[str, pa.Table]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        (folder / name).write_bytes(parquet_bytes(table))
    return sorted(folder / name for name in tables)


@pytest.fixture(scope="module")
def candidates(bucket: Bucket, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three candidate parts on disk, the same bytes under ``cand/`` in the bucket beside files that are no
    parts (a sidecar, a hidden file, a text file, a part in a sub-prefix: a prefix is read one level deep)."""
    parts = write_local(tmp_path_factory.mktemp("cand"), {f"part-{i}.parquet": candidate_table(i) for i in range(3)})
    bucket.upload("cand", parts)
    for key in ("cand/_meta.parquet", "cand/.hidden.parquet", "cand/notes.txt"):
        bucket.put(key, b"not parquet")
    bucket.put("cand/sub/part-9.parquet", parquet_bytes(candidate_table(9)))
    return parts


@pytest.fixture(scope="module")
def filtered(candidates: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """The local run every remote run must equal."""
    out = tmp_path_factory.mktemp("filtered-local")
    return run_filter(candidates[0].parent, out, FILTER), out


def outputs(out: Path, subs: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    """Every output part's rows, in file order, by ``sub/name``."""
    return {f"{sub}/{p.name}": pq.read_table(p).to_pylist() for sub in subs
            for p in sorted((out / sub).glob("*.parquet"))}


def same_filter_run(stats: Any, out: Path, filtered: tuple[Any, Path]) -> None:
    local, local_out = filtered
    assert (stats.inputs, stats.kept, dict(stats.dropped)) == (local.inputs, local.kept, dict(local.dropped))
    assert outputs(out, ("kept", "rejected")) == outputs(local_out, ("kept", "rejected"))


# ---------------------------------------------------------------- filter

def test_filter_on_an_s3_prefix_equals_the_local_run(filtered: tuple[Any, Path], tmp_path: Path) -> None:
    local = filtered[0]
    assert local.inputs == 36 and local.kept > 0 and set(local.dropped) >= {"filename", "too_short", "duplicate"}
    stats = run_filter(f"{S3}/cand/", tmp_path / "out", FILTER)
    same_filter_run(stats, tmp_path / "out", filtered)
    assert sorted(p.name for p in (tmp_path / "out" / "kept").glob("*")) == [f"part-{i}.parquet" for i in range(3)]


def test_filter_on_an_s3_glob_and_a_mixed_list(candidates: list[Path], filtered: tuple[Any, Path],
                                               tmp_path: Path) -> None:
    stats = run_filter(f"{S3}/cand/part-*.parquet", tmp_path / "glob", FILTER)
    same_filter_run(stats, tmp_path / "glob", filtered)
    mixed = [str(candidates[0]), f"{S3}/cand/part-1.parquet", f"{S3}/cand/part-2.parquet"]
    stats = run_filter(mixed, tmp_path / "mixed", FILTER)
    same_filter_run(stats, tmp_path / "mixed", filtered)


def test_rerun_skips_remote_parts_until_an_object_changes(bucket: Bucket, candidates: list[Path],
                                                          tmp_path: Path) -> None:
    bucket.upload("rerun", candidates)
    out = tmp_path / "out"
    assert run_filter(f"{S3}/rerun", out, FILTER).extra["skipped_parts"] == 0
    keys = {p.name: json.loads(p.read_text())["run_key"] for p in (out / "_parts").glob("*.json")}
    again = run_filter(f"{S3}/rerun", out, FILTER)
    assert again.extra["skipped_parts"] == 3 and again.inputs == 36
    assert {p.name: json.loads(p.read_text())["run_key"] for p in (out / "_parts").glob("*.json")} == keys
    bucket.put("rerun/part-2.parquet", parquet_bytes(candidate_table(2, n=4)))  # other content, same name
    changed = run_filter(f"{S3}/rerun", out, FILTER)
    assert changed.extra["skipped_parts"] == 2 and changed.inputs == 12 + 12 + 4
    rows = pq.read_table(out / "kept" / "part-2.parquet").num_rows + \
        pq.read_table(out / "rejected" / "part-2.parquet").num_rows
    assert rows == 4


def test_missing_remote_inputs_are_one_line(candidates: list[Path], tmp_path: Path) -> None:
    for url in (f"{S3}/cand/nothing.parquet", f"{S3}/nothing/", "s3://no-such-bucket/cand/"):
        with pytest.raises(WitError, match=f"^{url}: not found") as err:
            run_filter(url, tmp_path / "out", FILTER)
        assert "\n" not in str(err.value)
    with pytest.raises(WitError, match=f"^{S3}/cand/gone.parquet: not found"):
        run_filter([str(candidates[0]), f"{S3}/cand/gone.parquet"], tmp_path / "out", FILTER)
    with pytest.raises(WitError, match="no parquet parts to filter"):
        run_filter(f"{S3}/cand/*.json", tmp_path / "out", FILTER)


def test_same_name_local_and_remote_is_refused(candidates: list[Path], tmp_path: Path) -> None:
    both = re.escape(f"{candidates[0]} and {S3}/cand/part-0.parquet: two input parts named part-0.parquet")
    with pytest.raises(WitError, match="^" + both):
        run_filter([str(candidates[0]), f"{S3}/cand/"], tmp_path / "out", FILTER)


@pytest.mark.parametrize("env, error", [
    ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
      "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}, "NoCredentialsError"),
    ({"AWS_ENDPOINT_URL": "closed port", "AWS_MAX_ATTEMPTS": "1"}, "EndpointConnectionError"),
])
def test_credentials_and_endpoint_errors_are_one_line(candidates: list[Path], env: dict[str, str | None], error: str,
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, f"http://127.0.0.1:{free_port()}" if value == "closed port" else value)
    clear_s3fs_cache()
    try:
        with pytest.raises(WitError, match=f"^{S3}/cand/: cannot list \\({error}") as err:
            run_filter(f"{S3}/cand/", tmp_path / "out", FILTER)
        assert "\n" not in str(err.value)
    finally:
        monkeypatch.undo()
        clear_s3fs_cache()


# ---------------------------------------------------------------- balance

def test_balance_on_s3_kept_pairs_equals_the_local_run(bucket: Bucket, filtered: tuple[Any, Path],
                                                       tmp_path: Path) -> None:
    kept = sorted((filtered[1] / "kept").glob("*.parquet"))
    bucket.upload("kept", kept)
    queries = tmp_path / "queries.json"
    queries.write_text(json.dumps(["bicycle", "wall", "red", "part"]))
    cfg = BalanceConfig(queries=str(queries), t=3, batch_rows=4, progress=False)
    local = run_balance(kept[0].parent, tmp_path / "local", cfg)
    remote = run_balance(f"{S3}/kept/", tmp_path / "remote", cfg)
    assert local.kept > 0 and "over_balanced" in local.dropped
    assert (remote.inputs, remote.kept, dict(remote.dropped)) == (local.inputs, local.kept, dict(local.dropped))
    assert outputs(tmp_path / "remote", ("", "_rejected")) == outputs(tmp_path / "local", ("", "_rejected"))
    assert run_balance(f"{S3}/kept/", tmp_path / "remote", cfg).extra["skipped_parts"] == len(kept)


# ---------------------------------------------------------------- download

@pytest.fixture(scope="module")
def pairs(bucket: Bucket, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """Two parts of pairs whose URLs a local HTTP server answers (5 images, 1 missing), on disk and under
    ``pairs/`` in the bucket."""
    routes = {f"/img{i}.jpg": (200, "image/jpeg", jpeg_bytes(smooth_image(i))) for i in range(5)}
    server = serve(routes)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [base + route for route in sorted(routes)] + [base + "/missing.jpg"]
    tables = {f"part-{n}.parquet": pa.table({"uid": [f"u{n}{i}" for i in range(3)], "url": urls[n * 3:n * 3 + 3],
                                              "caption": [f"caption {n}{i}" for i in range(3)]}) for n in range(2)}
    parts = write_local(tmp_path_factory.mktemp("pairs"), tables)
    bucket.upload("pairs", parts)
    try:
        yield parts
    finally:
        server.shutdown()
        server.server_close()


def download_config() -> DownloadConfig:
    return DownloadConfig(number_sample_per_shard=4, processes_count=1, thread_count=4, image_size=64,
                          allowed_networks=("127.0.0.1/32",), timeout=5)


def test_download_plan_reads_s3_input(bucket: Bucket, pairs: list[Path], tmp_path: Path) -> None:
    cfg = download_config()
    local = make_plan(pairs[0].parent, tmp_path / "local", cfg)
    remote = make_plan(f"{S3}/pairs/", tmp_path / "remote", cfg)
    assert (remote.inputs, remote.n_shards) == (local.inputs, local.n_shards) == (6, 2)
    assert pq.read_table(remote.urls_file).equals(pq.read_table(local.urls_file))
    assert open_plan(f"{S3}/pairs/", tmp_path / "remote", cfg)[2] is not None  # same objects: the plan is reused
    bucket.put("rerun-pairs/part-0.parquet", pairs[0].read_bytes())
    plan = make_plan(f"{S3}/rerun-pairs/", tmp_path / "changed", cfg)
    assert plan.inputs == 3
    bucket.put("rerun-pairs/part-0.parquet", pairs[1].read_bytes())
    assert open_plan(f"{S3}/rerun-pairs/", tmp_path / "changed", cfg)[2] is None  # overwritten: planned anew
    assert make_plan(f"{S3}/rerun-pairs/", tmp_path / "changed", cfg).inputs == 3
    staged = pq.read_table(tmp_path / "changed" / PLAN_DIR / URLS_FILE)
    assert staged["url"].to_pylist() == pq.read_table(pairs[1])["url"].to_pylist()


def test_download_of_s3_input(pairs: list[Path], tmp_path: Path) -> None:
    stats = run_download(f"{S3}/pairs/", tmp_path / "shards", download_config(), overlap_dir=tmp_path / "overlap")
    assert (stats.inputs, stats.kept) == (6, 5), (stats.inputs, stats.kept, stats.dropped)
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == ["00000.tar", "00001.tar"]
