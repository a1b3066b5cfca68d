"""Fold decoded columns into bounded tables: flows, host pairs, hosts, ports, protocols, interfaces.

Packets are grouped once per block by their directional 5-tuple and second (compiled:
_native.group_rows); every table is then updated per *distinct group*, never per packet. Rows live
in NumPy columns addressed through a compiled open-addressing index (_native.KeyIndex); the groups
are folded into them, and evicted rows reset, by compiled loops (add_traffic, add_directed,
fill_rows), each one nogil pass per batch. The tables are bounded (capacity + idle timeout, oldest
evicted first, evictions counted).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from capture_backend._native import (
    KeyIndex,
    add_directed,
    add_exchanges,
    add_traffic,
    batch_totals,
    fill_rows,
    group_keys,
    group_packets,
    group_rows,
    oldest_rows,
    window_sums,
)
from capture_backend.analysis.decode import HAS_PORTS, Decoded
from capture_backend.analysis.services import known_ports
from capture_backend.analysis.tcp import FLOW_COLUMNS as TCP_FLOW_COLUMNS
from capture_backend.analysis.tcp import STATE_COLUMNS as TCP_STATE_COLUMNS
from capture_backend.analysis.tcp import Sequence
from capture_backend.contract import FLOW_KEY, HOST_KEY, PAIR_KEY, PORT_KEY, key_bytes, pack_keys
from capture_backend.contract import TableSnapshot as TableSnapshot

NS = 1_000_000_000
HISTORY_SECONDS = 40
AVERAGE_WINDOWS = (2, 10, 40)
INT64_MAX = np.iinfo(np.int64).max
IFACE_BITS = 64  # interfaces a flow's "ifaces" column tells apart (the 65th and later are not marked)

# name → (dtype, per-row shape, initial value)
ColumnSpec = Mapping[str, tuple[type, tuple[int, ...], int]]
TRAFFIC_COLUMNS: ColumnSpec = {
    "packets": (np.int64, (2,), 0),
    "bytes": (np.int64, (2,), 0),
    "first": (np.int64, (), INT64_MAX),
    "last": (np.int64, (), 0),
}
# origin: the direction of the flow's earliest packet (0: a sent it), i.e. who started the flow.
# TCP health (as tshark's tcp.analysis), per direction: tcp_next is the highest unwrapped seq + len
# (+1 for SYN/FIN) seen (-1: none) and tcp_next_t when it last grew; tcp_lastack, tcp_window and
# tcp_last_t the last segment's raw ack, raw window (-1: none) and time; tcp_dupacks the duplicate ACKs since
# the ack last changed; tcp_ka whether the last segment was a keep-alive. tcp_syn is the time of the
# latest SYN without ACK (0: none); tcp_irtt the handshake RTT in ns (-1: not measured).
FLOW_COLUMNS: ColumnSpec = {
    **TRAFFIC_COLUMNS,
    "tcp_flags": (np.uint8, (), 0),
    "origin": (np.uint8, (), 0),
    "tcp_retrans": (np.int64, (), 0),
    "tcp_ooo": (np.int64, (), 0),
    "tcp_dupack": (np.int64, (), 0),
    "tcp_zero_win": (np.int64, (), 0),
    "tcp_resets": (np.int64, (), 0),
    "tcp_next": (np.int64, (2,), -1),
    "tcp_next_t": (np.int64, (2,), 0),
    "tcp_lastack": (np.int64, (2,), 0),
    "tcp_last_t": (np.int64, (2,), 0),
    "tcp_window": (np.int64, (2,), -1),
    "tcp_dupacks": (np.int64, (2,), 0),
    "tcp_ka": (np.uint8, (2,), 0),
    "tcp_syn": (np.int64, (), 0),
    "tcp_irtt": (np.int64, (), -1),
    "app_count": (np.int64, (), 0),
    "app_sum": (np.int64, (), 0),
    "app_max": (np.int64, (), 0),
    "ifaces": (np.uint64, (), 0),  # bit i: seen on the i-th interface counted (Counters.iface_bits)
    "vlan": (np.uint16, (), 0),  # the outermost VLAN id + 1 of the flow's latest tagged packets (0: untagged)
}
# The flow columns only the capture thread reads (sequence analysis state): not copied into snapshots.
FLOW_STATE = frozenset(
    {"tcp_next", "tcp_next_t", "tcp_lastack", "tcp_last_t", "tcp_window", "tcp_dupacks", "tcp_ka", "tcp_syn"}
)
# Flow columns written only once a flow has TCP packets (TCP health) or application exchanges (latency):
# until then they are zero in every row, neither reset on eviction nor copied into snapshots.
TCP_WRITTEN = frozenset({*TCP_STATE_COLUMNS, *TCP_FLOW_COLUMNS, "tcp_flags"})
APP_WRITTEN = frozenset({"app_count", "app_sum", "app_max"})
VLAN_WRITTEN = frozenset({"vlan"})  # written once a tagged packet is counted
# Written once a second interface is counted: until then every used row holds the one interface's bit.
IFACE_WRITTEN = frozenset({"ifaces"})
PORT_COLUMNS: ColumnSpec = TRAFFIC_COLUMNS
# Where group_keys writes each key field: byte offsets, read from the contract's layouts.
KEY_FIELDS = np.array(
    [
        layout.fields[name][1]  # type: ignore[index]
        for layout, names in (
            (FLOW_KEY, ("a", "b", "aport", "bport", "proto")),
            (PAIR_KEY, ("a", "b")),
            (PORT_KEY, ("proto", "port")),
        )
        for name in names
    ],
    np.int64,
)


class KeyTable:
    """Rows addressed by fixed-width byte keys, stored as NumPy columns allocated at capacity (mapped lazily).

    Optionally keeps per-second byte history for two directions (iftop's 2/10/40 s averages). Columns
    named in `untouched` are not written (nor their rows given their initial value) until `written()` says so.
    """

    def __init__(
        self,
        width: int,
        columns: ColumnSpec,
        capacity: int,
        history: bool = False,
        internal: frozenset[str] = frozenset(),
        untouched: frozenset[str] = frozenset(),
    ) -> None:
        self.width = width
        self.internal = internal  # columns freeze() leaves out
        self.specs = dict(columns)
        if history:
            self.specs["peak"] = (np.uint64, (2,), 0)
        self.history = history
        # Per-second bytes, slot-major (slot, row, direction) so one second of every row is contiguous.
        self.slot_sec = np.full(HISTORY_SECONDS, -1, np.int64)
        self.slot_folded = np.zeros(HISTORY_SECONDS, bool)  # already folded into "peak"
        self.capacity = capacity
        self.evicted = 0
        # Every array is allocated at capacity up front, zeroed and mapped lazily, and never written ahead of
        # use: rows cost memory only once handed out, and only in the columns they use (a column starting at
        # zero is not written when a row is handed out; the others are, in ids()).
        size = capacity
        self.keys = lazy_zeros((size, width), np.uint8)
        self.used = lazy_zeros((size,), np.bool_)
        self.cols: dict[str, np.ndarray] = {
            name: lazy_zeros((size, *shape), dtype) for name, (dtype, shape, _) in self.specs.items()
        }
        self._first = {name: fill for name, (_, _, fill) in self.specs.items() if fill != 0}
        # Never written yet: every row holds the initial value (in fact still zero pages), nothing to reset or copy.
        self.untouched = set(untouched)
        # What an untouched column holds in every *used* row when that is not its initial value (set by the owner).
        self.constant: dict[str, int] = {}
        self.hist = lazy_zeros((HISTORY_SECONDS if history else 0, size, 2), np.uint64)
        self._hist_map = _mapping(self.hist)
        # A reused row's history counts from this second on: older buckets still hold its last owner's bytes.
        self.hist_from = np.zeros(size if history else 0, np.int64)
        self.max_from = 0
        self._fills = {
            name: np.full((1, *shape), fill, dtype).view(np.uint8).ravel()
            for name, (dtype, shape, fill) in self.specs.items()
        }
        # Key → row (`key_bytes in index`, `index[key_bytes]`), the free rows and the high-water mark.
        self.index = KeyIndex(width, capacity, self.keys, self.used)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def high(self) -> int:
        """Rows ever handed out: every used row is below it."""
        return self.index.high

    def remove(self, ids: np.ndarray) -> None:
        """Drop rows (their keys become unknown, their cells reset; the last of `ids` is reused first)."""
        if ids.size == 0:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.index.remove(ids)
        self.used[ids] = False
        for name, col in self.cols.items():  # compiled: a row's cell is one memcpy, not a NumPy scatter each
            if name not in self.untouched:
                fill_rows(_row_bytes(col), ids, self._fills[name])
        if self.history:
            # Only the newest bucket is cleared; the older ones are masked by hist_from (40 scatters saved).
            newest = int(self.slot_sec.max())
            if newest >= 0:
                fill_rows(_row_bytes(self.hist[newest % HISTORY_SECONDS]), ids, _ZERO_PAIR)
                self.hist_from[ids] = newest
                self.max_from = max(self.max_from, newest)

    def evict_oldest(self, count: int, keep: np.ndarray) -> None:
        """Evict the `count` rows with the oldest `last` seen (ties: the lowest row), never those in `keep`."""
        h = self.high
        victims = oldest_rows(self.used[:h].view(np.uint8), self.cols["last"][:h], _i64(keep), count)
        self.remove(victims)
        self.evicted += int(victims.size)

    def evict_idle(self, cutoff_ns: int) -> int:
        """Evict rows last seen before `cutoff_ns`; returns how many."""
        h = self.high
        idle = np.flatnonzero(self.used[:h] & (self.cols["last"][:h] < cutoff_ns))
        self.remove(idle)
        self.evicted += int(idle.size)
        return int(idle.size)

    def ids(self, keys: np.ndarray) -> np.ndarray:
        """Row id of each key (m, width), creating rows for new keys; -1 when over capacity.

        When the new keys (a repeated one counted each time) would take the table past its
        capacity, the oldest rows not looked up here are evicted first: the excess plus 1/16 of
        the capacity, so that a flood evicts in bulk rather than at every batch.
        """
        m = keys.shape[0]
        keys = np.ascontiguousarray(keys, dtype=np.uint8)
        out = np.empty(m, np.int64)
        hashes = np.empty(m, np.uint64)
        missing = self.index.lookup(keys, out, hashes)
        if not missing:
            return out
        overflow = len(self.index) + missing - self.capacity
        if overflow > 0:
            self.evict_oldest(overflow + self.capacity // 16, out[out >= 0])
        fresh = self.high
        _, over = self.index.insert(keys, out, hashes, 0)  # the arrays hold `capacity` rows: it never stops short
        self.evicted += over
        if self.high > fresh:  # rows handed out for the first time: their cells take the columns' initial values
            new = slice(fresh, self.high)
            for name, fill in self._first.items():
                if name not in self.untouched:
                    self.cols[name][new] = fill
        return out

    def ids_of_repeated(self, keys: np.ndarray) -> np.ndarray:
        """ids() for keys that repeat a lot (pairs, hosts, ports of many flows): one lookup per distinct key."""
        if keys.shape[0] < 64:
            return self.ids(keys)
        k = keys
        if self.width % 8:  # whole 64-bit words for the grouping (np.pad costs more than the grouping)
            k = np.zeros((keys.shape[0], self.width + (-self.width % 8)), np.uint8)
            k[:, : self.width] = keys
        k = np.ascontiguousarray(k).view(np.uint64)
        first, inv = _group(k)
        return self.ids(keys[first])[inv]

    def add_history(self, ids: np.ndarray, sec: np.ndarray, direction: np.ndarray, nbytes: np.ndarray) -> None:
        """Add bytes to the per-second buckets of rows, in one of two directions.

        Seconds are taken in order, each added before a later second reuses its bucket, so a call
        spanning more than HISTORY_SECONDS (a file chunk) still brings every second to the peak.
        """
        if sec.size == 0:
            return
        order = np.argsort(sec, kind="stable")
        secs, starts = np.unique(sec[order], return_index=True)
        ends = np.append(starts[1:], order.size)
        for s, a, b in zip(secs.tolist(), starts.tolist(), ends.tolist(), strict=True):
            k = s % HISTORY_SECONDS
            if self.slot_sec[k] < s:
                self._fold(k)
                self._clear_bucket(k)
                self.slot_sec[k] = s
                self.slot_folded[k] = False
            if self.slot_sec[k] == s:  # else older than what the bucket holds: dropped
                rows = order[a:b]
                add_directed(self.hist[k].view(np.int64), _i64(ids[rows]), _i64(direction[rows]), _i64(nbytes[rows]))

    def _clear_bucket(self, k: int) -> None:
        """Zero bucket k below `high`. Its whole pages go back to the kernel (they read as zeros and cost no
        memory until a row has bytes in that second again), so the history of idle rows is not resident."""
        raw = self.hist.reshape(-1).view(np.uint8)
        lo, hi = k * self.hist.shape[1] * 16, (k * self.hist.shape[1] + self.high) * 16
        first, last = -(-lo // PAGE) * PAGE, hi // PAGE * PAGE
        if self._hist_map is None or last - first < PAGE:
            raw[lo:hi] = 0
            return
        raw[lo:first] = 0
        self._hist_map.madvise(mmap.MADV_DONTNEED, first, last - first)
        raw[last:hi] = 0

    def _fold(self, k: int) -> None:
        """Bring a completed second into the peak column (once)."""
        if self.slot_sec[k] >= 0 and not self.slot_folded[k]:
            peak = self.cols["peak"][: self.high]
            np.maximum(peak, self._bucket(k), out=peak)
            self.slot_folded[k] = True

    def _bucket(self, k: int) -> np.ndarray:
        """Bucket k's bytes of every row below `high`, zero for rows whose history starts after it."""
        second = int(self.slot_sec[k])
        bucket = self.hist[k, : self.high]
        if self.max_from <= second:
            return bucket
        return np.where((self.hist_from[: self.high] <= second)[:, None], bucket, np.uint64(0))

    def written(self, names: frozenset[str]) -> None:
        """Columns about to be written (before the write): from now on they are reset and copied. The rows
        handed out so far take the initial value now, or the used ones their `constant` (one pass, the first
        time only)."""
        for name in self.untouched & names:
            if name in self.constant:
                h = self.high
                self.cols[name][:h][self.used[:h]] = self.constant.pop(name)
            elif name in self._first:
                self.cols[name][: self.high] = self._first[name]
        self.untouched -= names

    def _published(self, name: str, col: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The used rows of a column; one never written (TCP health of a UDP flood) is published as zero
        pages, which cost no memory until read, instead of a copy."""
        if name in self.untouched:
            value = self.constant.get(name, self._first.get(name, 0))
            if value:  # one value seen from every row: no memory
                return np.broadcast_to(col.dtype.type(value), (rows.size, *col.shape[1:]))
            return lazy_zeros((rows.size, *col.shape[1:]), col.dtype)
        return np.take(col, rows, axis=0)  # a row gather (a fancy index of a 2-D column is ~15 times slower)

    def freeze(self, now_sec: int, derive: Callable[[dict[str, np.ndarray]], None] | None = None) -> TableSnapshot:
        """An immutable copy of the used rows, with window averages when history is kept; `derive` may
        rewrite the copied columns before they are frozen."""
        rows = np.flatnonzero(self.used[: self.high])
        cols = {name: self._published(name, col, rows) for name, col in self.cols.items() if name not in self.internal}
        if derive is not None:
            derive(cols)
        if self.history:
            age = now_sec - self.slot_sec  # 1 = the last completed second
            for done in np.flatnonzero((age >= 1) & ~self.slot_folded).tolist():
                self._fold(done)
            cols["peak"] = np.take(self.cols["peak"], rows, axis=0).astype(np.float64)  # a 2-D row gather: take
            means = np.empty((len(AVERAGE_WINDOWS), rows.size, 2), np.float64)
            window_sums(self.hist, self.slot_sec, self.hist_from, rows, now_sec, _WINDOWS, means)
            for a, mean in zip(AVERAGE_WINDOWS, means, strict=True):
                cols[f"avg{a}"] = mean
        for col in cols.values():
            col.flags.writeable = False
        keys = np.take(self.keys, rows, axis=0)
        keys.flags.writeable = False
        rows.flags.writeable = False
        return TableSnapshot(keys=keys, cols=MappingProxyType(cols), evicted=self.evicted, slots=rows)


_ZERO_PAIR = np.zeros(16, np.uint8)
_WINDOWS = np.array(AVERAGE_WINDOWS, np.int64)
LAZY_BYTES = 1 << 20
PAGE = mmap.PAGESIZE


def lazy_zeros(shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    """A zeroed array whose pages become resident only when written (an anonymous mapping when large,
    whatever the allocator's thresholds)."""
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if size < LAZY_BYTES:
        return np.zeros(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), dtype).reshape(shape)


def _mapping(a: np.ndarray) -> mmap.mmap | None:
    """The anonymous mapping a lazy_zeros() array lives in (from its start), None for a small array."""
    base = a.base
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def _i64(a: np.ndarray) -> np.ndarray:
    """An int64, C-contiguous array for the compiled kernels (no copy when it already is one)."""
    return np.ascontiguousarray(a, dtype=np.int64)


def _row_bytes(col: np.ndarray) -> np.ndarray:
    """A C-contiguous column seen as one line of bytes per row (no copy)."""
    return col.view(np.uint8).reshape(col.shape[0], -1)


@dataclass
class Tally:
    """Packets and bytes of one small, open-ended category (ethertype, protocol, VLAN, interface)."""

    packets: int = 0
    bytes: int = 0


@dataclass
class CounterLimits:
    """Capacities and idle timeouts of the bounded tables; analysis: TCP health and application latency."""

    flows: int = 200_000
    pairs: int = 100_000
    hosts: int = 100_000
    ports: int = 65_536 * 2
    flow_idle_s: float = 300.0
    pair_idle_s: float = 3600.0
    analysis: bool = True


def _group(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One representative row index per distinct row of k, and each row's group number (compiled)."""
    inv = np.empty(k.shape[0], np.int64)
    first = group_rows(np.ascontiguousarray(k, dtype=np.uint64), inv)
    return first, inv


_HAS_PORTS = HAS_PORTS.view(np.uint8)
TALLY_BINS = 1 << 16  # a tally of values below this counts them in bins instead of sorting them


def _count(table: dict[int, Tally], key: int, packets: int, nbytes: int) -> None:
    t = table.setdefault(key, Tally())
    t.packets += packets
    t.bytes += nbytes


def _tally(table: dict[int, Tally], keys: np.ndarray, wirelen: np.ndarray) -> None:
    if keys.size == 0:
        return
    if keys[0] == keys[-1] and (keys == keys[0]).all():  # one value in the whole batch
        _count(table, int(keys[0]), int(keys.size), int(wirelen.sum()))
        return
    if int(keys.min()) >= 0 and int(keys.max()) < TALLY_BINS:  # ethertypes, VLAN ids, protocols: no sort
        packets = np.bincount(keys, minlength=1)
        values = np.flatnonzero(packets)
        nbytes = np.bincount(keys, weights=wirelen)[values]
        packets = packets[values]
    else:
        values, inverse = np.unique(keys, return_inverse=True)
        packets = np.bincount(inverse, minlength=values.size)
        nbytes = np.bincount(inverse, weights=wirelen, minlength=values.size)
    for v, p, b in zip(values.tolist(), packets.tolist(), nbytes.tolist(), strict=True):
        t = table.setdefault(v, Tally())
        t.packets += p
        t.bytes += int(b)


@dataclass(frozen=True, slots=True)
class FlowEnds:
    """Packets (or groups of them) as flows: (a, aport) is the smaller endpoint; swap: b sent it."""

    swap: np.ndarray  # bool
    a: np.ndarray  # (n, 16) uint8 address bytes
    b: np.ndarray
    aport: np.ndarray  # uint64
    bport: np.ndarray
    proto: np.ndarray

    def keys(self) -> np.ndarray:
        """Their FLOW_KEYs, (n, FLOW_KEY.itemsize) uint8."""
        n = self.swap.shape[0]
        return pack_keys(FLOW_KEY, n, a=self.a, b=self.b, aport=self.aport, bport=self.bport, proto=self.proto)


def flow_ends(src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray, proto: np.ndarray) -> FlowEnds:
    """The one definition of a flow: (n, 2) uint64 address keys, ports and protocols, in canonical direction."""
    sport, dport = sport.astype(np.uint64, copy=False), dport.astype(np.uint64, copy=False)
    proto = proto.astype(np.uint64, copy=False)
    swap = (src[:, 0] > dst[:, 0]) | (
        (src[:, 0] == dst[:, 0]) & ((src[:, 1] > dst[:, 1]) | ((src[:, 1] == dst[:, 1]) & (sport > dport)))
    )
    sw = swap[:, None]
    a, b = np.where(sw, dst, src), np.where(sw, src, dst)
    aport, bport = np.where(swap, dport, sport), np.where(swap, sport, dport)
    return FlowEnds(swap, key_bytes(a), key_bytes(b), aport, bport, proto)


def packet_flow_keys(dec: Decoded) -> np.ndarray:
    """Each decoded packet's FLOW_KEY, as the flow table keys it (rows that are not IP: meaningless)."""
    return flow_ends(dec.src_key, dec.dst_key, dec.sport, dec.dport, np.maximum(dec.proto, 0)).keys()


@dataclass
class Counters:
    """Every counter retrotap keeps; only the capture thread writes it."""

    limits: CounterLimits = field(default_factory=CounterLimits)
    packets: int = 0
    bytes: int = 0
    malformed: int = 0
    first_ns: int = 0
    last_ns: int = 0
    ethertypes: dict[int, Tally] = field(default_factory=dict)
    protocols: dict[int, Tally] = field(default_factory=dict)
    vlans: dict[int, Tally] = field(default_factory=dict)
    interfaces: dict[str, Tally] = field(default_factory=dict)
    iface_bits: dict[str, int] = field(default_factory=dict)  # an interface's bit in the flows' "ifaces" column
    flows: KeyTable = field(init=False)
    pairs: KeyTable = field(init=False)
    hosts: KeyTable = field(init=False)
    ports: KeyTable = field(init=False)

    def __post_init__(self) -> None:
        self._batch: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # sel, group of each, group's flow
        self._batch_rows = 0  # rows of the block counted last
        known_ports()  # load /etc/services now, not on the capture thread's first packet
        lim = self.limits
        self.flows = KeyTable(
            FLOW_KEY.itemsize,
            FLOW_COLUMNS,
            lim.flows,
            internal=FLOW_STATE,
            untouched=TCP_WRITTEN | APP_WRITTEN | VLAN_WRITTEN | IFACE_WRITTEN,
        )
        self.pairs = KeyTable(PAIR_KEY.itemsize, TRAFFIC_COLUMNS, lim.pairs, history=True)
        self.hosts = KeyTable(HOST_KEY.itemsize, TRAFFIC_COLUMNS, lim.hosts, history=True)
        self.ports = KeyTable(PORT_KEY.itemsize, PORT_COLUMNS, lim.ports)

    def add(self, dec: Decoded) -> None:
        """Count one decoded block."""
        n = len(dec)
        self._batch = None
        self._batch_rows = n
        if n == 0:
            return
        wire = dec.wirelen
        by_proto = np.zeros((256, 2), np.int64)
        nbytes, bad, lo, hi, ethertype, tagged, nip, ip_bytes, proto = batch_totals(
            _i64(wire), dec.malformed.view(np.uint8), _i64(dec.ts_ns), dec.ethertype, dec.vlan, dec.ip.view(np.uint8),
            dec.proto, by_proto,
        )  # fmt: skip
        self.packets += n
        self.bytes += nbytes
        self.malformed += bad
        self.first_ns = lo if self.first_ns == 0 else min(self.first_ns, lo)
        self.last_ns = max(self.last_ns, hi)
        iface = self.interfaces.setdefault(dec.iface, Tally())
        iface.packets += n
        iface.bytes += nbytes
        if ethertype >= 0:  # the usual batch: one ethertype
            _count(self.ethertypes, ethertype, n, nbytes)
        else:
            _tally(self.ethertypes, dec.ethertype, wire)
        if tagged:
            is_tagged = dec.vlan >= 0
            _tally(self.vlans, dec.vlan[is_tagged], wire[is_tagged])
        if nip:
            sel = np.arange(n) if nip == n else np.flatnonzero(dec.ip)
            if proto >= 0:
                _count(self.protocols, proto, nip, ip_bytes)
            else:
                for p in np.flatnonzero(by_proto[:, 0]).tolist():
                    _count(self.protocols, p, int(by_proto[p, 0]), int(by_proto[p, 1]))
            bit = self.iface_bits.setdefault(dec.iface, len(self.iface_bits))
            self._add_ip(dec, sel, np.uint64(1 << bit) if bit < IFACE_BITS else np.uint64(0))

    def _add_ip(self, dec: Decoded, sel: np.ndarray, iface_bit: np.uint64) -> None:
        whole = sel.size == len(dec)
        # np.take, not col[sel]: a fancy index of a 2-D column (the addresses) is ~10 times slower.
        pick: Callable[[np.ndarray], np.ndarray] = (
            (lambda col: col) if whole else (lambda col: np.take(col, sel, axis=0))
        )
        src, dst = pick(dec.src_key), pick(dec.dst_key)
        ts = pick(dec.ts_ns)
        flags = pick(dec.tcp_flags)
        # Group packets by their directional 5-tuple and second, summed in the same compiled pass; everything
        # after works per group.
        inv = np.empty(sel.size, np.int64)
        c = np.ascontiguousarray
        first, g_packets, g_bytes, g_first, g_last, g_flags = group_packets(
            c(src), c(dst), c(pick(dec.sport)), c(pick(dec.dport)), c(pick(dec.proto)), _i64(ts),
            _i64(pick(dec.wirelen)), c(flags), inv,
        )  # fmt: skip
        g = first.size
        has_flags = bool(g_flags.any())  # only TCP has flags: a UDP flood skips the flags' work
        rep = first if whole else sel[first]  # each group's first packet, as a row of the block
        flow_keys = np.empty((g, FLOW_KEY.itemsize), np.uint8)
        pair_keys = np.empty((g, PAIR_KEY.itemsize), np.uint8)
        host_keys = np.empty((2 * g, HOST_KEY.itemsize), np.uint8)  # senders, then receivers
        port_keys = np.empty((g, PORT_KEY.itemsize), np.uint8)
        g_dir, port_dir = np.empty(g, np.int64), np.empty(g, np.int64)
        group_keys(
            rep, dec.src_key, dec.dst_key, dec.sport, dec.dport, dec.proto, known_ports().view(np.uint8),
            _HAS_PORTS, KEY_FIELDS, flow_keys, pair_keys, host_keys, port_keys, g_dir, port_dir,
        )  # fmt: skip
        g_sec = g_first // NS  # the group's one second
        traffic = (g_dir, g_packets, g_bytes, g_first, g_last)

        flows = self.flows
        if "ifaces" in flows.untouched and flows.constant.setdefault("ifaces", int(iface_bit)) != iface_bit:
            flows.written(IFACE_WRITTEN)  # a second interface: the rows so far take the first one's bit
        fid = flows.ids(flow_keys)
        del flow_keys  # a file chunk's keys are megabytes: each goes once its table has them
        self._batch = (sel, inv, fid)
        ok = fid >= 0
        cols = self.flows.cols
        earlier = np.flatnonzero(ok & (g_first < cols["first"][np.where(ok, fid, 0)]))
        earlier = earlier[np.argsort(-g_first[earlier], kind="stable")]  # the earliest is assigned last
        cols["origin"][fid[earlier]] = g_dir[earlier]
        _add_traffic(self.flows, fid, *traffic)
        if has_flags:
            self.flows.written(TCP_WRITTEN)
            np.bitwise_or.at(cols["tcp_flags"], fid[ok], g_flags[ok])
        if iface_bit and "ifaces" not in flows.untouched:
            seen = fid[ok]
            cols["ifaces"][seen] |= iface_bit  # one bit for the whole batch: repeated rows write the same value
        g_vlan = pick(dec.vlan)[first]
        tagged = np.flatnonzero(ok & (g_vlan >= 0))
        if tagged.size:
            self.flows.written(VLAN_WRITTEN)
            cols["vlan"][fid[tagged]] = g_vlan[tagged] + 1
        tcp_len = pick(dec.tcp_len)
        tcp = np.flatnonzero(tcp_len >= 0) if self.limits.analysis else np.zeros(0, np.int64)
        if tcp.size:
            every = tcp.size == tcp_len.size  # an all-TCP batch needs no gathers
            p_inv = inv if every else inv[tcp]
            # (flow, direction) of each TCP group, ranked: sorting packets by a small rank is a radix sort.
            g_tcp = np.zeros(g, bool)
            g_tcp[p_inv] = True
            g_tcp &= ok
            g_keys, g_rank = np.unique(np.where(g_tcp, fid * 2 + g_dir, -1), return_inverse=True)
            rank = g_rank.ravel()[p_inv]
            cut: Callable[[np.ndarray], np.ndarray] = (lambda col: col) if every else (lambda col: np.take(col, tcp))
            if g_keys[0] < 0:  # flows over capacity, or groups without TCP
                good = rank > 0
                if not good.all():
                    sub = tcp[good]
                    cut = lambda col: np.take(col, sub)  # noqa: E731
                    rank = rank[good]
                rank, g_keys = rank - 1, g_keys[1:]
            if rank.size:
                self.flows.written(TCP_WRITTEN)
                Sequence(
                    cols,
                    g_keys,
                    rank,
                    cut(ts),
                    cut(flags),
                    cut(pick(dec.tcp_seq)),
                    cut(pick(dec.tcp_ack)),
                    cut(pick(dec.tcp_window)),
                    cut(tcp_len),
                ).run()

        pid = self.pairs.ids_of_repeated(pair_keys)
        del pair_keys
        _add_traffic(self.pairs, pid, *traffic)
        _add_history(self.pairs, pid, g_sec, g_dir, g_bytes)

        # Hosts: the sender transmits (direction 0), the receiver receives (direction 1).
        hid = self.hosts.ids_of_repeated(host_keys)
        del host_keys
        both = np.repeat(np.array([0, 1], np.int64), g)
        doubled = [np.concatenate([x, x]) for x in (g_packets, g_bytes, g_first, g_last)]
        _add_traffic(self.hosts, hid, both, *doubled)
        _add_history(self.hosts, hid, np.concatenate([g_sec, g_sec]), both, doubled[1])

        # Later fragments and headers cut short carry no ports: they count for the pair, not a port.
        sub = np.flatnonzero(port_dir >= 0)
        if sub.size:
            every = sub.size == g
            tid = self.ports.ids_of_repeated(port_keys if every else port_keys[sub])
            cols_of = (port_dir, g_packets, g_bytes, g_first, g_last)
            _add_traffic(self.ports, tid, *(cols_of if every else (x[sub] for x in cols_of)))

    def flow_of(self, rows: np.ndarray) -> np.ndarray:
        """Flow row of decoded rows (increasing, distinct) of the block counted last (-1: not IP, or over
        capacity)."""
        out = np.full(rows.size, -1, np.int64)
        if self._batch is None or rows.size == 0:
            return out
        sel, inv, fid = self._batch
        if rows.size == self._batch_rows and rows[0] == 0 and rows[-1] == rows.size - 1:  # every row, in order
            if sel.size == rows.size:  # every row is IP: one gather
                return fid[inv]
            out[sel] = fid[inv]
            return out
        pos = np.searchsorted(sel, rows)
        found = (pos < sel.size) & (sel[np.minimum(pos, sel.size - 1)] == rows)
        out[found] = fid[inv[pos[found]]]
        return out

    def add_latency(self, fid: np.ndarray, latency_ns: np.ndarray) -> None:
        """Application exchanges (request → response) of flows."""
        cols = self.flows.cols
        self.flows.written(APP_WRITTEN)
        add_exchanges(cols["app_count"], cols["app_sum"], cols["app_max"], _i64(fid), _i64(latency_ns))

    def expire(self, now_ns: int) -> None:
        """Evict flows and pairs idle longer than their timeouts."""
        self.flows.evict_idle(now_ns - int(self.limits.flow_idle_s * NS))
        self.pairs.evict_idle(now_ns - int(self.limits.pair_idle_s * NS))
        self.hosts.evict_idle(now_ns - int(self.limits.pair_idle_s * NS))


def published_rtt(cols: dict[str, np.ndarray]) -> None:
    """Publish a flow's handshake RTT only once both directions were seen, as tshark shows
    tcp.analysis.initial_rtt (a SYN then the same side's ACK, and nothing back, has none)."""
    if "tcp_irtt" in cols:
        irtt, packets = cols["tcp_irtt"], cols["packets"]
        if irtt.flags.writeable:  # the snapshot's own copy (else -1 in every row: no TCP counted yet)
            irtt[(packets[:, 0] == 0) | (packets[:, 1] == 0)] = -1


def _add_traffic(
    table: KeyTable,
    ids: np.ndarray,
    direction: np.ndarray,
    packets: np.ndarray,
    nbytes: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
) -> None:
    cols = table.cols
    add_traffic(
        cols["packets"],
        cols["bytes"],
        cols["first"],
        cols["last"],
        *(_i64(x) for x in (ids, direction, packets, nbytes, first, last)),
    )


def _add_history(table: KeyTable, ids: np.ndarray, sec: np.ndarray, direction: np.ndarray, nbytes: np.ndarray) -> None:
    ok = ids >= 0
    table.add_history(ids[ok], sec[ok], direction[ok], nbytes[ok])
