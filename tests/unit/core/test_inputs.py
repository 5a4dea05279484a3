"""Inputs as users give them: a folder, one file, a glob, a list; a missing input is one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import WitError
from pipeline.core.io import parquet_inputs
from pipeline.filter.stage import run_filter

REPO = Path(__file__).resolve().parents[3]


def _part(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    captions = [f"A photo of a red bicycle number {i} leaning on a wall" for i in range(n)]
    pq.write_table(pa.table({"uid": [f"{path.stem}-{i}" for i in range(n)],
                             "url": [f"http://x.test/{path.stem}/{i}.jpg" for i in range(n)], "caption": captions}), path)
    return path


def test_folder_file_glob_and_list(tmp_path: Path) -> None:
    a, b = _part(tmp_path / "in" / "a.parquet", 2), _part(tmp_path / "in" / "b.parquet", 3)
    (tmp_path / "in" / "notes.txt").write_text("not a part")
    assert parquet_inputs(tmp_path / "in") == [a, b]
    assert parquet_inputs(str(a)) == [a]
    assert parquet_inputs(str(tmp_path / "in" / "*.parquet")) == [a, b]
    assert parquet_inputs([str(b), str(a), str(a)]) == [b, a]
    with pytest.raises(WitError, match=r"missing\.parquet: not found"):
        parquet_inputs([str(a), str(tmp_path / "missing.parquet")])


def test_filter_cli_takes_a_single_file(tmp_path: Path) -> None:
    one = _part(tmp_path / "one.parquet", 4)
    out = subprocess.run([sys.executable, "-m", "flows.cli", "filter", "--json", str(one), str(tmp_path / "out"),
                          "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["inputs"] == 4
    assert run_filter([str(one)], tmp_path / "out").extra["skipped_parts"] == 1
