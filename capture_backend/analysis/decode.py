"""Turn one Block into columns (NumPy arrays, one row per packet): no Python object per packet.

The frames are walked once in compiled code (_native.decode_frames, the GIL released): every
link type below, up to two VLAN tags, IPv4 with options and fragments, IPv6 with extension headers,
TCP/UDP/SCTP/ICMP. Every read is checked against the frame's captured bytes, so truncated or
malformed frames become a flag, never an exception. The NumPy decoder this replaced is kept as the
tests' reference (tests/decode_reference.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capture_backend import _native
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
from capture_backend.contract import IPPROTO_ICMP as IPPROTO_ICMP
from capture_backend.contract import IPPROTO_ICMPV6 as IPPROTO_ICMPV6
from capture_backend.contract import IPPROTO_SCTP as IPPROTO_SCTP
from capture_backend.contract import IPPROTO_TCP as IPPROTO_TCP
from capture_backend.contract import IPPROTO_UDP as IPPROTO_UDP
from capture_backend.contract import PORT_PROTOS as PORT_PROTOS
from capture_backend.contract import V4_MAPPED
from capture_backend.contract import address_key as address_key
from capture_backend.contract import key_bytes as key_bytes

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
MAX_VLAN_TAGS = 2
MAX_IPV6_EXT_HEADERS = 8

# Smallest L4 header that carries what we read (ports, TCP flags): shorter is malformed.
L4_HEADER_LEN = {IPPROTO_TCP: 20, IPPROTO_UDP: 8, IPPROTO_SCTP: 12, IPPROTO_ICMP: 4, IPPROTO_ICMPV6: 4}
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
    l7_head: np.ndarray | None = None  # uint64, the payload's first 8 bytes big-endian (0 past those captured)

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


def _empty(block: Block) -> Decoded:
    z = np.zeros(0, np.int32)
    a = np.zeros((0, 2), np.uint64)
    e = np.zeros(0, np.int64)
    u8, b = np.zeros(0, np.uint8), np.zeros(0, bool)
    return Decoded(block.iface, e, e, z, z, b, a, a, z, z, z, u8, b, e, e, z, z, block.data, e, e)


# The low word of an IPv4 address's key: ::ffff:0:0 | the address.
V4_MAPPED_LOW = np.uint64(int.from_bytes(V4_MAPPED[8:], "big") << 32)
# The link types decode() reads (any other: every frame malformed, nothing read).
LINKTYPES = (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_LOOP,
)
_native._init_tables(
    L4_NEED.tolist(), HAS_PORTS.tolist(), EXT_MULT.tolist(), EXT_ADD.tolist(), NULL_FAMILY_TABLE.tolist()
)


def decode(block: Block) -> Decoded:
    """Decode every frame of `block` (one compiled pass).

    A TCP or UDP payload length comes from the IP header's length, but never counts bytes past the
    frame's length on the wire (as tshark: a total length that claims more is capped).
    """
    n = len(block)
    if n == 0:
        return _empty(block)
    start = np.ascontiguousarray(block.start, dtype=np.int64)
    caplen = np.ascontiguousarray(block.caplen, dtype=np.int64)
    wirelen = np.ascontiguousarray(block.wirelen, dtype=np.int64)
    # The compiled pass writes every column of every frame: nothing to initialise here.
    i32, i64 = np.empty((7, n), np.int32), np.empty((4, n), np.int64)
    et, vlan, proto, sport, dport, window, tcp_len = i32
    seq, ack, l7_start, l7_cap = i64
    ip, malformed = np.empty((2, n), bool)
    src, dst = np.empty((2, n, 2), np.uint64)
    flags = np.empty(n, np.uint8)
    l7_head = np.empty(n, np.uint64)
    data = block.data if block.data.flags.c_contiguous else np.ascontiguousarray(block.data)
    linktype = block.linktype if 0 <= block.linktype < 1 << 31 else -1  # any other: unknown
    _native.decode_frames(
        data.view(np.uint8), start, caplen, wirelen, linktype,
        et, vlan, ip.view(np.uint8), src, dst, proto, sport, dport, flags, malformed.view(np.uint8),
        seq, ack, window, tcp_len, l7_start, l7_cap, l7_head,
    )  # fmt: skip
    if block.vlan_valid is not None and block.vlan_tci is not None:
        stripped = block.vlan_valid | (block.vlan_tci != 0)
        if stripped.any():
            vlan = np.where(stripped, block.vlan_tci.astype(np.int32) & 0xFFF, vlan)
            if block.linktype == LINKTYPE_ETHERNET:
                wirelen = wirelen + 4 * stripped  # the tag was on the wire: count it, as pcap writing restores it
    return Decoded(
        iface=block.iface,
        ts_ns=block.ts_ns.astype(np.int64, copy=False),
        wirelen=wirelen,
        ethertype=et,
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
        l7_head=l7_head,
    )
