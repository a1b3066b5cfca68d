"""View 9, Incidents: the rules holding now (at the top, in the alert colour), then the incidents frozen in the
watcher's directory, newest first: time, rule, what fired it, packets kept. The directory is read every few
seconds (and when the watcher froze a new one) on a worker thread, never on the UI thread.

Enter opens the frozen moment (IncidentPanel: incident.json's rule, rows and record, as read-only tables);
`i` opens the incident's pcap in the packet inspector (the app does that, through `incident_path`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static

from capture_backend.contract import AlertStatus
from tui.widgets.format import DASH, bits, count, endpoint, ms, right, size, utc_stamp
from tui.widgets.table import Cell, Column, SnapTable
from tui.widgets.view import Frame, View

RELOAD_S = 3.0
Loader = Callable[[str], list[dict[str, Any]]]  # directory -> incident rows, oldest first (incident_rows)
Reader = Callable[[str], dict[str, Any] | None]  # incident directory -> its incident.json (read_incident)
COLUMNS = (
    Column("time", "Time (UTC)", 19),
    Column("rule", "Rule"),
    Column("fired", "Fired by"),
    Column("packets", "Packets", 9, numeric=True),
    Column("dir", "Directory", drop=1),
)
ACTIVE = "active|"


def value_text(label: str | None, value: float | None) -> str:
    """'label=value' as the incident line says it, or the value alone for a metric without rows."""
    if value is None:
        return DASH
    return f"{label}={value:.6g}" if label else f"{value:.6g}"


def packets_text(row: dict[str, Any]) -> str:
    """Packets kept in the incident's pcap, or why there are none yet."""
    if row.get("packets") is not None:
        return count(row["packets"])
    error = row.get("pcap_error") or row.get("error") or ""
    return "pending" if "post window" in error else "none"


class IncidentsView(View):
    """Alerts holding now, then the incidents of the watcher's directory, newest first."""

    title = "Incidents"

    class Selected(Message):
        """Enter on an incident: its directory."""

        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

    def __init__(self, load: Loader, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.load = load
        self.rows: list[dict[str, Any]] = []  # newest first
        self.directory = ""
        self._loaded_at = float("-inf")
        self._loading = False
        self._seen: tuple[int, tuple[Any, ...]] = (-1, ())
        self._alerts: AlertStatus | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="incidents-note")
        yield SnapTable(COLUMNS, id="incidents-table")

    def show(self, frame: Frame) -> None:
        alerts = frame.alerts
        self._alerts = alerts
        seen = (alerts.incidents, alerts.recent)
        stale = time.monotonic() - self._loaded_at >= RELOAD_S or seen != self._seen
        if alerts.directory and (alerts.directory != self.directory or stale) and not self._loading:
            self._seen = seen
            self._reload(alerts.directory)
        self._draw()

    def _reload(self, directory: str) -> None:
        self._loading = True
        self.run_worker(lambda: self._read(directory), thread=True, group="incidents")

    def _read(self, directory: str) -> None:
        """On a worker thread: list the directory, then hand the rows to the UI thread."""
        try:
            rows = self.load(directory)
        except OSError as e:
            rows = [{"path": directory, "error": f"{e.strerror or e}"}]
        try:
            self.app.call_from_thread(self._loaded, directory, rows)
        except RuntimeError:  # the app closed while the directory was being read: nobody to show it to
            pass

    def _loaded(self, directory: str, rows: list[dict[str, Any]]) -> None:
        if not self.is_mounted:
            return
        self.directory = directory
        self.rows = rows[::-1]
        self._loaded_at = time.monotonic()
        self._loading = False
        self._draw()

    def _draw(self) -> None:
        alerts = self._alerts
        note = self.query_one("#incidents-note", Static)
        if alerts is None or not alerts.directory:
            note.update("No incident watcher in this run.")
            self.table.sync([])
            return
        note.update(f"{len(self.rows)} incidents in {alerts.directory} · Enter: the moment · i: pcap · !: freeze now")
        style = self.table.get_component_rich_style("snaptable--alert")
        rows: list[tuple[str, list[Cell]]] = []
        for a in alerts.active:
            label, value = a.rows[0] if a.rows else ("", None)
            cells = [utc_stamp(a.since), a.rule, value_text(label, value), "holding", a.expr]
            rows.append((ACTIVE + a.rule, [Text(c, style=style, justify="right" if n == 3 else "left")
                                           for n, c in enumerate(cells)]))  # fmt: skip
        for r in self.rows:
            if "error" in r:
                rows.append((r["path"], [DASH, DASH, r["error"], "", _name(r["path"])]))
                continue
            top = r.get("top") or {}
            rows.append(
                (
                    r["path"],
                    [
                        utc_stamp(r["time"]) if r.get("time") is not None else DASH,
                        str(r.get("rule") or DASH),
                        value_text(top.get("label"), top.get("value")) if top else DASH,
                        right(packets_text(r)),
                        _name(r["path"]),
                    ],
                )
            )
        self.table.sync(rows)

    def incident_path(self) -> str | None:
        """The directory of the incident under the cursor (None on an alert holding now, or no row)."""
        table = self.table
        if not table.row_count:
            return None
        key = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        return None if key.startswith(ACTIVE) else key

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        path = self.incident_path()
        if path is not None:
            self.post_message(self.Selected(path))


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


# --- Enter: the frozen moment, from incident.json
SECTIONS: dict[str, tuple[tuple[Column, ...], Callable[[dict[str, Any]], list[Cell]]]] = {
    "fired": (
        (Column("label", "Row"), Column("value", "Value", numeric=True)),
        lambda r: [r.get("label") or DASH, right(f"{r['value']:.6g}")],
    ),
    "interfaces": (
        (
            Column("name", "Interface"),
            Column("rx", "RX", 10, numeric=True),
            Column("tx", "TX", 10, numeric=True),
            Column("packets", "Captured pkts", 13, numeric=True),
            Column("bytes", "Captured", 10, numeric=True),
        ),
        lambda r: [
            r["name"],
            right(bits(r.get("rx_bps"))),
            right(bits(r.get("tx_bps"))),
            right(count(r["captured_packets"])),
            right(size(r["captured_bytes"])),
        ],
    ),
    "hosts": (
        (
            Column("addr", "Host"),
            Column("tx", "Sent", 10, numeric=True),
            Column("rx", "Received", 10, numeric=True),
            Column("packets", "Packets", 10, numeric=True),
        ),
        lambda r: [r["addr"], right(size(r["tx_bytes"])), right(size(r["rx_bytes"])), right(count(r["packets"]))],
    ),
    "pairs": (
        (
            Column("pair", "Host pair"),
            Column("bytes", "Bytes", 10, numeric=True),
            Column("packets", "Packets", 10, numeric=True),
        ),
        lambda r: [f"{r['a']} ⇄ {r['b']}", right(size(r["bytes"])), right(count(r["packets"]))],
    ),
    "ports": (
        (
            Column("port", "Port"),
            Column("bytes", "Bytes", 10, numeric=True),
            Column("packets", "Packets", 10, numeric=True),
        ),
        lambda r: [
            f"{r['proto']}/{r['port']}" + (f" {r['service']}" if r.get("service") else ""),
            right(size(r["bytes"])),
            right(count(r["packets"])),
        ],
    ),
    "flows": (
        (
            Column("flow", "Flow (client → server)"),
            Column("bytes", "Bytes", 10, numeric=True),
            Column("packets", "Packets", 10, numeric=True),
            Column("retrans", "Retr", 5, numeric=True),
        ),
        lambda r: [
            f"{r['proto']} {endpoint(r['src'], r['sport'])} → {endpoint(r['dst'], r['dport'])}",
            right(size(r["bytes"])),
            right(count(r["packets"])),
            right(count(r["tcp"]["retransmissions"]) if "tcp" in r else ""),
        ],
    ),
    "latency": (
        (
            Column("service", "Service"),
            Column("exchanges", "Exchanges", 9, numeric=True),
            Column("p50", "p50 ms", 8, numeric=True),
            Column("p95", "p95 ms", 8, numeric=True),
        ),
        lambda r: [
            f"{r['kind']} {r['proto']}/{r['port']}",
            right(count(r["exchanges"])),
            right(ms(r["p50_ms"])),
            right(ms(r["p95_ms"])),
        ],
    ),
}
TITLES = {
    "fired": "What fired it",
    "interfaces": "Interfaces",
    "hosts": "Top hosts",
    "pairs": "Top host pairs",
    "ports": "Top ports",
    "flows": "Top flows",
    "latency": "Latency per service",
}


def section_rows(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """incident.json's rows for each section of the panel."""
    record = doc.get("record") or {}
    inc = doc.get("incident") or {}
    return {
        "fired": [{"label": r.get("label") or inc.get("metric"), "value": r["value"]} for r in inc.get("rows") or []],
        "interfaces": record.get("interfaces") or [],
        "hosts": record.get("hosts") or [],
        "pairs": record.get("pairs") or [],
        "ports": record.get("ports") or [],
        "flows": record.get("flows") or [],
        "latency": (record.get("latency") or {}).get("services") or [],
    }


def summary_text(doc: dict[str, Any], path: str) -> str:
    """The rule, when, the moment's totals and where its packets are."""
    inc = doc.get("incident") or {}
    totals = (doc.get("record") or {}).get("totals") or {}
    pcap = doc.get("pcap")
    if pcap is None:
        kept = f"pcap: written once the {doc.get('post_s', 0):g} s after the trigger have passed"
    elif "error" in pcap:
        kept = f"pcap: {pcap['error']}"
    else:
        kept = (
            f"pcap: {', '.join(pcap.get('files', [])) or 'no file'} ({count(pcap.get('packets'))} packets)  i: inspect"
        )
    return "\n".join(
        [
            f"{inc.get('expr') or inc.get('rule', '')} at {utc_stamp(inc.get('time') or 0, millis=True)} UTC",
            f"{count(totals.get('packets'))} packets, {size(totals.get('bytes'))} so far; "
            f"{bits(totals.get('bps'))}, {count(totals.get('pps'))} pkt/s",
            kept,
            path,
        ]
    )


class IncidentPanel(ModalScreen[None]):
    """One incident's frozen moment, read-only; Escape or Enter closes it."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("enter", "dismiss", "Close", show=False),
        Binding("i", "app.inspect", "Inspect its pcap"),  # the Incidents view's cursor is on this incident
    ]

    def __init__(self, path: str, doc: dict[str, Any]) -> None:
        super().__init__()
        self.path = path
        self.doc = doc

    def compose(self) -> ComposeResult:
        inc = self.doc.get("incident") or {}
        with VerticalScroll(id="incident-panel"):
            yield Label(f"Incident: {inc.get('rule', '?')}", id="incident-panel-title")
            yield Static(summary_text(self.doc, self.path), id="incident-summary")
            for name, rows in section_rows(self.doc).items():
                if rows:
                    yield Label(TITLES[name], classes="incident-section")
                    yield SnapTable(SECTIONS[name][0], id=f"incident-{name}")

    def on_mount(self) -> None:
        for name, rows in section_rows(self.doc).items():
            if rows:
                cells = SECTIONS[name][1]
                self.query_one(f"#incident-{name}", SnapTable).sync([(str(n), cells(r)) for n, r in enumerate(rows)])
