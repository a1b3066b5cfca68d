"""The per-second history (capture_backend/rewind/history.py) and the dashboard's time cursor ([ ] { } L).

The capture is tests/helpers/history.py's: three phases of five seconds, each with its own top host pair and
UDP port, read by the real file engine one second of packet time per snapshot. The dashboard's history
thread takes the snapshots from a feed as they are published, as it takes them from the engine live.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from textual.widgets import DataTable

from capture_backend.contract import Snapshot, TableSnapshot, match_rows
from capture_backend.replay import FileEngine, file_snapshots
from capture_backend.rewind.history import HistoryRing, HistoryThread, reduce_table
from capture_backend.run import Run, RunOptions
from tests.helpers.cli import run_retrotap
from tests.helpers.history import BACKGROUND, PHASES, SECONDS, T0, phase_at, write_phases
from tests.helpers.tui import FIXED_CLOCK, SIZE, cells, sync
from tests.pcapgen import write_mixed
from tui.app import RetrotapApp, SnapshotFeed
from tui.options import build_parser
from tui.widgets.format import bits, size


@pytest.fixture(scope="module")
def phases_pcap(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("history") / "phases.pcap"
    write_phases(path)
    return str(path)


@pytest.fixture(scope="module")
def snaps(phases_pcap: str) -> list[Snapshot]:
    """One snapshot per second of packet time (the last: the whole file, second 14)."""
    return list(file_snapshots(phases_pcap, step_s=1.0, clock=lambda: FIXED_CLOCK))


@pytest.fixture(scope="module")
def mixed_snaps(tmp_path_factory: pytest.TempPathFactory) -> list[Snapshot]:
    path = tmp_path_factory.mktemp("history") / "mixed.pcap"
    write_mixed(path)
    return list(file_snapshots(str(path), step_s=1.0, clock=lambda: FIXED_CLOCK))


def second_of(snap: Snapshot) -> int:
    return snap.last_ns // 1_000_000_000 - T0


def by_key(t: TableSnapshot) -> dict[bytes, int]:
    return {t.key_bytes(i): i for i in range(len(t))}


# --- the ring
def test_snapshots_are_one_a_second(snaps: list[Snapshot]) -> None:
    assert [second_of(s) for s in snaps] == list(range(SECONDS))


def test_the_ring_keeps_one_entry_a_second_and_only_the_last_seconds(snaps: list[Snapshot]) -> None:
    ring = HistoryRing(seconds=5)
    taken = [ring.offer(s) for s in [*snaps, snaps[-1]]]
    assert taken == [True] * SECONDS + [False]  # a second already kept is not kept again
    assert [e.second - T0 for e in ring.entries()] == list(range(SECONDS - 5, SECONDS))
    assert len(ring) == 5
    assert ring.errors == 0


def test_reduced_tables_are_the_top_rows_exactly(mixed_snaps: list[Snapshot]) -> None:
    rows = 5
    for before, snap in zip(mixed_snaps[10:20], mixed_snaps[11:21], strict=True):
        for name in ("flows", "pairs", "hosts", "ports"):
            full, old = getattr(snap, name), getattr(before, name)
            assert len(full) > 2 * rows  # the cut is a real one
            cut, prev = reduce_table(full, old, rows)
            total = full.cols["bytes"].sum(axis=1)
            match = match_rows(full, old)
            grown = total - np.where(match >= 0, old.cols["bytes"].sum(axis=1)[np.maximum(match, 0)], 0)
            # Independently: the rows whose total, or growth, is at least the rows-th largest (ties: either).
            must = {full.key_bytes(i) for i in range(len(full)) if total[i] > np.sort(total)[-rows - 1]}
            must |= {full.key_bytes(i) for i in range(len(full)) if grown[i] > np.sort(grown)[-rows - 1]}
            kept = by_key(cut)
            assert must <= set(kept) and len(kept) <= 2 * rows
            at = by_key(full)
            older = by_key(old)
            assert prev is not None
            for key, i in kept.items():
                for col, values in cut.cols.items():
                    assert np.array_equal(values[i], full.cols[col][at[key]]), (name, col)
                for col in ("packets", "bytes"):
                    expected = old.cols[col][older[key]] if key in older else np.zeros(2, np.int64)
                    assert np.array_equal(prev.cols[col][i], expected), (name, col)


def test_an_entry_keeps_the_rates_of_its_second(snaps: list[Snapshot]) -> None:
    ring = HistoryRing()
    for s in snaps:
        ring.offer(s)
    entry = ring.entries()[9]
    assert entry.prev is not None
    assert (entry.snap.time, entry.prev.last_ns) == (snaps[9].time, snaps[8].last_ns)
    phase = phase_at(9)
    rows = by_key(entry.snap.ports)
    (key,) = [k for k in rows if int.from_bytes(k[1:3], "big") == phase.port]
    grown = entry.snap.ports.cols["bytes"][rows[key]].sum() - entry.prev.ports.cols["bytes"][rows[key]].sum()
    assert grown == phase.rate * phase.size


def test_memory_is_bounded_by_the_rows_kept(mixed_snaps: list[Snapshot]) -> None:
    ring = HistoryRing(seconds=10, rows=4)
    for s in mixed_snaps:
        ring.offer(s)
    assert len(ring) == 10
    for e in ring.entries():
        for name in ("flows", "pairs", "hosts", "ports"):
            assert len(getattr(e.snap, name)) <= 8
    limit = 10 * 4 * 2 * (4 * 8 * 50)  # seconds × tables × rows (≤ 8 a table) × generous bytes per row
    assert 0 < ring.nbytes() < limit


def test_the_thread_takes_published_snapshots_and_counts_failures(snaps: list[Snapshot]) -> None:
    ring = HistoryRing()
    feed = SnapshotFeed(snaps[0])
    thread = HistoryThread(ring, lambda: feed.snapshot, interval=0.01)
    thread.start()
    try:
        for s in snaps[:4]:
            feed.snapshot = s
            wait_for(lambda s=s: ring.entries() and ring.entries()[-1].second == s.last_ns // 1_000_000_000)
        assert [e.second - T0 for e in ring.entries()] == [0, 1, 2, 3]
        feed.snapshot = None  # type: ignore[assignment]  # a broken source: counted, the thread goes on
        wait_for(lambda: ring.errors > 0)
        assert "AttributeError" in ring.last_error
        feed.snapshot = snaps[4]
        wait_for(lambda: len(ring) == 5)
    finally:
        thread.stop()
    assert not thread.running


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


# --- the time cursor in the dashboard
def top_pair(app: RetrotapApp) -> str:
    return " ".join(cells(app, "hosts-table")[0][1].split())


def top_port(app: RetrotapApp) -> list[str]:
    return cells(app, "ports-table")[0]


def badge(app: RetrotapApp) -> str:
    label = app.query_one("#asof-badge")
    return str(label.render()) if label.display else ""


def clock_text(second: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(T0 + second))


@pytest.fixture
def history_app(snaps: list[Snapshot]) -> Iterator[tuple[RetrotapApp, SnapshotFeed, HistoryRing]]:
    feed = SnapshotFeed(snaps[0])
    ring = HistoryRing()
    run = Run.around(feed, lambda line: None, history=ring)
    app = RetrotapApp(feed, clock=lambda: FIXED_CLOCK, resolver=lambda addr: None, source="phases.pcap", run=run)
    yield app, feed, ring
    app.close_engine()


async def publish(app: RetrotapApp, pilot: Any, feed: SnapshotFeed, ring: HistoryRing, snap: Snapshot) -> None:
    """Publish a snapshot, wait (bounded) until the history thread kept it, refresh the screen."""
    feed.snapshot = snap
    for _ in range(500):
        entries = ring.entries()
        if entries and entries[-1].second == snap.last_ns // 1_000_000_000:
            break
        await pilot.pause(0.01)
    else:
        raise AssertionError(f"second {second_of(snap)} never reached the history")
    app.pull()
    await pilot.pause()


async def press(pilot: Any, *keys: str) -> None:
    await pilot.press(*keys)
    await pilot.pause()


def assert_phase(app: RetrotapApp, hosts: str, ports: str, second: int) -> None:
    phase = phase_at(second)
    assert hosts == f"{phase.src} => {phase.dst}", second
    assert ports[1:3] == ["udp", str(phase.port)], second


@sync
async def test_the_cursor_shows_each_phase_top_talkers(
    history_app: tuple[RetrotapApp, SnapshotFeed, HistoryRing], snaps: list[Snapshot]
) -> None:
    app, feed, ring = history_app
    async with app.run_test(size=SIZE) as pilot:
        for s in snaps[:-1]:  # up to second 13; 14 comes while rewound
            await publish(app, pilot, feed, ring, s)
        await press(pilot, "2")
        assert badge(app) == ""
        assert top_pair(app) == "10.0.3.1 => 10.0.3.2"  # live: second 13
        pairs: dict[int, str] = {}
        ports: dict[int, list[str]] = {}
        for view, read, seen in (("2", top_pair, pairs), ("3", top_port, ports)):
            await press(pilot, "L", view, "left_square_bracket")  # one second back from the newest (13)
            for second in range(12, -1, -1):
                seen[second] = read(app)  # type: ignore[assignment]
                assert badge(app) == f"as of {clock_text(second)}"
                await press(pilot, "left_square_bracket")
            assert badge(app) == f"as of {clock_text(0)}"  # the oldest second: no further back
        seen = {second: (pairs[second], ports[second]) for second in pairs}
        # Every second from two into a phase shows that phase's top pair and port (the Hosts view sorts on
        # the 10 s average of complete seconds, the Ports view on total bytes; each phase outsends all before).
        shown = [second for second in seen if second >= phase_at(second).start + 2 or phase_at(second) is PHASES[0]]
        assert sorted(shown) == [0, 1, 2, 3, 4, 7, 8, 9, 12]
        for second in shown:
            assert_phase(app, *seen[second], second)
        assert seen[5][0] == "10.0.1.1 => 10.0.1.2"  # the first second of phase 2: phase 1 still leads

        # The Ports view's rate at a rewound second is that second's: phase 2 sends rate × size a second.
        await press(pilot, "right_curly_bracket")  # 0 + 60 s: past the newest, live again
        assert badge(app) == ""
        await press(pilot, "left_curly_bracket")  # 13 - 60 s: the oldest kept
        assert badge(app) == f"as of {clock_text(0)}"
        for _ in range(9):
            await press(pilot, "right_square_bracket")
        assert badge(app) == f"as of {clock_text(9)}"
        await press(pilot, "3")
        phase = phase_at(9)
        row = top_port(app)
        assert row[1:3] == ["udp", str(phase.port)]
        assert row[4] == bits(phase.rate * phase.size * 8)

        # Live capture goes on underneath: a new second arrives, the status line counts it, the views stay.
        await publish(app, pilot, feed, ring, snaps[-1])
        status = str(app.query_one("#status-text").render())
        assert f"{snaps[-1].packets:,} pkts" in status
        assert badge(app) == f"as of {clock_text(9)}"
        await press(pilot, "2")
        assert_phase(app, top_pair(app), row, 9)
        # The newest second is one ] away, then live; L goes live from anywhere.
        for _ in range(5):
            await press(pilot, "right_square_bracket")
        assert badge(app) == f"as of {clock_text(14)}"
        assert_phase(app, top_pair(app), ["", "udp", "5003"], 14)
        await press(pilot, "right_square_bracket")
        assert badge(app) == ""
        await press(pilot, "left_curly_bracket", "L")
        assert badge(app) == ""
        await press(pilot, "3")
        assert_phase(app, "10.0.3.1 => 10.0.3.2", top_port(app), 14)


@sync
async def test_the_cursor_without_history_says_so(snaps: list[Snapshot], tmp_path: Path) -> None:
    feed = SnapshotFeed(snaps[3])
    app = RetrotapApp(feed, clock=lambda: FIXED_CLOCK, resolver=lambda addr: None, source="phases.pcap")
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "2", "left_square_bracket")
        assert badge(app) == ""
        assert any("--history 0" in str(n.message) for n in app._notifications)
        assert_phase(app, top_pair(app), ["", "udp", "5001"], 3)
        assert {"[", "]", "{", "}", "L"} <= {key for key, _ in app.key_help()}  # the help screen lists them


def test_history_option() -> None:
    parser = build_parser()
    assert parser.parse_args(["--history", "15m"]).history == 900
    assert parser.parse_args([]).history == 900
    assert parser.parse_args(["--history", "0"]).history == 0
    assert Run(RunOptions(read_file="x.pcap", history_seconds=0), print).history is None
    assert Run(RunOptions(read_file="x.pcap", history_seconds=120), print).history.seconds == 120  # type: ignore[union-attr]


def test_rewound_status_bar_snapshot(
    snap_compare: Any, snaps: list[Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Ports view rewound to second 9: the "as of" badge beside the live status line (SVG baseline)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    ring = HistoryRing()
    for s in snaps:  # the history as the thread would have kept it
        ring.offer(s)
    feed = SnapshotFeed(snaps[-1])
    run = Run.around(feed, lambda line: None, history=ring)
    app = RetrotapApp(feed, clock=lambda: FIXED_CLOCK, resolver=lambda addr: None, source="phases.pcap", run=run)

    async def run_before(pilot: Any) -> None:
        await pilot.press("3", *["left_square_bracket"] * 5)
        await pilot.pause()
        assert badge(app) == "as of 22:13:29"

    try:
        assert snap_compare(app, terminal_size=(160, 24), run_before=run_before)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def flows_note(app: RetrotapApp) -> str:
    note = app.query_one("#flows-note")
    return str(note.render()) if note.display else ""


@sync
async def test_rewound_flows_are_the_sessions_of_that_second(
    phases_pcap: str, snaps: list[Snapshot], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    proc = run_retrotap("stats", "-r", phases_pcap, "--sessions", str(store), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    ring = HistoryRing()
    for s in snaps:
        ring.offer(s)
    feed = SnapshotFeed(snaps[-1])
    run = Run.around(feed, lambda line: None, history=ring, sessions=str(store))
    app = RetrotapApp(feed, clock=lambda: FIXED_CLOCK, resolver=lambda addr: None, source="phases.pcap", run=run)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "4")
        assert flows_note(app) == ""
        await press(pilot, *["left_square_bracket"] * 7)  # second 7: phase 2 and the quiet pair
        assert badge(app) == f"as of {clock_text(7)}"
        assert flows_note(app) == (
            f"As of {clock_text(7)}: 2 sessions active then, from the session store ({store}); L: back to live"
        )
        rows = cells(app, "flows-table")
        phase, quiet = phase_at(7), BACKGROUND
        assert [r[:5] for r in rows] == [
            ["udp", phase.src, "40000", phase.dst, str(phase.port)],
            ["udp", quiet.src, "40000", quiet.dst, str(quiet.port)],
        ]
        # Each session's record: the whole flow (the file ended it), client to server.
        labels = [str(c.label).rstrip(" ▲▼") for c in app.query_one("#flows-table", DataTable).ordered_columns]
        named = [dict(zip(labels, r, strict=True)) for r in rows]
        assert [(r["Bytes"], r["Bytes →"], r["Bytes ←"]) for r in named] == [
            (size(phase.seconds * phase.rate * phase.size),) * 2 + ("0 B",),
            (size(quiet.seconds * quiet.rate * quiet.size),) * 2 + ("0 B",),
        ]
        # Other views still show the second's reduced snapshot.
        await press(pilot, "2")
        assert_phase(app, top_pair(app), ["", "udp", "5002"], 7)
    app.close_engine()


@sync
async def test_rewound_flows_without_a_store_are_those_kept_in_memory(snaps: list[Snapshot]) -> None:
    ring = HistoryRing()
    for s in snaps:
        ring.offer(s)
    feed = SnapshotFeed(snaps[-1])
    run = Run.around(feed, lambda line: None, history=ring)
    app = RetrotapApp(feed, clock=lambda: FIXED_CLOCK, resolver=lambda addr: None, source="phases.pcap", run=run)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "4", *["left_square_bracket"] * 7)
        kept = ring.entries()[7].snap.flows
        assert flows_note(app) == (
            f"As of {clock_text(7)}: the {len(kept)} busiest flows of that second, kept in memory; L: back to live"
        )
        rows = cells(app, "flows-table")
        assert len(rows) == len(kept) == 3  # phases 1 and 2, and the quiet pair: what the table held at second 7
        assert rows[0][1:5] == ["10.0.2.1", "40000", "10.0.2.2", "5002"]
    app.close_engine()


@sync
async def test_the_cursor_over_a_file_replayed_in_real_time(phases_pcap: str) -> None:
    """The whole path: the file engine replays the three phases at their pace, the run's history thread
    keeps a second at a time as the dashboard shows them, then the cursor walks back over every second."""
    run = Run(RunOptions(read_file=phases_pcap, realtime=True, history_seconds=900, buffer_size=0), print)
    run.open()
    app = RetrotapApp(run.engine, clock=lambda: FIXED_CLOCK, resolver=lambda addr: None, source="phases", run=run)
    async with app.run_test(size=SIZE) as pilot:
        engine = run.engine
        assert isinstance(engine, FileEngine)
        deadline = time.monotonic() + 90  # bounded: the replay takes the file's 15 s
        while not engine.done.is_set():
            assert time.monotonic() < deadline, "the replay did not end"
            await pilot.pause(0.1)
        assert run.history is not None
        await publish_final(app, pilot, run.history, run.engine.snapshot)
        kept = [e.second - T0 for e in run.history.entries()]
        assert kept[0] == 0 and kept[-1] == SECONDS - 1 and kept == sorted(set(kept))
        seen: dict[int, tuple[str, list[str]]] = {}
        for view in ("2", "3"):
            await press(pilot, "L", view)
            for _ in range(len(kept) - 1):
                await press(pilot, "left_square_bracket")
                second = int(badge(app).removeprefix("as of ")[-2:]) - 20  # T0 is 22:13:20 (UTC)
                pairs, ports = seen.get(second, ("", []))
                seen[second] = (top_pair(app), ports) if view == "2" else (pairs, top_port(app))
        assert sorted(seen) == kept[:-1]  # every kept second but the newest (live), once each
        checked = [s for s in seen if s >= phase_at(s).start + 2 or phase_at(s) is PHASES[0]]
        assert {phase_at(s) for s in checked} == set(PHASES)
        for second in checked:
            assert_phase(app, *seen[second], second)
    app.close_engine()


async def publish_final(app: RetrotapApp, pilot: Any, ring: HistoryRing, final: Snapshot) -> None:
    """Wait (bounded) until the history thread kept the replay's last second."""
    deadline = time.monotonic() + 10
    while not (ring.entries() and ring.entries()[-1].second == final.last_ns // 1_000_000_000):
        assert time.monotonic() < deadline, "the last second never reached the history"
        await pilot.pause(0.05)
    app.pull()
    await pilot.pause()


@sync
async def test_rewound_sparklines_are_the_minute_up_to_the_cursor(snaps: list[Snapshot]) -> None:
    ring = HistoryRing()
    for s in snaps:
        ring.offer(s)
    feed = SnapshotFeed(snaps[-1])
    run = Run.around(feed, lambda line: None, history=ring)
    app = RetrotapApp(feed, clock=lambda: FIXED_CLOCK, resolver=lambda addr: None, source="phases.pcap", run=run)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "1", *["left_square_bracket"] * 5)  # second 9: phase 2 and the quiet pair
        label = str(app.query_one("SparkGroup Label.rx").render())
        phase = phase_at(9)
        second = (phase.rate * phase.size + BACKGROUND.rate * BACKGROUND.size) * 8  # bits in second 9
        assert label.startswith(f"phases.pcap captured  {bits(second)}   (last 60 s, max {bits(second)})")
        spark = app.query_one("SparkGroup Sparkline.rx")
        data = list(spark.data or [])
        assert len([v for v in data if v]) == 9  # seconds 1..9 (second 0 has no second before it)
        assert data[-1] == second
    app.close_engine()
