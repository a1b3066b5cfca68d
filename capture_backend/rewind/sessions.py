"""The session store: one record per finished flow (or per active interval of a long one), in one SQLite file.

"What talked to 10.0.0.7 at 17:02": records are written in batches by the session writer
(exporters/sessions.py) and read by `retrotap sessions`. The schema is declared once, below, as data;
the table is indexed by start time, by each address with the start time, and by the server port with
the start time, so a host or a service over a day is an index range, not a scan (a client port is
looked for among the records of the time window). Addresses are blobs of 4
(IPv4) or 16 (IPv6) bytes beside a `family` column: they compare as bytes, so a network is a range.
`src` is the client (the side without the service port, else the side that sent first).

The store is in WAL mode (queries read while the writer writes); retention deletes the oldest records
by age, by size and to keep free space (as the recorder's --keep-age, --max-size, --min-free), and gives
the pages back to the file system (incremental vacuum). Every failure of SQLite (a corrupt, locked or
unwritable file) is a SessionStoreError with one line naming the file.

The same file holds the per-minute aggregates of every view (rewind/aggregates.py, their own tables,
declared there); retention deletes their minutes with the sessions of the same age, and, by size or free
space, the minutes older than the oldest session left.

`--where` is a small language of `FIELD OP NUMBER` clauses joined by `and`, over a whitelist of fields,
compiled to parameterised SQL: nothing the user writes reaches SQL as text.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from capture_backend.analysis.processes import PacketOwners
from capture_backend.analysis.tables import flow_ends
from capture_backend.contract import (
    FLOW_KEY,
    PORT_PROTOS,
    PROTO_NAMES,
    PROTO_NUMBERS,
    V4_MAPPED,
    UserError,
    address_key,
    proto_name,
    service_name,
)
from capture_backend.rewind.aggregates import (
    AGGREGATES,
    MINUTE_NS,
    Batch,
    MinuteRecord,
    aggregate_schema,
    insert_sql,
    read_minutes,
)
from capture_backend.rewind.export import ExportOptions, FlowMatch, TimeSpecError, time_window

STORE_NAME = "retrotap-sessions.sqlite"
SCHEMA_VERSION = 2  # 2: netns and container (a version-1 store gets them added, or read as NULL)
END_OF_TIME = (1 << 63) - 1
DEFAULT_TOP = 100

# Why a record was written (IPFIX flowEndReason values where one exists).
REASON_IDLE, REASON_ACTIVE, REASON_CLOSED, REASON_END, REASON_EVICTED = 1, 2, 3, 4, 5
REASON_NAMES = {
    REASON_IDLE: "idle",
    REASON_ACTIVE: "active",
    REASON_CLOSED: "closed",
    REASON_END: "end",
    REASON_EVICTED: "evicted",
}


class Column(NamedTuple):
    """One column of the sessions table: name, SQLite type, what it holds."""

    name: str
    type: str
    doc: str


# The schema, once. Every record column but `id`, in the order `insert` takes them.
COLUMNS: tuple[Column, ...] = (
    Column("start_ns", "INTEGER NOT NULL", "first packet of the record, ns since the epoch"),
    Column("end_ns", "INTEGER NOT NULL", "last packet of the record, ns since the epoch"),
    Column("iface", "TEXT", "the captured interface ('' when several)"),
    Column("vlan", "INTEGER", "VLAN id (NULL: none or not known)"),
    Column("family", "INTEGER NOT NULL", "4 or 6"),
    Column("proto", "INTEGER NOT NULL", "IP protocol number"),
    Column("src", "BLOB NOT NULL", "client address, 4 or 16 bytes"),
    Column("sport", "INTEGER NOT NULL", "client port (0: none)"),
    Column("dst", "BLOB NOT NULL", "server address"),
    Column("dport", "INTEGER NOT NULL", "server port (0: none)"),
    Column("src_packets", "INTEGER NOT NULL", "packets client → server"),
    Column("dst_packets", "INTEGER NOT NULL", "packets server → client"),
    Column("src_bytes", "INTEGER NOT NULL", "bytes client → server (frames on the wire)"),
    Column("dst_bytes", "INTEGER NOT NULL", "bytes server → client"),
    Column("tcp_flags", "INTEGER NOT NULL", "TCP flags seen, ORed (tcpdump FSRPAUEC bits)"),
    Column("retrans", "INTEGER NOT NULL", "TCP retransmissions"),
    Column("ooo", "INTEGER NOT NULL", "TCP out-of-order segments"),
    Column("dupacks", "INTEGER NOT NULL", "TCP duplicate ACKs"),
    Column("zero_windows", "INTEGER NOT NULL", "TCP zero windows"),
    Column("resets", "INTEGER NOT NULL", "TCP resets"),
    Column("rtt_us", "INTEGER", "TCP handshake RTT (NULL: not measured)"),
    Column("exchanges", "INTEGER NOT NULL", "DNS/HTTP/MySQL request → response exchanges"),
    Column("latency_avg_us", "INTEGER", "their mean latency (NULL: none)"),
    Column("latency_max_us", "INTEGER", "the flow's slowest exchange so far (NULL: none)"),
    Column("slowest", "TEXT", "that exchange's request when known (DNS question, HTTP request line, SQL)"),
    Column("pid", "INTEGER", "local process (NULL: not known)"),
    Column("process", "TEXT", "its name"),
    Column("user", "TEXT", "its user"),
    Column("netns", "TEXT", "its network namespace as -i names it (NULL: the current one, or not known)"),
    Column("container", "TEXT", "its container, e.g. docker:0123456789ab (NULL: none)"),
    Column("reason", "INTEGER NOT NULL", "why written: 1 idle, 2 active, 3 closed, 4 end, 5 evicted"),
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)
INDEXES = {
    "sessions_start": ("start_ns",),
    "sessions_src": ("src", "start_ns"),
    "sessions_dst": ("dst", "start_ns"),
    "sessions_dport": ("dport", "start_ns"),
}


def schema() -> str:
    """The CREATE statements of the store."""
    cols = ",\n    ".join(f"{c.name} {c.type}" for c in COLUMNS)
    out = [
        f"CREATE TABLE IF NOT EXISTS sessions (\n    id INTEGER PRIMARY KEY,\n    {cols}\n);",
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    ]
    out += [f"CREATE INDEX IF NOT EXISTS {name} ON sessions ({', '.join(on)});" for name, on in INDEXES.items()]
    return "\n".join(out + aggregate_schema())


class SessionStoreError(UserError):
    """A store that cannot be used (corrupt, locked, unwritable, missing), in one line."""


class WhereError(UserError, ValueError):
    """A --where expression that cannot be read, in one line naming what is wrong."""


class QueryError(UserError, ValueError):
    """A query option that cannot be asked (sort, port, protocol, host), in one line."""


@dataclass
class Retention:
    """How much the store keeps: records newer than keep_age_ns, at most max_bytes, and free space left."""

    keep_age_ns: int = 0  # by a record's end; 0: no limit
    max_bytes: int = 0  # pages in use; 0: no limit
    min_free_ratio: float = 0.0  # of the file system
    min_free_bytes: int = 0


@contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    """SQLite's errors as one SessionStoreError line naming the store."""
    try:
        yield
    except sqlite3.Error as e:
        text = str(e)
        if "not a database" in text or "malformed" in text:
            text = f"corrupt ({text})"
        elif "locked" in text or "busy" in text:
            text = f"locked by another process ({text})"
        elif "readonly" in text or "unable to open" in text:
            text = f"not writable ({text})"
        raise SessionStoreError(f"sessions store {path}: {text}") from None


def store_path(directory: str | Path) -> Path:
    """The store's file in a directory (a path ending in .sqlite is the file itself)."""
    p = Path(directory)
    return p if p.suffix in (".sqlite", ".db") else p / STORE_NAME


class SessionStore:
    """One sessions file, opened for writing (created if missing) or reading (must exist)."""

    def __init__(self, path: str | Path, writable: bool = True, timeout: float = 5.0) -> None:
        self.path = store_path(path)
        self.writable = writable
        self.max_span_ns = 0
        with _sqlite_errors(self.path):
            if writable:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise SessionStoreError(f"sessions store {self.path}: {e.strerror or e}") from None
                self.db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
                new = self.db.execute("PRAGMA page_count").fetchone()[0] == 0
                if new:
                    self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only before the first table
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = NORMAL")
                self.db.executescript(schema())
                for c in COLUMNS:  # columns a store of an older version lacks
                    if c.name not in self._columns():
                        self.db.execute(f"ALTER TABLE sessions ADD COLUMN {c.name} {c.type}")
                self.db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                    (SCHEMA_VERSION,),
                )
            else:
                if not self.path.exists():
                    raise SessionStoreError(f"sessions store {self.path}: no such file")
                self.db = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, timeout=timeout, check_same_thread=False
                )
                names = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not {"sessions", "meta"} <= names:
                    raise SessionStoreError(f"sessions store {self.path}: not a retrotap sessions store")
            # Read from a store of an older version, a column it lacks is NULL.
            present = self._columns()
            self.select = ", ".join(c if c in present else f"NULL AS {c}" for c in COLUMN_NAMES)
            self.db.execute("PRAGMA cache_size = -65536")  # 64 MiB
            row = self.db.execute("SELECT value FROM meta WHERE key = 'max_span_ns'").fetchone()
            self.max_span_ns = int(row[0]) if row else 0

    def _columns(self) -> set[str]:
        return {r[1] for r in self.db.execute("PRAGMA table_info(sessions)")}

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- writing

    def insert(self, rows: Sequence[Sequence[Any]]) -> int:
        """Write records (each in COLUMN_NAMES order) in one transaction; returns how many."""
        return self.insert_batch(rows, {})

    def insert_batch(self, rows: Sequence[Sequence[Any]], aggregates: Batch) -> int:
        """Write session records and per-minute aggregate rows (table → rows) in one transaction; returns
        how many records."""
        if not rows and not any(aggregates.values()):
            return 0
        marks = ", ".join("?" * len(COLUMNS))
        span = max((int(r[1]) - int(r[0]) for r in rows), default=0)
        with _sqlite_errors(self.path):
            self.db.execute("BEGIN")
            try:
                if rows:
                    self.db.executemany(f"INSERT INTO sessions ({', '.join(COLUMN_NAMES)}) VALUES ({marks})", rows)
                for table, table_rows in aggregates.items():
                    if table_rows:
                        self.db.executemany(insert_sql(table), table_rows)
                if span > self.max_span_ns:
                    self.db.execute(
                        "INSERT INTO meta (key, value) VALUES ('max_span_ns', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                        (span,),
                    )
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            self.max_span_ns = max(self.max_span_ns, span)
        return len(rows)

    def minutes(self, from_ns: int, to_ns: int) -> list[MinuteRecord]:
        """The per-minute aggregates overlapping [from_ns, to_ns), as snapshots."""
        with _sqlite_errors(self.path):
            names = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not set(AGGREGATES) <= names:
                raise SessionStoreError(f"sessions store {self.path}: no per-minute aggregates (an older store)")
            return list(read_minutes(self.db, from_ns, to_ns))

    def count(self) -> int:
        with _sqlite_errors(self.path):
            return int(self.db.execute("SELECT count(*) FROM sessions").fetchone()[0])

    def used_bytes(self) -> int:
        """Bytes of the pages in use (the file less its free pages)."""
        with _sqlite_errors(self.path):
            pages = self.db.execute("PRAGMA page_count").fetchone()[0]
            free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
            size = self.db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def retain(
        self,
        keep: Retention,
        now_ns: int | None = None,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    ) -> int:
        """Delete the oldest records by age, size and free space; returns how many were deleted."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        deleted = 0
        with _sqlite_errors(self.path):
            if keep.keep_age_ns:
                cutoff = now_ns - keep.keep_age_ns
                cur = self.db.execute("DELETE FROM sessions WHERE start_ns < ? AND end_ns < ?", (cutoff, cutoff))
                deleted += cur.rowcount
                self._trim_minutes(cutoff - MINUTE_NS)
            for _ in range(64):  # each pass deletes at least 1/16 of what is left: bounded
                short = self._short(keep, statvfs)
                if short <= 0:
                    break
                total = self.count()
                if total == 0:
                    if not self._trim_minutes(None):
                        break
                    self.db.execute("PRAGMA incremental_vacuum")
                    continue
                used = max(self.used_bytes(), 1)
                n = max(total // 16, int(total * short / used) + 1, 1)
                cur = self.db.execute(
                    "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions ORDER BY start_ns LIMIT ?)", (n,)
                )
                deleted += cur.rowcount
                oldest = self.db.execute("SELECT min(start_ns) FROM sessions").fetchone()[0]
                self._trim_minutes(oldest - MINUTE_NS if oldest is not None else None)
                self.db.execute("PRAGMA incremental_vacuum")
            if deleted:
                self.db.execute("PRAGMA incremental_vacuum")
        return deleted

    def _trim_minutes(self, before_ns: int | None) -> int:
        """Delete the per-minute aggregates of minutes that start before before_ns (None: the oldest 1/16 of
        the minutes kept); how many minutes."""
        if before_ns is None:
            n = self.db.execute("SELECT count(*) FROM minute_totals").fetchone()[0]
            row = self.db.execute(
                "SELECT minute_ns FROM minute_totals ORDER BY minute_ns LIMIT 1 OFFSET ?", (max(n // 16, 1) - 1,)
            ).fetchone()
            if row is None:
                return 0
            before_ns = int(row[0]) + 1
        gone = 0
        for table in AGGREGATES:
            cur = self.db.execute(f"DELETE FROM {table} WHERE minute_ns < ?", (before_ns,))
            gone = cur.rowcount if table == "minute_totals" else gone
        return gone

    def _short(self, keep: Retention, statvfs: Callable[[str], os.statvfs_result]) -> int:
        """Bytes over the size limit or missing to the free space asked for (0 or less: none)."""
        short = 0
        if keep.max_bytes:
            short = self.used_bytes() - keep.max_bytes
        if keep.min_free_ratio or keep.min_free_bytes:
            st = statvfs(str(self.path.parent))
            want = max(keep.min_free_bytes, int(keep.min_free_ratio * st.f_blocks * st.f_frsize))
            short = max(short, want - st.f_bavail * st.f_frsize)
        return short

    # --- reading

    def query(self, q: Query) -> list[dict[str, Any]]:
        """The records q asks for, as dicts (addresses as text, times in ns), sorted and cut to q.top."""
        where, params = q.sql(self.max_span_ns)
        limit = f" LIMIT {int(q.top)}" if q.top > 0 else ""
        order = order_by(q.sort, q.reverse)
        sql = f"SELECT id, {self.select} FROM sessions WHERE {where} ORDER BY {order}{limit}"
        with _sqlite_errors(self.path):
            cur = self.db.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [record(dict(zip(names, r, strict=True))) for r in cur]

    def newest_start(self) -> int | None:
        """The start of the newest record (None: empty), from the start index."""
        with _sqlite_errors(self.path):
            row = self.db.execute("SELECT max(start_ns) FROM sessions").fetchone()
        return None if row[0] is None else int(row[0])

    def matching(self, q: Query) -> int:
        """How many records q matches (before --top)."""
        where, params = q.sql(self.max_span_ns)
        with _sqlite_errors(self.path):
            return int(self.db.execute(f"SELECT count(*) FROM sessions WHERE {where}", params).fetchone()[0])

    def session(self, session_id: int) -> dict[str, Any] | None:
        """One record by its id."""
        with _sqlite_errors(self.path):
            cur = self.db.execute(f"SELECT id, {self.select} FROM sessions WHERE id = ?", (session_id,))
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        return None if row is None else record(dict(zip(names, row, strict=True)))

    def summary(self, q: Query, top: int = 10) -> dict[str, Any]:
        """Totals and the top hosts, server ports, services and processes (by bytes) of what q matches."""
        where, params = q.sql(self.max_span_ns)
        limit = top if top > 0 else -1
        both = "src_bytes + dst_bytes"
        with _sqlite_errors(self.path):
            n, nbytes, packets, first, last = self.db.execute(
                f"SELECT count(*), sum({both}), sum(src_packets + dst_packets), min(start_ns), max(end_ns) "
                f"FROM sessions WHERE {where}",
                params,
            ).fetchone()
            hosts = self.db.execute(
                f"SELECT addr, sum(b), sum(p), count(*) FROM ("
                f"SELECT src AS addr, {both} AS b, src_packets + dst_packets AS p FROM sessions WHERE {where} "
                f"UNION ALL SELECT dst, {both}, src_packets + dst_packets FROM sessions WHERE {where}"
                f") GROUP BY addr ORDER BY 2 DESC, 1 LIMIT ?",
                (*params, *params, limit),
            ).fetchall()
            ports = self.db.execute(
                f"SELECT proto, dport, sum({both}), sum(src_packets + dst_packets), count(*) FROM sessions "
                f"WHERE {where} GROUP BY proto, dport ORDER BY 3 DESC, 1, 2",
                params,
            ).fetchall()
            procs = self.db.execute(
                f"SELECT process, sum({both}), sum(src_packets + dst_packets), count(*) FROM sessions "
                f"WHERE {where} AND process IS NOT NULL GROUP BY process ORDER BY 2 DESC, 1 LIMIT ?",
                (*params, limit),
            ).fetchall()
        services: dict[str, list[int]] = {}
        for proto, port, b, p, c in ports:
            name = service_name(proto, port) or f"{proto_name(proto)}/{port}"
            acc = services.setdefault(name, [0, 0, 0])
            acc[0] += b
            acc[1] += p
            acc[2] += c
        top_services = sorted(services.items(), key=lambda kv: (-kv[1][0], kv[0]))

        def cut(rows: list[Any]) -> list[Any]:
            return rows if top <= 0 else rows[:top]

        return {
            "sessions": n,
            "bytes": nbytes or 0,
            "packets": packets or 0,
            "first": first,
            "last": last,
            "hosts": [{"addr": blob_text(a), "bytes": b, "packets": p, "sessions": c} for a, b, p, c in hosts],
            "ports": [
                {
                    "proto": proto_name(pr),
                    "port": po,
                    "service": service_name(pr, po),
                    "bytes": b,
                    "packets": p,
                    "sessions": c,
                }
                for pr, po, b, p, c in cut(ports)
            ],
            "services": [
                {"service": s, "bytes": v[0], "packets": v[1], "sessions": v[2]} for s, v in cut(top_services)
            ],
            "processes": [{"process": s, "bytes": b, "packets": p, "sessions": c} for s, b, p, c in procs],
        }


# --- addresses


def address_blob(text: str) -> bytes:
    """An address as the store keeps it: 4 bytes for IPv4, 16 for IPv6."""
    try:
        return ipaddress.ip_address(text.strip().split("%", 1)[0]).packed
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None


@lru_cache(maxsize=1 << 16)
def blob_text(blob: bytes) -> str:
    """The text of a stored address."""
    return str(ipaddress.ip_address(bytes(blob)))


def network_range(text: str) -> tuple[bytes, bytes]:
    """An address or a network (10.0.0.0/24, 2001:db8::/32) as the lowest and highest stored address in it."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address or network") from None
    return net.network_address.packed, net.broadcast_address.packed


def record(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row (changed in place) for people and scripts: addresses as text, times in ns, the reason and
    protocol named."""
    row["src"], row["dst"] = blob_text(row["src"]), blob_text(row["dst"])
    row["start"], row["end"] = row["start_ns"], row["end_ns"]
    row["proto"] = proto_name(row["proto"])
    row["reason"] = REASON_NAMES.get(row["reason"], str(row["reason"]))
    return row


# --- queries and --where


@dataclass(frozen=True)
class Field:
    """A field --where may name: its SQL expression over the table's columns and what it is."""

    sql: str
    doc: str


WHERE_FIELDS: dict[str, Field] = {
    "bytes": Field("(src_bytes + dst_bytes)", "bytes both ways"),
    "packets": Field("(src_packets + dst_packets)", "packets both ways"),
    "src_bytes": Field("src_bytes", "bytes client → server"),
    "dst_bytes": Field("dst_bytes", "bytes server → client"),
    "src_packets": Field("src_packets", "packets client → server"),
    "dst_packets": Field("dst_packets", "packets server → client"),
    "duration_s": Field("((end_ns - start_ns) / 1e9)", "last packet − first packet, seconds"),
    "retrans": Field("retrans", "TCP retransmissions"),
    "ooo": Field("ooo", "TCP out-of-order segments"),
    "dupacks": Field("dupacks", "TCP duplicate ACKs"),
    "zero_windows": Field("zero_windows", "TCP zero windows"),
    "resets": Field("resets", "TCP resets"),
    "rtt_ms": Field("(rtt_us / 1000.0)", "TCP handshake RTT, ms"),
    "exchanges": Field("exchanges", "DNS/HTTP/MySQL exchanges"),
    "latency_ms": Field("(latency_avg_us / 1000.0)", "mean application latency, ms"),
    "latency_max_ms": Field("(latency_max_us / 1000.0)", "slowest application exchange, ms"),
    "sport": Field("sport", "client port"),
    "dport": Field("dport", "server port"),
    "pid": Field("pid", "local process id"),
}
WHERE_OPS = {">": ">", ">=": ">=", "<": "<", "<=": "<=", "=": "=", "==": "=", "!=": "!="}
_CLAUSE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|=|<|>)\s*(\S+)\s*")
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_AND = re.compile(r"\band\b", re.IGNORECASE)


def compile_where(text: str) -> tuple[str, list[float | int]]:
    """`FIELD OP NUMBER [and ...]` → (SQL with ? placeholders, parameters); WhereError naming what is wrong."""
    if not text.strip():
        return "1", []
    parts, params = [], []
    fields = ", ".join(WHERE_FIELDS)
    for clause in _AND.split(text.strip()):
        if re.search(r"(^|\s)or(\s|$)", clause, re.IGNORECASE):
            raise WhereError(f"--where: only 'and' joins clauses, in {clause.strip()!r}")
        m = _CLAUSE.fullmatch(clause)
        if m is None:
            if not clause.strip():
                raise WhereError("--where: an empty clause (a stray 'and'?)")
            raise WhereError(f"--where: {clause.strip()!r} is not FIELD OP NUMBER (OP: > >= < <= = !=)")
        name, op, value = m.groups()
        field_ = WHERE_FIELDS.get(name.lower())
        if field_ is None:
            raise WhereError(f"--where: unknown field {name!r} (fields: {fields})")
        if _NUMBER.fullmatch(value) is None:
            raise WhereError(f"--where: {value!r} after {name} {op} is not a number")
        number: float | int = float(value) if any(c in value for c in ".eE") else int(value)
        parts.append(f"{field_.sql} {WHERE_OPS[op]} ?")
        params.append(number)
    return " AND ".join(parts), params


SORTS = {
    "start": "start_ns, id",
    "bytes": "(src_bytes + dst_bytes) DESC, start_ns, id",
    "packets": "(src_packets + dst_packets) DESC, start_ns, id",
    "retrans": "retrans DESC, start_ns, id",
    "latency": "latency_max_us DESC, start_ns, id",
    "duration": "(end_ns - start_ns) DESC, start_ns, id",
}


def order_by(sort: str, reverse: bool = False) -> str:
    """The ORDER BY of a sort, each term's direction flipped when reverse."""
    if not reverse:
        return SORTS[sort]
    terms = []
    for term in SORTS[sort].split(", "):
        terms.append(term.removesuffix(" DESC") if term.endswith(" DESC") else f"{term} DESC")
    return ", ".join(terms)


@dataclass
class Query:
    """What `retrotap sessions` asks for. Records overlapping [from_ns, to_ns) match the time window."""

    from_ns: int = 0
    to_ns: int = END_OF_TIME
    host: str | None = None  # an address or a network
    port: int | None = None  # either side
    proto: str | None = None  # tcp, udp, icmp, ... or a number
    process: str | None = None  # a substring of the process name, any case
    where: str = ""
    sort: str = "start"
    top: int = DEFAULT_TOP
    reverse: bool = False  # the sort's order turned around (start: newest first)

    def check(self) -> None:
        """QueryError (one line) for what cannot be asked."""
        if self.sort not in SORTS:
            raise QueryError(f"--sort {self.sort}: one of {', '.join(SORTS)}")
        if self.port is not None and not 0 <= self.port <= 65535:
            raise QueryError(f"--port {self.port}: a port is 0 to 65535")
        if self.top < 0:
            raise QueryError("--top: 0 (all) or more")
        if self.host is not None:
            try:
                network_range(self.host)
            except ValueError as e:
                raise QueryError(f"--host: {e}") from None
        self.sql(0)

    def proto_number(self) -> int | None:
        if self.proto is None:
            return None
        p = self.proto.strip().lower()
        if p in PROTO_NUMBERS:
            return PROTO_NUMBERS[p]
        if p.isdigit() and int(p) < 256:
            return int(p)
        raise QueryError(f"--proto {self.proto}: one of {', '.join(PROTO_NAMES.values())} or a number")

    def sql(self, max_span_ns: int) -> tuple[str, list[Any]]:
        """The WHERE clause (with ? placeholders) and its parameters."""
        parts: list[str] = []
        params: list[Any] = []
        if self.from_ns > 0 or self.to_ns < END_OF_TIME:
            # A record overlaps the window when it starts before its end and ends after its start; it
            # starts at most max_span before its end, which keeps the test on the start index.
            parts.append("start_ns < ? AND start_ns >= ? AND end_ns >= ?")
            params += [self.to_ns, max(self.from_ns - max_span_ns, 0), self.from_ns]
        if self.host is not None:
            lo, hi = network_range(self.host)
            if lo == hi:
                parts.append("(src = ? OR dst = ?)")
                params += [lo, lo]
            else:
                parts.append("family = ? AND ((src >= ? AND src <= ?) OR (dst >= ? AND dst <= ?))")
                params += [4 if len(lo) == 4 else 6, lo, hi, lo, hi]
        if self.port is not None:
            parts.append("(sport = ? OR dport = ?)")
            params += [self.port, self.port]
        proto = self.proto_number()
        if proto is not None:
            parts.append("proto = ?")
            params.append(proto)
        if self.process:
            parts.append("process LIKE ? ESCAPE '\\'")
            word = self.process.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params.append(f"%{word}%")
        where, where_params = compile_where(self.where)
        if where != "1":
            parts.append(where)
            params += where_params
        return " AND ".join(parts) or "1", params


_FILTER_CLAUSE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|=|<|>)\s*(\S+)")
_FILTER_KEYWORDS = ("host", "port", "proto", "process")


def filter_query(text: str, base: Query | None = None) -> Query:
    """The dashboard's `/` text as `retrotap sessions` options, read into the same Query and checked by the
    same code (one line naming what is wrong): `FIELD OP NUMBER` clauses are --where, a protocol name
    --proto, a number --port, an address or network --host, any other word --process; `host X`, `port N`,
    `proto P`, `process NAME` say it outright."""
    q = replace(base) if base is not None else Query()
    clauses = [m.group(0) for m in _FILTER_CLAUSE.finditer(text)]
    words = _FILTER_CLAUSE.sub(" ", text).split()
    given: dict[str, str] = {}
    i = 0
    while i < len(words):
        word, low = words[i], words[i].lower()
        i += 1
        if low == "and":
            continue
        if low in _FILTER_KEYWORDS and i < len(words):
            kind, value = low, words[i]
            i += 1
        elif low in PROTO_NUMBERS:
            kind, value = "proto", low
        elif word.isdigit():
            kind, value = "port", word
        else:
            try:
                network_range(word)
                kind, value = "host", word
            except ValueError:
                kind, value = "process", word
        if kind in given:
            raise QueryError(f"/: one {kind} at a time ({given[kind]!r} and {value!r})")
        given[kind] = value
    if "port" in given:
        if not given["port"].isdigit():
            raise QueryError(f"/: port {given['port']!r} is not a number")
        q.port = int(given["port"])
    q.host = given.get("host", q.host)
    q.proto = given.get("proto", q.proto)
    q.process = given.get("process", q.process)
    if clauses:
        q.where = " and ".join(([q.where] if q.where else []) + clauses)
    try:
        q.check()
    except (QueryError, WhereError) as e:  # the same check as the command line's, its words for the `/` prompt
        raise type(e)(f"/: {str(e).removeprefix('--')}") from None
    return q


_WINDOW_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_of(text: str, now_ns: int, default_s: float = 900.0) -> tuple[int, int]:
    """A time range as the History view's `t` takes it: what --from/--to take (`FROM [TO]`), a duration
    back from now (`15m`, `2h`, `1d`), `all`; empty: the last default_s. TimeSpecError (one line)."""
    words = text.split()
    if not words:
        return now_ns - int(default_s * 1e9), now_ns + 1
    if len(words) == 1 and words[0].lower() == "all":
        return 0, END_OF_TIME
    if len(words) == 1 and (m := _WINDOW_DURATION.fullmatch(words[0].lower())):
        return now_ns - int(float(m.group(1)) * _UNITS[m.group(2)] * 1e9), now_ns + 1
    if len(words) > 2:
        raise TimeSpecError(f"time range {text.strip()!r}: FROM [TO], a duration (15m) or all")
    now = datetime.fromtimestamp(now_ns / 1e9).astimezone()
    return time_window(words[0], words[1] if len(words) > 1 else None, now)


def rows_of(records: Iterable[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Dicts with every COLUMN_NAMES key as insert() rows."""
    return [tuple(r[c] for c in COLUMN_NAMES) for r in records]


def session_export(directory: str | Path, session_id: int, output: str) -> ExportOptions:
    """What `retrotap export DIR --session ID` exports: that session's 5-tuple over its time span, from the
    recording in DIR (whose store holds the session); SessionStoreError when the session is not there."""
    with SessionStore(directory, writable=False) as store:
        rec = store.session(session_id)
        path = store.path
    if rec is None:
        raise SessionStoreError(f"sessions store {path}: no session {session_id}")
    proto = PROTO_NUMBERS.get(rec["proto"]) or int(rec["proto"])
    a, b = address_key(rec["src"]), address_key(rec["dst"])
    ports = proto in PORT_PROTOS
    return ExportOptions(
        directory=str(path.parent),
        output=output,
        from_ns=rec["start_ns"],
        to_ns=rec["end_ns"] + 1,
        host=a,
        port=rec["dport"] if ports and rec["dport"] else None,
        flow=FlowMatch(proto, a, rec["sport"], b, rec["dport"]),
    )


def session_owners(directory: str | Path, from_ns: int, to_ns: int) -> PacketOwners | None:
    """The local process the store in `directory` names for each flow of a time window (a flow's newest
    record wins), for a pcapng export's packet comments; None when the directory has no store."""
    if not store_path(directory).exists():
        return None
    with SessionStore(directory, writable=False) as store, _sqlite_errors(store.path):
        rows = store.db.execute(
            "SELECT proto, src, sport, dst, dport, pid, process FROM sessions "
            "WHERE pid IS NOT NULL AND start_ns < ? AND end_ns >= ? ORDER BY start_ns DESC",
            (to_ns, from_ns),
        ).fetchall()

    def keys(at: int) -> np.ndarray:
        blobs = b"".join(V4_MAPPED + r[at] if len(r[at]) == 4 else r[at] for r in rows)
        return np.frombuffer(blobs, ">u8").astype(np.uint64).reshape(-1, 2)

    def column(at: int) -> np.ndarray:
        return np.array([r[at] for r in rows], np.int64)

    if not rows:
        return PacketOwners(np.zeros((0, FLOW_KEY.itemsize), np.uint8), np.zeros(0, np.int64), lambda i: "")
    ends = flow_ends(keys(1), keys(3), column(2), column(4), column(0))
    return PacketOwners(ends.keys(), column(5), lambda i: rows[i][6] or "?")
