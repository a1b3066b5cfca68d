"""The snapshots of several capture threads (--threads) merged into one.

Each thread counts the packets of its own fanout ring in its own tables. PACKET_FANOUT's hash mode sends
both directions of a flow to one ring, so a flow is normally in one thread's table; a host, a pair or a
port is in several. Rows with the same key are merged column by column, by the rules below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType

import numpy as np

from capture_backend._native import group_rows
from capture_backend.contract import IfaceStatus, LatencySnapshot, Snapshot, TableSnapshot

Merge = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (column in group order, starts, best rows)


def _sum(col: np.ndarray, starts: np.ndarray, best: np.ndarray) -> np.ndarray:
    return np.add.reduceat(col, starts, axis=0)


def _min(col: np.ndarray, starts: np.ndarray, best: np.ndarray) -> np.ndarray:
    return np.minimum.reduceat(col, starts, axis=0)


def _max(col: np.ndarray, starts: np.ndarray, best: np.ndarray) -> np.ndarray:
    return np.maximum.reduceat(col, starts, axis=0)


def _or(col: np.ndarray, starts: np.ndarray, best: np.ndarray) -> np.ndarray:
    return np.bitwise_or.reduceat(col, starts, axis=0)


def _busiest(col: np.ndarray, starts: np.ndarray, best: np.ndarray) -> np.ndarray:
    return col[best]


# How a column of rows sharing a key is merged; a column not named takes the value of the busiest row
# (most packets, or most exchanges): the flow's origin, handshake RTT and VLAN, a server's p50 and p95.
# A peak summed across threads is at most the sum of each thread's peak (an upper bound).
MERGE_RULES: Mapping[str, Merge] = {
    "packets": _sum,
    "bytes": _sum,
    "peak": _sum,
    "avg2": _sum,
    "avg10": _sum,
    "avg40": _sum,
    "count": _sum,
    "sum": _sum,
    "app_count": _sum,
    "app_sum": _sum,
    "tcp_retrans": _sum,
    "tcp_ooo": _sum,
    "tcp_dupack": _sum,
    "tcp_zero_win": _sum,
    "tcp_resets": _sum,
    "first": _min,
    "last": _max,
    "max": _max,
    "app_max": _max,
    "tcp_flags": _or,
    "ifaces": _or,
}


def _frozen(cols: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    for col in cols.values():
        col.flags.writeable = False
    return MappingProxyType(cols)


def merge_tables(parts: Sequence[TableSnapshot], capacity: int = 0) -> TableSnapshot:
    """One table of several threads' tables. With `capacity` (each thread's table size), a row's slot is
    its slot in its thread's table plus thread × capacity, so rows are matched across snapshots by slot."""
    if len(parts) == 1:
        return parts[0]
    head = parts[0]
    evicted = sum(p.evicted for p in parts)
    keys = np.concatenate([p.keys for p in parts])
    cols = {name: np.concatenate([p.cols[name] for p in parts]) for name in head.cols}
    slots = None
    if capacity > 0 and all(p.slots is not None for p in parts):
        slots = np.concatenate([p.slots + k * capacity for k, p in enumerate(parts) if p.slots is not None])
    n, width = keys.shape
    if n == 0:
        return replace(head, evicted=evicted)
    words = np.zeros((n, -(-width // 8) * 8), np.uint8)
    words[:, :width] = keys
    inv = np.empty(n, np.int64)
    first = group_rows(words.view(np.uint64), inv)
    if first.size < n:  # some keys in several threads' tables
        order = np.argsort(inv, kind="stable")
        starts = np.flatnonzero(np.r_[True, inv[order][1:] != inv[order][:-1]])
        weight = cols["packets"].reshape(n, -1).sum(axis=1) if "packets" in cols else cols.get("count")
        rank = np.lexsort((-weight, inv)) if weight is not None else order
        best = rank[starts]
        cols = {
            name: MERGE_RULES.get(name, _busiest)(col[order] if name in MERGE_RULES else col, starts, best)
            for name, col in cols.items()
        }
        keys = keys[first]
        slots = slots[first] if slots is not None else None
    return TableSnapshot(keys=keys, cols=_frozen(cols), evicted=evicted, layout=head.layout, slots=slots)


def _tallies(parts: Sequence[Mapping[int, tuple[int, int]]]) -> Mapping[int, tuple[int, int]]:
    out: dict[int, tuple[int, int]] = {}
    for part in parts:
        for k, (p, b) in part.items():
            q, c = out.get(k, (0, 0))
            out[k] = (q + p, c + b)
    return MappingProxyType(out)


def merge_latency(parts: Sequence[LatencySnapshot]) -> LatencySnapshot:
    """Per-server and per-service latency of several threads (p50 and p95 are the busiest thread's)."""
    if len(parts) == 1:
        return parts[0]
    slowest = sorted((e for p in parts for e in p.slowest), key=lambda e: -e.latency_ns)
    return LatencySnapshot(
        servers=merge_tables([p.servers for p in parts]),
        services=merge_tables([p.services for p in parts]),
        slowest=tuple(slowest[: max(len(p.slowest) for p in parts)]),
        exchanges=sum(p.exchanges for p in parts),
        unanswered=sum(p.unanswered for p in parts),
    )


def merge_snapshots(
    parts: Sequence[Snapshot],
    interfaces: tuple[IfaceStatus, ...],
    capacities: Mapping[str, int] | None = None,
) -> Snapshot:
    """One snapshot of every capture thread's part; the first part gives the clock, links and filter."""
    head = parts[0]
    if len(parts) == 1:
        return replace(head, interfaces=interfaces)
    caps = capacities or {}
    firsts = [p.first_ns for p in parts if p.first_ns]

    def table(name: str) -> TableSnapshot:
        return merge_tables([getattr(p, name) for p in parts], caps.get(name, 0))

    return replace(
        head,
        now_ns=max(p.now_ns for p in parts),
        packets=sum(p.packets for p in parts),
        bytes=sum(p.bytes for p in parts),
        malformed=sum(p.malformed for p in parts),
        first_ns=min(firsts) if firsts else 0,
        last_ns=max(p.last_ns for p in parts),
        ethertypes=_tallies([p.ethertypes for p in parts]),
        protocols=_tallies([p.protocols for p in parts]),
        vlans=_tallies([p.vlans for p in parts]),
        interfaces=interfaces,
        flows=table("flows"),
        pairs=table("pairs"),
        hosts=table("hosts"),
        ports=table("ports"),
        latency=merge_latency([p.latency for p in parts]),
        capture_cpu=sum(p.capture_cpu for p in parts),
        restarts=sum(p.restarts for p in parts),
        last_error=next((p.last_error for p in parts if p.last_error), ""),
        flow_ifaces=max((p.flow_ifaces for p in parts), key=len),
    )
