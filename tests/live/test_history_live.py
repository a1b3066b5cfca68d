"""The dashboard's time cursor over a live capture: three phases of real frames on the lab's veth, each with
its own top host pair and UDP port, then `[` back to a second of each phase (Pilot, the real engine)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from scapy.all import IP, UDP, Ether, raw

from capture_backend.run import Run, RunOptions
from tests.helpers.tui import SIZE, cells
from tests.lab import Lab
from tui.app import RetrotapApp
from tui.widgets.format import clock_time

pytestmark = pytest.mark.live

NS = 1_000_000_000
# (pair, UDP port, frames, frame size): each phase sends ten times the bytes of all before it, so its pair
# leads the Hosts view (10 s averages) and its port the Ports view (totals) once its second is complete.
PHASES = (
    (("10.0.1.1", "10.0.1.2"), 5001, 20, 200),
    (("10.0.2.1", "10.0.2.2"), 5002, 40, 1100),
    (("10.0.3.1", "10.0.3.2"), 5003, 360, 1400),
)


def frames(lab: Lab, pair: tuple[str, str], port: int, n: int, size: int) -> list[bytes]:
    pkt = Ether(dst=lab.mac_a, src=lab.mac_b) / IP(src=pair[0], dst=pair[1]) / UDP(sport=40000, dport=port)
    one = raw(pkt / (b"r" * (size - len(raw(pkt)))))
    assert len(one) == size
    return [one] * n


async def until(pilot: Any, condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await pilot.pause(0.05)


def test_the_cursor_shows_each_live_phase(lab: Lab) -> None:
    run = Run(RunOptions(interfaces=[f"{lab.ns_a}:{lab.veth_a}"], history_seconds=900, buffer_size=0), print)
    run.open()  # as the dashboard does: before its event loop runs (pyroute2 starts one of its own)
    app = RetrotapApp(run.engine, resolver=lambda addr: None, source=lab.veth_a, run=run)
    try:
        asyncio.run(_phases(lab, run, app))
    finally:
        app.close_engine()


async def _phases(lab: Lab, run: Run, app: RetrotapApp) -> None:
    ring = run.history
    assert ring is not None
    checkpoints: list[int] = []  # per phase: a kept second after its frames' second was complete
    async with app.run_test(size=SIZE) as pilot:
        sent = 0
        for pair, port, n, size in PHASES:
            batch = frames(lab, pair, port, n, size)
            assert await asyncio.to_thread(lab.send_frames, batch) == n
            sent += n

            def counted(sent: int = sent) -> bool:
                snap = run.snapshot
                ours = sum(p for proto, (p, _) in snap.protocols.items() if proto == 17)
                return ours >= sent

            await until(pilot, counted, "the frames were never counted")
            udp_last = run.snapshot.last_ns // NS

            def kept_after(second: int = udp_last, sent: int = sent) -> bool:
                entries = ring.entries()
                return bool(entries) and entries[-1].second > second

            await until(pilot, kept_after, "no second was kept after the phase")
            checkpoints.append(ring.entries()[-1].second)
        assert run.snapshot.kernel_drops == 0
        await until(pilot, lambda: ring.entries()[-1].second > checkpoints[-1], "no newer second was kept")
        for (pair, port, _, _), second in reversed(list(zip(PHASES, checkpoints, strict=True))):
            entry = next(e for e in ring.entries() if e.second == second)
            want = f"as of {clock_time(entry.time, entry.snap.time)}"
            for _ in range(len(ring)):  # bounded: at most every kept second
                label = app.query_one("#asof-badge")
                if label.display and str(label.render()) == want:
                    break
                await pilot.press("left_square_bracket")
                await pilot.pause()
            else:
                raise AssertionError(f"the cursor never reached {want}")
            await pilot.press("2")
            await pilot.pause()
            assert " ".join(cells(app, "hosts-table")[0][1].split()) == f"{pair[0]} => {pair[1]}"
            await pilot.press("3")
            await pilot.pause()
            assert cells(app, "ports-table")[0][1:3] == ["udp", str(port)]
        await pilot.press("L")
        await pilot.pause()
        assert not app.query_one("#asof-badge").display
        await asyncio.to_thread(run.close)  # off the event loop: pyroute2 runs a loop of its own
