"""Every network namespace processes are in, and each one's TCP/UDP sockets with the pid that holds them.

One pass over /proc finds each process's network namespace (the inode of /proc/PID/ns/net) and the socket
inodes of its open files (/proc/PID/fd links). A namespace is named by its `ip netns` name when a file
under /var/run/netns pins the same inode, else `pid:<lowest pid in it>`; the current one is "". Each
namespace's socket table is read from /proc/<a pid in it>/net/{tcp,tcp6,udp,udp6} (rows give the socket's
inode), its local addresses from net/fib_trie and net/if_inet6. The rows are turned into columns with a
few whole-text operations (a regular expression, one `bytes.fromhex` per column), never a step per field.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from capture_backend.capture.netns import NETNS_DIR, named_namespaces
from capture_backend.contract import IPPROTO_TCP, IPPROTO_UDP, V4_MAPPED

# (file under /proc/PID/net, IP protocol, address hex digits)
TABLES = (("tcp", IPPROTO_TCP, 8), ("tcp6", IPPROTO_TCP, 32), ("udp", IPPROTO_UDP, 8), ("udp6", IPPROTO_UDP, 32))
# sl: local:port remote:port st tx:rx tr:when retrnsmt uid timeout inode
ROW = re.compile(
    rb"^\s*\d+: ([0-9A-Fa-f]+):([0-9A-Fa-f]{4}) ([0-9A-Fa-f]+):([0-9A-Fa-f]{4}) [0-9A-Fa-f]{2} "
    rb"\S+ \S+ \S+ +\d+ +\d+ (\d+)",
    re.M,
)
FIB_LOCAL = re.compile(rb"\|-- ([0-9.]+)\n\s+/32 host LOCAL")
INET6 = re.compile(rb"^([0-9a-f]{32}) ", re.M)
SOCKET_LINK = "socket:["
READ_SIZE = 1 << 20
# A /proc/net file (a seq_file) read stops short of the size asked only at its end, or before a row that does
# not fit: a read shorter than this by more than a row's length is the end.
ROW_ROOM = 4096
_V4_PREFIX = np.frombuffer(V4_MAPPED, np.uint8)


@dataclass(frozen=True)
class NetnsProcs:
    """A network namespace and the processes in it: `label` "" for the current one, else as `-i` takes it."""

    label: str
    inode: int
    pids: tuple[int, ...]  # sorted
    path: str  # a file that pins it

    @property
    def pid(self) -> int | None:
        """The lowest pid in it (None: no process, a named namespace only)."""
        return self.pids[0] if self.pids else None


@dataclass
class ProcScan:
    """One pass over /proc: the namespaces, and which pid holds each socket inode."""

    namespaces: list[NetnsProcs]
    socket_inode: np.ndarray  # int64, sorted
    socket_pid: np.ndarray  # int64, the lowest pid holding that socket
    pid_netns: dict[int, int] = field(default_factory=dict)  # pid → namespace inode

    def pids_of(self, inodes: np.ndarray) -> np.ndarray:
        """The pid holding each socket inode, -1 when no process does (or it is hidden from us)."""
        out = np.full(inodes.size, -1, np.int64)
        if self.socket_inode.size and inodes.size:
            pos = np.clip(np.searchsorted(self.socket_inode, inodes), 0, self.socket_inode.size - 1)
            hit = self.socket_inode[pos] == inodes
            out[hit] = self.socket_pid[pos[hit]]
        return out

    def by_label(self) -> dict[str, NetnsProcs]:
        return {ns.label: ns for ns in self.namespaces}


def _pids() -> list[int]:
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())


def scan(sockets: bool = True, processes: bool = True) -> ProcScan:
    """The current namespace first, then every named one, then those only processes are in; with `sockets`,
    the socket inodes each process holds (an fd walk: one readlink per open file)."""
    own = os.stat("/proc/self/ns/net").st_ino
    members: dict[int, list[int]] = {own: []}
    pid_netns: dict[int, int] = {}
    inodes: list[int] = []
    holders: list[int] = []
    for pid in _pids() if processes else ():
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue  # exited, or not ours to see
        members.setdefault(ino, []).append(pid)
        pid_netns[pid] = ino
        if not sockets:
            continue
        fd_dir = f"/proc/{pid}/fd/"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd_dir + fd)
            except OSError:
                continue
            if link.startswith(SOCKET_LINK):
                inodes.append(int(link[8:-1]))
                holders.append(pid)
    names: dict[int, tuple[str, str]] = {}
    for name in named_namespaces():
        path = os.path.join(NETNS_DIR, name)
        try:
            ino = os.stat(path).st_ino
        except OSError:
            continue
        names.setdefault(ino, (name, path))
        members.setdefault(ino, [])
    found = []
    for ino, pids in members.items():
        if ino == own:
            label, path = "", "/proc/self/ns/net"
        elif ino in names:
            label, path = names[ino]
        else:
            label, path = f"pid:{pids[0]}", f"/proc/{pids[0]}/ns/net"
        found.append(NetnsProcs(label, ino, tuple(pids), path))
    order = {ino: n for n, ino in enumerate([own, *names])}
    found.sort(key=lambda ns: (order.get(ns.inode, len(order)), ns.pids[:1]))
    inode_arr, pid_arr = np.array(inodes, np.int64), np.array(holders, np.int64)
    if inode_arr.size:
        order_idx = np.lexsort((pid_arr, inode_arr))
        inode_arr, pid_arr = inode_arr[order_idx], pid_arr[order_idx]
        first = np.r_[True, inode_arr[1:] != inode_arr[:-1]]
        inode_arr, pid_arr = inode_arr[first], pid_arr[first]
    return ProcScan(found, inode_arr, pid_arr, pid_netns)


def read_proc(path: str) -> bytes:
    """A /proc/net file, in as few reads as it takes: each read walks the kernel's whole table (for TCP, every
    bucket of the established hash), so the empty read that usually says "end of file" is left out."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts = []
        while True:
            chunk = os.read(fd, READ_SIZE)
            parts.append(chunk)
            if len(chunk) < READ_SIZE - ROW_ROOM:
                return b"".join(parts)
    finally:
        os.close(fd)


def _addresses(hexes: list[bytes], digits: int) -> np.ndarray:
    """/proc/net addresses (32-bit words in host order, as hex) → (n, 16) bytes, IPv4 as IPv4-mapped."""
    n = len(hexes)
    raw = np.frombuffer(bytes.fromhex(b"".join(hexes).decode()), np.uint8).reshape(n, digits // 2)
    if sys.byteorder == "little":
        raw = raw.reshape(n, -1, 4)[:, :, ::-1].reshape(n, digits // 2)
    if digits == 8:
        return np.concatenate([np.broadcast_to(_V4_PREFIX, (n, 12)), raw], axis=1)
    return np.ascontiguousarray(raw)


def _ports(hexes: list[bytes]) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(b"".join(hexes).decode()), ">u2").astype(np.int64)


@dataclass(frozen=True)
class SocketRows:
    """TCP and UDP sockets of one namespace, as columns (listeners have a zero peer)."""

    proto: np.ndarray  # int64
    local: np.ndarray  # (n, 16) uint8
    lport: np.ndarray  # int64
    peer: np.ndarray  # (n, 16) uint8
    pport: np.ndarray  # int64
    inode: np.ndarray  # int64

    def __len__(self) -> int:
        return int(self.proto.size)

    def take(self, rows: np.ndarray) -> SocketRows:
        """Only these rows."""
        return SocketRows(*(getattr(self, name)[rows] for name in COLUMNS))


COLUMNS = ("proto", "local", "lport", "peer", "pport", "inode")


def parse_table(text: bytes, proto: int, digits: int) -> SocketRows:
    """One /proc/net/{tcp,tcp6,udp,udp6} file's rows."""
    rows = ROW.findall(text)
    rows = [r for r in rows if len(r[0]) == digits]
    if not rows:
        z = np.zeros(0, np.int64)
        return SocketRows(z, np.zeros((0, 16), np.uint8), z, np.zeros((0, 16), np.uint8), z, z)
    local, lport, peer, pport, inode = zip(*rows, strict=True)
    return SocketRows(
        np.full(len(rows), proto, np.int64),
        _addresses(list(local), digits),
        _ports(list(lport)),
        _addresses(list(peer), digits),
        _ports(list(pport)),
        np.array(inode, np.int64),
    )


def concat(parts: Iterable[SocketRows]) -> SocketRows:
    """Several tables' rows as one."""
    got = list(parts)
    return SocketRows(*(np.concatenate([getattr(p, name) for p in got]) for name in COLUMNS))


def read_sockets(pid: int | str) -> SocketRows:
    """The TCP and UDP sockets of the namespace process `pid` ("self": ours) is in; OSError if unreadable."""
    parts = []
    for name, proto, digits in TABLES:
        try:
            parts.append(parse_table(read_proc(f"/proc/{pid}/net/{name}"), proto, digits))
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
    return concat(parts) if parts else parse_table(b"", IPPROTO_TCP, 8)


def parse_local_addresses(fib_trie: bytes, if_inet6: bytes) -> np.ndarray:
    """The local addresses of a namespace from its net/fib_trie (IPv4 `/32 host LOCAL`) and net/if_inet6."""
    v4 = sorted(set(FIB_LOCAL.findall(fib_trie)))
    v6 = INET6.findall(if_inet6)
    out = np.zeros((len(v4) + len(v6), 16), np.uint8)
    if v4:
        out[: len(v4), :12] = _V4_PREFIX
        out[: len(v4), 12:] = np.array([[int(x) for x in a.split(b".")] for a in v4], np.uint8)
    if v6:
        out[len(v4) :] = np.frombuffer(bytes.fromhex(b"".join(v6).decode()), np.uint8).reshape(len(v6), 16)
    return out


def read_local_addresses(pid: int | str) -> np.ndarray:
    """The local addresses of the namespace process `pid` is in, as (n, 16) bytes."""
    texts = []
    for name in ("fib_trie", "if_inet6"):
        try:
            texts.append(read_proc(f"/proc/{pid}/net/{name}"))
        except FileNotFoundError:
            texts.append(b"")
    return parse_local_addresses(*texts)
