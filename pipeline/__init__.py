"""wit-builder stage library: ``core`` (ground floor) and one subpackage per stage.

Plain library code: nothing here imports Prefect (flows/ orchestrates these functions).
"""
