"""crawl: web archives (WARC, WAT; local or fsspec) to ``candidates/`` (image URL, alt text, page URL)."""
from pipeline.crawl.stage import CrawlConfig, run_crawl

__all__ = ["CrawlConfig", "run_crawl"]
