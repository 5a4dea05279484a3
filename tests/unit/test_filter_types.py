"""Hostile input types in the filter: null URLs or captions are per-row ``bad_type`` rejections, a column
of another type is one line naming the column and its type (before, null and int URLs were kept)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import WitError
from pipeline.filter.stage import run_filter

GOOD = "A red bicycle leaning on a brick wall in the sun"


def test_null_url_or_caption_is_bad_type(tmp_path: Path) -> None:
    pq.write_table(pa.table({"uid": ["a", "b", "c"], "url": [None, "http://x.test/1.jpg", "http://x.test/2.jpg"],
                             "caption": [GOOD, None, GOOD]}), tmp_path / "p.parquet")
    stats = run_filter(tmp_path / "p.parquet", tmp_path / "out")
    assert (stats.kept, dict(stats.dropped)) == (1, {"bad_type": 2}) and stats.accounted()
    rejected = pq.read_table(tmp_path / "out" / "rejected" / "p.parquet")
    assert rejected.column("uid").to_pylist() == ["a", "b"]


@pytest.mark.parametrize("column, values", [("url", [5, 7]), ("caption", [12, 13])])
def test_a_column_of_another_type_is_one_line(tmp_path: Path, column: str, values: list[int]) -> None:
    data = {"uid": ["a", "b"], "url": ["http://x.test/1.jpg", "http://x.test/2.jpg"], "caption": [GOOD, GOOD]}
    data[column] = values
    pq.write_table(pa.table(data), tmp_path / "p.parquet")
    with pytest.raises(WitError, match=rf"p\.parquet: column '{column}' holds int64, expected strings"):
        run_filter(tmp_path / "p.parquet", tmp_path / "out")
