"""SnapTable: a DataTable updated by diff (changed cells, new rows, stale rows) inside batch_update().

Columns with a `drop` rank are left out, highest rank first, while the table is wider than its widget:
at 80 columns a view keeps its most important columns instead of cutting off the right-hand ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.css.scalar import Unit
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

Cell = str | Text
DEFAULT_CAPACITY = 20


@dataclass(frozen=True)
class Column:
    """A column: key, header label, fixed width (None: fit the content), right-aligned or not, and its drop
    rank (0: always shown; otherwise left out, highest first, when the table does not fit its width)."""

    key: str
    label: str
    width: int | None = None
    numeric: bool = False
    drop: int = 0


class _Tagged(str):
    """The first cell of a row, carrying the row key (DataTable.sort only sees cell values, not keys)."""

    row_key: str

    def __new__(cls, text: str, row_key: str) -> _Tagged:
        cell = super().__new__(cls, text)
        cell.row_key = row_key
        return cell


class _TaggedText(Text):
    """A styled first cell, carrying the row key the same way."""

    row_key: str


def _tagged(cell: Cell, row_key: str) -> Cell:
    if not isinstance(cell, Text):
        return _Tagged(str(cell), row_key)
    tagged = _TaggedText(cell.plain, style=cell.style, justify=cell.justify, spans=list(cell.spans))
    tagged.row_key = row_key
    return tagged


class SnapTable(DataTable[Cell]):
    """A table whose rows are replaced by `sync()` without clear(): only what changed is touched."""

    COMPONENT_CLASSES = DataTable.COMPONENT_CLASSES | {"snaptable--bar", "snaptable--alert"}
    DEFAULT_CSS = """
    SnapTable {
        height: 1fr;
    }
    """

    class Reshaped(Message):
        """Columns were left out or came back: how many rows fit may have changed (a scrollbar came or went)."""

    def __init__(self, columns: Sequence[Column], *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.all_columns = list(columns)
        self.spec = list(columns)  # the columns shown now
        self._shown: dict[str, tuple[Cell, ...]] = {}
        self._widths = {col.key: col.width for col in self.all_columns if col.width is not None}
        self._labels: dict[str, str] = {}

    def on_mount(self) -> None:
        self._add_columns()

    def _add_columns(self) -> None:
        for col in self.spec:
            text = self._labels.get(col.key, col.label)
            label = Text(text, justify="right") if col.numeric else text
            self.add_column(label, width=col.width, key=col.key)
            self._fit(col.key)

    def _fitting(self, rows: Sequence[tuple[str, Sequence[Cell]]]) -> list[Column]:
        """The columns that fit the widget's width: those with the highest drop rank go first."""
        width = self.scrollable_content_region.width
        if width <= 0 or not any(col.drop for col in self.all_columns):
            return self.all_columns
        need = {}
        for n, col in enumerate(self.all_columns):
            label = len(self._labels.get(col.key, col.label))
            fixed = self._widths.get(col.key)
            content = fixed if fixed is not None else max((len(str(cells[n])) for _, cells in rows), default=0)
            need[col.key] = max(label, content) + 2 * self.cell_padding
        shown = list(self.all_columns)
        for col in sorted((c for c in self.all_columns if c.drop), key=lambda c: -c.drop):
            if sum(need[c.key] for c in shown) <= width:
                break
            shown.remove(col)
        return shown

    def _reshape(self, columns: list[Column]) -> None:
        """Show only these columns (every row is added again)."""
        self.spec = columns
        self.clear(columns=True)
        self._shown = {}
        self._add_columns()
        self.post_message(self.Reshaped())

    def set_labels(self, labels: dict[str, str]) -> None:
        """Rename column headers (e.g. to mark the sort column)."""
        self._labels.update(labels)
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
        """Show exactly `rows` (key, cells of every column), in this order, changing only what differs."""
        fitting = self._fitting(rows)
        if [c.key for c in fitting] != [c.key for c in self.spec]:
            self._reshape(fitting)
        if len(self.spec) < len(self.all_columns):
            keep = [n for n, col in enumerate(self.all_columns) if col in self.spec]
            rows = [(key, [cells[n] for n in keep]) for key, cells in rows]
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
                new = (_tagged(first, key), *rest)
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
