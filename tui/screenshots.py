"""Regenerate screenshots/*.svg with the dashboard itself: `python -m tui.screenshots`.

The dashboard reads a generated pcap (fixed timestamps) and runs against a fixed clock, so the
pictures only change when the dashboard does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from textual.pilot import Pilot

from capture_backend.contract import Snapshot
from capture_backend.run import file_snapshots
from tui.app import RetrotapApp
from tui.feed import SnapshotFeed

T0 = 1_700_000_000.0  # the test capture's first packet (2023-11-14 22:13:20 UTC)
FIXED_CLOCK = T0 + 60.0
# View name → its key. Not 6 (Processes): a file's traffic has no local processes; not 9 (Incidents): a file's
# run has no incidents unless alert rules fire (tests/unit/test_tui_snapshots.py shoots one from a scan).
# 8 (History) is shot apart, over a session store written from the same capture, and 9 (Incidents) over the
# incidents the real watcher freezes from a capture with a scan and a flood (tests/unit/test_alerts.py).
VIEWS = {"overview": 0, "interfaces": 1, "hosts": 2, "ports": 3, "flows": 4, "drops": 5, "latency": 7}
SIZE = (160, 40)  # the Flows view's columns fit
PCAP_NAME = "capture.pcap"


def write_demo_pcap(path: str | Path) -> None:
    """The shared deterministic test capture (tests/pcapgen.py, scapy): ~60 s of mixed traffic."""
    from tests.pcapgen import write_mixed

    write_mixed(path)


def demo_snapshots(pcap: str) -> tuple[Snapshot, Snapshot]:
    """The capture's snapshot one second before its end, and the whole capture's (a fixed clock)."""
    snaps = list(file_snapshots(pcap, step_s=1.0, clock=lambda: FIXED_CLOCK))
    return (snaps[-2] if len(snaps) > 1 else snaps[-1]), snaps[-1]


def demo_app(pcap: str, snaps: tuple[Snapshot, Snapshot]) -> tuple[RetrotapApp, SnapshotFeed]:
    """The dashboard on the first snapshot, with a fixed clock and no name lookups."""
    feed = SnapshotFeed(snaps[0])
    app = RetrotapApp(feed, clock=lambda: FIXED_CLOCK, resolver=lambda addr: None, source=Path(pcap).name)
    return app, feed


async def show_view(pilot: Pilot[int], feed: SnapshotFeed, final: Snapshot, view: int) -> None:
    """Switch to a view, then let the dashboard refresh onto the final snapshot (rates need two)."""
    app = pilot.app
    assert isinstance(app, RetrotapApp)
    await pilot.press(str(view))
    feed.snapshot = final
    app.pull()
    await pilot.pause()


async def _shoot(pcap: str, out_dir: Path) -> list[Path]:
    snaps = demo_snapshots(pcap)
    written = []
    for view, n in VIEWS.items():
        app, feed = demo_app(pcap, snaps)
        async with app.run_test(size=SIZE) as pilot:
            await show_view(pilot, feed, snaps[1], n)
            path = out_dir / f"{n}-{view}.svg"
            app.save_screenshot(filename=path.name, path=str(out_dir))
            written.append(path)
    return written


def write_store(pcap: str, directory: str) -> None:
    """The capture's session records, as `retrotap stats -r FILE --sessions DIR` writes them."""
    argv = [sys.executable, "-m", "tui.cli", "stats", "-r", pcap, "--sessions", directory, "--format", "json"]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, TZ="UTC"))


async def _shoot_history(pcap: str, store: str, out_dir: Path) -> Path:
    from tui.widgets.history import HistoryView

    snaps = demo_snapshots(pcap)
    feed = SnapshotFeed(snaps[1])
    app = RetrotapApp(
        feed, clock=lambda: FIXED_CLOCK, resolver=lambda addr: None, source=Path(pcap).name, sessions_dir=store
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("8")
        for _ in range(500):  # the store is read on a worker thread: at most 10 s
            await pilot.pause(0.02)
            if app.query_one(HistoryView).queries:
                break
        await pilot.pause()
        path = out_dir / "8-history.svg"
        app.save_screenshot(filename=path.name, path=str(out_dir))
    return path


async def _shoot_incidents(tmp: str, out_dir: Path) -> Path:
    from tests.helpers.tui import wait_rows, watched_app
    from tests.unit.test_alerts import capture as scan_capture

    scan_capture(Path(tmp) / "scan.pcap")
    here = os.getcwd()
    os.chdir(tmp)  # the view names the incidents' directory: a relative one, the same in every run
    try:
        app, feed, watcher, shown = watched_app("scan.pcap", "incidents")
        async with app.run_test(size=SIZE) as pilot:
            await show_view(pilot, feed, shown[-1], 9)
            await wait_rows(app, pilot, "incidents-table", 2 + len(watcher.status.active))
            path = out_dir / "9-incidents.svg"
            app.save_screenshot(filename=path.name, path=str(out_dir))
    finally:
        os.chdir(here)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write one SVG per view into screenshots/."""
    parser = argparse.ArgumentParser(prog="python -m tui.screenshots", description=__doc__)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "screenshots"))
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pcap = str(Path(tmp) / PCAP_NAME)
        write_demo_pcap(pcap)
        for path in asyncio.run(_shoot(pcap, out_dir)):
            print(path)
        store = str(Path(tmp) / "sessions")
        write_store(pcap, store)
        print(asyncio.run(_shoot_history(pcap, store, out_dir)))
        print(asyncio.run(_shoot_incidents(tmp, out_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
