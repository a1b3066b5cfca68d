"""Several capture threads' snapshots merged into one (--threads) equal one thread counting everything.

The frames of a mixed capture (TCP, DNS, HTTP, fragments, VLANs, ARP, truncated frames) are dealt to two
counters by a symmetric hash of each frame's addresses and ports, as PACKET_FANOUT's hash mode deals them
to two rings; frames without ports (ICMP, fragments) alternate, so some flows are counted by both.
"""

from __future__ import annotations

import time

import numpy as np

from capture_backend.analysis.decode import decode
from capture_backend.analysis.merge import merge_snapshots, merge_tables
from capture_backend.analysis.tables import CounterLimits
from capture_backend.contract import Snapshot, TableSnapshot
from capture_backend.engine import Counting, file_statuses
from tests.pcapgen import block_of_frames, mixed_frames

CHUNK = 250


def count(frames: list, iface_bits: dict[str, int]) -> Snapshot:
    counting = Counting(CounterLimits(), False, "", time.time)
    counting.counters.iface_bits.update(iface_bits)
    for i in range(0, len(frames), CHUNK):
        counting.add(block_of_frames(frames[i : i + CHUNK]))
    return counting.freeze(file_statuses(counting), 0.0, {})


def deal(frames: list) -> list[list]:
    """Two parts, each frame to the part its symmetric flow hash picks; frames without ports alternate."""
    dec = decode(block_of_frames(frames))
    ends = np.sort(np.stack([dec.src_key[:, 0] ^ dec.src_key[:, 1], dec.dst_key[:, 0] ^ dec.dst_key[:, 1]]), axis=0)
    ports = np.sort(np.stack([dec.sport.astype(np.uint64), dec.dport.astype(np.uint64)]), axis=0)
    h = (ends[0] * np.uint64(31) + ends[1] * np.uint64(17) + ports[0] * np.uint64(7) + ports[1]) % np.uint64(2)
    # Frames without ports (ICMP, fragments) alternate, as a flow's later fragments can leave its first.
    h = np.where(ports[1] == 0, np.arange(h.size, dtype=np.uint64) % np.uint64(2), h)
    parts: list[list] = [[], []]
    for frame, k in zip(frames, h.tolist(), strict=True):
        parts[int(k)].append(frame)
    return parts


def rows(table: TableSnapshot) -> dict[bytes, dict[str, list]]:
    return {
        table.key_bytes(i): {n: np.asarray(c[i]).tolist() for n, c in table.cols.items()} for i in range(len(table))
    }


def test_two_threads_merged_equal_one_thread() -> None:
    frames = list(mixed_frames(seed=7, n=3000))
    whole = count(frames, {"test0": 0})
    parts = [count(p, {"test0": 0}) for p in deal(frames)]
    assert min(p.packets for p in parts) > 500  # both parts are busy
    merged = merge_snapshots(parts, whole.interfaces, {"flows": 1000, "pairs": 1000, "hosts": 1000, "ports": 1000})
    assert (merged.packets, merged.bytes, merged.malformed) == (whole.packets, whole.bytes, whole.malformed)
    assert (merged.first_ns, merged.last_ns) == (whole.first_ns, whole.last_ns)
    assert (dict(merged.ethertypes), dict(merged.protocols), dict(merged.vlans)) == (
        dict(whole.ethertypes),
        dict(whole.protocols),
        dict(whole.vlans),
    )
    split = set(rows(parts[0].flows)) & set(rows(parts[1].flows))
    assert split  # some flows are counted by both threads
    for name in ("flows", "pairs", "hosts", "ports"):
        got, want = rows(getattr(merged, name)), rows(getattr(whole, name))
        assert set(got) == set(want), name
        for key, row in want.items():
            same = ("packets", "bytes", "first", "last") if name != "flows" or key in split else tuple(row)
            assert {c: got[key][c] for c in same} == {c: row[c] for c in same}, (name, key)
        slots = getattr(merged, name).slots
        assert slots is not None and np.unique(slots).size == slots.size
    lat_m, lat_w = merged.latency, whole.latency
    assert (lat_m.exchanges, lat_m.unanswered) == (lat_w.exchanges, lat_w.unanswered) and lat_w.exchanges > 0
    for name in ("servers", "services"):
        got, want = rows(getattr(lat_m, name)), rows(getattr(lat_w, name))
        assert {k: (r["count"], r["sum"], r["max"]) for k, r in got.items()} == {
            k: (r["count"], r["sum"], r["max"]) for k, r in want.items()
        }
    assert sorted(e.latency_ns for e in lat_m.slowest) == sorted(e.latency_ns for e in lat_w.slowest)


def test_rows_of_one_key_merge_column_by_column() -> None:
    def table(
        packets: list[list[int]], first: list[int], last: list[int], flags: list[int], origin: list[int]
    ) -> TableSnapshot:
        cols = {
            "packets": np.array(packets, np.int64),
            "bytes": np.array(packets, np.int64) * 100,
            "first": np.array(first, np.int64),
            "last": np.array(last, np.int64),
            "tcp_flags": np.array(flags, np.uint8),
            "origin": np.array(origin, np.uint8),
        }
        keys = np.array([[k, 0, 0, 0] for k in range(len(first))], np.uint8)
        return TableSnapshot(keys, cols, evicted=1, slots=np.arange(len(first)))

    a = table([[1, 2], [5, 0]], [10, 20], [30, 40], [0x02, 0x10], [0, 1])
    b = table([[7, 0]], [5], [35], [0x01], [1])  # key 0 again: busier than a's row
    m = merge_tables([a, b], capacity=10)
    assert m.keys[:, 0].tolist() == [0, 1] and m.evicted == 2
    assert m.cols["packets"].tolist() == [[8, 2], [5, 0]]
    assert m.cols["bytes"].tolist() == [[800, 200], [500, 0]]
    assert (m.cols["first"].tolist(), m.cols["last"].tolist()) == ([5, 20], [35, 40])
    assert m.cols["tcp_flags"].tolist() == [0x03, 0x10]
    assert m.cols["origin"].tolist() == [1, 1]  # from b's row of key 0, the busier
    assert m.slots is not None and m.slots.tolist() == [0, 1]


def test_an_interface_row_sums_its_rings_and_shows_any_rings_error() -> None:
    from dataclasses import replace

    from capture_backend.contract import IfaceStatus
    from capture_backend.engine import _merged_statuses

    first = count(list(mixed_frames(seed=1, n=50)), {"test0": 0})
    ok = IfaceStatus("veth0", "up", "", 30, 3000, 31, 1, 0, None, ring_bytes=1 << 20)
    broken = replace(ok, packets=20, bytes=2000, received=22, kernel_drops=2, error="cannot capture on veth0: gone")
    parts = [replace(first, interfaces=(ok,), capture_cpu=1.5), replace(first, interfaces=(broken,), capture_cpu=0.5)]
    (row,) = _merged_statuses(parts)
    assert (row.packets, row.bytes, row.received, row.kernel_drops, row.ring_bytes) == (50, 5000, 53, 3, 2 << 20)
    assert row.error == "cannot capture on veth0: gone"
    assert [(r.thread, r.packets, r.kernel_drops, r.cpu) for r in row.rings] == [(0, 30, 1, 1.5), (1, 20, 2, 0.5)]
