"""The time machine: kept spans, limits by size and age, snapshots checked by tshark."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, UDP, Dot1Q, Ether, raw

from capture_backend._native import slot_spans
from capture_backend.analysis.decode import decode
from capture_backend.capture.pcapfile import FileSource
from capture_backend.rewind import timemachine
from capture_backend.rewind.timemachine import (
    PAGER_STEP,
    REST_AHEAD,
    SLOT,
    TOUCH_AHEAD,
    TimeMachine,
    save_pcap,
    select_port,
)
from tests.lab import REPO_ROOT, Lab, wait_for_output
from tests.pcapgen import block_of

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


def frames(n: int, size: int = 100, port: int = 5000) -> list[bytes]:
    return [
        raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000 + i, dport=port) / (b"p" * (size - 42)))
        for i in range(n)
    ]


def read_back(path: str) -> list[tuple[int, bytes, int]]:
    out = []
    with FileSource(path) as src:
        for b in src.blocks():
            for i in range(len(b)):
                s, c = int(b.start[i]), int(b.caplen[i])
                out.append((int(b.ts_ns[i]), b.data[s : s + c].tobytes(), int(b.wirelen[i])))
    return out


def test_snapshot_holds_exactly_what_was_kept(tmp_path: Path) -> None:
    tm = TimeMachine(size=1 << 20, seconds=60)
    sent = frames(30)
    ts = [T0 + i * 1_000_123 for i in range(30)]
    for k in range(3):  # three batches
        tm.add(block_of(sent[k * 10 : (k + 1) * 10], ts_ns=ts[k * 10 : (k + 1) * 10]))
    assert (tm.stats.packets, tm.stats.spans) == (30, 3)
    res = save_pcap(tm, tmp_path, now_ns=T0)
    assert res.packets == 30 and res.lost == 0
    assert [Path(p).name for p in res.paths] == ["retrotap-test0-20231114T221320.000000Z.pcap"]
    assert read_back(res.paths[0]) == [(t, f, len(f)) for t, f in zip(ts, sent, strict=True)]
    assert Path(res.paths[0]).stat().st_mode & 0o777 == 0o600
    # A selection keeps only its packets.
    tm.add(block_of(frames(5, port=53), ts_ns=[T0 + NS + i for i in range(5)]))
    only = save_pcap(tm, tmp_path / "", select=select_port(17, 53), now_ns=T0 + 1)
    assert only.packets == 5
    assert {decode(b).dport[0] for b in FileSource(only.paths[0]).blocks()} == {53}


def test_pool_is_bounded_by_bytes_and_by_age() -> None:
    one = frames(10)
    span_bytes = sum(-(-len(f) // SLOT) * SLOT for f in one)  # each packet in a 16-byte slot of the pool
    tm = TimeMachine(size=span_bytes * 3 + 10, seconds=60)
    for k in range(5):
        tm.add(block_of(one, ts_ns=[T0 + k * NS + i for i in range(10)]))
    assert tm.stats.spans == 3 and tm.stats.packets == 30 and tm.stats.expired_packets == 20
    assert [s.first_ns for s in tm.window()] == [T0 + 2 * NS, T0 + 3 * NS, T0 + 4 * NS]
    aged = TimeMachine(size=1 << 20, seconds=10)
    for k in range(5):
        aged.add(block_of(one, ts_ns=[T0 + k * 6 * NS + i for i in range(10)]))
    # The newest is at 24 s: everything older than 14 s is gone.
    assert [s.first_ns // NS - T0 // NS for s in aged.window()] == [18, 24]


def test_a_span_overwritten_while_read_is_reported_not_written() -> None:
    one = frames(10)
    tm = TimeMachine(size=sum(-(-len(f) // SLOT) * SLOT for f in one) * 2, seconds=60)
    tm.add(block_of(one, ts_ns=[T0 + i for i in range(10)]))
    old = tm.window()[0]
    tm.add(block_of(one, ts_ns=[T0 + NS + i for i in range(10)]))
    tm.add(block_of(one, ts_ns=[T0 + 2 * NS + i for i in range(10)]))  # reuses old's bytes
    assert tm.read(old) is None
    assert np.array_equal(tm.read(tm.window()[-1]).ts_ns, [T0 + 2 * NS + i for i in range(10)])  # type: ignore[union-attr]


@pytest.mark.live
def test_sigusr1_writes_the_last_seconds_live(lab: Lab, tmp_path: Path) -> None:
    mk = lambda i, tag: raw(  # noqa: E731
        Ether(dst=lab.mac_a, src=lab.mac_b)
        / (Dot1Q(vlan=7) if tag else IP(src="198.18.0.2", dst="198.18.0.1"))
        / ((IP(src="198.18.0.2", dst="198.18.0.1") / UDP(sport=4000, dport=i)) if tag else UDP(sport=4000, dport=i))
        / (b"s" * (10 + i % 300))
    )
    sent = [mk(i, tag=i % 10 == 0) for i in range(300)]
    proc = lab.popen_a(
        [
            sys.executable,
            "-m",
            "tui.cli",
            "stats",
            "-i",
            lab.veth("a"),
            "--format",
            "json",
            "--interval",
            "60",
            "--snapshot-dir",
            str(tmp_path),
            "--buffer-size",
            "8M",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    wait_for_output(proc, "listening on", timeout=30)
    assert lab.send_frames(sent) == 300
    # The kernel retires the last partly filled block after its timeout; ask a few times until it is all in.
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        proc.send_signal(signal.SIGUSR1)
        line = wait_for_output(proc, "snapshot:", timeout=10)
        seen.append(line.strip())
        if "(300 packets" in line:
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    path = line.split("snapshot: ", 1)[1].split(" (")[0]
    assert "(300 packets" in line, seen[-5:]
    shark = subprocess.run(
        ["tshark", "-r", path, "-T", "fields", "-e", "frame.len", "-e", "vlan.id", "-e", "udp.dstport"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    warnings = [w for w in shark.stderr.splitlines() if "Running as user" not in w]  # tshark's note when root
    assert shark.returncode == 0 and warnings == []
    rows = [line.split("\t") for line in shark.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [len(f) for f in sent]  # order, and VLAN tags put back
    assert [r[1] for r in rows] == ["7" if i % 10 == 0 else "" for i in range(300)]
    assert [int(r[2]) for r in rows] == list(range(300))
    assert [p[1] for p in read_back(path)] == sent


def test_a_wrap_expires_the_spans_left_at_the_end_of_the_pool() -> None:
    tm = TimeMachine(size=1000, seconds=60)
    sizes = [500, 300, 150, 300, 400, 400]  # ranges of different sizes, as a real ring gives
    sent = []
    for k, size in enumerate(sizes):
        frame = bytes([k + 1]) * size
        sent.append(frame)
        tm.add(block_of([frame], ts_ns=[T0 + k]))
    held = tm.window()
    # Whatever is still held reads back exactly as it was written; the rest was expired, not overwritten.
    for span in held:
        block = tm.read(span)
        assert block is not None
        assert block.data.tobytes() == sent[span.seq]
    # 500@0 300@500 150@800 | wrap: 300@0 (expires 0) | 400@300 (expires 1) | wrap: 400@0 expires 2, 3, 4.
    assert [s.seq for s in held] == [5]
    assert tm.stats.packets == 1 and tm.stats.expired_packets == 5


def rss_bytes() -> int:
    """This process's resident memory (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def test_the_pool_is_resident_only_as_far_as_traffic_has_filled_it() -> None:
    before = rss_bytes()
    tm = TimeMachine(size=512 << 20, seconds=60)
    # A quiet link: 512 MiB of pool, the pager faults in the rest window and stops there.
    assert tm.wait_touched(REST_AHEAD)
    time.sleep(0.2)
    assert tm.touched == REST_AHEAD
    assert rss_bytes() - before < REST_AHEAD + (4 << 20)
    # 40 MiB of traffic: the pager keeps ahead of the writer and goes no further.
    big = frames(200, size=1400)
    for k in range(150):
        tm.add(block_of(big, ts_ns=[T0 + k * 1000 + i for i in range(200)]))
    written = tm.stats.bytes
    assert written > 40 << 20
    assert tm.touched >= written  # the writer never copies into pages not faulted in
    # The writer asks for pages only when it comes within TOUCH_AHEAD of them, so the pager ends
    # between written + TOUCH_AHEAD and written + 2 * TOUCH_AHEAD (+ one step).
    assert tm.wait_touched(written + TOUCH_AHEAD)
    time.sleep(0.2)
    assert tm.touched <= written + 2 * TOUCH_AHEAD + PAGER_STEP
    assert rss_bytes() - before < tm.touched + (32 << 20)
    # The pool's bytes are what was kept: the pager never wrote over them.
    res = tm.spans[-1]
    assert bytes(tm.pool[res.offset : res.offset + 100]) == bytes(b"".join(big))[:100]


def test_a_trickle_keeps_the_pager_only_the_rest_window_ahead() -> None:
    tm = TimeMachine(size=256 << 20, seconds=60)
    assert tm.wait_touched(REST_AHEAD)
    small = frames(20, size=1000)
    for k in range(100):  # 2 MB in all: less than REST_AHEAD a second
        tm.add(block_of(small, ts_ns=[T0 + k * 1000 + i for i in range(20)]))
    written = tm.stats.bytes
    assert 1 << 20 < written < REST_AHEAD
    assert tm.wait_touched(written + REST_AHEAD)
    time.sleep(0.2)
    assert tm.touched <= written + REST_AHEAD + PAGER_STEP


def test_a_dead_pager_never_stalls_the_writer() -> None:
    tm = TimeMachine(size=256 << 20, seconds=60)
    assert tm.wait_touched(REST_AHEAD)
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    tm._pager = dead  # as if the pager thread had died: nothing pages ahead any more
    big = frames(200, size=1400)
    for k in range(200):
        tm.add(block_of(big, ts_ns=[T0 + k * 1000 + i for i in range(200)]))
    assert tm.stats.packets == 200 * 200
    assert tm.touched >= tm.stats.bytes > 2 * TOUCH_AHEAD
    last = tm.spans[-1]
    assert bytes(tm.pool[last.offset : last.offset + 100]) == b"".join(big)[:100]


def test_spans_keep_small_columns_and_give_back_the_packets_packed() -> None:
    """A span keeps 20 bytes of columns a packet (uint32 offsets and lengths, exact, and the time) and the stripped-VLAN
    columns only when it holds a tagged packet; view() and read() give the batch's own values back, as int64, with
    each packet's bytes in a 16-byte slot of the span."""
    tm = TimeMachine(1 << 20)
    untagged = block_of(frames(5, 100), wirelen=[100, 100, 1500, 0xFFFF_FFF0, 100])  # a file's 32-bit orig_len
    tagged = block_of(frames(3, 200), ts_ns=[T0 + 7, T0 + 8, T0 + 9], vlan_tci=[0, 0x2005, 0],
                      vlan_valid=[False, True, False])  # fmt: skip
    tm.add(untagged)
    tm.add(tagged)
    plain, vlan = tm.window()
    assert [plain.block.start.dtype, plain.block.caplen.dtype, plain.block.wirelen.dtype] == [np.uint32] * 3
    assert plain.block.vlan_tci is None and plain.block.vlan_valid is None and plain.block.pkttype is None
    assert vlan.block.vlan_tci.tolist() == [0, 0x2005, 0] and vlan.block.vlan_valid.tolist() == [False, True, False]
    for span, sent in ((plain, untagged), (vlan, tagged)):
        for got in (tm.view(span), tm.read(span)):
            assert got is not None
            for name in ("caplen", "wirelen", "ts_ns"):
                col = getattr(got, name)
                assert col.dtype == np.int64 and col.tolist() == getattr(sent, name).tolist(), name
            slots = [-(-int(c) // SLOT) * SLOT for c in sent.caplen]
            assert got.start.dtype == np.int64 and got.start.tolist() == [sum(slots[:i]) for i in range(len(slots))]
            assert span.length == got.data.size == sum(slots)
            for i in range(len(sent)):
                s, c, g = int(got.start[i]), int(got.caplen[i]), int(sent.start[i])
                assert got.data[s : s + c].tobytes() == sent.data[g : g + c].tobytes()
    assert decode(tm.view(vlan)).vlan.tolist() == [-1, 5, -1]


def test_a_batch_is_kept_in_spans_of_at_most_span_bytes_and_a_packet_larger_than_the_pool_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(timemachine, "SPAN_BYTES", 3000)
    tm = TimeMachine(1 << 20)
    sent = frames(9, 1000)  # 1008-byte slots: two to a span
    tm.add(block_of(sent, ts_ns=[T0 + i for i in range(9)]))
    spans = tm.window()
    assert [len(s.block) for s in spans] == [2, 2, 2, 2, 1]
    assert [s.length for s in spans] == [2016, 2016, 2016, 2016, 1008]
    got = [tm.read(s) for s in spans]
    assert [b.data[b.start[i] : b.start[i] + b.caplen[i]].tobytes() for b in got if b for i in range(len(b))] == sent
    small = TimeMachine(600)
    small.add(block_of([*frames(1, 100), *frames(1, 700), *frames(1, 200)], ts_ns=[T0, T0 + 1, T0 + 2]))
    assert small.stats.oversize_packets == 1
    assert (small.stats.packets, [len(s.block) for s in small.window()]) == (2, [2])
    assert small.window()[0].block.caplen.tolist() == [100, 200]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 5000), max_size=60), st.integers(1, 9000))
def test_slot_spans_cut_as_the_cumulative_sum_does(caplen: list[int], limit: int) -> None:
    slots = (np.array(caplen, np.int64) + 15) & -16
    ends, lengths, biggest = slot_spans(np.array(caplen, np.int64), limit)
    want_ends, want_lengths = [], []
    total = np.cumsum(slots)
    a = done = 0
    while a < len(caplen):  # each span: packets while the span's bytes stay within limit, at least one
        b = max(a + 1, int(np.searchsorted(total, done + limit, side="right")))
        want_ends.append(b)
        want_lengths.append(int(total[b - 1]) - done)
        a, done = b, int(total[b - 1])
    assert (ends.tolist(), lengths.tolist(), biggest) == (want_ends, want_lengths, int(slots.max(initial=0)))
