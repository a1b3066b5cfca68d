"""What `W` writes: the packets of the row under the cursor (a flow, a host pair, a host or a port)."""

from __future__ import annotations

from capture_backend.analysis.services import PROTO_NUMBERS
from capture_backend.rewind.timemachine import Selector, select_flow, select_host, select_pair, select_port


def _proto(name: str) -> int:
    """A protocol as the views show it: a name (tcp) or a number (47)."""
    return PROTO_NUMBERS[name] if name in PROTO_NUMBERS else int(name)


def _flow(parts: list[str]) -> tuple[Selector, str]:
    proto, src, sport, dst, dport = parts[:5]
    return select_flow(_proto(proto), src, int(sport), dst, int(dport)), f"{proto} {src}:{sport} {dst}:{dport}"


def _pair(parts: list[str]) -> tuple[Selector, str]:
    return select_pair(parts[0], parts[1]), f"{parts[0]} <=> {parts[1]}"


def _host(parts: list[str]) -> tuple[Selector, str]:
    return select_host(parts[0]), f"host {parts[0]}"


# Row keys of the views, told apart by their number of '|'-separated fields.
BY_FIELDS = {2: _host, 3: _pair, 5: _flow, 6: _flow}


def selection_of(row_key: str) -> tuple[Selector, str] | None:
    """A selector and a description for a row key of the Hosts, Ports or Flows view."""
    try:
        if "|" not in row_key and "/" in row_key:  # Ports view: "udp/53"
            proto, port = row_key.split("/", 1)
            return select_port(_proto(proto), int(port)), f"{proto} port {port}"
        parts = row_key.split("|")
        make = BY_FIELDS.get(len(parts))
        return make(parts) if make is not None else None
    except (KeyError, ValueError):
        return None
