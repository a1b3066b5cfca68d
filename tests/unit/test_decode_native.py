"""The compiled decoder and ring walk against the NumPy ones they replaced (tests/decode_reference.py).

Every column must be equal: on the mixed capture of tests/pcapgen.py (every kind of frame it makes,
re-framed for every link type, cut at random caplens, with stripped-VLAN columns), on pcap and pcapng
files read back through FileSource, and under hypothesis fuzzing with test_decode_fuzz's generators.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture_backend import _native
from capture_backend.analysis import decode as decode_module
from capture_backend.analysis.decode import Decoded, decode
from capture_backend.capture import layouts as L
from capture_backend.capture.block import LINKTYPE_ETHERNET, Block
from capture_backend.capture.pcapfile import FileSource
from capture_backend.capture.ring import FRAME_FIELDS, MIN_FRAME_HDR, BlockWalk, FrameColumns, walk_block
from tests.decode_reference import decode_reference
from tests.helpers.decode_fuzz import LINKTYPES, blocks, frames_for, reframe
from tests.pcapgen import block_of, mixed_frames, write_mixed

FIELDS = (
    "ts_ns", "wirelen", "ethertype", "vlan", "ip", "src_key", "dst_key", "proto", "sport", "dport", "tcp_flags",
    "malformed", "tcp_seq", "tcp_ack", "tcp_window", "tcp_len", "l7_start", "l7_cap",
)  # fmt: skip
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class _DirtyNumpy:
    """NumPy whose np.empty hands out memory full of 0xA5 bytes: a column the compiled decode forgot to write
    for some frame then differs from the reference, instead of passing on freshly zeroed pages."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def empty(shape: Any, dtype: Any = float) -> np.ndarray:
        a = np.empty(shape, dtype)
        a.reshape(-1).view(np.uint8)[:] = 0xA5
        return a


def assert_same(block: Block) -> Decoded:
    with mock.patch.object(decode_module, "np", _DirtyNumpy()):
        got = decode(block)
    want = decode_reference(block)
    for name in FIELDS:
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == w.dtype and g.shape == w.shape, name
        bad = np.flatnonzero((g != w).reshape(len(block), -1).any(axis=1))
        assert bad.size == 0, f"{name} differs in rows {bad[:10].tolist()}: {g[bad[:3]]} != {w[bad[:3]]}"
    # l7_head: the payload's first 8 captured bytes, big-endian, zero past them (0 without a payload).
    data = np.asarray(block.data).view(np.uint8).tobytes()
    assert got.l7_head is not None and got.l7_head.dtype == np.uint64
    for i, (start, cap) in enumerate(zip(want.l7_start.tolist(), want.l7_cap.tolist(), strict=True)):
        head = data[start : start + min(cap, 8)] if start >= 0 else b""
        assert int(got.l7_head[i]) == int.from_bytes(head.ljust(8, b"\0"), "big"), i
    return got


@pytest.mark.parametrize("linktype", LINKTYPES)
def test_mixed_capture_every_link_type(linktype: int) -> None:
    frames = mixed_frames(1, 2000)
    data = [reframe(f.data, linktype) for f in frames]
    rng = np.random.default_rng(linktype)
    d = assert_same(block_of(data, linktype, wirelen=[f.wirelen for f in frames], ts_ns=[f.ts_ns for f in frames]))
    if linktype == LINKTYPE_ETHERNET:
        assert d.ip.sum() > 1500 and (d.tcp_len > 0).sum() > 100 and (d.vlan >= 0).any()
    # The same frames cut at random lengths, with stripped-VLAN columns.
    caplen = [int(rng.integers(0, len(f) + 1)) for f in data]
    tci = rng.integers(0, 0x10000, len(data)).tolist()
    valid = (rng.random(len(data)) < 0.3).tolist()
    assert_same(block_of(data, linktype, caplen=caplen, vlan_tci=tci, vlan_valid=valid))


@pytest.mark.parametrize(("nanosecond", "pcapng"), [(False, False), (True, True)])
def test_files_read_back(tmp_path: Path, nanosecond: bool, pcapng: bool) -> None:
    path = tmp_path / "mix.pcap"
    write_mixed(path, seed=3, n=1500, nanosecond=nanosecond, pcapng=pcapng)
    with FileSource(str(path), chunk_bytes=1 << 16) as src:
        rows = sum(len(assert_same(b)) for b in src.blocks())
    assert rows == 1500


def test_ring_like_layout() -> None:
    """Frames at 16-byte aligned slots of a bigger buffer, bytes after each frame not zero."""
    frames = [f.data for f in mixed_frames(2, 600)]
    stride = max(len(f) for f in frames) + 82 + 16 & ~15
    buf = np.full(stride * len(frames), 0xAB, np.uint8)
    start = np.arange(len(frames), dtype=np.int64) * stride + 82
    for s, f in zip(start.tolist(), frames, strict=True):
        buf[s : s + len(f)] = np.frombuffer(f, np.uint8)
    n = len(frames)
    lengths = np.array([len(f) for f in frames], np.int64)
    assert_same(Block(buf, start, lengths, lengths.copy(), np.arange(n, dtype=np.int64), LINKTYPE_ETHERNET, "r0"))


def tcp_v4(total_len: int, payload: int) -> bytes:
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total_len, 1, 0x4000, 64, 6, 0, a, b)
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, 1000, 0, 5 << 4, 0x18, 512, 0, 0)
    return bytes(12) + b"\x08\x00" + ip + tcp + bytes(payload)


def tcp_v6(payload_len: int, payload: int) -> bytes:
    ip = struct.pack("!IHBB16s16s", 6 << 28, payload_len, 6, 64, bytes(15) + b"\x01", bytes(15) + b"\x02")
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, 1000, 0, 5 << 4, 0x18, 512, 0, 0)
    return bytes(12) + b"\x86\xdd" + ip + tcp + bytes(payload)


def test_ip_length_past_the_frame_is_capped_as_tshark_does() -> None:
    """tshark 4.0 on these frames (tcp.len): an IP length claiming more than the frame's length on the
    wire counts only what the frame carried; a frame cut by the snaplen keeps the IP length."""
    v4, v6 = tcp_v4(1000, 46), tcp_v6(1000, 46)
    block = block_of([v4, v4, v4, v6, v6], wirelen=[100, 1014, 500, 120, 500])
    d = assert_same(block)
    assert d.tcp_len.tolist() == [46, 960, 446, 46, 426]
    assert d.l7_cap.tolist() == [46] * 5
    assert not d.malformed.any()


@FUZZ
@given(blocks(max_frames=16))
def test_fuzzed_blocks(block: Block) -> None:
    assert_same(block)


@FUZZ
@given(linktype=st.sampled_from(LINKTYPES), data=st.data())
def test_fuzzed_frames_wire_length_below_caplen(linktype: int, data: st.DataObject) -> None:
    frames = data.draw(st.lists(frames_for(linktype), min_size=1, max_size=8))
    wirelen = [data.draw(st.integers(0, len(f) + 80)) for f in frames]
    assert_same(block_of(frames, linktype, wirelen=wirelen))


@FUZZ
@given(blocks(max_frames=16))
def test_batch_totals_equal_numpy_over_the_decoded_columns(block: Block) -> None:
    d = decode(block)
    by_proto = np.zeros((256, 2), np.int64)
    got = _native.batch_totals(
        d.wirelen.astype(np.int64), d.malformed.view(np.uint8), d.ts_ns.astype(np.int64), d.ethertype, d.vlan,
        d.ip.view(np.uint8), d.proto, by_proto,
    )  # fmt: skip
    n = len(d)
    ip_protos = set(d.proto[d.ip].tolist())
    if len(ip_protos) > 1:  # per protocol: packets and bytes
        assert {p: tuple(by_proto[p]) for p in np.flatnonzero(by_proto[:, 0]).tolist()} == {
            p: (int((d.ip & (d.proto == p)).sum()), int(d.wirelen[d.ip & (d.proto == p)].sum())) for p in ip_protos
        }
    else:
        assert not by_proto.any()
    assert got == (
        int(d.wirelen.sum()),
        int(d.malformed.sum()),
        int(d.ts_ns.min()) if n else np.iinfo(np.int64).max,
        int(d.ts_ns.max()) if n else np.iinfo(np.int64).min,
        int(d.ethertype[0]) if n and len(set(d.ethertype.tolist())) == 1 else -1,
        int((d.vlan >= 0).sum()),
        int(d.ip.sum()),
        int(d.wirelen[d.ip].sum()),
        ip_protos.pop() if len(ip_protos) == 1 else -1,
    )


def test_empty_frames_and_buffer() -> None:
    assert_same(block_of([b"", b""]))
    assert len(decode(block_of([]))) == 0


# -- Ring walk ---------------------------------------------------------------------------------------


def walk_reference(u32: np.ndarray, base: int, block_size: int) -> BlockWalk:
    """ring.walk_block as it was in Python (without its constant-stride shortcut, which gave the same)."""
    num = int(u32[(base + L.BLOCK_NUM_PKTS_OFFSET) >> 2])
    first_rel = int(u32[(base + L.BLOCK_FIRST_PKT_OFFSET) >> 2])
    used = int(u32[(base + L.BLOCK_LEN_OFFSET) >> 2])
    end = base + min(max(used, 0), block_size)
    first = base + first_rel
    last_hdr = end - MIN_FRAME_HDR
    if num == 0 or first_rel < L.TPACKET_BLOCK_DESC.size or first & 3 or first > last_hdr:
        return BlockWalk(np.zeros(0, np.int64), min(first, end), end, num)
    offsets = [0] * num
    off = first
    for i in range(num):
        offsets[i] = off
        if i == num - 1:
            break
        step = int(u32[off >> 2])
        off += step
        if step < MIN_FRAME_HDR or step & 3 or off > last_hdr:
            return BlockWalk(np.array(offsets[: i + 1], np.int64), first, end, num - i - 1)
    return BlockWalk(np.array(offsets, np.int64), first, end, 0)


BLOCK = 4096


@st.composite
def ring_blocks(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """A two-block ring whose second block holds frames at drawn (sometimes corrupt) next offsets."""
    ring = np.zeros(2 * BLOCK // 4, np.uint32)
    base = BLOCK if draw(st.booleans()) else 0
    first_rel = draw(st.sampled_from([L.TPACKET_BLOCK_DESC.size, 48, 0, 2, 64, BLOCK - 8, BLOCK + 16]))
    steps = draw(st.lists(st.one_of(st.sampled_from([96, 112, 128, 2048]), st.integers(0, 5000)), max_size=40))
    off = base + first_rel
    for step in steps:
        if 0 <= off < base + BLOCK - 4 and not off & 3:
            ring[off >> 2] = step
            off += step
    num = draw(st.one_of(st.just(len(steps) + 1), st.integers(0, 60), st.just(2**32 - 1)))
    used = draw(st.one_of(st.just(BLOCK), st.integers(0, BLOCK + 100)))
    descriptor = ((L.BLOCK_NUM_PKTS_OFFSET, num), (L.BLOCK_FIRST_PKT_OFFSET, first_rel), (L.BLOCK_LEN_OFFSET, used))
    for at, value in descriptor:
        ring[(base + at) >> 2] = value
    return ring, base


@settings(max_examples=400, deadline=None)
@given(ring_blocks())
def test_walk_block_as_the_python_walk(case: tuple[np.ndarray, int]) -> None:
    ring, base = case
    if int(ring[(base + L.BLOCK_NUM_PKTS_OFFSET) >> 2]) > 10_000:
        want_lost_at_least = 1  # the Python walk would build a list of 4 G offsets: checked by bounds only
        got = walk_block(ring, base, BLOCK)
        assert got.lost >= want_lost_at_least and (got.offsets < base + BLOCK).all()
        return
    got, want = walk_block(ring, base, BLOCK), walk_reference(ring, base, BLOCK)
    assert got.offsets.tolist() == want.offsets.tolist()
    assert (got.first, got.end, got.lost) == (want.first, want.end, want.lost)


def test_walk_block_refuses_a_block_outside_the_ring() -> None:
    ring = np.zeros(BLOCK // 4, np.uint32)
    ring[L.BLOCK_LEN_OFFSET >> 2] = BLOCK
    with pytest.raises(ValueError):
        c = FrameColumns.empty(1)
        _native.walk_frames(
            ring.view(np.uint8), BLOCK, BLOCK, 1, 48, BLOCK, 48, MIN_FRAME_HDR, FRAME_FIELDS, 0, 0, c.hdr, c.start,
            c.caplen, c.wirelen, c.ts, c.tci, c.tpid, c.valid.view(np.uint8), c.pkttype,
        )  # fmt: skip


def test_link_type_out_of_range_is_unknown() -> None:
    for linktype in (-1, 1 << 31, 1 << 40):
        d = decode(block_of([bytes(60)], linktype))
        assert d.malformed.tolist() == [True] and d.ethertype.tolist() == [0]
