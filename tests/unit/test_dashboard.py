"""The dashboard without a browser: streaming aggregation, the page of partial builds, ``wit dashboard``
and its server. The page in Chromium is tests/integration/test_dashboard_browser.py."""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flows.cli import main
from pipeline.core.stats import StageStats
from pipeline.report import is_stale, write_report
from pipeline.report.serve import dashboard_server
from pipeline.report.stream import Histogram, TopCounter, first_rows

STAT = re.compile(r'data-stat="([^"]+)">([^<]*)<')


def lookup(report: dict, path: str) -> object:
    value: object = report
    for part in path.split("."):
        value = value[part]  # type: ignore[index]
    return value


def shown_stats(html: str) -> dict[str, str]:
    return {path: text for path, text in STAT.findall(html)}


# ---------------------------------------------------------------- streaming primitives

def test_histogram_counts_every_value_with_outliers_in_end_bins() -> None:
    h = Histogram.linear(0, 10, 5)
    h.add(np.array([-3.0, 0.0, 1.0, 9.9, 10.0, 42.0, np.nan]))
    assert h.counts.tolist() == [3, 0, 0, 0, 3] and h.n == 6
    assert (h.under, h.over) == (1, 1)
    h.add(np.array([5.0]))
    assert h.counts.sum() == h.n == 7


def test_top_counter_is_exact_under_capacity_and_bounded_over_it() -> None:
    exact = TopCounter(10)
    exact.add(pa.array(["a", "b", "a", None]))
    assert exact.most_common(5) == [("a", 2), ("b", 1)] and exact.error == 0
    rng = np.random.default_rng(0)
    values = np.concatenate([np.repeat(["head1", "head2"], [500, 300]), rng.integers(0, 5000, 2000).astype(str)])
    rng.shuffle(values)
    bounded = TopCounter(50)
    for chunk in np.array_split(values, 20):
        bounded.add(pa.array(chunk))
    true = Counter(values.tolist())
    assert len(bounded.counts) <= 50
    assert [v for v, _ in bounded.most_common(2)] == ["head1", "head2"]
    for value, count in bounded.counts.items():
        assert true[value] - bounded.error <= count <= true[value]


def test_first_rows_stops_after_k_rows_of_each_value(tmp_path: Path) -> None:
    for i in range(3):
        pq.write_table(pa.table({"reason": ["x", "y", "x"] * 10, "caption": [f"{i}-{j}" for j in range(30)]}),
                       tmp_path / f"p{i}.parquet")
    rows = first_rows(sorted(tmp_path.glob("*.parquet")), "reason", ["x", "y", "z"], ["caption"], 2)
    assert rows == {"x": [{"caption": "0-0"}, {"caption": "0-2"}], "y": [{"caption": "0-1"}, {"caption": "0-4"}],
                    "z": []}


# ---------------------------------------------------------------- a small synthetic build

def _stage(folder: Path, stage: str, inputs: int, kept: int, dropped: dict, **extra: object) -> None:
    StageStats(stage=stage, inputs=inputs, kept=kept, dropped=Counter(dropped), extra=dict(extra)).write(folder)


def _jpeg(colour: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _filtered(build: Path) -> None:
    _stage(build / "candidates", "crawl", 12, 10, {"no_caption": 2})
    kept = pa.table({"url": [f"http://a.example/{i}.jpg" for i in range(8)],
                     "caption": ["a red square on white", "two blue circles"] * 4,
                     "lang": ["en"] * 8, "lang_score": pa.array([0.9, 0.5] * 4, pa.float32())})
    rejected = pa.table({"url": ["http://b.example/x.jpg", "http://b.example/y.jpg"],
                         "caption": ["IMG_0001.JPG", "ein rotes Quadrat"], "lang": [None, "de"],
                         "lang_score": pa.array([None, 0.97], pa.float32()), "reason": ["filename", "language"]})
    for sub, table in (("kept", kept), ("rejected", rejected)):
        (build / "pairs" / sub).mkdir(parents=True)
        pq.write_table(table, build / "pairs" / sub / "part-0.parquet")
    _stage(build / "pairs", "filter", 10, 8, {"filename": 1, "language": 1},
           thresholds={"min_lang_score": 0.3, "min_chars": 5})


def _downloaded(build: Path) -> None:
    shards = build / "shards"
    shards.mkdir()
    status = ["success"] * 6 + ["failed_to_download"] * 2
    pq.write_table(pa.table({"url": [f"http://a.example/{i}.jpg" for i in range(8)], "key": [f"00000{i:03d}" for i in range(8)],
                             "status": status, "reason": [None] * 6 + ["http_404"] * 2,
                             "error_message": [None] * 6 + ["HTTP Error 404"] * 2,
                             "original_width": [40] * 8, "original_height": [30] * 8}), shards / "00000.parquet")
    with tarfile.open(shards / "00000.tar", "w") as tf:
        for i in range(6):
            for ext, data in (("jpg", _jpeg("red")), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"00000{i:03d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    (shards / "00000_stats.json").write_text(json.dumps({"count": 8, "successes": 6, "attempts": 9, "duration": 2.0}))
    (shards / "sizes.json").write_text(json.dumps({"00000.tar": 6}))
    _stage(shards, "download", 8, 6, {"http_404": 2})


def test_page_of_a_partial_build_shows_what_ran_and_not_run_for_the_rest(tmp_path: Path) -> None:
    _filtered(tmp_path)
    report = write_report(tmp_path)
    html = (tmp_path / "reports" / "dashboard.html").read_text()
    shown = shown_stats(html)
    assert shown["stages.filter.dropped.language"] == "1" and shown["funnel.candidates"] == "10"
    for path, text in shown.items():
        value = lookup(report, path)
        assert text == ("–" if value is None else f"{value:,}"), path
    assert "<b>not run</b>: balance" in html and "<b>not run</b>: download" in html
    assert "<b>not run</b>: train" in html
    assert "min_lang_score 0.3" in html  # the filter's recorded threshold marks the histogram
    assert "ein rotes Quadrat" in html  # a sample row of the 'language' reason
    assert "href='#drop-filter-language'" in html and "id='drop-filter-language'" in html


def test_page_is_self_contained(tmp_path: Path) -> None:
    _filtered(tmp_path)
    _downloaded(tmp_path)
    write_report(tmp_path)
    html = (tmp_path / "reports" / "dashboard.html").read_text()
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)
    assert "@import" not in html and not re.search(r"url\((?!#)", html)  # SVG clip paths: url(#id) only
    assert html.count("data:image/jpeg;base64,") >= 6  # gallery thumbnails
    assert html.count("<svg") >= 8


def test_is_stale_follows_the_stages(tmp_path: Path) -> None:
    _filtered(tmp_path)
    assert is_stale(tmp_path)
    write_report(tmp_path)
    assert not is_stale(tmp_path)
    later = time.time() + 5
    os.utime(tmp_path / "pairs" / "_stats.json", (later, later))
    assert is_stale(tmp_path)


def test_wit_dashboard_prints_the_page(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _filtered(tmp_path)
    assert main(["dashboard", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(tmp_path / "reports" / "dashboard.html") and Path(out).is_file()
    assert main(["dashboard", str(tmp_path / "nope")]) == 2


def test_served_page_is_regenerated_when_a_stage_finishes(tmp_path: Path) -> None:
    _filtered(tmp_path)
    with dashboard_server(tmp_path, port=0, min_interval_s=0, log=lambda line: None) as server:
        first = urllib.request.urlopen(server.url).read().decode()  # type: ignore[attr-defined]
        assert "<b>not run</b>: download" in first and "http-equiv=refresh" in first
        _downloaded(tmp_path)
        later = time.time() + 5
        os.utime(tmp_path / "shards" / "_stats.json", (later, later))
        second = urllib.request.urlopen(server.url).read().decode()  # type: ignore[attr-defined]
        assert "<b>not run</b>: download" not in second and 'data-stat="stages.download.kept">6<' in second
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(server.url + "etc/passwd")  # type: ignore[attr-defined]
    assert "http-equiv=refresh" not in (tmp_path / "reports" / "dashboard.html").read_text()


def test_balancing_section_lists_the_queries_over_t(tmp_path: Path) -> None:
    queries = tmp_path / "balanced" / "_queries"
    queries.mkdir(parents=True)
    pq.write_table(pa.table({"query_id": pa.array([0, 1, 2, 3], pa.int32()), "query": ["cat", "dog", "axolotl", "unused"],
                             "count": [500, 120, 3, 0], "kept": [104, 99, 3, 0]}), queries / "query_counts.parquet")
    _stage(tmp_path / "balanced", "balance", 600, 200, {"over_balanced": 400}, t=100)
    write_report(tmp_path)
    html = (tmp_path / "reports" / "dashboard.html").read_text()
    section = html[html.index("<section id=balance>"):html.index("<section id=images>")]
    assert "Queries over t = 100" in section and "No query matched more" not in section
    over = section[section.index("Queries over t = 100"):]
    assert "cat" in over and "dog" in over and "axolotl" not in over
    assert "unused" not in section  # never matched: not in the rank plot nor the tail
    assert "<svg" in section
