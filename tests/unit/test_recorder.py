"""Rolling recording: rotation, retention, disk full, crash recovery, the index; checked by tshark."""

from __future__ import annotations

import os
import signal
import sqlite3
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from scapy.all import IP, UDP, Ether, raw

from capture_backend.capture.block import Block
from capture_backend.capture.pcapfile import PcapWriter
from capture_backend.rewind.index import INDEX_NAME
from capture_backend.rewind.recorder import Recorder, RecorderThread, RecordOptions, file_name
from capture_backend.rewind.timemachine import TimeMachine
from tests.helpers.recorder import RETROTAP, Log, Packet, read_back, recordings, tshark_packets
from tests.lab import REPO_ROOT, Lab
from tests.pcapgen import block_of

NS = 1_000_000_000
MINUTE = 60 * NS
T0 = 1_700_000_000 * NS - 1_700_000_000 * NS % MINUTE + 45 * NS  # 45 s into a minute


def frames(n: int, size: Callable[[int], int] = lambda i: 100 + i % 400, src: str = "10.0.0.1") -> list[bytes]:
    """UDP frames with distinct source ports and varying sizes."""
    return [
        raw(Ether() / IP(src=src, dst="10.0.0.2") / UDP(sport=1000 + i % 60000, dport=5000) / (b"r" * (size(i) - 42)))
        for i in range(n)
    ]


def all_packets(directory: Path) -> list[Packet]:
    return [p for f in recordings(directory) for p in read_back(f)]


def index_rows(directory: Path) -> dict[str, tuple[int, int, int, int]]:
    """path -> (first_ns, last_ns, packets, bytes) from the index."""
    with sqlite3.connect(directory / INDEX_NAME) as db:
        rows = db.execute("SELECT path, first_ns, last_ns, packets, bytes FROM files").fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def check_index(directory: Path) -> None:
    """Every closed file has a row that matches its contents, chunks tile it at record boundaries."""
    rows = index_rows(directory)
    assert set(rows) == {p.name for p in recordings(directory)}
    with sqlite3.connect(directory / INDEX_NAME) as db:
        for name, (first, last, packets, size) in rows.items():
            pkts = read_back(directory / name)
            assert (first, last, packets, size) == (
                min(p[0] for p in pkts),
                max(p[0] for p in pkts),
                len(pkts),
                (directory / name).stat().st_size,
            )
            chunks = db.execute("SELECT offset, end, packets FROM chunks WHERE path = ? ORDER BY offset", (name,))
            spans = chunks.fetchall()
            assert spans[0][0] == 24 and spans[-1][1] == size
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
            assert sum(s[2] for s in spans) == packets


def feed(rec: Recorder, data: Sequence[bytes], ts: Sequence[int], per_block: int, iface: str = "eth0") -> None:
    for k in range(0, len(data), per_block):
        rec.write(block_of(data[k : k + per_block], ts_ns=ts[k : k + per_block], iface=iface))


def test_rotation_by_size_and_by_the_minute(tmp_path: Path) -> None:
    sent = frames(700)
    ts = [T0 + i * 250_000_000 for i in range(700)]  # 4 per second for 175 s: crosses 3 minute boundaries
    log = Log()
    rec = Recorder(RecordOptions(str(tmp_path), rotate_bytes=30_000, rotate_ns=MINUTE), log, clock=lambda: ts[-1])
    rec.start()
    feed(rec, sent, ts, per_block=37)  # blocks straddle the boundaries
    rec.close()
    files = recordings(tmp_path)
    assert all_packets(tmp_path) == [(t, f, len(f)) for t, f in zip(ts, sent, strict=True)]
    assert sum(tshark_packets(f) for f in files) == 700
    minutes = []
    for f in files:
        pkts = read_back(f)
        assert f.name == file_name("eth0", pkts[0][0])  # named by its first packet
        assert len({t // MINUTE for t, _, _ in pkts}) == 1  # never across a minute
        assert f.stat().st_size <= 30_000 and f.stat().st_mode & 0o777 == 0o600
        minutes.append(pkts[0][0] // MINUTE)
    # Each minute's first file starts with that minute's first packet (clock-aligned, not -G style).
    firsts = {m: min(t for t in ts if t // MINUTE == m) for m in set(minutes)}
    assert {m: read_back(f)[0][0] for m, f in reversed(list(zip(minutes, files, strict=True)))} == firsts
    assert len(set(minutes)) == 4 and len(files) > 4  # size rotation happened inside minutes too
    assert [line.split(" (")[0] for line in log.having("closed ")] == [f"closed {f}" for f in files]
    assert not list(tmp_path.glob("*.partial"))
    assert rec.stats.packets == 700 and rec.stats.files == len(files)
    assert rec.stats.bytes == sum(f.stat().st_size for f in files)
    check_index(tmp_path)


def test_an_idle_file_is_closed_after_its_minute(tmp_path: Path) -> None:
    rec = Recorder(RecordOptions(str(tmp_path), rotate_ns=MINUTE, close_grace_ns=2 * NS), Log(), clock=lambda: T0)
    rec.start()
    feed(rec, frames(5), [T0 + i for i in range(5)], per_block=5)
    boundary = (T0 // MINUTE + 1) * MINUTE
    rec.tick(boundary + 2 * NS - 1)
    assert not recordings(tmp_path) and len(list(tmp_path.glob("*.pcap.partial"))) == 1
    rec.tick(boundary + 2 * NS)
    assert [f.name for f in recordings(tmp_path)] == [file_name("eth0", T0)]
    assert not list(tmp_path.glob("*.partial"))
    rec.close()
    check_index(tmp_path)


def minutes_of_traffic(rec: Recorder, n: int, iface: str = "eth0") -> list[int]:
    """One packet block per minute for n minutes; returns the first times."""
    firsts = [T0 + k * MINUTE for k in range(n)]
    for t in firsts:
        feed(rec, frames(3), [t, t + 1, t + 2], per_block=3, iface=iface)
    return firsts


def test_retention_by_count_keeps_the_open_and_the_newest_files(tmp_path: Path) -> None:
    log = Log()
    rec = Recorder(RecordOptions(str(tmp_path), keep_files=2, min_free_ratio=0), log, clock=lambda: T0)
    rec.start()
    firsts = minutes_of_traffic(rec, 6)
    firsts_b = minutes_of_traffic(rec, 2, iface="eth1")  # its own file set: never counted with eth0's
    # Six eth0 files were started; five are closed: the three oldest went, two closed + the open one stay.
    assert [f.name for f in recordings(tmp_path)] == sorted(
        [file_name("eth0", t) for t in firsts[3:5]] + [file_name("eth1", firsts_b[0])]
    )
    assert len(list(tmp_path.glob("*.partial"))) == 2
    assert [line.split(" (")[0] for line in log.having("deleted")] == [
        f"deleted {tmp_path / file_name('eth0', t)}" for t in firsts[:3]
    ]
    rec.close()  # closing adds the last file of each set; the limit then deletes the oldest again
    assert [f.name for f in recordings(tmp_path)] == sorted(
        [file_name("eth0", t) for t in firsts[4:]] + [file_name("eth1", t) for t in firsts_b]
    )
    check_index(tmp_path)
    # Fewer files than the limit: nothing is deleted.
    other = tmp_path / "other"
    other.mkdir()
    few = Recorder(RecordOptions(str(other), keep_files=10, min_free_ratio=0), Log(), clock=lambda: T0)
    few.start()
    minutes_of_traffic(few, 3)
    few.close()
    assert len(recordings(other)) == 3 and few.stats.deleted_files == 0


def test_retention_by_age_never_deletes_the_newest(tmp_path: Path) -> None:
    now = [T0]
    opts = RecordOptions(str(tmp_path), keep_age_ns=150 * NS, min_free_ratio=0)
    rec = Recorder(opts, Log(), clock=lambda: now[0])
    rec.start()
    for k in range(6):
        now[0] = T0 + k * MINUTE
        minutes_of_traffic_at(rec, now[0])
    # At the start of minute 5, files whose last packet is more than 150 s old are gone.
    assert [f.name for f in recordings(tmp_path)] == [file_name("eth0", T0 + k * MINUTE) for k in (3, 4)]
    now[0] = T0 + 10**6 * NS  # long after: every closed file is too old, yet the newest stays
    rec.tick(now[0])  # closes the open file, then retention runs
    assert [f.name for f in recordings(tmp_path)] == [file_name("eth0", T0 + 5 * MINUTE)]
    rec.close()
    check_index(tmp_path)


def minutes_of_traffic_at(rec: Recorder, t: int) -> None:
    feed(rec, frames(3), [t, t + 1, t + 2], per_block=3)


class FakeDisk:
    """statvfs of a 1 MB disk whose used space is the directory's files plus `other` bytes."""

    def __init__(self, directory: Path, other: int) -> None:
        self.directory = directory
        self.other = other

    def __call__(self, path: str) -> Any:
        used = self.other + sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())
        return os.statvfs_result((1, 1, 1 << 20, (1 << 20) - used, (1 << 20) - used, 0, 0, 0, 0, 255))


def test_retention_by_free_space_oldest_first(tmp_path: Path) -> None:
    disk = FakeDisk(tmp_path, other=700_000)
    opts = RecordOptions(str(tmp_path), rotate_bytes=20_000, rotate_ns=0, min_free_ratio=0.25, min_free_bytes=0)
    log = Log()
    rec = Recorder(opts, log, clock=lambda: T0, statvfs=disk)
    rec.start()
    sent = frames(2000, size=lambda i: 500)
    feed(rec, sent, [T0 + i * 1000 for i in range(2000)], per_block=50)
    assert len(list(tmp_path.glob("*.partial"))) == 1  # the open file is never a candidate
    rec.close()
    assert disk(str(tmp_path)).f_bavail >= (1 << 20) // 4  # room again after the last close
    kept = all_packets(tmp_path)
    assert 1 < len(recordings(tmp_path)) < 10
    assert kept == [(T0 + i * 1000, f, 500) for i, f in enumerate(sent)][-len(kept) :]  # the newest survive
    assert len(log.having("free space below --min-free")) == rec.stats.deleted_files > 0
    # A disk the recording can never make room on: everything goes but the open and the newest closed file.
    disk.other = 1 << 20
    again = Recorder(opts, log, clock=lambda: T0, statvfs=disk)
    again.start()
    newest = recordings(tmp_path)[-1]
    assert recordings(tmp_path) == [newest]
    feed(again, sent[:100], [T0 + 10**9 + i * 1000 for i in range(100)], per_block=50)
    assert recordings(tmp_path)[-1] != newest and len(list(tmp_path.glob("*.partial"))) == 1
    assert len(recordings(tmp_path)) == 1
    again.close()
    # 38 records of 516 bytes fit in 20 000: files of 38, 38 and 24 packets; only the last is left.
    assert [p[0] for p in read_back(recordings(tmp_path)[0])] == [T0 + 10**9 + i * 1000 for i in range(76, 100)]
    check_index(tmp_path)


def test_pool_overrun_is_counted_not_silent(tmp_path: Path) -> None:
    one = frames(10, size=lambda i: 200)
    tm = TimeMachine(size=10 * 208 * 3 + 100, seconds=600)  # three spans: 200-byte packets in 208-byte slots
    log = Log()
    rec = Recorder(RecordOptions(str(tmp_path)), log, clock=lambda: T0)
    rec.start()
    thread = RecorderThread(tm, rec, on_error=lambda _: None)
    tm.add(block_of(one, ts_ns=[T0 + i for i in range(10)]))
    thread.drain()
    for k in range(1, 8):  # the pool holds three of these seven
        tm.add(block_of(one, ts_ns=[T0 + k * NS + i for i in range(10)]))
    thread.stop()
    rec.close()
    assert (rec.stats.packets, rec.stats.lost_packets) == (40, 40)
    assert log.having("recorder behind") == [
        "recorder behind: 40 packets overwritten in the pool before they were written "
        "(40 in all; a larger --buffer-size gives the recorder more slack)"
    ]
    assert [p[0] for p in all_packets(tmp_path)] == [T0 + i for i in range(10)] + [
        T0 + k * NS + i for k in (5, 6, 7) for i in range(10)
    ]


def test_records_of_a_span_overwritten_while_they_were_assembled_are_not_written(tmp_path: Path) -> None:
    """The recorder assembles records straight from the pool; a span the capture thread overwrote meanwhile
    is counted lost and none of its bytes reach the file."""
    one = frames(10, size=lambda i: 200)
    tm = TimeMachine(size=10 * 208 * 2 + 100, seconds=600)  # two spans: 200-byte packets in 208-byte slots
    rec = Recorder(RecordOptions(str(tmp_path)), Log(), clock=lambda: T0)
    rec.start()
    thread = RecorderThread(tm, rec, on_error=lambda _: None)
    tm.add(block_of(one, ts_ns=[T0 + i for i in range(10)]))
    (span,) = tm.window()
    view = tm.view(span)
    for k in range(1, 3):  # the pool wraps over the first span while its view is held
        tm.add(block_of(one, ts_ns=[T0 + k * NS + i for i in range(10)]))
    assert not tm.intact(span)
    assert rec.write(view, intact=lambda: tm.intact(span)) == 10
    thread.last_seq, thread.expected = span.seq, 10  # as if drain() had just read it
    thread.stop()
    rec.close()
    assert rec.stats.packets == 20  # the two spans still in the pool
    assert [p[0] for p in all_packets(tmp_path)] == [T0 + k * NS + i for k in (1, 2) for i in range(10)]


def test_a_ring_batch_that_wraps_is_kept_and_written_in_order(tmp_path: Path) -> None:
    """A batch takes ring blocks in ring order: after the last block comes block 0, at a lower offset."""
    late, early = frames(6, size=lambda i: 300), frames(4, size=lambda i: 200, src="10.0.0.9")
    data = np.zeros(8192, np.uint8)
    starts = [5000 + 300 * i for i in range(6)] + [100 + 200 * i for i in range(4)]
    for at, f in zip(starts, late + early, strict=True):
        data[at : at + len(f)] = np.frombuffer(f, np.uint8)
    n = len(starts)
    lengths = np.array([len(f) for f in late + early], np.int64)
    block = Block(
        data=data,
        start=np.array(starts, np.int64),
        caplen=lengths,
        wirelen=lengths.copy(),
        ts_ns=T0 + np.arange(n, dtype=np.int64),
        linktype=1,
        iface="eth0",
    )
    tm = TimeMachine(size=1 << 20, seconds=600)
    tm.add(block)
    kept = [tm.read(s) for s in tm.window()]
    assert [len(b) for b in kept if b is not None] == [10]  # one span, packed in the batch's order
    rec = Recorder(RecordOptions(str(tmp_path)), Log(), clock=lambda: T0)
    rec.start()
    thread = RecorderThread(tm, rec, on_error=lambda _: None)
    thread.stop()
    rec.close()
    assert all_packets(tmp_path) == [(T0 + i, f, len(f)) for i, f in enumerate(late + early)]


def test_the_recorder_takes_its_index_from_the_capture_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a recorder reads, the time machine keeps each span's index columns from the decode the capture
    already made: the recorder writes files and index without decoding again, and the index is the same."""
    from capture_backend.analysis.decode import decode
    from capture_backend.rewind import recorder as recorder_module

    decoded_again: list[int] = []

    def counted(block: Block) -> Any:
        decoded_again.append(len(block))
        return decode(block)

    monkeypatch.setattr(recorder_module, "decode", counted)
    data = frames(300, src="10.0.0.7")
    ts = [T0 + i * 1_000 for i in range(300)]
    tm = TimeMachine(size=1 << 20, seconds=600)
    rec = Recorder(RecordOptions(str(tmp_path)), Log(), clock=lambda: T0)
    rec.start()
    thread = RecorderThread(tm, rec, on_error=lambda _: None)
    thread.start()
    assert tm.index_keys == {}
    for k in range(0, 300, 100):
        block = block_of(data[k : k + 100], ts_ns=ts[k : k + 100])
        tm.add(block, decode(block))
    thread.stop()
    assert tm.index_keys is None  # nobody reads them any more: the capture stops keeping them
    rec.close()
    assert decoded_again == []
    assert all_packets(tmp_path) == [(t, f, len(f)) for t, f in zip(ts, data, strict=True)]
    check_index(tmp_path)
    with sqlite3.connect(tmp_path / INDEX_NAME) as db:
        hosts = {bytes(h[i : i + 16]) for (h,) in db.execute("SELECT hosts FROM chunks") for i in range(0, len(h), 16)}
        ports = {bytes(p[i : i + 4]) for (p,) in db.execute("SELECT ports FROM chunks") for i in range(0, len(p), 4)}
    v4 = bytes(10) + b"\xff\xff"
    assert hosts == {v4 + bytes([10, 0, 0, 7]), v4 + bytes([10, 0, 0, 2])}
    assert struct.pack(">I", 17 << 16 | 5000) in ports


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted in teardown even when the test fails."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mnt)], check=True, timeout=30)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def test_disk_full_pauses_whole_records_and_resumes(small_disk: Path) -> None:
    log = Log()
    rec = Recorder(RecordOptions(str(small_disk), rotate_bytes=256 << 10, rotate_ns=0, min_free_ratio=0), log)
    rec.start()
    sent = frames(5000, size=lambda i: 700 + i % 300)  # ~4.3 MB on a 2 MiB disk
    ts = [T0 + i * 1000 for i in range(5000)]
    feed(rec, sent[:3000], ts[:3000], per_block=100)
    assert rec.paused and rec.stats.unwritten_packets > 0
    assert len(log.having("disk full: recording paused")) == 1  # said once
    for f in [*recordings(small_disk), *small_disk.glob("*.partial")]:
        assert tshark_packets(f) == len(read_back(f))  # whole records only, also in the open file
    written_before = rec.stats.packets
    lost_before = rec.stats.unwritten_packets
    assert written_before + lost_before == 3000
    # Free space: the recording resumes with the next block.
    freed = recordings(small_disk)[:4]
    freed_packets = sum(len(read_back(f)) for f in freed)
    for f in freed:
        f.unlink()
    feed(rec, sent[3000:3200], ts[3000:3200], per_block=100)
    assert not rec.paused and len(log.having("recording resumed")) == 1
    assert rec.stats.packets == written_before + 200
    feed(rec, sent[3200:], ts[3200:], per_block=100)  # fills up again: a second pause, said once more
    rec.close()
    assert len(log.having("disk full: recording paused")) == 2
    kept = all_packets(small_disk)
    assert len(kept) + freed_packets == rec.stats.packets
    assert rec.stats.packets + rec.stats.unwritten_packets == 5000
    for f in recordings(small_disk):
        assert tshark_packets(f) == len(read_back(f))
        assert f.stat().st_size == 24 + sum(16 + len(p[1]) for p in read_back(f))
    # Every packet written is one that was sent, in order, and none twice.
    wanted = {t: f for t, f in zip(ts, sent, strict=True)}
    assert all(wanted[t] == data for t, data, _ in kept)
    assert [p[0] for p in kept] == sorted({p[0] for p in kept})


def test_disk_full_with_min_free_deletes_oldest_and_goes_on(small_disk: Path) -> None:
    log = Log()
    opts = RecordOptions(str(small_disk), rotate_bytes=128 << 10, rotate_ns=0, min_free_ratio=0.3)
    rec = Recorder(opts, log)
    rec.start()
    sent = frames(6000, size=lambda i: 800)
    feed(rec, sent, [T0 + i * 1000 for i in range(6000)], per_block=100)
    rec.close()
    assert rec.stats.deleted_files > 0
    assert rec.stats.packets + rec.stats.unwritten_packets == 6000
    kept = all_packets(small_disk)
    assert kept[-1][0] == T0 + 5999 * 1000 or rec.stats.unwritten_packets > 0
    for f in recordings(small_disk):
        assert tshark_packets(f) == len(read_back(f))
    check_index(small_disk)


def test_partial_left_by_a_crash_is_recovered(tmp_path: Path) -> None:
    sent = frames(50)
    ts = [T0 + i for i in range(50)]
    rec = Recorder(RecordOptions(str(tmp_path)), Log(), clock=lambda: T0)
    rec.start()
    feed(rec, sent, ts, per_block=25)
    partial = next(tmp_path.glob("*.pcap.partial"))
    # As if killed: no close; then a record cut in the middle.
    os.close(rec.open_files["eth0"].fd)
    os.close(rec._lock_fd)
    with open(partial, "ab") as f:
        f.write(b"\x01\x02\x03\x04\x00\x00\x00\x00\x64\x00\x00\x00\x64\x00\x00\x00abc")
    log = Log()
    again = Recorder(RecordOptions(str(tmp_path)), log, clock=lambda: T0)
    again.start()
    again.close()
    (line,) = log.having("recovered")
    size = 24 + 50 * 16 + sum(map(len, sent))
    path = tmp_path / file_name("eth0", T0)
    assert line == f"recovered {path} (50 packets, {size} bytes, 19 trailing bytes of a cut record removed)"
    assert all_packets(tmp_path) == [(t, f, len(f)) for t, f in zip(ts, sent, strict=True)]
    assert tshark_packets(recordings(tmp_path)[0]) == 50
    check_index(tmp_path)


def test_one_recorder_per_directory(tmp_path: Path) -> None:
    first = Recorder(RecordOptions(str(tmp_path)), Log())
    first.start()
    try:
        second = Recorder(RecordOptions(str(tmp_path)), Log())
        with pytest.raises(Exception, match="another retrotap record is writing"):
            second.start()
    finally:
        first.close()


def test_record_from_a_file_with_the_cli(tmp_path: Path) -> None:
    sent = frames(300)
    src = tmp_path / "in.pcap"
    with open(src, "wb") as f:
        PcapWriter(f, 1).write_block(block_of(sent, ts_ns=[T0 + i * NS for i in range(300)]))
    out = tmp_path / "rec"
    out.mkdir()
    done = subprocess.run(
        [*RETROTAP, "record", "-r", str(src), "-w", str(out), "--rotate-every", "1m", "--rotate-size", "0"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [len(read_back(f)) for f in recordings(out)] == [15, 60, 60, 60, 60, 45]
    assert done.stderr.splitlines()[-1] == (
        f"retrotap: recorded 300 packets ({sum(f.stat().st_size for f in recordings(out))} bytes) in 6 files; "
        "0 lost (recorder behind), 0 not written (disk full)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-w", "/nonexistent/dir"], "-w '/nonexistent/dir': no such directory"),
        (["-w", "{tmp}", "--rotate-size", "12Q"], "--rotate-size: '12Q' is not a size (e.g. 256M, 1G)"),
        (["-w", "{tmp}", "--rotate-every", "soon"], "--rotate-every: 'soon' is not a duration (e.g. 30s, 1m, 2h, 7d)"),
        (["-w", "{tmp}", "--min-free", "120%"], "--min-free: '120%' must be from 0% to below 100%"),
        (["-w", "{tmp}", "--keep-files", "-3"], "--keep-files must not be negative"),
        (["-w", "{tmp}", "--buffer-size", "0"], "record needs the time machine (--buffer-size greater than 0)"),
    ],
)
def test_record_bad_options_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    done = subprocess.run(
        [*RETROTAP, "record", "-i", "lo", *(a.replace("{tmp}", str(tmp_path)) for a in args)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"retrotap: error: {message}")


def packed(sent: Sequence[bytes], limit: int) -> list[int]:
    """Packets per file when records fill files of at most `limit` bytes, in order."""
    counts = [0]
    size = 24
    for f in sent:
        if size + 16 + len(f) > limit and counts[-1]:
            counts.append(0)
            size = 24
        counts[-1] += 1
        size += 16 + len(f)
    return counts


def is_subsequence(part: Sequence[bytes], whole: Sequence[bytes]) -> bool:
    it = iter(whole)
    return all(any(p == w for w in it) for p in part)


# --- live, in the netns lab


def lab_frames(lab: Lab, n: int, size: Callable[[int], int] = lambda i: 60 + i * 7 % 1400) -> list[bytes]:
    return [
        raw(
            Ether(dst=lab.mac_a, src=lab.mac_b)
            / IP(src="198.18.0.2", dst="198.18.0.1")
            / UDP(sport=4000 + i % 1000, dport=6000)
            / (b"L" * (size(i) - 42))
        )
        for i in range(n)
    ]


class Stderr:
    """Every stderr line of a process, read by a thread; wait for one containing a needle."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: IO[str]) -> None:
        for line in pipe:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float = 30, start: int = 0) -> tuple[int, str]:
        """(index, line) of the first line from `start` on containing `needle`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, line in enumerate(self.lines[start:], start):
                    if needle in line:
                        return i, line
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, f"no {needle!r} in {self.lines}"
                self._cond.wait(min(left, 0.5))

    def stop(self, sig: int = signal.SIGINT, status: int = 0) -> list[str]:
        """Signal the process, wait for it (it must exit with `status`), return every line."""
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self._thread.join(10)
        assert self.proc.returncode == status, self.lines
        assert not any("Traceback" in line for line in self.lines)
        assert all(line.startswith("retrotap: ") and line.count("retrotap: ") == 1 for line in self.lines)
        return self.lines


def start_record(lab: Lab, directory: Path, *args: str) -> Stderr:
    proc = lab.popen_a(
        [*RETROTAP, "record", "-i", lab.veth("a"), "-w", str(directory), "--buffer-size", "16M", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    err = Stderr(proc)
    err.wait_for("listening on")
    return err


@pytest.mark.live
def test_live_rotation_by_size_with_snapshot(lab: Lab, tmp_path: Path) -> None:
    rec_dir = tmp_path / "rec"
    snap_dir = tmp_path / "snap"
    rec_dir.mkdir()
    snap_dir.mkdir()
    sent = lab_frames(lab, 2000)
    err = start_record(lab, rec_dir, "--rotate-size", "64K", "--rotate-every", "0", "--snapshot-dir", str(snap_dir))
    assert lab.send_frames(sent) == 2000
    deadline = time.monotonic() + 20
    line = ""
    while time.monotonic() < deadline and "(2000 packets" not in line:
        seen = len(err.lines)
        err.proc.send_signal(signal.SIGUSR1)
        _, line = err.wait_for("snapshot:", start=seen)
    lines = err.stop()
    files = recordings(rec_dir)
    assert [p[1] for p in all_packets(rec_dir)] == sent  # every packet, in order, byte for byte
    assert sum(tshark_packets(f) for f in files) == 2000
    assert [len(read_back(f)) for f in files] == packed(sent, 64 << 10)
    assert all(f.name == file_name(lab.veth("a"), read_back(f)[0][0]) for f in files)
    closed = [line for line in lines if line.startswith("retrotap: closed ")]
    assert [c.split(" (")[0] for c in closed] == [f"retrotap: closed {f}" for f in files]
    assert lines[-1].startswith("retrotap: recorded 2000 packets") and "0 lost" in lines[-1]
    assert "0 not written" in lines[-1] and "captured 2000 packets, kernel drops 0" in lines[-1]
    snap = line.split("snapshot: ", 1)[1].split(" (")[0]
    assert "(2000 packets" in line and [p[1] for p in read_back(snap)] == sent
    check_index(rec_dir)


@pytest.mark.live
def test_live_rotation_on_clock_aligned_seconds(lab: Lab, tmp_path: Path) -> None:
    sent = lab_frames(lab, 300)
    err = start_record(lab, tmp_path, "--rotate-every", "1s", "--rotate-size", "0")
    for k in range(3):  # three bursts more than a second apart: at least three seconds of packet time
        assert lab.send_frames(sent[k * 100 : (k + 1) * 100]) == 100
        time.sleep(1.1)
    err.stop(signal.SIGTERM)
    files = recordings(tmp_path)
    kept = all_packets(tmp_path)
    assert [p[1] for p in kept] == sent
    assert len(files) == len({t // NS for t, _, _ in kept}) >= 3  # one file per second that has packets
    for f in files:
        pkts = read_back(f)
        assert len({t // NS for t, _, _ in pkts}) == 1 and f.name == file_name(lab.veth("a"), pkts[0][0])
        assert tshark_packets(f) == len(pkts)
    check_index(tmp_path)


@pytest.mark.live
def test_live_kill_9_leaves_a_partial_that_the_next_start_recovers(lab: Lab, tmp_path: Path) -> None:
    sent = lab_frames(lab, 500)
    size = 24 + sum(16 + len(f) for f in sent)
    err = start_record(lab, tmp_path, "--rotate-every", "0", "--rotate-size", "0")
    assert lab.send_frames(sent) == 500
    deadline = time.monotonic() + 20
    partial: list[Path] = []
    while time.monotonic() < deadline:
        partial = list(tmp_path.glob("*.pcap.partial"))
        if partial and partial[0].stat().st_size == size:
            break
        time.sleep(0.05)
    err.proc.kill()
    err.proc.wait(timeout=30)
    assert len(partial) == 1 and partial[0].stat().st_size == size and not recordings(tmp_path)
    with open(partial[0], "ab") as f:
        f.write(struct.pack("<IIII", 1, 0, 100, 100) + b"cut")  # a record cut short, as by a kill mid-write
    lines = start_record(lab, tmp_path).stop()
    final = tmp_path / partial[0].name.removesuffix(".partial")
    recovered = f"retrotap: recovered {final} (500 packets, {size} bytes, 19 trailing bytes of a cut record removed)"
    assert recovered in lines
    assert [p[1] for p in read_back(final)] == sent and tshark_packets(final) == 500
    assert index_rows(tmp_path)[final.name][2] == 500
    check_index(tmp_path)


@pytest.mark.live
def test_live_disk_full_counts_what_was_not_written(lab: Lab, small_disk: Path) -> None:
    sent = lab_frames(lab, 3000, size=lambda i: 1000)
    err = start_record(lab, small_disk, "--rotate-size", "256K", "--rotate-every", "0", "--min-free", "0")
    assert lab.send_frames(sent) == 3000
    lines = err.stop(status=1)  # packets the full disk could not take: the run did not record everything
    summary = lines[-1]
    written = int(summary.split("recorded ")[1].split(" ")[0])
    unwritten = int(summary.split(" lost (recorder behind), ")[1].split(" ")[0])
    assert "0 lost" in summary and "captured 3000 packets, kernel drops 0" in summary
    assert written + unwritten == 3000 and unwritten > 0
    assert sum(1 for line in lines if "disk full: recording paused" in line) == 1
    kept = [p[1] for p in all_packets(small_disk)]
    assert len(kept) == written and is_subsequence(kept, sent)
    for f in recordings(small_disk):
        assert tshark_packets(f) == len(read_back(f))
