"""What a table row costs: only the columns it uses are resident, zero columns are published without a copy,
and the top rows of a report are found without sorting every row."""

from __future__ import annotations

import ctypes

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from capture_backend.analysis.tables import FLOW_COLUMNS, FLOW_STATE, INT64_MAX, KeyTable
from capture_backend.contract import FLOW_KEY, TableSnapshot
from capture_backend.output import report

PAGE = 4096
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)


def resident_pages(a: np.ndarray) -> int:
    """Pages of a page-aligned array that are in memory (mincore)."""
    assert a.ctypes.data % PAGE == 0
    pages = -(-a.nbytes // PAGE)
    vec = ctypes.create_string_buffer(pages)
    assert _LIBC.mincore(a.ctypes.data, a.nbytes, vec) == 0, ctypes.get_errno()
    return sum(b & 1 for b in vec.raw)


def flow_table(rows: int) -> KeyTable:
    """A flow table of 2**20 rows (every column at least 1 MiB: a mapping of its own) with `rows` keys handed out."""
    t = KeyTable(FLOW_KEY.itemsize, FLOW_COLUMNS, 1 << 20, internal=FLOW_STATE)
    keys = np.zeros((rows, FLOW_KEY.itemsize), np.uint8)
    keys[:, :8] = np.arange(1, rows + 1, dtype=np.uint64).view(np.uint8).reshape(rows, 8)
    assert (t.ids(keys) == np.arange(rows)).all()
    return t


def test_rows_handed_out_are_resident_only_in_the_columns_that_do_not_start_at_zero() -> None:
    rows = 50_000
    t = flow_table(rows)
    starts_nonzero = {name for name, (_, _, fill) in FLOW_COLUMNS.items() if fill != 0}
    assert starts_nonzero == {"first", "tcp_next", "tcp_irtt"}
    # Residency first: reading a page never written maps the zero page, which mincore counts.
    for name, col in t.cols.items():
        if name in starts_nonzero:
            assert resident_pages(col) >= col[:rows].nbytes // PAGE
        else:
            assert resident_pages(col) == 0, name
    # Per handed-out row: its key, its `used` flag and the three columns above; none of the other 20.
    per_row = sum(resident_pages(a) for a in (t.keys, t.used, *t.cols.values())) * PAGE / rows
    assert per_row < FLOW_KEY.itemsize + 1 + 8 + 16 + 8 + 1
    for name, col in t.cols.items():
        assert (col[:rows] == FLOW_COLUMNS[name][2]).all(), name
    assert (t.cols["first"][:rows] == INT64_MAX).all()


def test_a_column_zero_in_every_row_is_published_as_zeros_and_copied_once_written() -> None:
    t = flow_table(200_000)  # 1.6 MB a column: zeros are mapped, not allocated
    before = t.freeze(0)
    retrans = before.cols["tcp_retrans"]
    assert resident_pages(retrans) == 0  # not a copy: pages never written
    assert retrans.shape == (200_000,) and not retrans.any() and not retrans.flags.writeable
    t.cols["tcp_retrans"][1234] = 7
    after = t.freeze(0)
    assert after.cols["tcp_retrans"][1234] == 7 and int(after.cols["tcp_retrans"].sum()) == 7
    assert not before.cols["tcp_retrans"].any()  # the earlier snapshot did not change
    for name, col in after.cols.items():  # every published column equals the used rows of the table
        assert np.array_equal(col, t.cols[name][: len(t)]), name


def table_of(total: np.ndarray) -> TableSnapshot:
    b = np.stack([total, np.zeros_like(total)], axis=1)
    return TableSnapshot(keys=np.zeros((total.size, 4), np.uint8), cols={"bytes": b})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=0, max_size=80), st.integers(-1, 90))
def test_the_top_rows_are_the_first_of_the_full_order(totals: list[int], top: int) -> None:
    total = np.array(totals, np.int64)
    full = np.lexsort((np.arange(total.size), -total))  # by bytes, largest first, ties in row order
    assert np.array_equal(report._order(table_of(total), top), full if top <= 0 else full[:top])
