"""Driving the dashboard in tests: the fixed clock, async tests, table cells and screen text, the time machine app."""

from __future__ import annotations

import asyncio
import functools
import io
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from capture_backend.contract import Snapshot
from capture_backend.engine import BlockSink
from capture_backend.exporters.alerts import parse_rule
from capture_backend.exporters.incidents import IncidentSettings, IncidentWatcher
from capture_backend.replay import FileEngine, file_snapshots
from capture_backend.rewind.timemachine import TimeMachine
from capture_backend.run import Run
from tui.app import RetrotapApp, SnapshotFeed
from tui.widgets.inspector import InspectorScreen
from tui.widgets.table import SnapTable

FIXED_CLOCK = 1_700_000_100.0


SIZE = (160, 50)


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in its own event loop (pytest sees the fixtures of the wrapped function)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def snap_table(app: RetrotapApp, table_id: str) -> SnapTable:
    """A table of the screen on top (a picker), else of the dashboard under it."""
    found = app.screen.query(f"#{table_id}")
    return found.only_one(SnapTable) if found else app.query_one(f"#{table_id}", SnapTable)


def cells(app: RetrotapApp, table_id: str) -> list[list[str]]:
    """The rows a table shows, top to bottom, as plain text."""
    table = snap_table(app, table_id)
    out = []
    for row in table.ordered_rows:
        out.append([c.plain if isinstance(c, Text) else str(c) for c in table.get_row(row.key)])
    return out


def screen_text(app: RetrotapApp) -> str:
    """Everything on the terminal, as text (what a user reads)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True, legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def read_all(pcap: str, filter_expr: str = "", block_sinks: Sequence[BlockSink] = ()) -> FileEngine:
    """A FileEngine that has read the whole file (fixed clock); the caller closes it."""
    engine = FileEngine(pcap, filter_expr=filter_expr, clock=lambda: FIXED_CLOCK, block_sinks=block_sinks)
    engine.open()
    engine.start()
    assert engine.wait(30)
    return engine


def tm_app(pcap: str, snapshot_dir: Path) -> tuple[RetrotapApp, FileEngine]:
    """An app over a file read through a time machine, snapshots going to snapshot_dir."""
    tm = TimeMachine(8 << 20, seconds=3600)
    eng = read_all(pcap, block_sinks=[tm])
    app = RetrotapApp(
        eng, clock=lambda: FIXED_CLOCK, source="mixed.pcap", timemachine=tm, snapshot_dir=str(snapshot_dir)
    )
    return app, eng


async def wait_saved(app: RetrotapApp, pilot: Any) -> str:
    for _ in range(200):  # bounded: the writer thread posts a message when done
        await pilot.pause(0.02)
        if app.last_snapshot:
            return app.last_snapshot
    raise AssertionError("no snapshot written")


async def inspected(app: RetrotapApp, pilot: Any) -> InspectorScreen:
    """The inspector on screen once tshark has decoded the file."""
    for _ in range(1000):  # bounded (20 s): the worker thread posts Done
        await pilot.pause(0.02)
        screen = app.screen
        if isinstance(screen, InspectorScreen) and screen.done:
            await pilot.pause()
            return screen
    raise AssertionError("the inspector never finished decoding")


WATCHED_RULES = ("scan: scan_ports > 100", "flood: new_flows > 1000")


def watched_app(
    pcap: str, directory: str, until_rule: str = "flood"
) -> tuple[RetrotapApp, SnapshotFeed, IncidentWatcher, list[Snapshot]]:
    """The dashboard over a snapshot feed, with the real incident watcher (WATCHED_RULES) stepped over the file's
    snapshots until `until_rule` holds; the feed is left one snapshot before that moment (the last one shown
    is returned last)."""
    snaps = list(file_snapshots(pcap, step_s=1.0, clock=lambda: FIXED_CLOCK))
    feed = SnapshotFeed(snaps[0])
    rules = tuple(parse_rule(text) for text in WATCHED_RULES)
    watcher = IncidentWatcher(IncidentSettings(rules=rules, directory=directory), lambda: feed.snapshot, None, print)
    watcher.start(thread=False)
    shown: list[Snapshot] = []
    for snap in snaps:
        feed.snapshot = snap
        watcher.step()
        shown.append(snap)
        if until_rule in [a.rule for a in watcher.status.active]:
            break
    feed.snapshot = shown[-2]
    run = Run.around(feed, print)
    run.exporters.incidents = watcher
    app = RetrotapApp(feed, clock=lambda: FIXED_CLOCK, resolver=lambda addr: None, source="scan.pcap", run=run)
    return app, feed, watcher, shown


async def wait_rows(app: RetrotapApp, pilot: Any, table: str, n: int) -> list[list[str]]:
    """The rows of a table once it has at least n (bounded: 10 s; the Incidents view reads on a worker thread)."""
    for _ in range(500):
        await pilot.pause(0.02)
        app.render_view()
        rows = cells(app, table)
        if len(rows) >= n:
            return rows
    raise AssertionError(f"{table}: fewer than {n} rows")
