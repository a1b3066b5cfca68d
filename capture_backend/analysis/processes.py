"""Which process: attribute flows to local sockets and count bytes and packets per process.

A ProcessMapper thread reads the socket tables about once a second, or sooner when a snapshot shows flows it
cannot attribute yet, and diffs successive snapshots' flow counters per flow-table row. The tables are read
from /proc for every network namespace a process is in (capture/sockets.py); the pid of each socket comes
from the processes' open files, its container from the process's cgroup (capture/containers.py).

Each end of a flow is looked up, best first: in the namespace of the interface it was captured on; in the
namespace at the other end of that interface when it is a veth; connected to that peer in any namespace;
bound to that address and port in any namespace, or listening on every address where the address is local.
A socket is connected to the peer, else bound to the address and port, else a listener on 0.0.0.0 or ::
when the address is one of that namespace's. A flow's process is the end found first in that order (side a
on a tie). Traffic no socket explains goes to the "unknown" entry. The result is an immutable ProcessTable
swapped in by one assignment.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import psutil

from capture_backend._native import KeyIndex
from capture_backend.analysis.decode import Decoded
from capture_backend.analysis.tables import packet_flow_keys
from capture_backend.capture.containers import container_of_pid
from capture_backend.capture.sockets import COLUMNS as SOCKET_COLUMNS
from capture_backend.capture.sockets import (
    SocketRows,
    concat,
    parse_table,
    read_local_addresses,
    read_sockets,
    scan,
)
from capture_backend.capture.threads import NamedThread
from capture_backend.contract import (
    EMPTY_PROCESSES,
    FLOW_KEY,
    PACE_FACTOR,
    PROCESS_NOTE,
    V4_MAPPED,
    FlowOwners,
    Snapshot,
    TableSnapshot,
    address_bytes,
    is_v4,
    pack_keys,
    table_growth,
)
from capture_backend.contract import EMPTY_UNKNOWN as EMPTY_UNKNOWN
from capture_backend.contract import OwnedFlows as OwnedFlows
from capture_backend.contract import ProcessTable as ProcessTable
from capture_backend.contract import ProcessTotals as ProcessTotals

PROTO_TCP, PROTO_UDP = 6, 17
REFRESH_SECONDS = 1.0
MIN_POKE_GAP = 0.05  # seconds between two refreshes asked for by unexplained flows
# Each refresh in a row that explains no flow doubles both gaps, up to this: forwarded traffic, a flood of
# spoofed sources or a link with no local socket costs a socket table read (≈ 20 ms with a few namespaces,
# most of it the kernel's walk of its TCP hash) every few seconds, not every second.
MAX_REFRESH_SECONDS = 5.0
POLL_SECONDS = 0.1  # how often the thread looks for a new snapshot

Conns = Callable[[], Iterable[Any]]  # psutil.net_connections-like rows: type, laddr, raddr, pid
Tables = Callable[[], "list[NsTable]"]  # every namespace's socket table, the current namespace first
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


UNSEEN = -2  # a flow row never attributed (-1: attributed, no socket explains that end)
# How an end's socket was found, best first: in the namespace of an interface the flow was captured on, in
# the namespace at the other end of that interface (a veth), connected in any namespace, bound or listening
# in any namespace where the address is local; NOT_FOUND when none explains it.
RANK_CAPTURED, RANK_PEER, RANK_CONNECTED, RANK_BOUND, NOT_FOUND = 0, 1, 2, 3, 9
NS_ANY = 0xFFFF  # the namespace field of keys that hold every namespace's sockets (the first one given wins)
# The socket tables' keys, as the compiled index looks them up; ns: the namespace's number in this refresh.
CONNECTED_KEY = np.dtype(
    [
        ("ns", "<u2"),
        ("proto", "u1"),
        ("local", "u1", (16,)),
        ("lport", ">u2"),
        ("peer", "u1", (16,)),
        ("pport", ">u2"),
        ("pad", "V1"),
    ]
)
BOUND_KEY = np.dtype([("ns", "<u2"), ("proto", "u1"), ("local", "u1", (16,)), ("lport", ">u2"), ("pad", "V3")])
WILD_KEY = np.dtype([("ns", "<u2"), ("proto", "u1"), ("version", "u1"), ("port", ">u2"), ("pad", "V2")])
MAX_NAMESPACES = NS_ANY  # namespaces told apart in one refresh (the later ones are left out)
V4_PREFIX = np.frombuffer(V4_MAPPED, np.uint8)


@dataclass(frozen=True)
class NsTable:
    """One network namespace's sockets held by processes (columns; listeners have a zero peer) and its local
    addresses; label "" for the current namespace."""

    label: str
    inode: int
    sockets: SocketRows
    pid: np.ndarray  # int64, the process holding each socket
    local: np.ndarray  # (m, 16) uint8


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
    """One read of every namespace's socket table, indexed for whole columns of flow ends."""

    def __init__(self, tables: list[NsTable]) -> None:
        tables = tables[:MAX_NAMESPACES]
        self.tables = tables
        self.ns_of_inode = {t.inode: n for n, t in enumerate(tables)}
        sizes = [len(t.sockets) for t in tables]
        ns = np.repeat(np.arange(len(tables), dtype=np.int64), sizes)
        cat = concat([t.sockets for t in tables]) if tables else concat([parse_table(b"", PROTO_TCP, 8)])
        pid = np.concatenate([t.pid for t in tables]) if tables else np.zeros(0, np.int64)
        v4 = is_v4(cat.local)
        unspecified = (cat.local[:, 12:] == 0).all(axis=1) & (v4 | (cat.local[:, :12] == 0).all(axis=1))
        # A listener on :: takes IPv4 too (unless IPV6_V6ONLY, which the table does not say).
        wild = np.flatnonzero(unspecified)
        wild6 = wild[~v4[wild]]
        w_rows = np.concatenate([wild, wild6])
        w_version = np.concatenate([np.where(v4[wild], 4, 6), np.full(wild6.size, 4)])
        self.wild = _Lookup(
            pack_keys(WILD_KEY, w_rows.size, ns=ns[w_rows], proto=cat.proto[w_rows], version=w_version,
                      port=cat.lport[w_rows]),
            pid[w_rows],
        )  # fmt: skip
        bound = np.flatnonzero(~unspecified)
        connected = bound[cat.pport[bound] != 0]

        def each_and_any(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Rows keyed by their namespace, then again under NS_ANY (the first namespace's socket wins)."""
            return np.concatenate([rows, rows]), np.concatenate([ns[rows], np.full(rows.size, NS_ANY)])

        c_rows, c_ns = each_and_any(connected)
        self.connected = _Lookup(
            pack_keys(CONNECTED_KEY, c_rows.size, ns=c_ns, proto=cat.proto[c_rows], local=cat.local[c_rows],
                      lport=cat.lport[c_rows], peer=cat.peer[c_rows], pport=cat.pport[c_rows]),
            pid[c_rows],
        )  # fmt: skip
        b_rows, b_ns = each_and_any(bound)
        self.bound = _Lookup(
            pack_keys(BOUND_KEY, b_rows.size, ns=b_ns, proto=cat.proto[b_rows], local=cat.local[b_rows],
                      lport=cat.lport[b_rows]),
            pid[b_rows],
        )  # fmt: skip
        # Each namespace's own addresses, and under NS_ANY the first namespace an address is local in.
        self.local = {n: _Lookup(np.ascontiguousarray(t.local), np.full(t.local.shape[0], n)) for n, t in
                      enumerate(tables)}  # fmt: skip
        l_ns = np.repeat(np.arange(len(tables), dtype=np.int64), [t.local.shape[0] for t in tables])
        local = np.concatenate([t.local for t in tables]) if tables else np.zeros((0, 16), np.uint8)
        self.local[NS_ANY] = _Lookup(local, l_ns)

    def _end(
        self,
        ns: int,
        proto: np.ndarray,
        addr: np.ndarray,
        port: np.ndarray,
        peer: np.ndarray,
        peer_port: np.ndarray,
    ) -> np.ndarray:
        """The pid of the socket at one end of each flow in namespace `ns` (NS_ANY: the first namespace that
        has one): connected to that peer, else bound to that address and port, else listening on every
        address (when the address is local there); -1 for none."""
        n = proto.size
        pid = self.connected.find(
            pack_keys(CONNECTED_KEY, n, ns=ns, proto=proto, local=addr, lport=port, peer=peer, pport=peer_port)
        )
        rest = np.flatnonzero(pid < 0)
        if rest.size:
            pid[rest] = self.bound.find(pack_keys(BOUND_KEY, rest.size, ns=ns, proto=proto[rest],
                                                  local=addr[rest], lport=port[rest]))  # fmt: skip
        rest = rest[pid[rest] < 0]
        if rest.size:
            where = self.local[ns].find(np.ascontiguousarray(addr[rest]))
            rest, where = rest[where >= 0], where[where >= 0]
            if rest.size:
                version = np.where(is_v4(addr[rest]), 4, 6)
                pid[rest] = self.wild.find(
                    pack_keys(WILD_KEY, rest.size, ns=where, proto=proto[rest], version=version, port=port[rest])
                )
        return pid

    def steps(self, flows: TableSnapshot, rows: np.ndarray, ifaces: list[tuple[int, int, int]]) -> list[Step]:
        """Where to look for the sockets of flow rows, best first: (rank, which rows, namespace number).

        ifaces: (bit of the flow's "ifaces" column, namespace number, veth peer's namespace number or -1) of
        each interface captured on; a flow table without that column was captured in the current namespace.
        """
        masks = flows.cols.get("ifaces")
        every = np.ones(rows.size, bool)
        out: list[Step] = []
        for rank, which in ((RANK_CAPTURED, 1), (RANK_PEER, 2)):
            for iface in ifaces:
                ns = iface[which]
                if ns < 0:
                    continue
                seen = every if masks is None else (masks[rows] >> np.uint64(iface[0])) & np.uint64(1) != 0
                out.append((rank, seen, ns))
        if masks is None and not ifaces and self.tables:
            out.append((RANK_CAPTURED, every, 0))
        # One namespace already searched for every row: looking in "any" namespace would find nothing more.
        searched = len(self.tables) == 1 and any(ns == 0 and seen.all() for _, seen, ns in out)
        if self.tables and not searched:
            out += [(RANK_CONNECTED, every, NS_ANY), (RANK_BOUND, every, NS_ANY)]
        return out

    def attribute(
        self, flows: TableSnapshot, rows: np.ndarray, ifaces: list[tuple[int, int, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(pid of side a, pid of side b) of flow rows, -1 where no socket explains that end; and the rank of
        each (how it was found)."""
        f = flows.fields[rows]
        proto = f["proto"].astype(np.int64)
        a, b, aport, bport = f["a"], f["b"], f["aport"].astype(np.int64), f["bport"].astype(np.int64)
        ends = ((a, aport, b, bport), (b, bport, a, aport))
        pid = np.full((rows.size, 2), -1, np.int64)
        rank = np.full((rows.size, 2), NOT_FOUND, np.int64)
        ok = (proto == PROTO_TCP) | (proto == PROTO_UDP)
        for step_rank, seen, ns in self.steps(flows, rows, ifaces):
            for side, (addr, port, peer, peer_port) in enumerate(ends):
                want = ok & seen & (pid[:, side] < 0)
                every = bool(want.all())  # the usual first step: every row, no gathers
                todo = np.flatnonzero(want)
                if not todo.size:
                    continue
                cols = (proto, addr, port, peer, peer_port)
                if not every:
                    cols = (proto[todo], addr[todo], port[todo], peer[todo], peer_port[todo])
                if step_rank == RANK_BOUND:  # connected sockets were looked up already: bound or listening only
                    found = self._bound_anywhere(*cols[:3])
                else:
                    found = self._end(ns, *cols)
                hit = found >= 0
                got = todo[hit]
                pid[got, side] = found[hit]
                rank[got, side] = step_rank
        return pid, rank

    def _bound_anywhere(self, proto: np.ndarray, addr: np.ndarray, port: np.ndarray) -> np.ndarray:
        """A socket bound to the address and port in any namespace, else a listener on every address in the
        first namespace where the address is local."""
        n = proto.size
        pid = self.bound.find(pack_keys(BOUND_KEY, n, ns=NS_ANY, proto=proto, local=addr, lport=port))
        rest = np.flatnonzero(pid < 0)
        if rest.size:
            where = self.local[NS_ANY].find(np.ascontiguousarray(addr[rest]))
            rest, where = rest[where >= 0], where[where >= 0]
            if rest.size:
                version = np.where(is_v4(addr[rest]), 4, 6)
                pid[rest] = self.wild.find(
                    pack_keys(WILD_KEY, rest.size, ns=where, proto=proto[rest], version=version, port=port[rest])
                )
        return pid


Step = tuple[int, np.ndarray, int]  # rank, which rows, namespace number (NS_ANY: any)


def _conns_table(rows: Iterable[Any], local_addrs: Iterable[str], inode: int) -> tuple[NsTable, list[int]]:
    """psutil.net_connections-like rows (type, laddr, raddr, pid) of the current namespace as an NsTable."""
    proto, local, lport, peer, pport, pid = [], [], [], [], [], []
    for c in rows:
        p = _proto(c.type)
        if p is None or c.pid is None or not c.laddr:
            continue
        proto.append(p)
        local.append(address_bytes(c.laddr[0]))
        lport.append(int(c.laddr[1]))
        peer.append(address_bytes(c.raddr[0]) if c.raddr else bytes(16))
        pport.append(int(c.raddr[1]) if c.raddr else 0)
        pid.append(int(c.pid))
    n = len(proto)

    def addrs(values: list[bytes]) -> np.ndarray:
        return np.frombuffer(b"".join(values), np.uint8).reshape(len(values), 16)

    sockets = SocketRows(
        np.array(proto, np.int64),
        addrs(local),
        np.array(lport, np.int64),
        addrs(peer),
        np.array(pport, np.int64),
        np.zeros(n, np.int64),
    )
    here = addrs(sorted({address_bytes(a) for a in local_addrs}))
    return NsTable("", inode, sockets, np.array(pid, np.int64), here), pid


def _procfs_tables() -> list[NsTable]:
    """Every namespace's sockets held by a process, read from /proc (the current namespace first)."""
    found = scan()
    tables = []
    for ns in found.namespaces:
        if ns.pid is None:
            continue  # a named namespace no process is in: no socket there has an owner
        where: int | str = "self" if ns.label == "" else ns.pid
        try:
            rows = read_sockets(where)
            local = read_local_addresses(where)
        except OSError:
            continue  # every process in it exited meanwhile
        pid = found.pids_of(rows.inode)
        keep = np.flatnonzero(pid >= 0)
        tables.append(NsTable(ns.label, ns.inode, rows.take(keep), pid[keep], local))
    return tables


def _own_netns() -> int:
    return os.stat("/proc/self/ns/net").st_ino


@dataclass
class _Acc:
    pid: int | None
    name: str
    user: str
    netns: str = ""
    container: str = ""
    counts: np.ndarray = field(default_factory=lambda: np.zeros(4, np.int64))  # rx_b, tx_b, rx_p, tx_p
    exited: bool = False

    def frozen(self) -> ProcessTotals:
        rb, tb, rp, tp = (int(v) for v in self.counts)
        return ProcessTotals(self.pid, self.name, self.user, rb, tb, rp, tp, self.exited, self.netns, self.container)


class ProcessMapper:
    """Attributes flows to processes on its own thread (start() / close()); readers take `result`.

    By default every namespace's sockets are read from /proc; `conns` (psutil.net_connections-like rows)
    and `local_addrs` give the current namespace's instead (tests, benches), `tables` every namespace's.
    """

    def __init__(
        self,
        snapshots: Callable[[], Snapshot] | None = None,
        *,
        conns: Conns | None = None,
        info: Callable[[int], tuple[str, str] | None] = _psutil_info,
        local_addrs: Callable[[], Iterable[str]] = lambda: (),
        alive: Callable[[int], bool] = psutil.pid_exists,
        refresh_s: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        tables: Tables | None = None,
        container: Callable[[int], str] | None = None,
    ) -> None:
        self.snapshots = snapshots
        self.conns, self.info, self.local_addrs, self.alive = conns, info, local_addrs, alive
        self.tables: Tables = tables or (_procfs_tables if conns is None else self._given_conns)
        # The container of a given table's fake pids is none; of the pids read from /proc, their cgroup's.
        self.container = container or (container_of_pid if conns is None and tables is None else lambda pid: "")
        self.refresh_s = refresh_s
        self.clock = clock
        self.result: ProcessTable = EMPTY
        self.error = ""
        self.errors = 0
        self._sockets = _Sockets([])
        self._names: dict[int, tuple[str, str]] = {}
        self._places: dict[int, tuple[str, str]] = {}  # pid → (network namespace, container)
        self._accs: dict[int | None, _Acc] = {None: _Acc(None, "unknown", "")}
        self._own = np.zeros((0, 2), np.int64)  # per row of the last snapshot: pid of side a, of side b
        self._rank = np.zeros((0, 2), np.int64)  # how each was found (RANK_*)
        # Which socket tables (and captured interfaces) a row was last looked up in: a row no socket explained
        # is looked up again only once they change, so a flood's unexplained flows cost one lookup each.
        self._tried = np.zeros(0, np.int64)
        self._gen = 0
        self._ifaces_seen: tuple[tuple[int, int, int], ...] = ()
        self._tables_sig = b""
        self._last: Snapshot | None = None
        self._refreshed = -1e18
        self._judged = -1e18  # the refresh whose worth update() has judged last
        self._misses = 0  # refreshes in a row that explained no flow
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _given_conns(self) -> list[NsTable]:
        assert self.conns is not None
        table, _ = _conns_table(self.conns(), self.local_addrs(), _own_netns())
        return [table]

    # --- the thread
    def start(self) -> None:
        """Start the mapping thread (needs `snapshots`)."""
        self._thread = NamedThread(target=self._run, name="retrotap-processes", daemon=True)
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
                if poked or self.clock() - self._refreshed >= self._gap(self.refresh_s):
                    self.refresh()
                self.update(self.snapshots())
            except Exception as e:  # a bug or an unreadable /proc: published and counted, never silent
                self._failed(f"{type(e).__name__}: {e}")
            # Big flow tables (a flood) make an update dear: update less often rather than take a core.
            pause = max(POLL_SECONDS, (time.thread_time() - started) * PACE_FACTOR)

    # --- the socket tables
    def _gap(self, base: float) -> float:
        """Seconds from one refresh to the next: `base`, doubled for each refresh in a row that explained no
        flow, at most MAX_REFRESH_SECONDS (or `base` when larger)."""
        return min(base * 2 ** min(self._misses, 16), max(base, MAX_REFRESH_SECONDS))

    def refresh(self) -> None:
        """Read the socket tables, the names of new pids, and which counted processes exited."""
        try:
            tables = self.tables()
        except (psutil.Error, OSError) as e:  # keep the last table; say why
            self._failed(f"socket table: {e}")
            return
        self.error = ""
        kept = []
        for t in tables:
            unknown = []
            for pid in np.unique(t.pid).tolist():  # once per process, not per socket
                if pid not in self._names:
                    got = self.info(pid)
                    if got is None:
                        unknown.append(pid)
                        continue
                    self._names[pid] = got
                if pid not in self._places:
                    self._places[pid] = (t.label, self.container(pid))
            if unknown:
                keep = np.flatnonzero(~np.isin(t.pid, unknown))
                t = replace(t, sockets=t.sockets.take(keep), pid=t.pid[keep])
            kept.append(t)
        self._sockets = _Sockets(kept)
        sig = hashlib.blake2b(digest_size=16)
        for t in kept:
            sig.update(f"{t.label}\0{t.inode}\0".encode())
            for col in (*(getattr(t.sockets, name) for name in SOCKET_COLUMNS), t.pid, t.local):
                sig.update(np.ascontiguousarray(col).tobytes())
        if sig.digest() != self._tables_sig:
            self._tables_sig = sig.digest()
            self._gen += 1
        present = set(np.concatenate([t.pid for t in kept]).tolist()) if kept else set()
        for counted, acc in self._accs.items():
            if counted is not None and not acc.exited and counted not in present and not self.alive(counted):
                acc.exited = True
        for gone in [p for p in self._names if p not in present and p not in self._accs]:
            del self._names[gone]  # never counted, gone from the table: a reused pid gets a fresh name
            self._places.pop(gone, None)
        self._refreshed = self.clock()

    def _ifaces(self, snap: Snapshot) -> list[tuple[int, int, int]]:
        """(bit in the flows' "ifaces" column, namespace number, veth peer's namespace number or -1) of each
        interface the snapshot's flows were captured on, in this refresh's numbering."""
        status = {i.name: i for i in snap.interfaces}
        ns_of = self._sockets.ns_of_inode
        out = []
        for bit, label in enumerate(snap.flow_ifaces):
            iface = status.get(label)
            if iface is None:
                continue
            own = ns_of.get(iface.netns, -1) if iface.netns else 0
            peer = ns_of.get(iface.peer_netns, -1) if iface.peer_netns else -1
            out.append((bit, own, peer))
        return out

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
        rank = np.full((n, 2), NOT_FOUND, np.int64)
        tried = np.full(n, -1, np.int64)
        if before is None:
            grown_b, grown_p = flows.cols["bytes"], flows.cols["packets"]
        else:
            grown_b, match = table_growth(flows, before, "bytes")
            grown_p, _ = table_growth(flows, before, "packets", match=match)
            kept = match >= 0
            own[kept] = self._own[match[kept]]
            rank[kept] = self._rank[match[kept]]
            tried[kept] = self._tried[match[kept]]
        active = grown_p.sum(axis=1) > 0 if n else np.zeros(0, bool)
        unseen = np.flatnonzero(own[:, 0] == UNSEEN)
        ifaces = self._ifaces(snap)
        self._note_ifaces(ifaces)
        if unseen.size:
            own[unseen], rank[unseen] = self._sockets.attribute(flows, unseen, ifaces)
            tried[unseen] = self._gen
            if (own[unseen] < 0).all(axis=1).any() and self.clock() - self._refreshed >= self._gap(MIN_POKE_GAP):
                gen = self._gen
                self.refresh()  # new flows no socket explains yet: the socket may still be there
                ifaces = self._ifaces(snap)
                self._note_ifaces(ifaces)
                if self._gen != gen:  # other sockets now: the new flows are looked up again
                    own[unseen], rank[unseen] = UNSEEN, NOT_FOUND
        todo = np.flatnonzero(active & (own < 0).all(axis=1) & (tried < self._gen))
        if todo.size:
            own[todo], rank[todo] = self._sockets.attribute(flows, todo, ifaces)
            tried[todo] = self._gen
        if self._refreshed != self._judged:  # a refresh since the last update: did any flow get its process?
            self._judged = self._refreshed
            looked = np.concatenate([unseen, todo])
            self._misses = 0 if (own[looked] >= 0).any() else self._misses + 1
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
        self._rank = rank
        self._tried = tried
        self._last = snap
        self.result = self._publish(snap, own, rank)
        return self.result

    def _note_ifaces(self, ifaces: list[tuple[int, int, int]]) -> None:
        """Captured interfaces (or their namespace numbers) changed: every unexplained row is looked up again."""
        seen = tuple(ifaces)
        if seen != self._ifaces_seen:
            self._gen += 1
            self._ifaces_seen = seen

    def _acc(self, pid: int) -> _Acc:
        acc = self._accs.get(pid)
        if acc is None:
            name, user = self._names.get(pid, ("?", ""))
            netns, container = self._places.get(pid, ("", ""))
            acc = self._accs[pid] = _Acc(pid, name, user, netns, container)
        return acc

    def _failed(self, error: str) -> None:
        self.error = error
        self.errors += 1
        self.result = replace(self.result, error=self.error, errors=self.errors)

    def _name(self, pid: int) -> str:
        acc = self._accs.get(pid)
        return acc.name if acc is not None else self._names.get(pid, ("?", ""))[0]

    def _place(self, pid: int) -> tuple[str, str]:
        acc = self._accs.get(pid)
        return (acc.netns, acc.container) if acc is not None else self._places.get(pid, ("", ""))

    def _publish(self, snap: Snapshot, own: np.ndarray, rank: np.ndarray) -> ProcessTable:
        flows = snap.flows
        # A flow's process: the end found in the best place (its capture namespace first), side a on a tie.
        side = np.where((own[:, 1] >= 0) & ((own[:, 0] < 0) | (rank[:, 1] < rank[:, 0])), 1, 0)
        pid = own[np.arange(own.shape[0]), side]
        rows = np.flatnonzero(pid >= 0)
        flow_owners = FlowOwners.of(flows.keys[rows], pid[rows], self._name, self._place)
        procs = tuple(acc.frozen() for pid, acc in self._accs.items() if pid is not None)
        return ProcessTable(snap.seq, snap.time, procs, self._accs[None].frozen(), flow_owners, self.error, self.errors)


def process_comment(pid: int, name: str, netns: str = "", container: str = "") -> str:
    """A packet's pcapng comment naming its flow's local process (tshark shows it as frame.comment), with its
    network namespace and container when it is not in retrotap's own / in none."""
    where = (f" netns {netns}" if netns else "") + (f" container {container}" if container else "")
    return f"process: {pid} {name}{where}"


class PacketOwners:
    """The local process of each packet's flow, for whole columns of packets (pcapng saves): the owners'
    flow keys in a compiled index, and one comment text per process."""

    def __init__(
        self,
        keys: np.ndarray,
        pid: np.ndarray,
        name_of: Callable[[int], str],
        place_of: Callable[[int], tuple[str, str]] | None = None,
    ) -> None:
        """keys: (n, FLOW_KEY.itemsize) uint8 with each key's pid; name_of(i) is the name of row i's process,
        place_of(i) its namespace and container. A key given twice keeps its first owner."""
        pid = np.asarray(pid, np.int64)
        who, first, inv = np.unique(pid, return_index=True, return_inverse=True)
        self.texts = tuple(
            process_comment(p, name_of(i), *(place_of(i) if place_of is not None else ("", "")))
            for p, i in zip(who.tolist(), first.tolist(), strict=True)
        )
        self._lookup = _Lookup(np.ascontiguousarray(keys, np.uint8).reshape(-1, FLOW_KEY_WIDTH), inv.ravel())

    @classmethod
    def of(cls, table: ProcessTable) -> PacketOwners:
        """The attributed flows of a published process table."""
        owners = table.flow_owners
        if isinstance(owners, FlowOwners):
            return cls(
                owners.flow_keys,
                owners.pid,
                lambda i: owners.names[int(owners.name_id[i])],
                lambda i: owners.places[int(owners.place_id[i])],
            )
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
