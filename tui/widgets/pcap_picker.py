"""`I`: pick a capture file of the snapshot or recording directory for the packet inspector."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static

from tui.widgets.format import right, size, utc_stamp
from tui.widgets.table import Cell, Column, SnapTable

SUFFIXES = (".pcap", ".pcapng")  # a recording's open file is `<name>.pcap.partial`: not listed
COLUMNS = (
    Column("name", "File"),
    Column("size", "Size", 9, numeric=True),
    Column("modified", "Modified (UTC)", 19),
    Column("dir", "Directory"),
)


@dataclass(frozen=True)
class CaptureFile:
    """A capture file found in one of the directories: where, how big, when last written."""

    path: Path
    size: int
    mtime: float
    directory: str  # as the dashboard was given it


def capture_files(directories: Iterable[str]) -> list[CaptureFile]:
    """The pcap and pcapng files of these directories (each directory once), newest first."""
    found: list[CaptureFile] = []
    seen: set[Path] = set()
    for directory in directories:
        where = Path(directory)
        try:
            real = where.resolve()
            if real in seen or not where.is_dir():
                continue
            seen.add(real)
            entries = list(where.iterdir())
        except OSError:
            continue
        for path in entries:
            if path.suffix not in SUFFIXES:
                continue
            try:
                st = path.stat()
            except OSError:  # gone since the listing (retention, rotation)
                continue
            if path.is_file():
                found.append(CaptureFile(path, st.st_size, st.st_mtime, directory))
    return sorted(found, key=lambda f: (-f.mtime, f.path.name))


class PcapPicker(ModalScreen[Path | None]):
    """The capture files, newest first; Enter picks the one under the cursor, Escape closes."""

    BINDINGS = [Binding("escape", "dismiss", "Close")]

    def __init__(self, files: list[CaptureFile]) -> None:
        super().__init__()
        self.files = files

    def compose(self) -> ComposeResult:
        with Vertical(id="pcap-picker"):
            yield Label("Inspect a capture file", id="pcap-picker-title")
            yield SnapTable(COLUMNS, id="pcap-picker-table")
            yield Static("↑ ↓ choose   Enter inspect   Escape close", id="pcap-picker-hint")

    def on_mount(self) -> None:
        rows: list[tuple[str, list[Cell]]] = [
            (str(f.path), [f.path.name, right(size(f.size)), utc_stamp(f.mtime), f.directory]) for f in self.files
        ]
        table = self.query_one(SnapTable)
        table.sync(rows)
        table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.dismiss(Path(event.row_key.value))
