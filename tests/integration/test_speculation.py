"""A straggler on a real local Ray: reported, and with ``speculate`` run again; the first copy to finish wins."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest
import ray

from pipeline.core.errors import WitError
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


def _flaky(item: tuple[str, str], _shared: int) -> str:
    """Count the tries in a file; fail the first with ``item[0]``'s error kind."""
    kind, tries = item
    n = len(Path(tries).read_text()) if Path(tries).exists() else 0
    Path(tries).write_text("x" * (n + 1))
    if n == 0 and kind == "io":
        raise OSError("store hiccup")
    if kind == "bad":
        raise WitError("part-x.parquet: not a readable parquet file")
    return "ok"


def test_transient_errors_are_retried_bad_input_is_not(tmp_path: Path) -> None:
    items = [("io", str(tmp_path / "io")), ("bad", str(tmp_path / "bad"))]
    with ray_session(None, 2):
        results = {}
        for (kind, _), ref in submit_bounded(((_flaky, item) for item in items), Resources(cpus=1, retries=2), 0):
            try:
                results[kind] = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                results[kind] = type(exc.cause).__name__
    assert results == {"io": "ok", "bad": "WitError"}
    assert len((tmp_path / "io").read_text()) == 2 and len((tmp_path / "bad").read_text()) == 1
