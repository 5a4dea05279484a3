"""The build's funnel: every candidate accounted for, from the stages' own ``_stats.json`` files.

``build_report(build_dir)`` reads what each stage wrote (never logs; a local path or a URL, read through
:class:`~pipeline.core.storage.Folder`), checks that the sums add up and
returns the report (with each stage's ``_stats.json`` under ``stages``); ``write_stats`` stores it as
``reports/stats.json`` and ``reports/stats.md``. The dashboard page is :mod:`pipeline.report.dashboard`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.core.io import is_url
from pipeline.core.stats import STATS_FILE, StageStats
from pipeline.core.storage import Folder
from pipeline.report.stream import batches, column

STAGE_DIRS = {"crawl": "candidates", "filter": "pairs", "balance": "balanced", "download": "shards"}


def build_folder(build_dir: str | os.PathLike | Folder) -> Folder:
    """The build directory as a :class:`Folder` (a local path as ``Path`` writes it, or a URL)."""
    if isinstance(build_dir, Folder):
        return build_dir
    text = str(build_dir)
    return Folder(text if is_url(text) else Path(text))


def _stage(build: Folder, name: str) -> StageStats | None:
    folder = build / STAGE_DIRS[name]
    return StageStats.read(folder) if folder.exists(STATS_FILE) else None


def _eval_duplicates(build: Folder) -> dict[str, int]:
    if not build.exists("overlap/overlap.parquet"):
        return {}
    per_set: dict[str, set] = {}
    for batch in batches([build.part("overlap/overlap.parquet")], ["eval_set", "key"]):
        for name, key in zip(column(batch, "eval_set").to_pylist(), column(batch, "key").to_pylist()):
            per_set.setdefault(name, set()).add(key)
    return {name: len(keys) for name, keys in sorted(per_set.items())}


def _shards(build: Folder) -> tuple[int, int]:
    if not build.exists("shards/sizes.json"):
        return 0, 0
    sizes = build.read_json("shards/sizes.json")
    return len(sizes), sum(sizes.values())


def _funnel(build: Folder) -> dict[str, Any]:
    crawl, filt, bal, down = (_stage(build, s) for s in ("crawl", "filter", "balance", "download"))
    n_shards, n_samples = _shards(build)
    return {
        "img_tags_seen": crawl.inputs if crawl else None,
        "img_tags_dropped": dict(crawl.dropped) if crawl else {},
        "candidates": crawl.kept if crawl else (filt.inputs if filt else None),
        "kept": filt.kept if filt else None,
        "rejected": dict(sorted(filt.dropped.items())) if filt else {},
        "balanced": bal.kept if bal else None,
        "unbalanced": dict(sorted(bal.dropped.items())) if bal else {},
        "downloaded": down.kept if down else None,
        "failed": dict(sorted(down.dropped.items())) if down else {},
        "eval_duplicates": _eval_duplicates(build),
        "shards": n_shards,
        "samples": n_samples,
    }


def _checks(f: dict[str, Any]) -> dict[str, bool]:
    """The funnel's sums; a check is present only when both of its stages ran."""
    checks = {}
    if f["candidates"] is not None and f["kept"] is not None:
        checks["candidates == kept + rejected"] = f["candidates"] == f["kept"] + sum(f["rejected"].values())
    to_download = f["kept"] if f["balanced"] is None else f["balanced"]
    if f["balanced"] is not None and f["kept"] is not None:
        checks["kept == balanced + unbalanced"] = f["kept"] == f["balanced"] + sum(f["unbalanced"].values())
    if to_download is not None and f["downloaded"] is not None:
        name = "kept" if f["balanced"] is None else "balanced"
        checks[f"{name} == downloaded + failed"] = to_download == f["downloaded"] + sum(f["failed"].values())
    if f["downloaded"] is not None and f["shards"]:
        checks["downloaded == samples in shards"] = f["downloaded"] == f["samples"]
    return checks


def _train_results(build: Folder) -> list[dict[str, Any]]:
    if not build.exists("train/results.jsonl"):
        return []
    text = build.read_bytes("train/results.jsonl").decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def build_report(build_dir: str | os.PathLike | Folder) -> dict[str, Any]:
    """The funnel, its checks, the overlap analysis and training results of a build directory (a local path or
    a URL: its files are read where they are)."""
    build = build_folder(build_dir)
    funnel = _funnel(build)
    return {
        "build_dir": build.location,
        "stages": {name: stats.to_dict() for name in STAGE_DIRS if (stats := _stage(build, name)) is not None},
        "funnel": funnel,
        "checks": _checks(funnel),
        "overlap": build.read_json("reports/overlap.json") if build.exists("reports/overlap.json") else None,
        "train": _train_results(build),
    }


def overlap_table(overlap: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per eval set of ``reports/overlap.json`` (accuracies in percent, rounded): the Prefect table
    artifacts and the dashboard's table."""
    def pct(x: float | None) -> float | None:
        return None if x is None else round(100 * x, 2)

    return [{"eval_set": name, "n_all": r["n_all"], "n_overlap": r["n_overlap"],
             "overlap_pct": None if r["overlap_pct"] is None else round(r["overlap_pct"], 2),
             "acc_all": pct(r["acc_all"]), "acc_clean": pct(r["acc_clean"]), "acc_overlap": pct(r["acc_overlap"]),
             "delta": pct(r["delta"]), "p_value": r["p_value"],
             "ci_low": pct(r["ci_low"]), "ci_high": pct(r["ci_high"]),
             "top5_all": pct((r.get("top5") or {}).get("acc_all"))}
            for name, r in sorted(overlap.items())]


def funnel_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The funnel as table rows (stage, what, rows): counts and each stage's drops by reason."""
    f = report["funnel"]
    rows = [{"stage": "crawl", "what": "candidates", "rows": f["candidates"]}]
    for stage, total, drops in (("filter", "kept", "rejected"), ("balance", "balanced", "unbalanced"),
                                ("download", "downloaded", "failed")):
        rows += [{"stage": stage, "what": f"dropped: {k}", "rows": v} for k, v in f[drops].items()]
        if f[total] is not None:
            rows.append({"stage": stage, "what": total, "rows": f[total]})
    rows += [{"stage": "download", "what": f"eval near-duplicates ({k})", "rows": v}
             for k, v in f["eval_duplicates"].items()]
    rows.append({"stage": "download", "what": "samples in shards", "rows": f["samples"]})
    return rows


def funnel_lines(report: dict[str, Any]) -> list[str]:
    """The funnel as aligned text lines, for the terminal and the markdown report."""
    f = report["funnel"]
    rows = [("candidates", f["candidates"])]
    rows += [(f"  rejected: {k}", v) for k, v in f["rejected"].items()]
    rows += [("kept", f["kept"])]
    if f["balanced"] is not None:
        rows += [(f"  balance: {k}", v) for k, v in f["unbalanced"].items()]
        rows += [("balanced", f["balanced"])]
    rows += [(f"  failed: {k}", v) for k, v in f["failed"].items()]
    rows += [("downloaded", f["downloaded"])]
    rows += [(f"  eval near-duplicates ({k})", v) for k, v in f["eval_duplicates"].items()]
    rows += [("shards", f["shards"]), ("samples", f["samples"])]
    lines = [f"{name:<40} {'-' if value is None else value:>8}" for name, value in rows]
    lines += [f"check {name}: {'ok' if ok else 'MISMATCH'}" for name, ok in report["checks"].items()]
    return lines


def overlap_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, r in (report.get("overlap") or {}).items():
        def pct(x: Any) -> str:
            return "-" if x is None else f"{100 * x:.1f}%"
        lines.append(f"{name}: n_all={r['n_all']} n_overlap={r['n_overlap']} acc_all={pct(r['acc_all'])} "
                     f"acc_clean={pct(r['acc_clean'])} acc_overlap={pct(r['acc_overlap'])}")
    return lines


def write_stats(report: dict[str, Any]) -> None:
    """Write ``reports/stats.json`` and ``reports/stats.md`` of ``report`` (from :func:`build_report`) into its
    build directory, local or on a store."""
    build = build_folder(report["build_dir"])
    build.write_json("reports/stats.json", report)
    md = ["# Build statistics", "", "```", *funnel_lines(report), "```", "", *overlap_lines(report), ""]
    build.write_bytes("reports/stats.md", "\n".join(md).encode())
