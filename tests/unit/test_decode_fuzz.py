"""Hypothesis: decode() and Counters.add() never raise, whatever the bytes, lengths and link type.

Frames are random bytes or mutations (flipped bytes, cuts at any length) of valid frames of the
mixed capture re-framed for every supported link type; blocks hold one or many frames, with
caplen below the frame length and random stripped-VLAN columns.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture_backend.analysis.decode import Decoded, decode
from capture_backend.analysis.tables import CounterLimits, Counters
from capture_backend.capture.block import (
    Block,
)
from tests.helpers.decode_fuzz import LINKTYPES, SEEDS, blocks, mutated
from tests.pcapgen import block_of

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COLUMNS = ("ts_ns", "wirelen", "ethertype", "vlan", "ip", "proto", "sport", "dport", "tcp_flags", "malformed")


def check_shapes(d: Decoded, n: int) -> None:
    """Every column has one row per packet; values stay in their domains."""
    assert len(d) == n
    for name in COLUMNS:
        assert getattr(d, name).shape == (n,), name
    assert d.src_key.shape == d.dst_key.shape == (n, 2)
    assert d.src.shape == d.dst.shape == (n, 16)
    assert ((d.proto >= -1) & (d.proto <= 255)).all()
    assert (d.proto[~d.ip] == -1).all()
    assert ((d.sport >= 0) & (d.sport <= 0xFFFF) & (d.dport >= 0) & (d.dport <= 0xFFFF)).all()
    ported = np.isin(d.proto, (6, 17, 132))
    assert (d.sport[~ported] == 0).all() and (d.dport[~ported] == 0).all()
    assert (d.tcp_flags[d.proto != 6] == 0).all()
    assert ((d.vlan >= -1) & (d.vlan <= 0xFFF)).all()


def count(block: Block, d: Decoded) -> None:
    """Counters.add on the decoded block, with tiny tables so eviction paths run too."""
    c = Counters(CounterLimits(flows=4, pairs=3, hosts=3, ports=2))
    c.add(d)
    c.add(d)  # the same packets again: existing rows, and evictions of rows in use are refused
    assert c.packets == 2 * len(block)
    assert c.bytes == 2 * int(d.wirelen.sum())
    assert c.malformed == 2 * int(d.malformed.sum())
    assert len(c.flows) <= 4 and len(c.pairs) <= 3 and len(c.hosts) <= 3 and len(c.ports) <= 2
    for table in (c.flows, c.pairs, c.hosts, c.ports):
        snap = table.freeze(int(d.ts_ns.max()) // 1_000_000_000 + 1)
        assert len(snap) == len(table)
    c.expire(int(d.ts_ns.max()) + 1)


@SETTINGS
@given(linktype=st.sampled_from(LINKTYPES), data=st.binary(max_size=300))
def test_random_bytes_single_frame(linktype: int, data: bytes) -> None:
    block = block_of([data], linktype)
    d = decode(block)
    check_shapes(d, 1)
    if not data:  # an empty frame has no link header: malformed, never IP
        assert bool(d.malformed[0]) and not bool(d.ip[0])
    count(block, d)


@SETTINGS
@given(st.data())
def test_mutated_valid_frames_single(data: st.DataObject) -> None:
    linktype = data.draw(st.sampled_from(LINKTYPES))
    frame = data.draw(mutated(linktype))
    block = block_of([frame], linktype, wirelen=[len(frame) + data.draw(st.integers(0, 64))])
    d = decode(block)
    check_shapes(d, 1)
    count(block, d)


@SETTINGS
@given(blocks())
def test_multi_frame_blocks_with_caplen_below_length(block: Block) -> None:
    d = decode(block)
    check_shapes(d, len(block))
    count(block, d)


@SETTINGS
@given(blocks(max_frames=6), st.data())
def test_bytes_beyond_caplen_never_matter(block: Block, data: st.DataObject) -> None:
    """Decoding a frame inside a block equals decoding its captured bytes alone, followed by garbage."""
    whole = decode(block)
    for i in range(len(block)):
        start, cap = int(block.start[i]), int(block.caplen[i])
        captured = block.data[start : start + cap].tobytes()
        garbage = data.draw(st.binary(max_size=40))
        pick = slice(i, i + 1)
        alone = decode(
            block_of(
                [captured + garbage],
                block.linktype,
                caplen=[cap],
                wirelen=block.wirelen[pick].tolist(),
                ts_ns=block.ts_ns[pick].tolist(),
                vlan_tci=None if block.vlan_tci is None else block.vlan_tci[pick].tolist(),
                vlan_valid=None if block.vlan_valid is None else block.vlan_valid[pick].tolist(),
            )
        )
        for name in COLUMNS:
            assert getattr(alone, name)[0] == getattr(whole, name)[i], (name, i)
        if whole.ip[i]:  # addresses are only defined for IP rows
            assert (alone.src_key[0] == whole.src_key[i]).all() and (alone.dst_key[0] == whole.dst_key[i]).all()


@settings(max_examples=40, deadline=None)
@given(linktype=st.sampled_from(LINKTYPES), index=st.integers(0, 10**6))
def test_every_cut_of_a_valid_frame(linktype: int, index: int) -> None:
    """All cuts of one valid frame in one block: never raises, and the full length is never malformed."""
    pool = SEEDS[linktype]
    frame = pool[index % len(pool)]
    n = len(frame) + 1
    block = block_of([frame] * n, linktype, caplen=list(range(n)), wirelen=[len(frame)] * n)
    d = decode(block)
    check_shapes(d, n)
    if linktype != 147:
        assert not d.malformed[-1]
        assert d.malformed[0]
    count(block, d)
