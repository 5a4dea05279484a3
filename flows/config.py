"""The whole-build config: where the build lives, what it reads, and each stage's typed config.

Loaded from YAML/JSON (``wit build --config FILE``) or passed as a dict to the ``build-wit`` flow. Building
it checks every section (each a :class:`pipeline.core.config.Config`) before any stage runs; errors name the
section path and, for a file, the file. No Prefect import here, so the CLI can check a config before any
orchestration starts.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from pipeline.core.config import Config, ConfigError, config_from_dict, field, load_config_file
from pipeline.core.errors import WitError
from pipeline.core.io import is_url
from pipeline.core.storage import Folder, local_copy
from pipeline.balance.stage import BalanceConfig
from pipeline.crawl.stage import CrawlConfig
from pipeline.download.stage import DownloadConfig
from pipeline.filter.stage import FilterConfig
from training.eval.overlap import OverlapConfig
from training.train import TrainConfig

STAGES = ("crawl", "filter", "balance", "eval_index", "download", "train", "overlap", "report")


@dataclasses.dataclass
class BuildConfig(Config):
    build_dir: str = field("runs/build", help="the build's working directory (layout of DESIGN.md): a local path "
                           "or an fsspec URL such as s3://bucket/prefix")
    inputs: list[str] = field([], help="web archives to crawl: WARC/WAT files or globs")
    eval_sets: dict[str, str] = field({}, help="evaluation sets as NAME: ImageFolder path")
    stages: list[str] = field(list(STAGES), help=f"stages to run, in order, from {', '.join(STAGES)}",
                              choices=STAGES)
    crawl: CrawlConfig = dataclasses.field(default_factory=CrawlConfig)
    filter: FilterConfig = dataclasses.field(default_factory=FilterConfig)
    balance: BalanceConfig = dataclasses.field(default_factory=BalanceConfig)
    download: DownloadConfig = dataclasses.field(default_factory=DownloadConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    overlap: OverlapConfig = dataclasses.field(default_factory=OverlapConfig)

    def check(self) -> None:
        """What a build needs beyond each section's own checks: archives to crawl, eval folders that exist."""
        if self.remote:
            try:
                Folder(self.build_dir)
            except WitError as exc:
                self.fail("build_dir", str(exc))
        if "crawl" in self.stages and not self.inputs:
            self.fail("inputs", "empty: name the WARC/WAT files to crawl")
        for name, folder in self.eval_sets.items():
            if not Path(folder).is_dir():
                self.fail(f"eval_sets.{name}", f"eval set folder not found: {folder}")

    @property
    def remote(self) -> bool:
        """The build directory is on an object store (``s3://...``): the cluster's only shared storage."""
        return is_url(self.build_dir)

    def location(self, *names: str) -> str:
        """A folder of the build directory as the stages take it: a local path or a URL."""
        if self.remote:
            return "/".join([self.build_dir.rstrip("/"), *names])
        return str(Path(self.build_dir, *names))

    def folder(self, *names: str) -> Folder:
        return Folder(self.location(*names))

    def path(self, *names: str) -> Path:
        """A local folder of the build: in the build directory, or for a build on a store in its local working
        copy (:meth:`local_root`), where the overlap analysis works before its reports are copied to the store."""
        return Path(self.local_root(), *names)

    def local_root(self) -> Path:
        """The build directory, or for a build on a store ``$WIT_SCRATCH`` (else the temp folder) /
        ``wit-build-<hash of the URL>``."""
        return local_copy(self.build_dir, "build") if self.remote else Path(self.build_dir)

    def download_input(self) -> str:
        """The pairs the download stage reads: balanced when the build balances, else the filter's kept."""
        if "balance" in self.stages or self.folder("balanced").exists("_stats.json"):
            return self.location("balanced")
        return self.location("pairs", "kept")


def build_config(data: dict[str, Any] | None = None, path: str | None = None) -> BuildConfig:
    """A checked BuildConfig from a file and/or a dict (the dict's keys win); an error in a value the file gave
    names the file."""
    from_file: dict[str, Any] = load_config_file(path) if path else {}
    merged = dict(from_file)
    for key, value in (data or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    try:
        return config_from_dict(BuildConfig, merged)
    except ConfigError as exc:
        top = re.split(r"[.\[]", exc.key)[0]
        if path and (top in from_file or top not in (data or {})):
            raise exc.in_file(path) from None
        raise
