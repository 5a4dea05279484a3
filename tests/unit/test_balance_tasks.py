"""The balance stage as map/reduce over an output :class:`Folder`: the same functions in this process as in
Ray tasks, outputs on an fsspec store (``memory://`` here, in this process; ``s3://`` with Ray in
tests/integration/test_balance_ray_s3.py), resume from the commit markers, the tasks' helpers."""
from __future__ import annotations

import json
import pickle
import types
import uuid
from pathlib import Path
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray.exceptions import RayTaskError

from pipeline.balance.queries import QueryMatcher, make_matcher
from pipeline.balance.stage import (BalanceConfig, PartTasks, kept_name, run_balance, use_ray,
                                    worker_matcher)
from pipeline.core.config import output_options
from pipeline.core.env import worker_env
from pipeline.core.executor import ray_result
from pipeline.core.errors import WitError
from pipeline.core.storage import Folder
from pipeline.crawl.extract import make_uid

QUERIES = ["alpha", "beta", "gamma", "never"]
PARTS = ["part-000.parquet", "part-001.parquet", "part-002.parquet"]


def captions() -> list[str]:
    return ([f"alpha shot {i}" for i in range(600)] + [f"beta shot {i}" for i in range(120)]
            + [f"Beta and GAMMA {i}" for i in range(10)] + [f"nothing here {i}" for i in range(30)])


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    rows = [{"uid": make_uid(f"http://x.test/{i}.jpg", c), "url": f"http://x.test/{i}.jpg", "caption": c}
            for i, c in enumerate(captions())]
    folder = tmp_path / "in"
    folder.mkdir()
    for k, name in enumerate(PARTS):
        pq.write_table(pa.Table.from_pylist(rows[k::len(PARTS)]), folder / name, row_group_size=50)
    return folder


@pytest.fixture()
def cfg(tmp_path: Path) -> BalanceConfig:
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(QUERIES))
    return BalanceConfig(queries=str(path), t=50, rule="metaclip", batch_rows=64, progress=False, workers=1)


@pytest.fixture()
def memory_url() -> Iterator[str]:
    url = f"memory://wit-balance-{uuid.uuid4().hex[:8]}/balanced"
    yield url
    fsspec.filesystem("memory").rm(url.split("://", 1)[1].rsplit("/", 1)[0], recursive=True)


def table(folder: Folder, name: str) -> list[dict[str, Any]]:
    with folder.open(name) as f:
        return sorted(pq.read_table(f).to_pylist(), key=lambda r: (r.get("uid", ""), r.get("query_id", 0)))


def outputs(folder: Folder) -> dict[str, Any]:
    """Every row the stage wrote (kept, rejected, per-query counts) and its stats."""
    names = [*PARTS, *(f"_rejected/{p}" for p in PARTS), "_queries/query_counts.parquet"]
    return {**{n: table(folder, n) for n in names}, "stats": folder.read_json("_stats.json")}


def test_store_output_equals_local_output_and_resumes_from_markers(inputs: Path, cfg: BalanceConfig,
                                                                     memory_url: str, tmp_path: Path) -> None:
    local = run_balance(inputs, tmp_path / "local", cfg)
    remote = run_balance(inputs, memory_url, cfg)
    store = Folder(memory_url)
    assert local.to_dict() == remote.to_dict() and local.dropped["over_balanced"] > 0 and local.accounted()
    assert outputs(store) == outputs(Folder(tmp_path / "local"))
    assert json.loads(store.read_bytes("_queries/queries.json")) == QUERIES
    assert not [n for n in store.tree() if "tmp" in n]  # staged files were moved, none left behind
    assert len(store.names("_parts", "*.counts-*.parquet")) == len(PARTS)

    again = run_balance(inputs, memory_url, cfg)
    assert again.extra["skipped_parts"] == len(PARTS) and again.to_dict()["dropped"] == local.to_dict()["dropped"]
    store.remove("_parts/part-001.stats.json")
    store.remove("part-001.parquet")  # only the part without its marker is redone: the others are left alone
    store.write_bytes("part-002.parquet", store.read_bytes("part-000.parquet"))
    redone = run_balance(inputs, memory_url, cfg)
    assert redone.extra["skipped_parts"] == len(PARTS) - 1 and store.exists("part-001.parquet")
    assert table(store, "part-002.parquet") == table(store, "part-000.parquet")  # still the planted copy


def test_a_missing_output_redoes_its_part(inputs: Path, cfg: BalanceConfig, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run_balance(inputs, out, cfg)
    (out / kept_name("part-002.parquet")).unlink()
    again = run_balance(inputs, out, cfg)
    assert again.extra["skipped_parts"] == len(PARTS) - 1 and again.to_dict() == {
        **first.to_dict(), "extra": {**first.extra, "skipped_parts": len(PARTS) - 1}}


def test_a_failed_part_leaves_no_marker_and_no_staged_files(inputs: Path, cfg: BalanceConfig,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_balance(inputs, out, cfg)
    bad = pa.table({"uid": ["a", None], "caption": ["alpha", "beta"]})
    pq.write_table(bad, inputs / "part-001.parquet")
    with pytest.raises(WitError, match="part-001.parquet: row 1 of a batch has no uid"):
        run_balance(inputs, out, cfg)
    assert not (out / "_parts" / "part-001.stats.json").exists()  # its old marker went first
    assert (out / "_parts" / "part-000.stats.json").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]


def test_ray_only_for_two_parts_or_more_and_not_one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert use_ray(BalanceConfig(), 2) and use_ray(BalanceConfig(workers=3), 5)
    assert not use_ray(BalanceConfig(), 1) and not use_ray(BalanceConfig(), 0)
    assert not use_ray(BalanceConfig(workers=1), 10)
    cfg = BalanceConfig(workers=1)
    ran = list(PartTasks(cfg, {}, None).map(lambda item, k: item * k, [1, 2, 3], "test", 10))  # type: ignore[arg-type]
    assert ran == [(1, 10), (2, 20), (3, 30)]
    assert output_options(BalanceConfig(workers=4, ray_address="x")) == output_options(BalanceConfig())


def test_worker_env_passes_store_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("HOME_SECRET", "not for workers")
    env = worker_env()
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and env["AWS_SECRET_ACCESS_KEY"] == "s"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and "HOME_SECRET" not in env


def test_a_cluster_address_puts_even_one_part_on_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not use_ray(BalanceConfig(workers=1), 1) and not use_ray(BalanceConfig(), 1)
    assert use_ray(BalanceConfig(), 2) and use_ray(BalanceConfig(workers=1, ray_address="127.0.0.1:1"), 1)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert use_ray(BalanceConfig(workers=1), 1) and not use_ray(BalanceConfig(), 0)


def test_a_worker_builds_the_automaton_once() -> None:
    matcher = QueryMatcher(QUERIES)
    first, second = pickle.loads(pickle.dumps(matcher)), pickle.loads(pickle.dumps(matcher))
    built = worker_matcher(first)
    assert built.match("alpha beta") == [0, 1] and built.built
    assert worker_matcher(second) is built and not second.built
    other = worker_matcher(make_matcher(QUERIES, "metaclip"))  # another mode: another automaton
    assert other is not built and other.mode == "metaclip"
    assert worker_matcher(QueryMatcher(QUERIES[:2])) is not other


def test_a_task_error_is_its_one_line() -> None:
    def fails(error: BaseException) -> Any:
        def get(ref: Any) -> Any:
            raise RayTaskError("_balance_task", "Traceback (most recent call last):\n  ...", error)
        return types.SimpleNamespace(get=get, exceptions=types.SimpleNamespace(RayTaskError=RayTaskError))

    with pytest.raises(WitError) as caught:
        ray_result("ref", fails(WitError("s3://b/in/p.parquet: row 3 of a batch has no uid")))
    assert str(caught.value) == "s3://b/in/p.parquet: row 3 of a batch has no uid"
    with pytest.raises(RayTaskError):
        ray_result("ref", fails(ValueError("a bug")))
