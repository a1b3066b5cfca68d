"""Property tests for the TPACKET_V3 block walk (`walk_block`) and `Ring.batches()`, without a socket.

Rings are NumPy buffers of exactly block_size * block_nr bytes, laid out as net/packet/af_packet.c
fills them (prb_open_block, prb_fill_curr_block, prb_close_block, tpacket_rcv's macoff/netoff):
an index the walk computes past the ring raises IndexError, and a tracing view fails the test on
any read outside the block being walked, or outside its used part (base + blk_len).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture_backend.capture import layouts as L
from capture_backend.capture.block import LINKTYPE_ETHERNET, Block
from capture_backend.capture.ring import MIN_FRAME_HDR, BlockWalk, Ring, RingConfig, walk_block

BLK_HDR_LEN = L.TPACKET_BLOCK_DESC.size  # 48: offset_to_priv, and offset_to_first_pkt without a private area
V3_ALIGNMENT = 8  # the kernel's TOTAL_PKT_LEN_INCL_ALIGN: tp_next_offset and blk_len grow by ALIGN(len, 8)
TPACKET_ALIGNMENT = 16
TPACKET3_HDRLEN = L.SLL_OFFSET_IN_FRAME + L.SOCKADDR_LL.size  # 68, po->tp_hdrlen for TPACKET_V3
U32_MAX = 0xFFFFFFFF
POISON = 0xA5  # stale bytes: the kernel never clears a block before filling it again
AF_PACKET = 17
ETH_P_IP = 0x0800
TP_STATUS_BLK_TMO = 0x20
IFNAME = "syn0"

FAST = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def align_up(n: int, a: int) -> int:
    """`n` rounded up to a multiple of `a`."""
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class Geometry:
    """Where tpacket_rcv puts the frame (tp_mac) and its network header (tp_net); the frame alignment."""

    tp_mac: int
    tp_net: int
    align: int

    def total(self, snaplen: int) -> int:
        """tp_next_offset of a frame: header, sockaddr_ll, padding up to tp_mac, frame, aligned."""
        return align_up(self.tp_mac + snaplen, self.align)


def kernel_geometry(dgram: bool, maclen: int, reserve: int, align: int) -> Geometry:
    """tpacket_rcv's macoff/netoff for TPACKET_V3 with PACKET_RESERVE `reserve` (retrotap asks for 4)."""
    if dgram:
        net = align_up(TPACKET3_HDRLEN, TPACKET_ALIGNMENT) + 16 + reserve
        return Geometry(net, net, align)
    net = align_up(TPACKET3_HDRLEN + max(maclen, 16), TPACKET_ALIGNMENT) + reserve
    return Geometry(net - maclen, net, align)


KERNEL_GEOMETRY = kernel_geometry(False, 14, 4, V3_ALIGNMENT)  # Ethernet as retrotap opens it: tp_mac 86
DGRAM_GEOMETRY = kernel_geometry(True, 0, 4, V3_ALIGNMENT)  # cooked socket: tp_mac 100
# align 8 is the kernel's; 16 (TPACKET_ALIGNMENT) is a layout a walker must take just the same.
GEOMETRIES = st.builds(
    kernel_geometry,
    dgram=st.booleans(),
    maclen=st.sampled_from([0, 14, 18]),
    reserve=st.sampled_from([0, 4]),
    align=st.sampled_from([V3_ALIGNMENT, TPACKET_ALIGNMENT]),
)


@dataclass(frozen=True)
class Pkt:
    """One frame as the kernel reports it in its tpacket3_hdr and sockaddr_ll."""

    snaplen: int
    wirelen: int
    sec: int = 1_700_000_000
    nsec: int = 0
    vlan_tci: int = 0
    vlan_tpid: int = 0
    pkttype: int = 0

    @property
    def ts_ns(self) -> int:
        return self.sec * 1_000_000_000 + self.nsec


@dataclass(frozen=True)
class LaidBlock:
    """A block as laid into a ring: its place, frames, header offsets (absolute) and payload bytes."""

    index: int
    base: int
    block_size: int
    geo: Geometry
    pkts: tuple[Pkt, ...]
    offsets: tuple[int, ...]
    fills: tuple[int, ...]
    blk_len: int

    @property
    def end(self) -> int:
        return self.base + self.blk_len


def new_ring(block_size: int, block_nr: int) -> np.ndarray:
    """An exactly-sized ring of stale bytes, every block the kernel's (block_status 0)."""
    ring = np.full(block_size * block_nr, POISON, np.uint8)
    ring.view(np.uint32)[L.BLOCK_STATUS_OFFSET >> 2 :: block_size >> 2] = L.TP_STATUS_KERNEL
    return ring


def lay_block(
    ring: np.ndarray,
    index: int,
    block_size: int,
    geo: Geometry,
    pkts: Sequence[Pkt],
    *,
    status: int = L.TP_STATUS_USER,
    seq: int = 0,
) -> LaidBlock:
    """Write block `index` as the kernel closes it: descriptor, then each tpacket3_hdr, sockaddr_ll, frame."""
    base = index * block_size
    rel = BLK_HDR_LEN
    offsets: list[int] = []
    fills: list[int] = []
    for i, p in enumerate(pkts):
        total = geo.total(p.snaplen)
        assert rel + total <= block_size, "the plan does not fit the block"
        off = base + rel
        flags = L.TP_STATUS_USER
        flags |= L.TP_STATUS_VLAN_VALID if p.vlan_tci else 0
        flags |= L.TP_STATUS_VLAN_TPID_VALID if p.vlan_tpid else 0
        next_offset = 0 if i == len(pkts) - 1 else total  # prb_close_block zeroes the last one
        L.TPACKET3_HDR.pack_into(
            ring, off, next_offset, p.sec, p.nsec, p.snaplen, p.wirelen, flags,
            geo.tp_mac, geo.tp_net, 0x9E3779B9, p.vlan_tci, p.vlan_tpid, 0,
        )  # fmt: skip
        L.SOCKADDR_LL.pack_into(
            ring, off + L.SLL_OFFSET_IN_FRAME, AF_PACKET, socket.htons(ETH_P_IP), 2, 1, p.pkttype, 6, b"\x02\0\0\0\0\1"
        )
        ring[off + TPACKET3_HDRLEN : off + geo.tp_mac] = 0
        fill = (seq * 31 + i) % 255 + 1
        ring[off + geo.tp_mac : off + geo.tp_mac + p.snaplen] = fill
        offsets.append(off)
        fills.append(fill)
        rel += total  # BLOCK_LEN counts the last frame's alignment too
    head, tail = (pkts[0], pkts[-1]) if pkts else (Pkt(0, 0, 0), Pkt(0, 0, 0))
    L.TPACKET_BLOCK_DESC.pack_into(
        ring, base, 1, BLK_HDR_LEN, status, len(pkts), BLK_HDR_LEN, rel, seq, head.sec, head.nsec, tail.sec, tail.nsec
    )
    return LaidBlock(index, base, block_size, geo, tuple(pkts), tuple(offsets), tuple(fills), rel)


class Traced(np.ndarray):
    """A view that records every integer index read through [] on itself (results are not traced)."""

    reads: list[np.ndarray] | None

    def __array_finalize__(self, obj: Any) -> None:
        self.reads = None

    def __getitem__(self, idx: Any) -> Any:
        if self.reads is not None and not isinstance(idx, slice | tuple):
            a = np.asarray(idx)
            if a.dtype.kind in "iu":
                self.reads.append(a.astype(np.int64).ravel())
        return super().__getitem__(idx)


def traced(arr: np.ndarray) -> Traced:
    """`arr` viewed through a fresh Traced."""
    t = arr.view(Traced)
    t.reads = []
    return t


def assert_reads_inside(views: Sequence[Traced], regions: Sequence[tuple[int, int]]) -> None:
    """Every element read through `views` lies wholly inside one of the [lo, hi) byte regions."""
    for v in views:
        assert v.reads is not None
        if not v.reads:
            continue
        size = v.itemsize
        at = np.concatenate(v.reads) * size
        ok = np.zeros(at.shape, bool)
        for lo, hi in regions:
            ok |= (at >= lo) & (at + size <= hi)
        assert ok.all(), f"{size}-byte reads at {at[~ok][:5].tolist()} outside {list(regions)}"


def block_regions(base: int, block_size: int, blk_len: int) -> list[tuple[int, int]]:
    """What a walk may read: the block descriptor, and the block's used part after it."""
    return [(base, base + BLK_HDR_LEN), (base + BLK_HDR_LEN, base + min(blk_len, block_size))]


def descriptor(ring: np.ndarray, base: int) -> tuple[int, int, int, int]:
    """block_status, num_pkts, offset_to_first_pkt, blk_len of the block at `base`."""
    w = ring.view(np.uint32)
    i = base >> 2
    return int(w[i + 2]), int(w[i + 3]), int(w[i + 4]), int(w[i + 5])


def check_walk(ring: np.ndarray, base: int, block_size: int, walk: BlockWalk) -> None:
    """The invariants every walk keeps, whatever the block holds."""
    words = ring.view(np.uint32)
    _, num, first_rel, blk_len = descriptor(ring, base)
    end = base + min(blk_len, block_size)
    offs = walk.offsets
    assert offs.dtype == np.int64 and offs.ndim == 1
    assert walk.end == end
    assert base <= walk.first <= end
    assert walk.lost == num - len(offs) >= 0
    if len(offs):
        assert offs[0] == walk.first == base + first_rel
        assert (offs % 4 == 0).all()
        assert offs[0] >= base + BLK_HDR_LEN and offs[-1] + MIN_FRAME_HDR <= end, "a header outside the block"
        steps = np.diff(offs)
        assert (steps == words[offs[:-1] >> 2]).all(), "the walk left the tp_next_offset chain"
        assert (steps >= MIN_FRAME_HDR).all(), "overlapping headers"
    if walk.lost:
        # What is lost really was unreachable: the next step is malformed or leaves the block.
        if len(offs):
            step = int(words[offs[-1] >> 2])
            assert step < MIN_FRAME_HDR or step % 4 or offs[-1] + step + MIN_FRAME_HDR > end
        else:
            assert first_rel < BLK_HDR_LEN or first_rel % 4 or base + first_rel + MIN_FRAME_HDR > end


def run_walk(ring: np.ndarray, index: int, block_size: int) -> BlockWalk:
    """walk_block on the exactly-sized ring through a tracing view, checked for reads and invariants."""
    u32 = traced(ring.view(np.uint32))
    base = index * block_size
    walk = walk_block(u32, base, block_size)
    assert_reads_inside([u32], block_regions(base, block_size, descriptor(ring, base)[3]))
    check_walk(ring, base, block_size, walk)
    return walk


SNAPLENS = st.one_of(
    st.integers(0, 128),
    st.integers(0, 2000),
    st.sampled_from([0, 1, 42, 54, 60, 66, 1514, 9000, 65535]),
)


@st.composite
def pkt_plans(draw: st.DrawFn, block_size: int, geo: Geometry, min_frames: int = 0) -> list[Pkt]:
    """Runs of equal frames (the constant-stride case) of mixed sizes, cut to fit the block; maybe a filler."""
    runs = draw(
        st.lists(
            st.tuples(
                SNAPLENS,
                st.integers(1, 40),
                st.integers(0, 65535),
                st.sampled_from([0, 0, 5, 0x2064]),
                st.sampled_from([0, 1, 2, 3, 4]),
            ),
            max_size=6,
        )
    )
    sec = draw(st.integers(0, U32_MAX))
    nsec = draw(st.integers(0, 999_999_999))
    room = block_size - BLK_HDR_LEN
    pkts: list[Pkt] = []

    def add(snaplen: int, extra: int = 0, tci: int = 0, pkttype: int = 0) -> None:
        nonlocal room
        room -= geo.total(snaplen)
        tpid = 0x88A8 if tci and len(pkts) % 2 else 0
        pkts.append(Pkt(snaplen, snaplen + extra, sec, (nsec + len(pkts)) % 1_000_000_000, tci, tpid, pkttype))

    for snaplen, count, extra, tci, pkttype in runs:
        for _ in range(count):
            if geo.total(snaplen) > room:
                break
            add(snaplen, extra, tci, pkttype)
    while len(pkts) < min_frames:
        add(60)
    if draw(st.booleans()) and room >= geo.tp_mac:
        add(room - geo.tp_mac, 0)  # the last frame fills the block to its last byte
    return pkts


@st.composite
def valid_blocks(draw: st.DrawFn, min_frames: int = 0) -> tuple[np.ndarray, LaidBlock]:
    """One kernel-laid block in a ring of 2-4 blocks, often the ring's last one."""
    block_nr = draw(st.integers(2, 4))
    block_size = draw(st.sampled_from([4096, 8192, 1 << 17]))
    index = draw(st.one_of(st.just(block_nr - 1), st.integers(0, block_nr - 1)))
    geo = draw(GEOMETRIES)
    pkts = draw(pkt_plans(block_size, geo, min_frames))
    status = draw(st.sampled_from([L.TP_STATUS_USER, L.TP_STATUS_USER | TP_STATUS_BLK_TMO]))
    ring = new_ring(block_size, block_nr)
    return ring, lay_block(ring, index, block_size, geo, pkts, status=status, seq=draw(st.integers(0, 2**64 - 1)))


# --- walk_block on valid blocks ------------------------------------------------------------------


@FAST
@given(valid_blocks())
def test_walk_yields_exactly_the_laid_out_headers(case: tuple[np.ndarray, LaidBlock]) -> None:
    """Mixed frame sizes, zero-length frames, fillers, last blocks: every header, nothing lost."""
    ring, laid = case
    walk = run_walk(ring, laid.index, laid.block_size)
    assert walk.offsets.tolist() == list(laid.offsets)
    assert walk.lost == 0
    assert walk.first == laid.base + BLK_HDR_LEN
    assert walk.end == laid.end


@FAST
@given(
    block_nr=st.integers(2, 4),
    block_size=st.sampled_from([4096, 8192, 1 << 16]),
    geo=GEOMETRIES,
    snaplen=SNAPLENS,
    count=st.integers(9, 5000),
    last=st.one_of(st.none(), SNAPLENS),
    at_end=st.booleans(),
)
def test_walk_of_constant_stride_blocks(
    block_nr: int, block_size: int, geo: Geometry, snaplen: int, count: int, last: int | None, at_end: bool
) -> None:
    """More than 8 frames of one size (the gather fast path), maybe a different last frame."""
    room = block_size - BLK_HDR_LEN
    snaplen = min(snaplen, room // 9 - geo.tp_mac - geo.align)  # at least 9 frames fit
    count = min(count, room // geo.total(snaplen))
    if last is not None and geo.total(last) > room - 9 * geo.total(snaplen):
        last = None
    if last is not None:
        count = min(count, (room - geo.total(last)) // geo.total(snaplen))
    assert count >= 9
    pkts = [Pkt(snaplen, snaplen)] * count + ([Pkt(last, last)] if last is not None else [])
    ring = new_ring(block_size, block_nr)
    laid = lay_block(ring, block_nr - 1 if at_end else 0, block_size, geo, pkts)
    walk = run_walk(ring, laid.index, block_size)
    assert walk.offsets.tolist() == list(laid.offsets)
    assert walk.lost == 0


@settings(FAST, max_examples=12)
@given(
    block_nr=st.integers(2, 4),
    gro=st.integers(60_000, 65_535),
    small=st.lists(st.integers(0, 128), min_size=1, max_size=8),
    count=st.integers(1000, 3000),
    geo=GEOMETRIES,
    first_is_gro=st.booleans(),
)
def test_gro_frame_then_thousands_of_small_frames_in_the_last_block(
    block_nr: int, gro: int, small: list[int], count: int, geo: Geometry, first_is_gro: bool
) -> None:
    """The regression: a 64 KB GRO frame first, then thousands of ACK-sized frames, in the ring's last block.

    A stride guessed from the first frame points ~65 KB * num_pkts past the block; following
    tp_next_offset must find every frame, and Ring.batches() must report each one as laid out.
    """
    block_size = 1 << 19
    room = block_size - BLK_HDR_LEN - geo.total(gro)
    pkts = [] if first_is_gro else [Pkt(small[0], small[0])]
    room -= sum(geo.total(p.snaplen) for p in pkts)
    pkts.insert(0 if first_is_gro else 1, Pkt(gro, gro + 1448, nsec=1))
    for i in range(count):
        s = small[i % len(small)]
        if geo.total(s) > room:
            break
        room -= geo.total(s)
        pkts.append(Pkt(s, s + 4, nsec=i))
    assert len(pkts) > 1000
    ring = new_ring(block_size, block_nr)
    laid = lay_block(ring, block_nr - 1, block_size, geo, pkts)
    if first_is_gro:
        assert laid.offsets[0] + geo.total(gro) * (len(pkts) - 1) > ring.size  # the old guess left the ring
    walk = run_walk(ring, laid.index, block_size)
    assert walk.offsets.tolist() == list(laid.offsets)
    assert walk.lost == 0

    ring_obj = make_ring(ring, block_size, block_nr, next_block=block_nr - 1)
    batches = 0
    for batch in ring_obj.batches():
        check_batch(batch, [laid], ring)
        batches += 1
    assert batches == 1
    assert descriptor(ring, laid.base)[0] == L.TP_STATUS_KERNEL
    assert ring_obj.walk_errors == 0 and ring_obj._next == 0


@pytest.mark.parametrize("block_size", [4096, 1 << 17])
@pytest.mark.parametrize("geo", [KERNEL_GEOMETRY, DGRAM_GEOMETRY], ids=["ether", "cooked"])
def test_frame_filling_the_last_block(block_size: int, geo: Geometry) -> None:
    """One maximum-length frame whose last byte is the ring's last byte."""
    ring = new_ring(block_size, 2)
    snaplen = block_size - BLK_HDR_LEN - geo.tp_mac
    laid = lay_block(ring, 1, block_size, geo, [Pkt(snaplen, 65535)])
    assert laid.end == ring.size
    walk = run_walk(ring, 1, block_size)
    assert walk.offsets.tolist() == [block_size + BLK_HDR_LEN]
    assert walk.lost == 0 and walk.end == ring.size
    r = make_ring(ring, block_size, 2, next_block=1)
    (batch,) = list(r.batches())
    check_batch(batch, [laid], ring)
    assert int(batch.start[0] + batch.caplen[0]) == ring.size


@pytest.mark.parametrize("count", [1, 2, 8, 9, 46])
@pytest.mark.parametrize("at_end", [False, True])
def test_zero_length_frames(count: int, at_end: bool) -> None:
    """Frames with no bytes at all still have a header each (46 of them fill a 4 KB block)."""
    ring = new_ring(4096, 3)
    laid = lay_block(ring, 2 if at_end else 0, 4096, KERNEL_GEOMETRY, [Pkt(0, 0)] * count)
    walk = run_walk(ring, laid.index, 4096)
    assert walk.offsets.tolist() == list(laid.offsets)
    assert walk.lost == 0


def test_empty_block() -> None:
    """num_pkts 0: nothing to walk, nothing lost."""
    ring = new_ring(4096, 2)
    lay_block(ring, 1, 4096, KERNEL_GEOMETRY, [])
    walk = run_walk(ring, 1, 4096)
    assert len(walk.offsets) == 0 and walk.lost == 0


@pytest.mark.parametrize("pkts", [[Pkt(60, 60)], [Pkt(60, 60)] * 20, [Pkt(1514, 1514), Pkt(0, 0), Pkt(66, 66)]])
def test_num_pkts_at_its_maximum(pkts: list[Pkt]) -> None:
    """A garbage num_pkts of 2**32 - 1 costs the frames present, not a list of four billion slots."""
    ring = new_ring(4096, 2)
    laid = lay_block(ring, 1, 4096, KERNEL_GEOMETRY, pkts)
    ring.view(np.uint32)[(laid.base + L.BLOCK_NUM_PKTS_OFFSET) >> 2] = U32_MAX
    walk = run_walk(ring, 1, 4096)
    assert walk.offsets.tolist() == list(laid.offsets)
    assert walk.lost == U32_MAX - len(pkts)


# --- walk_block on corrupt blocks ----------------------------------------------------------------

CORRUPTIONS = (
    "next_past_block",
    "next_zero",
    "next_unaligned",
    "next_overlapping",
    "num_pkts_more",
    "num_pkts_fewer",
    "blk_len_big",
    "blk_len_small",
    "first_garbage",
    "random_words",
)


def corrupt(draw: st.DrawFn, ring: np.ndarray, laid: LaidBlock, kind: str) -> tuple[list[int], int] | None:
    """Damage `laid` one way; the (offsets, lost) this damage alone implies, or None if anything goes."""
    words = ring.view(np.uint32)
    base, offs = laid.base, list(laid.offsets)
    n = len(offs)
    if kind.startswith("next_"):
        j = draw(st.integers(0, n - 1))
        off = offs[j]
        if kind == "next_past_block":
            lo = laid.end - MIN_FRAME_HDR - off + 1  # the next header would not fit before the used end
            v = draw(st.one_of(st.integers(lo, lo + 64), st.integers(lo, U32_MAX - 3)))
            v += -v % 4
        elif kind == "next_zero":
            v = 0
        elif kind == "next_unaligned":
            v = draw(st.one_of(st.integers(1, 3).map(lambda r: int(words[off >> 2]) + r), st.integers(0, U32_MAX)))
            v = min(v, U32_MAX) | (1 if v % 4 == 0 else 0)
        else:
            v = draw(st.sampled_from(range(4, MIN_FRAME_HDR, 4)))
        words[off >> 2] = v
        return (offs[: j + 1], n - j - 1) if j < n - 1 else (offs, 0)
    if kind == "num_pkts_more":
        extra = draw(st.one_of(st.integers(1, 10), st.integers(1, U32_MAX - n)))
        words[(base + L.BLOCK_NUM_PKTS_OFFSET) >> 2] = n + extra
        return offs, extra
    if kind == "num_pkts_fewer":
        k = draw(st.integers(0, n - 1))
        words[(base + L.BLOCK_NUM_PKTS_OFFSET) >> 2] = k
        return offs[:k], 0
    if kind == "blk_len_big":
        words[(base + L.BLOCK_LEN_OFFSET) >> 2] = draw(st.integers(laid.block_size + 1, U32_MAX))
        return offs, 0
    if kind == "blk_len_small":
        v = draw(st.integers(0, laid.blk_len - 1))
        words[(base + L.BLOCK_LEN_OFFSET) >> 2] = v
        keep = [o for o in offs if o + MIN_FRAME_HDR <= base + v]
        return keep, n - len(keep)
    if kind == "first_garbage":
        v = draw(st.one_of(st.integers(0, U32_MAX), st.sampled_from(offs).map(lambda o: o - base)))
        words[(base + L.BLOCK_FIRST_PKT_OFFSET) >> 2] = v
        if base + v in offs:  # the walk starts at frame k, reaches the n - k after it, loses k
            k = offs.index(base + v)
            return offs[k:], k
        return None
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(base >> 2, ((base + laid.block_size) >> 2) - 1))
        words[at] = draw(st.one_of(st.integers(0, U32_MAX), st.integers(0, 4 * MIN_FRAME_HDR)))
    return None


@st.composite
def corrupt_blocks(draw: st.DrawFn) -> tuple[np.ndarray, LaidBlock, list[str], tuple[list[int], int] | None]:
    """A valid block damaged one to three ways, with the walk one damage alone implies."""
    ring, laid = draw(valid_blocks(min_frames=1))
    kinds = draw(st.lists(st.sampled_from(CORRUPTIONS), min_size=1, max_size=3))
    expected = [corrupt(draw, ring, laid, k) for k in kinds]
    return ring, laid, kinds, expected[0] if len(kinds) == 1 else None


@settings(FAST, max_examples=150)
@given(corrupt_blocks())
def test_corrupt_block_walk_stays_inside_and_counts_lost(
    case: tuple[np.ndarray, LaidBlock, list[str], tuple[list[int], int] | None],
) -> None:
    """Garbage never raises or reads outside the block; offsets stay inside; lost = num_pkts - found."""
    ring, laid, _, expected = case
    walk = run_walk(ring, laid.index, laid.block_size)
    if expected is not None:
        offs, lost = expected
        assert walk.offsets.tolist() == offs
        assert walk.lost == lost


@settings(FAST, max_examples=150)
@given(
    block_size=st.sampled_from([4096, 8192]),
    at_end=st.booleans(),
    words=st.lists(st.integers(0, U32_MAX) | st.integers(0, 600), min_size=6, max_size=64),
    num=st.integers(0, U32_MAX) | st.integers(0, 100),
    first=st.integers(0, U32_MAX) | st.integers(0, 600),
    blk_len=st.integers(0, U32_MAX) | st.integers(0, 8192),
)
def test_walk_of_arbitrary_bytes(
    block_size: int, at_end: bool, words: list[int], num: int, first: int, blk_len: int
) -> None:
    """A block of pure garbage: the invariants hold all the same."""
    ring = new_ring(block_size, 2)
    base = block_size if at_end else 0
    w = ring.view(np.uint32)
    region = w[(base >> 2) + 12 : (base + block_size) >> 2]
    region[:] = np.resize(np.array(words, np.uint32), region.shape)
    L.TPACKET_BLOCK_DESC.pack_into(ring, base, 1, BLK_HDR_LEN, L.TP_STATUS_USER, num, first, blk_len, 0, 0, 0, 0, 0)
    run_walk(ring, 1 if at_end else 0, block_size)


# --- Ring.batches() ------------------------------------------------------------------------------


def make_ring(ring: np.ndarray, block_size: int, block_nr: int, next_block: int = 0) -> Ring:
    """A Ring over the synthetic buffer, without a socket: only the attributes batches() reads, traced."""
    r = object.__new__(Ring)
    r.ifname = IFNAME
    r.label = IFNAME
    r.config = RingConfig(block_size=block_size, block_nr=block_nr)
    r.linktype = LINKTYPE_ETHERNET
    r.block_nr = block_nr
    r.walk_errors = 0
    r._next = next_block
    r.blocks_taken = 0
    r.buf = traced(ring)
    r.u32 = traced(ring.view(np.uint32))
    r.mv32 = memoryview(ring).cast("I")
    return r


def ring_reads_inside(r: Ring, ring: np.ndarray, taken: Sequence[int]) -> None:
    """batches() read only descriptors, and the used part of the blocks it took."""
    bs = r.config.block_size
    regions = [(i * bs, i * bs + BLK_HDR_LEN) for i in range(r.block_nr)]
    regions += [block_regions(i * bs, bs, descriptor(ring, i * bs)[3])[1] for i in taken]
    assert_reads_inside([r.buf, r.u32], regions)


def check_batch(batch: Block, blocks: Sequence[LaidBlock], ring: np.ndarray) -> None:
    """The batch's columns are exactly the frames laid into `blocks`, in order, each inside its block."""
    pkts = [p for b in blocks for p in b.pkts]
    hdr = np.array([o for b in blocks for o in b.offsets], np.int64)
    mac = np.array([b.geo.tp_mac for b in blocks for _ in b.pkts], np.int64)
    ends = np.array([b.end for b in blocks for _ in b.pkts], np.int64)
    assert len(batch) == len(pkts)
    assert batch.data.size == ring.size and np.shares_memory(batch.data, ring)
    assert batch.linktype == LINKTYPE_ETHERNET and batch.iface == IFNAME
    assert batch.start.tolist() == (hdr + mac).tolist()
    assert batch.caplen.tolist() == [p.snaplen for p in pkts]
    assert batch.wirelen.tolist() == [p.wirelen for p in pkts]
    assert batch.ts_ns.tolist() == [p.ts_ns for p in pkts]
    assert batch.vlan_tci is not None and batch.vlan_tci.tolist() == [p.vlan_tci for p in pkts]
    assert batch.vlan_tpid is not None and batch.vlan_tpid.tolist() == [p.vlan_tpid for p in pkts]
    assert batch.vlan_valid is not None and batch.vlan_valid.tolist() == [p.vlan_tci != 0 for p in pkts]
    assert batch.pkttype is not None and batch.pkttype.tolist() == [p.pkttype for p in pkts]
    assert (batch.start + batch.caplen <= ends).all(), "a frame reaches past its block"
    fills = [f for b in blocks for f in b.fills]
    for s, c, f in zip(batch.start.tolist(), batch.caplen.tolist(), fills, strict=True):
        assert (ring[s : s + c] == f).all()


@dataclass(frozen=True)
class RingCase:
    """A synthetic ring: every block laid out, `ready` the blocks batches() must take, in order."""

    ring: np.ndarray
    block_size: int
    block_nr: int
    start: int
    blocks: tuple[LaidBlock, ...]
    ready: tuple[int, ...]
    max_blocks: int


@st.composite
def ring_cases(draw: st.DrawFn) -> RingCase:
    """2-4 blocks; a run of user-owned blocks from `start` (wrapping), then one the kernel holds, then any."""
    block_nr = draw(st.integers(2, 4))
    block_size = draw(st.sampled_from([4096, 8192, 1 << 17]))
    geo = draw(GEOMETRIES)
    start = draw(st.integers(0, block_nr - 1))
    nready = draw(st.integers(0, block_nr))
    ready = tuple((start + k) % block_nr for k in range(nready))
    stop = (start + nready) % block_nr if nready < block_nr else None
    ring = new_ring(block_size, block_nr)
    blocks = []
    for i in range(block_nr):
        if i in ready:
            status = draw(st.sampled_from([L.TP_STATUS_USER, L.TP_STATUS_USER | TP_STATUS_BLK_TMO]))
        elif i == stop:
            status = L.TP_STATUS_KERNEL
        else:  # past the first kernel-owned block: batches() must not look further
            status = draw(st.sampled_from([L.TP_STATUS_KERNEL, L.TP_STATUS_USER]))
        blocks.append(lay_block(ring, i, block_size, geo, draw(pkt_plans(block_size, geo)), status=status, seq=i))
    return RingCase(ring, block_size, block_nr, start, tuple(blocks), ready, draw(st.integers(1, 5)))


@settings(FAST, max_examples=50)
@given(ring_cases())
def test_batches_yield_the_laid_out_frames_and_give_blocks_back(case: RingCase) -> None:
    """Blocks in ring order from _next, max_blocks per batch, columns as laid out, status 0 afterwards."""
    ring, bs = case.ring, case.block_size
    before = [descriptor(ring, i * bs)[0] for i in range(case.block_nr)]
    r = make_ring(ring, bs, case.block_nr, next_block=case.start)
    per = min(case.max_blocks, case.block_nr)
    chunks = [case.ready[k : k + per] for k in range(0, len(case.ready), per)]
    n = 0
    for n, batch in enumerate(r.batches(case.max_blocks), 1):
        assert n <= len(chunks)
        chunk = chunks[n - 1]
        # Earlier batches' blocks are back with the kernel; this batch's stay ours until the next one.
        assert all(descriptor(ring, i * bs)[0] == L.TP_STATUS_KERNEL for c in chunks[: n - 1] for i in c)
        assert all(descriptor(ring, i * bs)[0] & L.TP_STATUS_USER for i in chunk)
        check_batch(batch, [case.blocks[i] for i in chunk], ring)
    assert n == len(chunks)
    after = [descriptor(ring, i * bs)[0] for i in range(case.block_nr)]
    assert after == [L.TP_STATUS_KERNEL if i in case.ready else before[i] for i in range(case.block_nr)]
    assert r._next == (case.start + len(case.ready)) % case.block_nr
    assert r.blocks_taken == len(case.ready)  # what the drain paces itself by
    assert r.walk_errors == 0
    ring_reads_inside(r, ring, case.ready)


@settings(FAST, max_examples=50)
@given(ring_cases(), st.data())
def test_batches_over_corrupt_blocks(case: RingCase, data: st.DataObject) -> None:
    """Damaged blocks: no exception, frames clipped to their block, walk_errors = sum of lost, blocks back."""
    ring, bs = case.ring, case.block_size
    for i in case.ready:
        if case.blocks[i].pkts and data.draw(st.booleans()):
            for kind in data.draw(st.lists(st.sampled_from(CORRUPTIONS), min_size=1, max_size=2)):
                corrupt(data.draw, ring, case.blocks[i], kind)
    taken = []  # random words may have handed a block back or over: what the descriptors now say
    while len(taken) < case.block_nr:
        i = (case.start + len(taken)) % case.block_nr
        if not descriptor(ring, i * bs)[0] & L.TP_STATUS_USER:
            break
        taken.append(i)
    walks = {i: walk_block(ring.view(np.uint32), i * bs, bs) for i in taken}
    r = make_ring(ring, bs, case.block_nr, next_block=case.start)
    per = min(case.max_blocks, case.block_nr)
    chunks = [taken[k : k + per] for k in range(0, len(taken), per)]
    n = 0
    for n, batch in enumerate(r.batches(case.max_blocks), 1):
        chunk = chunks[n - 1]
        assert len(batch) == sum(len(walks[i].offsets) for i in chunk)
        lo = np.concatenate([np.full(len(walks[i].offsets), i * bs + BLK_HDR_LEN) for i in chunk])
        hi = np.concatenate([np.full(len(walks[i].offsets), walks[i].end) for i in chunk])
        stop = batch.start + batch.caplen
        assert ((lo <= batch.start) & (batch.caplen >= 0) & (stop <= hi)).all(), "a frame outside its block"
        hdr = np.concatenate([walks[i].offsets for i in chunk])
        assert (batch.caplen <= ring.view(np.uint32)[(hdr + L.TP_SNAPLEN) >> 2]).all()
    assert n == len(chunks)
    assert all(descriptor(ring, i * bs)[0] == L.TP_STATUS_KERNEL for i in taken)
    assert r.walk_errors == sum(w.lost for w in walks.values())
    assert r._next == (case.start + len(taken)) % case.block_nr
    ring_reads_inside(r, ring, taken)


def test_batches_stopped_early_give_back_what_they_took() -> None:
    """Closing the generator after one batch returns that batch's blocks; the next call resumes after them."""
    bs, block_nr = 4096, 4
    ring = new_ring(bs, block_nr)
    blocks = [lay_block(ring, i, bs, KERNEL_GEOMETRY, [Pkt(60 + i, 60 + i)] * (i + 1), seq=i) for i in range(4)]
    r = make_ring(ring, bs, block_nr, next_block=0)
    gen = r.batches(max_blocks=1)
    check_batch(next(gen), [blocks[0]], ring)
    gen.close()
    assert [descriptor(ring, i * bs)[0] for i in range(4)] == [0, 1, 1, 1]
    assert r._next == 1
    assert [len(b) for b in r.batches(max_blocks=2)] == [2 + 3, 4]
    assert [descriptor(ring, i * bs)[0] for i in range(4)] == [0, 0, 0, 0]
    assert r._next == 0


@pytest.mark.parametrize(
    ("ours", "next_block", "ahead", "ready"),
    [
        ([2, 3, 4, 5], 2, 4, True),  # four blocks handed over from the next one on
        ([2, 3, 4], 2, 4, False),  # only three: the fourth is still the kernel's
        ([6, 7, 0, 1], 6, 4, True),  # across the end of the ring
        ([], 0, 1, False),  # an empty ring
        ([0, 1, 2, 3, 4, 5, 6, 7], 3, 100, True),  # more than the ring asked for: the whole ring
    ],
)
def test_ready_ahead_says_whether_a_share_of_the_ring_waits(
    ours: list[int], next_block: int, ahead: int, ready: bool
) -> None:
    """What ends the drain's wait early: the kernel fills blocks in ring order, so the last of k is enough."""
    bs, nr = 4096, 8
    ring = np.zeros(bs * nr, np.uint8)
    for i in ours:
        ring.view(np.uint32)[(i * bs + L.BLOCK_STATUS_OFFSET) >> 2] = L.TP_STATUS_USER
    assert make_ring(ring, bs, nr, next_block=next_block).ready_ahead(ahead) is ready
