"""View 3, Ports: per protocol and service port, rates since the last refresh and totals."""

from __future__ import annotations

import numpy as np
from textual.app import ComposeResult

from capture_backend.output.report import port_rows, snapshot_interval, table_rates
from tui.selection import PortSelection
from tui.widgets.format import bits, count, per_second, right, size
from tui.widgets.table import Cell, Column, SnapTable
from tui.widgets.view import Frame, SortKey, View

COLUMNS = (  # drop: at 80 columns the per-direction bytes and packets/s go first
    Column("rank", "#", 3),
    Column("proto", "Proto", 6),
    Column("port", "Port", 6, numeric=True),
    Column("service", "Service", 14),
    Column("rate", "Rate", 11, numeric=True),
    Column("pps", "Pkts/s", 9, numeric=True, drop=2),
    Column("to_port", "To port", 10, numeric=True, drop=3),
    Column("from_port", "From port", 10, numeric=True, drop=4),
    Column("packets", "Packets", 10, numeric=True, drop=1),
    Column("total", "Total", 10, numeric=True),
)


def _rate(col: str) -> SortKey:
    def values(f: Frame, idx: np.ndarray) -> np.ndarray:
        seconds = snapshot_interval(f.snap, f.prev)
        if f.prev is None or seconds <= 0:
            return np.zeros(idx.size)
        return table_rates(f.snap.ports, f.prev.ports, seconds, col, idx).sum(axis=1)

    return SortKey("rate" if col == "bytes" else "pps", values)


SORT_KEYS = (  # the default, then the columns left to right
    SortKey("total", lambda f, i: f.snap.ports.cols["bytes"][i].sum(axis=1)),
    SortKey("proto", lambda f, i: f.snap.ports.fields["proto"][i], descending=False),
    SortKey("port", lambda f, i: f.snap.ports.fields["port"][i].astype(np.int64), False),
    _rate("bytes"),
    _rate("packets"),
    SortKey("to_port", lambda f, i: f.snap.ports.cols["bytes"][i, 0]),
    SortKey("from_port", lambda f, i: f.snap.ports.cols["bytes"][i, 1]),
    SortKey("packets", lambda f, i: f.snap.ports.cols["packets"][i].sum(axis=1)),
)


class PortsView(View):
    """Ports by bytes (or the sort column); only the rows that fit are formatted."""

    title = "Ports"
    sort_keys = SORT_KEYS
    sort_names = {c.key: c.label for c in COLUMNS[1:]}

    def compose(self) -> ComposeResult:
        yield SnapTable(COLUMNS, id="ports-table")

    def show(self, frame: Frame) -> None:
        t = frame.snap.ports
        table = self.table
        idx = np.flatnonzero(frame.query.ports(t)) if frame.query else np.arange(len(t))
        picked = self.pick(frame, idx, table.capacity(), t.cols["bytes"][idx].sum(axis=1))
        rows: list[tuple[str, list[Cell]]] = []
        self.selections = {}
        for n, r in enumerate(port_rows(frame.snap, index=picked, prev=frame.prev, rates=True), 1):
            key = f"{r['proto']}/{r['port']}"
            self.selections[key] = PortSelection(r["proto"], int(r["port"]))
            rows.append(
                (
                    key,
                    [
                        str(n),
                        r["proto"],
                        right(str(r["port"])),
                        r["service"],
                        right(bits(r["bps"])),
                        right(per_second(r["pps"])),
                        right(size(r["to_port_bytes"])),
                        right(size(r["from_port_bytes"])),
                        right(count(r["packets"])),
                        right(size(r["bytes"])),
                    ],
                )
            )
        table.set_labels({c.key: self.sort_label(c.key, c.label) for c in COLUMNS})
        table.sync(rows)
