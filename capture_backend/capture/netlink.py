"""Link state and counters from rtnetlink (pyroute2), never from /proc or /sys."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

if TYPE_CHECKING:  # pyroute2 takes ~0.1 s to import: only the commands that capture pay for it
    from pyroute2 import IPRoute

from capture_backend.capture.block import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW
from capture_backend.capture.containers import container_of_pid
from capture_backend.capture.netns import (
    NamespaceError,
    Netns,
    NetnsWorker,
    resolve,
    run_in,
)
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

    def messages(self) -> list[Any]:
        """Every link's RTM_NEWLINK message (one dump)."""
        return self._call(lambda: list(self._ipr.get_links()))

    def netnsid(self, path: str) -> int | None:
        """The id this namespace knows the namespace pinned by `path` under (RTM_GETNSID), None if none."""
        from pyroute2.netlink.exceptions import NetlinkError

        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            got = self._call(lambda: self._ipr.get_netnsid(fd=fd))
        except NetlinkError:
            return None
        finally:
            os.close(fd)
        nsid = (got or {}).get("nsid")
        return int(nsid) if nsid is not None and nsid < 0x80000000 else None

    def veth_peer_netns(self, name: str, own: int) -> int:
        """The inode of the namespace at the other end of veth `name` (`own`: this namespace's inode); 0 when
        `name` is not a veth or the peer's namespace is not found (no process and no name pins it)."""
        from pyroute2.netlink.exceptions import NetlinkError

        from capture_backend.capture.sockets import scan

        try:
            msg = next((m for m in self.messages() if m.get_attr("IFLA_IFNAME") == name), None)
        except NetlinkError:
            return 0
        if msg is None or _kind(msg) != "veth" or not msg.get_attr("IFLA_LINK"):
            return 0
        nsid = msg.get_attr("IFLA_LINK_NETNSID")
        if nsid is None:
            return own
        for ns in scan(sockets=False).namespaces:
            if ns.inode == own:
                continue
            try:
                if self.netnsid(ns.path) == int(nsid):
                    return ns.inode
            except OSError:
                continue  # gone meanwhile
        return 0

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


def netns_interfaces(netns: str, names: list[str]) -> list[str]:
    """`--netns NAME|PID`: the `-i` names taken in that namespace (`NETNS:IFACE` ones stay as given), or its
    default route's interface when there are none; one line (UserError) when the namespace does not exist."""
    label = f"pid:{netns}" if netns.isdigit() else netns
    try:
        ns = resolve(label)
    except NamespaceError as e:
        raise NamespaceError(f"--netns: {e}") from None
    out = [name if ":" in name else f"{label}:{name}" for name in names]
    if not out:
        try:
            out = [f"{label}:{run_in(ns, default_interface)}"]
        except InterfaceError:
            where = f"network namespace {label!r}"
            raise InterfaceError(f"no default route in {where}; choose an interface with -i") from None
    return out


ARPHRD_NAMES = {1: "ether", 772: "loopback", 0xFFFE: "none", 768: "ipip", 769: "tunnel6", 776: "sit", 778: "gre"}
ARPHRD_NAMES |= {823: "ip6gre", 801: "ieee802.11", 803: "ieee802.11/radiotap", 65535: "void", 280: "can"}


@dataclass(frozen=True)
class Namespace:
    """A network namespace found on the machine: `label` "" for the current one, else as `-i` takes it."""

    label: str
    path: str
    process: str = ""  # for a namespace found only through a process: its name
    container: str = ""  # the container (or pod) its processes are in


@dataclass(frozen=True)
class ListedLink:
    """One interface of one namespace, and for a veth the interface at its other end."""

    namespace: str
    name: str
    index: int
    state: str
    linktype: str
    kind: str
    process: str = ""
    container: str = ""
    peer_namespace: str | None = None
    peer: str | None = None
    unnamed_peer: str = ""  # a peer in a namespace that has neither a name nor a process

    @property
    def spec(self) -> str:
        """What `-i` takes to capture on it."""
        return f"{self.namespace}:{self.name}" if self.namespace else self.name

    @property
    def peer_spec(self) -> str | None:
        """The peer as `-i` takes it."""
        if self.peer is None:
            return None
        return f"{self.peer_namespace}:{self.peer}" if self.peer_namespace else self.peer


def namespaces(processes: bool = True) -> list[Namespace]:
    """The current namespace, every named one (/var/run/netns), then those only processes are in (one entry
    per namespace: the lowest pid's), deduplicated by the namespace's inode; each other namespace with the
    container its processes are in, when they are in one."""
    from capture_backend.capture.sockets import scan

    found: list[Namespace] = []
    for ns in scan(sockets=False, processes=processes).namespaces:
        comm = ""
        if ns.label.startswith("pid:"):
            try:
                with open(f"/proc/{ns.pids[0]}/comm", encoding="utf-8", errors="replace") as fh:
                    comm = fh.read().strip()
            except OSError:
                continue  # gone meanwhile
        container = namespace_container(ns.pids) if ns.label else ""
        found.append(Namespace(ns.label, ns.path, comm, container))
    return found


def namespace_container(pids: Iterable[int]) -> str:
    """The container the processes of a namespace are in: one name, a kubernetes pod's containers as the pod
    (`k8s:pod<uid8>`), several as a comma-separated list; "" when none is."""
    names = list(dict.fromkeys(c for c in map(container_of_pid, pids) if c))
    pods = {n.split("/", 1)[0] for n in names}
    if len(names) > 1 and len(pods) == 1 and names[0].startswith("k8s:"):
        return pods.pop()
    return ", ".join(names)


def _kind(msg: Any) -> str:
    info = msg.get_attr("IFLA_LINKINFO")
    return str(info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""


def list_interfaces(processes: bool = True) -> list[ListedLink]:
    """Every interface of every namespace `namespaces()` finds, with each veth's peer (IFLA_LINK, and
    IFLA_LINK_NETNSID mapped to the namespace that id names as seen from the veth's own namespace)."""
    from pyroute2.netlink.exceptions import NetlinkError

    spaces = namespaces(processes)
    monitors: dict[str, LinkMonitor] = {}
    raw: dict[str, list[Any]] = {}
    try:
        for ns in spaces:
            try:
                monitors[ns.label] = LinkMonitor(Netns(ns.label, ns.path) if ns.label else None)
                raw[ns.label] = monitors[ns.label].messages()
            except (UserError, OSError, NetlinkError):
                continue  # a namespace that went away or cannot be entered: left out
        names = {label: {int(m["index"]): str(m.get_attr("IFLA_IFNAME")) for m in msgs} for label, msgs in raw.items()}
        nsids: dict[str, dict[int, str]] = {}

        def nsid_map(label: str) -> dict[int, str]:
            """Which namespace each netnsid of namespace `label` stands for."""
            if label not in nsids:
                nsids[label] = {}
                for other in spaces:
                    if other.label == label or other.label not in raw:
                        continue
                    try:
                        nsid = monitors[label].netnsid(other.path)
                    except OSError:
                        continue  # the namespace went away
                    if nsid is not None:
                        nsids[label][nsid] = other.label
            return nsids[label]

        out: list[ListedLink] = []
        for ns in spaces:
            for msg in raw.get(ns.label, ()):
                kind = _kind(msg)
                peer_ns: str | None = None
                peer: str | None = None
                unnamed = ""
                peer_index = msg.get_attr("IFLA_LINK")
                if kind == "veth" and peer_index:
                    netnsid = msg.get_attr("IFLA_LINK_NETNSID")
                    peer_ns = ns.label if netnsid is None else nsid_map(ns.label).get(int(netnsid))
                    if peer_ns is not None:
                        peer = names.get(peer_ns, {}).get(int(peer_index))
                    else:  # a namespace with no name and no process left in it
                        unnamed = f"ifindex {peer_index} in netnsid {netnsid}"
                arphrd = int(msg["ifi_type"])
                out.append(
                    ListedLink(
                        namespace=ns.label,
                        name=str(msg.get_attr("IFLA_IFNAME")),
                        index=int(msg["index"]),
                        state=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN").lower(),
                        linktype=ARPHRD_NAMES.get(arphrd, str(arphrd)),
                        kind=kind,
                        process=ns.process,
                        container=ns.container,
                        peer_namespace=peer_ns,
                        peer=peer,
                        unnamed_peer=unnamed,
                    )
                )
        return out
    finally:
        for mon in monitors.values():
            mon.close()
