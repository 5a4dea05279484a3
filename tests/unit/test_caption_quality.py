"""Precision and recall of the filter's decisions on a hand-labelled set of captions.

``tests/data/captions_labelled.jsonl``: one caption a line with its ``kind`` (english: natural English
alt text of many sorts; foreign: captions in 40 other languages; filename: camera, phone, screenshot,
stock, hash, size and path names, exposure settings; junk: single words, symbols, control characters,
mojibake, HTML left in the text, an overlong caption), ``lang``, ``keep`` (the English filter should
keep it) and ``filename`` (the filename rule should catch it). Written for this project, not copied.
``benchmarks/bench_filter.py`` writes the same figures to ``benchmarks/results/caption_quality.json``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.filter.rules import Batch, FilenameRule
from pipeline.filter.stage import FilterConfig, build_rules
from pipeline.core.stats import StageStats

LABELLED = Path(__file__).resolve().parents[1] / "data" / "captions_labelled.jsonl"
FLOORS = {"keep_precision": 0.95, "keep_recall": 0.9, "filename_precision": 0.95, "filename_recall": 0.95}


def load_labelled(path: Path = LABELLED) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _batch(captions: list[str]) -> Batch:
    return Batch.from_record_batch(pa.record_batch({"url": [f"http://x.test/{i}" for i in range(len(captions))],
                                                    "caption": captions}))


def _precision_recall(predicted: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    tp, fp, fn = int((predicted & truth).sum()), int((predicted & ~truth).sum()), int((~predicted & truth).sum())
    return {"precision": round(tp / max(tp + fp, 1), 4), "recall": round(tp / max(tp + fn, 1), 4),
            "true_positives": tp, "false_positives": fp, "false_negatives": fn}


def caption_quality(rows: list[dict[str, Any]], cfg: FilterConfig = FilterConfig()) -> dict[str, Any]:
    """Decisions of the whole filter (all rules, default config) and of the filename rule alone, scored."""
    captions = [r["caption"] for r in rows]
    batch = _batch(captions)
    for rule in build_rules(cfg):
        rule.apply(batch, StageStats("quality"))
    alone = _batch(captions)
    FilenameRule().apply(alone, StageStats("quality"))
    keep_truth = np.array([r["keep"] for r in rows])
    filename_truth = np.array([r["filename"] for r in rows])
    wrong = [{"caption": r["caption"][:120], "kind": r["kind"], "got": "kept" if alive else reason}
             for r, alive, reason in zip(rows, batch.alive, batch.reasons) if alive != r["keep"]]
    wrong += [{"caption": r["caption"][:120], "kind": r["kind"], "got": "filename rule" if hit else "not filename"}
              for r, hit in zip(rows, ~alone.alive) if hit != r["filename"]]
    return {
        "captions": len(rows), "kinds": dict(Counter(r["kind"] for r in rows)),
        "languages": len({r["lang"] for r in rows if r["lang"]}),
        "keep_english": _precision_recall(batch.alive.copy(), keep_truth),
        "filename_rule": _precision_recall(~alone.alive, filename_truth),
        "reasons_by_kind": {kind: dict(Counter(str(reason) for r, reason in zip(rows, batch.reasons) if r["kind"] == kind))
                            for kind in sorted({r["kind"] for r in rows})},
        "misclassified": wrong,
    }


def test_labelled_set_is_large_and_varied() -> None:
    rows = load_labelled()
    kinds = Counter(r["kind"] for r in rows)
    assert len(rows) >= 300 and len({r["caption"] for r in rows}) == len(rows)
    assert kinds["english"] >= 100 and kinds["foreign"] >= 80 and kinds["filename"] >= 60 and kinds["junk"] >= 20
    assert len({r["lang"] for r in rows if r["kind"] == "foreign"}) >= 30


def test_precision_and_recall_floors() -> None:
    q = caption_quality(load_labelled())
    got = {"keep_precision": q["keep_english"]["precision"], "keep_recall": q["keep_english"]["recall"],
           "filename_precision": q["filename_rule"]["precision"], "filename_recall": q["filename_rule"]["recall"]}
    assert all(got[k] >= floor for k, floor in FLOORS.items()), (got, q["misclassified"])
    assert "None" not in q["reasons_by_kind"]["foreign"] and q["reasons_by_kind"]["foreign"]["language"] >= 80
    assert "None" not in q["reasons_by_kind"]["junk"], "every junk caption is rejected, by some rule"
