"""SVG snapshots of the views (all but Processes) at 160×40, from tests/pcapgen's capture with a fixed clock.

Update the baselines after an intended change: pytest tests/unit/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from capture_backend.engine import Snapshot
from tui.screenshots import PCAP_NAME, SIZE, VIEWS, demo_app, demo_snapshots, show_view, write_demo_pcap


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, tuple[Snapshot, Snapshot]]:
    path = str(tmp_path_factory.mktemp("snap") / PCAP_NAME)
    write_demo_pcap(path)
    return path, demo_snapshots(path)


@pytest.mark.parametrize("view", list(VIEWS.values()), ids=list(VIEWS))
def test_view(
    snap_compare: Callable[..., bool], capture: tuple[str, tuple[Snapshot, Snapshot]], view: int
) -> None:
    path, snaps = capture
    app, feed = demo_app(path, snaps)

    async def run_before(pilot: Pilot[int]) -> None:
        await show_view(pilot, feed, snaps[1], view)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_baselines_exist() -> None:
    here = Path(__file__).parent / "__snapshots__" / "test_tui_snapshots"
    assert sorted(p.name for p in here.glob("*.svg")) == sorted(f"test_view[{v}].svg" for v in VIEWS)
