"""The detail panel of one flow (Enter in the Flows view): every figure retrotap has for it."""

from __future__ import annotations

import numpy as np
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from capture_backend.contract import PORT_PROTOS, PROTO_NUMBERS, TableSnapshot, service_name
from capture_backend.output.report import Row, flow_rows
from tui.widgets.format import bits, count, duration, endpoint, ms, size, utc_stamp
from tui.widgets.view import Frame

LABEL_WIDTH = 15  # "Client → server", "Retransmissions"


def find_flow(t: TableSnapshot, key: bytes) -> int:
    """The row of a flow key in a table, or -1."""
    if len(t) == 0:
        return -1
    hits = np.flatnonzero((t.keys == np.frombuffer(key, np.uint8)).all(axis=1))
    return int(hits[0]) if hits.size else -1


def _endpoint(addr: str, port: int, proto: str, name: str) -> str:
    shown = addr if name == addr else f"{name} ({addr})"
    number = PROTO_NUMBERS.get(proto, -1)
    if number not in PORT_PROTOS:
        return shown
    service = service_name(number, port)
    return f"{shown} port {port}" + (f" ({service})" if service else "")


def _grid() -> Table:
    """Label and value columns; the labels as wide in every section so the values line up."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", justify="right", min_width=LABEL_WIDTH)
    grid.add_column()
    return grid


def _section(title: str, grid: Table) -> list[RenderableType]:
    return [Text(""), Text(title, style="bold underline"), grid]


def tcp_table(tcp: Row) -> Table:
    """A TCP flow's health, as tshark's tcp.analysis counts it."""
    grid = _grid()
    grid.add_row("Retransmissions", count(tcp["retransmissions"]))
    grid.add_row("Out-of-order", count(tcp["out_of_order"]))
    grid.add_row("Duplicate ACKs", count(tcp["duplicate_acks"]))
    grid.add_row("Zero windows", count(tcp["zero_windows"]))
    grid.add_row("Resets", count(tcp["resets"]))
    rtt = tcp["handshake_rtt_ms"]
    grid.add_row("Handshake RTT", "not measured (handshake not seen)" if rtt is None else f"{ms(rtt)} ms")
    return grid


def latency_table(lat: Row) -> Table:
    """A flow's application exchanges (request → first response packet)."""
    grid = _grid()
    grid.add_row("Exchanges", f"{count(lat['exchanges'])} (request → first response packet)")
    grid.add_row("Mean", f"{ms(lat['avg_ms'])} ms")
    grid.add_row("Max", f"{ms(lat['max_ms'])} ms")
    return grid


def detail_table(r: Row, frame: Frame) -> Group:
    """The flow's figures as two-column Rich tables: ends, local process, traffic, then TCP health and
    application latency."""
    grid = _grid()
    grid.add_row("Protocol", r["proto"])
    grid.add_row("Client", _endpoint(r["src"], r["sport"], r["proto"], frame.name(r["src"])))
    grid.add_row("Server", _endpoint(r["dst"], r["dport"], r["proto"], frame.name(r["dst"])))
    if "process" in r:  # a local end's socket: live capture only
        grid.add_row("Process", f"{r['process']} (pid {r['pid']})")
        grid.add_row("Namespace", r.get("netns") or "(current)")
        if r.get("container"):
            grid.add_row("Container", r["container"])
    grid.add_row("Client → server", f"{count(r['src_to_dst_packets'])} packets, {size(r['src_to_dst_bytes'])}")
    grid.add_row("Server → client", f"{count(r['dst_to_src_packets'])} packets, {size(r['dst_to_src_bytes'])}")
    grid.add_row("Total", f"{count(r['packets'])} packets, {size(r['bytes'])}")
    grid.add_row("Rate", bits(r["bps"]))
    grid.add_row("First packet", utc_stamp(r["first"], millis=True) + " UTC")
    grid.add_row("Last packet", utc_stamp(r["last"], millis=True) + " UTC")
    grid.add_row("Age", duration(r["age"]))
    grid.add_row("Idle", duration(max(0.0, frame.snap.now_ns / 1e9 - r["last"])))
    parts: list[RenderableType] = [grid]
    if r["proto"] == "tcp":
        grid.add_row("TCP flags seen", r["tcp_flags"] or "none")
    if "tcp" in r:
        parts += _section("TCP health", tcp_table(r["tcp"]))
    if "latency" in r:
        parts += _section("Application latency", latency_table(r["latency"]))
    return Group(*parts)


class FlowDetail(ModalScreen[None]):
    """One flow's details, refreshed with the dashboard; Escape or Enter closes it."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("enter", "dismiss", "Close", show=False),
    ]

    def __init__(self, key: bytes) -> None:
        super().__init__()
        self.key = key

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="flow-detail"):
            yield Label("Flow", id="flow-detail-title")
            yield Static(id="flow-detail-body")

    def show(self, frame: Frame) -> None:
        """Render the flow from this frame's snapshot (it may have expired)."""
        bodies = self.query("#flow-detail-body").results(Static)
        body = next(bodies, None)
        if body is None:  # a refresh timer fired between push_screen and compose
            return
        i = find_flow(frame.snap.flows, self.key)
        if i < 0:
            body.update("This flow is no longer in the flow table (idle timeout or eviction).")
            return
        r = flow_rows(frame.snap, index=np.array([i]), prev=frame.prev, rates=True, processes=frame.processes)[0]
        src, dst = frame.name(r["src"]), frame.name(r["dst"])
        if PROTO_NUMBERS.get(r["proto"], -1) in PORT_PROTOS:
            src, dst = endpoint(src, r["sport"]), endpoint(dst, r["dport"])
        self.query_one("#flow-detail-title", Label).update(f"{r['proto']} {src} → {dst}")
        body.update(detail_table(r, frame))
