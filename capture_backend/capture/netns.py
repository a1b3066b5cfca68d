"""Network namespaces: `NETNS:IFACE` interface specs, and running a function in a thread that has entered
a namespace (the sockets it opens stay bound there; the process itself never changes namespace)."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from capture_backend.capture.threads import NamedThread
from capture_backend.contract import UserError

T = TypeVar("T")

NETNS_DIR = "/var/run/netns"  # where `ip netns add` names namespaces
CLONE_NEWNET = 0x40000000
ENTER_TIMEOUT_S = 10.0


class NamespaceError(UserError, LookupError):
    """A network namespace that does not exist or cannot be entered."""


@dataclass(frozen=True)
class Netns:
    """A network namespace: as the user named it (`lab`, `pid:1234`, `1234`) and the file that pins it."""

    label: str
    path: str


@dataclass(frozen=True)
class IfaceSpec:
    """An interface to capture on: its name inside its namespace, and the namespace (None: the current one)."""

    ifname: str
    netns: str | None = None

    @property
    def label(self) -> str:
        """How the interface shows everywhere: `IFACE`, or `NETNS:IFACE` in another namespace."""
        return f"{self.netns}:{self.ifname}" if self.netns else self.ifname


def parse_iface(text: str) -> IfaceSpec:
    """`eth0`, `NETNS:eth0`, `pid:PID:eth0` or `PID:eth0` → IfaceSpec; NamespaceError when a part is empty."""
    if ":" not in text:
        return IfaceSpec(text)
    head, _, rest = text.partition(":")
    if head == "pid":
        pid, sep, ifname = rest.partition(":")
        netns = f"pid:{pid}"
        if not sep or not pid:
            raise NamespaceError(f"-i {text!r}: write pid:PID:IFACE")
    else:
        netns, ifname = head, rest
    if not netns or not ifname:
        raise NamespaceError(f"-i {text!r}: write IFACE or NETNS:IFACE")
    return IfaceSpec(ifname, netns)


def named_namespaces() -> list[str]:
    """The names under /var/run/netns, sorted."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except OSError:
        return []


def resolve(label: str) -> Netns:
    """The namespace file of `NAME`, `pid:PID` or `PID`; NamespaceError naming what exists when there is none."""
    pid = label.removeprefix("pid:")
    if pid.isdigit():
        path = f"/proc/{int(pid)}/ns/net"
        if not os.path.exists(path):
            raise NamespaceError(f"unknown network namespace {label!r}: no process {int(pid)}")
        return Netns(label, path)
    path = os.path.join(NETNS_DIR, label)
    if label.startswith("pid:") or "/" in label or label in (".", "..") or not os.path.isfile(path):
        names = ", ".join(named_namespaces()) or "none"
        raise NamespaceError(f"unknown network namespace {label!r} (named namespaces: {names}; or pid:PID)")
    return Netns(label, path)


def _setns(path: str) -> None:
    """Move the calling thread into the network namespace pinned by `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns = getattr(os, "setns", None)  # Python 3.12+
        if setns is not None:
            setns(fd, CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def _cannot_enter(netns: Netns, e: OSError) -> NamespaceError:
    why = "needs CAP_SYS_ADMIN" if e.errno == errno.EPERM else (e.strerror or str(e))
    return NamespaceError(f"cannot enter network namespace {netns.label!r}: {why}")


def run_in(netns: Netns | None, fn: Callable[[], T], timeout: float = ENTER_TIMEOUT_S) -> T:
    """`fn()` in the current thread (netns None), or in a short-lived thread that entered `netns` first.

    Whatever `fn` raises is raised here; failing to enter is a NamespaceError (one line).
    """
    if netns is None:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            _setns(netns.path)
        except OSError as e:
            error.append(_cannot_enter(netns, e))
            return
        try:
            result.append(fn())
        except BaseException as e:  # raised again in the caller's thread
            error.append(e)

    thread = NamedThread(target=target, name=f"retrotap-netns-{netns.label}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise NamespaceError(f"network namespace {netns.label!r}: no answer within {timeout:g} s")
    if error:
        raise error[0]
    return result[0]


class NetnsWorker:
    """A thread that entered a namespace once and stays there, running calls one at a time.

    pyroute2 gives each thread its own netlink socket, opened by the thread that first uses it: a socket
    opened here belongs to the namespace, and keeps working after root is dropped (-Z).
    """

    def __init__(self, netns: Netns) -> None:
        self.netns = netns
        # One worker thread, kept for the pool's life: it enters the namespace with the first call.
        self._pool = ThreadPoolExecutor(1, f"retrotap-netns-{netns.label}")
        try:
            self._pool.submit(_setns, netns.path).result()
        except OSError as e:
            self._pool.shutdown()
            raise _cannot_enter(netns, e) from None

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` on the namespace's thread; what it raises is raised here."""
        return self._pool.submit(fn).result()

    def close(self) -> None:
        """End the thread."""
        self._pool.shutdown(wait=True)
