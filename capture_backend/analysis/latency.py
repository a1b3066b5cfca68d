"""Application latency: DNS query → response, HTTP/1.x request → first response, MySQL query → response.

Each batch's packets are classified by their first payload bytes and matched in one compiled pass
(_native.PendingRequests.add_batch). Requests wait in a compiled table keyed by (flow row, kind, DNS
id), one per key; responses are matched in arrival order,
as tshark does: a re-sent DNS query does not open a second exchange (dns.time counts from the first),
and an HTTP response answers the newest request (http.time; pipelined requests before it stay
unanswered). HTTP latency is to the response's first segment, as tshark's http.time with
http.desegment_body off.
Matched exchanges update the flow, a per-server and a per-service table, a ring of recent samples
(exact p50/p95 at publish time) and the slowest exchanges of each kind with their request's text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from capture_backend._native import PendingRequests as PendingRequests
from capture_backend._native import latency_tables
from capture_backend.analysis.columns import segments
from capture_backend.analysis.decode import Decoded
from capture_backend.analysis.tables import KeyTable
from capture_backend.contract import DNS_PORT as DNS_PORT
from capture_backend.contract import (
    EMPTY_LATENCY,
    KIND_DNS,
    KIND_HTTP,
    KIND_NAMES,
    SERVER_KEY,
    SERVICE_KEY,
    Exchange,
    LatencySnapshot,
    TableSnapshot,
    key_bytes,
    pack_keys,
)
from capture_backend.contract import (
    KIND_MYSQL as KIND_MYSQL,
)
from capture_backend.contract import SAMPLE_RING as SAMPLE_RING

MYSQL_PORT = 3306
MYSQL_COM_QUERY = 0x03
# First four payload bytes of an HTTP/1.x request or response line.
HTTP_REQUEST_HEADS = np.array(
    sorted(
        int.from_bytes(m[:4].ljust(4), "big")
        for m in (b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC")
    ),
    np.uint64,
)
HTTP_RESPONSE_HEAD = int.from_bytes(b"HTTP", "big")
TEXT_BYTES = 64  # of each request kept to name it (DNS question, HTTP request line, SQL)
DNS_RETRANSMIT_NS = 5 * 1_000_000_000  # tshark's dns.retransmission_timer
PENDING_LIMIT = 65_536
MATCH_SLICE = 16_384  # packets classified and matched at once, then bounded (a live batch is one slice)
PENDING_TIMEOUT_NS = 30 * 1_000_000_000  # < 2**36: _quantiles packs a latency into 36 bits
SLOWEST_KEPT = 10
# p50 and p95 sort the whole sample ring (≈ 2 ms for 65,536 samples, per table): a snapshot published a few
# times a second may reuse those of up to this long ago; an exact one (a record, the last snapshot) never does.
QUANTILE_SECONDS = 1.0
# The tables' own columns (contract.LATENCY_TABLE_COLUMNS: these, then p50 and p95 at freeze time).
LATENCY_COLUMNS = {
    "count": (np.int64, (), 0),
    "sum": (np.int64, (), 0),
    "max": (np.int64, (), 0),
    "first": (np.int64, (), np.iinfo(np.int64).max),
    "last": (np.int64, (), 0),
}
FlowOf = Callable[[np.ndarray], np.ndarray]
EMPTY = EMPTY_LATENCY  # the old name


@dataclass
class _Events:
    """Requests and responses of one batch, in batch order."""

    rows: np.ndarray  # decoded row
    kind: np.ndarray
    request: np.ndarray  # bool
    key: np.ndarray  # uint64: flow row << 24 | kind << 16 | DNS id


DNS_TYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    65: "HTTPS",
    255: "ANY",
}


def _dns_question(raw: bytes) -> str:
    """'name TYPE' of a DNS message's first question (as much as the kept bytes hold)."""
    labels: list[str] = []
    i = 12
    while i < len(raw) and raw[i] and raw[i] < 64:
        labels.append(raw[i + 1 : i + 1 + raw[i]].decode("ascii", "replace"))
        i += 1 + raw[i]
    name = ".".join(labels) or "."
    if i + 3 <= len(raw) and i < len(raw) and raw[i] == 0:
        qtype = int.from_bytes(raw[i + 1 : i + 3], "big")
        return f"{name} {DNS_TYPES.get(qtype, f'TYPE{qtype}')}"
    return name


def request_text(kind: int, raw: bytes) -> str:
    """What a request asked, from its first bytes: DNS question, HTTP request line, SQL text."""
    if kind == KIND_DNS:
        return _dns_question(raw)
    text = raw.rstrip(b"\0")
    if kind == KIND_HTTP:
        return text.split(b"\r\n", 1)[0].decode("latin-1")
    return " ".join(text.decode("utf-8", "replace").split())


def _quantiles(rows: np.ndarray, values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-rank p50 and p95 of `values` per row id (0 where a row has none)."""
    p50, p95 = np.zeros(size, np.int64), np.zeros(size, np.int64)
    if rows.size == 0:
        return p50, p95
    # One sort of row << 36 | value (values stay below PENDING_TIMEOUT_NS < 2**36).
    packed = np.sort((rows.astype(np.int64) << 36) | values)
    r, v = packed >> 36, packed & ((1 << 36) - 1)
    starts = segments(r)[2]
    count = np.diff(np.append(starts, r.size))
    ids = r[starts]
    p50[ids] = v[starts + np.ceil(0.50 * count).astype(np.int64) - 1]
    p95[ids] = v[starts + np.ceil(0.95 * count).astype(np.int64) - 1]
    return p50, p95


class Latency:
    """Request/response matching and latency tables; only the capture thread calls add() and freeze()."""

    def __init__(self, servers: int = 10_000) -> None:
        self.servers = KeyTable(SERVER_KEY.itemsize, LATENCY_COLUMNS, servers)
        self.services = KeyTable(SERVICE_KEY.itemsize, LATENCY_COLUMNS, 4096)
        self.pending = PendingRequests(TEXT_BYTES)  # at most PENDING_LIMIT between batches
        self._out = self._scratch_of(0)
        self._rows = np.arange(0)
        self._next_expiry = 0
        self.s_server = np.full(SAMPLE_RING, -1, np.int64)
        self.s_service = np.full(SAMPLE_RING, -1, np.int64)
        self.s_value = np.zeros(SAMPLE_RING, np.int64)
        self.s_ts = np.zeros(SAMPLE_RING, np.int64)
        self.s_next = 0
        self.exchanges = 0
        self.unanswered = 0
        self.slowest: dict[int, list[Exchange]] = {k: [] for k in KIND_NAMES}
        self._frozen: tuple[TableSnapshot, TableSnapshot, tuple[Exchange, ...]] | None = None
        self._frozen_exact = False  # the quantiles in _frozen are of its own samples
        # Per table: p50 and p95 by row, the newest sample time they count, and when (monotonic) made.
        self._quantiles: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self._quantiled = -1e18
        self.clock: Callable[[], float] = time.monotonic

    def add(self, dec: Decoded, flow_of: FlowOf, flow_first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Match this batch's requests and responses; returns (flow row, latency ns) per exchange."""
        e = np.zeros(0, np.int64)
        n = len(dec)
        if dec.buf is None or dec.l7_start is None or dec.l7_cap is None or n == 0:
            return e, e
        buf, ts = np.ascontiguousarray(dec.buf), dec.ts_ns
        # Room for every packet of the batch to answer (a larger batch than a slice: pages written only as used).
        rows, kind, key, asked_ts, asked_text = self._scratch(n) if n <= MATCH_SLICE else self._scratch_of(n)
        cols = (buf, dec.l7_start, dec.l7_cap, dec.l7_head, dec.proto, dec.sport, dec.dport, HTTP_REQUEST_HEADS)
        if not self.pending.add_batch(*cols, None, ts, 0, n, rows, kind, key, asked_ts, asked_text)[1]:
            return e, e  # no request or response at all (most batches): no flow rows needed
        if self._rows.size < n:
            self._rows = np.arange(n)
        flow = np.ascontiguousarray(flow_of(self._rows[:n]), np.int64)  # each packet's flow row (-1: none)
        m = 0
        # Classified and matched in one compiled pass; a file chunk (a DNS flood) a slice at a time, each
        # bounded after, so the table never holds more than PENDING_LIMIT + MATCH_SLICE requests.
        for lo in range(0, n, MATCH_SLICE):
            hi = min(lo + MATCH_SLICE, n)
            got, events, newest = self.pending.add_batch(
                *cols, flow, ts, lo, hi, rows[m:], kind[m:], key[m:], asked_ts[m:], asked_text[m:]
            )
            m += got
            if events:
                self._bound(newest)
        if m == 0:
            return e, e
        # Exchanges in key order, then arrival (as the snapshots have always listed them).
        order = np.argsort(key[:m], kind="stable")
        rows, kind, asked_ts, asked_text = rows[order], kind[order], asked_ts[order], asked_text[order]
        r_fid = flow[rows]
        r_ts = ts[rows]
        # A flow row re-used after its flow was evicted must not answer the old flow's request.
        fresh = asked_ts >= flow_first[r_fid]
        in_time = r_ts - asked_ts <= PENDING_TIMEOUT_NS
        self.unanswered += int((fresh & ~in_time).sum())
        fresh &= in_time
        if not fresh.all():
            rows, kind, asked_ts, r_fid, r_ts = rows[fresh], kind[fresh], asked_ts[fresh], r_fid[fresh], r_ts[fresh]
            asked_text = asked_text[fresh]
        if rows.size == 0:
            return e, e
        lat = np.maximum(r_ts - asked_ts, 0)  # clocks of two interfaces may disagree
        self._record(dec, rows, kind, r_ts, lat, asked_text)
        return r_fid, lat

    @staticmethod
    def _scratch_of(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows, kinds, keys, request times and request texts of n answered responses."""
        return (
            np.empty(n, np.int64),
            np.empty(n, np.int64),
            np.empty(n, np.uint64),
            np.empty(n, np.int64),
            np.empty((n, TEXT_BYTES), np.uint8),
        )

    def _scratch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Output arrays for n packets, kept from batch to batch (only copies of them leave add())."""
        if self._out[0].size < n:
            self._out = self._scratch_of(n)
        return self._out

    def _bound(self, now: int) -> None:
        """Keep the pending requests bounded: every PENDING_TIMEOUT_NS / 4, or when more than
        PENDING_LIMIT are pending, those not touched by this batch (or slice) and older than
        PENDING_TIMEOUT_NS go, then the oldest of them down to 3/4 of the limit; then, if still over the
        limit, the oldest of this batch's. Each one gone is counted unanswered. Ties: the lower key goes first."""
        pending = self.pending
        if now < self._next_expiry and len(pending) <= PENDING_LIMIT:
            return
        entry, key, ts, touched = pending.live()
        self._next_expiry = now + PENDING_TIMEOUT_NS // 4
        old = np.flatnonzero(~touched)
        expired = ts[old] < now - PENDING_TIMEOUT_NS
        gone = [old[expired]]
        kept = old[~expired]
        over = min(kept.size + int(touched.sum()) - PENDING_LIMIT * 3 // 4, kept.size)
        if over > 0:  # far too many unanswered: the oldest go, in one sweep
            gone.append(kept[np.lexsort((key[kept], ts[kept]))[:over]])
            kept = kept[np.lexsort((key[kept], ts[kept]))[over:]]
        new = np.flatnonzero(touched)
        extra = kept.size + new.size - PENDING_LIMIT
        if extra > 0:  # more of this batch's requests than room: its oldest go
            gone.append(new[np.lexsort((key[new], ts[new]))[:extra]])
        out = np.concatenate(gone)
        self.unanswered += out.size
        pending.drop(entry[out])

    def _record(
        self, dec: Decoded, rows: np.ndarray, kind: np.ndarray, ts: np.ndarray, lat: np.ndarray, text: np.ndarray
    ) -> None:
        """Count matched exchanges (their response rows) in the server and service tables."""
        m = rows.size
        self.exchanges += m
        proto, port = dec.proto[rows], dec.sport[rows]
        server = key_bytes(np.take(dec.src_key, rows, axis=0))  # a 2-D row gather: take, not a fancy index
        sid = self.servers.ids_of_repeated(pack_keys(SERVER_KEY, m, server=server, proto=proto, port=port, kind=kind))
        vid = self.services.ids_of_repeated(pack_keys(SERVICE_KEY, m, proto=proto, port=port, kind=kind))
        for table, ids in ((self.servers, sid), (self.services, vid)):
            c = table.cols
            latency_tables(c["count"], c["sum"], c["max"], c["first"], c["last"], ids, lat, ts)
        take = min(m, SAMPLE_RING)
        slots = (self.s_next + np.arange(take)) % SAMPLE_RING
        self.s_server[slots], self.s_service[slots] = sid[-take:], vid[-take:]
        self.s_value[slots], self.s_ts[slots] = lat[-take:], ts[-take:]
        self.s_next = (self.s_next + take) % SAMPLE_RING
        self._frozen = None
        floor = np.full(max(KIND_NAMES) + 1, -1, np.int64)  # by kind: what it takes to be kept
        for k, kept in self.slowest.items():
            if len(kept) >= SLOWEST_KEPT:
                floor[k] = kept[-1].latency_ns
        slower = np.flatnonzero(lat > floor[kind])  # usually none: the slowest are rare
        for k in np.unique(kind[slower]).tolist():
            kept = self.slowest[k]
            mine = slower[kind[slower] == k]
            top = mine[np.argsort(-lat[mine], kind="stable")[:SLOWEST_KEPT]]
            for j in top.tolist():
                kept.append(
                    Exchange(
                        KIND_NAMES[k],
                        int(lat[j]),
                        int(ts[j]),
                        bytes(key_bytes(dec.dst_key[rows[j : j + 1]])[0]),
                        bytes(server[j]),
                        int(dec.sport[rows[j]]),
                        request_text(k, text[j].tobytes()),
                    )
                )
            kept.sort(key=lambda x: -x.latency_ns)
            del kept[SLOWEST_KEPT:]

    def freeze(self, exact: bool = True) -> LatencySnapshot:
        """Per-server and per-service tables with p50/p95 of the recent samples (made again only after
        new exchanges), the slowest exchanges and the counts. Not `exact`: p50 and p95 may be those of up
        to QUANTILE_SECONDS ago (counts, sums and maxima are always current)."""
        now = self.clock()
        sort = exact or now - self._quantiled >= QUANTILE_SECONDS
        if self._frozen is None or (sort and not self._frozen_exact):
            if sort:
                self._quantiled = now
            slowest = sorted((x for kept in self.slowest.values() for x in kept), key=lambda x: -x.latency_ns)
            self._frozen = (
                self._freeze(self.servers, self.s_server, SERVER_KEY, sort),
                self._freeze(self.services, self.s_service, SERVICE_KEY, sort),
                tuple(slowest),
            )
            self._frozen_exact = sort
        servers, services, slowest_ = self._frozen
        return LatencySnapshot(servers, services, slowest_, self.exchanges, self.unanswered)

    def _freeze(self, table: KeyTable, sample_rows: np.ndarray, layout: np.dtype, sort: bool) -> TableSnapshot:
        made = self._quantiles.get(id(table))
        if sort or made is None:
            valid = sample_rows >= 0
            valid[valid] = self.s_ts[valid] >= table.cols["first"][sample_rows[valid]]  # not a re-used row's
            p50, p95 = _quantiles(sample_rows[valid], self.s_value[valid], table.high)
            newest = int(self.s_ts[valid].max()) if valid.any() else 0
            self._quantiles[id(table)] = (p50, p95, newest)
        else:  # the last ones; rows handed out (or re-used) since have none yet
            old50, old95, newest = made
            p50, p95 = np.zeros(table.high, np.int64), np.zeros(table.high, np.int64)
            kept = min(old50.size, table.high)
            p50[:kept], p95[:kept] = old50[:kept], old95[:kept]
            since = np.flatnonzero(table.cols["first"][:kept] > newest)
            p50[since] = p95[since] = 0
        snap = table.freeze(0)
        rows = np.flatnonzero(table.used[: table.high])
        cols: dict[str, np.ndarray] = dict(snap.cols)
        for name, col in (("p50", p50[rows]), ("p95", p95[rows])):
            col.flags.writeable = False
            cols[name] = col
        return TableSnapshot(keys=snap.keys, cols=MappingProxyType(cols), evicted=snap.evicted, layout=layout)
