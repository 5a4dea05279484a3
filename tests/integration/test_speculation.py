"""A straggler on a real local Ray: reported, and with ``speculate`` run again; the first copy to finish wins."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest
import ray

from pipeline.core.executor import Resources, Stragglers, ray_session, submit_bounded

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import a test module


def _task(item: tuple[str, str], _shared: int) -> str:
    """Quick, except the first run of "slow" (a marker file tells a second copy it is one)."""
    name, marker = item
    if name == "slow" and not Path(marker).exists():
        Path(marker).write_text("first copy started")
        time.sleep(120)
        return "first copy"
    time.sleep(0.2)
    return f"{name} done"


def _run(tmp_path: Path, speculate: bool) -> tuple[dict[str, str], float]:
    items = [(name, str(tmp_path / "started")) for name in ["a", "b", "c", "slow", "d", "e"]]
    watch = Stragglers(factor=3.0, min_s=2.0, poll_s=0.5)
    started = time.monotonic()
    with ray_session(None, 2):
        results = {item[0]: ray.get(ref) for item, ref in
                   submit_bounded(((_task, item) for item in items), Resources(cpus=1), 0, speculate=speculate,
                                  stragglers=watch)}
    return results, time.monotonic() - started


def test_a_straggler_runs_again_and_the_first_copy_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.core.executor"):
        results, seconds = _run(tmp_path, speculate=True)
    assert results == {name: f"{name} done" for name in ["a", "b", "c", "slow", "d", "e"]}
    assert seconds < 60, seconds  # the first copy would have taken 120 s
    assert "started a second copy" in caplog.text and "running" in caplog.text
