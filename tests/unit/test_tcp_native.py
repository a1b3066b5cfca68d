"""The compiled TCP sequence analysis (_native.tcp_sequence behind analysis/tcp.py) against the NumPy
one it replaced (tests/helpers/tcp_reference.py): random TCP conversations, cut into batches at random
points, fed through two Counters; every flow column must be equal after every batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any
from unittest.mock import patch

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture_backend.analysis import tables
from capture_backend.analysis.decode import Decoded, decode
from capture_backend.analysis.tables import CounterLimits, Counters
from tests.helpers import tcp_reference
from tests.helpers.tcp_health import all_frames
from tests.pcapgen import T0_NS, block_of_frames

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MASK = (1 << 32) - 1
MS = 1_000_000
# Around tshark's thresholds: 3 ms (out of order without an RTT), 20 ms (fast retransmission); and
# frame times that step back (tshark's gaps are unsigned).
DELTAS = [0, 1_000, 100_000, MS, 2_900_000, 3_100_000, 10 * MS, 19 * MS, 21 * MS, 200 * MS, 2_000 * MS, -MS, -3_000]
LENGTHS = [1, 2, 10, 100, 536, 1460, 0, 65_000]
ISNS = [0, 1, 1_000, MASK, MASK - 1, MASK - 100, MASK - 1_459, 1 << 31, (1 << 31) - 1]
KINDS = [
    "syn",
    "synack",
    "ack",
    "data",
    "data",
    "data",
    "retrans",
    "skip",
    "fill",
    "dupack",
    "keepalive",
    "zerowin",
    "winupdate",
    "rst",
    "fin",
    "ackahead",
    "garbage",
    "udp",
    "loss",  # a segment lost: the next one, the peer's duplicate ACKs, the lost one again (fast retransmission)
    "keepalive",
    "probe",  # one byte at the next seq, which stays next (a zero-window probe when the peer's window is 0)
]


@dataclass
class Side:
    """One direction of a simulated connection."""

    isn: int
    nxt: int = 0
    window: int = 64_240
    last_ack: int = 0
    sent: list[tuple[int, int]] = field(default_factory=list)  # (seq, len) of data segments
    holes: list[tuple[int, int]] = field(default_factory=list)  # skipped (seq, len), sent later

    def __post_init__(self) -> None:
        self.nxt = self.isn


@dataclass
class Packet:
    ts: int
    flow: int
    direction: int
    flags: int
    seq: int
    ack: int
    window: int
    length: int
    udp: bool = False


def simulate(isns: list[tuple[int, int]], events: list[tuple[int, int, int, int, int]]) -> list[Packet]:
    """Packets of len(isns) connections from events (flow, direction, kind, parameter, time step).
    ACKs are cumulative: up to the first segment the sender skipped."""
    sides = [[Side(a), Side(b)] for a, b in isns]
    out: list[Packet] = []
    t = T0_NS

    def send(flow: int, d: int, flags: int, seq: int, ack: int, length: int = 0, udp: bool = False) -> None:
        me = sides[flow][d]
        if flags & ACK:
            me.last_ack = ack
        out.append(Packet(t, flow, d, flags, seq & MASK, ack & MASK, me.window, length, udp))

    def acked(side: Side) -> int:
        return min(h[0] for h in side.holes) if side.holes else side.nxt

    for flow, direction, kind_no, param, delta in events:
        flow %= len(sides)
        me, peer = sides[flow][direction], sides[flow][1 - direction]
        kind = KINDS[kind_no]
        t += DELTAS[delta]
        flags, seq, ack, length = ACK, me.nxt, acked(peer), 0
        if kind in ("syn", "synack"):
            flags, seq = (SYN if kind == "syn" else SYN | ACK), me.isn
            me.nxt = max(me.nxt, me.isn + 1)
            if kind == "syn":
                ack = 0
        elif kind == "data":
            length = LENGTHS[param]
            flags |= PSH
            me.sent.append((seq, length))
            me.nxt += length
        elif kind == "retrans" and me.sent:
            seq, length = me.sent[-1 - param % len(me.sent)]
            flags |= PSH
        elif kind == "skip":
            hole = LENGTHS[param % 6]
            me.holes.append((seq, hole))
            seq += hole
            length = LENGTHS[(param + 1) % 6]
            me.sent.append((seq, length))
            me.nxt = seq + length
        elif kind == "fill" and me.holes:
            seq, length = me.holes.pop(param % len(me.holes))
            me.sent.append((seq, length))
        elif kind == "loss":
            lost, length = seq, LENGTHS[param % 6]
            me.nxt += 2 * length
            send(flow, direction, ACK | PSH, lost + length, ack, length)
            for _ in range(param % 4 + 1):
                t += DELTAS[delta % 4]
                send(flow, 1 - direction, ACK, peer.nxt, lost)
            t += DELTAS[param % 4]
            seq = lost
            me.sent.append((seq, length))
        elif kind == "probe":
            length = 1
            flags |= PSH
        elif kind == "dupack":
            ack = me.last_ack
        elif kind == "keepalive":
            seq, length = me.nxt - 1, param % 2
            if param >= 4:  # the peer answers it
                send(flow, direction, flags, seq, ack, length)
                t += DELTAS[delta % 4]
                direction, seq, ack, length = 1 - direction, peer.nxt, acked(me), 0
        elif kind == "zerowin":
            me.window = 0
        elif kind == "winupdate":
            me.window = 1_000 * param + 1
        elif kind == "rst":
            flags = RST | (ACK if param % 2 else 0)
        elif kind == "fin":
            flags |= FIN
            me.nxt += 1
        elif kind == "ackahead":
            ack = peer.nxt + LENGTHS[param]
        elif kind == "garbage":
            flags = (param * 37) & 0x3F
            seq = (me.nxt + (param - 4) * 0x3000_0000) & MASK
            ack = (param * 0x2468_ACE1) & MASK
        send(flow, direction, flags, seq, ack, length, kind == "udp")
    return out


def decoded(packets: list[Packet]) -> Decoded:
    """The columns decode() would give for these packets (IPv4, flow f: 10.0.0.f:4000+f <-> 11.0.0.f:80)."""
    n = len(packets)

    def col(values: list[int], dtype: type) -> np.ndarray:
        return np.array(values, dtype).reshape(n)

    v4 = 0xFFFF << 32
    client = [[0, v4 | 0x0A00_0000 | p.flow] for p in packets]
    server = [[0, v4 | 0x0B00_0000 | p.flow] for p in packets]
    src = [c if p.direction == 0 else s for p, c, s in zip(packets, client, server, strict=True)]
    dst = [s if p.direction == 0 else c for p, c, s in zip(packets, client, server, strict=True)]
    cport = [4000 + p.flow for p in packets]
    tcp = [not p.udp for p in packets]
    return Decoded(
        iface="test0",
        ts_ns=col([p.ts for p in packets], np.int64),
        wirelen=col([54 + max(p.length, 0) for p in packets], np.int64),
        ethertype=np.full(n, 0x0800, np.int32),
        vlan=np.full(n, -1, np.int32),
        ip=np.ones(n, bool),
        src_key=np.array(src, np.uint64).reshape(n, 2),
        dst_key=np.array(dst, np.uint64).reshape(n, 2),
        proto=col([6 if x else 17 for x in tcp], np.int32),
        sport=col([c if p.direction == 0 else 80 for p, c in zip(packets, cport, strict=True)], np.int32),
        dport=col([80 if p.direction == 0 else c for p, c in zip(packets, cport, strict=True)], np.int32),
        tcp_flags=col([p.flags if x else 0 for p, x in zip(packets, tcp, strict=True)], np.uint8),
        malformed=np.zeros(n, bool),
        tcp_seq=col([p.seq if x else 0 for p, x in zip(packets, tcp, strict=True)], np.int64),
        tcp_ack=col([p.ack if x else 0 for p, x in zip(packets, tcp, strict=True)], np.int64),
        tcp_window=col([p.window if x else -1 for p, x in zip(packets, tcp, strict=True)], np.int32),
        tcp_len=col([p.length if x else -1 for p, x in zip(packets, tcp, strict=True)], np.int32),
    )


@contextmanager
def numpy_reference() -> Iterator[None]:
    """Counters use the NumPy Sequence inside this block."""
    with patch.object(tables, "Sequence", tcp_reference.Sequence):
        yield


def assert_same_after_each(batches: list[Decoded], limits: CounterLimits | None = None) -> Counters:
    """Feed the batches to a Counters with the compiled pass and one with the NumPy reference; every
    flow column equal after each batch. Returns the compiled one."""
    ours, ref = Counters(limits or CounterLimits()), Counters(limits or CounterLimits())
    for b, dec in enumerate(batches):
        ours.add(dec)
        with numpy_reference():
            ref.add(dec)
        assert (ours.flows.used == ref.flows.used).all()
        assert (ours.flows.keys == ref.flows.keys).all()
        rows = np.flatnonzero(ref.flows.used)  # the cells of rows never handed out are not initialised
        for name, col in ref.flows.cols.items():
            assert np.array_equal(ours.flows.cols[name][rows], col[rows]), f"{name} differs after batch {b}"
    return ours


def split(dec: Decoded, cuts: list[int]) -> list[Decoded]:
    """dec cut into batches at the given packet indices."""
    n = len(dec)
    bounds = sorted({0, n, *(c % (n + 1) for c in cuts)})
    columns: dict[str, Any] = {
        f: v for f in Decoded.__dataclass_fields__ if isinstance(v := getattr(dec, f), np.ndarray)
    }
    return [
        replace(dec, **{f: v[a:b] for f, v in columns.items()}) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


isn = st.one_of(st.sampled_from(ISNS), st.integers(0, MASK))
event = st.tuples(
    st.integers(0, 3),
    st.integers(0, 1),
    st.integers(0, len(KINDS) - 1),
    st.integers(0, len(LENGTHS) - 1),
    st.integers(0, len(DELTAS) - 1),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(isn, isn), min_size=1, max_size=4),
    st.lists(event, min_size=1, max_size=150),
    st.lists(st.integers(0, 1_000), max_size=8),
    st.sampled_from([200_000, 200_000, 2, 3]),
)
def test_compiled_sequence_equals_numpy(
    isns: list[tuple[int, int]], events: list[tuple[int, int, int, int, int]], cuts: list[int], capacity: int
) -> None:
    packets = simulate(isns, events)
    assert_same_after_each(split(decoded(packets), cuts), CounterLimits(flows=capacity))


def test_handshakes_and_conversation_shapes() -> None:
    # Each flow: handshake, data both ways, a retransmission, a reordered pair, duplicate ACKs, a
    # keep-alive, a zero window, FIN; one flow wraps its sequence numbers.
    events: list[tuple[int, int, int, int, int]] = []
    for f in range(3):
        k = KINDS.index
        events += [(f, 0, k("syn"), 0, 3), (f, 1, k("synack"), 0, 3), (f, 0, k("ack"), 0, 3)]
        events += [(f, 0, k("data"), 5, 1), (f, 1, k("data"), 3, 1), (f, 0, k("skip"), 4, 1)]
        events += [(f, 1, k("dupack"), 0, 1), (f, 1, k("dupack"), 0, 1), (f, 0, k("fill"), 0, 2)]
        events += [(f, 0, k("retrans"), 1, 8), (f, 0, k("keepalive"), 0, 9), (f, 1, k("zerowin"), 0, 1)]
        events += [(f, 1, k("winupdate"), 7, 1), (f, 0, k("fin"), 0, 1), (f, 1, k("fin"), 0, 1)]
    packets = simulate([(MASK - 700, 5), (1_000, MASK), (1 << 31, 0)], events)
    dec = decoded(packets)
    whole = assert_same_after_each([dec])
    for n in range(1, len(packets)):
        assert_same_after_each(split(dec, [n]))
    cols = whole.flows.cols
    used = np.flatnonzero(whole.flows.used)
    assert (cols["tcp_irtt"][used] == 2 * DELTAS[3]).all()
    assert cols["tcp_retrans"][used].sum() > 0 and cols["tcp_dupack"][used].sum() > 0
    assert cols["tcp_zero_win"][used].sum() == 3


def test_many_flows_in_one_batch() -> None:
    # 3,000 flows and 40,000 packets at random: keys past 2**8, a direction split over many batches.
    rng = np.random.default_rng(11)
    flows = 3_000
    isns = [(int(a), int(b)) for a, b in rng.integers(0, MASK, (flows, 2))]
    events = [
        (int(f), int(d), int(k), int(p), int(t))
        for f, d, k, p, t in zip(
            rng.integers(0, flows, 40_000),
            rng.integers(0, 2, 40_000),
            rng.integers(0, len(KINDS), 40_000),
            rng.integers(0, len(LENGTHS), 40_000),
            rng.choice([0, 1, 2, 3], 40_000),
            strict=True,
        )
    ]
    packets = simulate(isns, events)
    dec = decoded(packets)
    assert_same_after_each(split(dec, [7_000, 7_001, 20_000, 33_333]))


def test_tshark_checked_sessions() -> None:
    # The sessions whose health tshark confirmed (tests/helpers/tcp_health.py), in batches of 1 to 9 frames.
    frames = all_frames()
    for size in (1, 2, 5, 9, len(frames)):
        batches = [decode(block_of_frames(frames[i : i + size])) for i in range(0, len(frames), size)]
        assert_same_after_each(batches)
