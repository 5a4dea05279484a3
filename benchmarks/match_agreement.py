"""How the two matching modes of the balance stage differ on real captions (imported by ``bench_match.py``).

Captions: the caption development set under ``shared/fixtures/captions/dev`` (raw Common Crawl alt text,
CC3M validation captions, WIT reference descriptions and xFlickr&CO captions, English files only). Query
list: the stage's default built list (wordfreq unigrams + PMI bigrams of these captions + WordNet lemmas).
For each source: the share of captions with at least one match in each mode, matches per caption, how
often both modes find the same entries, and the entries behind the pairs found by one mode only, split
into ``case`` (the other mode finds it once caption and entry are lower-cased) and ``punctuation``.
Then, on all captions together, each (matching, rule) pair balanced at a small ``t``: pairs kept and the
largest per-entry count before and after.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.balance.queries import MetaclipMatcher, QueryMatcher, make_matcher, normalise, query_sources, spacing
from pipeline.balance.stage import Sampler, entry_hashes, keep_probabilities

DEV = Path("fixtures") / "captions" / "dev"
TOP = 12


def shared_dir(repo: Path) -> Path:
    return Path(os.environ.get("WIT_SHARED_DIR", repo.parent / "shared"))


def _jsonl(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            value = json.loads(line)[field]
            yield from (value if isinstance(value, list) else [value])


def real_captions(shared: Path) -> dict[str, list[str]]:
    """Non-empty English captions per source (empty when the fixtures are absent)."""
    root = shared / DEV
    if not root.is_dir():
        return {}
    with open(root / "commoncrawl-alt" / "sample_data.csv", newline="", encoding="utf-8") as f:
        alt = [row["alt_text"] for row in csv.DictReader(f)]
    with open(root / "cc3m" / "Validation_GCC-1.1.0-Validation.tsv", encoding="utf-8") as f:
        cc3m = [line.split("\t", 1)[0] for line in f]
    sources = {"commoncrawl-alt (raw alt text)": alt, "cc3m (cleaned, lower-cased)": cc3m,
               "wit-iglue en (Wikipedia captions)": list(_jsonl(root / "wit-iglue" / "test_en.jsonl",
                                                                "caption_reference_description")),
               "xflickrco en (human captions)": list(_jsonl(root / "xflickrco-iglue" / "test_en.jsonl", "sentences"))}
    return {name: [c for c in captions if c and c.strip()] for name, captions in sources.items()}


def _why(entry: str, caption: str, found_by: str) -> str:
    """Why only one mode found ``entry`` in ``caption``: ``case`` or ``punctuation``."""
    if found_by == "words":
        return "case" if f" {entry.lower()} " in spacing(caption.lower()) else "punctuation"
    return "case" if f" {normalise(entry)} " in f" {normalise(caption)} " else "punctuation"


def compare(queries: list[str], captions: list[str]) -> dict[str, Any]:
    words, meta = QueryMatcher(queries).match_many(captions), MetaclipMatcher(queries).match_many(captions)
    only: dict[str, Counter[str]] = {"words": Counter(), "metaclip": Counter()}
    reasons: dict[str, Counter[str]] = {"words": Counter(), "metaclip": Counter()}
    for caption, w, m in zip(captions, words, meta):
        for mode, ids in (("words", set(w) - set(m)), ("metaclip", set(m) - set(w))):
            for qid in ids:
                only[mode][queries[qid]] += 1
                reasons[mode][_why(queries[qid], caption, mode)] += 1
    n = len(captions)
    return {"captions": n,
            "matched_share": {"words": _share(words, n), "metaclip": _share(meta, n)},
            "matches_per_caption": {"words": round(sum(map(len, words)) / n, 2),
                                    "metaclip": round(sum(map(len, meta)) / n, 2)},
            "same_entries_share": round(sum(set(w) == set(m) for w, m in zip(words, meta)) / n, 4),
            "pairs_only_in": {mode: sum(c.values()) for mode, c in only.items()},
            "why_only_in": {mode: dict(c) for mode, c in reasons.items()},
            "top_entries_only_in": {mode: c.most_common(TOP) for mode, c in only.items()}}


def _share(matches: list[list[int]], n: int) -> float:
    return round(sum(1 for m in matches if m) / n, 4)


def agreement(repo: Path) -> dict[str, Any] | None:
    """Both modes on the real captions with the default built list; ``None`` without the fixtures."""
    sources = real_captions(shared_dir(repo))
    if not sources:
        return None
    corpus = list(itertools.chain.from_iterable(sources.values()))
    built = query_sources(corpus=corpus)
    queries = list(itertools.chain.from_iterable(built.values()))
    return {"query_list": {name: len(qs) for name, qs in built.items()},
            "sources": {name: compare(queries, captions) for name, captions in sources.items()},
            "balancing": {f"{matching}+{rule}": balance(queries, corpus, matching, rule, RULE_T)
                          for matching in ("words", "metaclip") for rule in ("rarest", "metaclip")}}


RULE_T = 100


def balance(queries: list[str], captions: list[str], matching: str, rule: str, t: int) -> dict[str, Any]:
    """Pass 1 and 2 of the stage in memory (uids are row numbers, seed 0)."""
    offsets, ids = make_matcher(queries, matching).match_batch(captions)
    counts = np.bincount(ids, minlength=len(queries))
    sampler = Sampler(keep_probabilities(counts, t), 0, rule, entry_hashes(queries) if rule == "metaclip" else None)
    verdict = sampler.decide(offsets, ids, [str(i) for i in range(len(captions))])
    kept_rows = np.repeat(verdict == 0, np.diff(offsets))
    after = np.bincount(ids[kept_rows], minlength=len(queries))
    return {"t": t, "captions": len(captions), "no_query": int((verdict == 1).sum()), "kept": int((verdict == 0).sum()),
            "entries_over_t_before": int((counts > t).sum()), "entries_over_t_after": int((after > t).sum()),
            "max_count_before": int(counts.max()), "max_count_after": int(after.max())}
