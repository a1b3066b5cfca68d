"""View 1, Interfaces (bmon): link rates and packet rates, errors, drops, state, and 60 s sparklines."""

from __future__ import annotations

import math
from collections import deque

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, Sparkline

from capture_backend.contract import Snapshot
from capture_backend.output.report import Row, interface_rows
from tui.widgets.format import DASH, bits, count, per_second, right
from tui.widgets.table import Cell, Column, SnapTable
from tui.widgets.view import Frame, View

HISTORY_SECONDS = 60
COLUMNS = (  # drop: at 80 columns the link's error counters go first (the Drops view has them all)
    Column("name", "Interface"),
    Column("state", "State", 8),
    Column("rx", "RX", 10, numeric=True),
    Column("tx", "TX", 10, numeric=True),
    Column("rx_pps", "RX pkt/s", 9, numeric=True, drop=1),
    Column("tx_pps", "TX pkt/s", 9, numeric=True, drop=2),
    Column("errors", "Errors", 7, numeric=True, drop=4),
    Column("dropped", "Dropped", 7, numeric=True, drop=3),
    Column("missed", "Missed", 6, numeric=True, drop=5),
    Column("fifo", "FIFO", 6, numeric=True, drop=6),
    Column("captured", "Captured", 10, numeric=True),
)


def _pair(row: Row, rx: str, tx: str) -> str:
    return f"{count(row[rx])}/{count(row[tx])}" if rx in row else DASH


def _state(row: Row) -> str:
    if row["state"] in ("file", "gone"):
        return row["state"]
    oper = str(row.get("operstate", "")).lower()
    return row["state"] if oper in ("", "unknown", row["state"]) else f"{row['state']} ({oper})"


class RateHistory:
    """The last minute of one interface's rx and tx rates, one sample per new snapshot."""

    def __init__(self, samples: int) -> None:
        self.rx: deque[float] = deque(maxlen=samples)
        self.tx: deque[float] = deque(maxlen=samples)

    def add(self, row: Row) -> None:
        """Record a row's link rates (or, for files, the captured rate as rx)."""
        if "rx_bps" in row:
            self.rx.append(row["rx_bps"])
            self.tx.append(row["tx_bps"])
        elif "captured_bps" in row:
            self.rx.append(row["captured_bps"])


class InterfacesView(View):
    """One table row per captured interface, and under the table a sparkline pair per interface."""

    title = "Interfaces"

    def __init__(self, *, refresh: float = 1.0, id: str | None = None) -> None:
        super().__init__(id=id)
        self.samples = max(2, math.ceil(HISTORY_SECONDS / refresh))
        self.history: dict[str, RateHistory] = {}

    def compose(self) -> ComposeResult:
        yield SnapTable(COLUMNS, id="interfaces-table")
        yield VerticalScroll(id="sparks")

    def record(self, snap: Snapshot, prev: Snapshot | None) -> None:
        """Add a new snapshot's rates to the history (called for every new snapshot, shown or not)."""
        if prev is None:
            return
        for row in interface_rows(snap, prev, with_captured=True):
            self.history.setdefault(row["name"], RateHistory(self.samples)).add(row)

    def show(self, frame: Frame) -> None:
        rows: list[tuple[str, list[Cell]]] = []
        iface_rows = interface_rows(frame.snap, frame.prev, with_captured=True)
        for r in iface_rows:
            rows.append(
                (
                    r["name"],
                    [
                        r["name"],
                        _state(r),
                        right(bits(r.get("rx_bps"))),
                        right(bits(r.get("tx_bps"))),
                        right(per_second(r.get("rx_pps"))),
                        right(per_second(r.get("tx_pps"))),
                        right(_pair(r, "rx_errors", "tx_errors")),
                        right(_pair(r, "rx_dropped", "tx_dropped")),
                        right(count(r.get("rx_missed"))),
                        right(_pair(r, "rx_fifo", "tx_fifo")),
                        right(bits(r.get("captured_bps"))),
                    ],
                )
            )
        self.table.sync(rows)
        history = self.history
        if frame.asof is not None:  # rewound: the minute up to the cursor, one sample a second
            history = {}
            for snap, prev in frame.past[-HISTORY_SECONDS:]:
                for row in interface_rows(snap, prev, with_captured=True) if prev is not None else ():
                    history.setdefault(row["name"], RateHistory(self.samples)).add(row)
        self._show_sparks(iface_rows, frame.snap.live, history)

    def _show_sparks(self, rows: list[Row], live: bool, history: dict[str, RateHistory]) -> None:
        box = self.query_one("#sparks", VerticalScroll)
        for r in rows:
            name = r["name"]
            hist = history.get(name) or RateHistory(self.samples)
            wid = "spark-" + "".join(ch if ch.isalnum() else "_" for ch in name)
            found = box.query(f"#{wid}")
            group = found.first(SparkGroup) if found else None
            if group is None:
                group = SparkGroup(name, self.samples, id=wid)
                box.mount(group)
            group.set_data(hist, live)


class SparkGroup(Vertical):
    """One interface's rx and tx sparklines with their labels."""

    def __init__(self, iface: str, samples: int, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="spark-group")
        self.iface = iface
        self.samples = samples
        self.data: tuple[RateHistory, bool] | None = None

    def compose(self) -> ComposeResult:
        for kind in ("rx", "tx"):
            yield Label(classes=f"spark-label {kind}")
            yield Sparkline([], classes=kind)

    def on_mount(self) -> None:
        self._apply()

    def set_data(self, hist: RateHistory, live: bool) -> None:
        """Show this history (now if mounted, else once mounted)."""
        self.data = (hist, live)
        if self.is_mounted:
            self._apply()

    def _apply(self) -> None:
        if self.data is None:
            return
        hist, live = self.data
        for kind, data in (("rx", hist.rx), ("tx", hist.tx)):
            label = self.query_one(f"Label.{kind}", Label)
            spark = self.query_one(f"Sparkline.{kind}", Sparkline)
            if kind == "tx" and not live:
                label.display = spark.display = False
                continue
            now = bits(data[-1]) if data else DASH
            peak = bits(max(data)) if data else DASH
            what = kind if live else "captured"
            label.update(f"{self.iface} {what}  {now}   (last {HISTORY_SECONDS} s, max {peak})")
            spark.data = [0.0] * (self.samples - len(data)) + list(data) if data else []  # newest on the right
