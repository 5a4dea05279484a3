"""``wit dedup``: find (and optionally drop) near-duplicates of eval images in any WebDataset shards.

``run_dedup(shards, {"cifar10": "eval/cifar10"}, "dedup_out", DedupConfig(mode="drop"))``:

1. **hash** every sample of every shard (img2dataset layout, ours or not: ``<key>.jpg`` + ``.txt``/``.json``...)
   with :func:`dedup.phash.hash_columns`, in parallel threads, into ``OUT/_hashes/<shard>.parquet`` (``key``,
   ``status`` = ok / no_image / decode_error, the hash columns). A shard's hashes are reused while the tar
   is unchanged (same size and modification time), so a re-run or a run against other eval sets re-reads nothing.
   With ``use_stored_hashes``, a shard whose ``<shard>.parquet`` already holds the hash columns for every
   sample (``wit download`` writes them) is not decoded at all.
2. **match** all hashed samples against every eval index (:mod:`dedup.match`) and write
   ``OUT/overlap.parquet``: ``eval_set``, ``eval_id``, ``key``, ``distance``, ``dct_distance``, ``variant``,
   ``shard`` (thresholds in the schema metadata).
3. **drop** mode: write clean shards ``OUT/<shard>.tar`` (the same members in the same order, less the
   matched samples; atomically), the shard parquet filtered the same way when there is one, and
   ``OUT/sizes.json``. A clean shard is rewritten only when its input or its dropped keys changed.

Every sample is kept or dropped with a reason (``eval_duplicate``); samples that cannot be hashed are kept
(nothing says they are duplicates) and counted in ``extra.unhashed``. Eval sets may be given as index folders
(``wit eval-index``) or as raw eval sets (ImageFolder, shards, parquet), which are indexed into ``OUT/_eval/``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from dedup import sources
from dedup.index import INDEX_FILE, EvalIndexConfig, build_eval_index, check_eval_name, load_robust_index
from dedup.match import MATCH_SCHEMA, MatchConfig, RobustIndex, match_table
from dedup.phash import HASH_SCHEMA, bytes_hash_columns
from pipeline.core.config import field
from pipeline.core.errors import WitError
from pipeline.core.io import atomic_path, clean_tmp, read_json, write_json, write_parquet
from pipeline.core.stats import StageStats
from pipeline.core.lock import locked
from pipeline.core.parts import file_identity, progress, run_key

log = logging.getLogger(__name__)

MODES = ("flag", "drop")
HASH_DIR = "_hashes"
CLEAN_DIR = "_clean"
EVAL_DIR = "_eval"
OVERLAP_FILE = "overlap.parquet"
SIZES_FILE = "sizes.json"
HASHES_SCHEMA = pa.schema([("key", pa.string()), ("status", pa.string()), *HASH_SCHEMA])
OVERLAP_SCHEMA = pa.schema([*MATCH_SCHEMA, ("shard", pa.string())])
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclasses.dataclass
class DedupConfig(MatchConfig, section="dedup"):
    """Options of ``wit dedup`` (the detector's thresholds, see :mod:`dedup.match`, and how to run)."""

    mode: str = field("flag", help="flag: write overlap.parquet only; drop: also write clean shards without "
                                   "the matched samples", choices=MODES)
    threads: int = field(0, help="shards hashed in parallel (0: one per CPU)", min=0)
    use_stored_hashes: bool = field(True, help="use the hash columns of a shard's parquet when every sample "
                                               "has them (wit download writes them) instead of decoding")
    image_keys: tuple[str, ...] = field(sources.IMAGE_KEYS, help="sample extensions tried for the image, in order")


# ---------------------------------------------------------------- eval sets

def resolve_indexes(evals: dict[str, str | os.PathLike], out_dir: Path, max_radius: int) -> dict[str, RobustIndex]:
    """Robust indexes of the eval sets: an index folder/file is loaded, anything else is indexed first into
    ``OUT/_eval/<name>`` (reused when already there)."""
    indexes = {}
    for name, value in sorted(evals.items()):
        check_eval_name(name)
        path = Path(value)
        if path.is_dir() and (path / INDEX_FILE).is_file() or path.name == INDEX_FILE:
            indexes[name] = load_robust_index(path, max_radius)
            continue
        cached = out_dir / EVAL_DIR / name
        if not (cached / INDEX_FILE).is_file():
            log.info("indexing eval set %s from %s", name, path)
            build_eval_index(name, path, out_dir / EVAL_DIR, EvalIndexConfig())
        indexes[name] = load_robust_index(cached, max_radius)
    return indexes


# ---------------------------------------------------------------- hashing

def _fingerprint(path: Path) -> str:
    """The run key of a shard's hashes: the shard's identity (path, size, mtime) and the hashing options."""
    return run_key("dedup", {}, [file_identity(path)])


def _hash_key(tar: Path, cfg: DedupConfig) -> str:
    options = {"image_keys": list(cfg.image_keys), "use_stored_hashes": cfg.use_stored_hashes}
    return run_key("dedup", options, [file_identity(tar)])


def _hash_sample(files: dict[str, bytes], image_keys: Sequence[str]) -> tuple[str, dict | None]:
    data = sources.sample_image(files, image_keys)
    if data is None:
        return "no_image", None
    try:
        return "ok", bytes_hash_columns(data)
    except DECODE_ERRORS:
        return "decode_error", None


def _stored_hashes(tar: Path) -> dict[str, dict] | None:
    """``key -> row`` of ``<shard>.parquet`` when it has the hash columns, else None."""
    meta = tar.with_suffix(".parquet")
    if not meta.is_file():
        return None
    try:
        if not {"key", *HASH_SCHEMA.names} <= set(pq.read_schema(meta).names):
            return None
        return {r["key"]: r for r in pq.read_table(meta, columns=["key", *HASH_SCHEMA.names]).to_pylist()}
    except sources.PARQUET_ERRORS as exc:
        raise sources.unreadable(meta, exc, "shard metadata") from None


def _from_stored(tar: Path, cfg: DedupConfig) -> pa.Table | None:
    """The shard's hash table from its parquet, when that has a row for every sample with an image (a row
    without hashes means its producer could not decode the image: ``decode_error``)."""
    stored = _stored_hashes(tar)
    if stored is None:
        return None
    present = [(key, sources.sample_image(files, cfg.image_keys) is not None)
               for key, files in sources.tar_samples(tar)]
    if any(has and key not in stored for key, has in present):
        return None
    rows = [{"key": key, "status": "no_image"} if not has
            else {**stored[key], "status": "ok" if stored[key]["phash"] is not None else "decode_error"}
            for key, has in present]
    return pa.Table.from_pylist(rows, schema=HASHES_SCHEMA)


def _decode_and_hash(tar: Path, cfg: DedupConfig) -> pa.Table:
    rows = []
    for key, files in sources.tar_samples(tar):
        status, hashes = _hash_sample(files, cfg.image_keys)
        rows.append({"key": key, "status": status, **(hashes or {})})
    return pa.Table.from_pylist(rows, schema=HASHES_SCHEMA)


def hash_shard(tar: Path, cache: Path, cfg: DedupConfig) -> pa.Table:
    """The per-sample hash table of one shard (from the cache when the tar and the hashing options are unchanged)."""
    fingerprint = _hash_key(tar, cfg)
    cached = _read_cache(cache)
    if cached is not None and (cached.schema.metadata or {}).get(b"source") == fingerprint.encode():
        return cached
    table = _from_stored(tar, cfg) if cfg.use_stored_hashes else None
    if table is None:
        table = _decode_and_hash(tar, cfg)
    table = table.replace_schema_metadata({"source": fingerprint})
    write_parquet(table, cache)
    return table


def _read_cache(cache: Path) -> pa.Table | None:
    """A shard's cached hash table, or None when there is none or it is damaged (it is then recomputed)."""
    if not cache.is_file():
        return None
    try:
        return pq.read_table(cache)
    except sources.PARQUET_ERRORS as exc:
        log.warning("%s; recomputing it", sources.unreadable(cache, exc, "hash cache"))
        return None


def hash_shards(tars: list[Path], out_dir: Path, cfg: DedupConfig) -> list[pa.Table]:
    threads = cfg.threads or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=threads) as pool:
        hashed = pool.map(lambda t: hash_shard(t, out_dir / HASH_DIR / f"{t.stem}.parquet", cfg), tars)
        return list(progress(hashed, "dedup: hash", "shard", total=len(tars)))


# ---------------------------------------------------------------- dropping

def _drop_digest(tar: Path, dropped: set[str]) -> str:
    return hashlib.sha256((_fingerprint(tar) + "\n" + "\n".join(sorted(dropped))).encode()).hexdigest()


def write_clean_shard(tar: Path, out_dir: Path, dropped: set[str]) -> int:
    """``OUT/<shard>.tar`` without the members of ``dropped`` samples (and its parquet likewise); returns the
    samples kept. Skipped when an earlier run wrote it from the same input and drops."""
    marker = out_dir / CLEAN_DIR / f"{tar.stem}.json"
    digest = _drop_digest(tar, dropped)
    target = out_dir / tar.name
    if target.is_file() and marker.is_file() and read_json(marker).get("digest") == digest:
        return int(read_json(marker)["kept"])
    kept: set[str] = set()
    with atomic_path(target) as tmp, tarfile.open(tar, "r|*") as src, tarfile.open(tmp, "w") as dst:
        for member in src:
            parts = sources.split_member(member.name) if member.isfile() else None
            if parts is not None and parts[0] in dropped:
                continue
            if parts is not None:
                kept.add(parts[0])
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    meta = tar.with_suffix(".parquet")
    if meta.is_file():
        table = _read_shard_metadata(meta)
        if "key" in table.column_names and dropped:
            table = table.filter(pc.invert(pc.is_in(table["key"], pa.array(sorted(dropped), pa.string()))))
        write_parquet(table, target.with_suffix(".parquet"))
    write_json(marker, {"digest": digest, "kept": len(kept)})
    return len(kept)


def _read_shard_metadata(meta: Path) -> pa.Table:
    try:
        return pq.read_table(meta)
    except sources.PARQUET_ERRORS as exc:
        raise sources.unreadable(meta, exc, "shard metadata") from None


# ---------------------------------------------------------------- the stage

def _match(tars: list[Path], tables: list[pa.Table], indexes: dict[str, RobustIndex], cfg: DedupConfig) -> pa.Table:
    parts = []
    for tar, table in zip(tars, tables):
        m = match_table(table.filter(pc.equal(table["status"], "ok")), indexes, cfg)
        parts.append(m.append_column("shard", pa.array([tar.name] * m.num_rows, pa.string())))
    overlap = pa.concat_tables(parts) if parts else OVERLAP_SCHEMA.empty_table()
    overlap = overlap.sort_by([("eval_set", "ascending"), ("eval_id", "ascending"), ("key", "ascending")])
    meta = {"max_distance": str(cfg.max_distance), "max_dct_distance": str(cfg.max_dct_distance)}
    return overlap.replace_schema_metadata(meta)


def _check_out_dir(tars: list[Path], out_dir: Path, mode: str) -> None:
    names = [t.name for t in tars]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise WitError(f"{dup}: two input shards share this name; give them one folder each")
    if mode == "drop" and any(t.resolve().parent == out_dir.resolve() for t in tars):
        raise WitError(f"{out_dir}: the output folder holds the input shards; choose another --out")


def run_dedup(shards: str | os.PathLike | Sequence[str | os.PathLike], evals: dict[str, str | os.PathLike],
              out_dir: str | os.PathLike, cfg: DedupConfig | None = None) -> StageStats:
    """Match (and in drop mode remove) eval near-duplicates in WebDataset shards (see module doc). The
    inputs are checked before anything is written (the output folder's lock included)."""
    start = time.time()
    cfg = cfg or DedupConfig()
    out = Path(out_dir)
    tars = sources.shard_paths(shards)
    if not tars:
        raise WitError(f"{shards}: no .tar shards")
    if not evals:
        raise WitError("dedup: no eval sets given (--eval NAME=PATH)")
    for name in evals:
        check_eval_name(name)
    _check_out_dir(tars, out, cfg.mode)
    return _dedup(tars, evals, out, cfg, start)


@locked("dedup", "out")
def _dedup(tars: list[Path], evals: dict[str, str | os.PathLike], out: Path, cfg: DedupConfig,
           start: float) -> StageStats:
    for folder in (out, out / HASH_DIR, out / CLEAN_DIR):
        clean_tmp(folder)
    indexes = resolve_indexes(evals, out, cfg.max_distance)
    tables = hash_shards(tars, out, cfg)
    overlap = _match(tars, tables, indexes, cfg)
    write_parquet(overlap, out / OVERLAP_FILE)
    stats = _stats(tables, overlap, indexes, cfg)
    if cfg.mode == "drop":
        sizes = {}
        for tar in tars:
            dropped = set(pc.filter(overlap["key"], pc.equal(overlap["shard"], tar.name)).to_pylist())
            sizes[tar.name] = write_clean_shard(tar, out, dropped)
        write_json(out / SIZES_FILE, sizes)
    stats.extra["seconds"] = round(time.time() - start, 2)
    stats.write(out)
    return stats


def _stats(tables: list[pa.Table], overlap: pa.Table, indexes: dict[str, RobustIndex], cfg: DedupConfig) -> StageStats:
    stats = StageStats(stage="dedup", inputs=sum(t.num_rows for t in tables))
    flagged = len(set(zip(overlap["shard"].to_pylist(), overlap["key"].to_pylist())))
    if cfg.mode == "drop":
        stats.drop("eval_duplicate", flagged)
    stats.kept = stats.inputs - stats.n_dropped
    statuses = [s for t in tables for s in t["status"].to_pylist() if s != "ok"]
    sets = overlap["eval_set"].to_pylist()
    stats.extra.update(
        mode=cfg.mode, shards=len(tables), flagged_samples=flagged,
        unhashed={s: statuses.count(s) for s in sorted(set(statuses))},
        eval_duplicates={n: len({i for s, i in zip(sets, overlap["eval_id"].to_pylist()) if s == n}) for n in indexes},
        eval_images={n: len(index) for n, index in indexes.items()},
        max_distance=cfg.max_distance, max_dct_distance=cfg.max_dct_distance)
    return stats

