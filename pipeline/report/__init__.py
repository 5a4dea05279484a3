"""A build's reports: the funnel (``reports/stats.json``, ``stats.md``) and the dashboard page
(``reports/dashboard.html``), all made from what the stages wrote into the build directory.

``funnel``: counts and checks from each stage's ``_stats.json``; ``stream``/``aggregate``: per-row
figures read batch by batch; ``charts``: matplotlib SVG; ``thumbs``: image thumbnails; ``trainlog``:
open_clip's curves; ``page``/``sections``/``dashboard``: the HTML; ``serve``: ``wit dashboard --serve``.
"""
from pipeline.report.dashboard import is_stale, render, write_dashboard, write_report
from pipeline.report.funnel import build_report, funnel_lines, funnel_table, overlap_lines, overlap_table

__all__ = ["build_report", "write_report", "funnel_lines", "overlap_lines", "funnel_table", "overlap_table",
           "write_dashboard", "render", "is_stale"]
