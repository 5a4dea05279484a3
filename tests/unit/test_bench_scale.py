"""The cost model of ``benchmarks/bench_scale.py`` (docs/scale.md quotes it): its arithmetic, and the committed
``benchmarks/results/scale.json`` agreeing with the rates it was computed from. No Ray is started."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULT = REPO / "benchmarks" / "results" / "scale.json"


@pytest.fixture(scope="module")
def bench() -> Any:
    # the module sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import: keep this session's environment as it was
    with mock.patch.dict(os.environ), mock.patch.object(sys, "path", [str(REPO / "benchmarks"), *sys.path]):
        spec = importlib.util.spec_from_file_location("bench_scale", REPO / "benchmarks" / "bench_scale.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def test_cost_model_arithmetic(bench: Any) -> None:
    rates = bench.rates_from_results()
    measured = {"download_one_node": {"cpu_ms_per_image_all_processes": 4.0},
                "shard_tar_bytes_per_sample": 40_000, "candidates_parquet_bytes_per_pair": 64.0}
    model = bench.cost_model(rates, measured)
    vcpus, price = bench.INSTANCE["vcpus"], bench.INSTANCE["usd_per_hour"]
    for label, pairs in bench.PAIRS.items():
        row = model["pairs"][label]
        for name, stage in row["stages"].items():
            core_h = pairs / stage["rate_per_core_s"] / 3600
            assert stage["core_hours"] == pytest.approx(core_h, rel=5e-3), name
            assert stage["usd"] == pytest.approx(core_h / vcpus * price, rel=5e-3), name
            ten = stage["wall_hours_10_nodes"]
            assert ten == pytest.approx(core_h / vcpus / 10 if stage["ray_parallel"] else core_h, rel=5e-3), name
        steady = row["stages"]["download, steady state (optimistic)"]
        assert steady["rate_per_core_s"] == 250.0
        assert row["shards_tb_256px"] == pytest.approx(pairs * 40_000 / 1e12, rel=5e-3)
        assert set(row["main_path"]) == {"crawl (WAT)", "filter", "balance", "download (incl. pHash + eval match)"}
    assert all(stage["ray_parallel"] for stage in model["pairs"]["400M"]["stages"].values())  # every stage on Ray


def test_committed_result_matches_its_rates(bench: Any) -> None:
    if not RESULT.is_file():
        pytest.skip("benchmarks/results/scale.json not written yet")
    report = json.loads(RESULT.read_text())
    assert report["cost_model"] == json.loads(json.dumps(bench.cost_model(report["rates"], report["measured_here"])))
    assert "not a speed-up" in report["nodes"]["note"]
    assert set(report["nodes"]["summary"]) == {"1", "2", "3"}
    assert report["memory"]["download_workers"]["input_ratio"] == 10
