"""View 2, Hosts (iftop): host pairs with 2 s/10 s/40 s averages per direction, peak, total and a bar.

`a` aggregates by source or destination host, `o` shows ports (then rows are flows, whose only
rate is the one since the last refresh: the backend keeps per-second history for pairs and hosts).
"""

from __future__ import annotations

import numpy as np
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult

from capture_backend.contract import TableSnapshot
from capture_backend.output.report import (
    flow_rows,
    flow_server_is_b,
    host_rows,
    pair_rows,
    snapshot_interval,
    table_rates,
)
from tui.selection import FlowSelection, HostSelection, PairSelection
from tui.widgets.format import DASH, bits, endpoint, right, size
from tui.widgets.table import Cell, Column, SnapTable
from tui.widgets.view import Frame, SortKey, View

AGGREGATES = ("pairs", "source", "destination")
HALF_MIN, HALF_MAX = 9, 39  # width of each side of "a => b": an IPv4 address ... a full IPv6 one
WINDOWS = ("2s", "10s", "40s")
COLUMNS = (
    Column("rank", "#", 3),
    Column("pair", "Host pair", 2 * HALF_MIN + 4),
    Column("2s", "2s", 10, numeric=True),  # '123.4 Mb/s'
    Column("10s", "10s", 10, numeric=True),
    Column("40s", "40s", 10, numeric=True),
    Column("peak", "Peak", 10, numeric=True, drop=2),  # narrow screens keep the pair and its averages
    Column("total", "Total", 10, numeric=True, drop=1),
)
Line = tuple[str, tuple[str, str, str], list[str], float]
SORT_KEYS = tuple(SortKey(c, None) for c in ("10s", "2s", "40s", "peak", "total"))  # values: _sort_values()


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _pair_text(left: str, arrow: str, right_: str, half: int) -> str:
    return f"{_fit(left, half):<{half}} {arrow} {_fit(right_, half)}".ljust(2 * half + 4)


class HostsView(View):
    """iftop's screen: pairs (or hosts, or flows with `o`), two lines per pair, ordered on the columns."""

    title = "Hosts"
    sort_keys = SORT_KEYS
    sort_names = {"2s": "2s", "10s": "10s", "40s": "40s", "peak": "peak", "total": "total"}

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.aggregate = "pairs"
        self.ports = False

    def compose(self) -> ComposeResult:
        yield SnapTable(COLUMNS, id="hosts-table")

    def cycle_aggregate(self) -> str:
        """Pairs → by source → by destination; returns the new mode."""
        self.aggregate = AGGREGATES[(AGGREGATES.index(self.aggregate) + 1) % len(AGGREGATES)]
        return self.aggregate

    def toggle_ports(self) -> bool:
        """Show host:port (flows) instead of hosts; returns whether ports are shown."""
        self.ports = not self.ports
        return self.ports

    @property
    def mode(self) -> str:
        """What the rows are: 'ports' (flows), 'pairs', 'source' or 'destination'."""
        return "ports" if self.ports and self.aggregate == "pairs" else self.aggregate

    def _table(self, frame: Frame) -> TableSnapshot:
        snap = frame.snap
        return {"ports": snap.flows, "pairs": snap.pairs}.get(self.mode, snap.hosts)

    def _flow_rates(self, frame: Frame, idx: np.ndarray) -> np.ndarray:
        seconds = snapshot_interval(frame.snap, frame.prev)
        if frame.prev is None or seconds <= 0:
            return np.zeros((idx.size, 2))
        return table_rates(frame.snap.flows, frame.prev.flows, seconds, "bytes", idx) * 8

    def _sort_values(self, key: SortKey, frame: Frame, idx: np.ndarray) -> np.ndarray:
        """The sort column's values for rows idx of the mode's table."""
        t = self._table(frame)
        col = key.column
        if self.mode == "ports":
            if col == "total":
                return t.cols["bytes"][idx].sum(axis=1)
            return self._flow_rates(frame, idx).sum(axis=1)
        values = t.cols["bytes" if col == "total" else "peak" if col == "peak" else f"avg{col[:-1]}"][idx]
        if self.mode == "pairs":
            return values.sum(axis=1)
        return values[:, 0 if self.mode == "source" else 1]

    def show(self, frame: Frame) -> None:
        table = self.table
        t = self._table(frame)
        mode = self.mode
        q = frame.query
        mask = {"ports": q.flows, "pairs": q.pairs}.get(mode, q.hosts)(t) if q else None
        idx = np.flatnonzero(mask) if mask is not None else np.arange(len(t))
        lines_per_row = 1 if mode in ("source", "destination") else 2
        key = self.sort_key
        values = self._sort_values(key, frame, idx) if key is not None and idx.size else None
        picked = self.pick(
            frame, idx, max(1, table.capacity() // lines_per_row), t.cols["bytes"][idx].sum(axis=1), values
        )
        rows = self._rows(frame, picked)
        labels = {c.key: self.sort_label(c.key, c.label) for c in COLUMNS}
        if mode == "ports":  # flows have one rate (since the last refresh): every rate sort uses it
            labels.update({c.key: c.label for c in COLUMNS[2:6]})
            by_total = self.sort_key is not None and self.sort_key.column == "total"
            labels["2s"] = "now" if by_total else f"now {'▲' if self.reverse else '▼'}"
        table.set_labels(labels)
        table.sync(self._with_bars(rows))

    def _rows(self, frame: Frame, picked: np.ndarray) -> list[Line]:
        """(key, (left, arrow, right), figure cells, bar value) per screen line."""
        name = frame.name
        sort_col = self.sort_key.column if self.sort_key else "10s"
        out: list[Line] = []
        self.selections = {}
        mode = self.mode
        if mode == "ports":
            rates = self._flow_rates(frame, picked)
            fwd = np.where(flow_server_is_b(frame.snap.flows, picked), 0, 1)
            for n, r in enumerate(flow_rows(frame.snap, index=picked)):
                src, dst = endpoint(name(r["src"]), r["sport"]), endpoint(name(r["dst"]), r["dport"])
                key = f"{r['proto']}|{r['src']}|{r['sport']}|{r['dst']}|{r['dport']}"
                flow = FlowSelection(r["proto"], r["src"], int(r["sport"]), r["dst"], int(r["dport"]))
                ways = (("=>", fwd[n], r["src_to_dst_bytes"]), ("<=", 1 - fwd[n], r["dst_to_src_bytes"]))
                for arrow, d, total in ways:
                    rate = float(rates[n, d])
                    text = (src, arrow, dst) if arrow == "=>" else ("", arrow, "")
                    value = float(total) if sort_col == "total" else rate
                    self.selections[f"{key}|{arrow}"] = flow
                    out.append((f"{key}|{arrow}", text, [bits(rate), DASH, DASH, DASH, size(total)], value))
            return out
        if mode == "pairs":
            for r in pair_rows(frame.snap, index=picked):
                key = f"{r['a']}|{r['b']}"
                pair = PairSelection(r["a"], r["b"])
                for arrow, d in (("=>", "a_to_b"), ("<=", "b_to_a")):
                    bps = r[f"{d}_bps"]
                    left, right_ = (name(r["a"]), name(r["b"])) if arrow == "=>" else ("", "")
                    total = r[f"{d}_bytes"]
                    value = float(total) if sort_col == "total" else bps[sort_col]
                    cells = [*(bits(bps[w]) for w in WINDOWS), bits(bps["peak"]), size(total)]
                    self.selections[f"{key}|{arrow}"] = pair
                    out.append((f"{key}|{arrow}", (left, arrow, right_), cells, value))
            return out
        d = "tx" if mode == "source" else "rx"
        for r in host_rows(frame.snap, index=picked):
            bps = r[f"{d}_bps"]
            host = name(r["addr"])
            text = (host, "=>", "*") if mode == "source" else ("*", "=>", host)
            total = r[f"{d}_bytes"]
            value = float(total) if sort_col == "total" else bps[sort_col]
            cells = [*(bits(bps[w]) for w in WINDOWS), bits(bps["peak"]), size(total)]
            self.selections[f"{r['addr']}|{d}"] = HostSelection(r["addr"])
            out.append((f"{r['addr']}|{d}", text, cells, value))
        return out

    def _with_bars(self, rows: list[Line]) -> list[tuple[str, list[Cell]]]:
        """Table rows with iftop's bar: the pair cell highlighted in proportion to the sort column."""
        top = max((v for *_, v in rows), default=0.0)
        longest = max((max(len(t[0]), len(t[2])) for _, t, _, _ in rows), default=0)
        half = min(HALF_MAX, max(HALF_MIN, longest))
        width = 2 * half + 4
        self.table.set_width("pair", width)
        style: Style = self.table.get_component_rich_style("snaptable--bar")
        out: list[tuple[str, list[Cell]]] = []
        rank = 0
        for key, text, cells, value in rows:
            first = key.endswith("=>") or not key.endswith("<=")
            rank += first
            pair = Text(_pair_text(*text, half))
            filled = round(width * value / top) if top > 0 else 0
            if filled:
                pair.stylize(style, 0, filled)
            out.append((key, [str(rank) if first else "", pair, *(right(c) for c in cells)]))
        return out
