"""What every numbered view shares: the Frame it renders, its sort keys, and row ordering on columns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from textual.containers import Vertical

from capture_backend.contract import EMPTY_ALERTS, AlertStatus, ProcessTable, Snapshot
from tui.selection import Selection
from tui.widgets.query import Query
from tui.widgets.table import SnapTable


@dataclass(frozen=True)
class Frame:
    """One refresh's inputs: the snapshot shown, the one before it, the first one, the view settings, the
    process mapper's latest result and the incident watcher's alert status."""

    snap: Snapshot
    prev: Snapshot | None
    base: Snapshot | None
    now: float
    query: Query = field(default_factory=Query)
    name: Callable[[str], str] = str  # address -> what to show (a resolved name when `n` is on)
    processes: ProcessTable | None = None  # the local processes owning flows (None: not mapped, e.g. a file)
    asof: float | None = None  # rewound: the time the snapshot shown is of (None: live)
    processes_before: ProcessTable | None = None  # rewound: the processes one second before (their rates)
    flows_note: str = ""  # rewound: where the flows shown come from
    past: tuple[tuple[Snapshot, Snapshot | None], ...] = ()  # rewound Interfaces: the seconds up to the cursor
    alerts: AlertStatus = EMPTY_ALERTS  # rules holding, incidents, floods and scans


KeyFn = Callable[[Frame, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SortKey:
    """A sortable column: its key, and the values of given rows (1-D numbers or 2-D bytes, like addresses)."""

    column: str
    values: KeyFn | None  # None: the view passes the values to pick() itself
    descending: bool = True


def order_rows(
    idx: np.ndarray, primary: np.ndarray, descending: bool, secondary: np.ndarray | None, top: int
) -> np.ndarray:
    """The first `top` of idx sorted by primary (then secondary, largest first; then row), as row indices."""
    if primary.ndim == 1 and 0 < top < idx.size:  # keep only rows that can make the top (ties included): O(n)
        values = primary.astype(np.float64)
        signed = -values if descending else values
        cand = signed <= np.partition(signed, top - 1)[top - 1]
        idx, primary = idx[cand], primary[cand]
        secondary = secondary[cand] if secondary is not None else None
    keys: list[np.ndarray] = [idx]
    if secondary is not None:
        keys.append(-secondary.astype(np.float64))
    if primary.ndim == 2:  # bytes, most significant first
        cols = primary.astype(np.int64)
        if descending:
            cols = 255 - cols
        keys.extend(cols[:, j] for j in range(cols.shape[1] - 1, -1, -1))
    else:
        values = primary.astype(np.float64)
        keys.append(-values if descending else values)
    return idx[np.lexsort(keys)][:top]


class View(Vertical):
    """A numbered view: renders a Frame, and sorts by one of its SortKeys (`s` cycles, `S` reverses)."""

    title: ClassVar[str] = ""
    sort_keys: ClassVar[tuple[SortKey, ...]] = ()
    sort_names: ClassVar[dict[str, str]] = {}

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.sort_index = 0
        self.reverse = False
        self.selections: dict[str, Selection] = {}  # row key -> what W and i take (rebuilt by show())

    @property
    def sort_key(self) -> SortKey | None:
        """The current sort column (None for views that do not sort)."""
        return self.sort_keys[self.sort_index] if self.sort_keys else None

    def cycle_sort(self) -> None:
        """Sort by the next column."""
        if self.sort_keys:
            self.sort_index = (self.sort_index + 1) % len(self.sort_keys)
            self.reverse = False

    def reverse_sort(self) -> None:
        """Flip the sort direction."""
        self.reverse = not self.reverse

    def sort_label(self, column: str, label: str) -> str:
        """A header label with the sort arrow when this column is the sort column."""
        key = self.sort_key
        if key is None or key.column != column:
            return label
        return f"{label} {'▼' if key.descending != self.reverse else '▲'}"

    def describe_sort(self) -> str:
        """The sort column in words, with its direction ('' for views that do not sort)."""
        key = self.sort_key
        if key is None:
            return ""
        return f"{self.sort_names.get(key.column, key.column)} {'▼' if key.descending != self.reverse else '▲'}"

    def pick(
        self,
        frame: Frame,
        idx: np.ndarray,
        top: int,
        secondary: np.ndarray | None = None,
        values: np.ndarray | None = None,
    ) -> np.ndarray:
        """The first `top` of the rows idx in the current sort order (by the sort key's values of them,
        or by `values` when the view has them)."""
        key = self.sort_key
        if key is None or idx.size == 0:
            return idx[:top]
        descending = key.descending != self.reverse
        if values is None:
            assert key.values is not None
            values = key.values(frame, idx)
        if values.dtype.kind == "f" and values.ndim == 1:  # NaN: nothing to show (a blank cell), last either way
            values = np.where(np.isnan(values), -np.inf if descending else np.inf, values)
        return order_rows(idx, values, descending, secondary, top)

    def show(self, frame: Frame) -> None:
        """Render the frame (only the rows that fit)."""
        raise NotImplementedError

    @property
    def table(self) -> SnapTable:
        """The view's main table."""
        return self.query_one(SnapTable)

    def selection(self) -> Selection | None:
        """What the row under the cursor selects (a flow, a host pair, a host or a port); None when the
        table is empty or the view has nothing to select (Interfaces, Drops, Processes)."""
        table = self.table
        if not table.row_count:
            return None
        row_key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.selections.get(str(row_key))

    def focus_table(self) -> None:
        """Give the keyboard to the view's main table."""
        self.table.focus()
