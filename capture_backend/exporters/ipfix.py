"""IPFIX (RFC 7011) export of finished flows over UDP, worked out from successive snapshots.

A thread compares each new Snapshot's flow table with what it has already exported (NumPy, per
flow row, never per packet). A flow's unexported counts go out when it has been idle for
``idle_s``, when its open record is older than ``active_s`` (the delta is exported and counting
goes on), when the flow table evicts it, and at exit.

Each flow row becomes one uniflow record per direction that carried packets (RFC 7011 records,
not RFC 5103 biflows: every collector reads them, and nfdump 1.7 keeps only the reverse counters
of a biflow, dropping its reverse times and flags). retrotap keeps one first/last time and one
set of TCP flags per flow, so both records of a flow carry those.

A record also carries the flow's TCP health and application latency over the record as enterprise-specific
elements (RETROTAP_PEN), the same values the session store keeps for the same flow: on the record of the
client's direction (the other direction's record carries zeros and "not measured"), so a collector that sums
them counts each once.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from capture_backend.analysis.services import known_ports
from capture_backend.analysis.tables import NS
from capture_backend.capture.threads import NamedThread
from capture_backend.contract import FLOW_KEY, Snapshot, TableSnapshot, ipv4_octets, is_v4, key_records, match_rows

IPFIX_VERSION = 10
TEMPLATE_SET_ID = 2
OPTIONS_TEMPLATE_SET_ID = 3
FLOW_IPV4_TEMPLATE_ID = 256
FLOW_IPV6_TEMPLATE_ID = 257
STATISTICS_TEMPLATE_ID = 258
MAX_MESSAGE = 1400
TEMPLATE_REFRESH_S = 30.0
PACE_MESSAGES = 32  # messages sent back to back before a 1 ms pause (a collector's socket buffer is small)
MS = 1_000_000
FEED_QUEUE = 16

# RFC 7011 3.1 Message Header: Version Number, Length, Export Time, Sequence Number, Observation Domain ID.
MESSAGE_HEADER = struct.Struct("!HHIII")
# 3.3.2 Set Header: Set ID, Length.
SET_HEADER = struct.Struct("!HH")
# 3.4.1 Template Record Header: Template ID, Field Count.
TEMPLATE_RECORD_HEADER = struct.Struct("!HH")
# 3.4.2.2 Options Template Record Header: Template ID, Field Count, Scope Field Count.
OPTIONS_TEMPLATE_RECORD_HEADER = struct.Struct("!HHH")
# 3.2 Field Specifier, enterprise bit clear: Information Element identifier, Field Length; with the
# enterprise bit set, the Enterprise Number follows.
FIELD_SPECIFIER = struct.Struct("!HH")
ENTERPRISE_NUMBER = struct.Struct("!I")
ENTERPRISE_BIT = 0x8000
# retrotap's enterprise-specific elements are numbered under this Private Enterprise Number: 32473 is the
# one IANA reserves for documentation and examples (RFC 5612) until retrotap has its own.
RETROTAP_PEN = 32473
NOT_MEASURED = 0xFFFFFFFF  # an unsigned32 time element with nothing measured (no handshake, no exchange)

# flowEndReason (IANA IE 136) values.
IDLE_TIMEOUT = 1
ACTIVE_TIMEOUT = 2
END_OF_FLOW = 3
FORCED_END = 4
LACK_OF_RESOURCES = 5


class IE(NamedTuple):
    """An Information Element as sent: name, identifier, field length, enterprise (0: IANA's)."""

    name: str
    id: int
    length: int
    enterprise: int = 0
    doc: str = ""


# The enterprise-specific elements, per flow over the record: (element, the flow column whose growth it
# carries or whose value, in µs, it carries). Data, once: the templates, the records and docs/exporters.md.
RETROTAP_FIELDS = (
    IE("tcpRetransmissions", 1, 4, RETROTAP_PEN, "TCP retransmissions (fast and spurious included)"),
    IE("tcpOutOfOrder", 2, 4, RETROTAP_PEN, "TCP out-of-order segments"),
    IE("tcpDuplicateAcks", 3, 4, RETROTAP_PEN, "TCP duplicate ACKs"),
    IE("tcpZeroWindows", 4, 4, RETROTAP_PEN, "TCP zero-window segments"),
    IE("tcpResets", 5, 4, RETROTAP_PEN, "TCP segments with RST"),
    IE("tcpHandshakeRttMicroseconds", 6, 4, RETROTAP_PEN, "TCP handshake RTT, µs (4294967295: not measured)"),
    IE("applicationExchanges", 7, 4, RETROTAP_PEN, "DNS/HTTP/MySQL request → response exchanges"),
    IE("applicationLatencyMeanMicroseconds", 8, 4, RETROTAP_PEN, "their mean latency, µs (4294967295: none)"),
    IE("applicationLatencyMaxMicroseconds", 9, 4, RETROTAP_PEN, "the flow's slowest exchange, µs (4294967295: none)"),
)
# Flow columns whose growth each record carries, and those whose latest value it carries (the session
# store's records are made from the same).
FLOW_COUNTED = ("tcp_retrans", "tcp_ooo", "tcp_dupack", "tcp_zero_win", "tcp_resets", "app_count", "app_sum")
FLOW_CARRIED = ("origin", "tcp_irtt", "app_max", "vlan")
US = 1000


_FLOW_TAIL = (
    IE("sourceTransportPort", 7, 2),
    IE("destinationTransportPort", 11, 2),
    IE("protocolIdentifier", 4, 1),
    IE("tcpControlBits", 6, 2),
    IE("ingressInterface", 10, 4),
    IE("octetDeltaCount", 1, 8),
    IE("packetDeltaCount", 2, 8),
    IE("flowStartMilliseconds", 152, 8),
    IE("flowEndMilliseconds", 153, 8),
    IE("flowEndReason", 136, 1),
    *RETROTAP_FIELDS,
)
FLOW_IPV4_FIELDS = (IE("sourceIPv4Address", 8, 4), IE("destinationIPv4Address", 12, 4), *_FLOW_TAIL)
FLOW_IPV6_FIELDS = (IE("sourceIPv6Address", 27, 16), IE("destinationIPv6Address", 28, 16), *_FLOW_TAIL)
# The data records of the two flow templates, field by field as listed above (88 and 112 bytes).
FLOW_RECORD_IPV4 = struct.Struct("!4s4sHHBHIQQQQB" + "I" * len(RETROTAP_FIELDS))
FLOW_RECORD_IPV6 = struct.Struct("!16s16sHHBHIQQQQB" + "I" * len(RETROTAP_FIELDS))

# RFC 7011 4.1-4.3 statistics, scoped to the Observation Domain: what was exported, what the
# kernel ring dropped before metering (ignored packets), flows the table evicted unseen (not sent).
STATISTICS_SCOPE = (IE("observationDomainId", 149, 4),)
STATISTICS_FIELDS = (
    IE("exportedMessageTotalCount", 41, 8),
    IE("exportedFlowRecordTotalCount", 42, 8),
    IE("ignoredPacketTotalCount", 164, 8),
    IE("notSentFlowTotalCount", 166, 8),
)
STATISTICS_RECORD = struct.Struct("!IQQQQ")

_ADDRESS_IES = {8, 12, 27, 28}


def record_dtype(fields: Sequence[IE]) -> np.dtype:
    """A packed big-endian NumPy record with the fields' names and lengths (bulk encoding of data records)."""
    return np.dtype(
        [
            (f.name, ("u1", (f.length,)) if f.id in _ADDRESS_IES and not f.enterprise else f">u{f.length}")
            for f in fields
        ]
    )


FLOW_IPV4_DTYPE = record_dtype(FLOW_IPV4_FIELDS)
FLOW_IPV6_DTYPE = record_dtype(FLOW_IPV6_FIELDS)


def field_specifier(f: IE) -> bytes:
    """A Field Specifier: with the enterprise bit and number for an enterprise-specific element."""
    if f.enterprise:
        return FIELD_SPECIFIER.pack(f.id | ENTERPRISE_BIT, f.length) + ENTERPRISE_NUMBER.pack(f.enterprise)
    return FIELD_SPECIFIER.pack(f.id, f.length)


def template_record(template_id: int, fields: Sequence[IE]) -> bytes:
    """A Template Record."""
    specs = b"".join(field_specifier(f) for f in fields)
    return TEMPLATE_RECORD_HEADER.pack(template_id, len(fields)) + specs


def options_template_record(template_id: int, scope: Sequence[IE], fields: Sequence[IE]) -> bytes:
    """An Options Template Record: scope fields first."""
    specs = b"".join(FIELD_SPECIFIER.pack(f.id, f.length) for f in (*scope, *fields))
    return OPTIONS_TEMPLATE_RECORD_HEADER.pack(template_id, len(scope) + len(fields), len(scope)) + specs


def make_set(set_id: int, records: bytes) -> bytes:
    """A Set: header, records, zero padding to a multiple of 4 octets."""
    pad = -len(records) % 4
    return SET_HEADER.pack(set_id, SET_HEADER.size + len(records) + pad) + records + bytes(pad)


class Encoder:
    """Messages of one Observation Domain, numbered by the Data Records sent before each."""

    def __init__(self, domain: int, clock: Callable[[], float] = time.time, max_message: int = MAX_MESSAGE) -> None:
        self.domain = domain
        self.clock = clock
        self.max_message = max_message
        self.sequence = 0  # Data Records sent so far, modulo 2**32 on the wire
        self.messages = 0
        self.records = 0  # flow records only (exportedFlowRecordTotalCount)

    def message(self, sets: Iterable[bytes], data_records: int) -> bytes:
        """One Message around whole Sets; counts its Data Records after numbering it."""
        body = b"".join(sets)
        length = MESSAGE_HEADER.size + len(body)
        if length > self.max_message:
            raise ValueError(f"IPFIX message of {length} octets exceeds {self.max_message}")
        head = MESSAGE_HEADER.pack(
            IPFIX_VERSION, length, int(self.clock()) & 0xFFFFFFFF, self.sequence & 0xFFFFFFFF, self.domain
        )
        self.sequence += data_records
        self.messages += 1
        return head + body

    def templates(self) -> bytes:
        """The flow templates and the statistics options template, in one Message."""
        flows = template_record(FLOW_IPV4_TEMPLATE_ID, FLOW_IPV4_FIELDS) + template_record(
            FLOW_IPV6_TEMPLATE_ID, FLOW_IPV6_FIELDS
        )
        options = options_template_record(STATISTICS_TEMPLATE_ID, STATISTICS_SCOPE, STATISTICS_FIELDS)
        return self.message([make_set(TEMPLATE_SET_ID, flows), make_set(OPTIONS_TEMPLATE_SET_ID, options)], 0)

    def statistics(self, ignored_packets: int, not_sent_flows: int) -> bytes:
        """The statistics options record, in one Message (its own Message counts itself)."""
        record = STATISTICS_RECORD.pack(self.domain, self.messages + 1, self.records, ignored_packets, not_sent_flows)
        return self.message([make_set(STATISTICS_TEMPLATE_ID, record)], 1)

    def data(self, runs: Sequence[tuple[int, bytes, int]]) -> list[bytes]:
        """Messages carrying runs of Data Records (template id, records, record length), each ≤ max_message."""
        out: list[bytes] = []
        sets: list[bytes] = []
        used = MESSAGE_HEADER.size
        count = 0
        for set_id, records, size in runs:
            total = len(records) // size
            done = 0
            while done < total:
                room = ((self.max_message - used - SET_HEADER.size) & ~3) // size  # room for the padding too
                if room <= 0:
                    out.append(self.message(sets, count))
                    sets, used, count = [], MESSAGE_HEADER.size, 0
                    continue
                take = min(room, total - done)
                piece = make_set(set_id, records[done * size : (done + take) * size])
                sets.append(piece)
                used += len(piece)
                count += take
                done += take
        if sets:
            out.append(self.message(sets, count))
        self.records += sum(len(records) // size for _, records, size in runs)
        return out


def _no_columns() -> np.ndarray:
    return np.zeros((0, 0), np.int64)


@dataclass(frozen=True)
class Finished:
    """Flow rows whose counts are due: FLOW_KEY keys (k, 40), per-direction deltas, record start/end (ns), flags,
    reason; the growth of the tracker's `counted` columns (k, len(counted)) and the last value of its `carried`
    columns (k, len(carried))."""

    keys: np.ndarray
    packets: np.ndarray
    bytes: np.ndarray
    start_ns: np.ndarray
    end_ns: np.ndarray
    tcp_flags: np.ndarray
    reason: np.ndarray
    counts: np.ndarray = field(default_factory=_no_columns)
    values: np.ndarray = field(default_factory=_no_columns)

    def __len__(self) -> int:
        return int(self.keys.shape[0])


def _words(keys: np.ndarray) -> np.ndarray:
    """40-octet keys as five 64-bit words per row (faster to compare)."""
    return np.ascontiguousarray(keys).view(np.uint64)


def _concat(parts: list[Finished]) -> Finished:
    return Finished(*(np.concatenate([getattr(p, f) for p in parts]) for f in Finished.__dataclass_fields__))


TCP_FIN_OR_RST = 0x05  # tcpControlBits FIN | RST


class FlowTracker:
    """What has been exported of each flow row, and what is due at each new snapshot.

    `closed_s`: a TCP flow that has seen FIN or RST and then nothing for this long is due (END_OF_FLOW);
    None: only idle, active, eviction and the end. `counted`: more cumulative flow columns (one value per
    row, e.g. "tcp_retrans") whose growth each record carries, as packets and bytes; `carried`: columns
    whose latest value each record carries (e.g. "tcp_irtt").
    """

    def __init__(
        self,
        idle_s: float,
        active_s: float,
        closed_s: float | None = None,
        counted: Sequence[str] = (),
        carried: Sequence[str] = (),
    ) -> None:
        self.idle_ns = int(idle_s * NS)
        self.active_ns = int(active_s * NS)
        self.closed_ns = None if closed_s is None else int(closed_s * NS)
        self.counted, self.carried = tuple(counted), tuple(carried)
        self.seen_counts = np.zeros((0, len(self.counted)), np.int64)
        self.sent_counts = np.zeros((0, len(self.counted)), np.int64)
        self.seen_values = np.zeros((0, len(self.carried)), np.int64)
        self.keys = np.zeros((0, FLOW_KEY.itemsize), np.uint8)
        self.first = np.zeros(0, np.int64)
        self.last = np.zeros(0, np.int64)
        self.flags = np.zeros(0, np.uint8)
        self.seen_packets = np.zeros((0, 2), np.int64)
        self.seen_bytes = np.zeros((0, 2), np.int64)
        self.sent_packets = np.zeros((0, 2), np.int64)
        self.sent_bytes = np.zeros((0, 2), np.int64)
        self.start = np.zeros(0, np.int64)  # start of the open record; -1: none open (all sent)
        self.prev_now = 0
        self.vanished = 0  # rows that left the flow table (evicted) after being seen here

    def not_sent(self, table: TableSnapshot) -> int:
        """Flows the table evicted before any snapshot showed them (their counts were never exported)."""
        return max(0, table.evicted - self.vanished)

    def _open_start(self, start: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        # A record opened after an earlier one: its packets came after the previous snapshot.
        return np.where(start >= 0, start, np.clip(self.prev_now + 1, first, last))

    def _match(self, t: TableSnapshot) -> np.ndarray:
        """For each row of t, its row in the state, or -1."""
        # Rows keep their slot order from one snapshot to the next: compare in place first.
        k = min(len(t), self.keys.shape[0])
        match = np.full(len(t), -1, np.int64)
        in_place = np.flatnonzero((_words(t.keys[:k]) == _words(self.keys[:k])).all(axis=1))
        match[in_place] = in_place
        rest = np.flatnonzero(match < 0)
        if rest.size:
            free = np.ones(self.keys.shape[0], bool)
            free[in_place] = False
            cand = np.flatnonzero(free)
            found = match_rows(t, TableSnapshot(self.keys[cand], {}, layout=FLOW_KEY), rest)
            match[rest[found >= 0]] = cand[found[found >= 0]]
        return match

    def update(self, snap: Snapshot, final: bool = False) -> Finished:
        """The counts due at this snapshot (all of them when final); remembers them as sent."""
        t = snap.flows
        now = snap.now_ns
        first, last = t.cols["first"], t.cols["last"]
        packets, nbytes = t.cols["packets"], t.cols["bytes"]
        counts = self._columns(t, self.counted)
        values = self._columns(t, self.carried)
        if self.keys.shape[0]:
            match = self._match(t)
            mi = np.maximum(match, 0)
            same = (match >= 0) & (self.first[mi] == first) & (packets >= self.sent_packets[mi]).all(axis=1)
            sent_packets = np.where(same[:, None], self.sent_packets[mi], 0)
            sent_bytes = np.where(same[:, None], self.sent_bytes[mi], 0)
            sent_counts = np.where(same[:, None], self.sent_counts[mi], 0)
            start = np.where(same, self.start[mi], first)
            continued = np.zeros(self.keys.shape[0], bool)
            continued[match[same]] = True
            gone = np.flatnonzero(~continued)
        else:
            sent_packets, sent_bytes = np.zeros_like(packets), np.zeros_like(nbytes)
            sent_counts = np.zeros_like(counts)
            start, gone = first.copy(), np.zeros(0, np.int64)
        parts = [self._gone(gone, now)]
        delta_packets = packets - sent_packets
        due = delta_packets.sum(axis=1) > 0
        start = np.where(due, self._open_start(start, first, last), start)
        if final:
            done, reason = due, np.full(len(t), FORCED_END, np.uint8)
        else:
            idle = due & (now - last >= self.idle_ns)
            active = due & ~idle & (now - start >= self.active_ns)
            closed = np.zeros_like(due)
            if self.closed_ns is not None:
                ended = (t.cols["tcp_flags"] & TCP_FIN_OR_RST) != 0
                closed = due & ~idle & ended & (now - last >= self.closed_ns)
            done = idle | active | closed
            reason = np.select([idle, closed], [IDLE_TIMEOUT, END_OF_FLOW], ACTIVE_TIMEOUT).astype(np.uint8)
        rows = np.flatnonzero(done)
        parts.append(
            Finished(
                keys=t.keys[rows],
                packets=delta_packets[rows],
                bytes=(nbytes - sent_bytes)[rows],
                start_ns=start[rows],
                end_ns=last[rows],
                tcp_flags=t.cols["tcp_flags"][rows],
                reason=reason[rows],
                counts=(counts - sent_counts)[rows],
                values=values[rows],
            )
        )
        sent_packets = np.where(done[:, None], packets, sent_packets)
        sent_bytes = np.where(done[:, None], nbytes, sent_bytes)
        self.sent_counts = np.where(done[:, None], counts, sent_counts)
        self.seen_counts, self.seen_values = counts, values
        start = np.where(done, -1, start)
        self.keys, self.first, self.last, self.flags = t.keys, first, last, t.cols["tcp_flags"]
        self.seen_packets, self.seen_bytes = packets, nbytes
        self.sent_packets, self.sent_bytes, self.start = sent_packets, sent_bytes, start
        self.prev_now = now
        return _concat(parts)

    @staticmethod
    def _columns(t: TableSnapshot, names: tuple[str, ...]) -> np.ndarray:
        """The named one-value-per-row columns of t as (rows, len(names)) int64."""
        out = np.zeros((len(t), len(names)), np.int64)
        for n, name in enumerate(names):
            out[:, n] = t.cols[name]
        return out

    def _gone(self, rows: np.ndarray, now: int) -> Finished:
        """Rows that left the table (or came back as a new flow): their last seen counts are due."""
        self.vanished += int(rows.size)
        last = self.last[rows]
        delta_packets = self.seen_packets[rows] - self.sent_packets[rows]
        due = delta_packets.sum(axis=1) > 0
        rows, last, delta_packets = rows[due], last[due], delta_packets[due]
        first = self.first[rows]
        reason = np.where(now - last >= self.idle_ns, IDLE_TIMEOUT, LACK_OF_RESOURCES).astype(np.uint8)
        return Finished(
            keys=self.keys[rows],
            packets=delta_packets,
            bytes=self.seen_bytes[rows] - self.sent_bytes[rows],
            start_ns=self._open_start(self.start[rows], first, last),
            end_ns=last,
            tcp_flags=self.flags[rows],
            reason=reason,
            counts=self.seen_counts[rows] - self.sent_counts[rows],
            values=self.seen_values[rows],
        )


def _fill(dtype: np.dtype, rows: Finished, sel: np.ndarray, d: np.ndarray, ifindex: int, v4: bool) -> bytes:
    """Data Records of the rows `sel`, direction d of each (0: a sent), IPv4 (4 octets) or IPv6 addresses."""
    keys = key_records(rows.keys[sel], FLOW_KEY)
    out = np.zeros(sel.size, dtype)
    names = dtype.names
    assert names is not None
    a, b = keys["a"], keys["b"]
    if v4:
        a, b = ipv4_octets(a), ipv4_octets(b)
    aport, bport = keys["aport"], keys["bport"]
    rev = d == 1
    out[names[0]] = np.where(rev[:, None], b, a)
    out[names[1]] = np.where(rev[:, None], a, b)
    out["sourceTransportPort"] = np.where(rev, bport, aport)
    out["destinationTransportPort"] = np.where(rev, aport, bport)
    out["protocolIdentifier"] = keys["proto"]
    out["tcpControlBits"] = rows.tcp_flags[sel]
    out["ingressInterface"] = ifindex
    out["octetDeltaCount"] = rows.bytes[sel, d]
    out["packetDeltaCount"] = rows.packets[sel, d]
    out["flowStartMilliseconds"] = rows.start_ns[sel] // MS
    out["flowEndMilliseconds"] = rows.end_ns[sel] // MS
    out["flowEndReason"] = rows.reason[sel]
    if rows.counts.shape[1] == len(FLOW_COUNTED) and rows.values.shape[1] == len(FLOW_CARRIED):
        _fill_flow_fields(out, rows, sel, d)
    else:  # a tracker without those columns: nothing measured
        for f in RETROTAP_FIELDS:
            out[f.name] = NOT_MEASURED if f.name.endswith("Microseconds") else 0
    return out.tobytes()


def client_is_a(keys: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Per flow key: whether a is the client (the side without the well-known port, else the first sender)."""
    k = key_records(keys, FLOW_KEY)
    known = known_ports()
    ka, kb = known[k["aport"].astype(np.int64)], known[k["bport"].astype(np.int64)]
    return np.asarray(np.where(ka != kb, kb, origin == 0), bool)


def _fill_flow_fields(out: np.ndarray, rows: Finished, sel: np.ndarray, d: np.ndarray) -> None:
    """The enterprise elements of the records (rows sel, direction d): on the client's direction's record
    (the server's when the client sent nothing in this record), zeros and "not measured" on the other."""
    counts = dict(zip(FLOW_COUNTED, rows.counts[sel].T, strict=True))
    values = dict(zip(FLOW_CARRIED, rows.values[sel].T, strict=True))
    client = np.where(client_is_a(rows.keys[sel], values["origin"]), 0, 1)
    client_sent = rows.packets[sel, client] > 0
    carrier = np.where(client_sent, d == client, d != client)
    exchanges = counts["app_count"]
    mean = np.where(exchanges > 0, counts["app_sum"] // np.maximum(exchanges, 1) // US, NOT_MEASURED)
    latency_max = np.where((exchanges > 0) & (values["app_max"] > 0), values["app_max"] // US, NOT_MEASURED)
    irtt = np.where(values["tcp_irtt"] > 0, values["tcp_irtt"] // US, NOT_MEASURED)
    fields = (
        counts["tcp_retrans"],
        counts["tcp_ooo"],
        counts["tcp_dupack"],
        counts["tcp_zero_win"],
        counts["tcp_resets"],
        irtt,
        exchanges,
        mean,
        latency_max,
    )
    for f, v in zip(RETROTAP_FIELDS, fields, strict=True):
        empty = NOT_MEASURED if f.name.endswith("Microseconds") else 0
        out[f.name] = np.where(carrier, np.clip(v, 0, NOT_MEASURED), empty)


def flow_records(rows: Finished, ifindex: int = 0) -> list[tuple[int, bytes, int]]:
    """One Data Record per direction that carried packets: (template id, records, record length) runs."""
    if len(rows) == 0:
        return []
    a_sent, b_sent = np.flatnonzero(rows.packets[:, 0] > 0), np.flatnonzero(rows.packets[:, 1] > 0)
    sel = np.concatenate([a_sent, b_sent])
    d = np.repeat(np.array([0, 1]), [a_sent.size, b_sent.size])
    v4 = is_v4(key_records(rows.keys[sel], FLOW_KEY)["a"])
    runs = []
    for template_id, dtype, mask, ipv4 in (
        (FLOW_IPV4_TEMPLATE_ID, FLOW_IPV4_DTYPE, v4, True),
        (FLOW_IPV6_TEMPLATE_ID, FLOW_IPV6_DTYPE, ~v4, False),
    ):
        if mask.any():
            runs.append((template_id, _fill(dtype, rows, sel[mask], d[mask], ifindex, ipv4), dtype.itemsize))
    return runs


class FlowExporter:
    """Sends finished flows to one collector from its own thread.

    It reads `source` every poll_s (live capture), or, when `fed`, takes every snapshot given to
    feed() in order (a file run, whose snapshots follow packet time rather than the clock).
    """

    def __init__(
        self,
        address: tuple[int, tuple[str, int] | tuple[str, int, int, int]],
        source: Callable[[], Snapshot],
        *,
        domain: int = 0,
        idle_s: float = 15.0,
        active_s: float = 60.0,
        poll_s: float = 1.0,
        fed: bool = False,
        log: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        family, sockaddr = address
        self.sockaddr = sockaddr
        self.source = source
        self.poll_s = poll_s
        self.fed = fed
        self.log = log
        self.encoder = Encoder(domain)
        self.tracker = FlowTracker(idle_s, active_s, counted=FLOW_COUNTED, carried=FLOW_CARRIED)
        self.send_errors = 0
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.connect(sockaddr)
        self._last: Snapshot | None = None
        self._queue: queue.Queue[Snapshot | None] = queue.Queue(maxsize=FEED_QUEUE)
        self._thread: threading.Thread | None = None
        self._next_templates = 0.0
        self._started = False

    def start(self) -> None:
        """Send the templates, then follow the snapshots on a thread."""
        self._started = True
        self._refresh(self.source())
        self._thread = NamedThread(target=self._run, name="retrotap-ipfix", daemon=True)
        self._thread.start()

    def close(self, final: Snapshot | None = None) -> None:
        """Stop the thread, export every count not yet sent (of `final`, else the newest snapshot), close."""
        if self._thread is not None:
            self._queue.put(None)  # after every snapshot fed before
            self._thread.join()
            self._thread = None
        if self._started:
            self._started = False
            snap = final if final is not None else self.source()
            self.export(snap, final=True)
            self._statistics(snap)
        self.sock.close()

    def feed(self, snap: Snapshot) -> None:
        """Hand over a snapshot (when fed); waits while the thread is FEED_QUEUE snapshots behind."""
        self._queue.put(snap)

    def _run(self) -> None:
        while True:
            try:
                snap = self._queue.get(timeout=self.poll_s)
            except queue.Empty:
                snap = self._last if self.fed else self.source()
            if snap is None:
                return
            if snap is not self._last:
                self.export(snap)
            if time.monotonic() >= self._next_templates:
                self._refresh(snap)

    def export(self, snap: Snapshot, final: bool = False) -> int:
        """Send what is due at this snapshot; returns the number of flow records sent."""
        self._last = snap
        runs = flow_records(self.tracker.update(snap, final), ifindex(snap))
        self._send(self.encoder.data(runs))
        return sum(len(r) // size for _, r, size in runs)

    def _refresh(self, snap: Snapshot) -> None:
        self._next_templates = time.monotonic() + TEMPLATE_REFRESH_S
        self._send([self.encoder.templates()])
        self._statistics(snap)

    def _statistics(self, snap: Snapshot) -> None:
        self._send([self.encoder.statistics(snap.kernel_drops, self.tracker.not_sent(snap.flows))])

    def _send(self, messages: list[bytes]) -> None:
        for n, msg in enumerate(messages, 1):
            try:
                self.sock.send(msg)
            except OSError as e:  # e.g. ECONNREFUSED: nothing listens there (yet)
                self.send_errors += 1
                if self.send_errors == 1:
                    self.log(f"ipfix: cannot send to {self.sockaddr[0]}:{self.sockaddr[1]}: {e.strerror or e}")
            if n % PACE_MESSAGES == 0:
                time.sleep(0.001)


def ifindex(snap: Snapshot) -> int:
    """ingressInterface for every record: the interface index when one interface is captured, else 0."""
    if len(snap.interfaces) == 1 and snap.interfaces[0].link is not None:
        return snap.interfaces[0].link.index
    return 0


def resolve(host: str, port: int) -> tuple[int, tuple[str, int] | tuple[str, int, int, int]]:
    """(address family, socket address) of a collector; OSError when the name does not resolve."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    return family, sockaddr  # type: ignore[return-value]
