"""filter: caption rules (file names, language, length, markup, duplicates) to ``pairs/kept`` and ``pairs/rejected``."""
from pipeline.filter.stage import FilterConfig, run_filter

__all__ = ["FilterConfig", "run_filter"]
