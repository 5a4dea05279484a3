"""``CrawlConfig``: the options of ``wit crawl`` (re-exported by :mod:`pipeline.crawl.stage`)."""
from __future__ import annotations

import dataclasses

from pipeline.core.config import Config, field

COMMON_CRAWL = "https://data.commoncrawl.org/"


@dataclasses.dataclass
class CrawlConfig(Config, section="crawl"):
    """Options of the crawl stage (checked when built)."""

    batch_rows: int = field(10_000, min=1, key=False, help="candidate rows buffered before a parquet row group is written")
    max_html_bytes: int = field(5_000_000, min=1, help="read at most this many bytes of one HTML page")
    max_record_bytes: int = field(50_000_000, min=1, help="a WAT record longer than this is counted as corrupt")
    max_caption_chars: int = field(2_000, min=1, help="drop alt texts longer than this (reason caption_too_long)")
    title_fallback: bool = field(True, help="use the <img title> as caption when alt is empty")
    progress: bool = field(True, key=False, help="show a progress bar over input files (only on a terminal)")
    paths_prefix: str = field(COMMON_CRAWL, key=False, help="base URL or folder of the relative paths in *.paths(.gz) listings")
    max_inputs: int = field(0, min=0, key=False, help="crawl only the first N input archives (0 = all), e.g. a sample of a listing")
    workers: int = field(0, min=0, key=False, help="archives crawled in parallel on Ray (0 = one per CPU of the Ray cluster; "
                                        "1 = one at a time in this process, without Ray)")
    ray_min_files: int = field(4, min=0, key=False, help="with fewer archives left to crawl, crawl in this process "
                                              "(Ray takes seconds to start)")
    ray_address: str | None = field(None, key=False, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
