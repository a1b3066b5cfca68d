"""The session writer: finished flows (and active intervals of long ones) as records of the session store.

Like the IPFIX exporter, a thread follows the snapshots (never the capture thread) and a `FlowTracker`
says which flow rows are due: idle for `idle_s`, `active_s` since the record opened, a TCP flow that
saw FIN or RST quiet for `closed_s`, evicted by the flow table, or the end of the run. Each record gets
the flow's TCP health and application latency over the record, its handshake RTT, the slowest request
when the latency table still lists it, and the local process when the mapper knows it.

A second thread writes the records to SQLite in batches through a bounded queue: a slow disk never
holds up the tracker (a batch that does not fit is dropped and its records counted), and a store that
cannot be opened or written (corrupt, locked, read-only) is said once per new reason, counted, and tried
again later, while capture goes on.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from capture_backend.capture.threads import NamedThread
from capture_backend.contract import FLOW_KEY, ProcessTable, Snapshot, is_v4, key_records
from capture_backend.exporters.ipfix import FLOW_CARRIED, FLOW_COUNTED, US, Finished, FlowTracker, client_is_a
from capture_backend.rewind.aggregates import Batch, MinuteAggregator
from capture_backend.rewind.sessions import Retention, SessionStore, SessionStoreError, store_path

# Flow columns whose growth each record carries, and those whose latest value it carries (as IPFIX's).
COUNTED, CARRIED = FLOW_COUNTED, FLOW_CARRIED
WRITE_QUEUE = 64  # batches waiting for the disk
FEED_QUEUE = 16  # snapshots waiting for the tracker (fed runs)
RETAIN_EVERY_S = 60.0
REOPEN_EVERY_S = 10.0


@dataclass
class SessionSettings:
    """--sessions DIR and how records are cut and kept."""

    directory: str
    idle_s: float = 30.0
    active_s: float = 60.0
    closed_s: float = 5.0
    retention: Retention = field(default_factory=Retention)


@dataclass
class SessionStats:
    """What the writer did: records written, records dropped (queue full, store failing), store errors."""

    records: int = 0
    batches: int = 0
    dropped: int = 0
    minutes: int = 0  # per-minute aggregates written
    minutes_dropped: int = 0
    errors: int = 0
    deleted: int = 0
    last_error: str = ""
    unseen: int = 0  # flows the table evicted before the writer's poll saw them: no record (a flood)


def _slowest_requests(snap: Snapshot) -> dict[tuple[bytes, bytes, int, int], str]:
    """(client, server, server port, latency ns) → request text of the slowest exchanges the snapshot lists."""
    return {(x.client, x.server, x.port, x.latency_ns): x.request for x in snap.latency.slowest}


def session_rows(done: Finished, snap: Snapshot, processes: ProcessTable | None = None) -> list[tuple[Any, ...]]:
    """The store's rows (COLUMN_NAMES order) of the records due; src is the client."""
    n = len(done)
    if n == 0:
        return []
    k = key_records(done.keys, FLOW_KEY)
    counts = dict(zip(COUNTED, done.counts.T, strict=True))
    values = dict(zip(CARRIED, done.values.T, strict=True))
    aport, bport = k["aport"].astype(np.int64), k["bport"].astype(np.int64)
    server_is_b = client_is_a(done.keys, values["origin"])
    a, b = k["a"], k["b"]
    v4 = is_v4(a)
    fwd = np.where(server_is_b, 0, 1)
    rows_i = np.arange(n)
    src_packets, dst_packets = done.packets[rows_i, fwd], done.packets[rows_i, 1 - fwd]
    src_bytes, dst_bytes = done.bytes[rows_i, fwd], done.bytes[rows_i, 1 - fwd]
    iface = snap.interfaces[0].name if len(snap.interfaces) == 1 else ""
    slowest = _slowest_requests(snap)
    users = {p.pid: p.user for p in processes.processes} if processes is not None else {}
    out = []
    for i in range(n):
        a_raw, b_raw = a[i].tobytes(), b[i].tobytes()
        if server_is_b[i]:
            src, sport, dst, dport = a_raw, int(aport[i]), b_raw, int(bport[i])
        else:
            src, sport, dst, dport = b_raw, int(bport[i]), a_raw, int(aport[i])
        exchanges = int(counts["app_count"][i])
        avg = int(counts["app_sum"][i]) // exchanges // US if exchanges else None
        app_max = int(values["app_max"][i])
        request = None
        if exchanges:
            request = slowest.get((src, dst, dport, app_max)) or slowest.get((dst, src, sport, app_max))
        irtt = int(values["tcp_irtt"][i])
        owner = processes.owner(done.keys[i].tobytes()) if processes is not None else None
        pid, name = owner if owner is not None else (None, None)
        netns, container = processes.place(done.keys[i].tobytes()) if owner is not None and processes else ("", "")
        cut = slice(12, 16) if v4[i] else slice(0, 16)
        out.append(
            (
                int(done.start_ns[i]),
                int(done.end_ns[i]),
                iface,
                int(values["vlan"][i]) - 1 if values["vlan"][i] else None,
                4 if v4[i] else 6,
                int(k["proto"][i]),
                src[cut],
                sport,
                dst[cut],
                dport,
                int(src_packets[i]),
                int(dst_packets[i]),
                int(src_bytes[i]),
                int(dst_bytes[i]),
                int(done.tcp_flags[i]),
                int(counts["tcp_retrans"][i]),
                int(counts["tcp_ooo"][i]),
                int(counts["tcp_dupack"][i]),
                int(counts["tcp_zero_win"][i]),
                int(counts["tcp_resets"][i]),
                irtt // US if irtt > 0 else None,
                exchanges,
                avg,
                app_max // US if exchanges and app_max > 0 else None,
                request,
                pid,
                name,
                users.get(pid) if pid is not None else None,
                netns or None,
                container or None,
                int(done.reason[i]),
            )
        )
    return out


class SessionWriter:
    """Writes session records to a store from two threads of its own (tracker, disk).

    It reads `source` every poll_s (live capture), or, when `fed`, takes every snapshot given to feed()
    in order (a file run: records then follow packet time, and nothing is dropped: the file waits).
    """

    def __init__(
        self,
        settings: SessionSettings,
        source: Callable[[], Snapshot],
        *,
        processes: Callable[[], ProcessTable | None] | None = None,
        poll_s: float = 1.0,
        fed: bool = False,
        log: Callable[[str], None] = lambda _msg: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.path = store_path(settings.directory)
        self.source = source
        self.processes = processes
        self.poll_s = poll_s
        self.fed = fed
        self.log = log
        self.clock = clock
        self.stats = SessionStats()
        self.tracker = FlowTracker(
            settings.idle_s, settings.active_s, settings.closed_s, counted=COUNTED, carried=CARRIED
        )
        self.store: SessionStore | None = None
        self._feed: queue.Queue[Snapshot | None] = queue.Queue(maxsize=FEED_QUEUE)
        self.minutes = MinuteAggregator()
        self._writes: queue.Queue[tuple[list[tuple[Any, ...]], Batch] | None] = queue.Queue(maxsize=WRITE_QUEUE)
        self._last: Snapshot | None = None
        self._threads: list[threading.Thread] = []
        self._next_open = 0.0
        self._next_retain = 0.0
        self._started = False

    def open(self) -> None:
        """Open (or create) the store now; SessionStoreError (one line, counted) when it cannot be: the disk
        thread tries again later."""
        try:
            self.store = SessionStore(self.path)
        except SessionStoreError as e:
            self.stats.errors += 1
            self.stats.last_error = str(e)
            self._next_open = self.clock() + REOPEN_EVERY_S
            raise

    def start(self) -> None:
        """Follow the snapshots and write records, each on its own thread."""
        self._started = True
        self._threads = [
            NamedThread(target=self._track, name="retrotap-sessions", daemon=True),
            NamedThread(target=self._write, name="retrotap-sessions-db", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def feed(self, snap: Snapshot) -> None:
        """Hand over a snapshot (when fed); waits while the tracker is FEED_QUEUE snapshots behind."""
        self._feed.put(snap)

    def close(self, final: Snapshot | None = None) -> None:
        """Write every record still open (of `final`, else the newest snapshot), then close the store."""
        if self._started:
            self._started = False
            tracker, writer = self._threads
            self._feed.put(None)
            tracker.join()
            snap = final if final is not None else self.source()
            self._emit(snap, final=True, wait=True)
            self._writes.put(None)
            writer.join()
            self._threads = []
        if self.store is not None:
            self.store.close()
            self.store = None

    # --- the tracker thread

    def _track(self) -> None:
        while True:
            try:
                snap = self._feed.get(timeout=self.poll_s)
            except queue.Empty:
                snap = self._last if self.fed else self.source()
            if snap is None:
                return
            if snap is not self._last:
                try:
                    self._emit(snap, wait=self.fed)
                except Exception as e:  # a bug: said and counted, the next snapshot is tried
                    self._error(f"sessions: {type(e).__name__}: {e}")

    def _emit(self, snap: Snapshot, final: bool = False, wait: bool = False) -> None:
        self._last = snap
        done = self.tracker.update(snap, final)
        self.stats.unseen = self.tracker.not_sent(snap.flows)
        procs = self.processes() if self.processes is not None else None
        minutes = self.minutes.update(snap, procs, final)
        if len(done) == 0 and not minutes:
            return
        batch = (session_rows(done, snap, procs), minutes)
        if wait:
            self._writes.put(batch)
            return
        try:
            self._writes.put_nowait(batch)
        except queue.Full:
            self._dropped(batch)

    def _dropped(self, batch: tuple[list[tuple[Any, ...]], Batch]) -> None:
        rows, minutes = batch
        self.stats.dropped += len(rows)
        self.stats.minutes_dropped += len(minutes.get("minute_totals", ()))

    # --- the disk thread

    def _write(self) -> None:
        while True:
            batch = self._writes.get()
            if batch is None:
                return
            rows, minutes = batch
            store = self._store()
            if store is None:
                self._dropped(batch)
                continue
            try:
                store.insert_batch(rows, minutes)
                self.stats.records += len(rows)
                self.stats.minutes += len(minutes.get("minute_totals", ()))
                self.stats.batches += 1
                if self.clock() >= self._next_retain:
                    self._next_retain = self.clock() + RETAIN_EVERY_S
                    deleted = store.retain(self.settings.retention)
                    self.stats.deleted += deleted
            except SessionStoreError as e:
                self._dropped(batch)
                self._error(str(e))
                store.close()
                self.store = None
                self._next_open = self.clock() + REOPEN_EVERY_S

    def _store(self) -> SessionStore | None:
        if self.store is None and self.clock() >= self._next_open:
            try:
                self.store = SessionStore(self.path)
            except SessionStoreError as e:
                self._error(str(e))
                self._next_open = self.clock() + REOPEN_EVERY_S
        return self.store

    def _error(self, message: str) -> None:
        self.stats.errors += 1
        if message != self.stats.last_error:
            self.stats.last_error = message
            self.log(message)
