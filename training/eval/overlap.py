"""The ``overlap`` stage: CLIP paper section 5 ("Data overlap analysis").

Entry point: :func:`run_overlap`: zero-shot accuracy per eval set on *Overlap* (images matched in
``overlap.parquet``), *Clean* and *All*, with a binomial test and Clopper-Pearson intervals, plotted by
:mod:`training.eval.plots`. What is reported and in which units: docs/training.md ("The overlap analysis")."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import Config, field
from pipeline.core.errors import WitError
from pipeline.core.io import atomic_path, write_json, write_parquet
from training.eval.intervals import binomial_p_greater, clopper_pearson, ratio
from training.eval.plots import plot_overlap
from training.eval.zeroshot import classify_eval_set, load_model

OVERLAP_COLUMNS = ("eval_set", "eval_id")


@dataclasses.dataclass
class OverlapConfig(Config, section="overlap"):
    """Options of ``wit overlap`` and of a build's ``overlap`` section (the options of :func:`run_overlap`)."""

    templates: str | tuple[str, ...] = field(
        "simple", help="prompt templates: default (4), simple (7), openai (CLIP's 80 ImageNet prompts), a file "
        "(.txt one a line with {} for the class, or a .json list), or (in a config file) a list of templates")
    batch_size: int = field(64, help="images per zero-shot batch", min=1)
    device: str = field("auto", help="cuda, cpu or auto (cuda when present)")
    workers: int = field(0, help="image-loading worker processes (ImageFolder eval sets)", min=0)
    confidence: float = field(0.995, help="confidence level of the Clopper-Pearson intervals", gt=0, lt=1)
    plot: bool = field(True, help="draw reports/overlap.png (figure 17 of the CLIP paper)")


# ---------------------------------------------------------------- statistics (pure functions)

def split_ids(eval_ids: Iterable[str], overlap_ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """(overlap, clean): the eval ids that are / are not in ``overlap_ids``, in input order."""
    flagged = set(overlap_ids)
    ids = list(eval_ids)
    return [i for i in ids if i in flagged], [i for i in ids if i not in flagged]


def overlap_stats(correct: Mapping[str, bool], overlap_ids: Iterable[str],
                  confidence: float = 0.995) -> dict[str, Any]:
    """The CLIP overlap figures for one eval set from per-image correctness (``eval_id -> correct``)."""
    overlap, clean = split_ids(correct, overlap_ids)
    k_all, k_overlap, k_clean = (sum(bool(correct[i]) for i in ids) for ids in (correct, overlap, clean))
    acc_all, acc_overlap, acc_clean = ratio(k_all, len(correct)), ratio(k_overlap, len(overlap)), ratio(k_clean, len(clean))
    ci = clopper_pearson(k_overlap, len(overlap), confidence) if overlap else (None, None)
    return {
        "n_all": len(correct), "n_overlap": len(overlap), "n_clean": len(clean),
        "acc_all": acc_all, "acc_clean": acc_clean, "acc_overlap": acc_overlap,
        "delta": acc_all - acc_clean if acc_all is not None and acc_clean is not None else None,
        "p_value": binomial_p_greater(k_overlap, len(overlap), acc_clean)
        if overlap and acc_clean is not None else None,
        "ci_low": ci[0], "ci_high": ci[1],
        "overlap_pct": 100.0 * len(overlap) / len(correct) if correct else None,
    }


TOP5_KEYS = ("acc_all", "acc_clean", "acc_overlap", "delta", "p_value", "ci_low", "ci_high")
CLASS_KEYS = ("n_all", "n_overlap", "acc_all", "acc_clean", "acc_overlap")


def eval_set_stats(rows: Sequence[Mapping[str, Any]], overlap_ids: Iterable[str],
                   confidence: float = 0.995) -> dict[str, Any]:
    """:func:`overlap_stats` of top-1 accuracy, plus ``top5`` (the same for top-5) and ``per_class``
    (``{label: {n_all, n_overlap, acc_all, acc_clean, acc_overlap, acc5_all}}``) from classified rows
    (``eval_id``, ``label``, ``correct``, ``top5_correct``)."""
    flagged = set(overlap_ids)
    stats = overlap_stats({r["eval_id"]: r["correct"] for r in rows}, flagged, confidence)
    top5 = overlap_stats({r["eval_id"]: r["top5_correct"] for r in rows}, flagged, confidence)
    stats["top5"] = {k: top5[k] for k in TOP5_KEYS}
    stats["per_class"] = per_class_stats(rows, flagged)
    return stats


def per_class_stats(rows: Sequence[Mapping[str, Any]], flagged: set[str]) -> dict[str, dict[str, Any]]:
    """Per label: counts and top-1 accuracy on All / Clean / Overlap, and top-5 accuracy on All."""
    by_label: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    out = {}
    for label, rs in sorted(by_label.items()):
        top1 = {r["eval_id"]: r["correct"] for r in rs}
        overlap, clean = split_ids(top1, flagged)
        out[label] = {"n_all": len(rs), "n_overlap": len(overlap),
                      "acc_all": ratio(sum(map(bool, top1.values())), len(rs)),
                      "acc_clean": ratio(sum(bool(top1[i]) for i in clean), len(clean)),
                      "acc_overlap": ratio(sum(bool(top1[i]) for i in overlap), len(overlap)),
                      "acc5_all": ratio(sum(bool(r["top5_correct"]) for r in rs), len(rs))}
    return out


# ---------------------------------------------------------------- files

def normalise_eval_id(eval_id: str) -> str:
    """Eval ids are POSIX paths relative to the eval root: ``red_circle/003.jpg``."""
    text = str(eval_id).replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


def read_overlap_ids(overlap_parquet: str | Path | None) -> dict[str, set[str]]:
    """``{eval_set: {eval_id, ...}}`` from ``overlap.parquet`` (empty when ``None``)."""
    if overlap_parquet is None:
        return {}
    path = Path(overlap_parquet)
    if not path.is_file():
        raise WitError(f"{path}: overlap table not found (the download stage writes it)")
    columns = pq.read_schema(path).names
    missing = [c for c in OVERLAP_COLUMNS if c not in columns]
    if missing:
        raise WitError(f"{path}: no {', '.join(repr(c) for c in missing)} column (has {', '.join(columns)})")
    table = pq.read_table(path, columns=list(OVERLAP_COLUMNS)).to_pydict()
    ids: dict[str, set[str]] = {}
    for name, eval_id in zip(table["eval_set"], table["eval_id"]):
        ids.setdefault(str(name), set()).add(normalise_eval_id(eval_id))
    return ids


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _pvalue(p: float | None) -> str:
    return "–" if p is None else f"{p:.3g}"


def markdown_table(report: Mapping[str, Mapping[str, Any]], confidence: float = 0.995) -> str:
    """The report as markdown: top-1 and top-5 tables (accuracies and delta in percentage points) and
    per-class accuracy."""
    level = f"{100 * confidence:g}%"
    lines = [
        "# Zero-shot accuracy on Overlap / Clean / All (CLIP section 5)", "",
        f"| eval set | n | overlap % | All | Clean | Overlap | All − Clean | p (Overlap > Clean) | {level} CI (Overlap) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in sorted(report.items()):
        pct = "–" if r["overlap_pct"] is None else f"{r['overlap_pct']:.1f}"
        lines.append(f"| {name} | {r['n_all']} | {pct} | {_row(r)}")
    top5 = [(name, r["top5"]) for name, r in sorted(report.items()) if r.get("top5")]
    if top5:
        lines += ["", "## Top-5 accuracy", "",
                  f"| eval set | All | Clean | Overlap | All − Clean | p (Overlap > Clean) | {level} CI (Overlap) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        lines += [f"| {name} | {_row(t)}" for name, t in top5]
    for name, r in sorted(report.items()):
        lines += _class_lines(name, r.get("per_class") or {})
    return "\n".join(lines) + "\n"


def _row(r: Mapping[str, Any]) -> str:
    ci = "–" if r["ci_low"] is None else f"{_pct(r['ci_low'])}–{_pct(r['ci_high'])}"
    return (f"{_pct(r['acc_all'])} | {_pct(r['acc_clean'])} | {_pct(r['acc_overlap'])} | {_pct(r['delta'], 2)} | "
            f"{_pvalue(r['p_value'])} | {ci} |")


def _class_lines(name: str, per_class: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not per_class:
        return []
    lines = ["", f"## Per class: {name}", "", "| class | n | overlap | All | Clean | Overlap | top-5 All |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, c in per_class.items():
        lines.append(f"| {label} | {c['n_all']} | {c['n_overlap']} | {_pct(c['acc_all'])} | {_pct(c['acc_clean'])} | "
                     f"{_pct(c['acc_overlap'])} | {_pct(c['acc5_all'])} |")
    return lines


def write_reports(report: Mapping[str, Any], predictions: Sequence[dict[str, Any]], reports_dir: str | Path,
                  confidence: float = 0.995, plot: bool = True) -> None:
    """Write ``overlap.json``, ``overlap.md``, ``overlap.png`` and ``overlap_predictions.parquet`` atomically."""
    reports_dir = Path(reports_dir)
    write_json(reports_dir / "overlap.json", dict(report))
    with atomic_path(reports_dir / "overlap.md") as tmp:
        tmp.write_text(markdown_table(report, confidence))
    if plot:
        plot_overlap(report, reports_dir / "overlap.png", confidence)
    if predictions:
        write_parquet(pa.Table.from_pylist(list(predictions)), reports_dir / "overlap_predictions.parquet")


def run_overlap(checkpoint: str | Path, model_name: str | None, eval_sets: Mapping[str, Any],
                overlap_parquet: str | Path | None, reports_dir: str | Path,
                cfg: OverlapConfig | None = None) -> dict[str, dict[str, Any]]:
    """Zero-shot evaluate ``checkpoint`` on each eval set and write the overlap report; return it.

    ``eval_sets`` maps names to an ImageFolder path, a WebDataset folder/pattern, or an
    :class:`~training.eval.zeroshot.EvalSpec` (or a mapping of its fields); ``model_name=None`` reads the model
    from the run's ``params.txt``; ``overlap_parquet=None`` means no overlap; ``cfg`` holds the templates, batch
    size, device, workers, confidence level and whether to plot (:class:`OverlapConfig`).
    Returns ``{eval_set: {n_all, n_overlap, n_clean, acc_all, acc_clean, acc_overlap, delta, p_value, ci_low,
    ci_high, overlap_pct, n_overlap_unmatched, n_classes, top5: {...}, per_class: {...}}}`` with None where a
    subset is empty.
    """
    if not eval_sets:
        raise WitError("overlap: no eval sets given")
    cfg = cfg or OverlapConfig()
    flagged = read_overlap_ids(overlap_parquet)
    lm = load_model(checkpoint, model_name, cfg.device)
    report: dict[str, dict[str, Any]] = {}
    predictions: list[dict[str, Any]] = []
    for name, spec in sorted(eval_sets.items()):
        rows = classify_eval_set(lm, spec, cfg.templates, cfg.batch_size, cfg.workers)
        ids = flagged.get(name, set())
        report[name] = eval_set_stats(rows, ids, cfg.confidence)
        report[name]["n_overlap_unmatched"] = len(ids - {r["eval_id"] for r in rows})
        report[name]["n_classes"] = len(report[name]["per_class"])
        predictions += [{"eval_set": name, **r, "overlap": r["eval_id"] in ids} for r in rows]
    write_reports(report, predictions, reports_dir, cfg.confidence, cfg.plot)
    return report
