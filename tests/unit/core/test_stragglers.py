"""A part that runs far longer than its finished peers is reported once (the clock is the test's)."""
from __future__ import annotations

import logging

import pytest

from pipeline.core.executor import Stragglers


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_straggler_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    watch = Stragglers(factor=4.0, min_s=10.0, clock=clock)
    for key in "abcde":
        watch.started(key)
    clock.now = 20.0
    for key in "abc":
        watch.finished(key)  # three peers took 20 s each
    clock.now = 70.0
    assert watch.slow() == []  # d and e: 70 s < 4 x 20 s
    watch.finished("d")
    clock.now = 100.0
    with caplog.at_level(logging.WARNING):
        assert watch.report({"e": "part-e.parquet"}) == ["e"]
        assert watch.report({"e": "part-e.parquet"}) == []
    assert "part-e.parquet: running 100 s" in caplog.text


def test_no_report_before_three_peers_finished_or_under_the_minimum() -> None:
    clock = Clock()
    watch = Stragglers(factor=2.0, min_s=60.0, clock=clock)
    for key in "abc":
        watch.started(key)
    clock.now = 1.0
    watch.finished("a")
    watch.finished("b")
    clock.now = 50.0
    assert watch.slow() == []  # two peers only
    watch.started("d")
    clock.now = 51.0
    watch.finished("d")
    assert watch.slow() == []  # c runs 51 s: over 2 x median but under min_s
