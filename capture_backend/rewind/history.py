"""The dashboard's per-second history: once a second, a reduced copy of the published snapshot, for the
last `--history` seconds (15 min) in bounded memory, built on a thread of its own (never the capture thread).

A reduced snapshot is a `Snapshot` like any other, so every view renders it unchanged: each table cut to the
rows a view can show (the top `rows` by total bytes and the top `rows` by bytes in the last second), every
column the snapshot has (the 2/10/40 s averages and the peak are columns already, the 40-second buckets
stay in the capture thread's tables), the interfaces, the latency tables cut to the `rows` busiest, the
slowest exchanges, and the process mapper's totals (the `PROCESS_ROWS` largest). Beside it, `prev` holds
the second before for the same rows (packets and bytes, sharing the keys): the rates the views derive
"since the last refresh" are the rates of that second, also for a row that only just entered the top.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from capture_backend.capture.threads import NamedThread
from capture_backend.contract import (
    EMPTY_UNKNOWN,
    FLOW_KEY,
    PROTO_NUMBERS,
    FlowOwners,
    LatencySnapshot,
    ProcessTable,
    Snapshot,
    TableSnapshot,
    address_bytes,
    match_rows,
    pack_keys,
    table_growth,
)
from capture_backend.rewind.sessions import Query, SessionStore

NS = 1_000_000_000
DEFAULT_HISTORY_S = 900  # --history 15m
HISTORY_ROWS = 50  # per table and ranking (total bytes, bytes in the last second): at most twice this kept
PROCESS_ROWS = 50
RATE_COLUMNS = ("packets", "bytes")  # what `prev` keeps: the views' rates are the growth of these
TABLES = ("flows", "pairs", "hosts", "ports")
SESSION_ROWS = 1000  # session records the rewound Flows view lists at most (the busiest)


def data_time(snap: Snapshot) -> float:
    """The time a snapshot's figures are of: the wall clock when live, the newest packet's time for a file."""
    return snap.time if snap.live else snap.last_ns / NS


@dataclass(frozen=True)
class HistoryEntry:
    """One second of the past: the reduced snapshot, the second before it (same rows), the processes."""

    second: int  # int(data_time(snap))
    snap: Snapshot
    prev: Snapshot | None  # None for the first second of a run
    processes: ProcessTable | None
    processes_before: ProcessTable | None

    @property
    def time(self) -> float:
        return data_time(self.snap)


def _top(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest values (all when there are not more)."""
    if values.size <= n:
        return np.arange(values.size)
    return np.argpartition(-values, n - 1)[:n]


def _frozen(cols: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    for col in cols.values():
        col.flags.writeable = False
    return MappingProxyType(dict(cols))


def reduce_table(
    table: TableSnapshot, before: TableSnapshot | None, rows: int = HISTORY_ROWS
) -> tuple[TableSnapshot, TableSnapshot | None]:
    """The table cut to its top `rows` by total bytes and by bytes grown since `before`, and `before`'s packets
    and bytes for the same rows (0 for rows new since), with the same keys and slots."""
    n = len(table)
    if before is None:
        keep = _top(table.cols["bytes"].sum(axis=1), rows)
        match = None
    else:
        grown, match = table_growth(table, before, "bytes")
        keep = np.union1d(_top(table.cols["bytes"].sum(axis=1), rows), _top(grown.sum(axis=1), rows))
    keep = np.sort(keep) if keep.size < n else np.arange(n)
    keys = table.keys[keep]
    keys.flags.writeable = False
    slots = table.slots[keep] if table.slots is not None and table.slots.size == n else None
    if slots is not None:
        slots.flags.writeable = False
    cut = TableSnapshot(keys, _frozen({k: v[keep] for k, v in table.cols.items()}), table.evicted, table.layout, slots)
    if before is None or match is None:
        return cut, None
    at = match[keep]
    old = {}
    for col in RATE_COLUMNS:
        values = np.zeros_like(table.cols[col][keep])
        found = at >= 0
        values[found] = before.cols[col][at[found]]
        old[col] = values
    return cut, TableSnapshot(keys, _frozen(old), before.evicted, table.layout, slots)


def _reduce_latency(lat: LatencySnapshot, rows: int) -> LatencySnapshot:
    def cut(t: TableSnapshot) -> TableSnapshot:
        if len(t) <= rows:
            return t
        keep = np.sort(_top(t.cols["count"], rows))
        return TableSnapshot(t.keys[keep], _frozen({k: v[keep] for k, v in t.cols.items()}), t.evicted, t.layout)

    return replace(lat, servers=cut(lat.servers), services=cut(lat.services))


def _reduce_processes(table: ProcessTable, flows: TableSnapshot, rows: int) -> ProcessTable:
    """The largest `rows` processes and the owners of the flows kept."""
    procs = sorted(table.processes, key=lambda p: (-(p.rx_bytes + p.tx_bytes), p.pid or 0))[:rows]
    owners: Mapping[bytes, tuple[int, str]]
    if isinstance(table.flow_owners, FlowOwners):
        fo = table.flow_owners
        pos = match_rows(flows, TableSnapshot(fo.flow_keys, {}, layout=FLOW_KEY))
        pos = pos[pos >= 0]
        owners = FlowOwners(fo.flow_keys[pos], fo.pid[pos], fo.name_id[pos], fo.names)
    else:
        owners = {k: o for k in map(bytes, flows.keys) if (o := table.flow_owners.get(k)) is not None}
    return replace(table, processes=tuple(procs), flow_owners=owners)


def _same_run(snap: Snapshot, before: Snapshot | None) -> bool:
    return before is not None and before.started == snap.started and before.seq <= snap.seq


class HistoryRing:
    """The last `seconds` seconds, one reduced snapshot per second (deque: old seconds fall off the front).

    `offer` is called by one thread (HistoryThread); `entries` by any (a copy taken under the lock).
    """

    def __init__(self, seconds: int = DEFAULT_HISTORY_S, rows: int = HISTORY_ROWS) -> None:
        self.seconds = max(1, int(seconds))
        self.rows = rows
        self._entries: deque[HistoryEntry] = deque(maxlen=self.seconds)
        self._lock = threading.Lock()
        self._last: Snapshot | None = None  # the full snapshot the newest entry was made from
        self._last_processes: ProcessTable | None = None
        self.cpu_seconds = 0.0  # spent reducing snapshots
        self.errors = 0
        self.last_error = ""

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> tuple[HistoryEntry, ...]:
        """Every second kept, oldest first."""
        with self._lock:
            return tuple(self._entries)

    def offer(self, snap: Snapshot, processes: ProcessTable | None = None) -> bool:
        """Keep a reduced copy of snap if it is the first one of a newer second than the newest kept."""
        if not snap.live and snap.last_ns == 0:
            return False  # a file without a packet yet
        second = int(data_time(snap))
        last = self._last
        if last is not None and _same_run(snap, last) and second <= int(data_time(last)):
            return False
        started = time.thread_time()
        before = last if _same_run(snap, last) else None
        entry = self.reduce(snap, before, processes, self._last_processes if before is not None else None)
        with self._lock:
            if not self._entries or second > self._entries[-1].second:
                self._entries.append(entry)
            else:  # a new run (a file read again with another filter) whose clock is behind: start over
                self._entries.clear()
                self._entries.append(entry)
        self._last, self._last_processes = snap, processes
        self.cpu_seconds += time.thread_time() - started
        return True

    def reduce(
        self,
        snap: Snapshot,
        before: Snapshot | None,
        processes: ProcessTable | None = None,
        processes_before: ProcessTable | None = None,
    ) -> HistoryEntry:
        """The entry of snap (before: the full snapshot one kept second earlier, for the rates)."""
        cut: dict[str, TableSnapshot] = {}
        old: dict[str, TableSnapshot] = {}
        for name in TABLES:
            table, prev_table = reduce_table(getattr(snap, name), getattr(before, name, None), self.rows)
            cut[name] = table
            if prev_table is not None:
                old[name] = prev_table
        small = replace(
            snap,
            flows=cut["flows"],
            pairs=cut["pairs"],
            hosts=cut["hosts"],
            ports=cut["ports"],
            latency=_reduce_latency(snap.latency, self.rows),
        )
        prev = None
        if before is not None and len(old) == len(TABLES):
            prev = replace(  # its latency: the entry's (no rates are taken of it)
                before,
                flows=old["flows"],
                pairs=old["pairs"],
                hosts=old["hosts"],
                ports=old["ports"],
                latency=small.latency,
            )
        procs = _reduce_processes(processes, cut["flows"], PROCESS_ROWS) if processes is not None else None
        procs_before = None
        if processes_before is not None and procs is not None:
            pids = {p.pid for p in procs.processes}
            procs_before = replace(
                processes_before,
                processes=tuple(p for p in processes_before.processes if p.pid in pids),
                flow_owners={},
            )
        return HistoryEntry(int(data_time(snap)), small, prev, procs, procs_before)

    def failed(self, error: BaseException) -> None:
        """Count a failed round (shown by the dashboard), keep the message."""
        self.errors += 1
        self.last_error = f"{type(error).__name__}: {error}"

    def nbytes(self) -> int:
        """The NumPy memory the entries hold (each array once)."""
        seen: set[int] = set()
        total = 0
        for entry in self.entries():
            for snap in (entry.snap, entry.prev):
                if snap is None:
                    continue
                tables = [getattr(snap, name) for name in TABLES]
                tables += [snap.latency.servers, snap.latency.services]
                for t in tables:
                    for a in (t.keys, t.slots, *t.cols.values()):
                        if a is not None and id(a) not in seen:
                            seen.add(id(a))
                            total += a.nbytes
        return total


class HistoryThread:
    """Offers the newest published snapshot to the ring a few times a second, on its own thread."""

    def __init__(
        self,
        ring: HistoryRing,
        snapshots: Callable[[], Snapshot],
        processes: Callable[[], ProcessTable | None] = lambda: None,
        interval: float = 0.25,
    ) -> None:
        self.ring = ring
        self.snapshots = snapshots
        self.processes = processes
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = NamedThread(target=self._run, name="retrotap-history", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.ring.offer(self.snapshots(), self.processes())
            except Exception as e:  # counted and shown; the next second is tried again
                self.ring.failed(e)
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def session_flows(path: str, from_ns: int, to_ns: int, limit: int = SESSION_ROWS) -> tuple[TableSnapshot, ProcessTable]:
    """The session records of a store that overlap [from_ns, to_ns), the busiest first (one per flow), as a
    flow table with the columns the Flows view reads (counts over each record), and their processes.
    SessionStoreError when the store cannot be read."""
    with SessionStore(path, writable=False) as store:
        rows = store.query(Query(from_ns=from_ns, to_ns=to_ns, sort="bytes", top=limit))
    seen: set[tuple[Any, ...]] = set()
    picked = []
    for r in rows:  # a long flow's records follow each other: the busiest one overlapping stands for it
        key = (r["proto"], r["src"], r["sport"], r["dst"], r["dport"])
        if key not in seen:
            seen.add(key)
            picked.append(r)
    n = len(picked)

    def col(name: str, scale: int = 1, missing: int = 0) -> np.ndarray:
        return np.array([missing if r[name] is None else r[name] * scale for r in picked], np.int64)

    keys = pack_keys(
        FLOW_KEY,
        n,
        a=np.array([np.frombuffer(address_bytes(r["src"]), np.uint8) for r in picked], np.uint8).reshape(n, 16),
        b=np.array([np.frombuffer(address_bytes(r["dst"]), np.uint8) for r in picked], np.uint8).reshape(n, 16),
        aport=col("sport"),
        bport=col("dport"),
        proto=np.array([PROTO_NUMBERS.get(r["proto"], 0) if not str(r["proto"]).isdigit() else int(r["proto"])
                        for r in picked], np.int64),
    )  # fmt: skip
    exchanges = col("exchanges")
    cols = {
        "packets": np.stack([col("src_packets"), col("dst_packets")], axis=1).reshape(n, 2),
        "bytes": np.stack([col("src_bytes"), col("dst_bytes")], axis=1).reshape(n, 2),
        "first": col("start_ns"),
        "last": col("end_ns"),
        "tcp_flags": col("tcp_flags").astype(np.uint8),
        "origin": np.zeros(n, np.uint8),  # a (the client) sent first
        "tcp_retrans": col("retrans"),
        "tcp_ooo": col("ooo"),
        "tcp_dupack": col("dupacks"),
        "tcp_zero_win": col("zero_windows"),
        "tcp_resets": col("resets"),
        "tcp_irtt": col("rtt_us", 1000, -1),
        "app_count": exchanges,
        "app_sum": col("latency_avg_us", 1000) * exchanges,
        "app_max": col("latency_max_us", 1000),
    }
    table = TableSnapshot(keys, _frozen(cols), layout=FLOW_KEY)
    owners = {table.key_bytes(i): (r["pid"], r["process"]) for i, r in enumerate(picked) if r["pid"] is not None}
    return table, ProcessTable(1, 0.0, (), EMPTY_UNKNOWN, flow_owners=owners)
