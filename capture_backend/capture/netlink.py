"""Link state and counters from rtnetlink (pyroute2), never from /proc or /sys."""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

if TYPE_CHECKING:  # pyroute2 takes ~0.1 s to import: only the commands that capture pay for it
    from pyroute2 import IPRoute

from capture_backend.capture.block import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW
from capture_backend.capture.netns import NamespaceError, Netns, NetnsWorker, resolve
from capture_backend.contract import LinkInfo as LinkInfo
from capture_backend.contract import LinkStats as LinkStats
from capture_backend.contract import UserError

T = TypeVar("T")

IFF_UP = 0x1
IFF_RUNNING = 0x40

_LINKTYPE_BY_ARPHRD = {
    1: LINKTYPE_ETHERNET,  # ARPHRD_ETHER
    772: LINKTYPE_ETHERNET,  # ARPHRD_LOOPBACK
    0xFFFE: LINKTYPE_RAW,  # ARPHRD_NONE (tun, wireguard)
    768: LINKTYPE_RAW,  # ARPHRD_TUNNEL (ipip)
    769: LINKTYPE_RAW,  # ARPHRD_TUNNEL6
    776: LINKTYPE_RAW,  # ARPHRD_SIT
    778: LINKTYPE_RAW,  # ARPHRD_IPGRE
    823: LINKTYPE_RAW,  # ARPHRD_IP6GRE
}


class InterfaceError(UserError, LookupError):
    """An interface that does not exist, or no default route to pick one from."""


def linktype_for_arphrd(arphrd: int) -> int:
    """The pcap link type a capture on a device of this ARPHRD type yields (113: cooked socket)."""
    return _LINKTYPE_BY_ARPHRD.get(arphrd, LINKTYPE_LINUX_SLL)


def _link_info(msg: Any) -> LinkInfo:
    """Convert one RTM_NEWLINK message."""
    raw = msg.get_attr("IFLA_STATS64") or msg.get_attr("IFLA_STATS") or {}
    stats = LinkStats(
        rx_bytes=raw.get("rx_bytes", 0),
        tx_bytes=raw.get("tx_bytes", 0),
        rx_packets=raw.get("rx_packets", 0),
        tx_packets=raw.get("tx_packets", 0),
        rx_errors=raw.get("rx_errors", 0),
        tx_errors=raw.get("tx_errors", 0),
        rx_dropped=raw.get("rx_dropped", 0),
        tx_dropped=raw.get("tx_dropped", 0),
        rx_missed=raw.get("rx_missed_errors", 0),
        rx_fifo=raw.get("rx_fifo_errors", 0),
        tx_fifo=raw.get("tx_fifo_errors", 0),
    )
    flags = int(msg["flags"])
    return LinkInfo(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        arphrd=int(msg["ifi_type"]),
        up=bool(flags & IFF_UP),
        running=bool(flags & IFF_RUNNING),
        operstate=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"),
        stats=stats,
    )


class LinkMonitor:
    """Reads link state and counters over rtnetlink, in ``netns`` if given (a name, `pid:PID` or a Netns).

    In another namespace every call runs on a thread that stays in it (NetnsWorker), so the socket belongs
    there and keeps working after root is dropped.
    """

    def __init__(self, netns: str | Netns | None = None) -> None:
        from pyroute2 import IPRoute

        self._worker: NetnsWorker | None = None
        self._closed = False
        self.netns = netns.label if isinstance(netns, Netns) else netns
        if netns:
            try:
                self._worker = NetnsWorker(netns if isinstance(netns, Netns) else resolve(netns))
            except NamespaceError as e:
                raise InterfaceError(str(e)) from None
        self._ipr = self._call(IPRoute)

    def _call(self, fn: Callable[[], T]) -> T:
        return fn() if self._worker is None else self._worker.call(fn)

    def links(self) -> dict[str, LinkInfo]:
        """Every link, by name (one dump)."""
        infos = self._call(lambda: [_link_info(msg) for msg in self._ipr.get_links()])
        return {info.name: info for info in infos}

    def get(self, name: str) -> LinkInfo:
        """The link called ``name``; InterfaceError listing the existing ones if there is none."""
        from pyroute2.netlink.exceptions import NetlinkError

        if name and len(name) < 16 and "/" not in name:
            try:
                return self._call(lambda: _link_info(self._ipr.link("get", ifname=name)[0]))
            except NetlinkError:
                pass
        names = ", ".join(sorted(self.links(), key=str))
        where = f" in network namespace {self.netns!r}" if self.netns else ""
        raise InterfaceError(f"unknown interface {name!r}{where} (interfaces: {names})")

    def close(self) -> None:
        """Close the netlink socket (and leave the namespace's thread); again: nothing."""
        if self._closed:
            return
        self._closed = True
        self._call(self._ipr.close)
        if self._worker is not None:
            self._worker.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _default_oif(ipr: IPRoute, family: int) -> int | None:
    """Output interface index of the first default route of ``family`` (multipath: first hop)."""
    for route in ipr.get_default_routes(family=family):
        oif = route.get_attr("RTA_OIF")
        if oif:
            return int(oif)
        for hop in route.get_attr("RTA_MULTIPATH") or ():
            if hop.get("oif"):
                return int(hop["oif"])
    return None


def default_interface(ipr: IPRoute | None = None) -> str:
    """Name of the IPv4 default route's interface, else IPv6's; InterfaceError if neither."""
    own = ipr is None
    if ipr is None:
        from pyroute2 import IPRoute

        ipr = IPRoute()
    nl: IPRoute = ipr
    try:
        for family in (socket.AF_INET, socket.AF_INET6):
            oif = _default_oif(nl, family)
            if oif is not None:
                links = nl.link("get", index=oif)
                if links:
                    return str(links[0].get_attr("IFLA_IFNAME"))
    finally:
        if own:
            nl.close()
    raise InterfaceError("no default route; choose an interface with -i")
