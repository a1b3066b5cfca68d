"""The NumPy implementation of capture_backend/analysis/latency.py before its per-packet loops were
compiled, kept as the reference the differential test (tests/unit/test_latency_native.py) compares with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from capture_backend.analysis.columns import segments
from capture_backend.analysis.decode import IPPROTO_TCP, IPPROTO_UDP, Decoded, _Frames
from capture_backend.analysis.tables import KeyTable
from capture_backend.contract import DNS_PORT as DNS_PORT
from capture_backend.contract import (
    EMPTY_LATENCY,
    KIND_DNS,
    KIND_HTTP,
    KIND_MYSQL,
    KIND_NAMES,
    SERVER_KEY,
    SERVICE_KEY,
    Exchange,
    LatencySnapshot,
    TableSnapshot,
    key_bytes,
    pack_keys,
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
PENDING_TIMEOUT_NS = 30 * 1_000_000_000  # < 2**36: _quantiles packs a latency into 36 bits
SLOWEST_KEPT = 10
# The tables' own columns (contract.LATENCY_TABLE_COLUMNS: these, then p50 and p95 at freeze time).
LATENCY_COLUMNS = {
    "count": (np.int64, (), 0),
    "sum": (np.int64, (), 0),
    "max": (np.int64, (), 0),
    "first": (np.int64, (), np.iinfo(np.int64).max),
    "last": (np.int64, (), 0),
}
REPEAT_FIFO, REPEAT_FIRST, REPEAT_NEWEST = 0, 1, 2
KIND_REPEAT = np.array([REPEAT_FIFO, REPEAT_FIRST, REPEAT_NEWEST, REPEAT_NEWEST], np.int64)  # by kind
FlowOf = Callable[[np.ndarray], np.ndarray]
EMPTY = EMPTY_LATENCY  # the old name


@dataclass
class _Events:
    """Requests and responses of one batch, in batch order."""

    rows: np.ndarray  # decoded row
    kind: np.ndarray
    request: np.ndarray  # bool
    key: np.ndarray  # uint64: flow row << 24 | kind << 16 | DNS id


def _head32(dec: Decoded, rows: np.ndarray, skip: int = 0) -> np.ndarray:
    """Payload bytes skip..skip+3 of `rows` as big-endian uint64 (zero-padded past what was captured)."""
    assert dec.buf is not None and dec.l7_start is not None and dec.l7_cap is not None
    fr = _Frames(dec.buf, dec.l7_start[rows], dec.l7_cap[rows])
    word = fr.funnel(np.full(rows.size, skip, np.int64), 1)[:, 0] >> np.uint64(32)
    have = np.clip(dec.l7_cap[rows] - skip, 0, 4).astype(np.uint64)
    mask = ~(np.uint64(0xFFFFFFFF) >> (np.uint64(8) * have)) & np.uint64(0xFFFFFFFF)
    return word & mask


def classify(dec: Decoded) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows that are requests or responses: (rows, kind, is_request, DNS id) in batch order."""
    if dec.l7_start is None or dec.l7_cap is None or len(dec) == 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, bool), e
    cap, proto, sport, dport = dec.l7_cap, dec.proto, dec.sport, dec.dport
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    # DNS over UDP (id, flags at 0..3) and TCP (after a 2-byte length).
    for ip_proto, skip in ((IPPROTO_UDP, 0), (IPPROTO_TCP, 2)):
        rows = np.flatnonzero((proto == ip_proto) & ((sport == DNS_PORT) | (dport == DNS_PORT)) & (cap >= skip + 12))
        if rows.size:
            head = _head32(dec, rows, skip)
            qr = (head & np.uint64(0x8000)) != 0
            request = ~qr & (dport[rows] == DNS_PORT)
            response = qr & (sport[rows] == DNS_PORT)
            keep = request | response
            dns_id = (head >> np.uint64(16)).astype(np.int64)
            parts.append((rows[keep], np.full(int(keep.sum()), KIND_DNS), request[keep], dns_id[keep]))
    rows = np.flatnonzero((proto == IPPROTO_TCP) & (cap >= 4) & (sport != DNS_PORT) & (dport != DNS_PORT))
    if rows.size:
        head = _head32(dec, rows)
        http_req = np.isin(head, HTTP_REQUEST_HEADS)
        http_resp = head == HTTP_RESPONSE_HEAD
        mysql = np.zeros(rows.size, bool)
        at_mysql = np.flatnonzero(((sport[rows] == MYSQL_PORT) | (dport[rows] == MYSQL_PORT)) & (cap[rows] >= 5))
        mysql_req = np.zeros(rows.size, bool)
        if at_mysql.size:
            # Packet header: 3-byte length, sequence id; a query is sequence 0 + COM_QUERY, the
            # response's first packet is sequence 1.
            m = _head32(dec, rows[at_mysql], 2)
            seq_id, command = (m >> np.uint64(16)) & np.uint64(0xFF), (m >> np.uint64(8)) & np.uint64(0xFF)
            to_server = dport[rows[at_mysql]] == MYSQL_PORT
            mysql_req[at_mysql] = to_server & (seq_id == 0) & (command == MYSQL_COM_QUERY)
            mysql[at_mysql] = mysql_req[at_mysql] | (~to_server & (seq_id == 1))
            http_req[at_mysql] = http_resp[at_mysql] = False
        keep = http_req | http_resp | mysql
        if keep.any():
            kind = np.where(mysql, KIND_MYSQL, KIND_HTTP)[keep]
            parts.append((rows[keep], kind, (http_req | mysql_req)[keep], np.zeros(int(keep.sum()), np.int64)))
    if not parts:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0, bool), e
    rows = np.concatenate([p[0] for p in parts])
    order = np.argsort(rows, kind="stable")
    return tuple(np.concatenate([p[i] for p in parts])[order] for i in range(4))  # type: ignore[return-value]


def _text(dec: Decoded, rows: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """The first TEXT_BYTES of each request's payload past its framing, zero-padded: (m, TEXT_BYTES)."""
    assert dec.buf is not None and dec.l7_start is not None and dec.l7_cap is not None
    skip = np.where(kind == KIND_MYSQL, 5, np.where((kind == KIND_DNS) & (dec.proto[rows] == IPPROTO_TCP), 2, 0))
    fr = _Frames(dec.buf, dec.l7_start[rows], dec.l7_cap[rows])
    words = fr.funnel(skip.astype(np.int64), TEXT_BYTES // 8)
    text = np.ascontiguousarray(words.astype(">u8")).view(np.uint8).reshape(rows.size, TEXT_BYTES)
    inside = np.arange(TEXT_BYTES) < (dec.l7_cap[rows] - skip)[:, None]
    return np.where(inside, text, 0).astype(np.uint8)


def match(
    key: np.ndarray, request: np.ndarray, repeat: np.ndarray, ts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair responses with requests per key; events in time order, sorted stably by key by the caller.

    A response answers the oldest unanswered request of its key; one with none is unsolicited.
    Where a request meets another unanswered one of its key, `repeat` says what stands: both
    (REPEAT_FIFO), the newest (REPEAT_NEWEST: tshark's http.time times a response from the newest
    request), or, for REPEAT_FIRST, the first unless it is DNS_RETRANSMIT_NS older (tshark's
    dns.time counts from the first query, and a query that late opens a new exchange). Returns the
    answered responses, the request each answers, and the unanswered requests.
    """
    n = key.size
    if n == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    head = segments(key)[0]
    prev_req = np.zeros(n, bool)
    prev_req[1:] = request[:-1] & ~head[1:]
    drop = np.zeros(n, bool)
    first = (repeat == REPEAT_FIRST) & request
    if (first & prev_req).any():
        # A run of requests opens an exchange at its head and at each request DNS_RETRANSMIT_NS
        # after the last opening; the others are repeats.
        opens = first & ~prev_req
        idx = np.arange(n)
        while True:
            since = np.maximum.accumulate(np.where(opens, idx, 0))
            late = first & prev_req & ~opens & (ts - ts[since] >= DNS_RETRANSMIT_NS)
            if not late.any():
                break
            pos = np.flatnonzero(late)
            _, at = np.unique(since[pos], return_index=True)
            opens[pos[at]] = True  # the earliest late one of each opening; later ones are timed from it
        drop = first & prev_req & ~opens
    if (request & (repeat != REPEAT_FIFO)).any():
        # Of kept requests in a row (no response between), only the newest stands.
        kept = np.flatnonzero(~drop)
        k_req, k_key = request[kept], key[kept]
        followed = np.zeros(kept.size, bool)
        followed[:-1] = k_req[1:] & (k_key[1:] == k_key[:-1])
        drop[kept[followed & k_req & (repeat[kept] != REPEAT_FIFO)]] = True
    live = np.flatnonzero(~drop)
    answered, asked, left = _fifo(key[live], request[live])
    return live[answered], live[asked], live[left]


def _fifo(key: np.ndarray, request: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = key.size
    head, seg, starts = segments(key)
    step = np.where(request, 1, -1)
    c = np.cumsum(step)
    c = c - np.repeat(c[starts] - step[starts], np.diff(np.append(starts, n)))  # per key
    # Clamped at zero (an unsolicited response changes nothing): c - min(0, running min of c per key).
    offset = seg * (2 * n + 2)
    low = np.minimum.accumulate(c - offset) + offset
    balance = c - np.minimum(0, low)
    before = np.zeros(n, np.int64)
    before[1:] = balance[:-1]
    before[head] = 0
    answered = np.flatnonzero(~request & (before > 0))
    requests = np.flatnonzero(request)
    # The m-th answered response of a key answers that key's m-th request.
    first_req = np.searchsorted(seg[requests], seg[answered])
    asked = requests[first_req + _rank_in_segment(seg[answered])]
    n_answered = np.bincount(seg[answered], minlength=int(seg[-1]) + 1)
    left = requests[_rank_in_segment(seg[requests]) >= n_answered[seg[requests]]]
    return answered, asked, left


def _rank_in_segment(seg: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of a sorted array."""
    _, run, starts = segments(seg)
    return np.arange(seg.size) - starts[run]


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
        # Unanswered requests sorted by key; their text lives in a pool of PENDING_LIMIT slots.
        self.p_key = np.zeros(0, np.uint64)
        self.p_ts = np.zeros(0, np.int64)
        self.p_slot = np.zeros(0, np.int64)
        self.pool = np.zeros((PENDING_LIMIT, TEXT_BYTES), np.uint8)
        self.free = np.arange(PENDING_LIMIT - 1, -1, -1)
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

    def add(self, dec: Decoded, flow_of: FlowOf, flow_first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Match this batch's requests and responses; returns (flow row, latency ns) per exchange."""
        rows, kind, request, dns_id = classify(dec)
        e = np.zeros(0, np.int64)
        if rows.size == 0:
            return e, e
        fid = flow_of(rows)
        ok = fid >= 0
        if not ok.all():  # flows over the table's capacity: nothing to time them by
            rows, kind, request, dns_id, fid = rows[ok], kind[ok], request[ok], dns_id[ok], fid[ok]
            if rows.size == 0:
                return e, e
        key = (
            (fid.astype(np.uint64) << np.uint64(24))
            | (kind.astype(np.uint64) << np.uint64(16))
            | dns_id.astype(np.uint64)
        )
        ts = dec.ts_ns[rows]
        req_rows = np.flatnonzero(request)
        text = _text(dec, rows[req_rows], kind[req_rows])
        # Only the pending requests of this batch's keys take part; they go first (they are older).
        taken = self._pending_of(np.unique(key))
        np_ = taken.size
        all_key = np.concatenate([self.p_key[taken], key])
        all_ts = np.concatenate([self.p_ts[taken], ts])
        all_req = np.concatenate([np.ones(np_, bool), request])
        all_text = np.concatenate([self.pool[self.p_slot[taken]], text])
        text_of = np.full(all_key.size, -1, np.int64)  # row in all_text
        text_of[:np_] = np.arange(np_)
        text_of[np_ + req_rows] = np_ + np.arange(req_rows.size)
        order = np.argsort(all_key, kind="stable")
        kinds = ((all_key[order] >> np.uint64(16)) & np.uint64(0xFF)).astype(np.int64)
        answered, asked, left = match(all_key[order], all_req[order], KIND_REPEAT[kinds], all_ts[order])
        resp, req = order[answered], order[asked]
        left = order[left]  # by key, then arrival
        self._replace_pending(taken, all_key[left], all_ts[left], all_text[text_of[left]], int(ts.max()))
        # A flow row re-used after its flow was evicted must not answer the old flow's request.
        r_fid = (all_key[resp] >> np.uint64(24)).astype(np.int64)
        fresh = all_ts[req] >= flow_first[r_fid]
        in_time = all_ts[resp] - all_ts[req] <= PENDING_TIMEOUT_NS
        self.unanswered += int((fresh & ~in_time).sum())
        fresh &= in_time
        resp, req, r_fid = resp[fresh], req[fresh], r_fid[fresh]
        if resp.size == 0:
            return e, e
        lat = np.maximum(all_ts[resp] - all_ts[req], 0)  # clocks of two interfaces may disagree
        b = resp - np_  # responses are all of this batch
        self._record(dec, rows[b], kind[b], all_ts[resp], lat, all_text[text_of[req]])
        return r_fid, lat

    def _pending_of(self, keys: np.ndarray) -> np.ndarray:
        """Indices of the pending requests (sorted by key) whose key is one of the sorted `keys`."""
        lo = np.searchsorted(self.p_key, keys, "left")
        hi = np.searchsorted(self.p_key, keys, "right")
        n = hi - lo
        if not n.any():
            return np.zeros(0, np.int64)
        lo, n = lo[n > 0], n[n > 0]
        return np.repeat(lo - np.cumsum(n) + n, n) + np.arange(int(n.sum()))

    def _replace_pending(self, taken: np.ndarray, key: np.ndarray, ts: np.ndarray, text: np.ndarray, now: int) -> None:
        """Drop the pending requests that took part, keep the unanswered ones (sorted by key)."""
        self.free = np.concatenate([self.free, self.p_slot[taken]])
        keep = np.ones(self.p_key.size, bool)
        keep[taken] = False
        if now >= self._next_expiry or self.p_key.size - taken.size + key.size > PENDING_LIMIT:
            self._next_expiry = now + PENDING_TIMEOUT_NS // 4
            keep &= self.p_ts >= now - PENDING_TIMEOUT_NS
            over = min(int(keep.sum()) + key.size - PENDING_LIMIT * 3 // 4, int(keep.sum()))
            if over > 0:  # far too many unanswered: the oldest go, in one sweep
                ages = np.where(keep, self.p_ts, np.iinfo(np.int64).max)
                keep[np.lexsort((self.p_key, ages))[:over]] = False  # ties: the lower key
            gone = ~keep
            gone[taken] = False
            self.unanswered += int(gone.sum())
            self.free = np.concatenate([self.free, self.p_slot[gone]])
        if key.size > self.free.size:  # more new requests than slots: the oldest new ones go
            extra = key.size - self.free.size
            self.unanswered += extra
            newest = np.sort(np.argsort(ts, kind="stable")[extra:])
            key, ts, text = key[newest], ts[newest], text[newest]
        slots = self.free[self.free.size - key.size :]
        self.free = self.free[: self.free.size - key.size]
        self.pool[slots] = text
        p_key, p_ts, p_slot = self.p_key[keep], self.p_ts[keep], self.p_slot[keep]
        at = np.searchsorted(p_key, key, "right")
        self.p_key = np.insert(p_key, at, key)
        self.p_ts = np.insert(p_ts, at, ts)
        self.p_slot = np.insert(p_slot, at, slots)

    def _record(
        self, dec: Decoded, rows: np.ndarray, kind: np.ndarray, ts: np.ndarray, lat: np.ndarray, text: np.ndarray
    ) -> None:
        """Count matched exchanges (their response rows) in the server and service tables."""
        m = rows.size
        self.exchanges += m
        proto, port = dec.proto[rows], dec.sport[rows]
        server = key_bytes(dec.src_key[rows])
        sid = self.servers.ids_of_repeated(pack_keys(SERVER_KEY, m, server=server, proto=proto, port=port, kind=kind))
        vid = self.services.ids_of_repeated(pack_keys(SERVICE_KEY, m, proto=proto, port=port, kind=kind))
        for table, ids in ((self.servers, sid), (self.services, vid)):
            ok = ids >= 0
            c, i = table.cols, ids[ok]
            np.add.at(c["count"], i, 1)
            np.add.at(c["sum"], i, lat[ok])
            np.maximum.at(c["max"], i, lat[ok])
            np.minimum.at(c["first"], i, ts[ok])
            np.maximum.at(c["last"], i, ts[ok])
        take = min(m, SAMPLE_RING)
        slots = (self.s_next + np.arange(take)) % SAMPLE_RING
        self.s_server[slots], self.s_service[slots] = sid[-take:], vid[-take:]
        self.s_value[slots], self.s_ts[slots] = lat[-take:], ts[-take:]
        self.s_next = (self.s_next + take) % SAMPLE_RING
        self._frozen = None
        for k in np.unique(kind).tolist():
            mine = np.flatnonzero(kind == k)
            kept = self.slowest[k]
            floor = kept[-1].latency_ns if len(kept) >= SLOWEST_KEPT else -1
            mine = mine[lat[mine] > floor]  # usually none: the slowest are rare
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

    def freeze(self) -> LatencySnapshot:
        """Per-server and per-service tables with p50/p95 of the recent samples (made again only after
        new exchanges), the slowest exchanges and the counts."""
        if self._frozen is None:
            slowest = sorted((x for kept in self.slowest.values() for x in kept), key=lambda x: -x.latency_ns)
            self._frozen = (
                self._freeze(self.servers, self.s_server, SERVER_KEY),
                self._freeze(self.services, self.s_service, SERVICE_KEY),
                tuple(slowest),
            )
        servers, services, slowest_ = self._frozen
        return LatencySnapshot(servers, services, slowest_, self.exchanges, self.unanswered)

    def _freeze(self, table: KeyTable, sample_rows: np.ndarray, layout: np.dtype) -> TableSnapshot:
        valid = sample_rows >= 0
        valid[valid] = self.s_ts[valid] >= table.cols["first"][sample_rows[valid]]  # not a re-used row's
        p50, p95 = _quantiles(sample_rows[valid], self.s_value[valid], table.high)
        snap = table.freeze(0)
        rows = np.flatnonzero(table.used[: table.high])
        cols: dict[str, np.ndarray] = dict(snap.cols)
        for name, col in (("p50", p50[rows]), ("p95", p95[rows])):
            col.flags.writeable = False
            cols[name] = col
        return TableSnapshot(keys=snap.keys, cols=MappingProxyType(cols), evicted=snap.evicted, layout=layout)
