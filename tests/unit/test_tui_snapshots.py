"""SVG snapshots of the views (all but Processes) at 160×40, from tests/pcapgen's capture with a fixed clock; the
Overview also at 80×24 (the default SSH terminal) and 200×50, and the Incidents view at 80×24 over the incidents
the real watcher froze from a capture with a scan and a flood.

Update the baselines after an intended change: pytest tests/unit/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from capture_backend.engine import Snapshot
from tests.helpers.tui import wait_rows, watched_app
from tests.unit.test_alerts import capture as scan_capture
from tui.screenshots import PCAP_NAME, SIZE, VIEWS, demo_app, demo_snapshots, show_view, write_demo_pcap

OVERVIEW_SIZES = {"80x24": (80, 24), "200x50": (200, 50)}


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, tuple[Snapshot, Snapshot]]:
    path = str(tmp_path_factory.mktemp("snap") / PCAP_NAME)
    write_demo_pcap(path)
    return path, demo_snapshots(path)


@pytest.mark.parametrize("view", list(VIEWS.values()), ids=list(VIEWS))
def test_view(snap_compare: Callable[..., bool], capture: tuple[str, tuple[Snapshot, Snapshot]], view: int) -> None:
    path, snaps = capture
    app, feed = demo_app(path, snaps)

    async def run_before(pilot: Pilot[int]) -> None:
        await show_view(pilot, feed, snaps[1], view)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


@pytest.mark.parametrize("size", list(OVERVIEW_SIZES))
def test_overview_size(
    snap_compare: Callable[..., bool], capture: tuple[str, tuple[Snapshot, Snapshot]], size: str
) -> None:
    path, snaps = capture
    app, feed = demo_app(path, snaps)

    async def run_before(pilot: Pilot[int]) -> None:
        await show_view(pilot, feed, snaps[1], VIEWS["overview"])

    assert snap_compare(app, terminal_size=OVERVIEW_SIZES[size], run_before=run_before)


def test_incidents_view(snap_compare: Callable[..., bool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the view names its directory: a relative one, the same in every run
    scan_capture(tmp_path / "scan.pcap")
    app, feed, watcher, shown = watched_app("scan.pcap", "incidents")

    async def run_before(pilot: Pilot[int]) -> None:
        await show_view(pilot, feed, shown[-1], 9)
        await wait_rows(app, pilot, "incidents-table", 2 + len(watcher.status.active))

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_baselines_exist() -> None:
    here = Path(__file__).parent / "__snapshots__" / "test_tui_snapshots"
    expected = [f"test_view[{v}].svg" for v in VIEWS] + [f"test_overview_size[{s}].svg" for s in OVERVIEW_SIZES]
    assert sorted(p.name for p in here.glob("*.svg")) == sorted([*expected, "test_incidents_view.svg"])
