"""Port → service name tables, read once from /etc/services (netbase)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SERVICES_PATH = "/etc/services"
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
PROTO_NUMBERS = {name: number for number, name in PROTO_NAMES.items()}


@lru_cache(maxsize=4)
def service_table(path: str = SERVICES_PATH) -> dict[tuple[str, int], str]:
    """(protocol name, port) → service name; empty when the file is missing."""
    table: dict[tuple[str, int], str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) < 2 or "/" not in fields[1]:
                    continue
                port, _, proto = fields[1].partition("/")
                if port.isdigit():
                    table.setdefault((proto, int(port)), fields[0])
    except OSError:
        pass
    return table


@lru_cache(maxsize=1)
def known_ports() -> np.ndarray:
    """Boolean array of 65536: a service name exists for this port (any protocol)."""
    known = np.zeros(65536, bool)
    for _, port in service_table():
        if 0 <= port < 65536:
            known[port] = True
    return known


def service_name(proto: int, port: int) -> str:
    """The service name of a port, or '' when none is known."""
    name = PROTO_NAMES.get(proto, "")
    return service_table().get((name, port), "") if name else ""


def proto_name(proto: int) -> str:
    """Short name of an IP protocol number (its number when unknown)."""
    return PROTO_NAMES.get(proto, str(proto))
