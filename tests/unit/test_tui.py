"""The dashboard driven by keys (App.run_test + Pilot), fed by FileEngine on tests/pcapgen's capture."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from textual.widgets import ContentSwitcher, DataTable, Label

from capture_backend.analysis.processes import EMPTY_UNKNOWN, ProcessMapper, ProcessTable, ProcessTotals
from capture_backend.analysis.tables import TableSnapshot
from capture_backend.capture.bpf import FilterError, compile_filter
from capture_backend.capture.pcapfile import FileSource
from capture_backend.engine import EngineEvent
from capture_backend.output.report import flow_rows
from capture_backend.replay import FileEngine, file_snapshots
from capture_backend.rewind.recorder import file_name
from capture_backend.rewind.timemachine import TimeMachine
from tests.helpers.latency import exchanges, nearest_rank
from tests.helpers.tcp_health import EXPECTED as TCP_EXPECTED
from tests.helpers.tcp_health import all_frames
from tests.helpers.tui import (
    FIXED_CLOCK,
    SIZE,
    cells,
    inspected,
    read_all,
    screen_text,
    snap_table,
    sync,
    tm_app,
    wait_saved,
)
from tests.lab import IP4_A, IP4_B, Lab
from tests.pcapgen import block_of, mixed_packets, wirelen, write_pcap
from tests.tmux import Tmux
from tui.app import RetrotapApp, SnapshotFeed
from tui.widgets.flow_detail import FlowDetail
from tui.widgets.format import size
from tui.widgets.help import HelpScreen
from tui.widgets.hosts import HostsView
from tui.widgets.inspector import InspectorScreen
from tui.widgets.interfaces import InterfacesView
from tui.widgets.pcap_picker import PcapPicker
from tui.widgets.prompt import PromptBar
from tui.widgets.table import SnapTable

NS = 1_000_000_000
BAD_FILTER = "port 99999999"


@pytest.fixture(scope="module")
def packets() -> list[Packet]:
    """The shared deterministic mix (the same the pcap holds)."""
    return mixed_packets()


@pytest.fixture(scope="module")
def pcap(tmp_path_factory: pytest.TempPathFactory, packets: list[Packet]) -> str:
    path = tmp_path_factory.mktemp("tui") / "mixed.pcap"
    write_pcap(path, packets)
    return str(path)


def make_app(engine: object, resolver: dict[str, str] | None = None) -> RetrotapApp:
    names = resolver or {}
    return RetrotapApp(engine, clock=lambda: FIXED_CLOCK, resolver=names.get, source="mixed.pcap")  # type: ignore[arg-type]


def column(app: RetrotapApp, table_id: str, key: str) -> list[str]:
    """One column's cells, top to bottom."""
    table = snap_table(app, table_id)
    index = [c.key for c in table.spec].index(key)
    return [row[index] for row in cells(app, table_id)]


# --- what the capture holds, computed with scapy (independently of the backend)
def ip_ends(pkt: Packet) -> tuple[str, str] | None:
    """Source and destination of an IP packet whose header is complete."""
    layer = pkt.getlayer(IP) or pkt.getlayer(IPv6)
    if layer is None:
        return None
    if wirelen(pkt) > len(bytes(pkt)):  # a truncated frame: is the IP header whole?
        start = len(bytes(pkt)) - len(bytes(layer))
        if len(bytes(pkt)) < start + (20 if isinstance(layer, IP) else 40):
            return None
    return str(layer.src), str(layer.dst)


def sent_bytes(packets: list[Packet]) -> Counter[str]:
    """Wire bytes each host sent."""
    out: Counter[str] = Counter()
    for pkt in packets:
        ends = ip_ends(pkt)
        if ends is not None:
            out[ends[0]] += wirelen(pkt)
    return out


def udp_flows(packets: list[Packet], port: int) -> set[tuple[str, int, str, int]]:
    """UDP conversations with `port` at one end, as (client, client port, server, port)."""
    out = set()
    for pkt in packets:
        udp = pkt.getlayer(UDP)
        ends = ip_ends(pkt)
        if udp is None or ends is None or port not in (udp.sport, udp.dport):
            continue
        if udp.dport == port:
            out.add((ends[0], int(udp.sport), ends[1], port))
        else:
            out.add((ends[1], int(udp.dport), ends[0], port))
    return out


@pytest.fixture
def engine(pcap: str) -> Iterator[FileEngine]:
    eng = read_all(pcap)
    yield eng
    eng.close()


# --- views
@sync
async def test_number_keys_switch_views_and_show_the_capture(engine: FileEngine, packets: list[Packet]) -> None:
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        assert app.query_one(ContentSwitcher).current == "overview"
        assert app.query_one("#tab-0").has_class("-active")
        await pilot.press("1")
        assert app.query_one(ContentSwitcher).current == "interfaces"
        assert cells(app, "interfaces-table")[0][:2] == ["mixed.pcap", "file"]

        await pilot.press("2")
        assert app.query_one(ContentSwitcher).current == "hosts"
        assert app.query_one("#tab-2").has_class("-active")
        # By source, sorted by total: the biggest senders with exactly what they sent.
        await pilot.press("a")
        view = app.query_one(HostsView)
        while view.sort_key is not None and view.sort_key.column != "total":
            await pilot.press("s")
        top = sent_bytes(packets).most_common(5)
        shown = cells(app, "hosts-table")[:5]
        assert [row[1].split()[0] for row in shown] == [host for host, _ in top]
        assert [row[-1] for row in shown] == [size(n) for _, n in top]

        await pilot.press("3")
        assert app.query_one(ContentSwitcher).current == "ports"
        rows = {(r[1], r[2]): r for r in cells(app, "ports-table")}
        dns = sum(wirelen(p) for p in packets if UDP in p and 53 in (p[UDP].sport, p[UDP].dport))
        assert rows[("udp", "53")][3] == "domain"
        assert rows[("udp", "53")][-1] == size(dns)
        https = [p for p in packets if TCP in p and 443 in (p[TCP].sport, p[TCP].dport) and ip_ends(p)]
        assert rows[("tcp", "443")][3] == "https"
        assert rows[("tcp", "443")][-2] == f"{len(https):,}"

        await pilot.press("4")
        assert app.query_one(ContentSwitcher).current == "flows"
        assert "Flows" in screen_text(app)

        await pilot.press("5")
        assert app.query_one(ContentSwitcher).current == "drops"
        drops = {r[1]: r[3] for r in cells(app, "drops-table")}
        assert drops["malformed packets"] == str(engine.snapshot.malformed)
        assert drops["flow-table evictions"] == "0"


@sync
async def test_slash_filter_narrows_flows_to_exactly_the_matching_ones(
    engine: FileEngine, packets: list[Packet]
) -> None:
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4", "slash", *"udp 53 10.1.0.1", "enter")
        shown = {(r[1], int(r[2]), r[3], int(r[4])) for r in cells(app, "flows-table")}
        expected = {f for f in udp_flows(packets, 53) if f[0] == "10.1.0.1"}
        assert shown == expected and len(expected) > 1
        assert all(r[0] == "udp" for r in cells(app, "flows-table"))
        assert app.text_query == "udp 53 10.1.0.1"
        assert f"{len(expected)} of {len(expected)} flows" in screen_text(app)
        # Escape while editing puts the previous filter back; an empty filter shows everything again.
        await pilot.press("slash", *" tcp", "escape")
        assert app.text_query == "udp 53 10.1.0.1"
        await pilot.press("slash", *["backspace"] * 15, "enter")
        assert app.text_query == ""
        assert len(cells(app, "flows-table")) > len(shown)


@sync
async def test_s_cycles_the_sort_column_and_S_reverses_it(engine: FileEngine) -> None:
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        view = app.query_one("#flows")
        assert view.sort_key.column == "total"  # type: ignore[attr-defined]
        while view.sort_key.column != "sport":  # type: ignore[attr-defined]
            await pilot.press("s")
        every = sorted(r["sport"] for r in flow_rows(engine.snapshot, top=0))
        shown = [int(p or 0) for p in column(app, "flows-table", "sport")]
        assert shown == every[: len(shown)]
        header = next(line for line in screen_text(app).splitlines() if "Proto" in line)
        assert "SPort ▲" in header  # the column widens for the arrow rather than cutting it off
        await pilot.press("S")
        shown = [int(p or 0) for p in column(app, "flows-table", "sport")]
        assert shown == sorted(every, reverse=True)[: len(shown)]
        assert "SPort ▼" in screen_text(app)
        await pilot.press("s", "s")  # on to DPort (the next column but one), ascending again
        assert view.sort_key.column == "dport"  # type: ignore[attr-defined]
        dports = [int(p or 0) for p in column(app, "flows-table", "dport")]
        assert dports == sorted(dports)


@sync
async def test_only_the_rows_that_fit_are_formatted(engine: FileEngine) -> None:
    app = make_app(engine)
    async with app.run_test(size=(120, 24)) as pilot:
        await pilot.press("4")
        table = app.query_one("#flows-table", SnapTable)
        assert len(engine.snapshot.flows) > 100
        assert table.row_count == table.capacity() < 24


@sync
async def test_p_pauses_the_display_while_the_snapshot_changes(pcap: str) -> None:
    udp_only = read_all(pcap, "udp")
    everything = read_all(pcap)
    app = make_app(udp_only)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await pilot.pause()
        before = cells(app, "ports-table")
        assert {r[1] for r in before} == {"udp"}
        await pilot.press("p")
        assert "PAUSED" in screen_text(app)
        udp_only.snapshot = everything.snapshot  # the capture goes on underneath
        app.pull()
        await pilot.pause()
        assert cells(app, "ports-table") == before
        assert f"{udp_only.snapshot.packets:,} pkts" not in screen_text(app)
        await pilot.press("p")
        assert "PAUSED" not in screen_text(app)
        assert "tcp" in {r[1] for r in cells(app, "ports-table")}
        assert f"{everything.snapshot.packets:,} pkts" in screen_text(app)
    everything.close()


@sync
async def test_question_mark_lists_every_binding(engine: FileEngine) -> None:
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for key, what in app.key_help():
            assert f"{key}   {what}" in text
        assert {b.key for b in app.BINDINGS} >= {
            "0",
            "1",
            "2",
            "3",
            "4",
            "5",
            "6",
            "7",
            "9",
            "exclamation_mark",
            "slash",
            "s",
            "S",
            "p",
            "f",
            "n",
            "q",
        }  # type: ignore[union-attr]
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


@sync
async def test_invalid_live_filter_shows_libpcaps_message_and_keeps_the_old_one(engine: FileEngine) -> None:
    with pytest.raises(FilterError) as expected:
        compile_filter(BAD_FILTER, 1)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        packets = engine.snapshot.packets
        await pilot.press("f", *BAD_FILTER, "enter")
        prompt = app.query_one(PromptBar)
        assert prompt.display
        assert str(expected.value) in screen_text(app)
        assert "port 99999999" in str(expected.value)
        assert engine.filter_expr == ""
        assert engine.snapshot.packets == packets
        await pilot.press("escape")
        assert not prompt.display


@sync
async def test_valid_live_filter_rereads_with_it(pcap: str) -> None:
    engine = read_all(pcap)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f", *"tcp port 443", "enter")
        assert engine.filter_expr == "tcp port 443"
        assert engine.wait(30)
        app.pull()
        await pilot.press("3")
        assert [(r[1], r[2]) for r in cells(app, "ports-table")] == [("tcp", "443")]
        assert "bpf: tcp port 443" in screen_text(app)


async def open_detail(app: RetrotapApp, pilot: Any, query: str) -> str:
    """Close a detail panel if one is open, filter the Flows view by `query`, open the first row's detail;
    the screen's text."""
    previous = app.screen if isinstance(app.screen, FlowDetail) else None
    if previous is not None:
        await pilot.press("escape")
        for _ in range(100):  # the panel is popped at a later turn of the event loop
            if app.screen is not previous:
                break
            await pilot.pause(0.01)
    await pilot.press("4", "slash", "ctrl+u", *query, "enter", "enter")
    # The new panel is pushed, composed, then filled after a refresh: wait for its flow's title.
    for _ in range(200):
        await pilot.pause(0.01)
        screen = app.screen
        if isinstance(screen, FlowDetail) and screen is not previous:
            titles = list(screen.query("#flow-detail-title").results(Label))
            if titles and str(titles[0].content) != "Flow":  # show() has named the flow
                break
    assert isinstance(app.screen, FlowDetail) and app.screen is not previous
    return screen_text(app)


@sync
async def test_enter_opens_the_selected_flows_detail(engine: FileEngine) -> None:
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await open_detail(app, pilot, "udp 53 10.1.0.1")
        client, cport, server, _ = (cells(app, "flows-table")[0][i] for i in (1, 2, 3, 4))
        text = screen_text(app)
        assert f"udp {client}:{cport} → {server}:53" in text
        assert f"{server} port 53 (domain)" in text
        assert f"{client} port {cport}" in text
        await pilot.press("escape")
        assert not isinstance(app.screen, FlowDetail)


@sync
async def test_n_shows_names_once_the_resolver_answers(engine: FileEngine) -> None:
    app = make_app(engine, resolver={"192.0.2.2": "web2.example"})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2", "a")
        hosts = column(app, "hosts-table", "pair")
        assert any(h.startswith("192.0.2.2 ") for h in hosts)
        await pilot.press("n")
        for _ in range(200):  # the worker thread answers; the screen never waits for it
            if app.names.idle():
                break
            await pilot.pause(0.01)
        app.pull()
        await pilot.pause()
        hosts = column(app, "hosts-table", "pair")
        assert any(h.startswith("web2.example ") for h in hosts)
        assert not any(h.startswith("192.0.2.2 ") for h in hosts)
        assert any(h.startswith("192.0.2.1 ") for h in hosts)  # no answer: stays numeric


def packets_in(path: str) -> list[bytes]:
    out = []
    with FileSource(path) as src:
        for b in src.blocks():
            out += [b.data[s : s + c].tobytes() for s, c in zip(b.start.tolist(), b.caplen.tolist(), strict=True)]
    return out


@sync
async def test_w_writes_the_buffered_past_and_shows_where(pcap: str, tmp_path: Path) -> None:
    app, eng = tm_app(pcap, tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("w")
        saved = await wait_saved(app, pilot)
        path = saved.split(" (")[0]
        assert Path(path).parent == tmp_path and Path(path).name.startswith("retrotap-mixed.pcap-")
        original = packets_in(pcap)
        assert packets_in(path) == original
        # A pcap: 24-byte header, then 16 bytes before each packet.
        assert Path(path).stat().st_size == 24 + sum(16 + len(p) for p in original)
        assert f"({len(original)} packets" in saved
        assert f"saved {Path(path).name} ({len(original):,} pkts, {size(Path(path).stat().st_size)})" in screen_text(
            app
        )
    eng.close()


@sync
async def test_W_writes_only_the_selected_port(pcap: str, tmp_path: Path, packets: list[Packet]) -> None:
    app, eng = tm_app(pcap, tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("3")
        table = app.query_one("#ports-table", SnapTable)
        row = next(n for n, r in enumerate(cells(app, "ports-table")) if (r[1], r[2]) == ("udp", "53"))
        table.move_cursor(row=row)
        await pilot.press("W")
        saved = await wait_saved(app, pilot)
        written = packets_in(saved.split(" (")[0])
        dns = [bytes(p) for p in packets if UDP in p and 53 in (p[UDP].sport, p[UDP].dport) and ip_ends(p)]
        assert written == dns
        assert "[udp port 53]" in saved
    eng.close()


@sync
async def test_W_without_a_selection_says_what_to_do(engine: FileEngine) -> None:
    app = make_app(engine)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("1", "W")  # Interfaces: nothing to select
        await pilot.pause()
        assert "select a flow, host pair, host or port first" in screen_text(app)


@sync
async def test_R_records_what_arrives_until_pressed_again(engine: FileEngine, tmp_path: Path) -> None:
    tm = TimeMachine(4 << 20, seconds=3600)
    early = [bytes(Ether() / IP(src="10.7.0.1", dst="10.7.0.2") / UDP(sport=1, dport=2) / b"early")]
    tm.add(block_of(early))  # already in the pool when R is pressed: left to snapshots
    feed = SnapshotFeed(engine.snapshot)
    app = RetrotapApp(feed, clock=lambda: FIXED_CLOCK, timemachine=tm, record_dir=str(tmp_path / "rec"))  # type: ignore[arg-type]
    sent = [bytes(Ether() / IP(src="10.7.0.1", dst="10.7.0.2") / UDP(sport=1, dport=2) / (b"r" * n)) for n in range(40)]
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("R")
        await pilot.pause()
        assert app.capture_run.recording is not None
        # Packet times near the clock the recorder closes minute files by, 30 s ahead: no boundary while we test.
        t0 = (time.time_ns() // NS + 30) * NS
        tm.add(block_of(sent[:25], ts_ns=[t0 + i for i in range(25)]))
        tm.add(block_of(sent[25:], ts_ns=[t0 + 25 + i for i in range(15)]))
        for _ in range(200):
            await pilot.pause(0.02)
            if app.capture_run.recording[0].stats.packets == 40:
                break
        app.render_view()
        assert "REC " in screen_text(app)
        await pilot.press("R")
        await pilot.pause()
        assert app.capture_run.recording is None
    files = sorted((tmp_path / "rec").glob("*.pcap"))
    assert [p.name for p in files] == [file_name("test0", t0)]
    assert re.fullmatch(r"test0-\d{8}T\d{6}\.000000Z\.pcap", files[0].name)
    assert packets_in(str(files[0])) == sent
    assert not list((tmp_path / "rec").glob("*.partial"))


@sync
async def test_engine_events_from_another_thread_become_notifications(engine: FileEngine) -> None:
    app = make_app(engine)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        assert engine.on_event is not None
        sink = engine.on_event
        t = threading.Thread(target=sink, args=(EngineEvent("iface-gone", "veth9", "interface veth9 was removed"),))
        t.start()
        t.join()
        await pilot.pause()
        await pilot.pause()
        assert "interface veth9 was removed" in screen_text(app)


@sync
async def test_command_palette_lists_the_same_actions(engine: FileEngine) -> None:
    app = make_app(engine)
    async with app.run_test(size=SIZE):
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for b in app.BINDINGS:
            if b.action != "quit":  # type: ignore[union-attr]
                assert f"{b.description} ({b.key_display or b.key})" in titles  # type: ignore[union-attr]


@sync
async def test_lab_addresses_stay_numeric_without_answers(tmp_path: Path) -> None:
    frames = [Ether() / IP(src=IP4_B, dst=IP4_A) / UDP(sport=4000, dport=5000) / bytes(100) for _ in range(5)]
    for i, f in enumerate(frames):
        f.time = 1_700_000_000 + i
    path = tmp_path / "lab.pcap"
    write_pcap(path, frames)
    snaps = list(file_snapshots(str(path), clock=lambda: FIXED_CLOCK))
    app = make_app(SnapshotFeed(snaps[-1]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n", "2")
        assert column(app, "hosts-table", "pair")[0].split() == [IP4_A, "=>", IP4_B]


@sync
async def test_a_timer_tick_after_the_views_are_gone_draws_nothing(engine: FileEngine) -> None:
    """Quitting removes the views while the refresh timer may still fire once: no error, the snapshot kept."""
    feed = SnapshotFeed(engine.snapshot)
    app = make_app(feed)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        shown = app.snap
        await app.query_one(InterfacesView).remove()
        feed.snapshot = replace(engine.snapshot, seq=engine.snapshot.seq + 1)  # a newer one arrives
        app.pull()
        assert app.snap is shown and not app.query(InterfacesView)


# --- TCP health and application latency: tests/test_tcp_health.py's sessions (their tshark-checked
# figures) and tests/test_latency.py's DNS, HTTP and MySQL exchanges, in one capture
DNS_V4_MS = [2, 4, 6, 8, 10, 12.5, 200, 1230]  # test_latency.exchanges(): 10.7.0.53
DNS_V6_MS = [3]  # 2001:db8:7::53
FlowKey = tuple[str, str, int, str, int]


@pytest.fixture(scope="module")
def health_pcap(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("health") / "health.pcap"
    write_pcap(path, sorted(exchanges() + all_frames(), key=lambda f: f.ts_ns), nanosecond=True)
    return str(path)


@pytest.fixture
def health_engine(health_pcap: str) -> Iterator[FileEngine]:
    eng = read_all(health_pcap)
    yield eng
    eng.close()


def flow_cells(app: RetrotapApp) -> dict[FlowKey, dict[str, str]]:
    """The Flows table by (proto, client, client port, server, port): column key → cell text."""
    table = app.query_one("#flows-table", SnapTable)
    keys = [c.key for c in table.spec]
    out = {}
    for row in cells(app, "flows-table"):
        by = dict(zip(keys, row, strict=True))
        out[(by["proto"], by["src"], int(by["sport"]), by["dst"], int(by["dport"]))] = by
    return out


def rtt_text(ms: float | None) -> str:
    """How the RTT and Lat columns write milliseconds: three significant digits, blank when unknown."""
    if ms is None:
        return ""
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:,.0f}"


async def sort_by(pilot: Any, view: Any, column: str) -> None:
    for _ in range(len(view.sort_keys)):
        if view.sort_key.column == column:
            return
        await pilot.press("s")
    raise AssertionError(f"no sort key {column}")


@sync
async def test_flows_show_tcp_health_and_latency_per_flow(health_engine: FileEngine) -> None:
    app = make_app(health_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        flows = flow_cells(app)
        assert len(flows) == len(health_engine.snapshot.flows) == len(TCP_EXPECTED) + 10  # + the exchanges
        for (client, cport, server, sport), (retr, ooo, dup, _, _, rtt) in TCP_EXPECTED.items():
            row = flows[("tcp", client, cport, server, sport)]
            assert (row["retrans"], row["ooo"], row["dupack"], row["rtt"]) == (
                str(retr),
                str(ooo),
                str(dup),
                rtt_text(rtt),
            )
            assert row["lat"] == ""  # no application exchange in these sessions
        # Literally, for two of them: fast retransmission after three duplicate ACKs; reordering, no handshake.
        f = flows[("tcp", "10.9.0.6", 40006, "192.0.2.13", 80)]
        assert (f["retrans"], f["ooo"], f["dupack"], f["rtt"]) == ("2", "0", "3", "10.0")
        e = flows[("tcp", "10.9.0.5", 40005, "192.0.2.12", 80)]
        assert (e["retrans"], e["ooo"], e["rtt"]) == ("1", "1", "")
        # Application latency: the mean of each flow's exchanges; TCP columns blank for UDP.
        http = flows[("tcp", "10.7.0.1", 41000, "10.7.0.80", 80)]
        assert (http["retrans"], http["rtt"], http["lat"]) == ("0", "2.00", "64.5")
        mysql = flows[("tcp", "10.7.0.1", 42000, "10.7.0.33", 3306)]
        assert (mysql["rtt"], mysql["lat"]) == ("1.00", "150.8")
        assert flows[("tcp", "2001:db8:7::1", 41001, "2001:db8:7::80", 8080)]["lat"] == "7.00"
        dns = {
            cport: flows[("udp", c, cport, s, 53)]
            for c, cport, s in (
                ("10.7.0.1", 33001, "10.7.0.53"),
                ("10.7.0.1", 33002, "10.7.0.53"),
                ("10.7.0.1", 33003, "10.7.0.53"),
                ("10.7.0.3", 33006, "10.7.0.53"),
                ("2001:db8:7::1", 33005, "2001:db8:7::53"),
            )
        }
        assert {p: r["lat"] for p, r in dns.items()} == {
            33001: "12.5",  # one exchange of 12.5 ms
            33002: "1,230",  # the re-sent query: timed from the first
            33003: "",  # never answered
            33006: "6.00",  # 2, 4, 6, 8, 10 ms
            33005: "3.00",
        }
        for r in dns.values():
            assert (r["retrans"], r["ooo"], r["dupack"], r["rtt"]) == ("", "", "", "")


@sync
async def test_s_sorts_flows_by_health_and_latency_blanks_last(health_engine: FileEngine) -> None:
    app = make_app(health_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        view = app.query_one("#flows")
        await sort_by(pilot, view, "retrans")
        retr = column(app, "flows-table", "retrans")
        tcp_retr = sorted((h[0] for h in TCP_EXPECTED.values()), reverse=True)
        assert [int(r) for r in retr[: len(tcp_retr)]] == tcp_retr  # 2, 2, 2, 1, 1, 1, 0
        assert retr[0] == "2" and "Retr ▼" in screen_text(app)
        assert retr.count("") == 7 and set(retr[-7:]) == {""}  # the UDP flows (DNS): last
        await pilot.press("s", "s")  # OOO, then DupAck
        assert view.sort_key.column == "dupack"  # type: ignore[attr-defined]
        assert column(app, "flows-table", "dupack")[:2] == ["3", "1"]
        await pilot.press("s")
        assert view.sort_key.column == "rtt"  # type: ignore[attr-defined]
        measured = sorted((h[5] for h in TCP_EXPECTED.values() if h[5] is not None), reverse=True) + [2.0, 1.0, 1.0]
        measured.sort(reverse=True)
        rtts = column(app, "flows-table", "rtt")
        assert rtts[: len(measured)] == [rtt_text(v) for v in measured]
        assert rtts[0] == "50.0" and set(rtts[len(measured) :]) == {""}
        await pilot.press("S")  # shortest first, the unmeasured still last
        rtts = column(app, "flows-table", "rtt")
        assert rtts[: len(measured)] == [rtt_text(v) for v in sorted(measured)]
        assert rtts[0] == "1.00" and set(rtts[len(measured) :]) == {""}
        assert "RTT ▲" in screen_text(app)
        await pilot.press("s")
        assert view.sort_key.column == "lat"  # type: ignore[attr-defined]
        lat = column(app, "flows-table", "lat")
        assert lat[:9] == ["1,230", "200.0", "150.8", "64.5", "12.5", "7.00", "6.00", "3.00", ""]


def detail_line(text: str, label: str) -> str:
    """The value after a label in the flow detail panel."""
    found = re.search(rf"│\s+{re.escape(label)}  (.+?)\s*│", text)
    assert found is not None, f"{label} not in the panel:\n{text}"
    return found.group(1)


@sync
async def test_flow_detail_shows_tcp_health_and_application_latency(health_engine: FileEngine) -> None:
    app = make_app(health_engine)
    async with app.run_test(size=SIZE) as pilot:
        text = await open_detail(app, pilot, "10.9.0.1")
        assert "tcp 10.9.0.1:40001 → 192.0.2.10:80" in text and "TCP health" in text
        assert "Application latency" not in text
        got = {
            k: detail_line(text, k)
            for k in ("Retransmissions", "Out-of-order", "Duplicate ACKs", "Zero windows", "Resets", "Handshake RTT")
        }
        assert got == {
            "Retransmissions": "2",
            "Out-of-order": "0",
            "Duplicate ACKs": "0",
            "Zero windows": "2",
            "Resets": "1",
            "Handshake RTT": "50.0 ms",
        }
        text = await open_detail(app, pilot, "10.9.0.4")
        assert detail_line(text, "Handshake RTT") == "not measured (handshake not seen)"
        assert detail_line(text, "Duplicate ACKs") == "1"

        text = await open_detail(app, pilot, "3306")
        assert "tcp 10.7.0.1:42000 → 10.7.0.33:3306" in text
        assert detail_line(text, "Exchanges") == "2 (request → first response packet)"
        assert detail_line(text, "Mean") == "150.8 ms"  # (300 + 1.5) / 2
        assert detail_line(text, "Max") == "300.0 ms"
        assert detail_line(text, "Handshake RTT") == "1.00 ms"

        text = await open_detail(app, pilot, "33006")
        assert "udp 10.7.0.3:33006 → 10.7.0.53:53" in text
        assert "TCP health" not in text and "Retransmissions" not in text
        assert detail_line(text, "Exchanges") == "5 (request → first response packet)"
        assert (detail_line(text, "Mean"), detail_line(text, "Max")) == ("6.00 ms", "10.0 ms")


@sync
async def test_latency_view_per_service_server_and_the_slowest(health_engine: FileEngine) -> None:
    dns = DNS_V4_MS + DNS_V6_MS
    # Nearest rank over 2, 3, 4, 6, 8, 10, 12.5, 200, 1230: the 5th and the 9th.
    assert (nearest_rank(dns, 0.5), nearest_rank(dns, 0.95)) == (8, 1230)
    app = make_app(health_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("7")
        assert app.query_one(ContentSwitcher).current == "latency"
        assert app.query_one("#tab-7").has_class("-active")
        text = screen_text(app)
        assert "14 exchanges (request → first response packet), 0 requests unanswered" in text
        services = cells(app, "latency-services")
        assert services == [  # by exchanges; the tie (2 and 2) by row: the service answered first
            ["dns", "udp/53", "9", "8.00", "1,230", "1,230", "163.9"],  # mean 1475.5 / 9
            ["http", "tcp/80", "2", "30.0", "99.0", "99.0", "64.5"],
            ["mysql", "tcp/3306", "2", "1.50", "300.0", "300.0", "150.8"],
            ["http", "tcp/8080", "1", "7.00", "7.00", "7.00", "7.00"],
        ]
        servers = {(r[0], r[1], r[2]): r[3:] for r in cells(app, "latency-servers")}
        assert servers == {
            ("dns", "10.7.0.53", "udp/53"): ["8", "8.00", "1,230", "1,230", "184.1"],  # mean 1472.5 / 8
            ("mysql", "10.7.0.33", "tcp/3306"): ["2", "1.50", "300.0", "300.0", "150.8"],
            ("http", "10.7.0.80", "tcp/80"): ["2", "30.0", "99.0", "99.0", "64.5"],
            ("http", "2001:db8:7::80", "tcp/8080"): ["1", "7.00", "7.00", "7.00", "7.00"],
            ("dns", "2001:db8:7::53", "udp/53"): ["1", "3.00", "3.00", "3.00", "3.00"],
        }
        slowest = cells(app, "latency-slowest")
        assert len(slowest) == 14
        assert slowest[:5] == [
            ["dns", "1,230", "22:13:21.250", "10.7.0.1", "10.7.0.53:53", "slow.example A"],
            ["mysql", "300.0", "22:13:20.310", "10.7.0.1", "10.7.0.33:3306", "SELECT * FROM orders WHERE total > 100"],
            ["dns", "200.0", "22:13:28.200", "10.7.0.1", "10.7.0.53:53", "again.example A"],
            ["http", "99.0", "22:13:20.140", "10.7.0.1", "10.7.0.80:80", "HEAD /x HTTP/1.1"],
            ["http", "30.0", "22:13:20.035", "10.7.0.1", "10.7.0.80:80", "GET /index.html HTTP/1.1"],
        ]
        assert ["http", "7.00", "22:13:20.019", "2001:db8:7::1", "[2001:db8:7::80]:8080", "GET /v6 HTTP/1.1"] in slowest
        assert slowest[-1] == ["mysql", "1.50", "22:13:20.321", "10.7.0.1", "10.7.0.33:3306", "SELECT 1"]
        assert "SELECT * FROM orders WHERE total > 100" in screen_text(app)


@sync
async def test_latency_view_sorts_with_s_and_filters_with_slash(health_engine: FileEngine) -> None:
    app = make_app(health_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("7", "s")
        assert app.view.sort_key.column == "p50"  # type: ignore[union-attr]
        assert column(app, "latency-services", "port") == ["tcp/80", "udp/53", "tcp/8080", "tcp/3306"]
        assert column(app, "latency-services", "p50") == ["30.0", "8.00", "7.00", "1.50"]
        assert "p50 ms ▼" in screen_text(app) and "sort p50 ▼" in screen_text(app)
        await pilot.press("S")
        assert column(app, "latency-servers", "p50") == ["1.50", "3.00", "7.00", "8.00", "30.0"]
        await pilot.press("s", "s", "s")  # p95, max, mean (largest first again)
        assert app.view.sort_key.column == "mean"  # type: ignore[union-attr]
        assert column(app, "latency-servers", "server") == [
            "10.7.0.53",
            "10.7.0.33",
            "10.7.0.80",
            "2001:db8:7::80",
            "2001:db8:7::53",
        ]
        # A kind: DNS rows only, in all three tables.
        await pilot.press("slash", *"dns", "enter")
        assert column(app, "latency-services", "port") == ["udp/53"]
        assert column(app, "latency-servers", "server") == ["10.7.0.53", "2001:db8:7::53"]
        assert set(column(app, "latency-slowest", "kind")) == {"dns"}
        assert len(cells(app, "latency-slowest")) == 9
        # An address: its server, and the exchanges it took part in; services have no address to narrow by.
        await pilot.press("slash", *["backspace"] * 3, *"10.7.0.80", "enter")
        assert column(app, "latency-servers", "server") == ["10.7.0.80"]
        assert column(app, "latency-slowest", "request") == ["HEAD /x HTTP/1.1", "GET /index.html HTTP/1.1"]
        assert len(cells(app, "latency-services")) == 4
        # A port and a protocol.
        await pilot.press("slash", *["backspace"] * 9, *"tcp 8080", "enter")
        assert cells(app, "latency-services") == [["http", "tcp/8080", "1", "7.00", "7.00", "7.00", "7.00"]]
        assert column(app, "latency-slowest", "request") == ["GET /v6 HTTP/1.1"]


@sync
async def test_latency_view_says_what_it_measures_when_nothing_was_timed(tmp_path: Path) -> None:
    path = tmp_path / "tcp.pcap"
    write_pcap(path, all_frames(), nanosecond=True)
    eng = read_all(str(path))
    app = make_app(eng)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("7")
        text = " ".join(screen_text(app).split())
        assert "No exchange timed yet." in text
        assert "DNS over UDP and TCP port 53, HTTP/1.x on any TCP port, MySQL COM_QUERY on port 3306" in text
        for table in ("latency-services", "latency-servers", "latency-slowest"):
            assert cells(app, table) == []
    eng.close()


@sync
async def test_W_on_a_latency_server_writes_that_hosts_packets(health_pcap: str, tmp_path: Path) -> None:
    app, eng = tm_app(health_pcap, tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("7")
        assert cells(app, "latency-servers")[0][:2] == ["dns", "10.7.0.53"]
        await pilot.press("W")
        saved = await wait_saved(app, pilot)
        assert "[host 10.7.0.53]" in saved
        server = bytes([10, 7, 0, 53])
        frames = sorted(exchanges() + all_frames(), key=lambda f: f.ts_ns)
        wanted = [f.data for f in frames if server in (f.data[26:30], f.data[30:34])]  # IPv4 source, destination
        assert len(wanted) == 20 and packets_in(saved.split(" (")[0]) == wanted
    eng.close()


# --- the Flows view's Process column: a process table that owns two flows of the capture
def flow_key(t: TableSnapshot, proto: int, a: str, aport: int, b: str, bport: int) -> bytes:
    """The flow-table key of a conversation, whichever end the table stores first."""

    def end(addr: str, port: int) -> tuple[bytes, bytes]:
        ip = ipaddress.ip_address(addr)
        return (bytes(10) + b"\xff\xff" + ip.packed if ip.version == 4 else ip.packed), port.to_bytes(2, "big")

    (a16, ap), (b16, bp) = end(a, aport), end(b, bport)
    held = {k.tobytes() for k in t.keys}
    for key in (a16 + b16 + ap + bp + bytes([proto]), b16 + a16 + bp + ap + bytes([proto])):
        key = key.ljust(t.keys.shape[1], b"\0")  # the table pads its keys
        if key in held:
            return key
    raise AssertionError(f"no flow {a}:{aport} {b}:{bport} in the table")


def fake_mapper(owners: dict[bytes, tuple[int, str]]) -> ProcessMapper:
    """A mapper (never started) whose latest result owns these flows."""
    mapper = ProcessMapper()
    procs = tuple(ProcessTotals(pid, name, "root", 0, 0, 0, 0) for pid, name in owners.values())
    mapper.result = ProcessTable(1, FIXED_CLOCK, procs, EMPTY_UNKNOWN, owners)
    return mapper


@sync
async def test_flows_show_the_owning_process_sort_and_filter_by_it(engine: FileEngine, packets: list[Packet]) -> None:
    dns = sorted(f for f in udp_flows(packets, 53) if f[0] == "10.1.0.1")
    (c1, p1, s1, _), (c2, p2, s2, _) = dns[:2]
    t = engine.snapshot.flows
    dig, resolved = flow_key(t, 17, c1, p1, s1, 53), flow_key(t, 17, c2, p2, s2, 53)
    app = RetrotapApp(
        engine,  # type: ignore[arg-type]
        clock=lambda: FIXED_CLOCK,
        source="mixed.pcap",
        processes=fake_mapper({dig: (4242, "dig"), resolved: (812, "systemd-resolved")}),
    )
    async with app.run_test(size=(200, 80)) as pilot:
        await pilot.press("4", "slash", *"udp 53 10.1.0", "enter")
        rows = flow_cells(app)
        assert len(rows) == len({f for f in udp_flows(packets, 53) if f[0].startswith("10.1.0.")}) > 2
        assert rows[("udp", c1, p1, s1, 53)]["process"] == "dig/4242"
        assert rows[("udp", c2, p2, s2, 53)]["process"] == "systemd-res…/812"  # cut so the pid shows
        others = [r["process"] for k, r in rows.items() if k[2] not in (p1, p2)]
        assert others and set(others) == {""}
        header = next(line for line in screen_text(app).splitlines() if "Proto" in line)
        assert header.rstrip().endswith("Process")
        assert "dig/4242" in screen_text(app) and "systemd-res…/812" in screen_text(app)

        # Sorted by name (ascending), the flows without a process last either way.
        await sort_by(pilot, app.view, "process")
        shown = column(app, "flows-table", "process")
        assert shown[:2] == ["dig/4242", "systemd-res…/812"] and set(shown[2:]) == {""}
        assert "Process ▲" in screen_text(app) and "sort process name ▲" in screen_text(app)
        await pilot.press("S")
        shown = column(app, "flows-table", "process")
        assert shown[:2] == ["systemd-res…/812", "dig/4242"] and set(shown[2:]) == {""}

        # `/` matches the process name (any part of it, even the part the cell cuts off).
        await pilot.press("slash", "ctrl+u", *"resolved", "enter")
        assert [(r[1], int(r[2]), r[-1]) for r in cells(app, "flows-table")] == [(c2, p2, "systemd-res…/812")]
        assert "1 of 1 flows" in screen_text(app)

        # The detail panel names the process.
        text = await open_detail(app, pilot, "dig")
        assert f"udp {c1}:{p1} → {s1}:53" in text
        assert detail_line(text, "Process") == "dig (pid 4242)"


@sync
async def test_a_file_has_no_processes_the_column_stays_blank(engine: FileEngine) -> None:
    app = make_app(engine)  # as `retrotap -r`: no process mapper
    async with app.run_test(size=(200, 50)) as pilot:
        await pilot.press("4")
        assert set(column(app, "flows-table", "process")) == {""}
        await pilot.press("slash", *"dig", "enter")
        assert cells(app, "flows-table") == []
        assert "/dig (unknown: dig)" in screen_text(app)
        text = await open_detail(app, pilot, "udp 53 10.1.0.1")
        assert detail_line(text, "Server").endswith("port 53 (domain)")
        assert re.search(r"│\s+Process  ", text) is None  # no line for it


# --- I: a capture file of the snapshot or the recording directory, picked, then inspected
T_FILES = 1_700_000_000  # 2023-11-14 22:13:20 UTC


def small_pcap(path: Path, n: int, mtime: float) -> int:
    """A pcap of n DNS-sized UDP frames, last modified at mtime; its size in bytes."""
    frames = [
        Ether() / IP(src="10.7.0.1", dst="10.7.0.53") / UDP(sport=40000 + i, dport=53) / (b"q" * i) for i in range(n)
    ]
    for i, f in enumerate(frames):
        f.time = T_FILES + i
    write_pcap(path, frames)
    os.utime(path, (mtime, mtime))
    return path.stat().st_size


def picker_app(engine: FileEngine, snapshot_dir: Path, record_dir: Path) -> RetrotapApp:
    return RetrotapApp(
        engine,  # type: ignore[arg-type]
        clock=lambda: FIXED_CLOCK,
        source="mixed.pcap",
        snapshot_dir=str(snapshot_dir),
        record_dir=str(record_dir),
    )


@sync
async def test_I_lists_the_capture_files_newest_first_and_inspects_the_one_picked(
    engine: FileEngine, tmp_path: Path
) -> None:
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    older, newer = snaps / "retrotap-eth0-20231114T221320Z.pcap", snaps / "retrotap-eth0-20231114T221420Z.pcap"
    sizes = {older: small_pcap(older, 3, T_FILES), newer: small_pcap(newer, 5, T_FILES + 60)}
    assert sizes[older] < sizes[newer] < 1000  # bytes, shown exactly
    app = picker_app(engine, snaps, tmp_path / "no-recording")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("I")
        await pilot.pause()
        assert isinstance(app.screen, PcapPicker)
        assert cells(app, "pcap-picker-table") == [
            [newer.name, f"{sizes[newer]} B", "2023-11-14 22:14:20", str(snaps)],
            [older.name, f"{sizes[older]} B", "2023-11-14 22:13:20", str(snaps)],
        ]
        text = screen_text(app)
        assert "Inspect a capture file" in text and "Modified (UTC)" in text
        assert f"{older.name}  " in text and f"{sizes[older]} B" in text

        await pilot.press("down", "enter")
        screen = await inspected(app, pilot)
        assert (screen.what, screen.error) == (older.name, "")
        text = screen_text(app)
        assert f"Inspector: {older.name}" in text and "3 packets" in text
        assert screen.query_one("#inspector-list", DataTable).row_count == 3
        assert [p.length for p in screen.packets] == [42, 43, 44]  # Ether + IP + UDP + 0, 1, 2 bytes

        await pilot.press("escape")  # back to the dashboard, not to the picker
        await pilot.pause()
        assert not isinstance(app.screen, (InspectorScreen, PcapPicker))
        await pilot.press("I")
        await pilot.pause()
        assert isinstance(app.screen, PcapPicker)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, PcapPicker)
        assert app.query_one(ContentSwitcher).current == "overview"


@sync
async def test_I_lists_the_recordings_closed_files_too(engine: FileEngine, tmp_path: Path) -> None:
    snaps, rec = tmp_path / "snaps", tmp_path / "rec"
    snaps.mkdir()
    rec.mkdir()
    snap = snaps / "retrotap-eth0-20231114T221320Z.pcap"
    closed = rec / file_name("eth0", T_FILES * NS)
    sizes = {snap: small_pcap(snap, 2, T_FILES + 30), closed: small_pcap(closed, 4, T_FILES + 90)}
    small_pcap(rec / (file_name("eth0", (T_FILES + 60) * NS) + ".partial"), 1, T_FILES + 120)  # being written
    (rec / "notes.txt").write_text("not a capture")
    app = picker_app(engine, snaps, rec)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("I")
        await pilot.pause()
        assert cells(app, "pcap-picker-table") == [
            [closed.name, f"{sizes[closed]} B", "2023-11-14 22:14:50", str(rec)],
            [snap.name, f"{sizes[snap]} B", "2023-11-14 22:13:50", str(snaps)],
        ]
        await pilot.press("enter")
        screen = await inspected(app, pilot)
        assert screen.what == closed.name and "4 packets" in screen_text(app)


@sync
async def test_I_without_capture_files_says_so(
    engine: FileEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # short relative paths: the whole message fits in the toast
    Path("snaps").mkdir()
    (Path("snaps") / "retrotap-eth0-20231114T221320Z.pcap.partial").write_bytes(b"")  # not a capture file yet
    app = picker_app(engine, Path("snaps"), Path("rec"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("I")
        await pilot.pause()
        assert not isinstance(app.screen, PcapPicker)
        assert "no snapshot in snaps: press w or W first" in screen_text(app)


# --- live: the real `retrotap` in tmux, capturing in the netns lab
@pytest.mark.live
def test_live_dashboard_in_tmux_shows_lab_traffic(lab: Lab) -> None:
    if shutil.which("tmux") is None or shutil.which("retrotap") is None:
        pytest.skip("needs tmux and the retrotap command on PATH")
    tmux = Tmux(f"ip netns exec {lab.ns_a} retrotap -i {lab.veth_a}")
    try:
        tmux.wait_for(lambda t: "0 Overview" in t and lab.veth_a in t and "New flows" in t, "the overview")
        tmux.keys("1")
        tmux.wait_for(lambda t: "1 Interfaces" in t and lab.veth_a in t and "Captured" in t, "the dashboard")
        count = 40
        frame = bytes(
            Ether(dst=lab.mac_a, src=lab.mac_b) / IP(src=IP4_B, dst=IP4_A) / UDP(sport=4000, dport=5000) / bytes(100)
        )
        assert lab.send_frames([frame], repeat=count) == count

        tmux.keys("2")
        tmux.wait_for(lambda t: re.search(rf"{re.escape(IP4_A)}\s+=>\s+{re.escape(IP4_B)}", t) is not None, "the pair")

        # Neither 4000 nor 5000 is in /etc/services: the lower one is the flow's service port.
        tmux.keys("3")
        row = re.compile(rf"udp\s+4000\s.*\s{count}\s+{re.escape(size(count * len(frame)))}")
        tmux.wait_for(lambda t: row.search(t) is not None, f"udp/4000 with {count} packets")

        tmux.keys("4")
        flow = re.compile(rf"udp\s+{re.escape(IP4_B)}\s+4000\s+{re.escape(IP4_A)}\s+5000\s")
        tmux.wait_for(lambda t: flow.search(t) is not None, "the 4000 -> 5000 flow")

        tmux.keys("q")
        assert tmux.wait_exit(), "retrotap did not quit on q"
    finally:
        tmux.close()
