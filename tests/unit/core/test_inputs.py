"""Inputs as users give them: a folder, one file, a glob, a list; a missing input is one line; two parts with one
name (whose outputs would overwrite each other) are refused. Remote (fsspec) inputs: tests/integration/test_inputs_s3.py."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import WitError
from pipeline.balance.stage import BalanceConfig, run_balance
from pipeline.core.io import checked_parts, open_parquet, parquet_inputs, part_name, read_schema
from pipeline.download.plan import input_files
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


def test_sidecar_and_hidden_files_are_not_parts(tmp_path: Path) -> None:
    a = _part(tmp_path / "in" / "a.parquet", 1)
    _part(tmp_path / "in" / "_summary.parquet", 1)
    _part(tmp_path / "in" / ".tmp-a.parquet.x1.parquet", 1)
    assert parquet_inputs(tmp_path / "in") == [a]
    assert parquet_inputs(str(tmp_path / "in" / "*.parquet")) == [a]
    assert parquet_inputs(str(tmp_path / "in" / "_summary.parquet")) == [tmp_path / "in" / "_summary.parquet"]


def test_same_file_named_twice_is_one_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _part(tmp_path / "in" / "a.parquet", 2)
    monkeypatch.chdir(tmp_path)
    assert parquet_inputs([str(a), "in/a.parquet", "in", "./in/*.parquet"]) == [a]
    assert run_filter([str(a), "in"], tmp_path / "out").inputs == 2


def test_same_name_in_two_folders_is_refused_before_writing(tmp_path: Path) -> None:
    """Both would write kept/a.parquet and _parts/a.stats.json: the second would replace the first's rows and
    its sidecar would be counted twice. One line naming both, and nothing written."""
    x, y = _part(tmp_path / "x" / "a.parquet", 2), _part(tmp_path / "y" / "a.parquet", 3)
    with pytest.raises(WitError, match="^" + re.escape(f"{x} and {y}: two input parts named a.parquet")) as err:
        run_filter([tmp_path / "x", tmp_path / "y"], tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "out").rglob("*.parquet"))
    with pytest.raises(WitError, match="two input parts named a.parquet"):
        checked_parts([str(x), str(tmp_path / "y" / "*.parquet")], ("url",), "test")
    with pytest.raises(WitError, match="two input parts named a.parquet"):
        run_balance([x, y], tmp_path / "balanced", BalanceConfig(queries=str(_queries(tmp_path))))


def test_download_plan_takes_parts_with_one_name(tmp_path: Path) -> None:
    """The download stages every row into one URL list and names no output after a part: no clash."""
    x, y = _part(tmp_path / "x" / "a.parquet", 2), _part(tmp_path / "y" / "a.parquet", 3)
    assert input_files([tmp_path / "x", tmp_path / "y"]) == [x, y]


def _queries(tmp_path: Path) -> Path:
    path = tmp_path / "queries.json"
    path.write_text(json.dumps(["bicycle"]))
    return path


def test_fsspec_urls_without_a_server(tmp_path: Path) -> None:
    """Any fsspec protocol works like a local folder (here the in-memory one; S3: tests/integration)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    a, b = _part(tmp_path / "in" / "a.parquet", 2), _part(tmp_path / "in" / "b.parquet", 3)
    for p in (a, b):
        fs.pipe(f"/wit-test/cand/{p.name}", p.read_bytes())
    fs.pipe("/wit-test/cand/_meta.parquet", b"not parquet")
    try:
        parts = parquet_inputs("memory://wit-test/cand")
        assert [str(p) for p in parts] == ["memory:///wit-test/cand/a.parquet", "memory:///wit-test/cand/b.parquet"]
        assert [part_name(p) for p in parts] == ["a.parquet", "b.parquet"]
        with open_parquet(parts[1]) as reader:
            assert reader.metadata.num_rows == 3
        local, remote = run_filter(tmp_path / "in", tmp_path / "local"), run_filter(parts, tmp_path / "remote")
        assert (remote.inputs, remote.kept) == (local.inputs, local.kept) == (5, 5)
        assert pq.read_table(tmp_path / "remote" / "kept").equals(pq.read_table(tmp_path / "local" / "kept"))
        with pytest.raises(WitError, match="^memory://wit-test/nothing.parquet: not found"):
            parquet_inputs(["memory://wit-test/nothing.parquet"])
        fs.rm("/wit-test/cand/b.parquet")
        with pytest.raises(WitError, match="^memory:///wit-test/cand/b.parquet: not found"):
            read_schema(parts[1])
    finally:
        fs.rm("/wit-test", recursive=True)
