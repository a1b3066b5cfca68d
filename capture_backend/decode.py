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
V4_MAPPED_PREFIX = np.array([0] * 10 + [0xFF, 0xFF], dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class Decoded:
    """Per-packet columns of one block."""

    iface: str
    ts_ns: np.ndarray  # int64
    wirelen: np.ndarray  # int64
    ethertype: np.ndarray  # int32, after VLAN tags; 0 when the link header is unreadable
    vlan: np.ndarray  # int32, outermost VLAN id, -1 when untagged
    ip: np.ndarray  # bool, addresses are valid (IPv4 or IPv6 header complete)
    src: np.ndarray  # uint8 (n, 16), IPv6 or IPv4-mapped (::ffff:a.b.c.d)
    dst: np.ndarray  # uint8 (n, 16)
    proto: np.ndarray  # int32 IP protocol (upper layer), -1 when not IP
    sport: np.ndarray  # int32, 0 when there are no ports (non-first fragment, ICMP, ...)
    dport: np.ndarray  # int32
    tcp_flags: np.ndarray  # uint8
    malformed: np.ndarray  # bool, a header was cut short or invalid

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])


class _Frames:
    """Bounds-checked vectorised reads at per-packet offsets of a block."""

    def __init__(self, block: Block) -> None:
        self.buf = block.data
        self.start = block.start.astype(np.int64, copy=False)
        self.caplen = block.caplen.astype(np.int64, copy=False)
        self.last = max(int(self.buf.shape[0]) - 1, 0)

    def has(self, off: np.ndarray, size: int) -> np.ndarray:
        """Which frames hold `size` bytes at relative offset `off`."""
        return (off >= 0) & (off + size <= self.caplen)

    def u8(self, off: np.ndarray) -> np.ndarray:
        idx = np.clip(self.start + off, 0, self.last)
        return self.buf[idx].astype(np.int32)

    def u16(self, off: np.ndarray) -> np.ndarray:
        return (self.u8(off) << 8) | self.u8(off + 1)

    def bytes_at(self, off: np.ndarray, size: int) -> np.ndarray:
        idx = np.clip((self.start + off)[:, None] + np.arange(size), 0, self.last)
        return self.buf[idx]


def _no_vlan(n: int) -> np.ndarray:
    return np.full(n, -1, np.int32)


def _link_ethernet(fr: _Frames, n: int) -> LinkFields:
    ok = fr.has(np.zeros(n, np.int64), 14)
    off = np.full(n, 14, np.int64)
    et = np.where(ok, fr.u16(np.full(n, 12, np.int64)), 0)
    vlan = np.full(n, -1, np.int32)
    for _ in range(MAX_VLAN_TAGS):
        tagged = ok & np.isin(et, VLAN_TPIDS)
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
        family = (
            (b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3]) if big_endian else (b[3] << 24 | b[2] << 16 | b[1] << 8 | b[0])
        )
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


def _empty(block: Block) -> Decoded:
    z = np.zeros(0, np.int32)
    a = np.zeros((0, 16), np.uint8)
    return Decoded(
        block.iface,
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        z,
        z,
        np.zeros(0, bool),
        a,
        a,
        z,
        z,
        z,
        np.zeros(0, np.uint8),
        np.zeros(0, bool),
    )


def decode(block: Block) -> Decoded:
    """Decode every frame of `block` at once."""
    n = len(block)
    if n == 0:
        return _empty(block)
    fr = _Frames(block)
    link = LINK_DECODERS.get(block.linktype)
    if link is None:
        link_ok = np.zeros(n, bool)
        l3 = np.zeros(n, np.int64)
        et = np.zeros(n, np.int32)
        vlan = _no_vlan(n)
    else:
        link_ok, l3, et, vlan = link(fr, n)
    malformed = ~link_ok
    wirelen = block.wirelen.astype(np.int64, copy=False)
    if block.vlan_valid is not None and block.vlan_tci is not None:
        stripped = block.vlan_valid | (block.vlan_tci != 0)
        vlan = np.where(stripped, block.vlan_tci.astype(np.int32) & 0xFFF, vlan)
        if block.linktype == LINKTYPE_ETHERNET:
            wirelen = wirelen + 4 * stripped  # the tag was on the wire: count it, as pcap writing restores it

    src = np.zeros((n, 16), np.uint8)
    dst = np.zeros((n, 16), np.uint8)
    proto = np.full(n, -1, np.int32)
    l4 = np.full(n, -1, np.int64)  # -1: no transport header to read (not IP, or a later fragment)

    # IPv4
    v4 = link_ok & (et == ETHERTYPE_IPV4)
    if v4.any():
        whole = fr.has(l3, 20)
        vihl = fr.u8(l3)
        ihl = (vihl & 0xF) * 4
        good = v4 & whole & ((vihl >> 4) == 4) & (ihl >= 20) & fr.has(l3, 1)
        malformed |= v4 & ~good
        frag_off = fr.u16(l3 + 6) & 0x1FFF
        proto = np.where(good, fr.u8(l3 + 9), proto)
        l4 = np.where(good & (frag_off == 0), l3 + ihl, l4)
        src[good, :12] = V4_MAPPED_PREFIX
        dst[good, :12] = V4_MAPPED_PREFIX
        src[good, 12:] = fr.bytes_at(l3 + 12, 4)[good]
        dst[good, 12:] = fr.bytes_at(l3 + 16, 4)[good]
        ip4 = good
    else:
        ip4 = np.zeros(n, bool)

    # IPv6, walking extension headers a bounded number of times.
    v6 = link_ok & (et == ETHERTYPE_IPV6)
    if v6.any():
        good = v6 & fr.has(l3, 40) & ((fr.u8(l3) >> 4) == 6)
        malformed |= v6 & ~good
        nh = np.where(good, fr.u8(l3 + 6), -1)
        off = l3 + 40
        later_fragment = np.zeros(n, bool)
        for _ in range(MAX_IPV6_EXT_HEADERS):
            is_ext = good & np.isin(nh, list(IPV6_EXT_LENGTH))
            if not is_ext.any():
                break
            whole = fr.has(off, 8)
            malformed |= is_ext & ~whole
            good &= ~is_ext | whole
            is_ext &= whole
            mult = np.zeros(n, np.int64)
            add = np.zeros(n, np.int64)
            for code, (m, a) in IPV6_EXT_LENGTH.items():
                sel = nh == code
                mult[sel] = m
                add[sel] = a
            frag = is_ext & (nh == IPV6_EXT_FRAGMENT)
            later_fragment |= frag & ((fr.u16(off + 2) >> 3) != 0)
            hdr_len = fr.u8(off + 1) * mult + add
            nxt = fr.u8(off)
            nh = np.where(is_ext, nxt, nh)
            off = np.where(is_ext, off + hdr_len, off)
        proto = np.where(good, nh, proto)
        l4 = np.where(good & ~later_fragment, off, l4)
        src[good] = fr.bytes_at(l3 + 8, 16)[good]
        dst[good] = fr.bytes_at(l3 + 24, 16)[good]
        ip6 = good
    else:
        ip6 = np.zeros(n, bool)

    ip = ip4 | ip6
    # Transport header.
    sport = np.zeros(n, np.int32)
    dport = np.zeros(n, np.int32)
    flags = np.zeros(n, np.uint8)
    has_l4 = ip & (l4 >= 0)
    if has_l4.any():
        need = np.zeros(n, np.int64)
        for code, size in L4_HEADER_LEN.items():
            need[proto == code] = size
        known = has_l4 & (need > 0)
        whole = fr.has(l4, 1) & (l4 + need <= fr.caplen)
        malformed |= known & ~whole
        with_ports = known & whole & np.isin(proto, PORT_PROTOS)
        sport = np.where(with_ports, fr.u16(l4), 0)
        dport = np.where(with_ports, fr.u16(l4 + 2), 0)
        is_tcp = known & whole & (proto == IPPROTO_TCP)
        flags = np.where(is_tcp, fr.u8(l4 + 13), 0).astype(np.uint8)

    return Decoded(
        iface=block.iface,
        ts_ns=block.ts_ns.astype(np.int64, copy=False),
        wirelen=wirelen,
        ethertype=et.astype(np.int32, copy=False),
        vlan=vlan,
        ip=ip,
        src=src,
        dst=dst,
        proto=proto,
        sport=sport,
        dport=dport,
        tcp_flags=flags,
        malformed=malformed,
    )
