"""The two matching modes and the MetaCLIP balancing rule of the balance stage.

Matching is compared with plain, independent implementations written here, on real captions (raw Common
Crawl alt text and Conceptual Captions, from the shared fixtures; skipped when those are absent):

* ``metaclip``: MetaCLIP's ``spacing`` written out again, then ``f" {entry} " in spaced`` for every entry;
* ``words``: one regular expression per query, its words separated by runs of non-word characters and
  bounded by non-word characters, on the case-folded caption.

The metaclip rule's draws are checked for being a function of (seed, uid, entry text) only, and for keeping
a pair with probability ``1 - prod(1 - p)`` over its matched entries.
"""
from __future__ import annotations

import csv
import itertools
import json
import pickle
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.balance.queries import MetaclipMatcher, QueryMatcher, make_matcher, spacing
from pipeline.balance.stage import (BalanceConfig, Sampler, entry_hashes, keep_probabilities, pair_uniform,
                                    run_balance, uid_hash)
from pipeline.core.errors import WitError

CAPTIONS_DIR = Path("fixtures") / "captions" / "dev"
N_PER_SOURCE = 1000
EDGE_ENTRIES = ["", "U.S.", "U.S", "e-mail", "rock & roll", "don't", "New York", "new york", ",", "-", "|", "&",
                "a,b", " cat", "cat ", "x  y", "\t", "café", "Ö", "C++", "3D", "T-shirt", "t-shirt", "2019", "(2019)",
                "photo", "Photo", "PHOTO", "stock photo", "vector illustration", "of the", "the", "a", "for sale"]


# --------------------------------------------------------------------------------------- reference code

def naive_spacing(text: str) -> str:
    """MetaCLIP's ``spacing``, written out again from its description."""
    text = f" {text} "
    for punct in [",", ".", ";", ":", "?", "!", "`"]:
        text = text.replace(punct, f" {punct} ")
    for char in ["\t", "\n", "\r"]:
        text = text.replace(char, " ")
    return text


def naive_metaclip(entries: list[str], captions: list[str]) -> list[list[int]]:
    spaced_entries = [f" {e} " for e in entries]
    out = []
    for caption in captions:
        text = naive_spacing(caption)
        out.append([i for i, entry in enumerate(spaced_entries) if entry in text])
    return out


WORD = r"(?:[^\W_]|[\u0300-\u036f])"  # a letter or digit (``\w`` without ``_``), or a combining mark
NON_WORD = r"(?:_|[^\w\u0300-\u036f])"


def word_regexes(queries: list[str]) -> dict[str, list[tuple[int, re.Pattern[str]]]]:
    """Per first word: ``(id, whole-word regex)`` of the queries starting with it (to skip most searches)."""
    by_first: dict[str, list[tuple[int, re.Pattern[str]]]] = {}
    for qid, query in enumerate(queries):
        tokens = re.findall(f"{WORD}+", query.casefold())
        if tokens:
            body = f"{NON_WORD}+".join(map(re.escape, tokens))
            by_first.setdefault(tokens[0], []).append((qid, re.compile(f"(?<!{WORD}){body}(?!{WORD})")))
    return by_first


def naive_words(queries: list[str], captions: list[str]) -> list[list[int]]:
    by_first = word_regexes(queries)
    out = []
    for caption in captions:
        text = caption.casefold()
        candidates = itertools.chain.from_iterable(by_first.get(w, []) for w in set(re.findall(f"{WORD}+", text)))
        out.append(sorted(qid for qid, regex in candidates if regex.search(text)))
    return out


# ---------------------------------------------------------------------------------------- real captions

def read_real_captions(shared_dir: Path) -> list[str]:
    """``N_PER_SOURCE`` non-empty alt texts of the Common Crawl sample and as many CC3M captions."""
    alt_csv = shared_dir / CAPTIONS_DIR / "commoncrawl-alt" / "sample_data.csv"
    cc3m_tsv = shared_dir / CAPTIONS_DIR / "cc3m" / "Validation_GCC-1.1.0-Validation.tsv"
    if not (alt_csv.is_file() and cc3m_tsv.is_file()):
        pytest.skip(f"caption fixtures not found under {shared_dir / CAPTIONS_DIR} (set WIT_SHARED_DIR)")
    with open(alt_csv, newline="", encoding="utf-8") as f:  # quoted fields span lines
        alt = [row["alt_text"] for row in csv.DictReader(f) if row["alt_text"].strip()]
    with open(cc3m_tsv, newline="", encoding="utf-8") as f:
        cc3m = [line.split("\t", 1)[0] for line in itertools.islice(f, N_PER_SOURCE)]
    return alt[:N_PER_SOURCE] + cc3m


def entries_for(captions: list[str]) -> list[str]:
    """A list that matches real captions a lot: their frequent raw tokens (case and punctuation kept),
    those lower-cased and capitalised, frequent raw bigrams, and edge cases."""
    tokens: Counter[str] = Counter()
    bigrams: Counter[str] = Counter()
    for caption in captions:
        toks = caption.split()
        tokens.update(toks)
        bigrams.update(f"{a} {b}" for a, b in zip(toks, toks[1:]))
    top = [t for t, _ in tokens.most_common(1500)]
    variants = [v for t in top[:500] for v in (t.lower(), t.capitalize())]
    entries = EDGE_ENTRIES + top + variants + [b for b, _ in bigrams.most_common(800)]
    return list(dict.fromkeys(entries))  # distinct; duplicates are tested on their own below


@pytest.fixture(scope="module")
def real(shared_dir: Path) -> tuple[list[str], list[str]]:
    captions = read_real_captions(shared_dir)
    return captions, entries_for(captions)


def test_real_captions_are_read(real: tuple[list[str], list[str]]) -> None:
    captions, entries = real
    assert len(captions) == 2 * N_PER_SOURCE and all(isinstance(c, str) for c in captions)
    assert any("\n" in c for c in captions) or len(set(captions)) > 1500
    assert len(entries) > 2000


def test_metaclip_matching_is_the_reference_on_real_captions(real: tuple[list[str], list[str]]) -> None:
    captions, entries = real
    expected = naive_metaclip(entries, captions)
    got = MetaclipMatcher(entries).match_many(captions)
    assert got == expected
    assert sum(map(len, expected)) > 5 * len(captions)  # the comparison is not vacuous
    assert sum(1 for e in expected if entries.index("") in e) > 50  # "" matches where spacing doubles a space


def test_words_matching_is_the_regex_reference_on_real_captions(real: tuple[list[str], list[str]]) -> None:
    captions, entries = real
    expected = naive_words(entries, captions)
    assert QueryMatcher(entries).match_many(captions) == expected
    assert sum(map(len, expected)) > 10 * len(captions)


def test_batching_does_not_change_matches(real: tuple[list[str], list[str]]) -> None:
    captions, entries = real
    for mode in ("words", "metaclip"):
        matcher = make_matcher(entries, mode)
        whole = matcher.match_many(captions)
        pieces = [matcher.match_many(captions[i: i + 97]) for i in range(0, len(captions), 97)]
        assert list(itertools.chain.from_iterable(pieces)) == whole


def test_plain_lowercase_entries_found_by_metaclip_are_found_by_words(real: tuple[list[str], list[str]]) -> None:
    """An entry of lower-case letters and digits with single spaces that occurs space-delimited in the spaced
    caption also occurs there as whole words: metaclip's matches of such entries are a subset of words'."""
    captions, entries = real
    plain = [e for e in entries if re.fullmatch(r"[a-z0-9]+( [a-z0-9]+)*", e)]
    meta, words = MetaclipMatcher(plain).match_many(captions), QueryMatcher(plain).match_many(captions)
    assert all(set(m) <= set(w) for m, w in zip(meta, words))
    assert sum(map(len, words)) > sum(map(len, meta))  # case and unspaced punctuation: words finds more


# ---------------------------------------------------------------------------------------- metaclip edges

@pytest.mark.parametrize("caption, expected", [
    ("a cat, on a mat.", ["cat", "mat"]),
    ("A Cat", []),  # case-sensitive
    ("cat-like", []),  # only , . ; : ? ! ` are spaced out
    ("(cat)", []),
    ("cat's", []),
    ("cat?!", ["cat"]),
    ("`cat`", ["cat"]),
    ("new\tyork\ncity", ["new york", "york city"]),
    ("new  york", []),  # a double space is not one
    ("U.S. made", ["U . S ."]),  # entries are not spaced out: " U.S. " never occurs in a spaced text ...
    ("U . S . ", []),  # ... and a spaced-out entry matches the unspaced text only
    ("concatenate", []),
])
def test_metaclip_matching_cases(caption: str, expected: list[str]) -> None:
    entries = ["cat", "mat", "new york", "york city", "U.S.", "U . S ."]
    assert [entries[i] for i in MetaclipMatcher(entries).match(caption)] == expected
    assert [entries[i] for i in naive_metaclip(entries, [caption])[0]] == expected


def test_metaclip_separator_none_empty_and_duplicates() -> None:
    entries = ["cat", "a\x1fb", "", "cat", "b cat", "\x1f"]
    captions = ["a cat", "xa\x1fb cat", "a\x1fb cat", None, "", "one  two", "\x1f", "x \x1f b cat"]
    texts = ["" if c is None else c for c in captions]
    matcher = MetaclipMatcher(entries)
    assert matcher.match_many(captions) == naive_metaclip(entries, texts)
    assert matcher.match_many(captions)[2] == [0, 1, 3] and matcher.match_many(captions)[7] == [0, 3, 4, 5]
    assert matcher.match_many([]) == []
    assert matcher.match_batch([])[0].tolist() == [0]


def test_metaclip_matches_the_reference_on_random_text() -> None:
    rng = random.Random(3)
    alphabet = ["a", "b", "A", " ", "  ", ",", ".", "!", "`", "-", "\t", "\n", "é", "ab", "ba", "\x1f", "(", ")"]
    entries = sorted({"".join(rng.choices(alphabet, k=rng.randint(0, 4))) for _ in range(300)})
    captions = ["".join(rng.choices(alphabet, k=rng.randint(0, 15))) for _ in range(1500)]
    assert MetaclipMatcher(entries).match_many(captions) == naive_metaclip(entries, captions)


def test_spacing_is_metaclips() -> None:
    assert spacing("a,b.c;d:e?f!g`h\ti\nj\rk") == " a , b . c ; d : e ? f ! g ` h i j k "
    assert spacing("") == "  " and spacing("x") == naive_spacing("x")


def test_metaclip_matcher_pickles_small_and_modes_are_checked() -> None:
    matcher = MetaclipMatcher(["cat", "Dog"])
    assert matcher.match("Dog, cat") == [0, 1]
    again = pickle.loads(pickle.dumps(matcher))
    assert isinstance(again, MetaclipMatcher) and not again.built and again.match("dog cat") == [0]
    assert len(pickle.dumps(again)) < 500
    with pytest.raises(WitError, match="matching"):
        make_matcher(["a"], "regex")
    assert matcher.cache_tag("abc") == "abc-metaclip" and QueryMatcher([]).cache_tag("abc") == "abc"


# ------------------------------------------------------------------------------------------ metaclip rule

def verdicts(sampler: Sampler, rows: list[tuple[str, list[int]]]) -> dict[str, int]:
    offsets = np.concatenate([[0], np.cumsum([len(ids) for _, ids in rows])]).astype(np.int64)
    ids = np.array([i for _, row_ids in rows for i in sorted(row_ids)], dtype=np.int64)
    uids = [u for u, _ in rows]
    return dict(zip(uids, sampler.decide(offsets, ids, uids).tolist()))


def test_metaclip_draws_depend_on_seed_uid_and_entry_only() -> None:
    rng = random.Random(0)
    entries = [f"entry {i}" for i in range(50)]
    probs = np.array([rng.random() for _ in entries])
    rows = [(f"uid-{i}", rng.sample(range(50), rng.randint(0, 6))) for i in range(3000)]
    sampler = Sampler(probs, seed=5, rule="metaclip", entry_keys=entry_hashes(entries))
    base = verdicts(sampler, rows)
    # the same entries at other positions of the list, rows shuffled and split into other batches
    order = list(range(50))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    moved = Sampler(probs[order], seed=5, rule="metaclip", entry_keys=entry_hashes([entries[i] for i in order]))
    shuffled = [(u, [position[i] for i in ids]) for u, ids in rows]
    rng.shuffle(shuffled)
    again = {}
    for start in range(0, len(shuffled), 211):
        again.update(verdicts(moved, shuffled[start: start + 211]))
    assert again == base
    assert Counter(base.values())[1] == sum(1 for _, ids in rows if not ids)  # no_query
    other_seed = verdicts(Sampler(probs, seed=6, rule="metaclip", entry_keys=entry_hashes(entries)), rows)
    assert sum(base[u] != other_seed[u] for u, _ in rows) > 300
    one = pair_uniform(uid_hash(["uid-1"], 5), entry_hashes(["entry 3"]))
    assert one.tolist() == pair_uniform(uid_hash(["uid-1"], 5), entry_hashes(["entry 3"])).tolist()
    assert one.tolist() != pair_uniform(uid_hash(["uid-1"], 5), entry_hashes(["entry 4"])).tolist()


def test_metaclip_keep_probability_is_one_minus_product() -> None:
    n = 100_000
    probs = np.array([0.1, 0.3, 0.5, 1.0, 0.02])
    sampler = Sampler(probs, seed=11, rule="metaclip", entry_keys=entry_hashes(["a", "b", "c", "d", "e"]))
    for subset in ([0], [1, 2], [0, 1, 2], [0, 4], [2, 3]):
        rows = [(f"{subset}-{i}", subset) for i in range(n)]
        kept = sum(v == 0 for v in verdicts(sampler, rows).values()) / n
        expected = 1 - np.prod(1 - probs[subset])
        assert abs(kept - expected) < 4.5 * np.sqrt(expected * (1 - expected) / n) + 1e-9, (subset, kept, expected)


def test_metaclip_draws_are_uniform_and_independent_across_entries() -> None:
    n = 200_000
    uids = uid_hash([f"u{i}" for i in range(n)], seed=1)
    a, b = (pair_uniform(uids, np.full(n, h, dtype=np.uint64)) for h in entry_hashes(["cat", "dog"]))
    assert abs(a.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n) and 0 <= a.min() and a.max() < 1
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(n)
    both = ((a < 0.3) & (b < 0.2)).mean()
    assert abs(both - 0.06) < 5 * np.sqrt(0.06 * 0.94 / n)
    rarest = Sampler(np.array([0.3, 0.2]), seed=1)  # the default rule: one draw against max p
    assert rarest.rule == "rarest" and rarest.entry_keys is None


# ------------------------------------------------------------------------------------------------ stage

def write_part(folder: Path, captions: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    uids = [f"{i:08d}" for i in range(len(captions))]
    pq.write_table(pa.table({"uid": uids, "caption": captions}), folder / "part-0.parquet")


def test_stage_modes_on_real_captions(real: tuple[list[str], list[str]], tmp_path: Path) -> None:
    captions, entries = real
    write_part(tmp_path / "in", captions)
    queries = tmp_path / "metadata.json"
    queries.write_text(json.dumps(entries))
    runs = {}
    for matching, rule in (("words", "rarest"), ("metaclip", "metaclip"), ("metaclip", "rarest")):
        cfg = BalanceConfig(queries=str(queries), matching=matching, rule=rule, t=20, progress=False)
        stats = run_balance(tmp_path / "in", tmp_path / "out", cfg)
        assert stats.accounted() and stats.extra["skipped_parts"] == 0  # a mode change redoes every part
        assert stats.extra["matching"] == matching and stats.extra["rule"] == rule
        counts = pq.read_table(tmp_path / "out" / "_queries" / "query_counts.parquet")["count"].to_numpy()
        reference = naive_metaclip(entries, captions) if matching == "metaclip" else naive_words(entries, captions)
        assert counts.tolist() == np.bincount(list(itertools.chain.from_iterable(reference)),
                                              minlength=len(entries)).tolist()
        runs[(matching, rule)] = stats
    assert len(list((tmp_path / "out" / "_parts").glob("*.counts-*-metaclip-*.parquet"))) == 1
    assert run_balance(tmp_path / "in", tmp_path / "out", cfg).extra["skipped_parts"] == 1
    meta, rarest = runs[("metaclip", "metaclip")], runs[("metaclip", "rarest")]
    assert meta.dropped["no_query"] == rarest.dropped["no_query"] and meta.kept >= rarest.kept
    assert keep_probabilities(np.array([40]), 20).tolist() == [0.5]


def test_config_choices() -> None:
    assert BalanceConfig().matching in ("words", "metaclip") and BalanceConfig().rule in ("rarest", "metaclip")
    with pytest.raises(WitError, match="balance.matching"):
        BalanceConfig(matching="substring")
    with pytest.raises(WitError, match="balance.rule"):
        BalanceConfig(rule="any")
