"""One plain function per stage of a build, taking the BuildConfig: the glue between the build
directory layout and the stage libraries. The Prefect flow wraps each in a task; tests and the
CLI can call them directly. No Prefect import here.

The build directory may be on an object store (``build_dir: s3://bucket/prefix``): the data stages (crawl,
filter, balance, eval_index, download) read and write it there from their Ray tasks; training and the overlap
analysis run on the driver in the build's local working copy (``BuildConfig.path``) and copy their outputs to
the store when they finish; the report reads the store in place and writes ``reports/`` there.
"""
from __future__ import annotations

from typing import Any

from flows.config import BuildConfig
from pipeline.core.errors import WitError
from dedup.index import build_eval_index
from pipeline.balance.stage import run_balance
from pipeline.crawl.stage import run_crawl
from pipeline.download.stage import run_download
from pipeline.filter.stage import run_filter
from pipeline.report import write_report
from training.eval.overlap import run_overlap
from training.train import latest_checkpoint, pull_training, run_train

def crawl(cfg: BuildConfig) -> dict[str, Any]:
    return run_crawl(list(cfg.inputs), cfg.location("candidates"), cfg.crawl).to_dict()


def filter_pairs(cfg: BuildConfig) -> dict[str, Any]:
    return run_filter(cfg.location("candidates"), cfg.location("pairs"), cfg.filter).to_dict()


def balance(cfg: BuildConfig) -> dict[str, Any]:
    return run_balance(cfg.location("pairs", "kept"), cfg.location("balanced"), cfg.balance).to_dict()


def eval_index(cfg: BuildConfig) -> dict[str, Any]:
    return {name: build_eval_index(name, folder, cfg.location("eval")).to_dict()
            for name, folder in cfg.eval_sets.items()}


def _eval_indexes(cfg: BuildConfig) -> dict[str, str]:
    indexes = {name: cfg.location("eval", name) for name in cfg.eval_sets}
    missing = [name for name in indexes if not cfg.folder("eval", name).exists("index.parquet")]
    if missing:
        raise WitError(f"eval index for {', '.join(missing)} not built: run the eval_index stage first")
    return indexes


def download(cfg: BuildConfig) -> dict[str, Any]:
    stats = run_download(cfg.download_input(), cfg.location("shards"), cfg.download,
                         eval_indexes=_eval_indexes(cfg), overlap_dir=cfg.location("overlap"))
    return stats.to_dict()


def train(cfg: BuildConfig) -> dict[str, Any]:
    """Train on the build's shards: here, under torchrun, or as a Ray job when ``train.ray_address`` is set.
    For a build on a store, open_clip reads the shards from there (``pipe:`` through ``training.fscat``) and the
    trainer, wherever it runs, copies ``train/`` there (:func:`training.train.run_train` with a URL)."""
    return run_train(cfg.location("shards"), cfg.location("train"), cfg.train).to_dict()


def overlap(cfg: BuildConfig, checkpoint: str | None = None, model: str | None = None) -> dict[str, Any]:
    """Zero-shot accuracy on Overlap / Clean / All of each eval set; writes reports/overlap.{json,md,png}.
    For a build on a store it runs on the local working copy of ``train/`` and ``overlap/``, refreshed from the
    store, and copies ``reports/`` back."""
    if cfg.remote:
        cfg.folder().get("overlap/overlap.parquet", cfg.path("overlap", "overlap.parquet"))
        if checkpoint is None:
            pull_training(cfg.location("train"), cfg.path("train"))
    if checkpoint is None:
        checkpoint, model = latest_checkpoint(cfg.path("train"))
    result = run_overlap(checkpoint, model, dict(cfg.eval_sets), cfg.path("overlap", "overlap.parquet"),
                         cfg.path("reports"), cfg.overlap)
    if cfg.remote:
        cfg.folder().push(cfg.path("reports"), "reports")
    return result


def report(cfg: BuildConfig) -> dict[str, Any]:
    """``reports/stats.json``, ``stats.md`` and the dashboard, read from and written to the build directory where
    it is (also on a store: nothing of it is copied to the driver)."""
    return write_report(cfg.location())
