"""Row selections: each view gives a typed selection for the row under the cursor (or None), W and i act on it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from capture_backend import contract
from capture_backend.analysis import services
from capture_backend.replay import FileEngine
from tui import app as app_module
from tui.feed import SnapshotFeed
from tui.selection import FlowSelection, HostSelection, PairSelection, PortSelection
from tui.widgets.view import View

CLOCK = 1_700_000_100.0


def test_selections_describe_what_they_select() -> None:
    assert FlowSelection("tcp", "10.0.0.1", 1234, "10.0.0.2", 80).describe() == "tcp 10.0.0.1:1234 10.0.0.2:80"
    assert PairSelection("10.0.0.1", "10.0.0.2").describe() == "10.0.0.1 <=> 10.0.0.2"
    assert HostSelection("10.0.0.1").describe() == "host 10.0.0.1"
    assert PortSelection("udp", 53).describe() == "udp port 53"
    assert callable(FlowSelection("47", "10.0.0.1", 0, "10.0.0.2", 0).selector())  # a protocol number
    assert callable(PortSelection("sctp", 9).selector())


def test_snapshot_feed_and_services_have_one_home() -> None:
    assert app_module.SnapshotFeed is SnapshotFeed
    assert services.service_table is contract.service_table
    assert services.proto_name is contract.proto_name


def _pcap(path: Path) -> str:
    frames = [
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80, flags="S"),
        Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=80, dport=1234, flags="SA"),
        Ether() / IP(src="10.0.0.1", dst="10.0.0.3") / UDP(sport=5353, dport=53) / DNS(qd=DNSQR(qname="a.example")),
    ]
    for n, f in enumerate(frames):
        f.time = CLOCK - 10 + n
    wrpcap(str(path), frames)
    return str(path)


def test_each_view_gives_a_typed_selection_or_none(tmp_path: Path) -> None:
    eng = FileEngine(_pcap(tmp_path / "sel.pcap"), clock=lambda: CLOCK)
    eng.open()
    eng.start()
    assert eng.wait(30)
    app = app_module.RetrotapApp(eng, clock=lambda: CLOCK, source="sel.pcap")
    got: dict[int, object] = {}

    async def run() -> None:
        async with app.run_test(size=(160, 50)) as pilot:
            for view in range(1, 8):
                await pilot.press(str(view))
                await pilot.pause()
                assert isinstance(app.view, View)
                got[view] = app.view.selection()

    try:
        asyncio.run(run())
    finally:
        eng.close()
    assert got[1] is None and got[5] is None and got[6] is None  # Interfaces, Drops, Processes: nothing to select
    assert isinstance(got[2], PairSelection) and {got[2].a, got[2].b} in (
        {"10.0.0.1", "10.0.0.2"},
        {"10.0.0.1", "10.0.0.3"},
    )
    assert isinstance(got[3], PortSelection) and (got[3].proto, got[3].port) in (("tcp", 80), ("udp", 53))
    assert isinstance(got[4], FlowSelection) and got[4].proto in ("tcp", "udp")
