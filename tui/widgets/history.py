"""View 8, History: the session store searched like `retrotap sessions` (time range, `/` filter, sort);
Enter shows a session, `W` writes its packets, `i` opens them in the packet inspector.

The store is read on a worker thread, never the UI's: again when the filter, range or sort change, and
every few seconds while the capture is live.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static

from capture_backend.contract import InspectJob, SessionPage, SessionPcap, UserError
from tui.widgets.format import count, duration, endpoint, ms, right, short_count, size
from tui.widgets.inspector import InspectorScreen
from tui.widgets.table import Cell, Column, SnapTable
from tui.widgets.view import Frame, SortKey, View

NS = 1_000_000_000
REQUERY_S = 3.0  # while live
NO_STORE = "No session store: run with --sessions DIR (or record with `retrotap record -w DIR`)."
DEFAULT_WINDOW = ""  # the last 15 minutes
PROCESS_WIDTH = 14
COLUMNS = (
    Column("start", "Start", 8),
    Column("duration", "Dur", 6, numeric=True),
    Column("proto", "Proto", 5),
    Column("client", "Client"),
    Column("server", "Server"),
    Column("packets", "Pkts", 6, numeric=True),
    Column("bytes", "Bytes", 9, numeric=True),
    Column("retrans", "Retr", 4, numeric=True),
    Column("rtt", "RTT", 5, numeric=True),
    Column("latency", "Lat", 6, numeric=True),
    Column("process", "Process", PROCESS_WIDTH),
)
# The sorts of `retrotap sessions --sort`, in its order; each column it sorts by.
SORTS = ("start", "bytes", "packets", "retrans", "latency", "duration")
SORT_COLUMNS = {name: name for name in SORTS}  # the column each sort marks (latency: the slowest exchange)
SORT_NAMES = {
    "start": "start",
    "bytes": "bytes",
    "packets": "packets",
    "retrans": "retransmissions",
    "latency": "slowest exchange",
    "duration": "duration",
}
# The detail panel: each key of a record (as `retrotap sessions --format json` has it) and its label.
DETAIL = (
    ("id", "Session"),
    ("start_ns", "First packet"),
    ("end_ns", "Last packet"),
    ("duration", "Duration"),
    ("iface", "Interface"),
    ("vlan", "VLAN"),
    ("proto", "Protocol"),
    ("src", "Client"),
    ("sport", "Client port"),
    ("dst", "Server"),
    ("dport", "Server port"),
    ("src_packets", "Client packets"),
    ("dst_packets", "Server packets"),
    ("src_bytes", "Client bytes"),
    ("dst_bytes", "Server bytes"),
    ("tcp_flags", "TCP flags"),
    ("retransmissions", "Retransmissions"),
    ("out_of_order", "Out-of-order"),
    ("duplicate_acks", "Duplicate ACKs"),
    ("zero_windows", "Zero windows"),
    ("resets", "Resets"),
    ("handshake_rtt_ms", "Handshake RTT"),
    ("exchanges", "Exchanges"),
    ("latency_avg_ms", "Latency mean"),
    ("latency_max_ms", "Latency max"),
    ("slowest_request", "Slowest request"),
    ("pid", "PID"),
    ("process", "Process"),
    ("user", "User"),
    ("reason", "Written because"),
)
Record = dict[str, Any]


class HistorySource(Protocol):
    """What the view asks of the session store (capture_backend.run.SessionHistory); each call may raise a
    UserError of one line, and runs on a worker thread."""

    inspect_limit: int

    def available(self) -> bool: ...

    def check_window(self, text: str) -> None: ...

    def page(self, text: str, window: str, sort: str, reverse: bool, now_ns: int | None) -> SessionPage: ...

    def write(self, session_id: int) -> SessionPcap: ...

    def inspect_job(self, path: str) -> InspectJob: ...


def clock_time(ns: int) -> str:
    """HH:MM:SS local time."""
    return time.strftime("%H:%M:%S", time.localtime(ns // NS))


def local_stamp(ns: int) -> str:
    """A local date and time with ms, as `retrotap sessions` prints it."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // NS)) + f".{ns % NS // 1_000_000:03d}"


def _ends(r: Record) -> tuple[str, str]:
    if r["proto"] in ("tcp", "udp", "sctp"):
        return endpoint(r["src"], r["sport"]), endpoint(r["dst"], r["dport"])
    return r["src"], r["dst"]


def _ms(v: float | None) -> str:
    return "" if v is None else ms(v)


def row_cells(r: Record) -> list[Cell]:
    """A record as the table shows it."""
    client, server = _ends(r)
    process = ""
    if r["process"]:
        tail = f"/{r['pid']}"
        name = r["process"]
        if len(name) + len(tail) > PROCESS_WIDTH:
            name = name[: max(1, PROCESS_WIDTH - len(tail) - 1)] + "…"
        process = name + tail
    return [
        clock_time(r["start_ns"]),
        right(duration(r["duration"])),
        r["proto"],
        client,
        server,
        right(short_count(r["src_packets"] + r["dst_packets"])),
        right(size(r["src_bytes"] + r["dst_bytes"])),
        right(short_count(r["retransmissions"]) if r["proto"] == "tcp" else ""),
        right(_ms(r["handshake_rtt_ms"])),
        right(_ms(r["latency_max_ms"])),
        process,
    ]


def detail_value(key: str, v: Any) -> str:
    """A record's value for the detail panel, with its unit."""
    if v is None or v == "":
        return "–"
    if key in ("start_ns", "end_ns"):
        return f"{local_stamp(v)} ({v} ns)"
    if key == "duration":
        return f"{v:.3f} s"
    if key.endswith("_ms"):
        return f"{ms(v)} ms"
    if key.endswith("_bytes"):
        return f"{count(v)} ({size(v)})"
    if isinstance(v, int):
        return count(v) if key not in ("id", "sport", "dport", "pid", "vlan") else str(v)
    return str(v)


def detail_table(r: Record) -> Table:
    """Every field of the record, label and value."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", justify="right", min_width=16)
    grid.add_column()
    for key, label in DETAIL:
        grid.add_row(label, Text(detail_value(key, r.get(key))))
    return grid


class SessionDetail(ModalScreen[None]):
    """One session's record, every field. Escape or Enter closes it."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("enter", "dismiss", "Close", show=False),
    ]

    def __init__(self, record: Record) -> None:
        super().__init__()
        self.record = record

    def compose(self) -> ComposeResult:
        client, server = _ends(self.record)
        with VerticalScroll(id="session-detail"):
            yield Label(f"Session {self.record['id']}: {self.record['proto']} {client} → {server}", id="session-title")
            yield Static(detail_table(self.record), id="session-body")


class HistoryView(View):
    """Session records of the open store, newest first; the store is read on a worker thread."""

    title = "History"
    sort_keys = tuple(SortKey(name, None) for name in SORTS)
    sort_names = SORT_NAMES

    class Loaded(Message):
        """A query's result (or its one-line error), from the worker."""

        def __init__(self, asked: tuple[Any, ...], page: SessionPage | None, error: str) -> None:
            super().__init__()
            self.asked = asked
            self.page = page
            self.error = error

    class Written(Message):
        """A session's pcap written (or why not), from the worker; `inspect`: open it in the inspector."""

        def __init__(self, session_id: int, result: SessionPcap | None, error: str, inspect: bool) -> None:
            super().__init__()
            self.session_id = session_id
            self.result = result
            self.error = error
            self.inspect = inspect

    def __init__(self, source: HistorySource, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.source = source
        self.window = DEFAULT_WINDOW
        self.page: SessionPage | None = None
        self.error = ""
        self.records: dict[str, Record] = {}
        self.written: dict[int, str] = {}
        self.queries = 0  # answered so far (tests wait on it)
        self._asked: tuple[Any, ...] | None = None
        self._shown: tuple[Any, ...] | None = None
        self._busy = False
        self._last = 0.0
        self._writing = False

    def compose(self) -> ComposeResult:
        yield Label(id="history-note")
        yield SnapTable(COLUMNS, id="history-table")

    # --- sort: the store sorts (start: newest first by default, the others largest first)
    @property
    def sql_reverse(self) -> bool:
        """Whether the store's order (start: oldest first; the rest: largest first) is turned around."""
        key = self.sort_key
        return (key is not None and key.column == "start") != self.reverse

    def set_window(self, text: str) -> None:
        """A new time range (checked first: TimeSpecError, one line)."""
        self.source.check_window(text)
        self.window = text.strip()

    # --- the refresh
    def show(self, frame: Frame) -> None:
        note = self.query_one("#history-note", Label)
        if not self.source.available():
            note.update(NO_STORE)
            self.table.sync([])
            return
        key = self.sort_key
        asked = (frame.query.text, self.window, key.column if key else "start", self.sql_reverse)
        live = frame.snap.live
        due = asked != self._shown or (live and time.monotonic() - self._last >= REQUERY_S)
        if due and not self._busy:
            self._busy = True
            self._last = time.monotonic()
            now_ns = int(frame.now * NS) if live else None
            self.run_worker(
                lambda: self._fetch(asked, now_ns), thread=True, exclusive=True, group="history", exit_on_error=False
            )
        self._note()

    def _fetch(self, asked: tuple[Any, ...], now_ns: int | None) -> None:
        text, window, sort, reverse = asked
        try:
            page = self.source.page(text, window, sort, reverse, now_ns)
        except UserError as e:
            self.post_message(self.Loaded(asked, None, str(e)))
        except Exception as e:  # said in the view, never a dead worker: the dashboard goes on
            self.post_message(self.Loaded(asked, None, f"history: {type(e).__name__}: {e}"))
        else:
            self.post_message(self.Loaded(asked, page, ""))

    def on_history_view_loaded(self, message: Loaded) -> None:
        message.stop()
        self._busy = False
        self._shown = message.asked
        self.queries += 1
        self.error = message.error
        if message.page is not None:
            self.page = message.page
            self.records = {str(r["id"]): r for r in message.page.rows}
            self.table.set_labels({c.key: self._label(c) for c in COLUMNS})
            self.table.sync([(k, row_cells(r)) for k, r in self.records.items()])
        self._note()

    def _label(self, col: Column) -> str:
        key = self.sort_key
        if key is None or SORT_COLUMNS.get(key.column) != col.key:
            return col.label
        return f"{col.label} {'▼' if key.descending != self.reverse else '▲'}"

    def _note(self) -> None:
        note = self.query_one("#history-note", Label)
        if self.error:
            note.update(Text(self.error, style="bold red"))
            return
        if self.page is None:
            note.update("reading the session store…")
            return
        p = self.page
        if p.from_ns <= 0:
            span = "all time"
        else:
            span = f"{local_stamp(p.from_ns)[:19]} – {clock_time(min(p.to_ns, time.time_ns()))}"
        more = f" (first {len(p.rows)})" if p.matched > len(p.rows) else ""
        window = f" [t: {self.window}]" if self.window else " [t: last 15 min]"
        note.update(f"{count(p.matched)} sessions{more}, {span}{window}")

    # --- Enter, W, i
    def _cursor_record(self) -> Record | None:
        table = self.table
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.records.get(str(key))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        r = self.records.get(str(event.row_key.value))
        if r is not None:
            self.app.push_screen(SessionDetail(r))

    def write_selected(self, inspect: bool = False) -> None:
        """Write the packets of the session under the cursor (then inspect them), on a worker thread."""
        r = self._cursor_record()
        if r is None:
            self.app.notify("no session selected", severity="warning")
            return
        sid = int(r["id"])
        if inspect and sid in self.written and Path(self.written[sid]).exists():
            self._inspect(self.written[sid])
            return
        if self._writing:
            self.app.notify("a session is already being written", severity="warning")
            return
        self._writing = True
        self.run_worker(self._writer(sid, inspect), thread=True, group="history-write", exit_on_error=False)

    def _writer(self, sid: int, inspect: bool) -> Callable[[], None]:
        def work() -> None:
            try:
                result = self.source.write(sid)
            except UserError as e:
                self.post_message(self.Written(sid, None, str(e), inspect))
            except Exception as e:  # never silent
                self.post_message(
                    self.Written(sid, None, f"writing session {sid} failed: {type(e).__name__}: {e}", inspect)
                )
            else:
                self.post_message(self.Written(sid, result, "", inspect))

        return work

    def on_history_view_written(self, message: Written) -> None:
        message.stop()
        self._writing = False
        result = message.result
        if result is None:
            self.app.notify(message.error, severity="error", timeout=8)
            return
        self.written[message.session_id] = result.paths[0]
        self.app.notify(f"session {message.session_id}: {result.summary()}", timeout=8)
        if message.inspect:
            self._inspect(result.paths[0])

    def _inspect(self, path: str) -> None:
        limit = self.source.inspect_limit
        self.app.push_screen(InspectorScreen(Path(path).name, self.source.inspect_job(path), limit))
