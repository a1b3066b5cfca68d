"""How often a live run publishes snapshots nobody asked for: the dashboard's refresh, or a headless run's
record interval (its own records are asked for)."""

from __future__ import annotations

import pytest

from capture_backend.engine import Engine
from capture_backend.headless import RecordRun, StatsOptions, _run_options
from capture_backend.options import RecordOptions, RunOptions
from capture_backend.run import Run


def _engine_interval(opts: RunOptions) -> float:
    run = Run(opts, log=lambda line: None)
    assert isinstance(run.engine, Engine)
    return run.engine.publish_interval


@pytest.mark.parametrize(("interval", "published"), [(None, 1.0), (1.0, 1.0), (5.0, 1.0), (0.5, 0.5), (0.1, 0.25)])
def test_stats_publishes_once_per_record_interval_at_most_once_a_second(
    interval: float | None, published: float
) -> None:
    opts = StatsOptions(interfaces=["lo"], interval=interval, buffer_size=0)
    assert _engine_interval(_run_options(opts, False, None)) == published


def test_record_publishes_once_a_second_and_the_dashboard_four_times(tmp_path: object) -> None:
    rec = RecordRun(interfaces=["lo"], buffer_size=0, record=RecordOptions(directory=str(tmp_path)))
    assert _engine_interval(_run_options(rec, False, rec.record)) == 1.0
    assert _engine_interval(RunOptions(interfaces=["lo"], buffer_size=0)) == 0.25
