"""Deterministic test captures built with scapy: a realistic mix of protocols and edge cases.

``mixed_packets(seed, n)`` always returns the same bytes and timestamps for the same arguments;
``write_mixed`` writes them as pcap (µs or ns) or pcapng, truncated frames with caplen < wirelen.
``mixed_frames`` is the same mix as (bytes, ts_ns, wirelen) records, built once per process.
``block_of`` turns raw frames into a capture_backend Block for unit tests.
"""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert, IPOption_RR, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP, SCTPChunkData, SCTPChunkInit, SCTPChunkInitAck, SCTPChunkSACK
from scapy.packet import Packet, Raw
from scapy.utils import EDecimal, RawPcapWriter

from capture_backend.capture.block import LINKTYPE_ETHERNET, Block

NS = 1_000_000_000
T0_NS = 1_700_000_000 * NS  # first packet's time
SPAN_NS = 60 * NS  # the mix spans about this long
SNAPLEN = 65535
OTHER_ETHERTYPE = 0x88B5  # IEEE local experimental: neither IP nor ARP

V4_CLIENTS = [f"10.1.0.{i}" for i in range(1, 13)]
V4_SERVERS = [f"192.0.2.{i}" for i in range(1, 7)]
V4_DNS = "198.51.100.53"
V6_CLIENTS = [f"2001:db8:1::{i:x}" for i in range(1, 13)]
V6_SERVERS = [f"2001:db8:2::{i:x}" for i in range(1, 7)]
V6_DNS = "2001:db8:53::53"
SERVER_PORTS = (22, 80, 443, 5432, 8080)
VLAN_IDS = (10, 20, 4094)
QINQ_IDS = ((100, 7), (200, 8))  # (outer S-tag, inner C-tag)


def mac_of(addr: str) -> str:
    """A stable locally administered MAC for an address."""
    h = sum(ord(c) * 31**i for i, c in enumerate(addr)) & 0xFFFFFFFF
    return ":".join(f"{b:02x}" for b in (2, len(addr) & 0xFF, *h.to_bytes(4, "big")))


def ether(src: str, dst: str, tags: Sequence[int] = (), qinq: tuple[int, int] | None = None) -> Packet:
    """An Ethernet header between two IP hosts, optionally 802.1Q tagged or QinQ (0x88a8 outer)."""
    eth = Ether(src=mac_of(src), dst=mac_of(dst))
    if qinq is not None:
        return eth / Dot1AD(vlan=qinq[0], prio=1) / Dot1Q(vlan=qinq[1])
    for vid in tags:
        eth = eth / Dot1Q(vlan=vid)
    return eth


def ip_layer(src: str, dst: str, ip_id: int = 1) -> Packet:
    """IPv4 or IPv6 header depending on the address family."""
    if ":" in src:
        return IPv6(src=src, dst=dst, hlim=64)
    return IP(src=src, dst=dst, ttl=64, id=ip_id)


@dataclass
class _Ctx:
    """Generator state: the random source and ever-increasing ephemeral ports (no 5-tuple reuse)."""

    rng: random.Random
    next_port: int = 32768
    next_id: int = 1

    def port(self) -> int:
        self.next_port += 1 + self.rng.randrange(3)
        if self.next_port > 60999:
            self.next_port = 32768 + self.rng.randrange(100)
        return self.next_port

    def ip_id(self) -> int:
        self.next_id = (self.next_id + 1 + self.rng.randrange(50)) & 0xFFFF
        return self.next_id


def _hosts(ctx: _Ctx, v6: bool) -> tuple[str, str]:
    clients, servers = (V6_CLIENTS, V6_SERVERS) if v6 else (V4_CLIENTS, V4_SERVERS)
    return ctx.rng.choice(clients), ctx.rng.choice(servers)


def tcp_session(
    ctx: _Ctx, v6: bool = False, tags: Sequence[int] = (), qinq: tuple[int, int] | None = None
) -> list[Packet]:
    """Handshake, a few data segments each way, then FIN/FIN (or a RST)."""
    rng = ctx.rng
    c, s = _hosts(ctx, v6)
    cp, sp = ctx.port(), rng.choice(SERVER_PORTS)
    cseq, sseq = rng.randrange(1 << 32), rng.randrange(1 << 32)

    def seg(
        frm_client: bool, flags: str, payload: bytes = b"", options: list[tuple[str, object]] | None = None
    ) -> Packet:
        nonlocal cseq, sseq
        src, dst = (c, s) if frm_client else (s, c)
        sport, dport = (cp, sp) if frm_client else (sp, cp)
        seq, ack = (cseq, sseq) if frm_client else (sseq, cseq)
        tcp = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack if "A" in flags else 0, window=64240)
        if options:
            tcp.options = options
        pkt = ether(src, dst, tags, qinq) / ip_layer(src, dst, ip_id=ctx.ip_id()) / tcp
        if payload:
            pkt = pkt / Raw(payload)
        grow = len(payload) + (1 if ("S" in flags or "F" in flags) else 0)
        if frm_client:
            cseq = (cseq + grow) & 0xFFFFFFFF
        else:
            sseq = (sseq + grow) & 0xFFFFFFFF
        return pkt

    syn_opts: list[tuple[str, object]] = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("WScale", 7)]
    out = [seg(True, "S", options=syn_opts), seg(False, "SA", options=syn_opts[:2]), seg(True, "A")]
    for _ in range(rng.randrange(1, 5)):
        out.append(seg(True, "PA", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))))
        out.append(seg(False, "PA", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 1200)))))
        out.append(seg(True, "A"))
    if rng.random() < 0.2:
        out.append(seg(rng.random() < 0.5, "RA"))
    else:
        out += [seg(True, "FA"), seg(False, "A"), seg(False, "FA"), seg(True, "A")]
    return out


def dns_exchange(
    ctx: _Ctx, v6: bool = False, tags: Sequence[int] = (), qinq: tuple[int, int] | None = None
) -> list[Packet]:
    """A DNS query to port 53 and its answer."""
    rng = ctx.rng
    c = rng.choice(V6_CLIENTS if v6 else V4_CLIENTS)
    server = V6_DNS if v6 else V4_DNS
    cp, qid = ctx.port(), rng.randrange(1 << 16)
    name = f"host{rng.randrange(100)}.example.com"
    rr = DNSRR(rrname=name, type="AAAA" if v6 else "A", ttl=300, rdata="2001:db8::99" if v6 else "203.0.113.9")
    query = ether(c, server, tags, qinq) / ip_layer(c, server) / UDP(sport=cp, dport=53)
    query = query / DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype="AAAA" if v6 else "A"))
    answer = ether(server, c, tags, qinq) / ip_layer(server, c) / UDP(sport=53, dport=cp)
    answer = answer / DNS(id=qid, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype="AAAA" if v6 else "A"), an=rr)
    return [query, answer]


def udp_high(ctx: _Ctx, v6: bool = False) -> list[Packet]:
    """UDP between two high ports, a few datagrams each way."""
    rng = ctx.rng
    a, b = _hosts(ctx, v6)
    ap, bp = ctx.port(), 40000 + rng.randrange(20000)
    out = []
    for _ in range(rng.randrange(2, 7)):
        fwd = rng.random() < 0.6
        src, dst, sp, dp = (a, b, ap, bp) if fwd else (b, a, bp, ap)
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 600)))
        out.append(ether(src, dst) / ip_layer(src, dst) / UDP(sport=sp, dport=dp) / Raw(data))
    return out


def echo(ctx: _Ctx, v6: bool = False) -> list[Packet]:
    """ICMP or ICMPv6 echo requests and replies."""
    rng = ctx.rng
    a, b = _hosts(ctx, v6)
    ident = rng.randrange(1 << 16)
    out = []
    for seq in range(rng.randrange(1, 4)):
        data = bytes(range(rng.randrange(8, 56)))
        if v6:
            req: Packet = ICMPv6EchoRequest(id=ident, seq=seq, data=data)
            rep: Packet = ICMPv6EchoReply(id=ident, seq=seq, data=data)
        else:
            req = ICMP(type=8, id=ident, seq=seq) / Raw(data)
            rep = ICMP(type=0, id=ident, seq=seq) / Raw(data)
        out.append(ether(a, b) / ip_layer(a, b) / req)
        out.append(ether(b, a) / ip_layer(b, a) / rep)
    return out


def v6_ext_headers(ctx: _Ctx) -> list[Packet]:
    """IPv6 with hop-by-hop, destination options and routing headers before TCP, UDP or ICMPv6."""
    rng = ctx.rng
    a, b = _hosts(ctx, True)
    ap, bp = ctx.port(), rng.choice(SERVER_PORTS)
    chains: list[Callable[[str, str], Packet]] = [
        lambda s, d: IPv6ExtHdrHopByHop(),
        lambda s, d: IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt(),
        lambda s, d: (
            IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=["2001:db8:ff::1"], segleft=0) / IPv6ExtHdrDestOpt()
        ),
        lambda s, d: IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(addresses=["2001:db8:ff::1", "2001:db8:ff::2"], segleft=0),
    ]
    kind = rng.randrange(3)
    out = []
    for i in range(rng.randrange(2, 5)):
        fwd = i % 2 == 0
        src, dst, sp, dp = (a, b, ap, bp) if fwd else (b, a, bp, ap)
        ext = rng.choice(chains)(src, dst)
        if kind == 0:
            l4: Packet = TCP(sport=sp, dport=dp, flags="PA", seq=1000 + i, ack=1) / Raw(b"x" * rng.randrange(1, 200))
        elif kind == 1:
            l4 = UDP(sport=sp, dport=dp) / Raw(b"y" * rng.randrange(0, 200))
        else:
            l4 = (ICMPv6EchoRequest if fwd else ICMPv6EchoReply)(id=7, seq=i, data=b"ping")
        out.append(ether(src, dst) / ip_layer(src, dst) / ext / l4)
    return out


def v6_fragments(ctx: _Ctx) -> list[Packet]:
    """A UDP datagram cut by an IPv6 fragment header (offset 0, then non-zero), and an atomic fragment."""
    rng = ctx.rng
    a, b = _hosts(ctx, True)
    sp, dp = ctx.port(), 40000 + rng.randrange(20000)
    big = IPv6(src=a, dst=b, hlim=64) / IPv6ExtHdrFragment(id=rng.randrange(1 << 32)) / UDP(sport=sp, dport=dp)
    big = big / Raw(bytes(rng.randrange(256) for _ in range(2500)))
    out = [ether(a, b) / f for f in fragment6(big, 1280)]
    atomic = IPv6(src=b, dst=a, hlim=64) / IPv6ExtHdrFragment(id=rng.randrange(1 << 32), offset=0, m=0)
    out.append(ether(b, a) / atomic / UDP(sport=dp, dport=sp) / Raw(b"atomic"))
    return out


def v4_options(ctx: _Ctx) -> list[Packet]:
    """IPv4 with options (router alert, record route) before UDP or TCP: the L4 header moves."""
    rng = ctx.rng
    a, b = _hosts(ctx, False)
    ap, bp = ctx.port(), rng.choice(SERVER_PORTS)
    out = []
    for i in range(rng.randrange(2, 4)):
        fwd = i % 2 == 0
        src, dst, sp, dp = (a, b, ap, bp) if fwd else (b, a, bp, ap)
        opts = (
            [IPOption_Router_Alert()]
            if rng.random() < 0.5
            else [IPOption_NOP(), IPOption_RR(routers=["192.0.2.254", "192.0.2.253", "0.0.0.0"])]
        )
        l3 = IP(src=src, dst=dst, ttl=64, id=ctx.ip_id(), options=opts)
        l4: Packet = (
            UDP(sport=sp, dport=dp) if rng.random() < 0.5 else TCP(sport=sp, dport=dp, flags="PA", seq=i, ack=1)
        )
        out.append(ether(src, dst) / l3 / l4 / Raw(b"o" * rng.randrange(1, 100)))
    return out


def v4_fragments(ctx: _Ctx) -> list[Packet]:
    """A UDP datagram cut into IPv4 fragments by scapy's fragment()."""
    rng = ctx.rng
    a, b = _hosts(ctx, False)
    big = IP(src=a, dst=b, ttl=64, id=ctx.ip_id()) / UDP(sport=ctx.port(), dport=40000 + rng.randrange(20000))
    big = big / Raw(bytes(rng.randrange(256) for _ in range(rng.randrange(1500, 3000))))
    return [ether(a, b) / f for f in fragment(big, fragsize=1000)]


def sctp_association(ctx: _Ctx) -> list[Packet]:
    """SCTP INIT, INIT-ACK, DATA and SACK."""
    rng = ctx.rng
    a, b = _hosts(ctx, rng.random() < 0.3)
    ap, bp = ctx.port(), 3868
    tag_a, tag_b = rng.randrange(1, 1 << 32), rng.randrange(1, 1 << 32)

    def pkt(fwd: bool, chunk: Packet, vtag: int) -> Packet:
        src, dst, sp, dp = (a, b, ap, bp) if fwd else (b, a, bp, ap)
        return ether(src, dst) / ip_layer(src, dst) / SCTP(sport=sp, dport=dp, tag=vtag) / chunk

    return [
        pkt(True, SCTPChunkInit(init_tag=tag_a, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1), 0),
        pkt(False, SCTPChunkInitAck(init_tag=tag_b, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=9), tag_a),
        pkt(True, SCTPChunkData(tsn=1, stream_id=0, stream_seq=0, proto_id=0, data=b"diameter"), tag_b),
        pkt(False, SCTPChunkSACK(cumul_tsn_ack=1, a_rwnd=65535), tag_a),
    ]


def arp_exchange(ctx: _Ctx) -> list[Packet]:
    """ARP who-has and is-at (not IP)."""
    a, b = ctx.rng.choice(V4_CLIENTS), ctx.rng.choice(V4_SERVERS)
    req = Ether(src=mac_of(a), dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac_of(a), psrc=a, pdst=b)
    rep = Ether(src=mac_of(b), dst=mac_of(a)) / ARP(op=2, hwsrc=mac_of(b), psrc=b, hwdst=mac_of(a), pdst=a)
    return [req, rep]


def other_ethertype(ctx: _Ctx) -> list[Packet]:
    """A frame of a local experimental ethertype (not IP)."""
    src = ctx.rng.choice(V4_CLIENTS)
    return [Ether(src=mac_of(src), dst="01:80:c2:00:00:0e", type=OTHER_ETHERTYPE) / Raw(b"\x01\x02retrotap" * 4)]


def vlan_traffic(ctx: _Ctx) -> list[Packet]:
    """A DNS exchange or TCP session inside one 802.1Q tag."""
    tags = (ctx.rng.choice(VLAN_IDS),)
    if ctx.rng.random() < 0.5:
        return dns_exchange(ctx, ctx.rng.random() < 0.3, tags=tags)
    return tcp_session(ctx, ctx.rng.random() < 0.3, tags=tags)


def qinq_traffic(ctx: _Ctx) -> list[Packet]:
    """A DNS exchange inside QinQ: 802.1ad S-tag (0x88a8) then 802.1Q C-tag."""
    return dns_exchange(ctx, ctx.rng.random() < 0.3, qinq=ctx.rng.choice(QINQ_IDS))


# Where a truncated frame is cut: inside the IP header, the transport header, or the payload.
TRUNCATIONS = ("ip", "l4", "payload")


def truncated(ctx: _Ctx, where: str) -> list[Packet]:
    """One TCP or UDP frame captured only up to a cut; ``wirelen`` keeps the length on the wire."""
    rng = ctx.rng
    v6 = rng.random() < 0.4
    a, b = _hosts(ctx, v6)
    l4: Packet = (
        TCP(sport=ctx.port(), dport=rng.choice(SERVER_PORTS), flags="PA", seq=5, ack=6)
        if rng.random() < 0.5
        else UDP(sport=ctx.port(), dport=40000 + rng.randrange(20000))
    )
    full = ether(a, b) / ip_layer(a, b, ip_id=ctx.ip_id()) / l4 / Raw(bytes(range(200)))
    raw = bytes(full)
    l3_len = 40 if v6 else 20
    cut = {
        "ip": 14 + rng.randrange(1, 12),  # before the addresses end
        "l4": 14 + l3_len + rng.randrange(1, 8),  # fewer bytes than any transport header we read
        "payload": 14 + l3_len + (20 if isinstance(l4, TCP) else 8) + rng.randrange(1, 150),
    }[where]
    pkt = Ether(raw[:cut])
    assert bytes(pkt) == raw[:cut], "scapy rebuilt a truncated frame differently"
    pkt.wirelen = len(raw)
    return [pkt]


SCENARIOS: list[tuple[Callable[[_Ctx], list[Packet]], int]] = [
    (lambda c: tcp_session(c), 10),
    (lambda c: tcp_session(c, v6=True), 5),
    (lambda c: dns_exchange(c), 8),
    (lambda c: dns_exchange(c, v6=True), 4),
    (lambda c: udp_high(c), 5),
    (lambda c: udp_high(c, v6=True), 3),
    (lambda c: echo(c), 3),
    (lambda c: echo(c, v6=True), 3),
    (v6_ext_headers, 3),
    (v6_fragments, 1),
    (v4_options, 2),
    (v4_fragments, 2),
    (sctp_association, 1),
    (vlan_traffic, 3),
    (qinq_traffic, 1),
    (arp_exchange, 2),
    (other_ethertype, 1),
    (lambda c: truncated(c, c.rng.choice(TRUNCATIONS)), 1),
]
# Every kind once at the start, so even a small mix has each edge case.
MUST_HAVE: list[Callable[[_Ctx], list[Packet]]] = [f for f, _ in SCENARIOS[:-1]] + [
    functools.partial(truncated, where=w) for w in TRUNCATIONS
]


def mixed_packets(seed: int = 1, n: int = 2000) -> list[Packet]:
    """``n`` Ethernet frames of interleaved conversations with fixed timestamps over ~60 s.

    Timestamps (``pkt.time``, an exact EDecimal of nanoseconds) strictly increase. Truncated
    frames carry ``pkt.wirelen`` > ``len(pkt)``. Same seed and n: same bytes and times.
    """
    ctx = _Ctx(random.Random(seed))
    kinds, weights = zip(*SCENARIOS, strict=True)
    convs: list[list[Packet]] = []
    total = 0
    queue = list(MUST_HAVE)
    while total < n:
        make = queue.pop(0) if queue else ctx.rng.choices(kinds, weights)[0]
        pkts = make(ctx)[: n - total]
        convs.append(pkts)
        total += len(pkts)
    # Interleave conversations (each keeps its order), at most 8 open at a time.
    out: list[Packet] = []
    active: list[list[Packet]] = []
    pending = convs[::-1]
    while pending or active:
        while pending and len(active) < 8:
            active.append(pending.pop())
        conv = active[ctx.rng.randrange(len(active))]
        out.append(conv.pop(0))
        if not conv:
            active.remove(conv)
    step = SPAN_NS // max(n, 1)
    for i, pkt in enumerate(out):
        ts = T0_NS + i * step + ctx.rng.randrange(max(step // 2, 1))
        pkt.time = EDecimal(Decimal(ts) / NS)
    return out


def ts_ns(pkt: Packet) -> int:
    """A packet's timestamp in integer nanoseconds (exact for packets from mixed_packets)."""
    return int(Decimal(pkt.time) * NS)


def wirelen(pkt: Packet) -> int:
    """Length on the wire: ``pkt.wirelen`` when set (truncated frames), else the bytes present."""
    w = getattr(pkt, "wirelen", None)
    return int(w) if w is not None else len(bytes(pkt))


class Frame(NamedTuple):
    """One capture record: the captured bytes, the timestamp and the length on the wire."""

    data: bytes
    ts_ns: int
    wirelen: int


def as_frame(pkt: Packet | Frame) -> Frame:
    """A scapy packet (or a Frame) as a Frame."""
    if isinstance(pkt, Frame):
        return pkt
    data = bytes(pkt)
    w = getattr(pkt, "wirelen", None)
    return Frame(data, ts_ns(pkt), int(w) if w is not None else len(data))


@functools.lru_cache(maxsize=4)
def mixed_frames(seed: int = 1, n: int = 2000) -> tuple[Frame, ...]:
    """``mixed_packets(seed, n)`` as Frames (built once per process: scapy builds slowly)."""
    return tuple(as_frame(p) for p in mixed_packets(seed, n))


def write_pcap(
    path: str | Path, pkts: Sequence[Packet | Frame], nanosecond: bool = False, snaplen: int = SNAPLEN
) -> None:
    """A little-endian pcap via scapy with exact timestamps and each record's orig_len = wirelen."""
    with RawPcapWriter(str(path), linktype=LINKTYPE_ETHERNET, nano=nanosecond, snaplen=snaplen, endianness="<") as w:
        w.write_header(None)  # write_packet() alone would leave the file without its header
        for f in map(as_frame, pkts):
            sec, frac = divmod(f.ts_ns, NS)
            w.write_packet(f.data[:snaplen], sec=sec, usec=frac if nanosecond else frac // 1000, wirelen=f.wirelen)


def _pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def _ng_block(btype: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


def write_pcapng(
    path: str | Path, pkts: Sequence[Packet | Frame], nanosecond: bool = False, snaplen: int = SNAPLEN
) -> None:
    """A little-endian pcapng: one section, one Ethernet interface (if_tsresol 6 or 9), EPBs."""
    tsresol = 9 if nanosecond else 6
    name = b"mix0"
    opts = struct.pack("<HH", 2, len(name)) + _pad4(name) + struct.pack("<HHB", 9, 1, tsresol) + bytes(3)
    opts += struct.pack("<HH", 0, 0)
    out = [
        _ng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
        _ng_block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snaplen) + opts),
    ]
    for f in map(as_frame, pkts):
        ticks = f.ts_ns // (1 if nanosecond else 1000)
        data = f.data[:snaplen]
        body = struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), f.wirelen) + _pad4(data)
        out.append(_ng_block(6, body))
    Path(path).write_bytes(b"".join(out))


def write_mixed(
    path: str | Path, seed: int = 1, n: int = 2000, *, nanosecond: bool = False, pcapng: bool = False
) -> tuple[Frame, ...]:
    """Write ``mixed_packets(seed, n)`` to ``path`` (pcap by default); returns what was written."""
    frames = mixed_frames(seed, n)
    (write_pcapng if pcapng else write_pcap)(path, frames, nanosecond=nanosecond)
    return frames


def block_of(
    frames: Sequence[bytes],
    linktype: int = LINKTYPE_ETHERNET,
    *,
    caplen: Sequence[int] | None = None,
    wirelen: Sequence[int] | None = None,
    ts_ns: Sequence[int] | None = None,
    vlan_tci: Sequence[int] | None = None,
    vlan_valid: Sequence[bool] | None = None,
    iface: str = "test0",
) -> Block:
    """A Block over the concatenation of ``frames`` (caplen defaults to each frame's length)."""
    n = len(frames)
    lengths = np.array([len(f) for f in frames], np.int64)
    start = np.zeros(n, np.int64)
    if n:
        np.cumsum(lengths[:-1], out=start[1:])
    data = np.frombuffer(b"".join(frames), np.uint8).copy() if n else np.zeros(0, np.uint8)
    cap = np.array(caplen, np.int64) if caplen is not None else lengths
    wire = np.array(wirelen, np.int64) if wirelen is not None else lengths.copy()
    ts = np.array(ts_ns, np.int64) if ts_ns is not None else T0_NS + np.arange(n, dtype=np.int64) * 1000
    return Block(
        data=data,
        start=start,
        caplen=cap,
        wirelen=wire,
        ts_ns=ts,
        linktype=linktype,
        iface=iface,
        vlan_tci=None if vlan_tci is None else np.array(vlan_tci, np.uint16),
        vlan_tpid=None if vlan_tci is None else np.where(np.array(vlan_tci) != 0, 0x8100, 0).astype(np.uint16),
        vlan_valid=None if vlan_valid is None else np.array(vlan_valid, bool),
    )


def block_of_frames(frames: Sequence[Frame], iface: str = "test0") -> Block:
    """A Block of Frames with their own times and lengths on the wire."""
    return block_of(
        [f.data for f in frames], ts_ns=[f.ts_ns for f in frames], wirelen=[f.wirelen for f in frames], iface=iface
    )
