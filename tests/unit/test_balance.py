"""Unit tests of query matching and the balance stage: matching rules, query lists, sampling, resume."""
from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.balance.stage import (BalanceConfig, REJECTED_DIR, keep_probabilities, run_balance, uid_uniform)
from pipeline.core.errors import WitError
from pipeline.crawl.extract import make_uid
from pipeline.core.io import parquet_files
from pipeline.balance.queries import (STOPWORDS, QueryMatcher, build_queries, load_queries, normalise, normalise_many,
                              pmi_bigrams, save_queries)
from pipeline.core.stats import StageStats

QUERIES = ["cat", "mat", "New York", "york", "new york city", "covid-19", "rock & roll", "état", "dog"]


def ids(*names: str) -> list[int]:
    return sorted(QUERIES.index(n) for n in names)


@pytest.fixture(scope="module")
def matcher() -> QueryMatcher:
    return QueryMatcher(QUERIES)


# ------------------------------------------------------------------------------------------------ matching

@pytest.mark.parametrize("caption, expected", [
    ("a cat on a mat", ("cat", "mat")),
    ("concatenate", ()),
    ("cats and mats", ()),
    ("bobcat", ()),
    ("CAT", ("cat",)),
    ("Cat.", ("cat",)),
    ("(cat)", ("cat",)),
    ("cat,mat", ("cat", "mat")),
    ("my_cat", ("cat",)),
    ("cat's toy", ("cat",)),
    ("cat cat cat", ("cat",)),
    ("I love New York", ("New York", "york")),
    ("new-york!", ("New York", "york")),
    ("NEW YORK CITY at night", ("New York", "york", "new york city")),
    ("new\n york", ("New York", "york")),
    ("newyork", ()),
    ("a new day in york", ("york",)),
    ("COVID 19 vaccine", ("covid-19",)),
    ("covid-19", ("covid-19",)),
    ("covid-190", ()),
    ("rock and roll", ()),
    ("Rock & Roll hall", ("rock & roll",)),
    ("rock-roll", ("rock & roll",)),
    ("L'ÉTAT c'est moi", ("état",)),
    ("etat", ()),
    ("", ()),
    ("   ", ()),
])
def test_whole_word_case_insensitive_matching(matcher: QueryMatcher, caption: str, expected: tuple[str, ...]) -> None:
    assert matcher.match(caption) == ids(*expected)


def test_batch_matching_keeps_captions_apart(matcher: QueryMatcher) -> None:
    captions = ["new", "york", None, "a dog", "cat\x1fmat", "new york", "", "hot dog"]
    assert matcher.match_many(captions) == [[], ids("york"), [], ids("dog"), ids("cat", "mat"),
                                            ids("New York", "york"), [], ids("dog")]
    offsets, found = matcher.match_batch(captions)
    assert offsets.tolist() == [0, 0, 1, 1, 2, 4, 6, 6, 7] and found.dtype == np.int32
    arrow = matcher.match_arrow(pa.array(captions))
    assert arrow.type == pa.list_(pa.int32()) and arrow.to_pylist() == matcher.match_many(captions)
    assert matcher.match_many([]) == []


def test_batch_matching_agrees_with_a_naive_reference() -> None:
    rng = random.Random(5)
    vocab = ["cat", "Cat", "mat", "new", "York", "état", "c", "a", "the", "dog", "hot", "-", ",", "!!", "_", "'s"]
    queries = sorted({" ".join(rng.choices(vocab, k=rng.randint(1, 3))) for _ in range(150)})
    captions = ["".join(rng.choice([" ", "", "  "]) + w for w in rng.choices(vocab, k=rng.randint(0, 12)))
                for _ in range(400)]
    expected = [[i for i, q in enumerate(queries) if normalise(q) and f" {normalise(q)} " in f" {normalise(c)} "]
                for c in captions]
    assert QueryMatcher(queries).match_many(captions) == expected


def test_queries_with_the_same_words_match_together() -> None:
    m = QueryMatcher(["C++", "c", "+++", "", "Dog", "dog"])
    assert m.match("c++ and c") == [0, 1]
    assert m.match("hot DOG") == [4, 5]
    assert m.match("+++") == []
    assert QueryMatcher(["", "+"]).match_many(["a", "+"]) == [[], []] and QueryMatcher([]).match("a") == []


def test_matcher_pickles_small_before_and_after_use() -> None:
    m = QueryMatcher(QUERIES)
    fresh = pickle.loads(pickle.dumps(m))
    assert not fresh.built and fresh.match("a cat") == ids("cat")
    assert m.match("new york") == ids("New York", "york") and m.built
    blob = pickle.dumps(m)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    assert not again.built and again.match("a dog on a mat") == ids("dog", "mat") and again.built


def test_normalise() -> None:
    assert normalise("  Hello,   WORLD!! ") == "hello world"
    assert normalise("état_d'âme") == "état d âme"
    assert normalise("Straße") == "strasse"
    texts = ["A\x1fB", "", None, "  x__y ", "C++", "état!", "new  -- YORK"]
    assert normalise_many(texts) == ["a b", "", "", "x y", "c", "état", "new york"] and normalise_many([]) == []


# ------------------------------------------------------------------------------------------- query lists

def test_load_metadata_json_and_text(tmp_path: Path) -> None:
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(["cat", "new york", "état"]))
    assert load_queries(meta) == ["cat", "new york", "état"]
    text = tmp_path / "queries.txt"
    text.write_text("cat\n\n  new york  \nétat\n")
    assert load_queries(text) == ["cat", "new york", "état"]
    save_queries(tmp_path / "q.json", ["a b", "multi\nline", "c"])
    assert load_queries(tmp_path / "q.json") == ["a b", "multi\nline", "c"]
    save_queries(tmp_path / "q.txt", ["a b", "multi\nline", "c"])
    assert load_queries(tmp_path / "q.txt") == ["a b", "multi line", "c"]
    assert QueryMatcher.from_file(meta).match("New York") == [1]


@pytest.mark.parametrize("body, message", [
    ("{not json", "not valid JSON"),
    ('{"cat": 1}', "expected a JSON list"),
    ('["cat", 3]', "entry 1 is not a string"),
    ("[]", "empty"),
])
def test_bad_metadata_json(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "metadata.json"
    path.write_text(body)
    with pytest.raises(WitError, match=message):
        load_queries(path)


def test_missing_query_list(tmp_path: Path) -> None:
    with pytest.raises(WitError, match="query list not found"):
        load_queries(tmp_path / "nope.json")


def test_wordfreq_data_ships_in_the_wheel() -> None:
    import wordfreq

    assert (Path(wordfreq.__file__).parent / "data" / "large_en.msgpack.gz").is_file()


def test_built_query_list_is_sane(tmp_path: Path) -> None:
    corpus = ["New York City skyline at night", "a taxi in new york", "hot dog stand in new york"] * 4 + \
             ["the dog and the cat", "a red car", "stock photo of a red car"] * 2
    out = tmp_path / "metadata.json"
    queries = build_queries(out, n_unigrams=3000, n_bigrams=20, corpus=corpus, min_bigram_count=2, wordnet=False)
    assert load_queries(out) == queries and len(queries) == len(set(queries))
    unigrams, bigrams = queries[:3000], queries[3000:]
    assert len(unigrams) == 3000 and {"dog", "water", "house", "car"} <= set(unigrams)
    assert not STOPWORDS & set(unigrams) and all(u.isalpha() and len(u) > 1 for u in unigrams)
    assert {"new york", "york city", "hot dog", "red car"} <= set(bigrams) and "in new" not in bigrams
    assert all(len(b.split()) == 2 and not STOPWORDS & set(b.split()) for b in bigrams)
    assert build_queries(None, 100, 10, wordnet=False) == queries[:100]  # no corpus: unigrams only


def test_pmi_ranks_collocations_first() -> None:
    corpus = ["new york"] * 5 + ["new car", "red car", "new house", "red house", "big car", "big house"] * 5
    ranked = pmi_bigrams(corpus, 10, min_count=2)
    assert ranked[0] == "new york" and set(ranked) >= {"new car", "red house"}
    assert pmi_bigrams(corpus, 10, min_count=6) == []


# ---------------------------------------------------------------------------------------------- the stage

def write_parts(folder: Path, captions: list[str], n_parts: int = 1, shuffle_seed: int | None = None) -> list[str]:
    """Write captions as parquet parts of candidate-like rows; return the uids."""
    rows = [{"uid": make_uid(f"http://x.test/{i}.jpg", c), "url": f"http://x.test/{i}.jpg", "caption": c,
             "lang": "en"} for i, c in enumerate(captions)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n_parts):
        chunk = rows[k::n_parts]
        pq.write_table(pa.Table.from_pylist(chunk), folder / f"part-{k:03d}.parquet")
    return [r["uid"] for r in rows]


def skewed_captions() -> list[str]:
    """alpha: 2000 pairs, beta: 300, gamma: 50, beta+gamma: 10, none: 40."""
    return ([f"alpha shot {i}" for i in range(2000)] + [f"beta shot {i}" for i in range(300)]
            + [f"gamma shot {i}" for i in range(50)] + [f"Beta and GAMMA {i}" for i in range(10)]
            + [f"nothing here {i}" for i in range(40)])


@pytest.fixture()
def query_file(tmp_path: Path) -> Path:
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(["alpha", "beta", "gamma", "never"]))
    return path


def kept_uids(out: Path) -> set[str]:
    return set(pq.read_table(out, columns=["uid"]).column(0).to_pylist())


def test_balance_caps_queries_in_expectation(tmp_path: Path, query_file: Path) -> None:
    write_parts(tmp_path / "in", skewed_captions(), n_parts=3)
    cfg = BalanceConfig(queries=str(query_file), t=200, progress=False, workers=1)
    stats = run_balance(tmp_path / "in", tmp_path / "out", cfg)
    counts = pq.read_table(tmp_path / "out" / "_queries" / "query_counts.parquet").to_pylist()
    assert [(r["query"], r["count"]) for r in counts] == [("alpha", 2000), ("beta", 310), ("gamma", 60), ("never", 0)]
    kept = {r["query"]: r["kept"] for r in counts}
    assert abs(kept["alpha"] - 200) < 4 * np.sqrt(2000 * 0.1 * 0.9)
    assert kept["gamma"] == 60  # under t: all kept, and beta+gamma pairs ride on their rarest query
    assert abs(kept["beta"] - (300 * 200 / 310 + 10)) < 4 * np.sqrt(300 * 0.65 * 0.35)
    assert stats.dropped["no_query"] == 40
    assert stats.extra["before"]["queries_over_t"] == 2 and stats.extra["after"]["queries_matched"] == 3
    assert stats.extra["head_before"][0]["query"] == "alpha" and stats.extra["before"]["quantiles"]["p100"] == 2000


def test_every_row_is_accounted_for(tmp_path: Path, query_file: Path) -> None:
    uids = write_parts(tmp_path / "in", skewed_captions(), n_parts=2)
    cfg = BalanceConfig(queries=str(query_file), t=100, progress=False, workers=1)
    stats = run_balance(tmp_path / "in", tmp_path / "out", cfg)
    assert stats.accounted() and stats.inputs == len(uids) and stats.extra["parts"] == 2
    assert set(stats.dropped) == {"no_query", "over_balanced"}
    kept = pq.read_table(tmp_path / "out")
    rejected = pq.read_table(tmp_path / "out" / REJECTED_DIR)
    assert kept.num_rows == stats.kept and rejected.num_rows == stats.n_dropped
    assert sorted(kept["uid"].to_pylist() + rejected["uid"].to_pylist()) == sorted(uids)
    assert kept.schema.names == ["uid", "url", "caption", "lang", "queries"]
    assert all(q for q in kept["queries"].to_pylist())
    by_reason = rejected.group_by("reason").aggregate([("uid", "count")]).to_pylist()
    assert {r["reason"]: r["uid_count"] for r in by_reason} == dict(stats.dropped)
    reasons = zip(rejected["queries"].to_pylist(), rejected["reason"].to_pylist())
    assert all(not q for q, r in reasons if r == "no_query")
    assert [p.name for p in parquet_files(tmp_path / "out")] == ["part-000.parquet", "part-001.parquet"]
    assert StageStats.read(tmp_path / "out").to_dict() == stats.to_dict()


def test_decisions_do_not_depend_on_order_or_partitioning(tmp_path: Path, query_file: Path) -> None:
    cfg = BalanceConfig(queries=str(query_file), t=100, seed=7, progress=False, workers=1, batch_rows=97)
    write_parts(tmp_path / "a", skewed_captions(), n_parts=1)
    write_parts(tmp_path / "b", skewed_captions(), n_parts=5, shuffle_seed=3)
    run_balance(tmp_path / "a", tmp_path / "out-a", cfg)
    run_balance(tmp_path / "b", tmp_path / "out-b", cfg)
    run_balance(tmp_path / "a", tmp_path / "out-a2", cfg)
    assert kept_uids(tmp_path / "out-a") == kept_uids(tmp_path / "out-b") == kept_uids(tmp_path / "out-a2")
    other = BalanceConfig(queries=str(query_file), t=100, seed=8, progress=False, workers=1)
    run_balance(tmp_path / "a", tmp_path / "out-c", other)
    assert kept_uids(tmp_path / "out-c") != kept_uids(tmp_path / "out-a")


def test_rerun_skips_finished_parts_and_redoes_on_change(tmp_path: Path, query_file: Path) -> None:
    write_parts(tmp_path / "in", skewed_captions(), n_parts=3)
    cfg = BalanceConfig(queries=str(query_file), t=100, progress=False, workers=1)
    first = run_balance(tmp_path / "in", tmp_path / "out", cfg)
    again = run_balance(tmp_path / "in", tmp_path / "out", cfg)
    assert again.extra["skipped_parts"] == 3 and again.kept == first.kept and again.accounted()
    cfg = BalanceConfig(queries=str(query_file), t=1000, progress=False, workers=1)
    changed = run_balance(tmp_path / "in", tmp_path / "out", cfg)
    assert changed.extra["skipped_parts"] == 0 and changed.kept > first.kept and changed.accounted()
    new_rows = pa.table({"uid": ["new-1", "new-2"], "caption": ["alpha", "zzz"]})
    pq.write_table(new_rows, tmp_path / "in" / "part-000.parquet")
    rewritten = run_balance(tmp_path / "in", tmp_path / "out", cfg)
    assert rewritten.extra["skipped_parts"] == 0 and rewritten.accounted()  # counts changed: every part redone
    assert rewritten.inputs == 2 + sum(pq.read_metadata(p).num_rows for p in parquet_files(tmp_path / "in")[1:])


def test_uniform_draws_and_probabilities() -> None:
    u = uid_uniform([f"u{i}" for i in range(20_000)], seed=1)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert (uid_uniform(["a", "b"], 1) == uid_uniform(["a", "b"], 1)).all()
    assert (uid_uniform(["a"], 1) != uid_uniform(["a"], 2)).all()
    assert keep_probabilities(np.array([0, 5, 10, 40]), 10).tolist() == [1.0, 1.0, 1.0, 0.25]


def test_without_rejected_files_rows_are_still_counted(tmp_path: Path, query_file: Path) -> None:
    write_parts(tmp_path / "in", skewed_captions())
    stats = run_balance(tmp_path / "in", tmp_path / "out",
                        BalanceConfig(queries=str(query_file), t=100, write_rejected=False, progress=False))
    assert stats.accounted() and stats.n_dropped > 0
    assert not list((tmp_path / "out" / REJECTED_DIR).glob("*.parquet"))


def test_builds_a_query_list_when_none_is_given(tmp_path: Path) -> None:
    write_parts(tmp_path / "in", ["a dog on the beach", "Golden Gate bridge", "golden gate park"] * 3 + ["zzqx"])
    cfg = BalanceConfig(n_unigrams=2000, n_bigrams=10, min_bigram_count=2, wordnet=False, progress=False)
    stats = run_balance(tmp_path / "in", tmp_path / "out", cfg)
    queries = load_queries(tmp_path / "out" / "_queries" / "queries.json")
    assert "dog" in queries and "golden gate" in queries and stats.dropped["no_query"] == 1 and stats.kept == 9
    assert run_balance(tmp_path / "in", tmp_path / "out", cfg).extra["skipped_parts"] == 1


def test_bad_input(tmp_path: Path, query_file: Path) -> None:
    cfg = BalanceConfig(queries=str(query_file), progress=False)
    (tmp_path / "in").mkdir()
    with pytest.raises(WitError, match="no parquet parts"):
        run_balance(tmp_path / "in", tmp_path / "out", cfg)
    pq.write_table(pa.table({"caption": ["a cat"]}), tmp_path / "in" / "p.parquet")
    with pytest.raises(WitError, match="no 'uid' column"):
        run_balance(tmp_path / "in", tmp_path / "out", cfg)
    with pytest.raises(WitError, match="must differ"):
        write_parts(tmp_path / "ok", ["a cat"])
        run_balance(tmp_path / "ok", tmp_path / "ok", cfg)
    with pytest.raises(WitError, match="query list not found"):
        run_balance(tmp_path / "ok", tmp_path / "out", BalanceConfig(queries=str(tmp_path / "none.json")))
    with pytest.raises(WitError, match=r"balance.t: expected an integer >= 1, got 0"):
        BalanceConfig(t=0)
    assert pickle.loads(pickle.dumps(cfg)) == cfg
