"""View 5, Drops: every layer's losses side by side (NIC, kernel ring, retrotap), coverage and own cost."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from capture_backend.contract import Snapshot
from capture_backend.output.report import RING_ROWS, capture_health, drop_rows
from tui.widgets.format import DASH, count, duration, per_second, percent, right
from tui.widgets.table import Cell, Column, SnapTable
from tui.widgets.view import Frame, View

LAYERS = {"nic": "NIC (netlink)", "kernel": "Kernel ring", "retrotap": "retrotap"}
COUNTERS = {
    "rx_missed": "rx missed",
    "rx_fifo": "rx fifo",
    "rx_dropped": "rx dropped",
    "rx_errors": "rx errors",
    "tx_dropped": "tx dropped",
    "tx_fifo": "tx fifo",
    "tx_errors": "tx errors",
    "ring_drops": "drops",
    "ring_freezes": "queue freezes",
    "malformed": "malformed packets",
    "walk_errors": "unreadable ring frames",
    "capture_restarts": "capture restarts",
    "flows_evicted": "flow-table evictions",
    "pairs_evicted": "pair-table evictions",
    "hosts_evicted": "host-table evictions",
    "ports_evicted": "port-table evictions",
}
# Each capture thread's rows (--threads): "drops_ring1" shows as "ring 1 drops".
RING_LABELS = {
    "received_ring": "ring {} received",
    "drops_ring": "ring {} drops",
    "cpu_seconds_thread": "thread {} CPU s",
}
CPU_ROW = "cpu_seconds_thread"
COLUMNS = (
    Column("layer", "Layer", 13),
    Column("counter", "Counter", 20),
    Column("iface", "Interface", 10),
    Column("total", "Total", 10, numeric=True),
    Column("per_s", "Per second", 11, numeric=True),
)


class DropsView(View):
    """Where packets are lost, per layer, plus how much of the traffic retrotap sees and what it costs."""

    title = "Drops"

    def compose(self) -> ComposeResult:
        yield Static(id="drops-summary")
        yield SnapTable(COLUMNS, id="drops-table")

    def show(self, frame: Frame) -> None:
        snap = frame.snap
        h = capture_health(snap, frame.prev, frame.base, frame.now)
        lines = []
        if snap.live:
            lines.append(
                f"Coverage (counted ÷ ring received): now {percent(_pct(h['coverage']))}, since start "
                f"{percent(_pct(h['coverage_since_start']))}  (captured {count(h['captured'])}, "
                f"ring {count(h['received'])})"
            )
            lines.append(
                f"Ring ÷ link rx+tx: now {percent(_pct(h['ring_coverage']))}, since start "
                f"{percent(_pct(h['ring_coverage_since_start']))}  (link {count(h['link_packets'])})"
                + ("  — a filter is set: the ring receives only what it passes" if snap.filter else "")
            )
        else:
            lines.append(f"Coverage: a capture file, every packet in it is read ({count(h['captured'])} packets)")
        lines.append(
            f"retrotap's own cost: {_threads(snap)} CPU {percent(h['cpu_percent'])}, "
            f"snapshot age {duration(h['snapshot_age'])}"
        )
        self.query_one("#drops-summary", Static).update("\n".join(lines))
        rows: list[tuple[str, list[Cell]]] = []
        for r in drop_rows(snap, frame.prev):
            rows.append(
                (
                    f"{r['layer']}|{r['counter']}|{r['iface']}",
                    [
                        LAYERS[r["layer"]],
                        _label(r["counter"]),
                        r["iface"] or DASH,
                        *_cells(r["counter"], r["total"], r["per_s"]),
                    ],
                )
            )
        self.table.sync(rows)


def _threads(snap: Snapshot) -> str:
    """"capture thread", or how many share the capture (--threads): their CPU is summed, 100 % a core."""
    n = max((len(i.rings) for i in snap.interfaces), default=0)
    return f"{n} capture threads" if n > 1 else "capture thread"


def _label(counter: str) -> str:
    for _, prefix, _field in RING_ROWS:
        if counter.startswith(prefix) and counter[len(prefix) :].isdigit():
            return RING_LABELS[prefix].format(counter[len(prefix) :])
    return COUNTERS.get(counter, counter)


def _cells(counter: str, total: float, per_s: float | None) -> tuple[Cell, Cell]:
    """Total and per second; a thread's CPU as seconds and the share of a core it used."""
    if counter.startswith(CPU_ROW):
        return right(f"{total:.2f}"), right(percent(_pct(per_s)))
    return right(count(int(total))), right(per_second(per_s))


def _pct(ratio: float | None) -> float | None:
    return None if ratio is None else 100 * ratio
