"""One plain function per stage of a build, taking the BuildConfig: the glue between the build
directory layout and the stage libraries. The Prefect flow wraps each in a task; tests and the
CLI can call them directly. No Prefect import here.
"""
from __future__ import annotations

from pathlib import Path
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
from training.train import latest_checkpoint, run_train


def crawl(cfg: BuildConfig) -> dict[str, Any]:
    return run_crawl(list(cfg.inputs), cfg.path("candidates"), cfg.crawl).to_dict()


def filter_pairs(cfg: BuildConfig) -> dict[str, Any]:
    return run_filter(cfg.path("candidates"), cfg.path("pairs"), cfg.filter).to_dict()


def balance(cfg: BuildConfig) -> dict[str, Any]:
    return run_balance(cfg.path("pairs") / "kept", cfg.path("balanced"), cfg.balance).to_dict()


def eval_index(cfg: BuildConfig) -> dict[str, Any]:
    return {name: build_eval_index(name, folder, cfg.path("eval")).to_dict()
            for name, folder in cfg.eval_sets.items()}


def _eval_indexes(cfg: BuildConfig) -> dict[str, Path]:
    indexes = {name: cfg.path("eval") / name for name in cfg.eval_sets}
    missing = [name for name, path in indexes.items() if not (path / "index.parquet").is_file()]
    if missing:
        raise WitError(f"eval index for {', '.join(missing)} not built: run the eval_index stage first")
    return indexes


def download(cfg: BuildConfig) -> dict[str, Any]:
    stats = run_download(cfg.download_input(), cfg.path("shards"), cfg.download,
                         eval_indexes=_eval_indexes(cfg), overlap_dir=cfg.path("overlap"))
    return stats.to_dict()


def train(cfg: BuildConfig) -> dict[str, Any]:
    """Train on the build's shards: here, under torchrun, or as a Ray job when ``train.ray_address`` is set."""
    return run_train(cfg.path("shards"), cfg.path("train"), cfg.train).to_dict()


def overlap(cfg: BuildConfig, checkpoint: str | None = None, model: str | None = None) -> dict[str, Any]:
    """Zero-shot accuracy on Overlap / Clean / All of each eval set; writes reports/overlap.{json,md,png}."""
    if checkpoint is None:
        checkpoint, model = latest_checkpoint(cfg.path("train"))
    return run_overlap(checkpoint, model, dict(cfg.eval_sets), cfg.path("overlap") / "overlap.parquet",
                       cfg.path("reports"), cfg.overlap)


def report(cfg: BuildConfig) -> dict[str, Any]:
    return write_report(cfg.build_dir)
