"""The ``img2dataset`` download engine (``wit download --engine img2dataset``): img2dataset's own
downloader on Ray, for parity with existing pipelines; the default engine is ``pipeline.download.stage``'s.

Entry point: :func:`run_img2dataset_download` (plan, download, hash and match, outputs); every input row ends
up in a shard parquet or ``_refused.parquet``. Details: docs/download.md ("The img2dataset engine")."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import logging
import math
import multiprocessing
import os
import signal
import sys
import tarfile
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import UnidentifiedImageError

from dedup.index import load_hash_index
from dedup.phash import bytes_hashes
from dedup.search import DEFAULT_MAX_DISTANCE, HashIndex
import pipeline.download.reasons as download_reasons
import pipeline.download.netguard_urllib as netguard
from pipeline.core.config import Config, field
from pipeline.download.config import (OVERLAP_FILE, SHARD_COLUMNS, SIZES_FILE, SHARD_OPTIONS, check_keep_columns,
                                      same_option)
from pipeline.download.plan import PLAN_DIR, URLS_FILE, open_plan, save_plan_record
from pipeline.download.shard import SHARD_DIGITS, done_shards, shard_name
from pipeline.core.errors import WitError
from pipeline.core.env import QUIET_ENV, set_quiet_env
from pipeline.core.executor import ray_session
from pipeline.core.io import InputSpec, Part, clean_tmp, is_url, open_parquet, part_folder, write_json, write_parquet
from pipeline.core.stats import StageStats

log = logging.getLogger(__name__)

REFUSED_FILE = "_refused.parquet"
RESERVED_COLUMNS = SHARD_COLUMNS  # img2dataset's shards have no ``reason`` column
OVERLAP_SCHEMA = pa.schema([("eval_set", pa.string()), ("eval_id", pa.string()), ("key", pa.string()),
                            ("distance", pa.int32()), ("url", pa.string())])


@dataclasses.dataclass
class Img2datasetConfig(Config, section="img2dataset"):
    """Options of the img2dataset engine. Those it shares with ``wit download``'s :class:`DownloadConfig` have
    its defaults, help and bounds (:func:`same_option`); ``timeout``, ``retries``, ``shard_retries`` and
    ``max_distance`` are its own (img2dataset's meaning, or a plain pHash radius)."""

    image_size: int = same_option("image_size")
    resize_mode: str = same_option("resize_mode")
    resize_only_if_bigger: bool = same_option("resize_only_if_bigger")
    min_image_size: int = same_option("min_image_size")
    encode_format: str = same_option("encode_format")
    encode_quality: int = same_option("encode_quality")
    number_sample_per_shard: int = same_option("number_sample_per_shard")
    keep_columns: tuple[str, ...] = same_option("keep_columns")
    processes_count: int = same_option("processes_count")
    thread_count: int = same_option("thread_count")
    timeout: float = field(10.0, gt=0, help="HTTP timeout per image in seconds")
    retries: int = field(0, min=0, help="extra download attempts per image")
    shard_retries: int = field(1, min=0, help="re-runs of img2dataset for shards that failed")
    allow_private_networks: bool = same_option("allow_private_networks")
    max_distance: int = field(DEFAULT_MAX_DISTANCE, min=0, max=64,
                                help="pHash Hamming radius for eval near-duplicates (0-64)")
    ray_address: str | None = same_option("ray_address")

    def check(self) -> None:
        check_keep_columns(self, RESERVED_COLUMNS)

    def shard_options(self) -> dict[str, Any]:
        """The options that decide what a finished shard contains (part of the plan fingerprint)."""
        return {n: getattr(self, n) for n in SHARD_OPTIONS}


# ---------------------------------------------------------------- error reasons

# img2dataset's urllib messages; its reasons differ from the default engine's where its checks do
IMG2DATASET_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"private address", "private_address"),
    (r"timed? ?out", "timeout"),
    (r"name or service not known|temporary failure in name resolution|nodename nor servname"
     r"|no address associated|getaddrinfo failed|name resolution", "dns_error"),
    (r"certificate|ssl", "ssl_error"),
    (r"connection refused|connection reset|remote end closed|connection aborted|broken pipe"
     r"|network is unreachable|no route to host|incompleteread|connection broken", "connection_error"),
    (r"x-robots-tag", "robots_disallowed"),
    (r"hash mismatch", "hash_mismatch"),
    (r"unknown url type|no host given|invalid url|url can't contain control", "bad_url"),
    (r"decod", "decode_error"),
    (r"too small", "image_too_small"),
    (r"area too large", "image_too_large"),
    (r"aspect ratio", "bad_aspect_ratio"),
)


def error_reason(status: str | None, error_message: str | None) -> str:
    """A short, stable drop reason from img2dataset's ``status`` and free-text ``error_message``
    (:func:`pipeline.download.reasons.error_reason` with :data:`IMG2DATASET_PATTERNS`).

    ``HTTP Error 404: Not Found`` -> ``http_404`` (also 403, 410, 429), other 4xx -> ``http_4xx``,
    5xx -> ``http_5xx``; then ``timeout``, ``dns_error``, ``ssl_error``, ``connection_error``,
    ``private_address`` (connection guard), ``decode_error`` (HTML or corrupt bodies), size checks;
    anything unrecognised -> ``download_error`` / ``resize_error``.
    """
    return download_reasons.error_reason(status, error_message, IMG2DATASET_PATTERNS)


# ---------------------------------------------------------------- plan

@dataclasses.dataclass
class Plan:
    """What this shards folder is built from: staged URLs, refused rows, shard layout."""

    urls_file: Path
    inputs: int
    allowed: int
    refused: Counter
    per_shard: int
    has_caption: bool
    extra_columns: list[str]

    @property
    def n_shards(self) -> int:
        return math.ceil(self.allowed / self.per_shard)

    def shard_rows(self, shard_id: int) -> int:
        return min(self.per_shard, self.allowed - shard_id * self.per_shard)


def read_inputs(files: list[Part], keep_columns: tuple[str, ...]) -> pa.Table:
    """``url`` (+ ``caption`` and ``keep_columns`` where present) of all parts, in order."""
    tables = []
    wanted = ["url", "caption", *keep_columns]
    for f in files:
        with open_parquet(f) as reader:
            names = reader.schema_arrow.names
            if "url" not in names:
                raise WitError(f"{f}: no 'url' column")
            tables.append(reader.read(columns=[c for c in dict.fromkeys(wanted) if c in names]))
    table = pa.concat_tables(tables, promote_options="default")
    if table.num_rows == 0:
        raise WitError(f"{part_folder(files[0])}: no rows to download")
    return table


def _stage(files: list[Part], shards_dir: Path, cfg: Img2datasetConfig) -> dict[str, Any]:
    """Screen the input URLs into ``urls.parquet`` (allowed) and ``_refused.parquet``; the plan record."""
    table = read_inputs(files, cfg.keep_columns)
    reasons = netguard.screen_urls(table["url"].to_pylist(), cfg.allow_private_networks)
    refused_mask = pa.array([r is not None for r in reasons])
    allowed = table.filter(pc.invert(refused_mask))
    refused = table.filter(refused_mask)
    refused_reasons = [r for r in reasons if r is not None]
    refused = refused.append_column("status", pa.array(["refused"] * refused.num_rows, pa.string()))
    refused = refused.append_column("error_message", pa.array(refused_reasons, pa.string()))
    write_parquet(allowed, shards_dir / PLAN_DIR / URLS_FILE)
    write_parquet(refused, shards_dir / REFUSED_FILE)
    return {"inputs": table.num_rows, "allowed": allowed.num_rows, "refused": dict(Counter(refused_reasons)),
            "per_shard": cfg.number_sample_per_shard, "has_caption": "caption" in table.column_names,
            "extra_columns": [c for c in table.column_names if c not in ("url", "caption")]}


def make_plan(input_dir: InputSpec, shards_dir: Path, cfg: Img2datasetConfig) -> Plan:
    """Screen and stage the input URLs (or reuse the plan of an earlier run on the same input)."""
    files, digest, record = open_plan(input_dir, shards_dir, cfg)
    if record is None:
        record = _stage(files, shards_dir, cfg)
        save_plan_record(shards_dir, digest, record)
    return Plan(shards_dir / PLAN_DIR / URLS_FILE, record["inputs"], record["allowed"], Counter(record["refused"]),
                record["per_shard"], record["has_caption"], record["extra_columns"])


# ---------------------------------------------------------------- Ray and img2dataset

def _download_shard(downloader: Any, shard: Any, guard: bool) -> Any:
    """img2dataset's per-shard Ray task, with the peer-address guard set for this worker process."""
    netguard.set_guard(guard)
    return downloader(shard)


class _GuardedRayDownload:
    """Stands in for ``img2dataset.distributor.ray_download`` (same ``.remote(downloader, shard)`` call)."""

    def __init__(self, guard: bool) -> None:
        import ray

        self.task = ray.remote(num_cpus=1)(_download_shard)
        self.guard = guard

    def remote(self, downloader: Any, shard: Any) -> Any:
        return self.task.remote(downloader, shard, self.guard)


# img2dataset installs a SIGINT handler that exits 0 (and fails outside the main thread): keep ours.
_NO_SIGNAL = types.SimpleNamespace(signal=lambda *args, **kwargs: None, SIGINT=signal.SIGINT)


_CHATTER = ("Starting the downloading", "Sharding file number", "File sharded in", "Downloading starting now")


class _QuietStdout(io.TextIOBase):
    """Forwards to ``target`` all but img2dataset's fixed driver chatter (its per-shard and total
    progress lines come from its logger process and are kept)."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self._dropped = False

    def write(self, text: str) -> int:
        if text.startswith(_CHATTER) or (self._dropped and text == "\n"):
            self._dropped = text != "\n"
            log.debug("img2dataset: %s", text.strip())
            return len(text)
        self._dropped = False
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()


def _stop_img2dataset_logger() -> None:
    """Terminate an img2dataset logger process left behind by a failed download (it never exits alone)."""
    from img2dataset.logger import LoggerProcess

    for child in multiprocessing.active_children():
        if isinstance(child, LoggerProcess):
            child.terminate()
            child.join(5)


def run_img2dataset(plan: Plan, shards_dir: Path, cfg: Img2datasetConfig) -> None:
    """One incremental img2dataset pass over the staged URLs (finished shards are skipped)."""
    import ray

    i2d_main = importlib.import_module("img2dataset.main")  # the package attribute `main` is a function
    i2d_distributor = importlib.import_module("img2dataset.distributor")

    kwargs = dict(
        url_list=str(plan.urls_file), output_folder=str(shards_dir), input_format="parquet",
        output_format="webdataset", url_col="url", caption_col="caption" if plan.has_caption else None,
        save_additional_columns=list(plan.extra_columns) or None, image_size=cfg.image_size,
        resize_mode=cfg.resize_mode, resize_only_if_bigger=cfg.resize_only_if_bigger,
        min_image_size=cfg.min_image_size, encode_format=cfg.encode_format, encode_quality=cfg.encode_quality,
        number_sample_per_shard=plan.per_shard, oom_shard_count=SHARD_DIGITS, processes_count=1,
        thread_count=cfg.thread_count, timeout=cfg.timeout, retries=cfg.retries, distributor="ray",
        incremental_mode="incremental", extract_exif=False, enable_wandb=False,
    )
    with mock.patch.object(i2d_main, "signal", _NO_SIGNAL), \
            mock.patch.object(i2d_distributor, "ray_download", _GuardedRayDownload(not cfg.allow_private_networks)):
        try:
            with contextlib.redirect_stdout(_QuietStdout(sys.stdout)):
                i2d_main.download(**kwargs)
        except ray.exceptions.RayError as exc:
            _stop_img2dataset_logger()
            log.warning("img2dataset pass failed (%s); unfinished shards will be retried", str(exc).splitlines()[0])


def download_shards(plan: Plan, shards_dir: Path, cfg: Img2datasetConfig) -> tuple[list[int], list[int]]:
    """Run img2dataset until every shard is done or ``shard_retries`` are spent: ``(done, failed)``."""
    expected = set(range(plan.n_shards))
    for attempt in range(1 + max(0, cfg.shard_retries)):
        missing = expected - done_shards(shards_dir)
        if not missing:
            break
        if attempt:
            log.warning("%s: retrying %d unfinished shard(s)", shards_dir, len(missing))
        run_img2dataset(plan, shards_dir, cfg)
    failed = sorted(expected - done_shards(shards_dir))
    for shard_id in failed:
        for suffix in (".tar", ".parquet"):
            (shards_dir / f"{shard_name(shard_id)}{suffix}").unlink(missing_ok=True)
    return sorted(expected - set(failed)), failed


# ---------------------------------------------------------------- per-shard hashing and matching

def hash_tar(tar_path: Path, ext: str) -> dict[str, tuple[int, int] | None]:
    """``key -> (phash, phash_flip)`` for every ``<key>.<ext>`` image in a shard (None: undecodable)."""
    hashes: dict[str, tuple[int, int] | None] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(f".{ext}")):
                continue
            key = member.name.split("/")[-1].split(".", 1)[0]
            fh = tar.extractfile(member)
            data = fh.read() if fh is not None else b""
            try:
                hashes[key] = bytes_hashes(data)
            except (UnidentifiedImageError, OSError, ValueError):
                hashes[key] = None
    return hashes


def add_hash_columns(table: pa.Table, hashes: dict[str, tuple[int, int] | None]) -> pa.Table:
    """``table`` with ``phash`` and ``phash_flip`` columns (null where there is no decodable image)."""
    pairs = [hashes.get(k) for k in table["key"].to_pylist()]
    for i, name in enumerate(("phash", "phash_flip")):
        column = pa.array([p[i] if p else None for p in pairs], pa.int64())
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, column)
    return table


def _match(table: pa.Table, indexes: dict[str, HashIndex], max_distance: int) -> dict[str, list[Any]]:
    """Overlap rows (column lists) of the hashed samples of one shard against every eval index."""
    rows: dict[str, list[Any]] = {n: [] for n in OVERLAP_SCHEMA.names}
    hashed = table.filter(pc.is_valid(table["phash"]))
    if hashed.num_rows == 0:
        return rows
    phash = hashed["phash"].to_numpy()
    flip = pc.coalesce(hashed["phash_flip"], hashed["phash"]).to_numpy()  # both come from one decode
    keys, urls = hashed["key"].to_pylist(), hashed["url"].to_pylist()
    for name, index in sorted(indexes.items()):
        m = index.search(phash, flip, max_distance)
        rows["eval_set"] += [name] * len(m)
        rows["eval_id"] += [str(index.ids[t]) for t in m.target] if index.ids is not None else [None] * len(m)
        rows["key"] += [keys[q] for q in m.query]
        rows["distance"] += [int(d) for d in m.distance]
        rows["url"] += [urls[q] for q in m.query]
    return rows


def process_shard(shards_dir: str, shard_id: int, expected_rows: int, indexes: dict[str, HashIndex],
                  max_distance: int, ext: str) -> dict[str, Any]:
    """Hash one finished shard (unless its parquet has ``phash``), match it, count its rows by reason."""
    base = Path(shards_dir) / shard_name(shard_id)
    parquet = base.with_suffix(".parquet")
    table = pq.read_table(parquet)
    hashed_now = "phash" not in table.column_names
    if hashed_now:
        table = add_hash_columns(table, hash_tar(base.with_suffix(".tar"), ext))
        write_parquet(table, parquet)
    reasons: Counter = Counter()
    kept = 0
    for status, message in zip(table["status"].to_pylist(), table["error_message"].to_pylist()):
        if status == "success":
            kept += 1
        else:
            reasons[error_reason(status, message)] += 1
    if table.num_rows < expected_rows:
        reasons["internal_error"] += expected_rows - table.num_rows
    success = pc.equal(table["status"], "success")
    return {"shard": shard_id, "kept": kept, "reasons": reasons, "hashed": hashed_now,
            "hash_errors": int(pc.sum(pc.and_(success, pc.is_null(table["phash"]))).as_py() or 0),
            "bytes": base.with_suffix(".tar").stat().st_size, "overlap": _match(table, indexes, max_distance)}


def _needs_hashing(shards_dir: Path, shard_ids: list[int]) -> bool:
    return any("phash" not in pq.read_schema(shards_dir / f"{shard_name(s)}.parquet").names for s in shard_ids)


def process_shards(plan: Plan, shards_dir: Path, shard_ids: list[int], indexes: dict[str, HashIndex],
                   cfg: Img2datasetConfig, use_ray: bool) -> list[dict[str, Any]]:
    """:func:`process_shard` for every finished shard: as Ray tasks, or in-process when nothing needs hashing."""
    args = [(str(shards_dir), s, plan.shard_rows(s)) for s in shard_ids]
    if not use_ray:
        return [process_shard(*a, indexes, cfg.max_distance, cfg.encode_format) for a in args]
    import ray

    task = ray.remote(num_cpus=1)(process_shard)
    indexes_ref = ray.put(indexes)
    return ray.get([task.remote(*a, indexes_ref, cfg.max_distance, cfg.encode_format) for a in args])


# ---------------------------------------------------------------- outputs

def _overlap_table(results: list[dict[str, Any]]) -> pa.Table:
    cols: dict[str, list[Any]] = {n: [] for n in OVERLAP_SCHEMA.names}
    for r in results:
        for n in cols:
            cols[n] += r["overlap"][n]
    table = pa.table(cols, schema=OVERLAP_SCHEMA)
    return table.sort_by([("eval_set", "ascending"), ("eval_id", "ascending"), ("key", "ascending")])


def _stats(plan: Plan, results: list[dict[str, Any]], failed: list[int], overlap: pa.Table,
           indexes: dict[str, HashIndex], cfg: Img2datasetConfig) -> StageStats:
    stats = StageStats(stage="download", inputs=plan.inputs)
    stats.dropped.update(plan.refused)
    for r in results:
        stats.kept += r["kept"]
        stats.dropped.update(r["reasons"])
    for shard_id in failed:
        stats.drop("shard_failed", plan.shard_rows(shard_id))
    sets = overlap["eval_set"].to_pylist()
    stats.extra.update(
        shards=len(results), failed_shards=len(failed), bytes=sum(r["bytes"] for r in results),
        hashed_shards=sum(r["hashed"] for r in results), hash_errors=sum(r["hash_errors"] for r in results),
        eval_duplicates={n: len({i for s, i in zip(sets, overlap["eval_id"].to_pylist()) if s == n})
                         for n in sorted(indexes)},
        eval_duplicate_samples={n: len({k for s, k in zip(sets, overlap["key"].to_pylist()) if s == n})
                                for n in sorted(indexes)},
        max_distance=cfg.max_distance,
    )
    return stats


def build_shards(plan: Plan, shards_dir: Path, cfg: Img2datasetConfig, indexes: dict[str, HashIndex]
                 ) -> tuple[list[dict[str, Any]], list[int]]:
    """Download missing shards, hash unhashed ones, match all: ``(per-shard results, failed shard ids)``.

    Ray is started only when there is downloading or hashing to do (a finished folder needs none).
    """
    expected = set(range(plan.n_shards))
    if not expected:
        return [], []
    needs_download = bool(expected - done_shards(shards_dir))
    use_ray = needs_download or _needs_hashing(shards_dir, sorted(expected))
    done, failed = sorted(expected), []
    with ray_session(cfg.ray_address, cfg.processes_count, QUIET_ENV) if use_ray else contextlib.nullcontext():
        if needs_download:
            done, failed = download_shards(plan, shards_dir, cfg)
        return process_shards(plan, shards_dir, done, indexes, cfg, use_ray), failed


def _prepare(input_dir: InputSpec, shards_dir: Path, overlap_dir: Path, cfg: Img2datasetConfig) -> Plan:
    """Folders made and rid of temporary leftovers, the plan made or reused, an earlier run's totals removed."""
    shards_dir.mkdir(parents=True, exist_ok=True)
    for folder in (shards_dir, shards_dir / PLAN_DIR, overlap_dir):
        clean_tmp(folder)
    plan = make_plan(input_dir, shards_dir, cfg)
    for name in (SIZES_FILE, "_stats.json"):  # img2dataset reads every *.json here as <shard>_stats.json
        (shards_dir / name).unlink(missing_ok=True)
    return plan


def _write_outputs(plan: Plan, shards_dir: Path, overlap_dir: Path, results: list[dict[str, Any]],
                   failed: list[int], indexes: dict[str, HashIndex], cfg: Img2datasetConfig) -> StageStats:
    """``overlap.parquet`` and ``sizes.json`` from the per-shard results; the run's stats (not yet written)."""
    overlap = _overlap_table(results)
    write_parquet(overlap, overlap_dir / OVERLAP_FILE)
    write_json(shards_dir / SIZES_FILE, {f"{shard_name(r['shard'])}.tar": r["kept"] for r in results})
    return _stats(plan, results, failed, overlap, indexes, cfg)


def run_img2dataset_download(input_dir: str | os.PathLike, shards_dir: str | os.PathLike,
                             cfg: Img2datasetConfig | None = None, eval_indexes: dict[str, Path] | None = None,
                             overlap_dir: str | os.PathLike | None = None) -> StageStats:
    """:func:`pipeline.download.stage.run_download` done by img2dataset: same arguments, the outputs of
    docs/download.md; re-running on a finished folder redoes nothing."""
    start = time.time()
    cfg = cfg or Img2datasetConfig()
    cfg.validate()
    set_quiet_env()
    if is_url(str(shards_dir)) or is_url(str(overlap_dir or "")):
        raise WitError(f"{shards_dir}: the img2dataset engine writes local folders only (engine wit writes to stores)")
    shards_dir = Path(shards_dir)
    overlap_dir = Path(overlap_dir) if overlap_dir is not None else shards_dir.parent / "overlap"
    indexes = {name: load_hash_index(path) for name, path in (eval_indexes or {}).items()}
    plan = _prepare(input_dir, shards_dir, overlap_dir, cfg)
    results, failed = build_shards(plan, shards_dir, cfg, indexes)
    stats = _write_outputs(plan, shards_dir, overlap_dir, results, failed, indexes, cfg)
    stats.extra["seconds"] = round(time.time() - start, 2)
    if not stats.accounted():
        log.warning("download: %d inputs but %d kept + %d dropped", stats.inputs, stats.kept, stats.n_dropped)
    stats.write(shards_dir)
    return stats
