"""The NumPy decoder retrotap used before decode() was compiled: the reference the compiled one is
tested against (tests/test_decode_native.py). Not used by retrotap itself.

Every field is read with vectorised gathers from the block's buffer. A read beyond a frame's
captured bytes is masked out, so truncated or malformed frames become a flag, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from capture_backend.analysis.decode import (
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    EXT_ADD,
    EXT_MULT,
    HAS_PORTS,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV6_EXT_FRAGMENT,
    IS_EXT,
    L4_NEED,
    MAX_IPV6_EXT_HEADERS,
    MAX_VLAN_TAGS,
    NULL_FAMILY_TABLE,
    V4_MAPPED_LOW,
    Decoded,
    _empty,
    _Frames,
)
from capture_backend.capture.block import (
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

# A link decoder returns, per frame: link header readable, L3 offset, ethertype, outer VLAN id.
LinkFields = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


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


def decode_reference(block: Block) -> Decoded:
    """Decode every frame of `block` at once, with NumPy."""
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
    # The IP length never counts bytes past the frame's length on the wire (tshark caps it too).
    ip_end = np.minimum(ip_end, block.wirelen.astype(np.int64))
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
