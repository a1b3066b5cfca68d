"""SnapTable: a DataTable updated by diff (changed cells, new rows, stale rows) inside batch_update()."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.css.scalar import Unit
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

Cell = str | Text
DEFAULT_CAPACITY = 20


@dataclass(frozen=True)
class Column:
    """A column: key, header label, fixed width (None: fit the content), right-aligned or not."""

    key: str
    label: str
    width: int | None = None
    numeric: bool = False


class _Tagged(str):
    """The first cell of a row, carrying the row key (DataTable.sort only sees cell values, not keys)."""

    row_key: str

    def __new__(cls, text: str, row_key: str) -> _Tagged:
        cell = super().__new__(cls, text)
        cell.row_key = row_key
        return cell


class SnapTable(DataTable[Cell]):
    """A table whose rows are replaced by `sync()` without clear(): only what changed is touched."""

    COMPONENT_CLASSES = DataTable.COMPONENT_CLASSES | {"snaptable--bar"}
    DEFAULT_CSS = """
    SnapTable {
        height: 1fr;
    }
    """

    def __init__(self, columns: Sequence[Column], *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.spec = list(columns)
        self._shown: dict[str, tuple[Cell, ...]] = {}
        self._widths = {col.key: col.width for col in self.spec if col.width is not None}

    def on_mount(self) -> None:
        for col in self.spec:
            label = Text(col.label, justify="right") if col.numeric else col.label
            self.add_column(label, width=col.width, key=col.key)

    def set_labels(self, labels: dict[str, str]) -> None:
        """Rename column headers (e.g. to mark the sort column)."""
        changed = False
        for col in self.spec:
            column = self.columns.get(ColumnKey(col.key))
            if column is None or col.key not in labels:
                continue
            text = Text(labels[col.key], justify="right") if col.numeric else Text(labels[col.key])
            if column.label != text:
                column.label = text
                changed = True
            changed |= self._fit(col.key)
        if changed:
            self.refresh()

    def set_width(self, key: str, width: int) -> None:
        """Give a column a new fixed width."""
        self._widths[key] = width
        if self._fit(key):
            self.refresh()

    def _fit(self, key: str) -> bool:
        """Size a fixed-width column: its width, or its header's if wider (a sort arrow is not cut off)."""
        column = self.columns.get(ColumnKey(key))
        base = self._widths.get(key)
        if column is None or base is None:
            return False
        width = max(base, column.label.cell_len)
        if column.width == width and not column.auto_width:
            return False
        column.width = width
        column.auto_width = False
        self._require_update_dimensions = True
        return True

    def capacity(self) -> int:
        """How many rows fit on screen now (what is worth formatting); an auto-height table: up to its max-height."""
        header = self.header_height if self.show_header else 0
        rule, most = self.styles.height, self.styles.max_height
        if rule is not None and rule.is_auto and most is not None and most.unit == Unit.CELLS:
            return max(1, int(most.value) - header)
        height = self.scrollable_content_region.height - header
        return height if height > 0 else DEFAULT_CAPACITY

    def row_keys(self) -> list[str]:
        """Row keys in display order."""
        return [str(row.key.value) for row in self.ordered_rows]

    def sync(self, rows: Sequence[tuple[str, Sequence[Cell]]]) -> None:
        """Show exactly `rows` (key, cells), in this order, changing only what differs."""
        keys = [key for key, _ in rows]
        wanted = set(keys)
        col_keys = [col.key for col in self.spec]
        auto = {col.key for col in self.spec if col.width is None}
        with self.app.batch_update():
            for key in [k for k in self._shown if k not in wanted]:
                self.remove_row(key)
                del self._shown[key]
            for key, cells in rows:
                first, *rest = cells
                new = (_Tagged(str(first), key), *rest)
                old = self._shown.get(key)
                if old is None:
                    self.add_row(*new, key=key)
                else:
                    for col, before, after in zip(col_keys, old, new, strict=True):
                        if before != after:
                            self.update_cell(key, col, after, update_width=col in auto)
                self._shown[key] = new
            if self.row_keys() != keys:
                position = {key: n for n, key in enumerate(keys)}
                self.sort(col_keys[0], key=lambda cell: position[cell.row_key])
