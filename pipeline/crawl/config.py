"""``CrawlConfig``: the options of ``wit crawl`` (re-exported by :mod:`pipeline.crawl.stage`)."""
from __future__ import annotations

import dataclasses

from pipeline.core.config import field
from pipeline.core.errors import WitError

COMMON_CRAWL = "https://data.commoncrawl.org/"


@dataclasses.dataclass
class CrawlConfig:
    """Options of the crawl stage."""

    batch_rows: int = field(10_000, key=False, help="candidate rows buffered before a parquet row group is written")
    max_html_bytes: int = field(5_000_000, help="read at most this many bytes of one HTML page")
    max_record_bytes: int = field(50_000_000, help="a WAT record longer than this is counted as corrupt")
    max_caption_chars: int = field(2_000, help="drop alt texts longer than this (reason caption_too_long)")
    title_fallback: bool = field(True, help="use the <img title> as caption when alt is empty")
    progress: bool = field(True, key=False, help="show a progress bar over input files (only on a terminal)")
    paths_prefix: str = field(COMMON_CRAWL, key=False, help="base URL or folder of the relative paths in *.paths(.gz) listings")
    max_inputs: int = field(0, key=False, help="crawl only the first N input archives (0 = all), e.g. a sample of a listing")
    workers: int = field(0, key=False, help="archives crawled in parallel on Ray (0 = one per CPU of the Ray cluster; "
                                 "1 = one at a time in this process, without Ray)")
    ray_min_files: int = field(4, key=False, help="with fewer archives left to crawl, crawl in this process "
                                       "(Ray takes seconds to start)")
    ray_address: str | None = field(None, key=False, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")

    def __post_init__(self) -> None:
        if min(self.batch_rows, self.max_html_bytes, self.max_record_bytes, self.max_caption_chars) < 1:
            raise WitError("CrawlConfig: batch_rows, max_html_bytes, max_record_bytes and max_caption_chars "
                           "must be positive")
        if min(self.max_inputs, self.workers, self.ray_min_files) < 0:
            raise WitError("CrawlConfig: max_inputs, workers and ray_min_files must be >= 0")
