"""download: fetch, resize, hash and eval-dedup images on Ray, to WebDataset ``shards/`` (img2dataset's layout)."""
from pipeline.download.config import DownloadConfig
from pipeline.download.stage import run_download

__all__ = ["DownloadConfig", "run_download"]
