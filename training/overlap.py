"""The ``overlap`` stage: CLIP paper section 5 ("Data overlap analysis").

Per eval set, the images the duplicate detector matched to training images (``overlap.parquet``) form
*Overlap*, the rest *Clean*, and both together *All*. We report zero-shot accuracy on each, the
difference All - Clean, a one-sided binomial test of the Overlap accuracy against the Clean accuracy
(H1: Overlap is more accurate) and a 99.5% Clopper-Pearson interval on the Overlap accuracy.
Accuracies, delta and the interval are fractions in [0, 1]; ``overlap_pct`` is a percentage.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import WitError
from pipeline.io import atomic_path, write_json, write_parquet

OVERLAP_COLUMNS = ("eval_set", "eval_id")


# ---------------------------------------------------------------- statistics (pure functions)

def ratio(k: int, n: int) -> float | None:
    """k / n, or None when n is 0."""
    return k / n if n else None


def clopper_pearson(k: int, n: int, confidence: float = 0.995) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for a binomial proportion with k successes in n trials."""
    from scipy.stats import binomtest

    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def binomial_p_greater(k: int, n: int, p: float) -> float:
    """One-sided p-value P(X >= k) for X ~ Binomial(n, p): is the success rate k/n higher than p?"""
    from scipy.stats import binomtest

    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    return float(binomtest(k, n, min(max(p, 0.0), 1.0), alternative="greater").pvalue)


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
    """A markdown table of the report (accuracies and delta in percentage points)."""
    level = f"{100 * confidence:g}%"
    lines = [
        "# Zero-shot accuracy on Overlap / Clean / All (CLIP section 5)", "",
        f"| eval set | n | overlap % | All | Clean | Overlap | All − Clean | p (Overlap > Clean) | {level} CI (Overlap) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in sorted(report.items()):
        ci = "–" if r["ci_low"] is None else f"{_pct(r['ci_low'])}–{_pct(r['ci_high'])}"
        pct = "–" if r["overlap_pct"] is None else f"{r['overlap_pct']:.1f}"
        lines.append(f"| {name} | {r['n_all']} | {pct} | {_pct(r['acc_all'])} | {_pct(r['acc_clean'])} | "
                     f"{_pct(r['acc_overlap'])} | {_pct(r['delta'], 2)} | {_pvalue(r['p_value'])} | {ci} |")
    return "\n".join(lines) + "\n"


def write_reports(report: Mapping[str, Any], predictions: Sequence[dict[str, Any]], reports_dir: str | Path,
                  confidence: float = 0.995) -> None:
    """Write ``overlap.json``, ``overlap.md`` and ``overlap_predictions.parquet`` atomically."""
    reports_dir = Path(reports_dir)
    write_json(reports_dir / "overlap.json", dict(report))
    with atomic_path(reports_dir / "overlap.md") as tmp:
        tmp.write_text(markdown_table(report, confidence))
    if predictions:
        write_parquet(pa.Table.from_pylist(list(predictions)), reports_dir / "overlap_predictions.parquet")


def run_overlap(checkpoint: str | Path, model_name: str | None, eval_sets: Mapping[str, str | Path],
                overlap_parquet: str | Path | None, reports_dir: str | Path, templates: str | Sequence[str] = "default",
                batch_size: int = 64, device: str = "auto", confidence: float = 0.995) -> dict[str, dict[str, Any]]:
    """Zero-shot evaluate ``checkpoint`` on each eval set (ImageFolder) and write the overlap report; return it.

    ``model_name=None`` reads the model from the run's ``params.txt``; ``templates`` is a set name
    (default, simple, openai) or a list of prompt templates; ``overlap_parquet=None`` means no overlap.
    Returns ``{eval_set: {n_all, n_overlap, n_clean, acc_all, acc_clean, acc_overlap, delta, p_value, ci_low,
    ci_high, overlap_pct, n_overlap_unmatched}}`` with None where a subset is empty.
    """
    from training.zeroshot import classify_folder, load_model

    if not eval_sets:
        raise WitError("overlap: no eval sets given")
    flagged = read_overlap_ids(overlap_parquet)
    lm = load_model(checkpoint, model_name, device)
    report: dict[str, dict[str, Any]] = {}
    predictions: list[dict[str, Any]] = []
    for name, folder in sorted(eval_sets.items()):
        rows = classify_folder(lm, folder, templates, batch_size)
        ids = flagged.get(name, set())
        correct = {r["eval_id"]: r["correct"] for r in rows}
        report[name] = overlap_stats(correct, ids, confidence)
        report[name]["n_overlap_unmatched"] = len(ids - set(correct))
        predictions += [{"eval_set": name, **r, "overlap": r["eval_id"] in ids} for r in rows]
    write_reports(report, predictions, reports_dir, confidence)
    return report
