"""The compiled table loops (group-by, folding groups into rows, resetting evicted rows) against NumPy."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture_backend._native import (
    add_directed,
    add_traffic,
    copy_runs,
    fill_rows,
    group_packets,
    group_rows,
    oldest_rows,
    walk_pcap,
)
from capture_backend.analysis.tables import HISTORY_SECONDS, INT64_MAX, NS, TRAFFIC_COLUMNS, KeyTable


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5),
    st.lists(st.integers(0, 6), min_size=0, max_size=300),
)
def test_group_rows_puts_exactly_the_equal_rows_together(width: int, picks: list[int]) -> None:
    rng = np.random.default_rng(len(picks) * 7 + width)
    # Few distinct rows, repeated in runs and out of order, some differing in one word only.
    distinct = rng.integers(0, 3, (7, width), dtype=np.uint64)
    k = np.ascontiguousarray(distinct[picks]) if picks else np.zeros((0, width), np.uint64)
    inv = np.empty(len(picks), np.int64)
    first = group_rows(k, inv)
    expected = np.unique(k, axis=0) if len(picks) else k
    assert first.size == expected.shape[0]
    assert (k[first[inv]] == k).all()  # every row is in its representative's group
    assert np.unique(k[first], axis=0).shape[0] == first.size  # no two groups share a row value
    assert (inv[first] == np.arange(first.size)).all()  # groups numbered in order of first appearance
    assert (np.diff(first) > 0).all()


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 300),
    st.sampled_from(["few values", "full int64 range", "all equal", "nanoseconds"]),
    st.integers(0, 2**32),
)
def test_oldest_rows_are_the_smallest_last_then_lowest_row(h: int, spread: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    used = rng.random(h) < 0.8
    last = {
        "few values": lambda: rng.integers(-5, 5, h),
        "full int64 range": lambda: rng.integers(-(2**63), 2**63 - 1, h, dtype=np.int64),
        "all equal": lambda: np.full(h, 7),
        "nanoseconds": lambda: rng.integers(0, 10**12, h),
    }[spread]().astype(np.int64)
    keep = rng.integers(0, max(h, 1), int(rng.integers(0, 10))) if h else np.zeros(0, np.int64)
    count = int(rng.integers(0, h + 3))
    rows = np.flatnonzero(used & ~np.isin(np.arange(h), keep))
    expected = np.sort(rows[np.lexsort((rows, last[rows]))[:count]])
    got = oldest_rows(used.view(np.uint8), last, keep.astype(np.int64), count)
    assert got.tolist() == expected.tolist()


def test_copy_runs_copies_each_run_and_refuses_one_outside_the_buffers() -> None:
    rng = np.random.default_rng(5)
    src8 = rng.integers(0, 256, 5000, dtype=np.uint8)
    length = rng.integers(0, 90, 40).astype(np.int64)
    src = rng.integers(0, 5000 - 90, 40).astype(np.int64)
    dst = np.concatenate(([0], np.cumsum(length)[:-1])).astype(np.int64)  # packed one after another
    dst8 = np.zeros(int(length.sum()), np.uint8)
    copy_runs(dst8, dst, src8, src, length)
    assert dst8.tobytes() == b"".join(src8[s : s + k].tobytes() for s, k in zip(src, length, strict=True))
    for bad_src, bad_len in ((4990, 20), (-1, 5)):
        with pytest.raises(ValueError, match="outside the buffers"):
            copy_runs(dst8, dst[:1], src8, np.array([bad_src]), np.array([bad_len]))
    assert dst8.tobytes() == b"".join(src8[s : s + k].tobytes() for s, k in zip(src, length, strict=True))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.integers(0, 2**32))
def test_group_packets_equals_numpy_grouping_and_sums(n: int, seed: int) -> None:
    """Packets of few 5-tuples, in runs and interleaved, over a few seconds (some before 1970)."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, 6, n)
    src = rng.integers(0, 3, (6, 2), dtype=np.uint64)[pick]
    dst = rng.integers(0, 3, (6, 2), dtype=np.uint64)[pick]
    sport = rng.integers(0, 65536, 6).astype(np.int32)[pick]
    dport = rng.integers(0, 3, 6).astype(np.int32)[pick]
    proto = np.array([6, 17, 1, 6, 17, 132], np.int32)[pick]
    ts = np.sort(rng.integers(-2 * NS, 3 * NS, n)).astype(np.int64)
    wire = rng.integers(60, 1515, n).astype(np.int64)
    flags = rng.integers(0, 256, n).astype(np.uint8)
    inv = np.empty(n, np.int64)
    first, packets, nbytes, tfirst, tlast, gflags = group_packets(src, dst, sport, dport, proto, ts, wire, flags, inv)
    k = np.empty((n, 6), np.uint64)  # the NumPy grouping it replaced
    k[:, 0:2], k[:, 2:4] = src, dst
    k[:, 4] = (
        proto.astype(np.uint64) | (sport.astype(np.uint64) << np.uint64(8)) | (dport.astype(np.uint64) << np.uint64(24))
    )
    k[:, 5] = (ts // NS).astype(np.uint64)
    ref_inv = np.empty(n, np.int64)
    ref_first = group_rows(k, ref_inv)
    g = ref_first.size
    assert first.tolist() == ref_first.tolist() and inv.tolist() == ref_inv.tolist()
    assert packets.tolist() == np.bincount(ref_inv, minlength=g).tolist()
    assert nbytes.tolist() == [int(wire[ref_inv == j].sum()) for j in range(g)]
    assert tfirst.tolist() == [int(ts[ref_inv == j].min()) for j in range(g)]
    assert tlast.tolist() == [int(ts[ref_inv == j].max()) for j in range(g)]
    assert gflags.tolist() == [int(np.bitwise_or.reduce(flags[ref_inv == j])) for j in range(g)]


def test_group_rows_with_colliding_home_slots() -> None:
    # 20,000 distinct rows in one batch: the table probes past full home slots.
    k = np.arange(20_000, dtype=np.uint64).reshape(-1, 1) * np.uint64(1 << 40)
    k = np.concatenate([k, k[::-1]])
    inv = np.empty(k.shape[0], np.int64)
    first = group_rows(k, inv)
    assert first.size == 20_000
    assert (inv[20_000:] == np.arange(20_000)[::-1]).all()


def test_add_traffic_equals_numpy_scatter() -> None:
    rng = np.random.default_rng(3)
    rows = 50
    ids = rng.integers(-1, rows, 2_000).astype(np.int64)  # -1: over capacity, skipped
    direction = rng.integers(0, 2, ids.size).astype(np.int64)
    p, b = rng.integers(1, 9, ids.size), rng.integers(60, 9000, ids.size)
    f = rng.integers(10**9, 2 * 10**9, ids.size)
    last = f + rng.integers(0, 10**6, ids.size)
    packets, nbytes = np.zeros((rows, 2), np.int64), np.zeros((rows, 2), np.int64)
    first_col, last_col = np.full(rows, INT64_MAX, np.int64), np.zeros(rows, np.int64)
    add_traffic(packets, nbytes, first_col, last_col, ids, direction, p, b, f, last)
    ok = ids >= 0
    want_p, want_b = np.zeros((rows, 2), np.int64), np.zeros((rows, 2), np.int64)
    np.add.at(want_p, (ids[ok], direction[ok]), p[ok])
    np.add.at(want_b, (ids[ok], direction[ok]), b[ok])
    want_first, want_last = np.full(rows, INT64_MAX, np.int64), np.zeros(rows, np.int64)
    np.minimum.at(want_first, ids[ok], f[ok])
    np.maximum.at(want_last, ids[ok], last[ok])
    assert (packets == want_p).all() and (nbytes == want_b).all()
    assert (first_col == want_first).all() and (last_col == want_last).all()
    hist = np.zeros((rows, 2), np.int64)
    add_directed(hist, ids, direction, b)
    assert (hist == want_b).all()


def test_fill_rows_resets_only_the_given_rows() -> None:
    col = np.arange(40, dtype=np.int64).reshape(20, 2)
    fill = np.array([[-1, 7]], np.int64).view(np.uint8).ravel()
    fill_rows(col.view(np.uint8).reshape(20, 16), np.array([3, 19, 3, 25, -2], np.int64), fill)
    want = np.arange(40, dtype=np.int64).reshape(20, 2)
    want[[3, 19]] = [-1, 7]
    assert (col == want).all()  # 25 and -2 are outside the column: ignored


def _history_table() -> KeyTable:
    return KeyTable(4, TRAFFIC_COLUMNS, capacity=2, history=True)


def _send(t: KeyTable, key: bytes, sec: int, nbytes: int) -> int:
    ids = t.ids(np.frombuffer(key, np.uint8).reshape(1, 4).copy())
    one = np.ones(1, np.int64)
    ts = np.array([sec * NS], np.int64)
    t.cols["packets"][ids[0], 0] += 1
    t.cols["bytes"][ids[0], 0] += nbytes
    t.cols["first"][ids[0]] = min(int(t.cols["first"][ids[0]]), int(ts[0]))
    t.cols["last"][ids[0]] = max(int(t.cols["last"][ids[0]]), int(ts[0]))
    t.add_history(ids, ts // NS, 0 * one, nbytes * one)
    return int(ids[0])


def test_a_reused_row_does_not_inherit_its_last_owners_history() -> None:
    t = _history_table()
    base = 1_000
    for s in range(5):  # A and B send for 5 s; A much more
        _send(t, b"AAAA", base + s, 9_000)
        _send(t, b"BBBB", base + s, 100)
    row_a = int(t.index[b"AAAA"])
    t.remove(np.array([row_a]))
    c = _send(t, b"CCCC", base + 4, 50)  # C takes A's row in the same second A sent in
    assert c == row_a
    _send(t, b"CCCC", base + 5, 70)
    snap = t.freeze(base + 6)
    by_key = {bytes(snap.keys[i]): i for i in range(len(snap))}
    ci, bi = by_key[b"CCCC"], by_key[b"BBBB"]
    # The last 2 complete seconds (base+4, base+5): C sent 50 then 70; B 100 then nothing.
    assert snap.cols["avg2"][ci, 0] == (50 + 70) / 2
    assert snap.cols["avg10"][ci, 0] == (50 + 70) / 10
    assert snap.cols["peak"][ci, 0] == 70
    assert snap.cols["avg10"][bi, 0] == 500 / 10 and snap.cols["peak"][bi, 0] == 100
    assert HISTORY_SECONDS >= 10


def _walk_reference(buf: bytes, end: int, big: bool, max_incl: int) -> tuple[list[int], int]:
    order = ">" if big else "<"
    out, p = [], 0
    while p + 16 <= end:
        sec, frac, incl, orig = struct.unpack_from(order + "IIII", buf, p)
        if incl > max_incl or p + 16 + incl > end:
            break
        out.append((p, incl, orig, sec * 1_000_000_000 + frac * 1_000))
        p += 16 + incl
    return out, p


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 300), min_size=0, max_size=40),
    st.booleans(),
    st.integers(0, 20_000),
    st.integers(50, 400),
)
def test_walk_pcap_finds_the_same_records_as_a_python_walk(
    sizes: list[int], big: bool, cut: int, max_incl: int
) -> None:
    order = ">" if big else "<"
    buf = b"".join(
        struct.pack(order + "IIII", 1_700_000_000 + i, 999_999 - i, n, n + 7 * i) + bytes(n)
        for i, n in enumerate(sizes)
    )
    end = min(cut, len(buf))
    out, caplen, wirelen, ts = np.full((4, end // 16 + 1), -1, np.int64)
    count, stop = walk_pcap(np.frombuffer(buf, np.uint8), end, big, max_incl, 1_000, out, caplen, wirelen, ts)
    want, want_stop = _walk_reference(buf, end, big, max_incl)
    got = list(zip(*(col[:count].tolist() for col in (out, caplen, wirelen, ts)), strict=True))
    assert got == want and stop == want_stop


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(0, 60), st.integers(0, 60), st.integers(0, 2**32))
def test_match_keys_finds_each_key_among_the_rows_before(width: int, n_old: int, n_new: int, seed: int) -> None:
    """Rows still in their slot, rows that moved, rows gone and new rows: each key's row before, or -1."""
    from capture_backend._native import match_keys

    rng = np.random.default_rng(seed)
    pool = np.unique(rng.integers(0, 4, (n_old + n_new + 1, width), dtype=np.uint8), axis=0)
    rng.shuffle(pool)
    before = np.ascontiguousarray(pool[: len(pool) // 2])
    keys = np.ascontiguousarray(
        np.concatenate([before[rng.permutation(len(before))][: n_old // 2], pool[len(pool) // 2 :]])
    )
    # Candidates: some right, some wrong, some out of range, some none.
    cand = rng.integers(-2, len(before) + 2, len(keys)).astype(np.int64)
    out = np.empty(len(keys), np.int64)
    match_keys(keys, before, cand, out)
    where = {k.tobytes(): i for i, k in enumerate(before)}
    assert out.tolist() == [where.get(k.tobytes(), -1) for k in keys]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 30), st.integers(45, 200))
def test_window_sums_equal_the_bucket_by_bucket_sum(seed: int, n_rows: int, now_sec: int) -> None:
    """The 2/10/40 s means of a history with stale buckets (an older second) and rows whose history starts late."""
    from capture_backend._native import window_sums

    rng = np.random.default_rng(seed)
    hist = rng.integers(0, 1000, (HISTORY_SECONDS, n_rows, 2), dtype=np.uint64)
    secs = now_sec - 1 - np.arange(HISTORY_SECONDS)
    slot_sec = np.full(HISTORY_SECONDS, -1, np.int64)
    slot_sec[secs % HISTORY_SECONDS] = np.where(rng.random(HISTORY_SECONDS) < 0.2, secs - HISTORY_SECONDS, secs)
    hist_from = rng.integers(now_sec - 50, now_sec + 1, n_rows).astype(np.int64)
    rows = rng.permutation(n_rows)[: n_rows // 2 + 1].astype(np.int64) if n_rows else np.zeros(0, np.int64)
    out = np.empty((3, rows.size, 2), np.float64)
    window_sums(hist, slot_sec, hist_from, rows, now_sec, np.array([2, 10, 40], np.int64), out)
    total = np.zeros((n_rows, 2), np.uint64)
    for a in range(1, 41):
        k = (now_sec - a) % HISTORY_SECONDS
        if slot_sec[k] == now_sec - a:
            total += np.where((hist_from <= now_sec - a)[:, None], hist[k], np.uint64(0))
        if a in (2, 10, 40):
            assert out[(2, 10, 40).index(a)].tolist() == (total[rows] / a).tolist()


def test_pack_frames_copies_each_frame_into_16_byte_slots_and_refuses_what_lies_outside() -> None:
    """The time machine's copy: frames of every length (non-temporal 16-byte units), one whose last unit would
    read past the data (copied byte by byte), empty ones; nothing of the pool beyond the slots is touched."""
    import mmap

    from capture_backend._native import pack_frames

    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 5_000, dtype=np.uint8)
    start = np.array([3, 100, 7, 1_001, 0, 4_990], np.int64)
    caplen = np.array([100, 1, 1_500, 64, 0, 10], np.int64)  # the last ends 0 bytes before the data does
    backing = mmap.mmap(-1, 8192)
    pool = np.frombuffer(backing, np.uint8)
    pool[:] = 0xA5
    offset = np.empty(6, np.uint32)
    assert pack_frames(pool, 32, data, start, caplen, offset) == 112 + 16 + 1504 + 64 + 0 + 16
    assert offset.tolist() == [0, 112, 128, 1632, 1696, 1696]
    for i in range(6):
        at, s, c = 32 + int(offset[i]), int(start[i]), int(caplen[i])
        assert pool[at : at + c].tobytes() == data[s : s + c].tobytes()
    assert (pool[:32] == 0xA5).all() and (pool[32 + 1712 :] == 0xA5).all()
    for at, st_, cl in ((8, 0, 10), (-16, 0, 10), (8176, 0, 100), (0, 4_995, 10), (0, -1, 10)):
        with pytest.raises(ValueError):
            pack_frames(pool, at, data, np.array([st_], np.int64), np.array([cl], np.int64), np.empty(1, np.uint32))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 200))
def test_group_keys_equal_the_numpy_keys(seed: int, n: int) -> None:
    """Every table's key of each group as the NumPy code before it built them (flow_ends, pack_keys)."""
    from capture_backend._native import group_keys
    from capture_backend.analysis.decode import HAS_PORTS
    from capture_backend.analysis.tables import KEY_FIELDS, flow_ends
    from capture_backend.contract import FLOW_KEY, HOST_KEY, PAIR_KEY, PORT_KEY, key_bytes, pack_keys

    rng = np.random.default_rng(seed)
    words = rng.integers(0, 3, (2 * n, 2), dtype=np.uint64)  # few values: equal addresses and ports happen
    src, dst = np.ascontiguousarray(words[:n]), np.ascontiguousarray(words[n:])
    sport, dport = (rng.choice([0, 53, 80, 4000, 4001], n).astype(np.int32) for _ in range(2))
    proto = rng.choice([1, 6, 17, 58, 132], n).astype(np.int32)
    known = np.zeros(65536, bool)
    known[[53, 80]] = True
    rep = rng.permutation(n).astype(np.int64)
    flow = np.empty((n, FLOW_KEY.itemsize), np.uint8)
    pair = np.empty((n, PAIR_KEY.itemsize), np.uint8)
    host = np.empty((2 * n, HOST_KEY.itemsize), np.uint8)
    port = np.empty((n, PORT_KEY.itemsize), np.uint8)
    direction, port_dir = np.empty(n, np.int64), np.empty(n, np.int64)
    group_keys(rep, src, dst, sport, dport, proto, known.view(np.uint8), HAS_PORTS.view(np.uint8), KEY_FIELDS,
               flow, pair, host, port, direction, port_dir)  # fmt: skip
    ends = flow_ends(src[rep], dst[rep], sport[rep], dport[rep], proto[rep])
    assert flow.tolist() == ends.keys().tolist()
    assert direction.tolist() == ends.swap.astype(int).tolist()
    assert pair.tolist() == pack_keys(PAIR_KEY, n, a=ends.a, b=ends.b).tolist()
    assert host.tolist() == np.concatenate([key_bytes(src[rep]), key_bytes(dst[rep])]).tolist()
    has = HAS_PORTS[ends.proto.astype(np.int64)] & ((ends.aport != 0) | (ends.bport != 0))
    ka, kb = known[ends.aport], known[ends.bport]
    service = np.where(ka & ~kb, ends.aport, np.where(kb & ~ka, ends.bport, np.minimum(ends.aport, ends.bport)))
    to_service = np.where(ends.swap, ends.aport == service, ends.bport == service)
    assert port_dir.tolist() == np.where(has, 1 - to_service.astype(int), -1).tolist()
    want_port = pack_keys(PORT_KEY, n, proto=ends.proto, port=service)
    assert port[has].tolist() == want_port[has].tolist()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0, 6, 17, 0x0800, 0x86DD, 4095, 65535, 65536, -1, 1 << 40]), st.integers(0, 65535)),
        min_size=1,
        max_size=60,
    )
)
def test_tallies_count_packets_and_bytes_per_value(rows: list[tuple[int, int]]) -> None:
    """Protocol, ethertype and VLAN tallies: binned below 2**16, sorted for anything else, the same sums."""
    from capture_backend.analysis.tables import Tally, _tally

    keys = np.array([k for k, _ in rows], np.int64)
    wirelen = np.array([w for _, w in rows], np.int64)
    table: dict[int, Tally] = {6: Tally(packets=1, bytes=100)}
    _tally(table, keys, wirelen)
    want: dict[int, list[int]] = {6: [1, 100]}
    for k, w in rows:
        want.setdefault(k, [0, 0])
        want[k][0] += 1
        want[k][1] += w
    assert {k: [t.packets, t.bytes] for k, t in table.items()} == want
