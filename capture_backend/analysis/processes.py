"""Which process: attribute flows to local sockets and count bytes and packets per process.

A ProcessMapper thread reads the socket table (psutil) about once a second, or sooner when a snapshot
shows flows it cannot attribute yet, and diffs successive snapshots' flow counters per flow-table row.
Each flow is attributed by its local end: either side whose address and port is a local socket
(a listener bound to 0.0.0.0 or :: matches any local address on its port). Traffic no socket explains
goes to the "unknown" entry. The result is an immutable ProcessTable swapped in by one assignment.
Sockets of other network namespaces are not visible here and cannot be mapped.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import psutil

from capture_backend.contract import (
    EMPTY_PROCESSES,
    FLOW_KEY,
    PROCESS_NOTE,
    V4_MAPPED,
    Snapshot,
    TableSnapshot,
    address_bytes,
    table_growth,
)
from capture_backend.contract import EMPTY_UNKNOWN as EMPTY_UNKNOWN
from capture_backend.contract import OwnedFlows as OwnedFlows
from capture_backend.contract import ProcessTable as ProcessTable
from capture_backend.contract import ProcessTotals as ProcessTotals

PROTO_TCP, PROTO_UDP = 6, 17
REFRESH_SECONDS = 1.0
MIN_POKE_GAP = 0.05  # seconds between two refreshes asked for by unexplained flows

Conns = Callable[[], Iterable[Any]]  # psutil.net_connections-like rows: type, laddr, raddr, pid
Owner = tuple[int, str, str]  # pid, name, user
Ends = tuple[int, bytes, int, bytes, int]  # a flow's proto, a, aport, b, bport
FLOW_KEY_WIDTH = FLOW_KEY.itemsize
EMPTY = EMPTY_PROCESSES  # the old name
NOTE = PROCESS_NOTE  # the old name


def flow_ends(flows: TableSnapshot, rows: list[int]) -> list[Ends]:
    """(proto, a, aport, b, bport) of flow rows, addresses as 16 bytes."""
    f = flows.fields[rows]
    cols = (f["proto"].tolist(), map(bytes, f["a"]), f["aport"].tolist(), map(bytes, f["b"]), f["bport"].tolist())
    return list(zip(*cols, strict=True))


def _proto(sock_type: int) -> int | None:
    if sock_type == socket.SOCK_STREAM:
        return PROTO_TCP
    if sock_type == socket.SOCK_DGRAM:
        return PROTO_UDP
    return None


def _psutil_conns() -> Iterable[Any]:
    return psutil.net_connections(kind="inet")


def _psutil_info(pid: int) -> tuple[str, str] | None:
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            name = p.name()
            try:
                user = p.username()
            except (KeyError, psutil.Error):
                user = str(p.uids().real)
        return name, user
    except psutil.Error:
        return None


def _psutil_local_addrs() -> Iterable[str]:
    families = (socket.AF_INET, socket.AF_INET6)
    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family in families]


@dataclass
class _Acc:
    pid: int | None
    name: str
    user: str
    counts: np.ndarray = field(default_factory=lambda: np.zeros(4, np.int64))  # rx_b, tx_b, rx_p, tx_p
    exited: bool = False

    def frozen(self) -> ProcessTotals:
        rb, tb, rp, tp = (int(v) for v in self.counts)
        return ProcessTotals(self.pid, self.name, self.user, rb, tb, rp, tp, self.exited)


class ProcessMapper:
    """Attributes flows to processes on its own thread (start() / close()); readers take `result`."""

    def __init__(
        self,
        snapshots: Callable[[], Snapshot] | None = None,
        *,
        conns: Conns = _psutil_conns,
        info: Callable[[int], tuple[str, str] | None] = _psutil_info,
        local_addrs: Callable[[], Iterable[str]] = _psutil_local_addrs,
        alive: Callable[[int], bool] = psutil.pid_exists,
        refresh_s: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.snapshots = snapshots
        self.conns, self.info, self.local_addrs, self.alive = conns, info, local_addrs, alive
        self.refresh_s = refresh_s
        self.clock = clock
        self.result: ProcessTable = EMPTY
        self.error = ""
        self._connected: dict[tuple[int, bytes, int, bytes, int], int] = {}
        self._bound: dict[tuple[int, bytes, int], int] = {}
        self._wild: dict[tuple[int, int, int], int] = {}  # proto, port, 4 or 6 -> pid
        self._local: set[bytes] = set()
        self._names: dict[int, tuple[str, str]] = {}
        self._accs: dict[int | None, _Acc] = {None: _Acc(None, "unknown", "")}
        self._owners: dict[bytes, tuple[int | None, int | None]] = {}  # flow key -> pid of side a, of side b
        self._last: Snapshot | None = None
        self._refreshed = -1e18
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the thread
    def start(self) -> None:
        """Start the mapping thread (needs `snapshots`)."""
        self._thread = threading.Thread(target=self._run, name="retrotap-processes", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (the last result stays)."""
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        """The thread has been started and not yet closed."""
        return self._thread is not None

    def poke(self) -> None:
        """Ask for a socket table refresh now (e.g. a short-lived connection just appeared)."""
        self._poke.set()

    def _run(self) -> None:
        assert self.snapshots is not None
        while not self._stop.is_set():
            poked = self._poke.wait(0.1)
            if self._stop.is_set():
                break
            self._poke.clear()
            try:
                if poked or self.clock() - self._refreshed >= self.refresh_s:
                    self.refresh()
                self.update(self.snapshots())
            except Exception as e:  # a bug or an unreadable /proc: say so rather than die silently
                self.error = f"{type(e).__name__}: {e}"

    # --- the socket table
    def refresh(self) -> None:
        """Read the socket table, the names of new pids, and which counted processes exited."""
        connected: dict[tuple[int, bytes, int, bytes, int], int] = {}
        bound: dict[tuple[int, bytes, int], int] = {}
        wild: dict[tuple[int, int, int], int] = {}
        try:
            rows = list(self.conns())
        except (psutil.Error, OSError) as e:  # keep the last table; say why
            self.error = f"socket table: {e}"
            return
        for c in rows:
            proto = _proto(c.type)
            if proto is None or c.pid is None or not c.laddr:
                continue
            pid = int(c.pid)
            if pid not in self._names:
                got = self.info(pid)
                if got is None:
                    continue
                self._names[pid] = got
            host, port = c.laddr[0], int(c.laddr[1])
            ip = ipaddress.ip_address(host.split("%", 1)[0])
            if ip.is_unspecified:
                for version in (4, 6) if ip.version == 6 else (4,):
                    wild.setdefault((proto, port, version), pid)
                continue
            local = address_bytes(host)
            bound.setdefault((proto, local, port), pid)
            if c.raddr:
                connected[(proto, local, port, address_bytes(c.raddr[0]), int(c.raddr[1]))] = pid
        self._local = {address_bytes(a) for a in self.local_addrs()}
        self._connected, self._bound, self._wild = connected, bound, wild
        present = set(bound.values()) | set(wild.values()) | set(connected.values())
        for counted, acc in self._accs.items():
            if counted is not None and not acc.exited and counted not in present and not self.alive(counted):
                acc.exited = True
        for gone in [p for p in self._names if p not in present and p not in self._accs]:
            del self._names[gone]  # never counted, gone from the table: a reused pid gets a fresh name
        self._refreshed = self.clock()

    def _side(self, proto: int, addr: bytes, port: int, peer: bytes, peer_port: int) -> int | None:
        pid = self._connected.get((proto, addr, port, peer, peer_port))
        if pid is None:
            pid = self._bound.get((proto, addr, port))
        if pid is None and addr in self._local:
            v4 = addr.startswith(V4_MAPPED)
            pid = self._wild.get((proto, port, 4 if v4 else 6))
        return pid

    def _attribute(self, ends: Ends) -> tuple[int | None, int | None]:
        proto, a, aport, b, bport = ends
        if proto not in (PROTO_TCP, PROTO_UDP):
            return None, None
        return self._side(proto, a, aport, b, bport), self._side(proto, b, bport, a, aport)

    # --- the counting
    def update(self, snap: Snapshot) -> ProcessTable:
        """Attribute what changed since the last snapshot seen, publish and return the new result."""
        if snap is self._last or (self._last is not None and snap.seq == self._last.seq):
            return self.result
        flows = snap.flows
        before = self._last.flows if self._last is not None and self._last.started == snap.started else None
        if before is None:
            grown_b, grown_p, new = flows.cols["bytes"], flows.cols["packets"], np.ones(len(flows), bool)
        else:
            grown_b, match = table_growth(flows, before, "bytes")
            grown_p, _ = table_growth(flows, before, "packets", match=match)
            new = match < 0
        active = np.flatnonzero(grown_p.sum(axis=1) > 0) if len(flows) else np.zeros(0, np.int64)
        unseen = [i for i in np.flatnonzero(new).tolist() if flows.key_bytes(i) not in self._owners]
        if unseen and self.clock() - self._refreshed >= MIN_POKE_GAP:
            if not all(self._attribute(e) != (None, None) for e in flow_ends(flows, unseen)):
                self.refresh()  # new flows no socket explains yet: the socket may still be there
        rows = active.tolist()
        row_keys = [flows.key_bytes(i) for i in rows]
        owned = [self._owners.get(key) for key in row_keys]
        todo = [n for n, owners in enumerate(owned) if owners is None or owners == (None, None)]
        changed = False
        for n, ends in zip(todo, flow_ends(flows, [rows[n] for n in todo]), strict=True):
            found = self._attribute(ends)
            if found != owned[n]:
                self._owners[row_keys[n]] = found
                changed = True
            owned[n] = found
        for i, sides in zip(rows, owned, strict=True):
            b0, b1 = int(grown_b[i, 0]), int(grown_b[i, 1])
            p0, p1 = int(grown_p[i, 0]), int(grown_p[i, 1])
            if sides is None or sides == (None, None):
                self._accs[None].counts += (b0 + b1, 0, p0 + p1, 0)
                continue
            for pid, rx_b, tx_b, rx_p, tx_p in ((sides[0], b1, b0, p1, p0), (sides[1], b0, b1, p0, p1)):
                if pid is not None:
                    self._acc(pid).counts += (rx_b, tx_b, rx_p, tx_p)
        if len(self._owners) > 2 * len(flows) + 1024:  # forget flows the table no longer holds
            held = {flows.key_bytes(i) for i in range(len(flows))}
            self._owners = {k: v for k, v in self._owners.items() if k in held}
            changed = True
        self._last = snap
        self.result = self._publish(snap, changed)
        return self.result

    def _acc(self, pid: int) -> _Acc:
        acc = self._accs.get(pid)
        if acc is None:
            name, user = self._names.get(pid, ("?", ""))
            acc = self._accs[pid] = _Acc(pid, name, user)
        return acc

    def _publish(self, snap: Snapshot, owners_changed: bool) -> ProcessTable:
        if owners_changed or not self.result.seq:
            flow_owners: Mapping[bytes, tuple[int, str]] = MappingProxyType(
                {
                    k: (pid, self._accs[pid].name if pid in self._accs else self._names.get(pid, ("?", ""))[0])
                    for k, (a, b) in self._owners.items()
                    if (pid := a if a is not None else b) is not None
                }
            )
        else:
            flow_owners = self.result.flow_owners
        procs = tuple(acc.frozen() for pid, acc in self._accs.items() if pid is not None)
        return ProcessTable(snap.seq, snap.time, procs, self._accs[None].frozen(), flow_owners)
