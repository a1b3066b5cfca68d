"""The History view (8) under Pilot, against a session store written by `retrotap stats -r --sessions` from a
generated capture: the rows, `/`, `s`/`S`, `t`, Enter, `W` (from the recording, from the time machine) and `i`."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from textual.pilot import Pilot

from capture_backend.contract import UserError
from capture_backend.replay import FileEngine
from capture_backend.rewind.sessions import STORE_NAME, filter_query, window_of
from capture_backend.rewind.timemachine import TimeMachine
from capture_backend.run import SessionHistory
from tests.helpers.cli import run_retrotap
from tests.helpers.tui import FIXED_CLOCK, cells, inspected, screen_text, sync
from tests.lab import IP4_A, IP4_B, Lab
from tests.pcapgen import write_mixed
from tests.tmux import Tmux
from tui.app import RetrotapApp
from tui.widgets.history import SORTS, HistoryView, SessionDetail, clock_time

SIZE = (160, 50)
RECORDING = "test0-20231114T221300.000000Z.pcap"  # as `retrotap record` names its files


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Clock times in UTC, whatever the machine's zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The capture, a store beside a recording of it, and a store with no recording."""
    root = tmp_path_factory.mktemp("history")
    pcap = root / "mix.pcap"
    write_mixed(pcap, seed=3, n=400)
    recorded, alone = root / "recorded", root / "alone"
    for directory in (recorded, alone):
        proc = run_retrotap("stats", "-r", str(pcap), "--sessions", str(directory), "--format", "json")
        assert proc.returncode == 0, proc.stderr
    shutil.copy(pcap, recorded / RECORDING)
    return pcap, recorded, alone


def store_rows(directory: Path, sql: str = "1", order: str = "start_ns DESC, id DESC") -> list[dict[str, Any]]:
    """The store's records read with SQL of the test's own."""
    db = sqlite3.connect(directory / STORE_NAME)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT * FROM sessions WHERE {sql} ORDER BY {order}")]
    finally:
        db.close()


def history_app(pcap: Path, store: Path | None, out: Path) -> tuple[RetrotapApp, FileEngine]:
    tm = TimeMachine(8 << 20, seconds=3600)
    eng = FileEngine(str(pcap), clock=lambda: FIXED_CLOCK, block_sinks=[tm])
    eng.open()
    eng.start()
    assert eng.wait(30)
    app = RetrotapApp(
        eng,
        clock=lambda: FIXED_CLOCK,
        source=pcap.name,
        timemachine=tm,
        snapshot_dir=str(out),
        sessions_dir=str(store) if store else None,
    )
    return app, eng


def view(app: RetrotapApp) -> HistoryView:
    return app.query_one(HistoryView)


async def answered(app: RetrotapApp, pilot: Any, before: int) -> HistoryView:
    """The view once it has answered a query after `before` answers (bounded: 10 s)."""
    for _ in range(500):
        await pilot.pause(0.02)
        if view(app).queries > before:
            await pilot.pause()
            return view(app)
    raise AssertionError("the History view never answered")


async def notified(app: RetrotapApp, pilot: Any, words: str) -> str:
    for _ in range(1000):  # bounded: 20 s
        await pilot.pause(0.02)
        for n in app._notifications:
            if words in n.message:
                return n.message
    raise AssertionError(f"no notification with {words!r}")


def ids(app: RetrotapApp) -> list[int]:
    return [int(k) for k in view(app).table.row_keys()]


def packets_in(path: str) -> int:
    proc = subprocess.run(["tshark", "-r", path, "-T", "fields", "-e", "frame.number"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return len(proc.stdout.split())


def test_the_view_sorts_as_the_command_line() -> None:
    assert SORTS == SessionHistory.sorts


@sync
async def test_rows_filter_sort_and_detail(capture: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pcap, store, _ = capture
    every = store_rows(store)
    assert len(every) > 40
    app, eng = history_app(pcap, store, tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("8")
        v = await answered(app, pilot, 0)
        # The capture spans less than 15 minutes: every record, newest first.
        assert ids(app) == [r["id"] for r in every]
        first = cells(app, "history-table")[0]
        r = every[0]
        proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp"}[r["proto"]]
        assert first[0] == clock_time(r["start_ns"]) and first[2] == proto
        assert first[5] == str(r["src_packets"] + r["dst_packets"])
        assert f"{len(every)} sessions" in screen_text(app)

        n = v.queries
        await pilot.press("slash", *"tcp 22", "enter")
        await answered(app, pilot, n)
        ssh = store_rows(store, "proto = 6 AND (sport = 22 OR dport = 22)")
        assert 0 < len(ssh) < len(every) and ids(app) == [r["id"] for r in ssh]

        n = v.queries
        await pilot.press("slash", "ctrl+u", *"udp packets > 2", "enter")
        await answered(app, pilot, n)
        udp = store_rows(store, "proto = 17 AND src_packets + dst_packets > 2")
        assert 0 < len(udp) and ids(app) == [r["id"] for r in udp]

        n = v.queries
        await pilot.press("slash", "ctrl+u", *"retrans > x", "enter")
        await answered(app, pilot, n)
        assert "/: where: 'x' after retrans > is not a number" in screen_text(app)

        n = v.queries
        await pilot.press("slash", "ctrl+u", "enter", "s")  # by bytes, largest first
        await answered(app, pilot, n)
        by_bytes = store_rows(store, order="src_bytes + dst_bytes DESC, start_ns, id")
        assert ids(app) == [r["id"] for r in by_bytes]
        assert "sort bytes ▼" in screen_text(app)
        n = v.queries
        await pilot.press("S")
        await answered(app, pilot, n)
        assert ids(app) == [r["id"] for r in store_rows(store, order="src_bytes + dst_bytes, start_ns DESC, id DESC")]

        n = v.queries
        await pilot.press("t", "ctrl+u", *"22:13:30 22:13:50", "enter")
        await answered(app, pilot, n)
        lo, hi = 1_700_000_010 * 10**9, 1_700_000_030 * 10**9  # 22:13:30 and 22:13:50 UTC on the capture's day
        smallest = "src_bytes + dst_bytes, start_ns DESC, id DESC"
        inside = store_rows(store, f"start_ns < {hi} AND end_ns >= {lo}", order=smallest)
        assert 0 < len(inside) < len(every) and ids(app) == [r["id"] for r in inside]
        await pilot.press("t", "ctrl+u", *"soon", "enter")
        await pilot.pause()
        assert "--from: 'soon' is not a time" in screen_text(app)
        n = v.queries
        await pilot.press("ctrl+u", *"all", "enter")
        await answered(app, pilot, n)
        assert ids(app) == [r["id"] for r in store_rows(store, order=smallest)]

        v.table.move_cursor(row=0)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SessionDetail)
        top = store_rows(store, order=smallest)[0]
        text = screen_text(app)
        assert f"Session {top['id']}:" in text
        assert f"{top['src_bytes']:,}" in text and f"{top['dst_bytes']:,}" in text
        assert app.screen.record["src_packets"] == top["src_packets"]
    eng.close()


@sync
async def test_W_writes_from_the_recording_and_i_inspects(capture: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pcap, store, _ = capture
    top = store_rows(store, "proto = 6", order="src_packets + dst_packets DESC, id")[0]
    app, eng = history_app(pcap, store, tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("8")
        await answered(app, pilot, 0)
        view(app).table.move_cursor(row=ids(app).index(top["id"]))
        await pilot.press("W")
        line = await notified(app, pilot, f"session {top['id']}:")
        path = tmp_path / f"retrotap-session-{top['id']}.pcap"
        assert line.startswith(f"session {top['id']}: {path}") and line.endswith("from the recording)")
        assert packets_in(str(path)) == top["src_packets"] + top["dst_packets"]
        await pilot.press("i")
        screen = await inspected(app, pilot)
        assert len(screen.packets) == top["src_packets"] + top["dst_packets"]
    eng.close()


@sync
async def test_W_writes_from_the_time_machine(capture: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pcap, _, store = capture
    top = store_rows(store, "proto = 6", order="src_packets + dst_packets DESC, id")[0]
    app, eng = history_app(pcap, store, tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("8")
        await answered(app, pilot, 0)
        view(app).table.move_cursor(row=ids(app).index(top["id"]))
        await pilot.press("i")  # writes it first
        screen = await inspected(app, pilot)
        line = await notified(app, pilot, f"session {top['id']}:")
        assert line.endswith("from the time machine)")
        written = line.split(": ", 1)[1].split(" (")[0]
        assert packets_in(written) == top["src_packets"] + top["dst_packets"] == len(screen.packets)
    eng.close()


@sync
async def test_no_store_and_a_corrupt_store_are_one_line(capture: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pcap = capture[0]
    app, eng = history_app(pcap, None, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("8")
        await pilot.pause()
        assert "No session store: run with --sessions DIR" in screen_text(app)
    eng.close()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / STORE_NAME).write_bytes(b"not a database at all" * 100)
    app, eng = history_app(pcap, bad, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("8")
        await answered(app, pilot, 0)
        assert f"sessions store {bad / STORE_NAME}: corrupt (file is not a database)" in screen_text(app)
        await pilot.press("4")  # the dashboard goes on
        await pilot.pause()
        assert app.active == 4
    eng.close()


@pytest.mark.parametrize("size", [(80, 24), (160, 50)], ids=["80x24", "160x50"])
def test_snapshot(
    snap_compare: Callable[..., bool], capture: tuple[Path, Path, Path], tmp_path: Path, size: tuple[int, int]
) -> None:
    pcap, store, _ = capture
    app, eng = history_app(pcap, store, tmp_path)

    async def run_before(pilot: Pilot[int]) -> None:
        await pilot.press("8")
        await answered(app, pilot, 0)

    try:
        assert snap_compare(app, terminal_size=size, run_before=run_before)
    finally:
        eng.close()


@sync
async def test_W_with_neither_source_says_why(capture: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pcap, _, store = capture
    eng = FileEngine(str(pcap), clock=lambda: FIXED_CLOCK)
    eng.open()
    eng.start()
    assert eng.wait(30)
    app = RetrotapApp(eng, clock=lambda: FIXED_CLOCK, snapshot_dir=str(tmp_path), sessions_dir=str(store))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("8")
        await answered(app, pilot, 0)
        first = ids(app)[0]
        await pilot.press("W")
        line = await notified(app, pilot, f"session {first}:")
        assert line == f"session {first}: no recording in {store}, the time machine is off"
        assert list(tmp_path.iterdir()) == []
    eng.close()


def test_the_filter_is_read_as_the_command_lines_options() -> None:
    q = filter_query("10.0.0.0/8 443 tcp retrans > 0 and latency_ms>=2.5 curl")
    assert (q.host, q.port, q.proto, q.process, q.where) == (
        "10.0.0.0/8",
        443,
        "tcp",
        "curl",
        "retrans > 0 and latency_ms>=2.5",
    )
    q = filter_query("host 2001:db8::1 port 53 proto udp process 443")
    assert (q.host, q.port, q.proto, q.process) == ("2001:db8::1", 53, "udp", "443")
    for text, message in (
        ("10.0.0.1 10.0.0.2", "/: one host at a time ('10.0.0.1' and '10.0.0.2')"),
        ("port 70000", "/: port 70000: a port is 0 to 65535"),
        ("bogus > 1", "/: where: unknown field 'bogus'"),
    ):
        with pytest.raises(UserError) as e:
            filter_query(text)
        assert str(e.value).startswith(message)
    now = 1_700_000_000 * 10**9
    assert window_of("", now) == (now - 900 * 10**9, now + 1)
    assert window_of("2h", now) == (now - 7200 * 10**9, now + 1)
    assert window_of("all", now) == (0, (1 << 63) - 1)
    assert window_of("2023-11-14T22:00:00Z 2023-11-14T22:10:00Z", now) == (now - 800 * 10**9, now - 200 * 10**9)
    with pytest.raises(UserError, match="FROM \\[TO\\], a duration \\(15m\\) or all"):
        window_of("a b c", now)


# --- live: the real dashboard in tmux, capturing in the netns lab with --sessions
@pytest.mark.live
def test_live_history_shows_a_session_that_just_ended(lab: Lab, tmp_path: Path) -> None:
    if shutil.which("tmux") is None or shutil.which("retrotap") is None:
        pytest.skip("needs tmux and the retrotap command on PATH")
    store = tmp_path / "sessions"
    tmux = Tmux(f"ip netns exec {lab.ns_a} retrotap -i {lab.veth_a} --sessions {store} --sessions-idle 1")
    try:
        tmux.wait_for(lambda t: "Interfaces" in t and lab.veth_a in t, "the dashboard")
        tmux.keys("8")
        tmux.wait_for(lambda t: "0 sessions" in t, "the empty History view")
        count = 40
        frame = bytes(
            Ether(dst=lab.mac_a, src=lab.mac_b) / IP(src=IP4_B, dst=IP4_A) / UDP(sport=4000, dport=5000) / bytes(100)
        )
        assert lab.send_frames([frame], repeat=count) == count
        # Idle for a second, written by the session writer, found by the view's next query (every 3 s).
        row = re.compile(rf"udp\s+{re.escape(IP4_B)}:4000\s+{re.escape(IP4_A)}:5000\s+{count}\s")
        tmux.wait_for(lambda t: row.search(t) is not None, f"the session of {count} packets")
        tmux.keys("q")
        assert tmux.wait_exit(), "retrotap did not quit on q"
    finally:
        tmux.close()
    (rec,) = store_rows(store, "sport = 4000 AND dport = 5000")
    assert (rec["src_packets"], rec["dst_packets"], rec["sport"], rec["dport"]) == (count, 0, 4000, 5000)
