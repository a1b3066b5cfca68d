"""View 0, Overview (the first view): what is happening now, in one screen that stays readable at 80×24.

Per interface: bit and packet rates with a 60 s chart (the Interfaces view's history). One line each for
the drops and coverage of every layer, TCP health, application latency, new flows (floods), scans and
half-open connections, the alert rules holding and the latest incidents. Then the top 5 host pairs (by
their 10 s average), service ports (by their rate since the last refresh) and local processes.
Every figure comes from capture_backend.output.report's rows or the incident watcher's AlertStatus.
"""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical
from textual.widgets import Label, Sparkline, Static

from capture_backend.contract import AlertStatus, ProcessTable, Ranked
from capture_backend.output.report import (
    Row,
    capture_health,
    drop_rows,
    interface_rows,
    latency_rows,
    pair_rows,
    port_rows,
    process_rows,
    snapshot_interval,
    table_rates,
    tcp_totals,
)
from tui.selection import PairSelection
from tui.widgets.flows import process_cell
from tui.widgets.format import DASH, bits, count, ms, percent, right, short_count, size, utc_stamp
from tui.widgets.interfaces import RateHistory
from tui.widgets.table import Cell, Column, SnapTable
from tui.widgets.view import Frame, View, order_rows

TOP = 5
WIDE = 150  # from this width the three tables sit side by side
LAYERS = (("nic", "NIC"), ("kernel", "ring"), ("retrotap", "retrotap"))
PAIR_COLUMNS = (
    Column("pair", "Top host pairs"),
    Column("rate", "10s", 10, numeric=True),
    Column("total", "Total", 9, numeric=True, drop=1),
)
PORT_COLUMNS = (
    Column("port", "Ports / services"),
    Column("rate", "Rate", 10, numeric=True),
    Column("total", "Total", 9, numeric=True, drop=1),
)
PROCESS_COLUMNS = (
    Column("process", "Processes"),
    Column("rate", "Rate", 10, numeric=True),
    Column("total", "Total", 9, numeric=True, drop=1),
)
LINES = ("drops", "tcp", "latency", "churn", "scans", "alerts", "incidents")


def _pct(ratio: float | None) -> float | None:
    return None if ratio is None else 100 * ratio


def _ranked(rows: Ranked, unit: str = "") -> str:
    return " · ".join(f"{label} {short_count(value)}{unit}" for label, value in rows[:3])


HEAD_WIDTH = 10  # a line's name column


def _head(name: str, body: str) -> Text:
    return Text.assemble((f"{name:<{HEAD_WIDTH}}", "bold"), body)


def iface_text(r: Row, live: bool) -> str:
    """One interface's rates: the link's rx and tx (netlink), or for a file what was captured."""
    if "rx_bps" in r:
        return (
            f"rx {bits(r['rx_bps'])} {short_count(r['rx_pps'])} p/s  "
            f"tx {bits(r['tx_bps'])} {short_count(r['tx_pps'])} p/s"
        )
    what = "captured" if not live else "captured (no link counters)"
    pps = r.get("captured_pps")
    return f"{what} {bits(r.get('captured_bps'))} {DASH if pps is None else short_count(pps)} p/s"


def drops_text(frame: Frame) -> str:
    """Every layer's losses (totals, and per second since the last refresh) and the coverage, in one line."""
    snap = frame.snap
    totals: dict[str, int] = {}
    rates: dict[str, float] = {}
    for r in drop_rows(snap, frame.prev):
        totals[r["layer"]] = totals.get(r["layer"], 0) + r["total"]
        rates[r["layer"]] = rates.get(r["layer"], 0.0) + (r["per_s"] or 0.0)
    parts = [
        f"{label} {count(totals[layer])}" + (f" (+{rates[layer]:,.0f}/s)" if rates.get(layer) else "")
        for layer, label in LAYERS
        if layer in totals
    ]
    if snap.live:
        h = capture_health(snap, frame.prev, frame.base, frame.now)
        parts.append(f"coverage {percent(_pct(h['coverage']))}, ring÷link {percent(_pct(h['ring_coverage']))}")
    else:
        parts.append("a file: every packet read")
    return "  ".join(parts)


def tcp_text(frame: Frame) -> str:
    """TCP health over the flow table, in one line."""
    t = tcp_totals(frame.snap)
    if t is None:
        return "not analysed (--no-analysis)"
    if not t["flows"]:
        return "no TCP flow"
    rtt = f"RTT p50/p95 {ms(t['rtt_p50_ms'])}/{ms(t['rtt_p95_ms'])} ms" if t["rtt_flows"] else "RTT –"
    return (
        f"retr {short_count(t['retransmissions'])} ({percent(t['retrans_pct'])})  "
        f"ooo {short_count(t['out_of_order'])}  dupack {short_count(t['duplicate_acks'])}  "
        f"rst {short_count(t['resets'])}  {rtt}"
    )


def latency_text(frame: Frame, width: int = 0) -> str:
    """The busiest services' p50/p95, and the requests left unanswered, in one line of at most `width`
    characters when given (two services, else one: the unanswered count always shows)."""
    lat = latency_rows(frame.snap, top=3)
    if not lat["exchanges"]:
        return "no DNS, HTTP or MySQL exchange timed yet"
    services = [
        f"{s['kind']} {s['proto']}/{s['port']} p50 {ms(s['p50_ms'])} p95 {ms(s['p95_ms'])} ms"
        f" ({short_count(s['exchanges'])})"
        for s in lat["services"][:2]
    ]
    unanswered = f"unanswered {short_count(lat['unanswered'])}"
    for shown in range(len(services), 0, -1):
        text = " · ".join([*services[:shown], unanswered])
        if width <= 0 or len(text) <= width:
            return text
    return " · ".join([unanswered, *services[:1]])


def churn_text(alerts: AlertStatus) -> str:
    """New flows per second and who opens them, and the SYNs nobody answered."""
    c = alerts.churn
    top = _ranked(c.top_new_sources)
    return (
        f"{c.new_flows_per_s:,.1f}/s" + (f"  by {top}" if top else "") + f"  half-open SYNs {short_count(c.half_open)}"
    )


def scans_text(alerts: AlertStatus) -> str:
    """The sources with the most distinct destination ports over the last 10 s."""
    top = _ranked(alerts.churn.top_scanners, " ports")
    return top if top else "no source opened flows to several ports"


def alerts_text(alerts: AlertStatus) -> str:
    """The rules holding now, or how many are watched."""
    if alerts.active:
        shown = []
        for a in alerts.active:
            label, value = a.rows[0] if a.rows else ("", 0.0)
            what = f"{label}={value:.6g}" if label else f"{value:.6g}"
            shown.append(f"● {a.rule} {what} since {utc_stamp(a.since, '%H:%M:%S')}")
        text = "  ".join(shown)
    elif alerts.rules:
        text = f"none holding ({len(alerts.rules)} rule{'s' * (len(alerts.rules) != 1)})"
    else:
        text = "no rules (--alert)"
    if alerts.errors:
        text += f"  {alerts.errors} errors: {alerts.last_error}"
    return text


def incidents_text(alerts: AlertStatus) -> str:
    """How many incidents were frozen and the latest one ("!" freezes one now)."""
    if not alerts.recent:
        return "none frozen (! freezes one now, 9 lists them)"
    last = alerts.recent[-1]
    pcap = "pcap pending" if last.packets is None else f"{count(last.packets)} pkts"
    return f"{alerts.incidents}, latest {utc_stamp(last.time, '%H:%M:%S')} {last.rule} ({pcap})  9 lists them"


class IfaceLine(Horizontal):
    """One interface: its rates, and the last minute of its rx+tx rate as a chart."""

    def __init__(self, name: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="ov-iface")
        self.iface = name
        self.text = ""
        self.data: list[float] = []

    def compose(self) -> ComposeResult:
        yield Label(classes="ov-iface-text")
        yield Sparkline([], classes="ov-spark")

    def on_mount(self) -> None:
        self._apply()

    def set(self, text: str, history: RateHistory | None, samples: int) -> None:
        """Show the rates and the chart (newest on the right): now if mounted, else once mounted."""
        data = list(history.rx) if history else []
        if history and history.tx:
            data = [rx + tx for rx, tx in zip(history.rx, history.tx, strict=False)]
        self.text = text
        self.data = [0.0] * (samples - len(data)) + data if data else []
        if self.is_mounted:
            self._apply()

    def _apply(self) -> None:
        self.query_one(Label).update(Text.assemble((f"{self.iface:<10}", "bold"), " ", self.text))
        self.query_one(Sparkline).data = self.data


class OverviewView(View):
    """The first view: interfaces, one line per health figure, alerts and incidents, the top 5 tables."""

    title = "Overview"

    def __init__(self, history: dict[str, RateHistory], samples: int, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.history = history  # the Interfaces view's, filled with every new snapshot
        self.samples = samples
        self._procs: ProcessTable | None = None
        self._procs_before: ProcessTable | None = None

    def compose(self) -> ComposeResult:
        yield Vertical(id="ov-ifaces")
        for line in LINES:
            yield Static(id=f"ov-{line}", classes="ov-line")
        with Grid(id="ov-tables"):
            yield SnapTable(PAIR_COLUMNS, id="ov-pairs")
            yield SnapTable(PORT_COLUMNS, id="ov-ports")
            yield SnapTable(PROCESS_COLUMNS, id="ov-processes")

    @property
    def table(self) -> SnapTable:
        """The top host pairs (what `W` and `i` take from this view)."""
        return self.query_one("#ov-pairs", SnapTable)

    def on_resize(self) -> None:
        self.set_class(self.size.width >= WIDE, "-wide")

    def show(self, frame: Frame) -> None:
        self._interfaces(frame)
        alerts = frame.alerts
        lines = {
            "drops": ("Drops", drops_text(frame)),
            "tcp": ("TCP", tcp_text(frame)),
            "latency": ("Latency", latency_text(frame, self.query_one("#ov-latency").size.width - HEAD_WIDTH)),
            "churn": ("New flows", churn_text(alerts)),
            "scans": ("Scans", scans_text(alerts)),
            "alerts": ("Alerts", alerts_text(alerts)),
            "incidents": ("Incidents", incidents_text(alerts)),
        }
        for key, (name, body) in lines.items():
            self.query_one(f"#ov-{key}", Static).update(_head(name, body))
        self.query_one("#ov-alerts").set_class(bool(alerts.active), "-firing")
        self.query_one("#ov-incidents").set_class(bool(alerts.recent), "-frozen")
        self._pairs(frame)
        self._ports(frame)
        self._processes(frame)

    def _interfaces(self, frame: Frame) -> None:
        box = self.query_one("#ov-ifaces", Vertical)
        for r in interface_rows(frame.snap, frame.prev, with_captured=True):
            wid = "ov-if-" + "".join(ch if ch.isalnum() else "_" for ch in r["name"])
            found = box.query(f"#{wid}")
            line = found.first(IfaceLine) if found else None
            if line is None:
                line = IfaceLine(r["name"], id=wid)
                box.mount(line)
            line.set(iface_text(r, frame.snap.live), self.history.get(r["name"]), self.samples)

    def _pairs(self, frame: Frame) -> None:
        t = frame.snap.pairs
        idx = np.arange(len(t))
        picked = order_rows(idx, t.cols["avg10"].sum(axis=1), True, t.cols["bytes"].sum(axis=1), TOP)
        rows: list[tuple[str, list[Cell]]] = []
        self.selections = {}
        name = frame.name
        for r in pair_rows(frame.snap, index=picked):
            key = f"{r['a']}|{r['b']}"
            self.selections[key] = PairSelection(r["a"], r["b"])
            rate = r["a_to_b_bps"]["10s"] + r["b_to_a_bps"]["10s"]
            rows.append((key, [f"{name(r['a'])} ⇄ {name(r['b'])}", right(bits(rate)), right(size(r["bytes"]))]))
        self.table.sync(rows)

    def _ports(self, frame: Frame) -> None:
        t, prev = frame.snap.ports, frame.prev
        idx = np.arange(len(t))
        seconds = snapshot_interval(frame.snap, prev)
        total = t.cols["bytes"].sum(axis=1)
        rate = table_rates(t, prev.ports, seconds).sum(axis=1) if prev is not None and seconds > 0 else total * 0
        picked = order_rows(idx, rate, True, total, TOP)
        rows: list[tuple[str, list[Cell]]] = []
        for r in port_rows(frame.snap, index=picked, prev=prev, rates=True):
            service = f" {r['service']}" if r["service"] else ""
            rows.append(
                (
                    f"{r['proto']}|{r['port']}",
                    [f"{r['proto']}/{r['port']}{service}", right(bits(r["bps"])), right(size(r["bytes"]))],
                )
            )
        self.query_one("#ov-ports", SnapTable).sync(rows)

    def _processes(self, frame: Frame) -> None:
        table = frame.processes
        rows: list[tuple[str, list[Cell]]] = []
        if table is None:
            rows.append(("none", [Text("live capture only", style="italic"), "", ""]))
        else:
            if table is not self._procs:
                self._procs_before = self._procs if self._procs is not None and self._procs.seq else None
                self._procs = table
            for r in process_rows(table, self._procs_before)[:TOP]:
                unknown = r["pid"] is None
                rate = r["rx_bps"] + r["tx_bps"] if "rx_bps" in r else None
                label: Cell = Text(r["name"], style="italic") if unknown else process_cell(r["pid"], r["name"], 24)
                key = "unknown" if unknown else str(r["pid"])
                rows.append((key, [label, right(bits(rate)), right(size(r["rx_bytes"] + r["tx_bytes"]))]))
        self.query_one("#ov-processes", SnapTable).sync(rows)
