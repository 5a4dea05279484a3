"""wit-builder stage library: crawl, filter, download and their shared helpers.

Plain library code: nothing here imports Prefect (flows/ orchestrates these functions).
"""
