"""Session records from known traffic: a snapshot feed, frames of known flows, and a known store."""

from __future__ import annotations

import time
from typing import Any

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from capture_backend.analysis.tables import NS, CounterLimits
from capture_backend.engine import Counting, Snapshot, file_statuses
from capture_backend.rewind.sessions import COLUMN_NAMES, REASON_ACTIVE, REASON_CLOSED, REASON_IDLE, address_blob
from tests.pcapgen import block_of

T0_NS = 1_764_000_000 * NS  # 2025-11-24T16:00:00Z
MS = 1_000_000
Timed = tuple[bytes, int]  # frame, ns


class Feed:
    """A file-like Counting fed second by second; each snapshot's clock is its newest packet's time."""

    def __init__(self, limits: CounterLimits | None = None) -> None:
        self.counting = Counting(limits or CounterLimits(), False, "", time.time)

    def add(self, packets: list[Timed]) -> Snapshot:
        if packets:
            frames, ts = zip(*packets, strict=True)
            self.counting.add(block_of(list(frames), ts_ns=list(ts)))
        return self.counting.freeze(file_statuses(self.counting), 0.0, {})


def _eth(src: str, dst: str) -> Ether:
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=dst)


def http_flow(t0: int) -> list[Timed]:
    """10.0.0.1:40000 → 10.0.0.2:80: handshake (RTT 2 ms), one GET sent twice (a retransmission), a 200
    response 10 ms after the first GET, FIN both ways."""
    c, s, cp, sp = "10.0.0.1", "10.0.0.2", 40000, 80
    req = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    cs, ss = 1000, 5000

    def seg(client: bool, flags: str, seq: int, ack: int, payload: bytes = b"") -> bytes:
        src, dst, sport, dport = (c, s, cp, sp) if client else (s, c, sp, cp)
        pkt = _eth(src, dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=64240)
        return bytes(pkt / Raw(payload) if payload else pkt)

    return [
        (seg(True, "S", cs, 0), t0),
        (seg(False, "SA", ss, cs + 1), t0 + 1 * MS),
        (seg(True, "A", cs + 1, ss + 1), t0 + 2 * MS),
        (seg(True, "PA", cs + 1, ss + 1, req), t0 + 3 * MS),
        (seg(True, "PA", cs + 1, ss + 1, req), t0 + 8 * MS),
        (seg(False, "PA", ss + 1, cs + 1 + len(req), resp), t0 + 13 * MS),
        (seg(True, "A", cs + 1 + len(req), ss + 1 + len(resp)), t0 + 14 * MS),
        (seg(True, "FA", cs + 1 + len(req), ss + 1 + len(resp)), t0 + 20 * MS),
        (seg(False, "FA", ss + 1 + len(resp), cs + 2 + len(req)), t0 + 21 * MS),
        (seg(True, "A", cs + 2 + len(req), ss + 2 + len(resp)), t0 + 22 * MS),
    ]


def dns_flow(t0: int) -> list[Timed]:
    """10.0.0.1:5353 asks 10.0.0.3:53 for example.com; the answer comes 50 ms later."""
    q = _eth("10.0.0.1", "10.0.0.3") / UDP(sport=5353, dport=53) / DNS(id=7, rd=1, qd=DNSQR(qname="example.com"))
    a = _eth("10.0.0.3", "10.0.0.1") / UDP(sport=53, dport=5353) / DNS(id=7, qr=1, qd=DNSQR(qname="example.com"))
    return [(bytes(q), t0), (bytes(a), t0 + 50 * MS)]


def tick(t: int) -> Timed:
    """One datagram of the clock flow 10.9.9.9:9999 → 10.9.9.8:9998 (it moves the file's clock on)."""
    return bytes(_eth("10.9.9.9", "10.9.9.8") / UDP(sport=9999, dport=9998) / bytes(10)), t


def sent(frames: list[Timed], src: str) -> tuple[int, int]:
    """(packets, bytes) of the frames whose IP source is src."""
    mine = [f for f, _ in frames if IP(f[14:]).src == src]
    return len(mine), sum(len(f) for f in mine)


def known_records() -> list[dict[str, Any]]:
    """Six records over an hour from T0: a few hosts, ports, processes and health figures."""

    def rec(n: int, src: str, sport: int, dst: str, dport: int, proto: int, **kw: Any) -> dict[str, Any]:
        start = T0_NS + n * 600 * NS  # every 10 minutes
        r: dict[str, Any] = {
            "start_ns": start,
            "end_ns": start + kw.pop("duration_ns", NS),
            "iface": "eth0",
            "vlan": None,
            "family": 6 if ":" in src else 4,
            "proto": proto,
            "src": address_blob(src),
            "sport": sport,
            "dst": address_blob(dst),
            "dport": dport,
            "src_packets": 10,
            "dst_packets": 8,
            "src_bytes": 1000,
            "dst_bytes": 8000,
            "tcp_flags": 0x1B if proto == 6 else 0,
            "retrans": 0,
            "ooo": 0,
            "dupacks": 0,
            "zero_windows": 0,
            "resets": 0,
            "rtt_us": 500 if proto == 6 else None,
            "exchanges": 0,
            "latency_avg_us": None,
            "latency_max_us": None,
            "slowest": None,
            "pid": None,
            "process": None,
            "user": None,
            "netns": None,
            "container": None,
            "reason": REASON_IDLE,
        }
        r.update(kw)
        return r

    return [
        rec(0, "10.0.0.1", 40000, "10.0.0.7", 443, 6, pid=100, process="curl", user="alice", reason=REASON_CLOSED),
        rec(
            1,
            "10.0.0.2",
            40001,
            "10.0.0.7",
            80,
            6,
            retrans=3,
            src_bytes=50_000,
            exchanges=2,
            latency_avg_us=250_000,
            latency_max_us=400_000,
            slowest="GET /slow HTTP/1.1",
        ),
        rec(
            2,
            "10.0.0.1",
            5353,
            "10.0.0.53",
            53,
            17,
            exchanges=1,
            latency_avg_us=3000,
            latency_max_us=3000,
            slowest="example.com A",
            pid=200,
            process="systemd-resolved",
            user="systemd-resolve",
        ),
        rec(
            3,
            "2001:db8::1",
            50000,
            "2001:db8::7",
            443,
            6,
            resets=1,
            rtt_us=12_000,
            reason=REASON_ACTIVE,
            duration_ns=60 * NS,
        ),
        rec(4, "10.0.0.9", 0, "10.0.0.7", 0, 1, src_packets=1, dst_packets=1, src_bytes=98, dst_bytes=98),
        rec(5, "10.0.1.1", 40002, "10.0.0.1", 22, 6, pid=300, process="sshd", user="root", src_bytes=9_000_000),
    ]


def as_rows(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(r[c] for c in COLUMN_NAMES) for r in records]
