"""The balance stage on a cluster without shared disk: inputs and output on ``s3://`` (an S3 API server on
127.0.0.1, tests/s3server.py), count and sample tasks on a local Ray with two workers, which get the store's
endpoint and credentials through their runtime environment. Real captions (CC3M's validation split and WIT's
English test captions, /work/shared/fixtures/captions/dev) in four parts, balanced with a small ``t``: rows,
rejected rows, per-query counts and stats equal those of the in-process run on local files; a re-run skips every
part, and a part whose commit marker is deleted is the only one redone."""
from __future__ import annotations

import io
import itertools
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3server import s3_server

from pipeline.core import executor
from pipeline.balance.queries import STOPWORDS
from pipeline.balance.stage import BalanceConfig, run_balance
from pipeline.core.storage import Folder
from pipeline.crawl.extract import make_uid

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
BUCKET = "wit-balance"
S3 = f"s3://{BUCKET}"
CAPTIONS = Path("fixtures") / "captions" / "dev"
PARTS = [f"part-{k:03d}.parquet" for k in range(4)]
N_CC3M, N_WIT = 2400, 800


def real_pairs(shared_dir: Path) -> list[dict[str, str]]:
    """``uid``, ``url``, ``caption`` rows of real captions and their image URLs."""
    cc3m = shared_dir / CAPTIONS / "cc3m" / "Validation_GCC-1.1.0-Validation.tsv"
    wit = shared_dir / CAPTIONS / "wit-iglue" / "test_en.jsonl"
    if not (cc3m.is_file() and wit.is_file()):
        pytest.skip(f"caption fixtures not found under {shared_dir / CAPTIONS} (set WIT_SHARED_DIR)")
    with open(cc3m, encoding="utf-8") as f:
        pairs = [line.rstrip("\n").split("\t")[::-1] for line in itertools.islice(f, N_CC3M)]
    with open(wit, encoding="utf-8") as f:
        rows = (json.loads(line) for line in itertools.islice(f, N_WIT))
        pairs += [[r["image_url"], r["caption_reference_description"]] for r in rows]
    return [{"uid": make_uid(url, caption), "url": url, "caption": caption} for url, caption in pairs]


def frequent_words(rows: list[dict[str, str]], n: int) -> list[str]:
    """The ``n`` words most captions have (no stopwords): a query list that matches a lot."""
    seen = Counter(w for r in rows for w in set(re.findall(r"[a-z]{3,}", r["caption"].lower())) - STOPWORDS)
    return [w for w, _ in seen.most_common(n)]


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=200)
    return buf.getvalue()


@pytest.fixture(scope="module")
def build(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The parts on disk and in the bucket (``in/``), and a query list file on this machine."""
    rows = real_pairs(shared_dir)
    root = tmp_path_factory.mktemp("balance-s3")
    (root / "in").mkdir()
    queries = root / "metadata.json"
    queries.write_text(json.dumps(frequent_words(rows, 120) + ["never matched here"]))
    with s3_server(BUCKET) as client:
        for k, name in enumerate(PARTS):
            body = parquet_bytes(pa.Table.from_pylist(rows[k::len(PARTS)]))
            (root / "in" / name).write_bytes(body)
            client.put_object(Bucket=BUCKET, Key=f"in/{name}", Body=body)
        yield {"root": root, "queries": queries, "client": client, "rows": len(rows)}


def config(build: dict[str, Any], workers: int) -> BalanceConfig:
    return BalanceConfig(queries=str(build["queries"]), t=25, rule="metaclip", batch_rows=300, progress=False,
                         workers=workers)


def rows_of(folder: Folder, name: str) -> list[dict[str, Any]]:
    with folder.open(name) as f:
        return sorted(pq.read_table(f).to_pylist(), key=lambda r: json.dumps(r, sort_keys=True))


def outputs(folder: Folder) -> dict[str, Any]:
    names = [*PARTS, *(f"_rejected/{p}" for p in PARTS), "_queries/query_counts.parquet"]
    return {**{n: rows_of(folder, n) for n in names}, "queries": folder.read_json("_queries/queries.json")}


def modified(client: Any) -> dict[str, Any]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="balanced/")["Contents"]
    return {o["Key"]: o["LastModified"] for o in listing}


@pytest.fixture()
def ray_maps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the task functions mapped on Ray."""
    calls: list[str] = []

    def spy(tasks: Any, *args: Any, **kwargs: Any) -> Any:
        tasks = list(tasks)
        calls.append(tasks[0][0].__name__)
        return stage_submit(tasks, *args, **kwargs)

    stage_submit = executor.submit_bounded  # what the stage's run_parts calls for Ray tasks
    monkeypatch.setattr(executor, "submit_bounded", spy)
    return calls


def test_ray_tasks_on_s3_equal_the_local_run_and_resume_part_by_part(build: dict[str, Any],
                                                                     ray_maps: list[str]) -> None:
    local = run_balance(build["root"] / "in", build["root"] / "local", config(build, workers=1))
    assert ray_maps == []
    assert local.inputs == build["rows"] and local.accounted()
    assert local.dropped["over_balanced"] > 0 and local.dropped["no_query"] > 0 and local.kept > 0

    out = Folder(f"{S3}/balanced")
    remote = run_balance(f"{S3}/in/", out.location, config(build, workers=2))
    assert ray_maps == ["_count_task", "_balance_task"]
    assert remote.to_dict() == local.to_dict()
    assert outputs(out) == outputs(Folder(build["root"] / "local"))
    assert out.read_json("_stats.json") == local.to_dict()
    assert len(out.names("_parts", "*.counts-*.parquet")) == len(PARTS)
    assert {key.split("/")[1] for key in modified(build["client"])} == {
        *PARTS, "_rejected", "_parts", "_queries", "_stats.json"}  # nothing staged was left in the bucket

    before = modified(build["client"])
    time.sleep(1.1)  # LastModified counts seconds: a file rewritten by the re-runs gets a new one
    again = run_balance(f"{S3}/in/", out.location, config(build, workers=2))
    assert again.extra["skipped_parts"] == len(PARTS) and again.kept == local.kept

    out.remove("_parts/part-002.stats.json")
    redone = run_balance(f"{S3}/in/", out.location, config(build, workers=2))
    assert redone.extra["skipped_parts"] == len(PARTS) - 1 and redone.kept == local.kept
    assert ray_maps == ["_count_task", "_balance_task"]  # one part to do: in process
    after = modified(build["client"])
    changed = {key for key in before if after.get(key) != before[key]}
    assert {"balanced/part-002.parquet", "balanced/_rejected/part-002.parquet",
            "balanced/_parts/part-002.stats.json"} <= changed
    assert not {key for key in changed if "part-002" not in key} - {
        "balanced/_stats.json", "balanced/_queries/query_counts.parquet"}
    assert outputs(out) == outputs(Folder(build["root"] / "local"))
