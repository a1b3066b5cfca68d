"""Turn one Block into columns (NumPy arrays, one row per packet): no Python object per packet.

Every field is read with vectorised gathers from the block's buffer. A read beyond a frame's
captured bytes is masked out, so truncated or malformed frames become a flag, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from capture_backend.block import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    Block,
)
from capture_backend.contract import V4_MAPPED
from capture_backend.contract import address_key as address_key
from capture_backend.contract import key_bytes as key_bytes

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
MAX_VLAN_TAGS = 2
MAX_IPV6_EXT_HEADERS = 8

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132
# Smallest L4 header that carries what we read (ports, TCP flags): shorter is malformed.
L4_HEADER_LEN = {IPPROTO_TCP: 20, IPPROTO_UDP: 8, IPPROTO_SCTP: 12, IPPROTO_ICMP: 4, IPPROTO_ICMPV6: 4}
PORT_PROTOS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP)
# IPv6 extension headers and how their length is encoded: (length byte multiplier, addend).
IPV6_EXT_HOPOPTS, IPV6_EXT_ROUTING, IPV6_EXT_FRAGMENT, IPV6_EXT_AH, IPV6_EXT_DSTOPTS = 0, 43, 44, 51, 60
IPV6_EXT_MOBILITY = 135
IPV6_EXT_LENGTH = {
    IPV6_EXT_HOPOPTS: (8, 8),
    IPV6_EXT_ROUTING: (8, 8),
    IPV6_EXT_DSTOPTS: (8, 8),
    IPV6_EXT_MOBILITY: (8, 8),
    IPV6_EXT_AH: (4, 8),
    IPV6_EXT_FRAGMENT: (0, 8),
}
# BSD loopback (LINKTYPE_NULL / LOOP) address families that mean IPv4 or IPv6.
NULL_FAMILY_ETHERTYPE = {
    2: ETHERTYPE_IPV4,
    10: ETHERTYPE_IPV6,
    24: ETHERTYPE_IPV6,
    28: ETHERTYPE_IPV6,
    30: ETHERTYPE_IPV6,
}
NULL_FAMILY_TABLE = np.zeros(64, np.int32)
NULL_FAMILY_TABLE[list(NULL_FAMILY_ETHERTYPE)] = list(NULL_FAMILY_ETHERTYPE.values())
# A link decoder returns, per frame: link header readable, L3 offset, ethertype, outer VLAN id.
LinkFields = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

# Lookup tables by protocol / extension-header code (0..255).
L4_NEED = np.zeros(256, np.int64)
L4_NEED[list(L4_HEADER_LEN)] = list(L4_HEADER_LEN.values())
HAS_PORTS = np.zeros(256, bool)
HAS_PORTS[list(PORT_PROTOS)] = True
IS_EXT = np.zeros(256, bool)
IS_EXT[list(IPV6_EXT_LENGTH)] = True
EXT_MULT = np.zeros(256, np.int64)
EXT_ADD = np.zeros(256, np.int64)
for _code, (_mult, _add) in IPV6_EXT_LENGTH.items():
    EXT_MULT[_code], EXT_ADD[_code] = _mult, _add


@dataclass(frozen=True, slots=True)
class Decoded:
    """Per-packet columns of one block."""

    iface: str
    ts_ns: np.ndarray  # int64
    wirelen: np.ndarray  # int64
    ethertype: np.ndarray  # int32, after VLAN tags; 0 when the link header is unreadable
    vlan: np.ndarray  # int32, outermost VLAN id, -1 when untagged
    ip: np.ndarray  # bool, addresses are valid (IPv4 or IPv6 header complete)
    src_key: np.ndarray  # uint64 (n, 2): the 16-byte address (IPv4-mapped ::ffff:a.b.c.d) as two big-endian halves
    dst_key: np.ndarray  # uint64 (n, 2)
    proto: np.ndarray  # int32 IP protocol (upper layer), -1 when not IP
    sport: np.ndarray  # int32, 0 when there are no ports (non-first fragment, ICMP, ...)
    dport: np.ndarray  # int32
    tcp_flags: np.ndarray  # uint8
    malformed: np.ndarray  # bool, a header was cut short or invalid
    tcp_seq: np.ndarray  # int64, TCP sequence number (0..2**32-1); 0 when not TCP
    tcp_ack: np.ndarray  # int64, TCP acknowledgement number; 0 when not TCP
    tcp_window: np.ndarray  # int32, TCP window field (unscaled); -1 when not TCP
    tcp_len: np.ndarray  # int32, TCP payload bytes from the IP lengths (not caplen); -1 when not TCP
    # Where each TCP/UDP payload starts in `buf` (-1: none) and how many of its bytes were captured;
    # None when the columns come from elsewhere than a block.
    buf: np.ndarray | None = None
    l7_start: np.ndarray | None = None  # int64
    l7_cap: np.ndarray | None = None  # int64

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    @property
    def src(self) -> np.ndarray:
        """Source addresses as (n, 16) bytes."""
        return key_bytes(self.src_key)

    @property
    def dst(self) -> np.ndarray:
        """Destination addresses as (n, 16) bytes."""
        return key_bytes(self.dst_key)


class _Frames:
    """Bounds-checked vectorised reads at per-packet offsets of a block."""

    def __init__(
        self,
        buf: np.ndarray,
        start: np.ndarray,
        caplen: np.ndarray,
        views: dict[tuple[str, int], np.ndarray] | None = None,
    ) -> None:
        # An empty buffer (every frame has caplen 0) still needs one byte for the masked-out reads.
        self.buf = buf if buf.shape[0] else np.zeros(1, np.uint8)
        self.start = start
        self.caplen = caplen
        self.last = max(int(buf.shape[0]) - 1, 0)
        self._views = views if views is not None else {}

    @classmethod
    def of(cls, block: Block) -> _Frames:
        return cls(block.data, block.start.astype(np.int64, copy=False), block.caplen.astype(np.int64, copy=False))

    def sub(self, rows: np.ndarray) -> _Frames:
        """The frames at `rows` only."""
        return _Frames(self.buf, self.start[rows], self.caplen[rows], self._views)

    def has(self, off: np.ndarray, size: int) -> np.ndarray:
        """Which frames hold `size` bytes at relative offset `off`."""
        return (off >= 0) & (off + size <= self.caplen)

    def u8(self, off: np.ndarray) -> np.ndarray:
        return self.buf[np.minimum(self.start + off, self.last)].astype(np.int32)

    def _aligned(self, off: np.ndarray, dtype: str, count: int) -> np.ndarray | None:
        """`count` consecutive big-endian words per frame at `off`, with one gather per word, when
        every position has the same alignment (frames in a ring block usually do); else None."""
        p = self.start + off
        size = np.dtype(dtype).itemsize
        if p.size == 0 or self.buf.shape[0] < size:
            return None
        k = int(p[0]) % size
        if not ((p % size) == k).all():
            return None
        view = self._views.get((dtype, k))
        if view is None:
            view = np.ndarray(((self.buf.shape[0] - k) // size,), dtype=dtype, buffer=self.buf, offset=k)
            self._views[(dtype, k)] = view
        if view.shape[0] == 0:
            return None
        idx = p // size
        top = view.shape[0] - 1
        return np.stack([view[np.minimum(idx + j, top)] for j in range(count)], axis=1)

    def funnel(self, off: np.ndarray, words: int) -> np.ndarray:
        """`words` big-endian 64-bit words per frame at any `off`, as (n, words) uint64: `words + 1`
        aligned gathers joined by shifts (unaligned pcap records too); bytes past the buffer read as 0."""
        n = off.shape[0]
        view = self._views.get((">u8", 0))
        if view is None:
            view = np.ndarray((self.buf.shape[0] // 8,), dtype=">u8", buffer=self.buf)
            self._views[(">u8", 0)] = view
        p = self.start + off
        idx = p >> 3
        shift = ((p & 7) << 3).astype(np.uint64)
        back = np.uint64(63) - shift
        top = view.shape[0] - 1
        short = idx + words > top
        out = np.zeros((n, words), np.uint64)
        if top >= 0:
            one = np.uint64(1)
            safe = np.minimum(idx, top)
            cur = view[safe].astype(np.uint64)
            for j in range(words):
                nxt = view[np.minimum(safe + (j + 1), top)].astype(np.uint64)
                out[:, j] = (cur << shift) | ((nxt >> one) >> back)
                cur = nxt
        if short.any():  # near the buffer's end: byte by byte
            rows = np.flatnonzero(short)
            pos = p[rows, None] + np.arange(8 * words)
            raw = np.where(pos <= self.last, self.buf[np.minimum(pos, self.last)], 0).astype(np.uint8)
            out[rows] = np.ascontiguousarray(raw).view(">u8").astype(np.uint64)
        return out

    def u16(self, off: np.ndarray) -> np.ndarray:
        words = self._aligned(off, ">u2", 1)
        if words is not None:
            return words[:, 0].astype(np.int32)
        return (self.u8(off) << 8) | self.u8(off + 1)


def _no_vlan(n: int) -> np.ndarray:
    return np.full(n, -1, np.int32)


def _link_ethernet(fr: _Frames, n: int) -> LinkFields:
    ok = fr.has(np.zeros(n, np.int64), 14)
    off = np.full(n, 14, np.int64)
    et = np.where(ok, fr.u16(np.full(n, 12, np.int64)), 0)
    vlan = np.full(n, -1, np.int32)
    for _ in range(MAX_VLAN_TAGS):
        tagged = ok & ((et == 0x8100) | (et == 0x88A8) | (et == 0x9100))
        if not tagged.any():
            break
        whole = fr.has(off, 4)
        ok &= ~tagged | whole
        tagged &= whole
        vlan = np.where(tagged & (vlan < 0), fr.u16(off) & 0xFFF, vlan)
        et = np.where(tagged, fr.u16(off + 2), et)
        off = np.where(tagged, off + 4, off)
    return ok, off, np.where(ok, et, 0), vlan


def _link_raw(fr: _Frames, n: int) -> LinkFields:
    off = np.zeros(n, np.int64)
    ok = fr.has(off, 1)
    version = fr.u8(off) >> 4
    et = np.select([version == 4, version == 6], [ETHERTYPE_IPV4, ETHERTYPE_IPV6], 0)
    return ok, off, np.where(ok, et, 0), _no_vlan(n)


def _link_fixed(header_len: int, proto_off: int) -> Callable[[_Frames, int], LinkFields]:
    def link(fr: _Frames, n: int) -> LinkFields:
        ok = fr.has(np.zeros(n, np.int64), header_len)
        et = np.where(ok, fr.u16(np.full(n, proto_off, np.int64)), 0)
        return ok, np.full(n, header_len, np.int64), et, _no_vlan(n)

    return link


def _link_null(big_endian: bool) -> Callable[[_Frames, int], LinkFields]:
    def link(fr: _Frames, n: int) -> LinkFields:
        zero = np.zeros(n, np.int64)
        ok = fr.has(zero, 4)
        b = [fr.u8(zero + i) for i in range(4)]
        be = b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3]
        le = b[3] << 24 | b[2] << 16 | b[1] << 8 | b[0]
        # LINKTYPE_NULL is in the writer's byte order: a family fits in the low 16 bits of the right one.
        family = be if big_endian else np.where(le > 0xFFFF, be, le)
        et = np.where(ok & (family >= 0) & (family < 64), NULL_FAMILY_TABLE[np.clip(family, 0, 63)], 0)
        return ok, np.full(n, 4, np.int64), et, _no_vlan(n)

    return link


LINK_DECODERS: dict[int, Callable[[_Frames, int], LinkFields]] = {
    LINKTYPE_ETHERNET: _link_ethernet,
    LINKTYPE_RAW: _link_raw,
    LINKTYPE_IPV4: _link_raw,
    LINKTYPE_IPV6: _link_raw,
    LINKTYPE_LINUX_SLL: _link_fixed(16, 14),
    LINKTYPE_LINUX_SLL2: _link_fixed(20, 0),
    LINKTYPE_NULL: _link_null(big_endian=False),
    LINKTYPE_LOOP: _link_null(big_endian=True),
}


# The low word of an IPv4 address's key: ::ffff:0:0 | the address.
V4_MAPPED_LOW = np.uint64(int.from_bytes(V4_MAPPED[8:], "big") << 32)


@dataclass
class _Layer3:
    """What the network layer tells about a subset of frames."""

    good: np.ndarray  # header whole and valid
    proto: np.ndarray
    l4: np.ndarray  # offset of the transport header, -1 when it is not there to read
    src: np.ndarray  # (m, 2) uint64
    dst: np.ndarray
    end: np.ndarray  # offset where the IP payload ends, per the IP header's length field


def _ipv4(fr: _Frames, l3: np.ndarray) -> _Layer3:
    head = fr.funnel(l3, 3)  # bytes 0..23: version/IHL, total length, fragment, protocol, addresses
    vihl = (head[:, 0] >> np.uint64(56)).astype(np.int64)
    ihl = (vihl & 0xF) * 4
    good = fr.has(l3, 20) & ((vihl >> 4) == 4) & (ihl >= 20) & (l3 + ihl <= fr.caplen)  # options included
    later_fragment = (head[:, 0] & np.uint64(0x1FFF)) != 0
    m = l3.size
    src = np.zeros((m, 2), np.uint64)
    dst = np.zeros((m, 2), np.uint64)
    src[:, 1] = (head[:, 1] & np.uint64(0xFFFFFFFF)) | V4_MAPPED_LOW
    dst[:, 1] = (head[:, 2] >> np.uint64(32)) | V4_MAPPED_LOW
    l4 = np.where(good & ~later_fragment, l3 + ihl, -1)
    end = l3 + ((head[:, 0] >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.int64)
    proto = ((head[:, 1] >> np.uint64(48)) & np.uint64(0xFF)).astype(np.int32)
    return _Layer3(good, np.where(good, proto, -1), l4, src, dst, end)


def _ipv6(fr: _Frames, l3: np.ndarray) -> _Layer3:
    head = fr.funnel(l3, 5)  # bytes 0..39: version, payload length, next header, addresses
    good = fr.has(l3, 40) & ((head[:, 0] >> np.uint64(60)) == 6)
    m = l3.size
    nh = np.where(good, ((head[:, 0] >> np.uint64(8)) & np.uint64(0xFF)).astype(np.int64), -1)
    off = l3 + 40
    later_fragment = np.zeros(m, bool)
    for _ in range(MAX_IPV6_EXT_HEADERS):
        is_ext = good & IS_EXT[np.clip(nh, 0, 255)]
        if not is_ext.any():
            break
        whole = fr.has(off, 8)
        good &= ~is_ext | whole
        is_ext &= whole
        code = np.clip(nh, 0, 255)
        later_fragment |= is_ext & (nh == IPV6_EXT_FRAGMENT) & ((fr.u16(off + 2) >> 3) != 0)
        hdr_len = fr.u8(off + 1) * EXT_MULT[code] + EXT_ADD[code]
        nh = np.where(is_ext, fr.u8(off), nh)
        off = np.where(is_ext, off + hdr_len, off)
    l4 = np.where(good & ~later_fragment, off, -1)
    # A jumbogram's payload length 0 makes the TCP payload length negative: clamped to 0.
    end = l3 + 40 + ((head[:, 0] >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.int64)
    return _Layer3(good, np.where(good, nh, -1).astype(np.int32), l4, head[:, 1:3], head[:, 3:5], end)


LAYER3_DECODERS = {ETHERTYPE_IPV4: _ipv4, ETHERTYPE_IPV6: _ipv6}


def _empty(block: Block) -> Decoded:
    z = np.zeros(0, np.int32)
    a = np.zeros((0, 2), np.uint64)
    e = np.zeros(0, np.int64)
    u8, b = np.zeros(0, np.uint8), np.zeros(0, bool)
    return Decoded(block.iface, e, e, z, z, b, a, a, z, z, z, u8, b, e, e, z, z, block.data, e, e)


def decode(block: Block) -> Decoded:
    """Decode every frame of `block` at once."""
    n = len(block)
    if n == 0:
        return _empty(block)
    fr = _Frames.of(block)
    link = LINK_DECODERS.get(block.linktype)
    if link is None:
        link_ok, l3, et, vlan = np.zeros(n, bool), np.zeros(n, np.int64), np.zeros(n, np.int32), _no_vlan(n)
    else:
        link_ok, l3, et, vlan = link(fr, n)
    malformed = ~link_ok
    wirelen = block.wirelen.astype(np.int64, copy=False)
    if block.vlan_valid is not None and block.vlan_tci is not None:
        stripped = block.vlan_valid | (block.vlan_tci != 0)
        if stripped.any():
            vlan = np.where(stripped, block.vlan_tci.astype(np.int32) & 0xFFF, vlan)
            if block.linktype == LINKTYPE_ETHERNET:
                wirelen = wirelen + 4 * stripped  # the tag was on the wire: count it, as pcap writing restores it

    src = np.zeros((n, 2), np.uint64)
    dst = np.zeros((n, 2), np.uint64)
    proto = np.full(n, -1, np.int32)
    l4 = np.full(n, -1, np.int64)
    ip_end = np.zeros(n, np.int64)
    ip = np.zeros(n, bool)
    for ethertype, layer3 in LAYER3_DECODERS.items():
        rows = np.flatnonzero(link_ok & (et == ethertype))
        if rows.size == 0:
            continue
        r = layer3(fr.sub(rows) if rows.size < n else fr, l3[rows])
        ip[rows] = r.good
        malformed[rows] |= ~r.good
        proto[rows] = r.proto
        l4[rows] = r.l4
        ip_end[rows] = r.end
        if rows.size == n:  # the whole batch is this protocol: take the columns as they are
            src, dst = r.src, r.dst
        else:
            src[rows] = r.src
            dst[rows] = r.dst

    sport = np.zeros(n, np.int32)
    dport = np.zeros(n, np.int32)
    flags = np.zeros(n, np.uint8)
    seq = np.zeros(n, np.int64)
    ack = np.zeros(n, np.int64)
    window = np.full(n, -1, np.int32)
    tcp_len = np.full(n, -1, np.int32)
    l7_start = np.full(n, -1, np.int64)
    l7_cap = np.zeros(n, np.int64)
    l7_len = np.zeros(n, np.int64)
    rows = np.flatnonzero(ip & (l4 >= 0))
    if rows.size:
        t = fr.sub(rows) if rows.size < n else fr
        p, off = proto[rows], l4[rows]
        need = L4_NEED[np.clip(p, 0, 255)]
        whole = t.has(off, 1) & (off + need <= t.caplen)
        malformed[rows] |= (need > 0) & ~whole
        with_ports = whole & HAS_PORTS[np.clip(p, 0, 255)]
        words = t.funnel(off, 2)  # ports, seq | ack, data offset, flags, window (TCP's first 16 bytes)
        w0, w1 = words[:, 0], words[:, 1]
        sport[rows] = np.where(with_ports, (w0 >> np.uint64(48)).astype(np.int32), 0)
        dport[rows] = np.where(with_ports, ((w0 >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.int32), 0)
        is_tcp = whole & (p == IPPROTO_TCP)
        flags[rows] = np.where(is_tcp, ((w1 >> np.uint64(16)) & np.uint64(0xFF)).astype(np.uint8), 0)
        if is_tcp.any():
            sub = np.flatnonzero(is_tcp)
            tr, w0, w1, toff = rows[sub], w0[sub], w1[sub], off[sub]
            seq[tr] = (w0 & np.uint64(0xFFFFFFFF)).astype(np.int64)
            ack[tr] = (w1 >> np.uint64(32)).astype(np.int64)
            window[tr] = (w1 & np.uint64(0xFFFF)).astype(np.int32)
            doff = ((w1 >> np.uint64(28)) & np.uint64(0xF)).astype(np.int64) * 4
            tcp_len[tr] = np.maximum(ip_end[tr] - toff - doff, 0)
            l7_start[tr] = t.start[sub] + toff + doff
            l7_len[tr] = tcp_len[tr]
        is_udp = whole & (p == IPPROTO_UDP)
        if is_udp.any():
            sub = np.flatnonzero(is_udp)
            ur = rows[sub]
            l7_start[ur] = t.start[sub] + off[sub] + 8
            l7_len[ur] = np.maximum(ip_end[ur] - off[sub] - 8, 0)
        with_l7 = np.flatnonzero(l7_start >= 0)
        if with_l7.size:
            end = fr.start[with_l7] + fr.caplen[with_l7]
            l7_cap[with_l7] = np.clip(end - l7_start[with_l7], 0, l7_len[with_l7])  # not the link's padding

    return Decoded(
        iface=block.iface,
        ts_ns=block.ts_ns.astype(np.int64, copy=False),
        wirelen=wirelen,
        ethertype=et.astype(np.int32, copy=False),
        vlan=vlan,
        ip=ip,
        src_key=src,
        dst_key=dst,
        proto=proto,
        sport=sport,
        dport=dport,
        tcp_flags=flags,
        malformed=malformed,
        tcp_seq=seq,
        tcp_ack=ack,
        tcp_window=window,
        tcp_len=tcp_len,
        buf=block.data,
        l7_start=l7_start,
        l7_cap=l7_cap,
    )
