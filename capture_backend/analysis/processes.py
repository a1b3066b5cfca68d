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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import psutil

from capture_backend._native import KeyIndex
from capture_backend.analysis.decode import Decoded
from capture_backend.analysis.tables import packet_flow_keys
from capture_backend.contract import (
    EMPTY_PROCESSES,
    FLOW_KEY,
    PROCESS_NOTE,
    V4_MAPPED,
    FlowOwners,
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
POLL_SECONDS = 0.1  # how often the thread looks for a new snapshot
COST_FACTOR = 8  # the thread waits this many times its last update's CPU time: at most 1/9 of a core

Conns = Callable[[], Iterable[Any]]  # psutil.net_connections-like rows: type, laddr, raddr, pid
Owner = tuple[int, str, str]  # pid, name, user
FLOW_KEY_WIDTH = FLOW_KEY.itemsize
EMPTY = EMPTY_PROCESSES  # the old name
NOTE = PROCESS_NOTE  # the old name


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


UNSEEN = -2  # a flow row never attributed (-1: attributed, no socket explains that end)
# The socket table's keys, as the compiled index looks them up.
CONNECTED_KEY = np.dtype(
    [("proto", "u1"), ("local", "u1", (16,)), ("lport", ">u2"), ("peer", "u1", (16,)), ("pport", ">u2"), ("pad", "V2")]
)
BOUND_KEY = np.dtype([("proto", "u1"), ("local", "u1", (16,)), ("lport", ">u2"), ("pad", "V5")])
WILD_KEY = np.dtype([("proto", "u1"), ("version", "u1"), ("port", ">u2"), ("pad", "V4")])
V4_PREFIX = np.frombuffer(V4_MAPPED, np.uint8)


class _Lookup:
    """Fixed-width keys to values (the first value given for a key wins) in a compiled hash index."""

    def __init__(self, keys: np.ndarray, values: np.ndarray) -> None:
        n = keys.shape[0]
        size = max(n, 1)
        self._store = np.zeros((size, keys.shape[1]), np.uint8)
        self._used = np.zeros(size, bool)
        self.index = KeyIndex(keys.shape[1], size, self._store, self._used)
        self.values = np.full(size, -1, np.int64)
        if n:
            rows = np.full(n, -1, np.int64)
            hashes = np.empty(n, np.uint64)
            self.index.lookup(keys, rows, hashes)
            self.index.insert(keys, rows, hashes, 0)
            _, first = np.unique(rows, return_index=True)
            self.values[rows[first]] = values[first]

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, -1 for keys not held."""
        rows = np.full(keys.shape[0], -1, np.int64)
        if keys.shape[0] and len(self.index):
            self.index.lookup(keys, rows, np.empty(keys.shape[0], np.uint64))
        return np.where(rows >= 0, self.values[rows], -1)


class _Sockets:
    """One read of the socket table, indexed for whole columns of flow ends."""

    def __init__(
        self,
        connected: Mapping[tuple[int, bytes, int, bytes, int], int],
        bound: Mapping[tuple[int, bytes, int], int],
        wild: Mapping[tuple[int, int, int], int],
        local: list[bytes],
    ) -> None:
        def keys(layout: np.dtype, rows: list[dict[str, Any]]) -> np.ndarray:
            rec = np.zeros(len(rows), layout)
            for name in layout.names or ():
                if name != "pad" and rows:
                    rec[name] = [r[name] for r in rows]
            return rec.view(np.uint8).reshape(len(rows), layout.itemsize)

        def addr(b: bytes) -> np.ndarray:
            return np.frombuffer(b, np.uint8)

        c = [dict(proto=k[0], local=addr(k[1]), lport=k[2], peer=addr(k[3]), pport=k[4]) for k in connected]
        b = [dict(proto=k[0], local=addr(k[1]), lport=k[2]) for k in bound]
        w = [dict(proto=k[0], port=k[1], version=k[2]) for k in wild]
        self.connected = _Lookup(keys(CONNECTED_KEY, c), np.array(list(connected.values()), np.int64))
        self.bound = _Lookup(keys(BOUND_KEY, b), np.array(list(bound.values()), np.int64))
        self.wild = _Lookup(keys(WILD_KEY, w), np.array(list(wild.values()), np.int64))
        self.local = _Lookup(
            np.array([addr(a) for a in local], np.uint8).reshape(len(local), 16), np.zeros(len(local), np.int64)
        )

    def _end(
        self, proto: np.ndarray, addr: np.ndarray, port: np.ndarray, peer: np.ndarray, peer_port: np.ndarray
    ) -> np.ndarray:
        """The pid of the socket at one end of each flow: connected to that peer, else bound to that address
        and port, else listening on every address (when the address is a local one); -1 for none."""
        n = proto.size
        pid = self.connected.find(
            _pack(CONNECTED_KEY, n, proto=proto, local=addr, lport=port, peer=peer, pport=peer_port)
        )
        rest = np.flatnonzero(pid < 0)
        if rest.size:
            pid[rest] = self.bound.find(
                _pack(BOUND_KEY, rest.size, proto=proto[rest], local=addr[rest], lport=port[rest])
            )
        rest = rest[pid[rest] < 0]
        if rest.size:
            rest = rest[self.local.find(np.ascontiguousarray(addr[rest])) >= 0]
        if rest.size:
            version = np.where((addr[rest, :12] == V4_PREFIX).all(axis=1), 4, 6)
            pid[rest] = self.wild.find(_pack(WILD_KEY, rest.size, proto=proto[rest], version=version, port=port[rest]))
        return pid

    def attribute(self, flows: TableSnapshot, rows: np.ndarray) -> np.ndarray:
        """(pid of side a, pid of side b) of flow rows; -1 where no socket explains that end."""
        f = flows.fields[rows]
        proto = f["proto"].astype(np.int64)
        a, b = f["a"], f["b"]
        aport, bport = f["aport"].astype(np.int64), f["bport"].astype(np.int64)
        out = np.full((rows.size, 2), -1, np.int64)
        ok = np.flatnonzero((proto == PROTO_TCP) | (proto == PROTO_UDP))
        if ok.size:
            p, a, b, aport, bport = proto[ok], a[ok], b[ok], aport[ok], bport[ok]
            out[ok, 0] = self._end(p, a, aport, b, bport)
            out[ok, 1] = self._end(p, b, bport, a, aport)
        return out


def _pack(layout: np.dtype, n: int, **values: np.ndarray) -> np.ndarray:
    rec = np.zeros(n, layout)
    for name, value in values.items():
        rec[name] = value
    return rec.view(np.uint8).reshape(n, layout.itemsize)


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
        self.errors = 0
        self._sockets = _Sockets({}, {}, {}, [])
        self._names: dict[int, tuple[str, str]] = {}
        self._accs: dict[int | None, _Acc] = {None: _Acc(None, "unknown", "")}
        self._own = np.zeros((0, 2), np.int64)  # per row of the last snapshot: pid of side a, of side b
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
        pause = POLL_SECONDS
        while not self._stop.is_set():
            poked = self._poke.wait(pause)
            if self._stop.is_set():
                break
            self._poke.clear()
            started = time.thread_time()
            try:
                if poked or self.clock() - self._refreshed >= self.refresh_s:
                    self.refresh()
                self.update(self.snapshots())
            except Exception as e:  # a bug or an unreadable /proc: published and counted, never silent
                self._failed(f"{type(e).__name__}: {e}")
            # Big flow tables (a flood) make an update dear: update less often rather than take a core.
            pause = max(POLL_SECONDS, (time.thread_time() - started) * COST_FACTOR)

    # --- the socket table
    def refresh(self) -> None:
        """Read the socket table, the names of new pids, and which counted processes exited."""
        connected: dict[tuple[int, bytes, int, bytes, int], int] = {}
        bound: dict[tuple[int, bytes, int], int] = {}
        wild: dict[tuple[int, int, int], int] = {}
        try:
            rows = list(self.conns())
        except (psutil.Error, OSError) as e:  # keep the last table; say why
            self._failed(f"socket table: {e}")
            return
        self.error = ""
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
        local_addrs = sorted({address_bytes(a) for a in self.local_addrs()})
        self._sockets = _Sockets(connected, bound, wild, local_addrs)
        present = set(bound.values()) | set(wild.values()) | set(connected.values())
        for counted, acc in self._accs.items():
            if counted is not None and not acc.exited and counted not in present and not self.alive(counted):
                acc.exited = True
        for gone in [p for p in self._names if p not in present and p not in self._accs]:
            del self._names[gone]  # never counted, gone from the table: a reused pid gets a fresh name
        self._refreshed = self.clock()

    # --- the counting
    def update(self, snap: Snapshot) -> ProcessTable:
        """Attribute what changed since the last snapshot seen, publish and return the new result.

        Whole columns, never a Python step per flow: a flood of new flows costs NumPy and compiled
        lookups. Each flow row keeps the pids of its two ends (carried from one snapshot to the next
        by key); a row is (re)attributed while active and not yet explained by any socket.
        """
        if snap is self._last or (self._last is not None and snap.seq == self._last.seq):
            return self.result
        flows = snap.flows
        n = len(flows)
        before = self._last.flows if self._last is not None and self._last.started == snap.started else None
        own = np.full((n, 2), UNSEEN, np.int64)
        if before is None:
            grown_b, grown_p = flows.cols["bytes"], flows.cols["packets"]
        else:
            grown_b, match = table_growth(flows, before, "bytes")
            grown_p, _ = table_growth(flows, before, "packets", match=match)
            kept = match >= 0
            own[kept] = self._own[match[kept]]
        active = grown_p.sum(axis=1) > 0 if n else np.zeros(0, bool)
        unseen = np.flatnonzero(own[:, 0] == UNSEEN)
        if unseen.size and self.clock() - self._refreshed >= MIN_POKE_GAP:
            if (self._sockets.attribute(flows, unseen) < 0).all(axis=1).any():
                self.refresh()  # new flows no socket explains yet: the socket may still be there
        todo = np.flatnonzero(active & (own < 0).all(axis=1))
        if todo.size:
            own[todo] = self._sockets.attribute(flows, todo)
        rows = np.flatnonzero(active)
        gb, gp = grown_b[rows], grown_p[rows]
        pids = own[rows]
        nobody = (pids < 0).all(axis=1)
        self._accs[None].counts += (int(gb[nobody].sum()), 0, int(gp[nobody].sum()), 0)
        # Side a receives what b sent (direction 1) and sends direction 0; side b the other way round.
        for side, rx, tx in ((0, 1, 0), (1, 0, 1)):
            mine = np.flatnonzero(pids[:, side] >= 0)
            if mine.size == 0:
                continue
            who, inv = np.unique(pids[mine, side], return_inverse=True)
            sums = np.zeros((who.size, 4), np.int64)
            for col, values in enumerate((gb[mine, rx], gb[mine, tx], gp[mine, rx], gp[mine, tx])):
                np.add.at(sums[:, col], inv, values)
            for pid, counts in zip(who.tolist(), sums, strict=True):  # once per process, not per flow
                self._acc(pid).counts += counts
        self._own = own
        self._last = snap
        self.result = self._publish(snap, own)
        return self.result

    def _acc(self, pid: int) -> _Acc:
        acc = self._accs.get(pid)
        if acc is None:
            name, user = self._names.get(pid, ("?", ""))
            acc = self._accs[pid] = _Acc(pid, name, user)
        return acc

    def _failed(self, error: str) -> None:
        self.error = error
        self.errors += 1
        self.result = replace(self.result, error=self.error, errors=self.errors)

    def _name(self, pid: int) -> str:
        acc = self._accs.get(pid)
        return acc.name if acc is not None else self._names.get(pid, ("?", ""))[0]

    def _publish(self, snap: Snapshot, own: np.ndarray) -> ProcessTable:
        flows = snap.flows
        pid = np.where(own[:, 0] >= 0, own[:, 0], own[:, 1])  # a flow's process: its first local end
        rows = np.flatnonzero(pid >= 0)
        flow_owners = FlowOwners.of(flows.keys[rows], pid[rows], self._name)
        procs = tuple(acc.frozen() for pid, acc in self._accs.items() if pid is not None)
        return ProcessTable(snap.seq, snap.time, procs, self._accs[None].frozen(), flow_owners, self.error, self.errors)


def process_comment(pid: int, name: str) -> str:
    """A packet's pcapng comment naming its flow's local process (tshark shows it as frame.comment)."""
    return f"process: {pid} {name}"


class PacketOwners:
    """The local process of each packet's flow, for whole columns of packets (pcapng saves): the owners'
    flow keys in a compiled index, and one comment text per process."""

    def __init__(self, keys: np.ndarray, pid: np.ndarray, name_of: Callable[[int], str]) -> None:
        """keys: (n, FLOW_KEY.itemsize) uint8 with each key's pid; name_of(i) is the name of row i's process.
        A key given twice keeps its first owner."""
        pid = np.asarray(pid, np.int64)
        who, first, inv = np.unique(pid, return_index=True, return_inverse=True)
        self.texts = tuple(process_comment(p, name_of(i)) for p, i in zip(who.tolist(), first.tolist(), strict=True))
        self._lookup = _Lookup(np.ascontiguousarray(keys, np.uint8).reshape(-1, FLOW_KEY_WIDTH), inv.ravel())

    @classmethod
    def of(cls, table: ProcessTable) -> PacketOwners:
        """The attributed flows of a published process table."""
        owned = table.owned
        return cls(owned.keys.keys, owned.pid, lambda i: owned.names[int(owned.name_id[i])])

    def __len__(self) -> int:
        return len(self._lookup.index)

    def comments(self, dec: Decoded) -> np.ndarray:
        """Per packet, the index of its process's text in `texts` (-1: not IP, or no process known)."""
        if not self.texts or len(dec) == 0:
            return np.full(len(dec), -1, np.int64)
        found = self._lookup.find(packet_flow_keys(dec))
        return np.where(dec.ip, found, -1)
