"""The filter stage on a local Ray (workers=2) with its input parts and its output folder on ``s3://`` (moto's S3
API server on 127.0.0.1, see tests/s3server.py): the parts, the duplicate shuffle's map and reduce tasks run as
Ray tasks sharing no disk, only the bucket. Kept and rejected rows and reasons equal those of the local run in
this process; a re-run skips every part; a part whose marker is gone is redone alone, with the same rows."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3server import s3_server

from pipeline.core.errors import WitError
from pipeline.core.executor import ray_session
from pipeline.core.storage import Folder
from pipeline.filter.exact_dedup import ShufflePlan, map_part
from pipeline.filter.stage import WORK_DIR, FilterConfig, map_resources, run_filter, run_tasks

pytestmark = pytest.mark.timeout(300)
BUCKET = "wit-filter"
S3 = f"s3://{BUCKET}"
CC3M = Path("fixtures") / "captions" / "dev" / "cc3m" / "Validation_GCC-1.1.0-Validation.tsv"
CFG = FilterConfig(dedup_bucket_rows=53, batch_rows=40, progress=False, workers=2)  # several buckets, batches
LOCAL = FilterConfig(dedup_bucket_rows=1000, batch_rows=64, progress=False, workers=1)
N_PARTS = 4


def candidate_tables(shared_dir: Path) -> dict[str, pa.Table]:
    """Four parts of real captions (Conceptual Captions' validation set), each after the first repeating pairs
    of the earlier ones and of itself, with file-name, too-short and German captions among them."""
    path = shared_dir / CC3M
    if not path.is_file():
        pytest.skip(f"caption fixture not found at {path} (set WIT_SHARED_DIR)")
    with open(path, newline="", encoding="utf-8") as fh:
        pairs = [(url, caption) for caption, url in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)][:240]
    odd = [("http://x.test/a.jpg", "IMG_2034.JPG"), ("http://x.test/b.jpg", "ok"),
           ("http://x.test/c.jpg", "Ein schwarzer Hund läuft bei Sonnenuntergang am Strand")]
    tables = {}
    for n in range(N_PARTS):
        rows = pairs[n * 60:(n + 1) * 60]
        rows[5::7] = [pairs[(n * 60 + 11 * k) % (n * 60 + 40)] for k in range(len(rows[5::7]))]
        rows += odd
        tables[f"part-{n}.parquet"] = pa.table({"uid": [f"p{n}-{i}" for i in range(len(rows))],
                                                "url": [u for u, _ in rows], "caption": [c for _, c in rows]})
    return tables


@pytest.fixture(scope="module")
def s3(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """The S3 API with the candidate parts under ``in/``; yields its client and the same parts on disk."""
    local = tmp_path_factory.mktemp("in")
    with s3_server(BUCKET) as client:
        for name, table in candidate_tables(shared_dir).items():
            pq.write_table(table, local / name, row_group_size=25)
            client.put_object(Bucket=BUCKET, Key=f"in/{name}", Body=(local / name).read_bytes())
        yield client, local


def rows(folder: Folder) -> dict[str, list[dict[str, Any]]]:
    """Every output part's rows in file order, by ``kept/<name>`` and ``rejected/<name>``."""
    return {f"{sub}/{name}": pq.read_table(io.BytesIO(folder.read_bytes(f"{sub}/{name}"))).to_pylist()
            for sub in ("kept", "rejected") for name in folder.names(sub, "*.parquet")}


def modified(client: Any, prefix: str) -> dict[str, Any]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {obj["Key"]: obj["LastModified"] for obj in listing}


def test_filter_on_ray_with_s3_output_equals_the_local_run(s3: tuple[Any, Path], tmp_path: Path) -> None:
    client, local_in = s3
    local = run_filter(local_in, tmp_path / "local", LOCAL)
    expected = rows(Folder(tmp_path / "local"))
    assert local.inputs == N_PARTS * 63 and {"duplicate", "filename", "too_short", "language"} <= set(local.dropped)
    assert any(r["reason"] == "duplicate" for r in expected["rejected/part-3.parquet"])

    out = Folder(f"{S3}/out")
    stats = run_filter(f"{S3}/in/", out.location, CFG)
    assert (stats.inputs, stats.kept, dict(stats.dropped)) == (local.inputs, local.kept, dict(local.dropped))
    assert stats.extra["dedup_buckets"] == -(-local.inputs // 53) > 1 and stats.extra["dedup_repeats"] > 0
    assert rows(out) == expected
    assert out.names("_parts") == [f"part-{n}.stats.json" for n in range(N_PARTS)] and out.exists("_stats.json")
    assert not modified(client, f"out/{WORK_DIR}/"), "the shuffle's files are removed after a successful run"

    before = modified(client, "out/")
    again = run_filter(f"{S3}/in/", out.location, CFG)
    assert again.extra["skipped_parts"] == N_PARTS and again.to_dict()["dropped"] == stats.to_dict()["dropped"]
    assert {k: v for k, v in modified(client, "out/").items() if k != "out/_stats.json"} == \
        {k: v for k, v in before.items() if k != "out/_stats.json"}

    time.sleep(1.1)  # LastModified has a resolution of a second
    client.delete_object(Bucket=BUCKET, Key="out/_parts/part-2.stats.json")
    redone = run_filter(f"{S3}/in/", out.location, CFG)  # one part to do: in this process
    assert redone.extra["skipped_parts"] == N_PARTS - 1 and redone.to_dict()["dropped"] == stats.to_dict()["dropped"]
    assert rows(out) == expected
    after = modified(client, "out/")
    changed = sorted(k for k in before if k != "out/_stats.json" and after[k] != before[k])
    assert changed == ["out/_parts/part-2.stats.json", "out/kept/part-2.parquet", "out/rejected/part-2.parquet"]

    for n in (1, 3):  # two parts to do: on Ray again
        client.delete_object(Bucket=BUCKET, Key=f"out/_parts/part-{n}.stats.json")
    resumed = run_filter(f"{S3}/in/", out.location, CFG)
    assert resumed.extra["skipped_parts"] == N_PARTS - 2 and resumed.to_dict()["dropped"] == stats.to_dict()["dropped"]
    assert rows(out) == expected and not modified(client, f"out/{WORK_DIR}/")


def test_a_tasks_wit_error_is_one_line_on_ray(s3: tuple[Any, Path], tmp_path: Path) -> None:
    part = sorted(s3[1].glob("*.parquet"))[0]
    plan = ShufflePlan(str(tmp_path / "work"), (0,), (99,), (0,), 2, frozenset({0}))  # a footer said 99 rows
    with ray_session(None, 1):
        with pytest.raises(WitError, match=r"part-0.parquet: 63 rows, its footer said 99 \(changed during the run\?\)$"):
            list(run_tasks(map_part, [(0, part)], map_resources(CFG), (plan,), on_ray=True))
