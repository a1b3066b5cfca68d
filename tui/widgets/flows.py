"""View 4, Flows: 5-tuples with both directions, rate, age, TCP flags and health, application latency,
the local process; sortable, filterable, Enter for detail."""

from __future__ import annotations

import numpy as np
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import DataTable, Static

from capture_backend.contract import IPPROTO_TCP, TableSnapshot, match_rows
from capture_backend.output.report import flow_rows, flow_server_is_b, snapshot_interval, table_rates
from tui.selection import FlowSelection
from tui.widgets.format import bits, clock_time, count, duration, ms, right, short_count, size
from tui.widgets.table import Cell, Column, SnapTable
from tui.widgets.view import Frame, KeyFn, SortKey, View

PROCESS_WIDTH = 16
COLUMNS = (  # drop: narrow screens keep the 5-tuple, rate, bytes and retransmissions, the rest goes highest first
    Column("proto", "Proto", 5),
    Column("src", "Source"),
    Column("sport", "SPort", 5, numeric=True),
    Column("dst", "Destination"),
    Column("dport", "DPort", 5, numeric=True),
    Column("rate", "Rate", 10, numeric=True),
    Column("total", "Bytes", 9, numeric=True),
    Column("bytes_out", "Bytes →", 9, numeric=True, drop=5),
    Column("bytes_in", "Bytes ←", 9, numeric=True, drop=4),
    Column("pkts_out", "Pkts →", 7, numeric=True, drop=11),
    Column("pkts_in", "Pkts ←", 7, numeric=True, drop=10),
    Column("age", "Age", 6, numeric=True, drop=8),
    Column("flags", "Flags", 5, drop=9),
    Column("retrans", "Retr", 4, numeric=True),
    Column("ooo", "OOO", 4, numeric=True, drop=7),
    Column("dupack", "DupAck", 6, numeric=True, drop=6),
    Column("rtt", "RTT", 5, numeric=True, drop=2),
    Column("lat", "Lat", 5, numeric=True, drop=1),
    Column("process", "Process", PROCESS_WIDTH, drop=3),
)


def _ends(f: Frame, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row: client address, client port, server address, server port (as flow_rows shows them), and fwd dir."""
    t = f.snap.flows
    k = t.fields[idx]
    b_server = flow_server_is_b(t, idx)
    a, b = k["a"], k["b"]
    aport, bport = k["aport"].astype(np.int64), k["bport"].astype(np.int64)
    src = np.where(b_server[:, None], a, b)
    dst = np.where(b_server[:, None], b, a)
    sport = np.where(b_server, aport, bport)
    dport = np.where(b_server, bport, aport)
    return src, sport, dst, dport, np.where(b_server, 0, 1)


def _directed(col: str, forward: bool) -> KeyFn:
    def values(f: Frame, idx: np.ndarray) -> np.ndarray:
        fwd = _ends(f, idx)[4]
        d = fwd if forward else 1 - fwd
        return f.snap.flows.cols[col][idx, d]

    return values


def _rate(f: Frame, idx: np.ndarray) -> np.ndarray:
    seconds = snapshot_interval(f.snap, f.prev)
    if f.prev is None or seconds <= 0:
        return np.zeros(idx.size)
    return table_rates(f.snap.flows, f.prev.flows, seconds, "bytes", idx).sum(axis=1)


def _tcp(col: str) -> KeyFn:
    """A TCP health count; NaN (a blank, sorted last) for flows that are not TCP."""

    def values(f: Frame, idx: np.ndarray) -> np.ndarray:
        t = f.snap.flows
        return np.where(t.fields["proto"][idx] == IPPROTO_TCP, t.cols[col][idx], np.nan)

    return values


def _rtt(f: Frame, idx: np.ndarray) -> np.ndarray:
    """Handshake RTT in ns; NaN when not measured (or not TCP)."""
    irtt = f.snap.flows.cols["tcp_irtt"][idx]
    return np.where(irtt >= 0, irtt, np.nan)


def _latency(f: Frame, idx: np.ndarray) -> np.ndarray:
    """Mean application latency in ns; NaN for flows without exchanges."""
    c = f.snap.flows.cols
    n = c["app_count"][idx]
    return np.where(n > 0, c["app_sum"][idx] / np.maximum(n, 1), np.nan)


def _process(f: Frame, idx: np.ndarray) -> np.ndarray:
    """The rank of each row's process by name (then pid); NaN (a blank, sorted last) without one."""
    out = np.full(idx.size, np.nan)
    if f.processes is None or not f.processes.flow_owners or idx.size == 0:
        return out
    owned = f.processes.owned
    pos = match_rows(f.snap.flows, owned.keys, idx)
    known = pos >= 0
    out[known] = owned.rank[pos[known]]
    return out


def process_cell(pid: int | None, name: str | None, width: int = PROCESS_WIDTH) -> str:
    """'name/pid', the name cut (…) so the pid always shows; blank without an owner."""
    if pid is None or name is None:
        return ""
    tail = f"/{pid}"
    if len(name) + len(tail) > width:
        name = name[: max(1, width - len(tail) - 1)] + "…"
    return name + tail


def total_bytes(t: TableSnapshot, idx: np.ndarray) -> np.ndarray:
    """Both directions' bytes of the rows idx."""
    return t.cols["bytes"][idx].sum(axis=1)


SORT_KEYS = (  # the default, then the columns left to right
    SortKey("total", lambda f, i: total_bytes(f.snap.flows, i)),
    SortKey("proto", lambda f, i: f.snap.flows.fields["proto"][i], descending=False),
    SortKey("src", lambda f, i: _ends(f, i)[0], descending=False),
    SortKey("sport", lambda f, i: _ends(f, i)[1], descending=False),
    SortKey("dst", lambda f, i: _ends(f, i)[2], descending=False),
    SortKey("dport", lambda f, i: _ends(f, i)[3], descending=False),
    SortKey("rate", _rate),
    SortKey("bytes_out", _directed("bytes", True)),
    SortKey("bytes_in", _directed("bytes", False)),
    SortKey("pkts_out", _directed("packets", True)),
    SortKey("pkts_in", _directed("packets", False)),
    SortKey("age", lambda f, i: f.snap.now_ns - f.snap.flows.cols["first"][i]),
    SortKey("flags", lambda f, i: f.snap.flows.cols["tcp_flags"][i], descending=False),
    SortKey("retrans", _tcp("tcp_retrans")),
    SortKey("ooo", _tcp("tcp_ooo")),
    SortKey("dupack", _tcp("tcp_dupack")),
    SortKey("rtt", _rtt),
    SortKey("lat", _latency),
    SortKey("process", _process, descending=False),
)
SORT_NAMES = {c.key: c.label for c in COLUMNS} | {
    "total": "bytes both ways",
    "retrans": "retransmissions",
    "ooo": "out-of-order",
    "dupack": "duplicate ACKs",
    "rtt": "handshake RTT",
    "lat": "application latency",
    "process": "process name",
}


def _ms(value: float | None) -> str:
    return "" if value is None else ms(value)


class FlowsView(View):
    """Flows, sorted and filtered on the snapshot's columns; only the rows that fit are formatted."""

    title = "Flows"
    sort_keys = SORT_KEYS
    sort_names = SORT_NAMES

    class Selected(Message):
        """Enter on a flow: its 40-byte key."""

        def __init__(self, key: bytes) -> None:
            super().__init__()
            self.key = key

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.keys: dict[str, bytes] = {}
        self.shown = 0
        self.matched = 0

    def compose(self) -> ComposeResult:
        yield Static(id="flows-note")
        yield SnapTable(COLUMNS, id="flows-table")

    def show(self, frame: Frame) -> None:
        note = self.query_one("#flows-note", Static)
        note.display = frame.asof is not None
        if frame.asof is not None:
            note.update(f"As of {clock_time(frame.asof, frame.snap.time)}: {frame.flows_note}; L: back to live")
        t = frame.snap.flows
        table = self.table
        idx = np.flatnonzero(frame.query.flows(t, frame.processes)) if frame.query else np.arange(len(t))
        picked = self.pick(frame, idx, table.capacity(), total_bytes(t, idx))
        self.matched, self.shown = int(idx.size), int(picked.size)
        rows: list[tuple[str, list[Cell]]] = []
        self.keys = {}
        self.selections = {}
        name = frame.name
        shown = flow_rows(frame.snap, index=picked, prev=frame.prev, rates=True, processes=frame.processes)
        for i, r in zip(picked.tolist(), shown, strict=True):
            key = f"{r['proto']}|{r['src']}|{r['sport']}|{r['dst']}|{r['dport']}"
            self.keys[key] = t.key_bytes(i)
            self.selections[key] = FlowSelection(r["proto"], r["src"], int(r["sport"]), r["dst"], int(r["dport"]))
            ports = r["proto"] in ("tcp", "udp", "sctp")
            tcp, lat = r.get("tcp"), r.get("latency")
            rows.append(
                (
                    key,
                    [
                        r["proto"],
                        name(r["src"]),
                        right(str(r["sport"]) if ports else ""),
                        name(r["dst"]),
                        right(str(r["dport"]) if ports else ""),
                        right(bits(r["bps"])),
                        right(size(r["bytes"])),
                        right(size(r["src_to_dst_bytes"])),
                        right(size(r["dst_to_src_bytes"])),
                        right(count(r["src_to_dst_packets"])),
                        right(count(r["dst_to_src_packets"])),
                        right(duration(r["age"])),
                        r["tcp_flags"],
                        right(short_count(tcp["retransmissions"]) if tcp else ""),
                        right(short_count(tcp["out_of_order"]) if tcp else ""),
                        right(short_count(tcp["duplicate_acks"]) if tcp else ""),
                        right(_ms(tcp["handshake_rtt_ms"]) if tcp else ""),
                        right(_ms(lat["avg_ms"]) if lat else ""),
                        process_cell(r.get("pid"), r.get("process")),
                    ],
                )
            )
        table.set_labels({c.key: self.sort_label(c.key, c.label) for c in COLUMNS})
        table.sync(rows)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        key = self.keys.get(str(event.row_key.value))
        if key is not None:
            self.post_message(self.Selected(key))
