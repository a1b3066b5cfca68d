"""What `W` writes and `i` inspects: the row under the cursor as a typed selection (a flow, a host pair,
a host or a port), given by the view that shows it. Views with nothing to select (Interfaces, Drops,
Processes) give None."""

from __future__ import annotations

from dataclasses import dataclass

from capture_backend.contract import PROTO_NUMBERS
from capture_backend.run import Selector, select_flow, select_host, select_pair, select_port


def proto_number(name: str) -> int:
    """A protocol as the views show it: a name (tcp) or a number (47)."""
    return PROTO_NUMBERS[name] if name in PROTO_NUMBERS else int(name)


@dataclass(frozen=True)
class FlowSelection:
    """One bidirectional 5-tuple (Flows view, Hosts view with ports shown)."""

    proto: str  # as the views show it: a name (tcp) or a number (47)
    src: str
    sport: int
    dst: str
    dport: int

    def selector(self) -> Selector:
        """The time machine's mask of this flow's packets."""
        return select_flow(proto_number(self.proto), self.src, self.sport, self.dst, self.dport)

    def describe(self) -> str:
        """The selection in words (the pcap's note, the inspector's title)."""
        return f"{self.proto} {self.src}:{self.sport} {self.dst}:{self.dport}"


@dataclass(frozen=True)
class PairSelection:
    """The packets between two addresses, either way (Hosts view pairs, Latency's slowest exchanges)."""

    a: str
    b: str

    def selector(self) -> Selector:
        """The time machine's mask of this pair's packets."""
        return select_pair(self.a, self.b)

    def describe(self) -> str:
        """The selection in words (the pcap's note, the inspector's title)."""
        return f"{self.a} <=> {self.b}"


@dataclass(frozen=True)
class HostSelection:
    """The packets from or to one address (Hosts view by source or destination, Latency's servers)."""

    addr: str

    def selector(self) -> Selector:
        """The time machine's mask of this host's packets."""
        return select_host(self.addr)

    def describe(self) -> str:
        """The selection in words (the pcap's note, the inspector's title)."""
        return f"host {self.addr}"


@dataclass(frozen=True)
class PortSelection:
    """The packets of one protocol with one port on either side (Ports view, Latency's services)."""

    proto: str  # as the views show it: a name (udp) or a number
    port: int

    def selector(self) -> Selector:
        """The time machine's mask of this port's packets."""
        return select_port(proto_number(self.proto), self.port)

    def describe(self) -> str:
        """The selection in words (the pcap's note, the inspector's title)."""
        return f"{self.proto} port {self.port}"


Selection = FlowSelection | PairSelection | HostSelection | PortSelection
