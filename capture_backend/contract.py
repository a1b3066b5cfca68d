"""What the capture side publishes and every consumer (views, outputs, exporters) reads: one module.

- Key layouts: each table's fixed-width byte key declared once as a NumPy structured dtype
  (``FLOW_KEY``, ``PAIR_KEY``, ``HOST_KEY``, ``PORT_KEY``, ``SERVER_KEY``, ``SERVICE_KEY``). A
  ``TableSnapshot`` carries its layout: read ``t.fields["aport"]`` (every row) or ``t.key(i)["proto"]``
  (one row), never byte offsets. Writers build keys through the same dtypes (``pack_keys``).
- Addresses: 16 bytes in network order, IPv4 as IPv4-mapped IPv6 (``V4_MAPPED`` prefix);
  ``address_text``, ``address_key``/``address_bytes`` (parse), ``network_key``, ``is_v4``.
- The published, immutable snapshot types: ``Snapshot`` (with ``IfaceStatus``, ``LinkInfo``,
  ``LinkStats``, ``TableSnapshot``, ``LatencySnapshot``, ``Exchange``), the process mapper's
  ``ProcessTable``, and ``Extra`` counters other parts register for /metrics.
- Comparing two snapshots of a table: ``match_rows``, ``table_growth``.
- Names of what the tables hold: IP protocol numbers (``IPPROTO_TCP``, ``PORT_PROTOS``), ``DNS_PORT``,
  protocol and service names (``proto_name``, ``service_name``, ``service_table`` from /etc/services).
- What the packet inspector shows: ``PacketView`` (with its protocol tree of ``Node``), ``InspectJob``,
  ``InspectorError``, ``hexdump``, ``INSPECT_LIMIT``.
- What else the capture side tells its consumers: the engine's rare events (``EngineEvent``, given to an
  ``EventSink``), a pcap save's ``PcapSaveResult``.
- What the History view reads of the session store: ``SessionPage`` (records as `retrotap sessions
  --format json` gives them) and ``SessionPcap`` (a session's packets written).
- ``UserError``: the one base class of a user's mistake (filter, interface, capture, file, recording,
  time, inspector errors), so a front end catches one class.

This module imports nothing else from retrotap, so any module may import it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from types import MappingProxyType

import numpy as np

from capture_backend._native import match_keys

# --- key layouts (network byte order, packed; `pad` bytes are zero)

# A flow, direction-free: (a, aport) is the smaller endpoint.
FLOW_KEY = np.dtype(
    [("a", "u1", (16,)), ("b", "u1", (16,)), ("aport", ">u2"), ("bport", ">u2"), ("proto", "u1"), ("pad", "V3")]
)
# A host pair, a < b.
PAIR_KEY = np.dtype([("a", "u1", (16,)), ("b", "u1", (16,))])
# One host.
HOST_KEY = np.dtype([("addr", "u1", (16,))])
# A service port: the known (else the lower) port of a flow.
PORT_KEY = np.dtype([("proto", "u1"), ("port", ">u2"), ("pad", "V1")])
# Application latency per server (the responder's address and port) and kind of exchange.
SERVER_KEY = np.dtype([("server", "u1", (16,)), ("proto", "u1"), ("port", ">u2"), ("kind", "u1")])
# Application latency per service: SERVER_KEY without the server.
SERVICE_KEY = np.dtype([("proto", "u1"), ("port", ">u2"), ("kind", "u1")])

# The kinds of application exchange (SERVER_KEY, SERVICE_KEY "kind"; Exchange.kind by name).
KIND_DNS, KIND_HTTP, KIND_MYSQL = 1, 2, 3
KIND_NAMES = {KIND_DNS: "dns", KIND_HTTP: "http", KIND_MYSQL: "mysql"}

# --- protocols, ports and services: the numbers in the keys, and their names

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132
PORT_PROTOS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP)  # the protocols whose keys carry ports
DNS_PORT = 53

SERVICES_PATH = "/etc/services"
# Work that follows the snapshots (the process mapper, the incident detector) waits this many times its last CPU
# cost before it runs again: each takes at most 1/25 of a core however large a flood makes the tables (the
# Processes and Incidents views then refresh less often, never the capture less).
PACE_FACTOR = 24
PROTO_NAMES = {
    IPPROTO_ICMP: "icmp",
    IPPROTO_TCP: "tcp",
    IPPROTO_UDP: "udp",
    IPPROTO_ICMPV6: "icmpv6",
    IPPROTO_SCTP: "sctp",
}
PROTO_NUMBERS = {name: number for number, name in PROTO_NAMES.items()}


@lru_cache(maxsize=4)
def service_table(path: str = SERVICES_PATH) -> dict[tuple[str, int], str]:
    """(protocol name, port) → service name, read once from /etc/services (netbase); empty when the
    file is missing."""
    table: dict[tuple[str, int], str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) < 2 or "/" not in fields[1]:
                    continue
                port, _, proto = fields[1].partition("/")
                if port.isdigit():
                    table.setdefault((proto, int(port)), fields[0])
    except OSError:
        pass
    return table


@lru_cache(maxsize=1)
@lru_cache(maxsize=1)
def known_ports() -> np.ndarray:
    """Boolean array of 65536 (read-only, made once): a service name exists for this port (any protocol)."""
    known = np.zeros(65536, bool)
    for _, port in service_table():
        if 0 <= port < 65536:
            known[port] = True
    known.flags.writeable = False
    return known


def service_name(proto: int, port: int) -> str:
    """The service name of a port, or '' when none is known."""
    name = PROTO_NAMES.get(proto, "")
    return service_table().get((name, port), "") if name else ""


def proto_name(proto: int) -> str:
    """Short name of an IP protocol number (its number when unknown)."""
    return PROTO_NAMES.get(proto, str(proto))


def key_records(keys: np.ndarray, layout: np.dtype) -> np.ndarray:
    """(n, layout.itemsize) uint8 keys as n records of `layout` (a view when keys are contiguous)."""
    keys = np.ascontiguousarray(keys, np.uint8)
    if keys.ndim != 2 or keys.shape[1] != layout.itemsize:
        raise ValueError(f"keys of shape {keys.shape} are not {layout.itemsize}-byte keys")
    return keys.view(layout).reshape(keys.shape[0])


def pack_keys(layout: np.dtype, n: int, **values: np.ndarray | int) -> np.ndarray:
    """n keys of `layout` from named values (fields left out are zero), as (n, itemsize) uint8."""
    rec = np.zeros(n, layout)
    for name, value in values.items():
        rec[name] = value
    return rec.view(np.uint8).reshape(n, layout.itemsize)


# --- addresses (16 bytes, network order; IPv4 as ::ffff:a.b.c.d)

V4_MAPPED = bytes(10) + b"\xff\xff"  # the first 12 bytes of an IPv4 address's key
_V4_PREFIX = np.frombuffer(V4_MAPPED, np.uint8)
Network = tuple[np.ndarray, np.ndarray]  # the 16-byte key of a network, its 16-byte mask


def address_text(addr: bytes | np.ndarray) -> str:
    """Text of a 16-byte address (IPv4-mapped addresses print as IPv4)."""
    raw = bytes(addr)
    if raw.startswith(V4_MAPPED):
        return str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw))


def address_key(text: str) -> np.ndarray:
    """An IPv4 or IPv6 address as the (2,) uint64 key the decoder gives (IPv4 as ::ffff:a.b.c.d)."""
    try:
        addr = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
    n = int(addr) | (0xFFFF << 32) if addr.version == 4 else int(addr)
    return np.array([n >> 64, n & ((1 << 64) - 1)], np.uint64)


def key_bytes(key: np.ndarray) -> np.ndarray:
    """(n, 2) uint64 address keys (the decoder's form) as (n, 16) bytes in network order."""
    return np.ascontiguousarray(key, dtype=">u8").view(np.uint8).reshape(-1, 16)


def address_bytes(text: str) -> bytes:
    """The 16 bytes of an address as the tables store it."""
    return key_bytes(address_key(text)).tobytes()


def network_key(net: str | ipaddress.IPv4Network | ipaddress.IPv6Network) -> Network:
    """A network (or address) as its 16-byte key and mask: `(addr & mask) == key` for the addresses in it."""
    if isinstance(net, str):
        net = ipaddress.ip_network(net, strict=False)
    key = np.frombuffer(net.network_address.packed, np.uint8)
    mask = np.frombuffer(net.netmask.packed, np.uint8)
    if isinstance(net, ipaddress.IPv4Network):
        key = np.concatenate([_V4_PREFIX, key])
        mask = np.concatenate([np.full(12, 0xFF, np.uint8), mask])
    return key, mask


def is_v4(addrs: np.ndarray) -> np.ndarray:
    """Which of (n, 16) addresses are IPv4 (IPv4-mapped)."""
    return (addrs[..., :12] == _V4_PREFIX).all(axis=-1)


def ipv4_octets(addrs: np.ndarray) -> np.ndarray:
    """The 4 bytes of IPv4 addresses (the last 4 of their 16)."""
    return addrs[..., 12:]


# --- table snapshots


def _widths(layout: np.dtype) -> range:
    """The widths keys of a layout may have: itemsize, or down to leaving out a trailing "pad" field."""
    names = layout.names or ()
    short = layout.itemsize - layout[names[-1]].itemsize if names and names[-1] == "pad" else layout.itemsize
    return range(short, layout.itemsize + 1)


def _layout_of_widths() -> dict[int, np.dtype]:
    seen: dict[int, list[np.dtype]] = {}
    for layout in (FLOW_KEY, PAIR_KEY, HOST_KEY, PORT_KEY, SERVER_KEY, SERVICE_KEY):
        for width in _widths(layout):
            seen.setdefault(width, []).append(layout)
    return {width: layouts[0] for width, layouts in seen.items() if len(layouts) == 1}


_LAYOUT_OF_WIDTH = _layout_of_widths()  # 4 bytes: a port or a service, told by the table's layout only


@dataclass(frozen=True)
class TableSnapshot:
    """Read-only rows of one table: keys (rows, layout.itemsize) uint8, named columns, rows evicted so far.

    `layout` names the key's fields; left out, it is the one layout of the keys' width (none for 4 bytes).
    Keys built by hand may leave out the layout's trailing pad.
    """

    keys: np.ndarray
    cols: Mapping[str, np.ndarray]
    evicted: int = 0
    layout: np.dtype | None = None
    # Each row's slot in the table it was frozen from, when known: a row that keeps its slot from one
    # snapshot to the next is matched without hashing every key (match_rows).
    slots: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.layout is None and self.keys.ndim == 2:
            object.__setattr__(self, "layout", _LAYOUT_OF_WIDTH.get(self.keys.shape[1]))

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @cached_property
    def fields(self) -> np.ndarray:
        """Every row's key as a record of the layout: ``t.fields["aport"]``, ``t.fields["a"]`` (rows, 16)."""
        if self.layout is None:
            raise TypeError(f"a table of {self.keys.shape[1]}-byte keys without a layout")
        keys, missing = self.keys, self.layout.itemsize - self.keys.shape[1]
        if missing > 0:
            keys = np.pad(keys, ((0, 0), (0, missing)))
        return key_records(keys, self.layout)

    def key(self, i: int) -> np.void:
        """Row i's key as one record: ``t.key(i)["proto"]``."""
        rec: np.void = self.fields[i]
        return rec

    def key_bytes(self, i: int) -> bytes:
        """Row i's key as bytes (a dict key, the flow a selection names)."""
        return self.keys[i].tobytes()

    def with_layout(self, layout: np.dtype) -> TableSnapshot:
        """The same rows with their key layout named."""
        if self.keys.shape[1] not in _widths(layout):
            raise ValueError(f"{self.keys.shape[1]}-byte keys do not have a {layout.itemsize}-byte layout")
        return replace(self, layout=layout)


def match_rows(table: TableSnapshot, before: TableSnapshot, rows: np.ndarray | None = None) -> np.ndarray:
    """For each row of table (or each of `rows`), the row with the same key in before, or -1.

    Rows still in the slot they had are one compare each; only the others are hashed (compiled)."""
    keys = table.keys if rows is None else table.keys[rows]
    out = np.full(keys.shape[0], -1, np.int64)
    if keys.shape[0] == 0 or len(before) == 0:
        return out
    slots, old = table.slots, before.slots
    if slots is None or old is None or slots.size != len(table) or old.size != len(before) or not old.size:
        cand = out.copy()
    else:
        mine = slots if rows is None else slots[rows]
        where = np.full(int(max(old.max(), mine.max(initial=0))) + 1, -1, np.int64)
        where[old] = np.arange(old.size)
        cand = where[mine]
    match_keys(np.ascontiguousarray(keys), np.ascontiguousarray(before.keys), cand, out)
    return out


def table_growth(
    table: TableSnapshot,
    before: TableSnapshot,
    col: str = "bytes",
    rows: np.ndarray | None = None,
    match: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Growth of a (rows, 2) column since `before` per direction (rows new since count from 0), and the match
    (computed unless a previous call's is given)."""
    cur = table.cols[col] if rows is None else table.cols[col][rows]
    if match is None:
        match = match_rows(table, before, rows)
    old = np.where((match >= 0)[:, None], before.cols[col][np.maximum(match, 0)], 0) if len(before) else 0
    grown = cur - old
    return np.where(grown < 0, cur, grown), match  # evicted and seen again: all of it is new


def empty_table(layout: np.dtype, columns: Mapping[str, np.dtype | type]) -> TableSnapshot:
    """A table snapshot without rows."""
    cols = {name: np.zeros(0, dtype) for name, dtype in columns.items()}
    return TableSnapshot(np.zeros((0, layout.itemsize), np.uint8), MappingProxyType(cols), layout=layout)


# --- links and interfaces

ARPHRD_LOOPBACK = 772  # if_arp.h: LinkInfo.arphrd of lo


@dataclass(frozen=True)
class LinkStats:
    """Kernel counters of one link (IFLA_STATS64)."""

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_errors: int
    tx_errors: int
    rx_dropped: int
    tx_dropped: int
    rx_missed: int
    rx_fifo: int
    tx_fifo: int


@dataclass(frozen=True)
class LinkInfo:
    """One link: identity, state and counters."""

    index: int
    name: str
    arphrd: int
    up: bool
    running: bool
    operstate: str
    stats: LinkStats


@dataclass(frozen=True)
class RingStatus:
    """One of an interface's rings when several capture threads share it (--threads, PACKET_FANOUT)."""

    thread: int  # the capture thread reading it, from 0
    packets: int  # counted from it
    bytes: int
    received: int  # the kernel's counters of this ring
    kernel_drops: int
    freezes: int
    cpu: float  # seconds of CPU its capture thread used (for every interface that thread reads)


@dataclass(frozen=True)
class IfaceStatus:
    """One captured interface: state, what retrotap captured, the ring's and the link's counters."""

    name: str
    state: str  # 'up', 'down', 'gone', 'file'
    error: str
    packets: int
    bytes: int
    received: int
    kernel_drops: int
    freezes: int
    link: LinkInfo | None
    walk_errors: int = 0  # packets a ring block announced whose headers lay outside the block
    ring_bytes: int = 0  # the size of the interface's ring (0: none open)
    netns: int = 0  # the inode of the network namespace it is in (0: not known, e.g. a file)
    peer_netns: int = 0  # a veth's: the inode of the namespace its other end is in (0: not a veth, or not known)
    rings: tuple[RingStatus, ...] = ()  # each ring's share, with more than one capture thread (else empty)

    @property
    def link_packets(self) -> int | None:
        """Packets the link counted that a capture on it can see: rx + tx, rx only on lo; None without link."""
        if self.link is None:
            return None
        stats = self.link.stats
        # On lo the ring keeps only the received copy of each packet (PACKET_IGNORE_OUTGOING).
        return stats.rx_packets if self.link.arphrd == ARPHRD_LOOPBACK else stats.rx_packets + stats.tx_packets


# --- application latency

# The columns of the per-server and per-service tables: count, sum, max, first, last, p50, p95 (ns).
LATENCY_TABLE_COLUMNS = ("count", "sum", "max", "first", "last", "p50", "p95")
SAMPLE_RING = 65_536  # p50 and p95 are nearest-rank quantiles of the last this many exchanges


@dataclass(frozen=True)
class Exchange:
    """One slow request → response, for the list of the slowest."""

    kind: str
    latency_ns: int
    time_ns: int  # of the response
    client: bytes
    server: bytes
    port: int
    request: str


@dataclass(frozen=True)
class LatencySnapshot:
    """Latency per server (SERVER_KEY) and per service (SERVICE_KEY): count, sum, max, p50, p95 in ns; and the
    slowest exchanges."""

    servers: TableSnapshot
    services: TableSnapshot
    slowest: tuple[Exchange, ...]
    exchanges: int  # matched in all
    unanswered: int  # requests dropped unanswered (timeout or over the pending limit)


def _empty_latency_table(layout: np.dtype) -> TableSnapshot:
    return empty_table(layout, dict.fromkeys(LATENCY_TABLE_COLUMNS, np.int64))


EMPTY_LATENCY = LatencySnapshot(
    servers=_empty_latency_table(SERVER_KEY),
    services=_empty_latency_table(SERVICE_KEY),
    slowest=(),
    exchanges=0,
    unanswered=0,
)


# --- the snapshot


@dataclass(frozen=True)
class Snapshot:
    """Everything the capture side knows at one moment; read-only.

    Tables: flows (FLOW_KEY), pairs (PAIR_KEY), hosts (HOST_KEY), ports (PORT_KEY), latency.
    """

    seq: int
    time: float  # wall clock (the engine's clock) when published
    started: float
    now_ns: int  # the clock the 2/10/40 s windows are measured against
    live: bool
    filter: str
    packets: int
    bytes: int
    malformed: int
    first_ns: int
    last_ns: int
    ethertypes: Mapping[int, tuple[int, int]]
    protocols: Mapping[int, tuple[int, int]]
    vlans: Mapping[int, tuple[int, int]]
    interfaces: tuple[IfaceStatus, ...]
    flows: TableSnapshot
    pairs: TableSnapshot
    hosts: TableSnapshot
    ports: TableSnapshot
    capture_cpu: float  # seconds of CPU used by the capture thread
    links: Mapping[str, LinkInfo] = field(default_factory=dict)
    latency: LatencySnapshot = EMPTY_LATENCY
    restarts: int = 0  # times the capture loop failed and was restarted on the same rings
    last_error: str = ""  # the newest such failure, in full, with where its traceback was written
    # The interfaces the flows' "ifaces" column names: bit i of a flow's value is flow_ifaces[i].
    flow_ifaces: tuple[str, ...] = ()

    @property
    def received(self) -> int:
        return sum(i.received for i in self.interfaces)

    @property
    def kernel_drops(self) -> int:
        return sum(i.kernel_drops for i in self.interfaces)

    @property
    def freezes(self) -> int:
        return sum(i.freezes for i in self.interfaces)


# --- alerts, incidents, floods and scans: what the incident watcher publishes (about once a second)

Ranked = tuple[tuple[str, float], ...]  # (label, value) rows, worst first


@dataclass(frozen=True)
class Churn:
    """Floods and scans named as such: new flows, who opens them, who scans, SYNs nobody answers."""

    new_flows_per_s: float = 0.0  # flows first seen per second over the last sample, evicted ones included
    new_flows_by_iface: Ranked = ()  # interface, flows first seen on it per second (evicted ones not included)
    top_new_sources: Ranked = ()  # source address, flows it opened in the last 10 s
    top_scanners: Ranked = ()  # source address, distinct destination ports it opened flows to, last 10 s
    half_open: int = 0  # TCP connections asked for (SYN) and never answered, last 10 s
    top_half_open: Ranked = ()  # destination address, its unanswered SYNs


@dataclass(frozen=True)
class ActiveAlert:
    """A rule holding now: since when, and the rows that pass its threshold."""

    rule: str
    expr: str
    since: float  # seconds since the epoch (packet time for files)
    rows: Ranked


@dataclass(frozen=True)
class IncidentInfo:
    """One frozen incident."""

    time: float
    rule: str
    path: str  # its directory
    packets: int | None  # in its pcap (None: the post window is not over yet, or no time machine)


@dataclass(frozen=True)
class AlertStatus:
    """The rules, which hold now, the incidents frozen so far (the newest last) and the flood/scan figures."""

    rules: tuple[str, ...] = ()
    active: tuple[ActiveAlert, ...] = ()
    incidents: int = 0
    recent: tuple[IncidentInfo, ...] = ()
    errors: int = 0
    last_error: str = ""
    churn: Churn = Churn()
    directory: str = ""  # where incidents are frozen


EMPTY_ALERTS = AlertStatus()


# --- what else the capture side tells its consumers: rare engine events, a pcap save's result


@dataclass(frozen=True)
class EngineEvent:
    """Something rare happened: kind is 'ready', 'iface-down', 'iface-up', 'iface-gone', 'error'."""

    kind: str
    iface: str
    message: str


# Called with each EngineEvent (on the capture thread).
EventSink = Callable[[EngineEvent], None]


@dataclass(frozen=True)
class PcapSaveResult:
    """What a snapshot wrote: one pcap per interface, or one pcapng."""

    paths: tuple[str, ...]
    packets: int
    bytes: int
    lost: int  # packets overwritten while being written (the oldest of the window)
    comments: int = 0  # packets written with their process as a pcapng comment

    def summary(self) -> str:
        """One line for a status bar or a log."""
        if not self.paths:
            return "snapshot: no packets in the buffer"
        lost = f", {self.lost} packets expired while writing" if self.lost else ""
        said = f", {self.comments} with their process" if self.comments else ""
        return f"snapshot: {', '.join(self.paths)} ({self.packets} packets, {self.bytes} bytes{said}{lost})"


# --- the session store, as the History view reads it


@dataclass(frozen=True)
class SessionPage:
    """Records of a query, newest first or as sorted (each a dict like `retrotap sessions --format json`'s),
    how many matched in all, and the time window asked ([from_ns, to_ns))."""

    rows: tuple[dict[str, object], ...]
    matched: int
    from_ns: int
    to_ns: int


@dataclass(frozen=True)
class SessionPcap:
    """A session's packets written: where, how many, from what (the recording or the time machine)."""

    paths: tuple[str, ...]
    packets: int
    bytes: int
    source: str

    def summary(self) -> str:
        """One line for the status bar."""
        return f"{', '.join(self.paths)} ({self.packets} packets, {self.bytes} bytes, from the {self.source})"


# --- a user's mistake


class UserError(Exception):
    """A user's mistake (a bad interface, filter, file, directory or time): str() is one line to show them.

    Filter, interface, capture, capture file, recording, time and inspector errors subclass it, so a front
    end catches this one class.
    """


# --- processes

PROCESS_NOTE = "sockets of every network namespace are mapped; NS is the process's (- the current one)"


@dataclass(frozen=True)
class ProcessTotals:
    """One process's traffic so far (pid None: the unknown entry)."""

    pid: int | None
    name: str
    user: str
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    exited: bool = False
    netns: str = ""  # its network namespace as `-i` names it ("": the current one)
    container: str = ""  # e.g. docker:0123456789ab, k8s:pod1234abcd/0123456789ab ("": none)


@dataclass(frozen=True)
class OwnedFlows:
    """The flows with a known local process: keys (a table for match_rows), each one's pid, name
    (an index into names, which are sorted case-blind) and rank by (name, pid)."""

    keys: TableSnapshot
    pid: np.ndarray
    name_id: np.ndarray
    names: tuple[str, ...]
    rank: np.ndarray

    def named(self, word: str) -> np.ndarray:
        """Which of the flows belong to a process whose name contains `word` (lower case)."""
        hits = [n for n, name in enumerate(self.names) if word in name.lower()]
        return np.isin(self.name_id, hits)


Place = tuple[str, str]  # a process's network namespace ("": the current one) and container ("": none)


class FlowOwners(Mapping[bytes, tuple[int, str]]):
    """Flow key -> (pid, name) of the attributed flows, kept as columns: the process mapper builds it
    with NumPy whatever the number of flows, and a dict is made only if someone looks keys up. Each flow's
    process's namespace and container: `places[place_id[i]]`."""

    def __init__(
        self,
        keys: np.ndarray,
        pid: np.ndarray,
        name_id: np.ndarray,
        names: tuple[str, ...],
        place_id: np.ndarray | None = None,
        places: tuple[Place, ...] = (),
    ) -> None:
        self.flow_keys, self.pid, self.name_id, self.names = keys, pid, name_id, names
        self.place_id = place_id if place_id is not None else np.zeros(len(pid), np.int64)
        self.places = places or (("", ""),)

    @classmethod
    def of(
        cls,
        keys: np.ndarray,
        pid: np.ndarray,
        name: Callable[[int], str],
        place: Callable[[int], Place] | None = None,
    ) -> FlowOwners:
        """Owners of flow keys (n, FLOW_KEY.itemsize) by pid; `name` gives each distinct pid's name, `place`
        its namespace and container."""
        who, inv = np.unique(pid, return_inverse=True)
        inv = inv.ravel()
        by_pid = [name(p) for p in who.tolist()]
        names = tuple(sorted(set(by_pid), key=str.lower))
        number = {n: i for i, n in enumerate(names)}
        name_id = np.array([number[n] for n in by_pid], np.int64)[inv] if who.size else np.zeros(0, np.int64)
        where = [place(p) if place is not None else ("", "") for p in who.tolist()]
        places = tuple(dict.fromkeys([("", ""), *where]))
        at = {p: i for i, p in enumerate(places)}
        place_id = np.array([at[p] for p in where], np.int64)[inv] if who.size else np.zeros(0, np.int64)
        keys = np.ascontiguousarray(keys, dtype=np.uint8)
        return cls(keys, np.asarray(pid, np.int64), name_id, names, place_id, places)

    @cached_property
    def _place_by_key(self) -> dict[bytes, Place]:
        places = [self.places[i] for i in self.place_id.tolist()]
        return dict(zip(map(bytes, self.flow_keys), places, strict=True))

    def place(self, key: bytes) -> Place | None:
        """The namespace and container of a flow's process, if the flow has one."""
        return self._place_by_key.get(key)

    @cached_property
    def _by_key(self) -> dict[bytes, tuple[int, str]]:
        names = [self.names[i] for i in self.name_id.tolist()]
        return dict(zip(map(bytes, self.flow_keys), zip(self.pid.tolist(), names, strict=True), strict=True))

    def __getitem__(self, key: bytes) -> tuple[int, str]:
        return self._by_key[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return int(self.flow_keys.shape[0])

    def columns(self) -> OwnedFlows:
        """The same as OwnedFlows (no per-flow Python)."""
        rank = np.empty(len(self))
        rank[np.lexsort((self.pid, self.name_id))] = np.arange(len(self))
        table = TableSnapshot(self.flow_keys, {}, layout=FLOW_KEY)
        return OwnedFlows(table, self.pid, self.name_id, self.names, rank)


@dataclass(frozen=True)
class ProcessTable:
    """What the process mapper published: per-process totals as of one snapshot, and each attributed flow's
    owner (by its FLOW_KEY bytes)."""

    seq: int  # of the snapshot attributed (0: none yet)
    time: float  # that snapshot's time
    processes: tuple[ProcessTotals, ...]
    unknown: ProcessTotals
    flow_owners: Mapping[bytes, tuple[int, str]] = field(default_factory=dict)  # flow key -> (pid, name)
    error: str = ""  # what stops the mapper now ("" when its last round worked)
    errors: int = 0  # rounds that failed since it started

    def owner(self, key: bytes) -> tuple[int, str] | None:
        """The process of a flow key (its first local end), if known."""
        return self.flow_owners.get(key)

    def place(self, key: bytes) -> Place:
        """The network namespace and container of a flow's process (("", "") when unknown or none)."""
        got = self.flow_owners.place(key) if isinstance(self.flow_owners, FlowOwners) else None
        return got or ("", "")

    @cached_property
    def owned(self) -> OwnedFlows:
        """flow_owners as columns, built once per published table (the dashboard reads it every refresh)."""
        if isinstance(self.flow_owners, FlowOwners):
            return self.flow_owners.columns()
        width = FLOW_KEY.itemsize
        items = [(k, o) for k, o in self.flow_owners.items() if len(k) == width]
        names = sorted({name for _, (_, name) in items}, key=str.lower)
        name_id = {name: n for n, name in enumerate(names)}
        keys = np.frombuffer(b"".join(k for k, _ in items), np.uint8).reshape(len(items), width)
        pid = np.array([o[0] for _, o in items], np.int64)
        nid = np.array([name_id[o[1]] for _, o in items], np.int64)
        rank = np.empty(len(items))
        rank[np.lexsort((pid, nid))] = np.arange(len(items))
        return OwnedFlows(TableSnapshot(keys, {}, layout=FLOW_KEY), pid, nid, tuple(names), rank)


EMPTY_UNKNOWN = ProcessTotals(None, "unknown", "", 0, 0, 0, 0)
EMPTY_PROCESSES = ProcessTable(0, 0.0, (), EMPTY_UNKNOWN)


# --- counters other parts register for /metrics (time machine, recorder, IPFIX)

DEFAULT_TOP = 20  # hosts and ports /metrics labels by default
MAX_TOP = 1000  # label cardinality cap: at most this many hosts and this many ports


@dataclass(frozen=True)
class Extra:
    """A counter or gauge another part of retrotap registers (time machine, recorder, IPFIX)."""

    help: str
    read: Callable[[], float]
    kind: str = "counter"  # or "gauge"
    label: str = ""  # with one: `read_by` gives a value per label value (e.g. incidents by rule)
    read_by: Callable[[], Mapping[str, float]] | None = None


# --- the packet inspector: what tshark's decode of a pcap gives the views

INSPECT_LIMIT = 2000  # packets decoded by default

# A protocol tree node: its label and its children.
Node = tuple[str, list["Node"]]


class InspectorError(UserError):
    """A one-line reason the inspector cannot show packets (no tshark, nothing selected, unreadable file)."""


@dataclass(frozen=True)
class PacketView:
    """One decoded packet: the packet list's columns, the protocol tree and the bytes."""

    number: int
    time_ns: int
    source: str
    destination: str
    protocol: str
    length: int
    info: str
    tree: list[Node] = field(default_factory=list)
    raw: bytes = b""


# What the inspector's worker runs: given a progress callback (packets decoded so far), the decoded packets.
InspectJob = Callable[[Callable[[int], None]], list[PacketView]]


def hexdump(data: bytes, width: int = 16) -> str:
    """Offset, hex bytes (two groups of eight) and printable ASCII, one line per ``width`` bytes."""
    lines = []
    for off in range(0, len(data), width):
        chunk = data[off : off + width]
        hexes = [f"{b:02x}" for b in chunk]
        left, right = " ".join(hexes[:8]), " ".join(hexes[8:])
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{off:04x}  {left:<23}  {right:<23}  {text}")
    return "\n".join(lines)
