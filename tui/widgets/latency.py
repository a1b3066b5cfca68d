"""View 7, Latency: application request → response times per service and per server, and the slowest exchanges.

The engine times DNS (UDP and TCP port 53), HTTP/1.x (any TCP port) and MySQL COM_QUERY (port 3306)
from a request to the first packet of its response; p50 and p95 are nearest-rank quantiles of the
recent exchanges. Services and servers sort together (`s`, `S`); the slowest list is by latency.
Tab moves between the three tables; `W` and `i` take a service's port, a server's host, or the
client and server of a slow exchange.
"""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Label, Static

from capture_backend.contract import KIND_NAMES, SAMPLE_RING, Exchange, TableSnapshot, address_text, proto_name
from tui.selection import HostSelection, PairSelection, PortSelection
from tui.widgets.format import count, endpoint, ms, right, utc_stamp
from tui.widgets.table import Cell, Column, SnapTable
from tui.widgets.view import Frame, SortKey, View

FIGURES = (
    Column("exchanges", "Exchanges", 9, numeric=True),
    Column("p50", "p50 ms", 7, numeric=True),
    Column("p95", "p95 ms", 7, numeric=True),
    Column("max", "Max ms", 7, numeric=True, drop=1),  # dropped at 80 columns: servers keep p50/p95
    Column("mean", "Mean ms", 7, numeric=True, drop=2),
)
SERVICE_COLUMNS = (Column("kind", "Kind", 5), Column("port", "Port", 10), *FIGURES)
SERVER_COLUMNS = (Column("kind", "Kind", 5), Column("server", "Server"), Column("port", "Port", 10), *FIGURES)
SLOWEST_COLUMNS = (
    Column("kind", "Kind", 5),
    Column("ms", "Latency ms", 10, numeric=True),
    Column("time", "Response (UTC)", 14, drop=1),
    Column("client", "Client"),
    Column("server", "Server"),
    Column("request", "Request"),
)
SORT_KEYS = tuple(SortKey(c.key, None) for c in FIGURES)  # of the services or the servers: figure_values()
SORT_NAMES = {"exchanges": "exchanges", "p50": "p50", "p95": "p95", "max": "max", "mean": "mean"}
EMPTY = (
    "No exchange timed yet. Timed: DNS over UDP and TCP port 53, HTTP/1.x on any TCP port, MySQL COM_QUERY "
    "on port 3306, from the request to the first packet of its response."
)


def figure_values(t: TableSnapshot, column: str, idx: np.ndarray) -> np.ndarray:
    """A figure column of a latency table (services or servers) for rows idx: count, or ns."""
    c = t.cols
    if column == "mean":
        return c["sum"][idx] / np.maximum(c["count"][idx], 1)
    return c["count" if column == "exchanges" else column][idx]


def _figures(t: TableSnapshot, i: int) -> list[Cell]:
    c = t.cols
    n = int(c["count"][i])
    return [
        right(count(n)),
        right(ms(int(c["p50"][i]) / 1e6)),
        right(ms(int(c["p95"][i]) / 1e6)),
        right(ms(int(c["max"][i]) / 1e6)),
        right(ms(int(c["sum"][i]) / max(n, 1) / 1e6)),
    ]


def _printable(text: str) -> Text:
    """Request text from the wire as plain text (no markup, control characters shown as '·')."""
    return Text("".join(ch if ch.isprintable() else "·" for ch in text))


class LatencyView(View):
    """Latency per service and per server (sorted on their figures), then the slowest exchanges."""

    title = "Latency"
    sort_keys = SORT_KEYS
    sort_names = SORT_NAMES

    def compose(self) -> ComposeResult:
        yield Static(id="latency-summary")
        yield Label("Services", classes="latency-title")
        yield SnapTable(SERVICE_COLUMNS, id="latency-services")
        yield Label("Servers", classes="latency-title")
        yield SnapTable(SERVER_COLUMNS, id="latency-servers")
        yield Label("Slowest exchanges", classes="latency-title")
        yield SnapTable(SLOWEST_COLUMNS, id="latency-slowest")

    @property
    def table(self) -> SnapTable:
        """The table with the keyboard (W and i take its row), else the servers."""
        focused: Widget | None = self.app.focused
        if isinstance(focused, SnapTable) and focused.parent is self:
            return focused
        return self.query_one("#latency-servers", SnapTable)

    def _pick(self, frame: Frame, t: TableSnapshot, mask: np.ndarray | None, top: int) -> np.ndarray:
        idx = np.flatnonzero(mask) if mask is not None else np.arange(len(t))
        key = self.sort_key
        values = figure_values(t, key.column, idx) if key is not None else None
        return self.pick(frame, idx, top, t.cols["count"][idx], values)

    def show(self, frame: Frame) -> None:
        lat = frame.snap.latency
        q = frame.query
        summary = self.query_one("#latency-summary", Static)
        if lat.exchanges == 0:
            summary.update(EMPTY)
        else:
            summary.update(
                f"{count(lat.exchanges)} exchanges (request → first response packet), "
                f"{count(lat.unanswered)} requests unanswered; p50, p95: the last {count(SAMPLE_RING)} exchanges"
            )
        self.selections = {}  # the three tables' row keys differ in form: one map
        services = self.query_one("#latency-services", SnapTable)
        t = lat.services
        rows: list[tuple[str, list[Cell]]] = []
        for i in self._pick(frame, t, q.services(t) if q else None, services.capacity()).tolist():
            k = t.key(i)
            number = int(k["kind"])
            where = f"{proto_name(int(k['proto']))}/{int(k['port'])}"
            key = where if all(r[0] != where for r in rows) else f"{where}/{number}"
            self.selections[key] = PortSelection(proto_name(int(k["proto"])), int(k["port"]))
            rows.append((key, [KIND_NAMES.get(number, str(number)), where, *_figures(t, i)]))
        self._sync(services, SERVICE_COLUMNS, rows)

        servers = self.query_one("#latency-servers", SnapTable)
        t = lat.servers
        rows = []
        for i in self._pick(frame, t, q.servers(t) if q else None, servers.capacity()).tolist():
            k = t.key(i)
            addr = address_text(k["server"])
            kind = KIND_NAMES.get(int(k["kind"]), str(k["kind"]))
            where = f"{proto_name(int(k['proto']))}/{int(k['port'])}"
            self.selections[f"{addr}|{kind} {where}"] = HostSelection(addr)
            rows.append((f"{addr}|{kind} {where}", [kind, frame.name(addr), where, *_figures(t, i)]))
        self._sync(servers, SERVER_COLUMNS, rows)

        slowest = self.query_one("#latency-slowest", SnapTable)
        shown: list[Exchange] = list(lat.slowest)
        if q:
            shown = [x for x, hit in zip(shown, q.exchanges(shown).tolist(), strict=True) if hit]
        rows = []
        for n, x in enumerate(shown[: slowest.capacity()]):
            client, server = address_text(x.client), address_text(x.server)
            cells: list[Cell] = [
                x.kind,
                right(ms(x.latency_ns / 1e6)),
                utc_stamp(x.time_ns / 1e9, "%H:%M:%S", millis=True),
                frame.name(client),
                endpoint(frame.name(server), x.port),
                _printable(x.request),
            ]
            self.selections[f"{client}|{server}|{n}"] = PairSelection(client, server)
            rows.append((f"{client}|{server}|{n}", cells))
        slowest.sync(rows)

    def _sync(self, table: SnapTable, columns: tuple[Column, ...], rows: list[tuple[str, list[Cell]]]) -> None:
        table.set_labels({c.key: self.sort_label(c.key, c.label) for c in columns})
        table.sync(rows)
