"""Per-minute aggregates of every view, kept in the session store beside the sessions, and read back as
snapshots (`retrotap stats DIR --from T1 --to T2`: the records a live run would have printed).

The session writer's tracker thread hands each snapshot to a `MinuteAggregator`; when the snapshots reach
a new minute (wall clock live, packet time for a file), the minute before is closed: what grew between the
last snapshot before it and its last snapshot, per table. Kept per minute: the totals, each interface's
captured packets and bytes and ring counters, the `AGGREGATE_TOP` host pairs, hosts and ports that sent
the most bytes in the minute (packets and bytes each way, and the 2/10/40 s averages and the peak second
as at the minute's end), protocol/ethertype/VLAN tallies, the processes and the latency services. The
layout is declared once, as data (`AGGREGATES`); the rows go to the store in the writer's batches.

Reading turns a minute's rows back into a `Snapshot` (and the empty one before it) so the record builders
of output/report.py make the same record as a live `stats`, only with the minute's counts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from capture_backend.contract import (
    EMPTY_LATENCY,
    EMPTY_UNKNOWN,
    FLOW_KEY,
    HOST_KEY,
    LATENCY_TABLE_COLUMNS,
    PAIR_KEY,
    PORT_KEY,
    SERVICE_KEY,
    IfaceStatus,
    LatencySnapshot,
    ProcessTable,
    ProcessTotals,
    Snapshot,
    TableSnapshot,
    empty_table,
    table_growth,
)

NS = 1_000_000_000
MINUTE_NS = 60 * NS
AGGREGATE_TOP = 25  # host pairs, hosts, ports, processes and latency services kept per minute
WINDOWS = ("avg2", "avg10", "avg40", "peak")


class Field(NamedTuple):
    """One column of an aggregate table: name, SQLite type, what it holds."""

    name: str
    type: str
    doc: str


_MINUTE = Field("minute_ns", "INTEGER NOT NULL", "the minute's start, ns since the epoch")
_TWO_WAY = tuple(
    Field(f"{what}_{d}", "INTEGER NOT NULL", f"{what} grown in the minute, {way}")
    for what in ("packets", "bytes")
    for d, way in (("0", "a → b (host: sent; port: to the port)"), ("1", "b → a (host: received; port: from it)"))
)
# The layout, once: table → its columns (every table is indexed by minute_ns).
AGGREGATES: dict[str, tuple[Field, ...]] = {
    "minute_totals": (
        _MINUTE,
        Field("live", "INTEGER NOT NULL", "1: live capture, 0: a file"),
        Field("filter", "TEXT NOT NULL", "the capture filter in force"),
        Field("from_ns", "INTEGER NOT NULL", "the counts are of what came after this (the snapshot before)"),
        Field("to_ns", "INTEGER NOT NULL", "and up to this (the minute's last snapshot)"),
        Field("packets", "INTEGER NOT NULL", "packets in the minute"),
        Field("bytes", "INTEGER NOT NULL", "bytes in the minute"),
        Field("malformed", "INTEGER NOT NULL", "malformed frames in the minute"),
        Field("first_ns", "INTEGER NOT NULL", "the run's first packet"),
        Field("last_ns", "INTEGER NOT NULL", "the last packet by the minute's end"),
        Field("flows_active", "INTEGER NOT NULL", "flows in the table at the minute's end"),
        Field("flows_evicted", "INTEGER NOT NULL", "flows evicted in the minute"),
    ),
    "minute_interfaces": (
        _MINUTE,
        Field("name", "TEXT NOT NULL", "the interface (NETNS:IFACE for another namespace's)"),
        Field("state", "TEXT NOT NULL", "up, down, gone or file at the minute's end"),
        Field("error", "TEXT NOT NULL", "its error then"),
        Field("packets", "INTEGER NOT NULL", "packets captured in the minute"),
        Field("bytes", "INTEGER NOT NULL", "bytes captured in the minute"),
        Field("received", "INTEGER NOT NULL", "packets its ring received in the minute"),
        Field("kernel_drops", "INTEGER NOT NULL", "ring drops in the minute"),
        Field("freezes", "INTEGER NOT NULL", "ring queue freezes in the minute"),
    ),
    "minute_traffic": (
        _MINUTE,
        Field("kind", "TEXT NOT NULL", "pair, host or port"),
        Field("key", "BLOB NOT NULL", "the table's key (PAIR_KEY, HOST_KEY, PORT_KEY bytes)"),
        *_TWO_WAY,
        Field("first_ns", "INTEGER NOT NULL", "the row's first packet"),
        Field("last_ns", "INTEGER NOT NULL", "the row's last packet by the minute's end"),
        *(
            Field(f"{w}_{d}", "REAL", f"{w} bytes/s {way} at the minute's end (pairs and hosts)")
            for w in WINDOWS
            for d, way in (("0", "a → b"), ("1", "b → a"))
        ),
    ),
    "minute_tallies": (
        _MINUTE,
        Field("kind", "TEXT NOT NULL", "protocol, ethertype or vlan"),
        Field("number", "INTEGER NOT NULL", "the protocol number, ethertype or VLAN id"),
        Field("packets", "INTEGER NOT NULL", "packets in the minute"),
        Field("bytes", "INTEGER NOT NULL", "bytes in the minute"),
    ),
    "minute_processes": (
        _MINUTE,
        Field("pid", "INTEGER", "the local process (NULL: traffic no local socket explains)"),
        Field("name", "TEXT NOT NULL", "its name"),
        Field("user", "TEXT NOT NULL", "its user"),
        Field("rx_bytes", "INTEGER NOT NULL", "received in the minute"),
        Field("tx_bytes", "INTEGER NOT NULL", "sent in the minute"),
        Field("rx_packets", "INTEGER NOT NULL", "received in the minute"),
        Field("tx_packets", "INTEGER NOT NULL", "sent in the minute"),
        Field("exited", "INTEGER NOT NULL", "1 when it had exited by the minute's end"),
    ),
    "minute_latency": (
        _MINUTE,
        Field("key", "BLOB NOT NULL", "the service (SERVICE_KEY bytes: protocol, port, kind)"),
        Field("count", "INTEGER NOT NULL", "exchanges in the minute"),
        Field("sum", "INTEGER NOT NULL", "their latencies added, ns"),
        Field("max", "INTEGER NOT NULL", "the service's slowest so far, ns"),
        Field("p50", "INTEGER NOT NULL", "p50 of its recent exchanges at the minute's end, ns"),
        Field("p95", "INTEGER NOT NULL", "p95, ns"),
    ),
}
TRAFFIC_KINDS = {"pair": ("pairs", PAIR_KEY), "host": ("hosts", HOST_KEY), "port": ("ports", PORT_KEY)}
TALLY_KINDS = ("protocols", "ethertypes", "vlans")
Batch = dict[str, list[tuple[Any, ...]]]  # table → rows (in AGGREGATES order)


def aggregate_schema() -> list[str]:
    """The CREATE statements of the aggregate tables and their minute indexes."""
    out = []
    for table, fields in AGGREGATES.items():
        cols = ", ".join(f"{f.name} {f.type}" for f in fields)
        out.append(f"CREATE TABLE IF NOT EXISTS {table} ({cols});")
        out.append(f"CREATE INDEX IF NOT EXISTS {table}_minute ON {table} (minute_ns);")
    return out


def insert_sql(table: str) -> str:
    names = [f.name for f in AGGREGATES[table]]
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


def data_ns(snap: Snapshot) -> int:
    """When a snapshot's figures are of: the wall clock live, the newest packet for a file (ns)."""
    return int(snap.time * NS) if snap.live else snap.last_ns


def minute_of(snap: Snapshot) -> int:
    return data_ns(snap) // MINUTE_NS * MINUTE_NS


# --- from snapshots to rows


def _grown(now: int, before: int) -> int:
    return now - before if now >= before else now  # a counter that went back: counted anew


def _traffic_rows(minute: int, kind: str, t: TableSnapshot, before: TableSnapshot | None, top: int) -> list[tuple]:
    if len(t) == 0:
        return []
    if before is None or len(before) == 0:
        pk, by = t.cols["packets"], t.cols["bytes"]
    else:
        by, match = table_growth(t, before, "bytes")
        pk, _ = table_growth(t, before, "packets", match=match)
    total = by.sum(axis=1)
    moved = np.flatnonzero((total > 0) | (pk.sum(axis=1) > 0))
    order = moved[np.lexsort((moved, -total[moved]))][:top]
    windows = [w for w in WINDOWS if w in t.cols]
    rows = []
    for i in order.tolist():
        rates: list[float | None] = [None] * 8
        for n, w in enumerate(WINDOWS):
            if w in windows:
                rates[2 * n], rates[2 * n + 1] = (float(v) for v in t.cols[w][i])
        rows.append(
            (
                minute,
                kind,
                t.key_bytes(i),
                int(pk[i, 0]),
                int(pk[i, 1]),
                int(by[i, 0]),
                int(by[i, 1]),
                int(t.cols["first"][i]),
                int(t.cols["last"][i]),
                *rates,
            )
        )
    return rows


def _process_rows(minute: int, procs: ProcessTable, before: ProcessTable | None, top: int) -> list[tuple]:
    old = {p.pid: p for p in before.processes} if before is not None else {}
    if before is not None:
        old[None] = before.unknown
    moved: list[tuple[int, ProcessTotals, list[int]]] = []
    for p in (*procs.processes, procs.unknown):
        o = old.get(p.pid)
        grown = [
            _grown(getattr(p, f), getattr(o, f) if o is not None else 0)
            for f in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")
        ]
        if any(grown):
            moved.append((grown[0] + grown[1], p, grown))
    moved.sort(key=lambda m: (-m[0], m[1].pid is None, m[1].pid or 0))
    return [(minute, p.pid, p.name, p.user, *grown, int(p.exited)) for _, p, grown in moved[:top]]


def _latency_rows(minute: int, lat: LatencySnapshot, before: LatencySnapshot | None, top: int) -> list[tuple]:
    t = lat.services
    if len(t) == 0:
        return []
    if before is None or len(before.services) == 0:
        count, total = t.cols["count"], t.cols["sum"]
    else:
        old = before.services
        match = np.asarray(table_growth(t, old, "count")[1])
        found = match >= 0
        count = t.cols["count"] - np.where(found, old.cols["count"][np.maximum(match, 0)], 0)
        total = t.cols["sum"] - np.where(found, old.cols["sum"][np.maximum(match, 0)], 0)
    moved = np.flatnonzero(count > 0)
    order = moved[np.lexsort((moved, -count[moved]))][:top]
    return [
        (
            minute,
            t.key_bytes(i),
            int(count[i]),
            int(total[i]),
            int(t.cols["max"][i]),
            int(t.cols["p50"][i]),
            int(t.cols["p95"][i]),
        )
        for i in order.tolist()
    ]


def minute_rows(
    minute: int,
    before: Snapshot | None,
    snap: Snapshot,
    procs_before: ProcessTable | None = None,
    procs: ProcessTable | None = None,
    top: int = AGGREGATE_TOP,
) -> Batch:
    """The rows of one minute: what grew from `before` (None: the run's start) to `snap`."""

    def grown(name: str) -> int:
        return _grown(getattr(snap, name), getattr(before, name) if before is not None else 0)

    old_ifaces = {i.name: i for i in before.interfaces} if before is not None else {}
    out: Batch = {
        "minute_totals": [
            (
                minute,
                int(snap.live),
                snap.filter,
                data_ns(before) if before is not None else int(snap.started * NS),
                data_ns(snap),
                grown("packets"),
                grown("bytes"),
                grown("malformed"),
                snap.first_ns,
                snap.last_ns,
                len(snap.flows),
                _grown(snap.flows.evicted, before.flows.evicted if before is not None else 0),
            )
        ],
        "minute_interfaces": [],
        "minute_traffic": [],
        "minute_tallies": [],
        "minute_processes": [],
        "minute_latency": _latency_rows(minute, snap.latency, before.latency if before else None, top),
    }
    for i in snap.interfaces:
        o = old_ifaces.get(i.name)
        out["minute_interfaces"].append(
            (
                minute,
                i.name,
                i.state,
                i.error,
                *(
                    _grown(getattr(i, f), getattr(o, f) if o is not None else 0)
                    for f in ("packets", "bytes", "received", "kernel_drops", "freezes")
                ),
            )
        )
    for kind, (table, _) in TRAFFIC_KINDS.items():
        old = getattr(before, table) if before is not None else None
        out["minute_traffic"] += _traffic_rows(minute, kind, getattr(snap, table), old, top)
    for tally in TALLY_KINDS:
        now, then = getattr(snap, tally), getattr(before, tally) if before is not None else {}
        for number, (packets, nbytes) in sorted(now.items()):
            p0, b0 = then.get(number, (0, 0))
            if packets != p0 or nbytes != b0:
                out["minute_tallies"].append((minute, tally[:-1], number, _grown(packets, p0), _grown(nbytes, b0)))
    if procs is not None:
        out["minute_processes"] = _process_rows(minute, procs, procs_before, top)
    return out


def merge(into: Batch, more: Batch) -> Batch:
    for table, rows in more.items():
        into.setdefault(table, []).extend(rows)
    return into


@dataclass
class MinuteAggregator:
    """Follows a run's snapshots (in order) and closes each minute once the snapshots have left it."""

    top: int = AGGREGATE_TOP
    minute: int | None = None  # the minute being gathered (ns)
    before: Snapshot | None = None  # the last snapshot before it (None: the run's start)
    procs_before: ProcessTable | None = None
    last: Snapshot | None = None
    procs: ProcessTable | None = None

    def update(self, snap: Snapshot, procs: ProcessTable | None = None, final: bool = False) -> Batch:
        """The rows of the minutes this snapshot closes (final: the current one too)."""
        out: Batch = {}
        last = self.last
        if last is not None and (snap.started != last.started or snap.seq < last.seq):  # a new run
            merge(out, self._close())
            self.before = self.procs_before = None
            self.minute = None
        if snap.live or snap.last_ns:  # a file without a packet yet is no minute
            minute = minute_of(snap)
            if self.minute is not None and minute > self.minute:
                merge(out, self._close())
            if self.minute is None or minute > self.minute:
                self.minute = minute
            self.last, self.procs = snap, procs
        if final:
            merge(out, self._close())
            self.minute = None
        return out

    def _close(self) -> Batch:
        if self.minute is None or self.last is None:
            return {}
        rows = minute_rows(self.minute, self.before, self.last, self.procs_before, self.procs, self.top)
        self.before, self.procs_before = self.last, self.procs
        return rows


# --- from rows back to snapshots


@dataclass(frozen=True)
class MinuteRecord:
    """One stored minute as a snapshot (counts of the minute), the empty snapshot of its start, processes."""

    minute_ns: int
    snap: Snapshot
    prev: Snapshot
    processes: ProcessTable | None
    flows_active: int  # flows in the table at the minute's end (the snapshot lists none)


def _select(db: sqlite3.Connection, table: str, lo: int, hi: int) -> dict[int, list[tuple]]:
    names = ", ".join(f.name for f in AGGREGATES[table])
    out: dict[int, list[tuple]] = {}
    sql = f"SELECT {names} FROM {table} WHERE minute_ns >= ? AND minute_ns < ? ORDER BY rowid"
    for row in db.execute(sql, (lo, hi)):
        out.setdefault(int(row[0]), []).append(tuple(row))
    return out


def _frozen(cols: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    return MappingProxyType(dict(cols))


def _traffic_table(rows: list[tuple], kind: str) -> TableSnapshot:
    table, layout = TRAFFIC_KINDS[kind]
    mine = [r for r in rows if r[1] == kind]
    n = len(mine)
    keys = np.frombuffer(b"".join(bytes(r[2]) for r in mine), np.uint8).reshape(n, layout.itemsize)
    cols: dict[str, np.ndarray] = {
        "packets": np.array([r[3:5] for r in mine], np.int64).reshape(n, 2),
        "bytes": np.array([r[5:7] for r in mine], np.int64).reshape(n, 2),
        "first": np.array([r[7] for r in mine], np.int64),
        "last": np.array([r[8] for r in mine], np.int64),
    }
    if kind != "port":
        for k, w in enumerate(WINDOWS):
            values = [(r[9 + 2 * k], r[10 + 2 * k]) for r in mine]
            cols[w] = np.array([[v if v is not None else np.nan for v in pair] for pair in values], np.float64)
            cols[w] = cols[w].reshape(n, 2)
    return TableSnapshot(keys, _frozen(cols), layout=layout)


def _latency(rows: list[tuple]) -> LatencySnapshot:
    n = len(rows)
    if n == 0:
        return EMPTY_LATENCY
    keys = np.frombuffer(b"".join(bytes(r[1]) for r in rows), np.uint8).reshape(n, SERVICE_KEY.itemsize)
    values = {"count": 2, "sum": 3, "max": 4, "p50": 5, "p95": 6}
    cols = {
        c: np.array([r[values[c]] if c in values else 0 for r in rows], np.int64) for c in LATENCY_TABLE_COLUMNS
    }
    services = TableSnapshot(keys, _frozen(cols), layout=SERVICE_KEY)
    return LatencySnapshot(
        servers=EMPTY_LATENCY.servers,
        services=services,
        slowest=(),
        exchanges=int(cols["count"].sum()),
        unanswered=0,
    )


def _processes(rows: list[tuple], minute: int) -> ProcessTable:
    procs, unknown = [], EMPTY_UNKNOWN
    for _, pid, name, user, rx_b, tx_b, rx_p, tx_p, exited in rows:
        p = ProcessTotals(pid, name, user, rx_b, tx_b, rx_p, tx_p, bool(exited))
        if pid is None:
            unknown = p
        else:
            procs.append(p)
    return ProcessTable(seq=1, time=(minute + MINUTE_NS) / NS, processes=tuple(procs), unknown=unknown)


_EMPTY_FLOWS = empty_table(
    FLOW_KEY,
    {"packets": np.int64, "bytes": np.int64, "first": np.int64, "last": np.int64, "origin": np.uint8},
)


def read_minutes(db: sqlite3.Connection, from_ns: int, to_ns: int) -> Iterator[MinuteRecord]:
    """The stored minutes that overlap [from_ns, to_ns), oldest first."""
    lo = from_ns // MINUTE_NS * MINUTE_NS
    tables = {table: _select(db, table, lo, to_ns) for table in AGGREGATES}
    for minute in sorted(tables["minute_totals"]):
        (total,) = tables["minute_totals"][minute][:1]
        _, live, filt, _from, _to, packets, nbytes, malformed, first_ns, _last, active, evicted = total
        traffic = tables["minute_traffic"].get(minute, [])
        tallies: dict[str, dict[int, tuple[int, int]]] = {kind: {} for kind in TALLY_KINDS}
        for _, kind, number, p, b in tables["minute_tallies"].get(minute, []):
            tallies[kind + "s"][int(number)] = (int(p), int(b))
        ifaces = tuple(
            IfaceStatus(name, state, error, p, b, rec, drops, freezes, None)
            for _, name, state, error, p, b, rec, drops, freezes in tables["minute_interfaces"].get(minute, [])
        )
        end = minute + MINUTE_NS
        flows = TableSnapshot(_EMPTY_FLOWS.keys, _EMPTY_FLOWS.cols, int(evicted), FLOW_KEY)
        snap = Snapshot(
            seq=2,
            time=end / NS,
            started=minute / NS,
            now_ns=end,
            live=bool(live),
            filter=filt,
            packets=int(packets),
            bytes=int(nbytes),
            malformed=int(malformed),
            first_ns=int(first_ns),
            last_ns=end,
            ethertypes=MappingProxyType(tallies["ethertypes"]),
            protocols=MappingProxyType(tallies["protocols"]),
            vlans=MappingProxyType(tallies["vlans"]),
            interfaces=ifaces,
            flows=flows,
            pairs=_traffic_table(traffic, "pair"),
            hosts=_traffic_table(traffic, "host"),
            ports=_traffic_table(traffic, "port"),
            capture_cpu=0.0,
            latency=_latency(tables["minute_latency"].get(minute, [])),
        )
        prev = Snapshot(
            seq=1,
            time=minute / NS,
            started=minute / NS,
            now_ns=minute,
            live=bool(live),
            filter=filt,
            packets=0,
            bytes=0,
            malformed=0,
            first_ns=int(first_ns),
            last_ns=minute,
            ethertypes={},
            protocols={},
            vlans={},
            interfaces=(),
            flows=_EMPTY_FLOWS,
            pairs=empty_table(PAIR_KEY, {}),
            hosts=empty_table(HOST_KEY, {}),
            ports=empty_table(PORT_KEY, {}),
            capture_cpu=0.0,
        )
        rows = tables["minute_processes"].get(minute)
        yield MinuteRecord(minute, snap, prev, _processes(rows, minute) if rows else None, int(active))
