"""A capture that fails is never silent: restarts counted and shown, the error in full, the exit status set."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.all import IP, UDP, Ether, raw

from capture_backend.analysis.tables import CounterLimits
from capture_backend.capture.netlink import LinkInfo, LinkStats
from capture_backend.contract import RingStatus
from capture_backend.engine import Counting, IfaceStatus, Snapshot
from capture_backend.output.report import capture_health
from tests.lab import REPO_ROOT, Lab, wait_for_output
from tui.app import RetrotapApp, SnapshotFeed

# A `retrotap` whose counting fails on every batch holding a packet to port 5002 (a stand-in for any bug).
FAULTY_RETROTAP = """
import sys
from capture_backend import engine
from capture_backend.analysis.decode import decode
original = engine.Counting.add
def add(self, block):
    if (decode(block).dport == 5002).any():
        raise IndexError("injected fault in a batch to port 5002")
    return original(self, block)
engine.Counting.add = add
from tui.cli import main
sys.exit(main(sys.argv[1:]))
"""


def link(rx: int, tx: int, arphrd: int = 1) -> LinkInfo:
    return LinkInfo(3, "eth9", arphrd, True, True, "UP", LinkStats(0, 0, rx, tx, 0, 0, 0, 0, 0, 0, 0))


def snapshot(
    captured: int,
    received: int,
    rx: int,
    tx: int,
    t: float,
    *,
    restarts: int = 0,
    error: str = "",
    iface_error: str = "",
) -> Snapshot:
    base = Counting(CounterLimits(), True, "", lambda: t).freeze((), 0.0, {})
    iface = IfaceStatus(
        "eth9", "up", iface_error, captured, captured * 100, received, received - captured, 0, link(rx, tx)
    )
    return dataclasses.replace(base, time=t, packets=captured, interfaces=(iface,), restarts=restarts, last_error=error)


def test_coverage_compares_like_with_like() -> None:
    # The ring sees both directions: 600 rx + 400 tx on the link, 1000 in the ring, 950 counted.
    before = snapshot(0, 0, 0, 0, 100.0)
    now = snapshot(950, 1000, 600, 400, 101.0)
    h = capture_health(now, before, before, 101.0)
    assert h["coverage"] == 0.95
    assert h["ring_coverage"] == 1.0
    assert h["link_packets"] == 1000
    # Counters read at slightly different moments never make more than everything.
    ahead = snapshot(1000, 1000, 500, 400, 101.0)
    assert capture_health(ahead, before, before, 101.0)["ring_coverage"] == 1.0


def test_coverage_on_lo_counts_received_copies_only() -> None:
    before = dataclasses.replace(snapshot(0, 0, 0, 0, 100.0))
    lo = IfaceStatus("lo", "up", "", 500, 0, 500, 0, 0, link(500, 500, arphrd=772))
    now = dataclasses.replace(snapshot(500, 500, 500, 500, 101.0), interfaces=(lo,))
    assert capture_health(now, before, before, 101.0)["ring_coverage"] == 1.0


def banner_text(app: RetrotapApp) -> str:
    banner = app.query_one("#error-banner")
    return str(banner.render()) if banner.display else ""


def test_banner_shows_the_whole_error_and_the_drops_view_counts_restarts() -> None:
    message = "capture error: IndexError: index 33554433 is out of bounds (restart 2; traceback in /x/errors.log)"
    sick = snapshot(10, 10, 10, 0, 100.0, restarts=2, error=message, iface_error="")
    healthy = snapshot(10, 10, 10, 0, 100.0)

    async def run() -> None:
        feed = SnapshotFeed(healthy)
        app = RetrotapApp(feed, clock=lambda: 100.0)  # type: ignore[arg-type]
        async with app.run_test(size=(80, 24)) as pilot:
            assert banner_text(app) == ""
            feed.snapshot = dataclasses.replace(sick, seq=healthy.seq + 1)
            app.pull()
            await pilot.pause()
            assert banner_text(app) == f"capture restarted 2× — {message}"
            await pilot.press("5")
            await pilot.pause()
            table = app.query_one("#drops-table")
            rows = {str(table.get_row(r.key)[1]): str(table.get_row(r.key)[3]) for r in table.ordered_rows}  # type: ignore[attr-defined]
            assert rows["capture restarts"].strip() == "2"
            assert rows["unreadable ring frames"].strip() == "0"

    asyncio.run(run())


def test_the_drops_view_shows_each_capture_threads_ring() -> None:
    def with_rings(t: float, rings: tuple[RingStatus, ...]) -> Snapshot:
        snap = snapshot(sum(r.packets for r in rings), sum(r.received for r in rings), 0, 0, t)
        (iface,) = snap.interfaces
        return dataclasses.replace(snap, interfaces=(dataclasses.replace(iface, rings=rings),))

    before = with_rings(100.0, (RingStatus(0, 100, 0, 100, 0, 0, 1.0), RingStatus(1, 50, 0, 60, 10, 0, 2.0)))
    now = with_rings(102.0, (RingStatus(0, 300, 0, 300, 0, 0, 1.5), RingStatus(1, 250, 0, 290, 40, 0, 3.0)))

    async def run() -> None:
        feed = SnapshotFeed(before)
        app = RetrotapApp(feed, clock=lambda: 102.0)  # type: ignore[arg-type]
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.press("5")
            await pilot.pause()
            feed.snapshot = dataclasses.replace(now, seq=before.seq + 1, started=before.started)
            app.pull()
            await pilot.pause()
            table = app.query_one("#drops-table")
            rows = {
                str(table.get_row(r.key)[1]).strip(): (
                    str(table.get_row(r.key)[3]).strip(),
                    str(table.get_row(r.key)[4]).strip(),
                )  # type: ignore[attr-defined]
                for r in table.ordered_rows  # type: ignore[attr-defined]
            }
            assert rows["ring 0 received"][0] == "300" and rows["ring 1 received"][0] == "290"
            assert rows["ring 1 drops"] == ("40", "15.0/s")  # 30 more in 2 s
            assert rows["thread 1 CPU s"] == ("3.00", "50.0%")  # 1 s of CPU in 2 s: half a core
            assert rows["drops"][0] == "40"  # the interface's row sums its rings
            summary = str(app.query_one("#drops-summary").render())
            assert "2 capture threads CPU" in summary

    asyncio.run(run())


def udp_frames(lab: Lab, dport: int, n: int) -> list[bytes]:
    frame = raw(
        Ether(dst=lab.mac_a, src=lab.mac_b) / IP(src=lab.ip4_b, dst=lab.ip4_a) / UDP(sport=999, dport=dport) / b"x"
    )
    return [frame] * n


@pytest.mark.live
def test_a_failing_capture_loop_is_reported_restarted_and_sets_the_exit_status(lab: Lab, tmp_path: Path) -> None:
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path))
    proc = lab.popen_a(
        [sys.executable, "-c", FAULTY_RETROTAP, "stats", "-i", lab.veth_a, "--format", "json", "--interval", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    wait_for_output(proc, "listening on", timeout=30)
    # Three bursts far enough apart never to share a batch: the second one is lost to the fault.
    for dport, n in ((5001, 100), (5002, 200), (5003, 300)):
        assert lab.send_frames(udp_frames(lab, dport, n)) == n
        time.sleep(0.6)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    log = tmp_path / "retrotap" / "errors.log"
    assert proc.returncode == 1, err
    fault = "IndexError: injected fault in a batch to port 5002"
    assert f"error: capture error: {fault} (restart 1; traceback in {log})" in err
    assert "Traceback" not in err  # the traceback goes to the log file, the message to stderr
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "IndexError: injected fault in a batch to port 5002" in text
    last = [json.loads(line) for line in out.splitlines()][-1]
    restarts = last["capture"]["restarts"]
    assert restarts >= 1  # one per batch the burst was cut into
    assert text.count("IndexError: injected fault") == restarts
    assert "injected fault in a batch to port 5002" in last["capture"]["last_error"]
    assert last["totals"]["packets"] == 400  # the bursts before and after the failed batch
    ports = {f["dport"]: f["packets"] for f in last["flows"]}
    assert ports == {5001: 100, 5003: 300}
    assert [i["state"] for i in last["interfaces"]] == ["up"]
    assert last["capture"]["received"] == 600  # the ring got everything; the batch was lost in retrotap
