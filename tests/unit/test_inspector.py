"""The packet inspector: time machine selection -> pcap -> tshark (pyshark JSON) -> list, tree, bytes."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from textual.widgets import Tree

from capture_backend.rewind.inspect import (
    TSHARK_MISSING,
    InspectorError,
    PacketView,
    decode_pcap,
    hexdump,
    inspect_packets,
)
from capture_backend.rewind.timemachine import TimeMachine, select_flow
from tests.helpers.tui import SIZE, cells, inspected, screen_text, sync, tm_app, wait_saved
from tests.pcapgen import Frame, block_of_frames, mixed_frames, write_pcap
from tui.app import RetrotapApp
from tui.widgets.inspector import InspectorScreen
from tui.widgets.table import SnapTable

TCP_PROTO = 6


def norm(addr: str) -> str:
    return str(ipaddress.ip_address(addr))


def flow_frames(frames: tuple[Frame, ...], a: str, aport: int, b: str, bport: int) -> list[int]:
    """Indexes of the frames of one TCP flow (either way), found with scapy."""
    ends = {(norm(a), aport), (norm(b), bport)}
    out = []
    for i, f in enumerate(frames):
        pkt = Ether(f.data)
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        tcp = pkt.getlayer(TCP)
        if ip is None or tcp is None:
            continue
        if {(norm(ip.src), int(tcp.sport)), (norm(ip.dst), int(tcp.dport))} == ends:
            out.append(i)
    return out


def first_tcp_flow(frames: tuple[Frame, ...]) -> tuple[str, int, str, int]:
    for f in frames:
        pkt = Ether(f.data)
        if IP in pkt and TCP in pkt:
            return str(pkt[IP].src), int(pkt[TCP].sport), str(pkt[IP].dst), int(pkt[TCP].dport)
    raise AssertionError("no TCP in the mix")


@pytest.fixture(scope="module")
def loaded() -> tuple[TimeMachine, tuple[Frame, ...]]:
    """A time machine holding the whole mix, in blocks of 100 packets."""
    frames = mixed_frames()
    tm = TimeMachine(8 << 20, seconds=3600)
    for k in range(0, len(frames), 100):
        part = frames[k : k + 100]
        tm.add(block_of_frames(part))
    return tm, frames


def labels_of(view: PacketView) -> list[str]:
    return [label for label, _ in view.tree]


def field_values(nodes: list[Any], key: str) -> list[str]:
    """Every value of a field anywhere in a tree ("key: value" labels)."""
    out = []
    for label, children in nodes:
        if label.startswith(f"{key}: "):
            out.append(label.split(": ", 1)[1])
        out += field_values(children, key)
    return out


def test_one_tcp_flow_decodes_to_exactly_its_packets(
    loaded: tuple[TimeMachine, tuple[Frame, ...]], tmp_path: Path
) -> None:
    tm, frames = loaded
    a, ap, b, bp = first_tcp_flow(frames)
    expected = flow_frames(frames, a, ap, b, bp)
    assert len(expected) > 3
    path = inspect_packets(tm, select_flow(TCP_PROTO, a, ap, b, bp), tmpdir=tmp_path)
    assert Path(path).parent == tmp_path
    views = decode_pcap(path)
    assert len(views) == len(expected)
    assert [v.number for v in views] == list(range(1, len(expected) + 1))
    assert [v.time_ns for v in views] == [frames[i].ts_ns for i in expected]
    assert [v.raw for v in views] == [frames[i].data for i in expected]
    client_first = [(v.source, v.destination) for v in views][0]
    assert client_first == (a, b)
    assert {(v.source, v.destination) for v in views} == {(a, b), (b, a)}
    assert all(v.protocol in ("TCP", "TLS", "HTTP", "SSH") for v in views)
    first = views[0]
    assert labels_of(first)[:4] == [
        f"Frame 1: {len(frames[expected[0]].data)} bytes (frame)",
        "Ethernet II (eth)",
        "Internet Protocol Version 4 (ip)",
        "Transmission Control Protocol (tcp)",
    ]
    tcp_tree = first.tree[3][1]
    assert field_values(tcp_tree, "tcp.srcport") == [str(ap)]
    assert field_values(tcp_tree, "tcp.dstport") == [str(bp)]
    assert field_values(tcp_tree, "tcp.flags.syn") == ["1"]
    assert first.info.startswith(f"{ap} → {bp} [SYN] Seq=0 ")


def test_the_limit_keeps_the_last_packets(loaded: tuple[TimeMachine, tuple[Frame, ...]], tmp_path: Path) -> None:
    tm, frames = loaded
    a, ap, b, bp = first_tcp_flow(frames)
    expected = flow_frames(frames, a, ap, b, bp)
    path = inspect_packets(tm, select_flow(TCP_PROTO, a, ap, b, bp), limit=3, tmpdir=tmp_path)
    views = decode_pcap(path, limit=10)
    assert [v.raw for v in views] == [frames[i].data for i in expected[-3:]]
    assert len(decode_pcap(path, limit=2)) == 2


def test_nothing_selected_and_no_tshark_are_one_line_errors(
    loaded: tuple[TimeMachine, tuple[Frame, ...]], tmp_path: Path
) -> None:
    tm, _ = loaded
    with pytest.raises(InspectorError, match="no packets of the selection"):
        inspect_packets(tm, select_flow(TCP_PROTO, "10.99.0.1", 1, "10.99.0.2", 2), tmpdir=tmp_path)
    pcap = tmp_path / "one.pcap"
    write_pcap(pcap, mixed_frames()[:5])
    with pytest.raises(InspectorError) as err:
        decode_pcap(pcap, tshark_path=str(tmp_path / "no-such-tshark"))
    assert str(err.value) == TSHARK_MISSING == "tshark is not installed: apt-get install tshark"


def test_hexdump() -> None:
    data = bytes(range(0x41, 0x41 + 18))
    assert hexdump(data).splitlines() == [
        "0000  41 42 43 44 45 46 47 48  49 4a 4b 4c 4d 4e 4f 50  ABCDEFGHIJKLMNOP",
        "0010  51 52                                             QR",
    ]


# --- the screen
def tcp_row(app: RetrotapApp) -> tuple[int, tuple[str, int, str, int]]:
    """The first TCP over IPv4 row of the Flows view and its ends."""
    for n, r in enumerate(cells(app, "flows-table")):
        if r[0] == "tcp" and "." in r[1]:
            return n, (r[1], int(r[2]), r[3], int(r[4]))
    raise AssertionError("no TCP flow shown")


@sync
async def test_i_on_a_flow_lists_its_packets_tree_and_bytes(pcap_path: str, tmp_path: Path) -> None:
    app, eng = tm_app(pcap_path, tmp_path)
    frames = mixed_frames()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        row, (a, ap, b, bp) = tcp_row(app)
        app.query_one("#flows-table", SnapTable).move_cursor(row=row)
        await pilot.press("i")
        screen = await inspected(app, pilot)
        expected = flow_frames(frames, a, ap, b, bp)
        assert screen.error == ""
        assert [p.raw for p in screen.packets] == [frames[i].data for i in expected]
        table = screen.query_one("#inspector-list")
        assert table.row_count == len(expected)  # type: ignore[attr-defined]
        assert f"{len(expected)} packets" in screen_text(app)
        await pilot.press("down")
        await pilot.pause()
        labels = screen.tree_labels()
        second = frames[expected[1]].data
        assert labels[:4] == [
            f"Frame 2: {len(second)} bytes (frame)",
            "Ethernet II (eth)",
            "Internet Protocol Version 4 (ip)",
            "Transmission Control Protocol (tcp)",
        ]
        assert hexdump(second).splitlines()[0] in screen_text(app)
        tree = screen.query_one("#inspector-tree", Tree)
        tcp_fields = [str(node.label) for node in tree.root.children[3].children]
        assert f"tcp.srcport: {bp}" in tcp_fields  # the second packet answers: from the server
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, InspectorScreen)
    eng.close()


@sync
async def test_I_picks_the_newest_snapshot_first(pcap_path: str, tmp_path: Path) -> None:
    app, eng = tm_app(pcap_path, tmp_path)
    frames = mixed_frames()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("4")
        row, (a, ap, b, bp) = tcp_row(app)
        app.query_one("#flows-table", SnapTable).move_cursor(row=row)
        await pilot.press("W")
        saved = await wait_saved(app, pilot)
        await pilot.press("I", "enter")  # the picker lists the newest file first
        screen = await inspected(app, pilot)
        assert screen.what == Path(saved.split(" (")[0]).name
        assert [p.raw for p in screen.packets] == [frames[i].data for i in flow_frames(frames, a, ap, b, bp)]
    eng.close()


@sync
async def test_i_without_tshark_says_how_to_get_it(
    pcap_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("capture_backend.rewind.inspect.shutil.which", lambda name: None)
    app, eng = tm_app(pcap_path, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        row, _ = tcp_row(app)
        app.query_one("#flows-table", SnapTable).move_cursor(row=row)
        await pilot.press("i")
        screen = await inspected(app, pilot)
        assert screen.error == TSHARK_MISSING
        assert TSHARK_MISSING in screen_text(app)
    eng.close()


@pytest.fixture(scope="module")
def pcap_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("inspector") / "mixed.pcap"
    write_pcap(path, mixed_frames())
    return str(path)
