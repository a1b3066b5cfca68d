"""What a table row costs: only the columns it uses are resident, columns never written are published without
a copy, idle rows' history is not resident, and a report's top rows are found without sorting every row."""

from __future__ import annotations

import ctypes

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP

from capture_backend.analysis.tables import (
    APP_WRITTEN,
    FLOW_COLUMNS,
    FLOW_STATE,
    INT64_MAX,
    TCP_WRITTEN,
    TRAFFIC_COLUMNS,
    CounterLimits,
    KeyTable,
)
from capture_backend.contract import FLOW_KEY, HOST_KEY, TableSnapshot
from capture_backend.engine import Counting
from capture_backend.output import report
from tests.pcapgen import T0_NS, Frame, block_of_frames, ether

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


def anon_rss() -> int:
    """This process's resident anonymous memory, bytes (the zero page that reads map is not in it)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) << 10 for line in fh if line.startswith("RssAnon:"))


def flow_table(rows: int) -> KeyTable:
    """A flow table of 2**20 rows (every column at least 1 MiB: a mapping of its own) with `rows` keys handed out."""
    t = KeyTable(FLOW_KEY.itemsize, FLOW_COLUMNS, 1 << 20, internal=FLOW_STATE, untouched=TCP_WRITTEN | APP_WRITTEN)
    keys = np.zeros((rows, FLOW_KEY.itemsize), np.uint8)
    keys[:, :8] = np.arange(1, rows + 1, dtype=np.uint64).view(np.uint8).reshape(rows, 8)
    assert (t.ids(keys) == np.arange(rows)).all()
    return t


def test_rows_handed_out_are_resident_only_in_the_columns_they_use() -> None:
    rows = 50_000
    t = flow_table(rows)
    starts_nonzero = {name for name, (_, _, fill) in FLOW_COLUMNS.items() if fill != 0}
    assert starts_nonzero == {"first", "tcp_next", "tcp_irtt", "tcp_window"}
    # Residency first: reading a page never written maps the zero page, which mincore counts. The TCP columns
    # that start at -1 are not written before the first TCP packet (a UDP flood never writes them).
    for name, col in t.cols.items():
        if name == "first":
            assert resident_pages(col) >= col[:rows].nbytes // PAGE
        else:
            assert resident_pages(col) == 0, name
    # Per handed-out row: its key, its `used` flag and `first`; none of the others.
    per_row = sum(resident_pages(a) for a in (t.keys, t.used, *t.cols.values())) * PAGE / rows
    assert per_row < FLOW_KEY.itemsize + 1 + 8 + 1
    assert (t.cols["first"][:rows] == INT64_MAX).all()
    # The first TCP packet: the rows handed out so far take the TCP columns' initial values, once; rows handed
    # out later get them as they are handed out, and an evicted row gets them back.
    t.written(TCP_WRITTEN)
    for name, col in t.cols.items():
        assert (col[:rows] == FLOW_COLUMNS[name][2]).all(), name
    t.cols["tcp_next"][7] = (100, 200)
    t.remove(np.array([7]))
    keys = np.zeros((2, FLOW_KEY.itemsize), np.uint8)
    keys[:, :8] = np.array([rows + 1, rows + 2], np.uint64).view(np.uint8).reshape(2, 8)
    assert t.ids(keys).tolist() == [7, rows]
    assert t.cols["tcp_next"][[7, rows]].tolist() == [[-1, -1], [-1, -1]]
    assert t.cols["tcp_irtt"][[7, rows]].tolist() == [-1, -1]


def test_a_column_never_written_is_published_without_a_copy_and_copied_once_written() -> None:
    t = flow_table(200_000)  # 1.6 MB a column: zeros are mapped, not allocated
    before = t.freeze(0)
    retrans = before.cols["tcp_retrans"]
    assert resident_pages(retrans) == 0  # not a copy: pages never written
    assert retrans.shape == (200_000,) and not retrans.any() and not retrans.flags.writeable
    irtt = before.cols["tcp_irtt"]  # starts at -1 (not measured): one value seen from every row
    assert irtt.shape == (200_000,) and irtt.strides == (0,) and (irtt == -1).all() and not irtt.flags.writeable
    t.written(frozenset({"tcp_retrans", "tcp_irtt"}))
    t.cols["tcp_retrans"][1234] = 7
    t.cols["tcp_irtt"][99] = 5_000_000
    after = t.freeze(0)
    assert after.cols["tcp_retrans"][1234] == 7 and int(after.cols["tcp_retrans"].sum()) == 7
    assert after.cols["tcp_irtt"][99] == 5_000_000 and int((after.cols["tcp_irtt"] == -1).sum()) == 200_000 - 1
    assert not before.cols["tcp_retrans"].any() and (before.cols["tcp_irtt"] == -1).all()  # earlier: unchanged
    for name, col in after.cols.items():  # every published column equals the used rows of the table
        if name not in t.untouched:
            assert np.array_equal(col, t.cols[name][: len(t)]), name
    t.remove(np.array([1234]))  # a written column is reset on eviction, the row reused with zeros
    assert t.cols["tcp_retrans"][1234] == 0


def test_the_history_of_idle_rows_is_not_resident() -> None:
    t = KeyTable(HOST_KEY.itemsize, TRAFFIC_COLUMNS, 1 << 17, history=True)  # a second of history: 2 MiB
    rows = 100_000
    keys = np.zeros((rows, HOST_KEY.itemsize), np.uint8)
    keys[:, :8] = np.arange(1, rows + 1, dtype=np.uint64).view(np.uint8).reshape(rows, 8)
    ids = t.ids(keys)
    zeros = np.zeros(rows, np.int64)
    t.add_history(ids, zeros + 1000, zeros, zeros + 100)  # every row busy in second 1000
    busy = anon_rss()
    for sec in range(1001, 1046):  # then only row 0, for 45 seconds: second 1000's bucket is reused
        t.add_history(ids[:1], np.array([sec]), np.array([0]), np.array([10]))
    # Zeroing 40 seconds of 100,000 rows would make 40 * 1.6 MB resident; the buckets' whole pages go back to
    # the kernel instead, and second 1000's went back when its bucket was reused.
    assert anon_rss() - busy < 4 << 20
    snap = t.freeze(1046)
    assert snap.cols["avg40"][0].tolist() == [10.0, 0.0] and not snap.cols["avg40"][1:].any()
    assert (snap.cols["peak"][:, 0] == 100).all() and not snap.cols["peak"][:, 1].any()


def frame(pkt: object, t_ns: int) -> Frame:
    raw = bytes(pkt)  # type: ignore[call-overload]
    return Frame(raw, t_ns, len(raw))


def test_udp_flows_then_tcp_flows_reusing_their_rows_count_tcp_health_from_zero() -> None:
    # A table of 4 rows: 4 UDP flows, then 4 TCP flows evict them and take their rows.
    counting = Counting(CounterLimits(flows=4), False, "", lambda: 0.0)
    udp = [frame(ether("10.0.0.1", "10.0.0.2") / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000 + i, dport=53),
                 T0_NS + i) for i in range(4)]  # fmt: skip
    counting.add(block_of_frames(udp))
    flows = counting.counters.flows
    # tcp_next, tcp_irtt and tcp_window start at -1: always written
    assert TCP_WRITTEN - {"tcp_next", "tcp_irtt", "tcp_window"} <= flows.untouched
    snap = counting.freeze((), 0.0, {}).flows
    assert len(snap) == 4 and not snap.cols["tcp_retrans"].any() and not snap.cols["tcp_flags"].any()
    tcp = []
    for i in range(4):  # each flow: a segment, then the same segment again (a retransmission), then a RST
        head = ether("10.0.0.1", "10.0.0.2") / IP(src="10.0.0.1", dst="10.0.0.2")
        seg = head / TCP(sport=2000 + i, dport=80, flags="PA", seq=100, ack=1) / (b"x" * 10)
        rst = head / TCP(sport=2000 + i, dport=80, flags="R", seq=110)
        t = T0_NS + 1_000_000_000 + i * 1_000_000
        tcp += [frame(seg, t), frame(seg, t + 300_000_000), frame(rst, t + 400_000_000)]
    counting.add(block_of_frames(sorted(tcp, key=lambda f: f.ts_ns)))
    assert not TCP_WRITTEN & flows.untouched
    snap = counting.freeze((), 0.0, {}).flows
    assert len(snap) == 4 and snap.evicted == 4
    assert snap.fields["bport"].tolist() == [80] * 4
    assert snap.cols["tcp_retrans"].tolist() == [1] * 4
    assert snap.cols["tcp_resets"].tolist() == [1] * 4
    assert snap.cols["tcp_flags"].tolist() == [0x18 | 0x04] * 4  # PSH ACK | RST
    assert snap.cols["app_count"].tolist() == [0] * 4


def test_one_interface_costs_no_ifaces_column_and_a_second_one_marks_every_flow() -> None:
    counting = Counting(CounterLimits(), False, "", lambda: 0.0)  # 200,000 flows: the column is 1.6 MB

    def udp(sport: int, t_ns: int) -> Frame:
        return frame(ether("10.0.0.1", "10.0.0.2") / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=53),
                     t_ns)  # fmt: skip

    counting.add(block_of_frames([udp(1000 + i, T0_NS + i) for i in range(3)], iface="a"))
    flows = counting.counters.flows
    one = counting.freeze((), 0.0, {})
    ifaces = one.flows.cols["ifaces"]
    assert ifaces.tolist() == [1, 1, 1] and ifaces.strides == (0,)  # one value for every row: no copy
    assert resident_pages(flows.cols["ifaces"]) == 0  # nor written in the table
    # On interface b: flow 1000 again, and a new flow 2000.
    counting.add(block_of_frames([udp(1000, T0_NS + 10), udp(2000, T0_NS + 11)], iface="b"))
    two = counting.freeze((), 0.0, {})
    by_port = dict(zip(two.flows.fields["aport"].tolist(), two.flows.cols["ifaces"].tolist(), strict=True))
    assert by_port == {1000: 0b11, 1001: 0b01, 1002: 0b01, 2000: 0b10}
    assert two.flow_ifaces == ("a", "b")
    assert ifaces.tolist() == [1, 1, 1]  # the earlier snapshot is unchanged


def table_of(total: np.ndarray) -> TableSnapshot:
    b = np.stack([total, np.zeros_like(total)], axis=1)
    return TableSnapshot(keys=np.zeros((total.size, 4), np.uint8), cols={"bytes": b})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=0, max_size=80), st.integers(-1, 90), st.integers(1, 100))
def test_the_top_rows_are_the_first_of_the_full_order(totals: list[int], top: int, chunk: int) -> None:
    total = np.array(totals, np.int64)
    full = np.lexsort((np.arange(total.size), -total))  # by bytes, largest first, ties in row order
    assert np.array_equal(report._order(table_of(total), top, chunk), full if top <= 0 else full[:top])
