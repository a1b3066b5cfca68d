"""Rows for people and scripts, read from snapshots: the one place rates are derived.

Only the rows that are shown are turned into Python objects: sorting happens on the columns.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import numpy as np

from capture_backend.counters import AVERAGE_WINDOWS, NS, TableSnapshot
from capture_backend.engine import Snapshot
from capture_backend.services import known_ports, proto_name, service_name

Row = dict[str, Any]
V4_MAPPED = bytes(10) + b"\xff\xff"
TCP_FLAG_LETTERS = "FSRPAUEC"  # bit 0 (FIN) to bit 7 (CWR), as tcpdump names them
LINK_FIELDS = (
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
    "rx_missed",
    "rx_fifo",
    "tx_fifo",
)


def addr_str(key: bytes) -> str:
    """Text form of a 16-byte address key (IPv4-mapped keys print as IPv4)."""
    if key[:12] == V4_MAPPED:
        return str(ipaddress.IPv4Address(key[12:]))
    return str(ipaddress.IPv6Address(key))


def tcp_flags_str(flags: int) -> str:
    """TCP flags seen, as tcpdump's letters (e.g. 'FSPA')."""
    return "".join(letter for bit, letter in enumerate(TCP_FLAG_LETTERS) if flags >> bit & 1)


def per_second(cur: float, prev: float, seconds: float) -> float:
    """The rate of a counter between two readings."""
    return (cur - prev) / seconds if seconds > 0 else 0.0


def _order(table: TableSnapshot, top: int) -> np.ndarray:
    """Row indices by total bytes, largest first; all rows when top is 0."""
    if len(table) == 0:
        return np.zeros(0, np.int64)
    total = table.cols["bytes"].sum(axis=1)
    order = np.lexsort((np.arange(total.size), -total))
    return order if top <= 0 else order[:top]


def _windows(table: TableSnapshot, i: int, direction: int) -> dict[str, float]:
    """Bits per second of one direction over 2/10/40 s, and the peak second."""
    out = {f"{w}s": float(table.cols[f"avg{w}"][i, direction]) * 8 for w in AVERAGE_WINDOWS}
    out["peak"] = float(table.cols["peak"][i, direction]) * 8
    return out


def host_rows(snap: Snapshot, top: int = 10) -> list[Row]:
    """Hosts by bytes sent and received."""
    t = snap.hosts
    rows = []
    for i in _order(t, top).tolist():
        pk, by = t.cols["packets"][i], t.cols["bytes"][i]
        rows.append(
            {
                "addr": addr_str(t.keys[i].tobytes()),
                "tx_bytes": int(by[0]),
                "rx_bytes": int(by[1]),
                "tx_packets": int(pk[0]),
                "rx_packets": int(pk[1]),
                "packets": int(pk.sum()),
                "tx_bps": _windows(t, i, 0),
                "rx_bps": _windows(t, i, 1),
                "first": int(t.cols["first"][i]) / NS,
                "last": int(t.cols["last"][i]) / NS,
            }
        )
    return rows


def pair_rows(snap: Snapshot, top: int = 10) -> list[Row]:
    """Host pairs (a < b), each direction's bytes and iftop's averages."""
    t = snap.pairs
    rows = []
    for i in _order(t, top).tolist():
        key = t.keys[i].tobytes()
        pk, by = t.cols["packets"][i], t.cols["bytes"][i]
        rows.append(
            {
                "a": addr_str(key[:16]),
                "b": addr_str(key[16:]),
                "packets": int(pk.sum()),
                "bytes": int(by.sum()),
                "a_to_b_packets": int(pk[0]),
                "b_to_a_packets": int(pk[1]),
                "a_to_b_bytes": int(by[0]),
                "b_to_a_bytes": int(by[1]),
                "a_to_b_bps": _windows(t, i, 0),
                "b_to_a_bps": _windows(t, i, 1),
                "first": int(t.cols["first"][i]) / NS,
                "last": int(t.cols["last"][i]) / NS,
            }
        )
    return rows


def port_rows(snap: Snapshot, top: int = 10) -> list[Row]:
    """Service ports (the known or lower port of each flow) by bytes."""
    t = snap.ports
    rows = []
    for i in _order(t, top).tolist():
        key = t.keys[i].tobytes()
        proto, port = key[0], int.from_bytes(key[1:3], "big")
        pk, by = t.cols["packets"][i], t.cols["bytes"][i]
        rows.append(
            {
                "proto": proto_name(proto),
                "port": port,
                "service": service_name(proto, port),
                "packets": int(pk.sum()),
                "bytes": int(by.sum()),
                "to_port_bytes": int(by[0]),
                "from_port_bytes": int(by[1]),
            }
        )
    return rows


def flow_rows(snap: Snapshot, top: int = 10) -> list[Row]:
    """Bidirectional 5-tuples; src is the client (the side without the service port, else the first sender)."""
    t = snap.flows
    known = known_ports()
    rows = []
    for i in _order(t, top).tolist():
        key = t.keys[i].tobytes()
        a, b = addr_str(key[:16]), addr_str(key[16:32])
        aport, bport = int.from_bytes(key[32:34], "big"), int.from_bytes(key[34:36], "big")
        pk, by = t.cols["packets"][i], t.cols["bytes"][i]
        if known[aport] != known[bport]:  # exactly one side is a well-known service
            b_is_server = bool(known[bport])
        else:  # otherwise whoever sent the first packet seen is the client
            b_is_server = int(t.cols["origin"][i]) == 0
        fwd, rev = (0, 1) if b_is_server else (1, 0)
        src, sport, dst, dport = (a, aport, b, bport) if b_is_server else (b, bport, a, aport)
        rows.append(
            {
                "proto": proto_name(key[36]),
                "src": src,
                "sport": sport,
                "dst": dst,
                "dport": dport,
                "packets": int(pk.sum()),
                "bytes": int(by.sum()),
                "src_to_dst_packets": int(pk[fwd]),
                "dst_to_src_packets": int(pk[rev]),
                "src_to_dst_bytes": int(by[fwd]),
                "dst_to_src_bytes": int(by[rev]),
                "first": int(t.cols["first"][i]) / NS,
                "last": int(t.cols["last"][i]) / NS,
                "tcp_flags": tcp_flags_str(int(t.cols["tcp_flags"][i])),
            }
        )
    return rows


def interface_rows(snap: Snapshot, prev: Snapshot | None) -> list[Row]:
    """Captured interfaces with capture, ring and link counters, and link rates since prev."""
    seconds = snap.time - prev.time if prev is not None else 0.0
    before = {i.name: i for i in prev.interfaces} if prev is not None else {}
    rows = []
    for iface in snap.interfaces:
        row: Row = {
            "name": iface.name,
            "state": iface.state,
            "error": iface.error,
            "captured_packets": iface.packets,
            "captured_bytes": iface.bytes,
            "received": iface.received,
            "kernel_drops": iface.kernel_drops,
            "freeze_count": iface.freezes,
        }
        if iface.link is not None:
            link = iface.link.stats
            row["operstate"] = iface.link.operstate
            row.update({f: getattr(link, f) for f in LINK_FIELDS})
            old = before.get(iface.name)
            if old is not None and old.link is not None:
                o = old.link.stats
                row["rx_bps"] = per_second(link.rx_bytes, o.rx_bytes, seconds) * 8
                row["tx_bps"] = per_second(link.tx_bytes, o.tx_bytes, seconds) * 8
                row["rx_pps"] = per_second(link.rx_packets, o.rx_packets, seconds)
                row["tx_pps"] = per_second(link.tx_packets, o.tx_packets, seconds)
        rows.append(row)
    return rows


def _tallies(table: Any, key_name: str, name: Callable[[int], str]) -> list[Row]:
    items = sorted(table.items(), key=lambda kv: (-kv[1][1], kv[0]))
    return [{key_name: k, "name": name(k), "packets": p, "bytes": b} for k, (p, b) in items]


def record(snap: Snapshot, prev: Snapshot | None, top: int = 10) -> Row:
    """One NDJSON record: totals, capture health, interfaces and the top entities."""
    if snap.live:
        interval = snap.time - prev.time if prev is not None else snap.time - snap.started
        stamp = snap.time
    else:
        start_ns = prev.last_ns if prev is not None else snap.first_ns
        interval = (snap.last_ns - start_ns) / NS
        stamp = snap.last_ns / NS
    p_packets = prev.packets if prev is not None else 0
    p_bytes = prev.bytes if prev is not None else 0
    rec: Row = {
        "time": round(stamp, 6),
        "interval": round(interval, 6),
        "live": snap.live,
        "filter": snap.filter,
        "totals": {
            "packets": snap.packets,
            "bytes": snap.bytes,
            "malformed": snap.malformed,
            "pps": per_second(snap.packets, p_packets, interval),
            "bps": per_second(snap.bytes, p_bytes, interval) * 8,
        },
        "interfaces": interface_rows(snap, prev),
        "hosts": host_rows(snap, top),
        "pairs": pair_rows(snap, top),
        "ports": port_rows(snap, top),
        "flows": flow_rows(snap, top),
        "protocols": _tallies(snap.protocols, "proto", proto_name),
        "ethertypes": _tallies(snap.ethertypes, "ethertype", lambda e: f"0x{e:04x}"),
        "vlans": _tallies(snap.vlans, "vlan", str),
        "flow_table": {"active": len(snap.flows), "evicted": snap.flows.evicted},
    }
    if snap.live:
        rec["capture"] = {
            "received": snap.received,
            "kernel_drops": snap.kernel_drops,
            "freeze_count": snap.freezes,
            "cpu_seconds": round(snap.capture_cpu, 6),
        }
    return rec
