"""Hypothesis strategies for the decoder: frames of every link type, mutated, in blocks."""

from __future__ import annotations

import struct

from hypothesis import strategies as st

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
from tests.pcapgen import block_of, mixed_frames

LINKTYPES = [
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_LOOP,
    147,  # a link type decode() does not know
]


def l3_of(frame: bytes) -> tuple[int, bytes]:
    """(ethertype, network-layer bytes) of an Ethernet frame, after up to two VLAN tags."""
    off, et = 14, int.from_bytes(frame[12:14], "big")
    while et in (0x8100, 0x88A8, 0x9100) and len(frame) >= off + 4:
        et, off = int.from_bytes(frame[off + 2 : off + 4], "big"), off + 4
    return et, frame[off:]


def reframe(frame: bytes, linktype: int) -> bytes:
    """An Ethernet frame of the mix as a frame of another link type."""
    et, l3 = l3_of(frame)
    family = {0x0800: 2, 0x86DD: 30}.get(et, 7)
    if linktype == LINKTYPE_LINUX_SLL:
        return struct.pack(">HHH8sH", 0, 1, 6, frame[6:12], et) + l3
    if linktype == LINKTYPE_LINUX_SLL2:
        return struct.pack(">HHIHBB8s", et, 0, 3, 1, 0, 6, frame[6:12]) + l3
    if linktype == LINKTYPE_NULL:
        return struct.pack("<I", family) + l3
    if linktype == LINKTYPE_LOOP:
        return struct.pack(">I", family) + l3
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return l3
    return frame


def _seeds() -> dict[int, tuple[bytes, ...]]:
    """Valid frames of every kind in the mix (full captures only), framed for each link type."""
    frames = [f.data for f in mixed_frames(1, 400) if f.wirelen == len(f.data)]
    return {lt: tuple(reframe(f, lt) for f in frames) for lt in LINKTYPES}


SEEDS = _seeds()  # built here, not inside a strategy (the generator uses its own random.Random)


@st.composite
def mutated(draw: st.DrawFn, linktype: int) -> bytes:
    """A valid frame with some bytes replaced and maybe cut short (or extended)."""
    pool = SEEDS[linktype]
    frame = bytearray(pool[draw(st.integers(0, len(pool) - 1))])
    for _ in range(draw(st.integers(0, 4))):
        if frame:
            frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(frame)))
    return bytes(frame[:cut]) + draw(st.binary(max_size=4))


def frames_for(linktype: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=200), mutated(linktype))


@st.composite
def blocks(draw: st.DrawFn, max_frames: int = 12) -> Block:
    """A block of random or mutated frames with caplen <= length, wirelen >= caplen, maybe VLAN columns."""
    linktype = draw(st.sampled_from(LINKTYPES))
    frames = draw(st.lists(frames_for(linktype), min_size=1, max_size=max_frames))
    caplen = [draw(st.integers(0, len(f))) for f in frames]
    wirelen = [c + draw(st.integers(0, 100)) for c in caplen]
    ts = draw(st.lists(st.integers(0, 2**62), min_size=len(frames), max_size=len(frames)))
    vlan = draw(st.booleans())
    tci = [draw(st.integers(0, 0xFFFF)) for _ in frames] if vlan else None
    valid = [draw(st.booleans()) for _ in frames] if vlan else None
    return block_of(frames, linktype, caplen=caplen, wirelen=wirelen, ts_ns=ts, vlan_tci=tci, vlan_valid=valid)
