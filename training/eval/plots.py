"""``reports/overlap.png``: the overlap analysis drawn like figure 17 of the CLIP paper.

Entry point: :func:`plot_overlap` (All − Clean against the detected overlap, and top-1 accuracy per subset);
what each panel shows: docs/training.md ("The figure")."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pipeline.core.io import atomic_path
from training.eval.intervals import clopper_pearson

SIGNIFICANT_P = 1e-3
SUBSETS = (("All", "acc_all", "n_all", "#4c72b0"), ("Clean", "acc_clean", "n_clean", "#55a868"),
           ("Overlap", "acc_overlap", "n_overlap", "#c44e52"))


def interval(acc: float | None, n: int, confidence: float) -> tuple[float, float] | None:
    """The Clopper-Pearson interval of an accuracy over ``n`` images (``acc * n`` successes)."""
    if acc is None or n <= 0:
        return None
    return clopper_pearson(round(acc * n), n, confidence)


def delta_interval(r: Mapping[str, Any]) -> tuple[float, float] | None:
    """The Overlap-accuracy interval mapped onto All − Clean: f·(ci − acc_clean), f = n_overlap / n_all."""
    if r.get("ci_low") is None or r.get("acc_clean") is None or not r.get("n_all"):
        return None
    f = r["n_overlap"] / r["n_all"]
    return f * (r["ci_low"] - r["acc_clean"]), f * (r["ci_high"] - r["acc_clean"])


def _delta_panel(ax: Any, report: Mapping[str, Mapping[str, Any]], confidence: float) -> None:
    for name, r in sorted(report.items()):
        ci = delta_interval(r)
        if r.get("delta") is None or r.get("overlap_pct") is None:
            continue
        y = 100 * r["delta"]
        err = [[max(0.0, y - 100 * ci[0])], [max(0.0, 100 * ci[1] - y)]] if ci else None  # rounding at k = n
        significant = r.get("p_value") is not None and r["p_value"] < SIGNIFICANT_P
        ax.errorbar([r["overlap_pct"]], [y], yerr=err, fmt="o", color="#c44e52" if significant else "#4c72b0",
                    mfc="#c44e52" if significant else "white", capsize=3)
        ax.annotate(name, (r["overlap_pct"], y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1.15 * max([r["overlap_pct"] or 0 for r in report.values()] + [1]) + 0.5)
    ax.set_xlabel("Detected data overlap (%)")
    ax.set_ylabel("Difference in zero-shot accuracy, All − Clean (pts)")
    ax.set_title(f"All − Clean with {100 * confidence:g}% CI (filled: p < {SIGNIFICANT_P:g})", fontsize=9)


def _accuracy_panel(ax: Any, report: Mapping[str, Mapping[str, Any]], confidence: float) -> None:
    names = sorted(report)
    width = 0.8 / len(SUBSETS)
    for j, (label, acc_key, n_key, colour) in enumerate(SUBSETS):
        xs, ys, lows, highs = [], [], [], []
        for i, name in enumerate(names):
            r = report[name]
            ci = interval(r.get(acc_key), r.get(n_key, 0), confidence)
            if ci is None:
                continue
            xs.append(i + (j - 1) * width)
            ys.append(100 * r[acc_key])
            lows.append(max(0.0, 100 * (r[acc_key] - ci[0])))
            highs.append(max(0.0, 100 * (ci[1] - r[acc_key])))
        ax.bar(xs, ys, width, yerr=[lows, highs], capsize=3, color=colour, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("Zero-shot top-1 accuracy (%)")
    ax.set_title(f"Accuracy on All / Clean / Overlap with {100 * confidence:g}% CI", fontsize=9)
    ax.legend(fontsize=8, ncol=3, loc="upper center")


def plot_overlap(report: Mapping[str, Mapping[str, Any]], path: str | Path, confidence: float = 0.995) -> Path:
    """Draw the overlap report to ``path`` (PNG); return the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _delta_panel(left, report, confidence)
    _accuracy_panel(right, report, confidence)
    fig.suptitle("Zero-shot accuracy and train/eval overlap (CLIP section 5, figure 17)")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
