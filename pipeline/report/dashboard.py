"""``reports/dashboard.html``: the build's statistics as one self-contained page.

``write_report(build_dir)`` writes ``reports/stats.json``, ``stats.md`` and the page; the build directory is a
local path or a URL (``s3://bucket/prefix``): its files are read where they are (stats files whole, parquet
parts by ranges batch by batch, the few shard tars the galleries show streamed) and the outputs written
there, nothing of the build copied to this machine's disk. ``is_stale`` says whether a stage has written
something since (``wit dashboard --serve`` regenerates then; local builds only).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

from pipeline.core.stats import STATS_FILE
from pipeline.core.storage import Folder
from pipeline.report.funnel import STAGE_DIRS, build_folder, build_report, write_stats
from pipeline.report.page import document, section
from pipeline.report.sections import SECTIONS

PAGE = "dashboard.html"
#: Files whose change means the page is out of date (besides each stage's ``_stats.json``).
INPUTS = ("overlap/overlap.parquet", "overlap/_stats.json", "reports/overlap.json", "reports/overlap.png",
          "train/results.jsonl", "balanced/_queries/query_counts.parquet", "shards/sizes.json")


def render(build_dir: str | Path | Folder, report: dict[str, Any] | None = None) -> str:
    """The page's HTML for a build directory (``report`` from :func:`build_report`, computed when omitted)."""
    build = build_folder(build_dir)
    report = report or build_report(build)
    parts, nav = [], []
    for sid, title, make in SECTIONS:
        body, has_data = make(build, report)
        parts.append(section(sid, title, body))
        nav.append((sid, title, has_data))
    where = build.location if build.remote else build.path.resolve()
    subtitle = f"{where} · generated {time.strftime('%Y-%m-%d %H:%M:%S')}"
    return document("wit-builder build statistics", subtitle, nav, "".join(parts))


def write_dashboard(build_dir: str | Path | Folder, report: dict[str, Any] | None = None) -> str:
    """Write ``reports/dashboard.html`` and return its path or URL."""
    build = build_folder(build_dir)
    build.write_bytes(f"reports/{PAGE}", render(build, report).encode("utf-8"))
    return build.loc(f"reports/{PAGE}")


def write_report(build_dir: str | Path | Folder) -> dict[str, Any]:
    """Compute the report and write ``reports/stats.json``, ``stats.md`` and ``dashboard.html``."""
    report = build_report(build_dir)
    write_stats(report)
    write_dashboard(build_dir, report)
    return report


def _inputs(build: Path) -> Iterator[Path]:
    for folder in (*STAGE_DIRS.values(), "overlap"):
        yield build / folder / STATS_FILE
    yield from (build / name for name in INPUTS)
    yield from (build / "eval").glob(f"*/{STATS_FILE}")
    yield from (build / "train").glob("*/out.log")
    yield from (build / "train").glob("*/results.jsonl")


def newest_input(build_dir: str | Path) -> float:
    """The latest modification time of what the page is made from (0 when nothing is there yet)."""
    times = [p.stat().st_mtime for p in _inputs(Path(build_dir)) if p.is_file()]
    return max(times, default=0.0)


def is_stale(build_dir: str | Path) -> bool:
    """True when the page is missing or older than one of its inputs."""
    page = Path(build_dir) / "reports" / PAGE
    return not page.is_file() or page.stat().st_mtime < newest_input(build_dir)
