"""Download stage: fetch, hash, match, resize and re-encode images on Ray into img2dataset-style shards.

Entry point: ``run_download(input_dir, shards_dir, cfg, eval_indexes, overlap_dir)`` (``wit download``):
recover, plan, one Ray task per unfinished shard, then ``overlap.parquet``, ``sizes.json`` and ``_stats.json``.
``shards_dir``, ``overlap_dir`` and the eval indexes are local paths or fsspec URLs (:class:`Folder`): shard
tasks read their rows from and commit into the shards folder, so a cluster's nodes need share no disk.
Steps, outputs and guarantees: docs/download.md."""
from __future__ import annotations

import dataclasses

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from dedup.index import index_bytes, load_robust_index
from dedup.match import RobustIndex
from pipeline.download.config import OVERLAP_FILE, SIZES_FILE, DownloadConfig
from pipeline.download.img2dataset_engine import Img2datasetConfig, run_img2dataset_download
from pipeline.download.plan import Plan, make_plan
from pipeline.download.reasons import error_reason, is_retryable
from pipeline.download.shard import (OVERLAP_SCHEMA, ShardJob, done_shards, download_shard, overlap_from_parquet,
                                     read_overlap, recover, remove_shard, retry_shard, shard_name, stats_name,
                                     write_table)
from pipeline.core.errors import WitError
from pipeline.core.io import clean_tmp
from pipeline.core.env import set_quiet_env, worker_env
from pipeline.core.executor import Resources, ray_session, submit_bounded
from pipeline.core.parts import progress
from pipeline.core.stats import StageStats
from pipeline.core.lock import locked
from pipeline.core.storage import Folder

__all__ = ["DownloadConfig", "run_download", "error_reason"]

log = logging.getLogger(__name__)



# ---------------------------------------------------------------- Ray

RESOURCES = Resources(cpus=1, memory_mb=1024)  # one shard task: a thread pool of fetches, one image decoded at a time


def run_shard_tasks(jobs: list[tuple[Callable[..., Any], ShardJob]], indexes: dict[str, RobustIndex],
                    cfg: DownloadConfig) -> dict[int, dict[str, Any] | None]:
    """Run ``fn(job, indexes)`` per job as Ray tasks, at most 2 per cluster CPU in flight; return each
    shard's stats, or None for a shard whose task still failed after ``shard_retries`` retries."""
    import ray

    resources = dataclasses.replace(RESOURCES, retries=cfg.shard_retries)
    results: dict[int, dict[str, Any] | None] = {}
    started, urls = time.time(), 0
    done = submit_bounded(jobs, resources, indexes)
    for job, ref in progress(done, "download", "shard", total=len(jobs), enabled=cfg.progress):
        shard_id = job.shard_id
        results[shard_id] = _result(ray, ref, shard_id, cfg)
        if results[shard_id] is not None:
            urls += results[shard_id]["retried"] or results[shard_id]["count"]
            log.info("shard %s: %d/%d samples (%d/%d tasks, %.0f URLs/s)", shard_name(shard_id),
                     results[shard_id]["successes"], results[shard_id]["count"], len(results), len(jobs),
                     urls / max(1e-9, time.time() - started))
    return results


def _result(ray: Any, ref: Any, shard_id: int, cfg: DownloadConfig) -> dict[str, Any] | None:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        log.warning("shard %s failed after %d retries: %s", shard_name(shard_id), cfg.shard_retries,
                    " ".join(str(exc).split())[-300:])
        return None



# ---------------------------------------------------------------- driver

def load_indexes(eval_indexes: dict[str, str | os.PathLike], cfg: DownloadConfig) -> dict[str, RobustIndex]:
    """The eval indexes (folders or files, local or URL), read on the driver; tasks get them as shared objects."""
    indexes = {}
    for name, location in eval_indexes.items():
        try:
            indexes[name] = load_robust_index(location, cfg.max_distance)
        except WitError as exc:
            raise WitError(f"eval index '{name}': {exc}") from None
    return indexes


def eval_fingerprint(eval_indexes: dict[str, str | os.PathLike], cfg: DownloadConfig) -> str:
    """Identifies the eval indexes (file bytes) and thresholds the stored overlap rows were computed with."""
    digest = hashlib.sha256(f"max_distance={cfg.max_distance} max_dct_distance={cfg.max_dct_distance}".encode())
    for name, location in sorted(eval_indexes.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(index_bytes(location)).digest())
    return digest.hexdigest()


def _retryable_count(stats: dict[str, Any]) -> int:
    return sum(n for reason, n in stats.get("reasons", {}).items() if is_retryable(reason))


def _jobs(plan: Plan, shards: Folder, cfg: DownloadConfig, fingerprint: str
          ) -> list[tuple[Callable[..., Any], ShardJob]]:
    """Download tasks for unfinished shards (no marker); with ``retry_failed``, retry tasks for finished shards
    with retryable failures."""
    done = done_shards(shards)
    jobs: list[tuple[Callable[..., Any], ShardJob]] = []
    for shard_id in range(plan.n_shards):
        job = ShardJob(shards.location, plan.urls_file, shard_id, plan.per_shard, cfg, fingerprint)
        if shard_id not in done:
            jobs.append((download_shard, job))
        elif cfg.retry_failed and _retryable_count(shards.read_json(stats_name(shard_id))):
            jobs.append((retry_shard, job))
    return jobs


def build_shards(plan: Plan, shards: Folder, cfg: DownloadConfig, indexes: dict[str, RobustIndex],
                 fingerprint: str) -> tuple[list[int], dict[str, int]]:
    """Run the shard tasks this folder needs (Ray is started only if there are any):
    ``(failed shard ids, {"downloaded_shards", "retried_shards", "retried_urls"})``."""
    jobs = _jobs(plan, shards, cfg, fingerprint)
    if not jobs:
        return [], {"downloaded_shards": 0, "retried_shards": 0, "retried_urls": 0}
    log.info("%s: %d shard task(s) to run", shards, len(jobs))
    # a runtime_env slows worker start-up: only for a store, whose credentials the workers need
    with ray_session(cfg.ray_address, cfg.processes_count, worker_env() if shards.remote else None):
        results = run_shard_tasks(jobs, indexes, cfg)
    failed = sorted(job.shard_id for fn, job in jobs if fn is download_shard and results.get(job.shard_id) is None)
    for shard_id in failed:
        remove_shard(shards, shard_id)
    retried = [results.get(job.shard_id) for fn, job in jobs if fn is retry_shard]
    return failed, {"downloaded_shards": sum(fn is download_shard for fn, _ in jobs) - len(failed),
                    "retried_shards": sum(r is not None for r in retried),
                    "retried_urls": sum(r.get("retried", 0) for r in retried if r is not None)}


def collect_overlap(shards: Folder, shard_ids: list[int], indexes: dict[str, RobustIndex], cfg: DownloadConfig,
                    fingerprint: str) -> tuple[pa.Table, int]:
    """All shards' overlap rows, sorted; shards matched against other indexes are re-matched (counted)."""
    tables, rematched = [pa.table({n: [] for n in OVERLAP_SCHEMA.names}, schema=OVERLAP_SCHEMA)], 0
    for shard_id in shard_ids:
        table = read_overlap(shards, shard_id, fingerprint)
        if table is None:
            table = overlap_from_parquet(shards, shard_id, indexes, cfg.match_config(), fingerprint)
            rematched += 1
        tables.append(table.cast(OVERLAP_SCHEMA))
    overlap = pa.concat_tables(tables)
    return overlap.sort_by([("eval_set", "ascending"), ("eval_id", "ascending"), ("key", "ascending")]), rematched


def run_stats(plan: Plan, shard_stats: dict[int, dict[str, Any]], failed: list[int], overlap: pa.Table,
              indexes: dict[str, RobustIndex], cfg: DownloadConfig) -> StageStats:
    stats = StageStats(stage="download", inputs=plan.inputs)
    for s in shard_stats.values():
        stats.kept += s["successes"]
        stats.dropped.update(s["reasons"])
    for shard_id in failed:
        stats.drop("shard_failed", plan.shard_rows(shard_id))
    sets, ids, keys = (overlap[c].to_pylist() for c in ("eval_set", "eval_id", "key"))
    stats.extra.update(
        shards=len(shard_stats), failed_shards=len(failed), bytes=sum(s["bytes"] for s in shard_stats.values()),
        eval_duplicates={n: len({i for s, i in zip(sets, ids) if s == n}) for n in sorted(indexes)},
        eval_duplicate_samples={n: len({k for s, k in zip(sets, keys) if s == n}) for n in sorted(indexes)},
        retryable_failures=sum(_retryable_count(s) for s in shard_stats.values()), max_distance=cfg.max_distance,
        max_dct_distance=cfg.max_dct_distance,
    )
    return stats


def _prepare(shards: Folder, overlap: Folder) -> None:
    """Folders exist; leftovers of a killed run are finished (commits) or removed (temporary files); a store
    has neither (a shard's files without its marker are rebuilt)."""
    set_quiet_env()
    for folder in (shards.ensure(), overlap.ensure()):
        if not folder.remote:
            for sub in ("", "_input", "_overlap"):
                clean_tmp(folder.path / sub)
    if recover(shards):
        log.info("%s: finished the commits of a killed run", shards)
    for name in (SIZES_FILE, "_stats.json"):
        shards.remove(name)


def write_outputs(plan: Plan, shards: Folder, overlap_dir: Folder, indexes: dict[str, RobustIndex],
                  cfg: DownloadConfig, fingerprint: str, failed: list[int]) -> StageStats:
    """``overlap.parquet``, ``sizes.json`` and the run's stats, from the finished shards' files."""
    done = sorted(done_shards(shards) & set(range(plan.n_shards)))
    shard_stats = {s: shards.read_json(stats_name(s)) for s in done}
    overlap, rematched = collect_overlap(shards, done, indexes, cfg, fingerprint)
    write_table(overlap_dir, OVERLAP_FILE, overlap)
    shards.write_json(SIZES_FILE, {f"{shard_name(s)}.tar": shard_stats[s]["successes"] for s in done})
    stats = run_stats(plan, shard_stats, failed, overlap, indexes, cfg)
    stats.extra["rematched_shards"] = rematched
    return stats


@locked('download', 'shards_dir')
def run_download(input_dir: str | os.PathLike, shards_dir: str | os.PathLike, cfg: DownloadConfig | None = None,
                 eval_indexes: dict[str, str | os.PathLike] | None = None,
                 overlap_dir: str | os.PathLike | None = None) -> StageStats:
    """Download the pairs in ``input_dir`` into WebDataset shards in ``shards_dir`` (see docs/download.md).

    ``eval_indexes`` maps eval-set names to their index folders (``eval/<name>``); ``overlap_dir``
    defaults to ``overlap/`` beside ``shards_dir``. Folders and indexes are local paths or fsspec URLs.
    Re-running on a finished folder redoes nothing.
    """
    start = time.time()
    cfg = cfg or DownloadConfig()
    cfg.validate()
    if cfg.engine == "img2dataset":
        return _run_img2dataset(input_dir, shards_dir, cfg, eval_indexes, overlap_dir)
    shards = Folder(shards_dir)
    overlap = Folder(overlap_dir if overlap_dir is not None else _sibling(shards, "overlap"))
    indexes = load_indexes(eval_indexes or {}, cfg)
    fingerprint = eval_fingerprint(eval_indexes or {}, cfg)
    _prepare(shards, overlap)
    plan = make_plan(input_dir, shards, cfg)
    failed, counts = build_shards(plan, shards, cfg, indexes, fingerprint)
    stats = write_outputs(plan, shards, overlap, indexes, cfg, fingerprint, failed)
    stats.extra.update(counts, seconds=round(time.time() - start, 2))
    if not stats.accounted():
        log.warning("download: %d inputs but %d kept + %d dropped", stats.inputs, stats.kept, stats.n_dropped)
    stats.write(shards)
    return stats


def _sibling(folder: Folder, name: str) -> str:
    """The folder ``name`` beside ``folder`` (its path or URL)."""
    return folder.location.rpartition("/")[0] + f"/{name}" if folder.remote else str(folder.path.parent / name)


def _run_img2dataset(input_dir: str | os.PathLike, shards_dir: str | os.PathLike, cfg: DownloadConfig,
                     eval_indexes: dict[str, Path] | None, overlap_dir: str | os.PathLike | None) -> StageStats:
    """The img2dataset engine, given the options both engines share (same names, same meaning)."""
    names = {f.name for f in dataclasses.fields(Img2datasetConfig)}
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in names}
    return run_img2dataset_download(input_dir, shards_dir, Img2datasetConfig(**shared), eval_indexes, overlap_dir)
