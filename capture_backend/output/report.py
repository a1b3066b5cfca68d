"""Rows for people and scripts, read from snapshots: the one place rates are derived.

Only the rows that are shown are turned into Python objects: sorting happens on the columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import humanize
import numpy as np

from capture_backend.analysis.decode import IPPROTO_TCP
from capture_backend.analysis.services import known_ports, proto_name, service_name
from capture_backend.analysis.tables import AVERAGE_WINDOWS, NS
from capture_backend.contract import (
    KIND_NAMES,
    AlertStatus,
    ProcessTable,
    ProcessTotals,
    Ranked,
    Snapshot,
    TableSnapshot,
    address_text,
)
from capture_backend.contract import match_rows as match_rows
from capture_backend.contract import table_growth as table_growth

Row = dict[str, Any]
addr_str = address_text  # the old name
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


def tcp_flags_str(flags: int) -> str:
    """TCP flags seen, as tcpdump's letters (e.g. 'FSPA')."""
    return "".join(letter for bit, letter in enumerate(TCP_FLAG_LETTERS) if flags >> bit & 1)


def size_text(nbytes: float) -> str:
    """Bytes in decimal units, always one decimal and one unit spelling ('753.0 B', '4.2 kB')."""
    return humanize.naturalsize(nbytes, format="%.1f").replace("Bytes", "B").replace("Byte", "B")


def bits_text(bps: float) -> str:
    """Bits per second in the same units as size_text, without '/s' ('35.9 kb')."""
    return size_text(bps).replace("B", "b")


def per_second(cur: float, prev: float, seconds: float) -> float:
    """The rate of a counter between two readings."""
    return (cur - prev) / seconds if seconds > 0 else 0.0


TOP_CHUNK = 1 << 16  # rows whose top rows are taken at a time


def _order(table: TableSnapshot, top: int, chunk: int = TOP_CHUNK) -> np.ndarray:
    """Row indices by total bytes, largest first, ties in row order; all rows when top is 0.

    The top rows are taken chunk by chunk (each chunk's top rows, then the top of those), so a million rows
    cost a chunk's temporaries, not a million rows' several times over."""
    n = len(table)
    if n == 0:
        return np.zeros(0, np.int64)
    nbytes = table.cols["bytes"]
    if top <= 0 or top >= n:
        return _top(nbytes.sum(axis=1), n)
    picked = np.concatenate([lo + _top(nbytes[lo : lo + chunk].sum(axis=1), top) for lo in range(0, n, chunk)])
    return picked[_top(np.take(nbytes, picked, axis=0).sum(axis=1), top)]


def _top(total: np.ndarray, top: int) -> np.ndarray:
    """Positions of the `top` largest totals, largest first, ties in position order."""
    n = total.size
    if top >= n:
        return np.lexsort((np.arange(n), -total))
    # Only `top` rows are sorted: those above the top-th largest total, then the first rows equal to it.
    kth = total[np.argpartition(total, n - top)[n - top]]
    above = np.flatnonzero(total > kth)
    picked = np.concatenate([above, np.flatnonzero(total == kth)[: top - above.size]])
    return picked[np.lexsort((picked, -total[picked]))]


def snapshot_interval(snap: Snapshot, prev: Snapshot | None) -> float:
    """Seconds between two snapshots: wall clock when live, packet time for files; 0 without prev."""
    if prev is None:
        return 0.0
    if snap.live:
        return snap.time - prev.time
    return (snap.last_ns - prev.last_ns) / NS


def table_rates(
    table: TableSnapshot, before: TableSnapshot, seconds: float, col: str = "bytes", rows: np.ndarray | None = None
) -> np.ndarray:
    """Per-second growth of a (rows, 2) column since `before`, per direction; rows new since count from 0."""
    if seconds <= 0:
        cur = table.cols[col] if rows is None else table.cols[col][rows]
        return np.zeros(cur.shape, np.float64)
    return table_growth(table, before, col, rows)[0] / seconds


def _windows(table: TableSnapshot, i: int, direction: int) -> dict[str, float]:
    """Bits per second of one direction over 2/10/40 s, and the peak second."""
    out = {f"{w}s": float(table.cols[f"avg{w}"][i, direction]) * 8 for w in AVERAGE_WINDOWS}
    out["peak"] = float(table.cols["peak"][i, direction]) * 8
    return out


def _pick(table: TableSnapshot, top: int, index: np.ndarray | None) -> np.ndarray:
    """The rows to format: `index` when the caller sorted and limited them already, else the top by bytes."""
    return _order(table, top) if index is None else np.asarray(index, np.int64)


def host_rows(snap: Snapshot, top: int = 10, index: np.ndarray | None = None) -> list[Row]:
    """Hosts by bytes sent and received (or the rows at `index`, in that order)."""
    t = snap.hosts
    rows = []
    addr = t.fields["addr"]
    for i in _pick(t, top, index).tolist():
        pk, by = t.cols["packets"][i], t.cols["bytes"][i]
        rows.append(
            {
                "addr": address_text(addr[i]),
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


def pair_rows(snap: Snapshot, top: int = 10, index: np.ndarray | None = None) -> list[Row]:
    """Host pairs (a < b), each direction's bytes and iftop's averages."""
    t = snap.pairs
    rows = []
    a, b = t.fields["a"], t.fields["b"]
    for i in _pick(t, top, index).tolist():
        pk, by = t.cols["packets"][i], t.cols["bytes"][i]
        rows.append(
            {
                "a": address_text(a[i]),
                "b": address_text(b[i]),
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


def port_rows(
    snap: Snapshot, top: int = 10, index: np.ndarray | None = None, prev: Snapshot | None = None, rates: bool = False
) -> list[Row]:
    """Service ports (the known or lower port of each flow) by bytes.

    With rates, each row also has bps and pps since prev (None without prev).
    """
    t = snap.ports
    rows = []
    picked = _pick(t, top, index)
    seconds = snapshot_interval(snap, prev)
    bps = pps = None
    if rates and prev is not None and seconds > 0:
        bps = table_rates(t, prev.ports, seconds, "bytes", picked).sum(axis=1) * 8
        pps = table_rates(t, prev.ports, seconds, "packets", picked).sum(axis=1)
    keys = t.fields[picked]
    for n, i in enumerate(picked.tolist()):
        proto, port = int(keys["proto"][n]), int(keys["port"][n])
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
        if rates:
            rows[-1]["bps"] = None if bps is None else float(bps[n])
            rows[-1]["pps"] = None if pps is None else float(pps[n])
    return rows


def flow_server_is_b(t: TableSnapshot, index: np.ndarray) -> np.ndarray:
    """Per flow row: b is the server (the only well-known port, else the side that did not send first)."""
    k = t.fields[index]
    known = known_ports()
    ka, kb = known[k["aport"]], known[k["bport"]]
    return np.where(ka != kb, kb, t.cols["origin"][index] == 0)


def flow_rows(
    snap: Snapshot,
    top: int = 10,
    index: np.ndarray | None = None,
    prev: Snapshot | None = None,
    rates: bool = False,
    processes: ProcessTable | None = None,
) -> list[Row]:
    """Bidirectional 5-tuples; src is the client (the side without the service port, else the first sender).

    With rates, each row also has bps (both directions, since prev; None without prev) and age (seconds
    since its first packet). With processes, flows attributed to a local process have its pid, name, network
    namespace (None: the current one) and container (None: none).
    """
    t = snap.flows
    rows = []
    picked = _pick(t, top, index)
    server_is_b = flow_server_is_b(t, picked).tolist()
    seconds = snapshot_interval(snap, prev)
    bps = None
    if rates and prev is not None and seconds > 0:
        bps = table_rates(t, prev.flows, seconds, "bytes", picked).sum(axis=1) * 8
    keys = t.fields[picked]
    for n, i in enumerate(picked.tolist()):
        k = keys[n]
        a, b = address_text(k["a"]), address_text(k["b"])
        aport, bport, proto = int(k["aport"]), int(k["bport"]), int(k["proto"])
        pk, by = t.cols["packets"][i], t.cols["bytes"][i]
        b_is_server = server_is_b[n]
        fwd, rev = (0, 1) if b_is_server else (1, 0)
        src, sport, dst, dport = (a, aport, b, bport) if b_is_server else (b, bport, a, aport)
        rows.append(
            {
                "proto": proto_name(proto),
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
        if proto == IPPROTO_TCP and "tcp_retrans" in t.cols:
            rows[-1]["tcp"] = tcp_health(t, i)
        if "app_count" in t.cols and t.cols["app_count"][i] > 0:
            rows[-1]["latency"] = flow_latency(t, i)
        if rates:
            rows[-1]["bps"] = None if bps is None else float(bps[n])
            rows[-1]["age"] = max(0.0, (snap.now_ns - int(t.cols["first"][i])) / NS)
        owner = processes.owner(t.key_bytes(i)) if processes is not None else None
        if processes is not None and owner is not None:
            rows[-1]["pid"], rows[-1]["process"] = owner
            netns, container = processes.place(t.key_bytes(i))
            rows[-1]["netns"], rows[-1]["container"] = netns or None, container or None
    return rows


def tcp_health(t: TableSnapshot, i: int) -> Row:
    """A TCP flow's retransmissions, out-of-order segments, duplicate ACKs, zero windows, resets and
    handshake RTT (None when not seen), as tshark's tcp.analysis fields count them."""
    irtt = int(t.cols["tcp_irtt"][i])
    return {
        "retransmissions": int(t.cols["tcp_retrans"][i]),
        "out_of_order": int(t.cols["tcp_ooo"][i]),
        "duplicate_acks": int(t.cols["tcp_dupack"][i]),
        "zero_windows": int(t.cols["tcp_zero_win"][i]),
        "resets": int(t.cols["tcp_resets"][i]),
        "handshake_rtt_ms": irtt / 1e6 if irtt >= 0 else None,
    }


TCP_TOTALS = (  # tcp_totals' names -> the flow table's columns (tcp_health names them the same per flow)
    ("retransmissions", "tcp_retrans"),
    ("out_of_order", "tcp_ooo"),
    ("duplicate_acks", "tcp_dupack"),
    ("zero_windows", "tcp_zero_win"),
    ("resets", "tcp_resets"),
)


def tcp_totals(snap: Snapshot) -> Row | None:
    """TCP health over every TCP flow in the flow table (tcp_health's counts summed), the share of TCP packets
    retransmitted, and the handshake RTT's median and p95 (nearest rank) over the flows where it was seen;
    None without TCP analysis (--no-analysis)."""
    t = snap.flows
    if "tcp_retrans" not in t.cols:
        return None
    tcp = t.fields["proto"] == IPPROTO_TCP
    out: Row = {name: int(t.cols[col][tcp].sum()) for name, col in TCP_TOTALS}
    out["flows"] = int(tcp.sum())
    out["packets"] = int(t.cols["packets"][tcp].sum())
    out["retrans_pct"] = 100 * out["retransmissions"] / out["packets"] if out["packets"] else None
    irtt = t.cols["tcp_irtt"][tcp]
    irtt = irtt[irtt >= 0]
    out["rtt_flows"] = int(irtt.size)
    for name, q in (("rtt_p50_ms", 50), ("rtt_p95_ms", 95)):
        out[name] = float(np.percentile(irtt, q, method="inverted_cdf")) / 1e6 if irtt.size else None
    return out


def flow_latency(t: TableSnapshot, i: int) -> Row:
    """A flow's application exchanges (DNS, HTTP, MySQL request → response): count, mean and max."""
    count = int(t.cols["app_count"][i])
    return {
        "exchanges": count,
        "avg_ms": int(t.cols["app_sum"][i]) / count / 1e6 if count else None,
        "max_ms": int(t.cols["app_max"][i]) / 1e6 if count else None,
    }


def _latency_table(t: TableSnapshot, with_server: bool, top: int) -> list[Row]:
    """Rows of the per-server (SERVER_KEY, with_server) or per-service (SERVICE_KEY) table."""
    rows = []
    order = np.argsort(-t.cols["count"], kind="stable")
    for i in (order[:top] if top else order).tolist():
        k = t.key(i)
        kind = int(k["kind"])
        count = int(t.cols["count"][i])
        row: Row = {"kind": KIND_NAMES.get(kind, str(kind))}
        if with_server:
            row["server"] = address_text(k["server"])
        row |= {
            "proto": proto_name(int(k["proto"])),
            "port": int(k["port"]),
            "exchanges": count,
            "avg_ms": int(t.cols["sum"][i]) / count / 1e6,
            "p50_ms": int(t.cols["p50"][i]) / 1e6,
            "p95_ms": int(t.cols["p95"][i]) / 1e6,
            "max_ms": int(t.cols["max"][i]) / 1e6,
        }
        rows.append(row)
    return rows


def latency_rows(snap: Snapshot, top: int = 0) -> Row:
    """Application latency per service and per server (p50/p95 of the recent exchanges; the `top` with the
    most exchanges, all when 0), and the slowest."""
    lat = snap.latency
    return {
        "exchanges": lat.exchanges,
        "unanswered": lat.unanswered,
        "services": _latency_table(lat.services, False, top),
        "servers": _latency_table(lat.servers, True, top),
        "slowest": [
            {
                "kind": x.kind,
                "ms": x.latency_ns / 1e6,
                "time": x.time_ns / NS,
                "client": address_text(x.client),
                "server": address_text(x.server),
                "port": x.port,
                "request": x.request,
            }
            for x in lat.slowest
        ],
    }


def process_rows(table: ProcessTable, before: ProcessTable | None = None) -> list[Row]:
    """Per-process totals, largest first, then the unknown entry; with before, rx/tx rates since it."""
    seconds = table.time - before.time if before is not None else 0.0
    old = {p.pid: p for p in before.processes} if before is not None else {}
    if before is not None:
        old[None] = before.unknown

    def row(p: ProcessTotals) -> Row:
        r: Row = {
            "pid": p.pid,
            "name": p.name,
            "user": p.user,
            "rx_bytes": p.rx_bytes,
            "tx_bytes": p.tx_bytes,
            "rx_packets": p.rx_packets,
            "tx_packets": p.tx_packets,
            "exited": p.exited,
            "netns": p.netns or None,
            "container": p.container or None,
        }
        o = old.get(p.pid)
        if before is not None and seconds > 0:
            r["rx_bps"] = per_second(p.rx_bytes, o.rx_bytes if o else 0, seconds) * 8
            r["tx_bps"] = per_second(p.tx_bytes, o.tx_bytes if o else 0, seconds) * 8
        return r

    procs = sorted(table.processes, key=lambda p: (-(p.rx_bytes + p.tx_bytes), p.pid or 0))
    return [row(p) for p in procs] + [row(table.unknown)]


def interface_rows(snap: Snapshot, prev: Snapshot | None, with_captured: bool = False) -> list[Row]:
    """Captured interfaces with capture, ring and link counters, and link rates since prev.

    With with_captured, also the rates of what was captured (captured_bps, captured_pps; files use packet time).
    """
    seconds = snap.time - prev.time if prev is not None else 0.0
    before = {i.name: i for i in prev.interfaces} if prev is not None else {}
    rows = []
    captured_seconds = snapshot_interval(snap, prev)
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
            "walk_errors": iface.walk_errors,
            "ring_bytes": iface.ring_bytes,
        }
        if iface.rings:
            row["rings"] = [
                {
                    "thread": r.thread,
                    "captured_packets": r.packets,
                    "captured_bytes": r.bytes,
                    "received": r.received,
                    "kernel_drops": r.kernel_drops,
                    "freeze_count": r.freezes,
                    "cpu_seconds": round(r.cpu, 6),
                }
                for r in iface.rings
            ]
        old_capture = before.get(iface.name)
        if with_captured and old_capture is not None and captured_seconds > 0:
            row["captured_bps"] = per_second(iface.bytes, old_capture.bytes, captured_seconds) * 8
            row["captured_pps"] = per_second(iface.packets, old_capture.packets, captured_seconds)
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


NIC_DROP_FIELDS = ("rx_missed", "rx_fifo", "rx_dropped", "rx_errors", "tx_dropped", "tx_fifo", "tx_errors")


# The rows of each capture thread's ring (layer, counter prefix, RingStatus field).
RING_ROWS = (
    ("kernel", "received_ring", "received"),
    ("kernel", "drops_ring", "kernel_drops"),
    ("retrotap", "cpu_seconds_thread", "cpu"),
)


def drop_rows(snap: Snapshot, prev: Snapshot | None) -> list[Row]:
    """Every layer's losses side by side: NIC (netlink), kernel ring, retrotap; totals and per-second deltas."""
    seconds = snapshot_interval(snap, prev)
    before = {i.name: i for i in prev.interfaces} if prev is not None else {}

    def row(layer: str, counter: str, iface: str, total: int, old: int | None) -> Row:
        rate = per_second(total, old, seconds) if old is not None and seconds > 0 else None
        return {"layer": layer, "counter": counter, "iface": iface, "total": total, "per_s": rate}

    rows = []
    for iface in snap.interfaces:
        old = before.get(iface.name)
        if iface.link is not None:
            stats = iface.link.stats
            old_stats = old.link.stats if old is not None and old.link is not None else None
            for f in NIC_DROP_FIELDS:
                rows.append(row("nic", f, iface.name, getattr(stats, f), getattr(old_stats, f, None)))
        if snap.live:
            rows.append(row("kernel", "ring_drops", iface.name, iface.kernel_drops, getattr(old, "kernel_drops", None)))
            rows.append(row("kernel", "ring_freezes", iface.name, iface.freezes, getattr(old, "freezes", None)))
            old_rings = {r.thread: r for r in old.rings} if old is not None else {}
            for r in iface.rings:  # each capture thread's ring, with --threads; CPU per second: cores used
                was = old_rings.get(r.thread)
                for layer, counter, field in RING_ROWS:
                    total = round(getattr(r, field), 3) if field == "cpu" else getattr(r, field)
                    rows.append(row(layer, f"{counter}{r.thread}", iface.name, total, getattr(was, field, None)))
            old_walk = getattr(old, "walk_errors", None)
            rows.append(row("retrotap", "walk_errors", iface.name, iface.walk_errors, old_walk))
    if snap.live:
        rows.append(row("retrotap", "capture_restarts", "", snap.restarts, prev.restarts if prev is not None else None))
    p_malformed = prev.malformed if prev is not None else None
    rows.append(row("retrotap", "malformed", "", snap.malformed, p_malformed))
    for name in ("flows", "pairs", "hosts", "ports"):
        old_evicted = getattr(prev, name).evicted if prev is not None else None
        rows.append(row("retrotap", f"{name}_evicted", "", getattr(snap, name).evicted, old_evicted))
    return rows


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def capture_health(snap: Snapshot, prev: Snapshot | None, base: Snapshot | None, now: float) -> Row:
    """Coverage since prev and since base, own CPU, snapshot age.

    Two ratios, each of like with like: ``coverage`` is what retrotap counted ÷ what the ring received
    (kernel drops are what it misses), ``ring_coverage`` is what the ring received ÷ what the links
    counted, rx + tx (rx only on lo), as the ring sees both directions. A filter makes the second one
    small on purpose. Packets still in flight between two readings never push either above 100 %.
    """
    seconds = snap.time - prev.time if prev is not None else 0.0

    def link_packets_of(s: Snapshot | None) -> int | None:
        if s is None or not s.interfaces:
            return None
        counts = [i.link_packets for i in s.interfaces]
        return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)

    def coverage(old: Snapshot | None) -> float | None:
        if old is None:
            return None
        ratio = _ratio(snap.packets - old.packets, snap.received - old.received)
        return None if ratio is None else min(ratio, 1.0)

    def ring_coverage(old: Snapshot | None) -> float | None:
        now_link, old_link = link_packets_of(snap), link_packets_of(old)
        if old is None or now_link is None or old_link is None:
            return None
        ratio = _ratio(snap.received - old.received, now_link - old_link)
        return None if ratio is None else min(ratio, 1.0)

    live = snap.live
    return {
        "captured": snap.packets,
        "received": snap.received,
        "link_packets": link_packets_of(snap),
        "coverage": coverage(prev) if live else None,
        "coverage_since_start": coverage(base) if live else None,
        "ring_coverage": ring_coverage(prev) if live else None,
        "ring_coverage_since_start": ring_coverage(base) if live else None,
        "cpu_percent": _ratio(100 * (snap.capture_cpu - prev.capture_cpu), seconds) if prev is not None else None,
        "snapshot_age": max(0.0, now - snap.time),
        "restarts": snap.restarts,
        "last_error": snap.last_error,
    }


def _tallies(table: Any, key_name: str, name: Callable[[int], str]) -> list[Row]:
    items = sorted(table.items(), key=lambda kv: (-kv[1][1], kv[0]))
    return [{key_name: k, "name": name(k), "packets": p, "bytes": b} for k, (p, b) in items]


def record(snap: Snapshot, prev: Snapshot | None, top: int = 10, processes: ProcessTable | None = None) -> Row:
    """One NDJSON record: totals, capture health, interfaces and the top entities (and processes, if mapped)."""
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
        "flows": flow_rows(snap, top, processes=processes),
        "protocols": _tallies(snap.protocols, "proto", proto_name),
        "ethertypes": _tallies(snap.ethertypes, "ethertype", lambda e: f"0x{e:04x}"),
        "vlans": _tallies(snap.vlans, "vlan", str),
        "flow_table": {"active": len(snap.flows), "evicted": snap.flows.evicted},
        "latency": latency_rows(snap, top),
    }
    if processes is not None:
        rec["processes"] = process_rows(processes)
        rec["process_mapper"] = {"errors": processes.errors, "last_error": processes.error}
    if snap.live:
        rec["capture"] = {
            "received": snap.received,
            "kernel_drops": snap.kernel_drops,
            "freeze_count": snap.freezes,
            "cpu_seconds": round(snap.capture_cpu, 6),
            "restarts": snap.restarts,
            "last_error": snap.last_error,
        }
    return rec


def alert_rows(status: AlertStatus) -> Row:
    """The alert rules holding now, the incidents frozen so far and the flood/scan figures, as JSON."""
    c = status.churn

    def ranked(rows: Ranked, what: str) -> list[Row]:
        return [{"addr": label, what: value} for label, value in rows]

    return {
        "rules": list(status.rules),
        "active": [
            {"rule": a.rule, "expr": a.expr, "since": a.since, "rows": [{"label": k, "value": v} for k, v in a.rows]}
            for a in status.active
        ],
        "incidents": status.incidents,
        "recent": [{"time": i.time, "rule": i.rule, "path": i.path, "packets": i.packets} for i in status.recent],
        "errors": status.errors,
        "last_error": status.last_error,
        "churn": {
            "new_flows_per_s": c.new_flows_per_s,
            "new_flows_by_iface": [{"iface": name, "per_s": v} for name, v in c.new_flows_by_iface],
            "top_new_sources": ranked(c.top_new_sources, "flows"),
            "top_scanners": ranked(c.top_scanners, "ports"),
            "half_open": c.half_open,
            "top_half_open": ranked(c.top_half_open, "syns"),
        },
    }
