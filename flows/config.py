"""The whole-build config: where the build lives, what it reads, and each stage's typed config.

Loaded from YAML/JSON (``wit build --config FILE``) or passed as a dict to the ``build-wit`` flow.
No Prefect import here, so the CLI can validate a config before any orchestration starts.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.core.config import config_from_dict, field, load_config_file
from pipeline.balance.stage import BalanceConfig
from pipeline.crawl.stage import CrawlConfig
from pipeline.download.stage import DownloadConfig
from pipeline.core.errors import WitError
from pipeline.filter.stage import FilterConfig
from training.eval.overlap import OverlapConfig
from training.train import TrainConfig

STAGES = ("crawl", "filter", "balance", "eval_index", "download", "train", "overlap", "report")


@dataclasses.dataclass
class BuildConfig:
    build_dir: str = field("runs/build", help="the build's working directory (layout of DESIGN.md)")
    inputs: list = field([], help="web archives to crawl: WARC/WAT files or globs")
    eval_sets: dict = field({}, help="evaluation sets as NAME: ImageFolder path")
    stages: list = field(list(STAGES), help=f"stages to run, in order, from {', '.join(STAGES)}")
    crawl: CrawlConfig = dataclasses.field(default_factory=CrawlConfig)
    filter: FilterConfig = dataclasses.field(default_factory=FilterConfig)
    balance: BalanceConfig = dataclasses.field(default_factory=BalanceConfig)
    download: DownloadConfig = dataclasses.field(default_factory=DownloadConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    overlap: OverlapConfig = dataclasses.field(default_factory=OverlapConfig)

    def path(self, name: str) -> Path:
        """A folder of the build directory: candidates, pairs, eval, shards, overlap, train, reports."""
        return Path(self.build_dir) / name

    def download_input(self) -> Path:
        """The pairs the download stage reads: balanced when the build balances, else the filter's kept."""
        balanced = self.path("balanced")
        if "balance" in self.stages or (balanced / "_stats.json").is_file():
            return balanced
        return self.path("pairs") / "kept"

    def validate(self) -> "BuildConfig":
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise WitError(f"config: unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
        if "crawl" in self.stages and not self.inputs:
            raise WitError("config: 'inputs' is empty: name the WARC/WAT files to crawl")
        for name, folder in self.eval_sets.items():
            if not Path(folder).is_dir():
                raise WitError(f"config: eval set '{name}': folder not found: {folder}")
        return self


def build_config(data: dict[str, Any] | None = None, path: str | None = None) -> BuildConfig:
    """A validated BuildConfig from a file and/or a dict (the dict's keys win)."""
    merged: dict[str, Any] = load_config_file(path) if path else {}
    for key, value in (data or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return config_from_dict(BuildConfig, merged).validate()
