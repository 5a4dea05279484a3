"""Shared test set-up: quiet, offline environment and an isolated Prefect home per session."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WIT_SHARED_DIR", REPO.parent / "shared"))

_PREFECT_HOME = tempfile.mkdtemp(prefix="wit-prefect-home-")
for key, value in {
    "PREFECT_HOME": _PREFECT_HOME,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "WANDB_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def whirlwind_warc() -> Path:
    path = SHARED / "fixtures" / "commoncrawl" / "whirlwind.warc.gz"
    if not path.is_file():
        pytest.skip(f"Common Crawl fixture not found at {path} (set WIT_SHARED_DIR)")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration and end-to-end tests start Ray, servers or training runs: all of them are ``slow``."""
    for item in items:
        if {"integration", "e2e"} & set(Path(str(item.fspath)).relative_to(REPO / "tests").parts[:1]):
            item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Prefect stops its ephemeral API server at exit and logs it after pytest closed the captured
    streams; don't let that print a 'Logging error' traceback after the summary."""
    import logging

    logging.raiseExceptions = False
