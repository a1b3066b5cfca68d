"""View 6, Processes: per local process, rx/tx rates since the last result and totals, then the unknown row."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from capture_backend.contract import EMPTY_PROCESSES, PROCESS_NOTE, ProcessTable
from capture_backend.output.report import process_rows
from tui.widgets.format import DASH, bits, count, right, size
from tui.widgets.table import Cell, Column, SnapTable
from tui.widgets.view import Frame, View

COLUMNS = (  # drop: at 80 columns packets, user and the totals go first
    Column("pid", "PID", 8, numeric=True),
    Column("name", "Process", 18),
    Column("user", "User", 10, drop=4),
    Column("place", "NS/Container", 24, drop=5),
    Column("rx_rate", "Rx rate", 11, numeric=True),
    Column("tx_rate", "Tx rate", 11, numeric=True),
    Column("rx", "Rx total", 10, numeric=True, drop=2),
    Column("tx", "Tx total", 10, numeric=True, drop=3),
    Column("packets", "Packets", 10, numeric=True, drop=5),
    Column("state", "State", 7),
)


def place_cell(netns: str | None, container: str | None) -> str:
    """'NETNS/CONTAINER', '-' for the current namespace; blank for the current namespace without a container."""
    if not netns and not container:
        return ""
    return f"{netns or '-'}" + (f"/{container}" if container else "")


class ProcessesView(View):
    """Processes by bytes, exited ones marked, and the traffic no local socket explains."""

    title = "Processes"

    def __init__(self, results: Callable[[], ProcessTable], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.results = results
        self._current: ProcessTable | None = None
        self._before: ProcessTable | None = None
        self._note = f"Note: {PROCESS_NOTE}."

    def compose(self) -> ComposeResult:
        yield Static(f"Note: {PROCESS_NOTE}.", id="processes-note")
        yield SnapTable(COLUMNS, id="processes-table")

    def show(self, frame: Frame) -> None:
        table = self.results() if frame.asof is None else frame.processes or EMPTY_PROCESSES
        note = f"Note: {PROCESS_NOTE}."
        if table.error:
            note += f"  Process mapper failing ({table.errors} errors): {table.error}"
        if note != self._note:
            self._note = note
            self.query_one("#processes-note", Static).update(note)
        if frame.asof is None and table is not self._current:
            self._before = self._current if self._current is not None and self._current.seq else None
            self._current = table
        before = self._before if frame.asof is None else frame.processes_before  # rewound: that second's rates
        rows: list[tuple[str, list[Cell]]] = []
        for r in process_rows(table, before)[: self.table.capacity()]:
            unknown = r["pid"] is None
            rows.append(
                (
                    "unknown" if unknown else str(r["pid"]),
                    [
                        right(DASH if unknown else str(r["pid"])),
                        Text(r["name"], style="italic") if unknown else r["name"],
                        r["user"],
                        place_cell(r.get("netns"), r.get("container")),
                        right(bits(r.get("rx_bps"))),
                        right(bits(r.get("tx_bps"))),
                        right(size(r["rx_bytes"])),
                        right(size(r["tx_bytes"])),
                        right(count(r["rx_packets"] + r["tx_packets"])),
                        "exited" if r["exited"] else "",
                    ],
                )
            )
        self.table.sync(rows)
