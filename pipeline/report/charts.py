"""The dashboard's charts: matplotlib figures written as inline SVG (text kept as text, no font files).

Figures are made with ``matplotlib.figure.Figure`` (no pyplot state, safe in a server thread). Each SVG
gets its own id salt, so the clip paths of several charts on one page never collide.
"""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from pipeline.report.stream import Histogram

PALETTE = ["#2f7ebc", "#e07b39", "#3a9e5c", "#c44e52", "#8172b2", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
           "#64b5cd"]
KEPT, DROPPED = "#3a9e5c", "#c44e52"
#: Colours of drop reasons: no green (green is "kept").
REASONS = ["#e07b39", "#c44e52", "#8172b2", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd", "#2f7ebc",
           "#b55d9a", "#6b6ecf", "#d6616b", "#e7ba52", "#7b4173", "#3182bd", "#a55194"]
RC = {"svg.fonttype": "none", "font.family": "sans-serif", "font.size": 9, "axes.spines.top": False,
      "axes.spines.right": False, "axes.titlesize": 10, "axes.titleweight": "bold", "axes.grid": True,
      "grid.alpha": 0.25, "legend.frameon": False, "legend.fontsize": 8}
MAX_POINTS = 2_000


def _figure(width: float = 6.0, height: float = 2.8) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig: Figure, name: str) -> str:
    """The figure as an ``<svg>`` element (no XML prolog), ids salted with ``name``."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": name, "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def hist(name: str, series: dict[str, Histogram], title: str, xlabel: str, ylabel: str = "rows",
         marks: Sequence[tuple[float, str]] = (), logx: bool = False, colors: Sequence[str] = PALETTE,
         xticks: Sequence[tuple[float, str]] = ()) -> str:
    """Step-filled histograms of one or more series over the same bins; ``marks`` are labelled lines."""
    with matplotlib.rc_context(RC):
        fig = _figure()
        ax = fig.add_subplot()
        for (label, h), color in zip(series.items(), colors):
            ax.stairs(h.counts, h.edges, fill=True, alpha=0.55, color=color, label=f"{label} ({h.n:,})")
        for x, label in marks:
            ax.axvline(x, color="#222", linestyle="--", linewidth=1)
            ax.annotate(label, (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -10),
                        textcoords="offset points", fontsize=8)
        if logx:
            ax.set_xscale("log")
        if xticks:
            ax.set_xticks([x for x, _ in xticks], [t for _, t in xticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if len(series) > 1:
            ax.legend(loc="upper right")
        return to_svg(fig, name)


def bars(name: str, labels: Sequence[str], values: Sequence[float], title: str, xlabel: str,
         colors: Sequence[str] | None = None) -> str:
    """Horizontal bars, largest on top, each labelled with its value."""
    with matplotlib.rc_context(RC):
        fig = _figure(height=max(1.6, 0.28 * len(labels) + 0.9))
        ax = fig.add_subplot()
        y = np.arange(len(labels))[::-1]
        ax.barh(y, values, color=colors or PALETTE[0])
        ax.set_yticks(y, labels)
        for yi, v in zip(y, values):
            ax.annotate(f"{v:,}", (v, yi), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        ax.set(title=title, xlabel=xlabel)
        ax.grid(axis="y", visible=False)
        ax.margins(x=0.12)
        return to_svg(fig, name)


def funnel(name: str, stages: Sequence[tuple[str, int, dict[str, int]]]) -> str:
    """One bar per stage: the rows it kept, then its drops stacked by reason (legend per reason)."""
    with matplotlib.rc_context(RC):
        fig = _figure(width=9.0, height=0.42 * len(stages) + 1.2)
        ax = fig.add_subplot()
        reasons = sorted({r for _, _, d in stages for r, n in d.items() if n})
        color = {r: REASONS[i % len(REASONS)] for i, r in enumerate(reasons)}
        y = np.arange(len(stages))[::-1]
        for yi, (label, kept, dropped) in zip(y, stages):
            ax.barh(yi, kept, color=KEPT, label="kept" if yi == y[0] else None)
            left = kept
            for reason, n in sorted((r, n) for r, n in dropped.items() if n):
                ax.barh(yi, n, left=left, color=color[reason], label=reason)
                left += n
            ax.annotate(f"{kept:,} kept", (left, yi), xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize=8)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
                  ncols=1 + len(unique) // 12)
        ax.set_yticks(y, [s[0] for s in stages])
        ax.set(title="Rows in, kept and dropped by reason, per stage", xlabel="rows")
        ax.grid(axis="y", visible=False)
        ax.margins(x=0.15)
        return to_svg(fig, name)


def _log_ranks(n: int) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.unique(np.geomspace(1, n, MAX_POINTS).astype(np.int64)) - 1


def rank(name: str, before: np.ndarray, after: np.ndarray, t: int | None) -> str:
    """Pairs per query against the query's rank, before and after balancing, log-log, with ``t`` marked."""
    with matplotlib.rc_context(RC):
        fig = _figure(height=3.2)
        ax = fig.add_subplot()
        for counts, label, color, width in ((before, "before", "#9ecae1", 4.0), (after, "after", PALETTE[1], 1.3)):
            counts = counts[np.isfinite(counts) & (counts > 0)]
            idx = _log_ranks(len(counts))
            ax.plot(idx + 1, counts[idx], color=color, label=f"{label} ({len(counts):,} queries)", linewidth=width)
        if t:
            ax.axhline(t, color="#222", linestyle="--", linewidth=1)
            ax.annotate(f"t = {t:,}", (1, t), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                        textcoords="offset points", ha="right", fontsize=8)
        ax.set(xscale="log", yscale="log", title="Pairs per query by rank", xlabel="query rank",
               ylabel="pairs matching the query")
        ax.legend(loc="lower left")
        return to_svg(fig, name)


def lines(name: str, series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str,
          ylabel: str) -> str:
    """Line plots sharing axes (markers when a series has few points)."""
    with matplotlib.rc_context(RC):
        fig = _figure()
        ax = fig.add_subplot()
        for (label, (x, y)), color in zip(series.items(), PALETTE):
            ax.plot(x, y, color=color, label=label, linewidth=1.3, marker="o" if len(x) < 30 else None,
                    markersize=3)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if len(series) > 1:
            ax.legend(loc="best")
        return to_svg(fig, name)
