"""Rolling recording: blocks to rotating pcap files per interface, indexed, with retention.

The capture thread only copies blocks into the time machine's pool; a `RecorderThread` reads the
new spans by sequence number and hands them to a `Recorder`, which alone touches files. Records
are written whole: a write the disk cannot hold is cut back to its last whole record, the rest is
counted as not written and recording resumes with the next block once there is room again.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np

from capture_backend.analysis.decode import decode
from capture_backend.capture import layouts as lay
from capture_backend.capture.block import Block
from capture_backend.capture.pcapfile import CaptureFileError, PcapWriter
from capture_backend.capture.threads import NamedThread
from capture_backend.contract import UserError
from capture_backend.rewind.index import (
    CHUNK_BYTES,
    PARTIAL_SUFFIX,
    RECORDING_NAME,
    Chunk,
    ChunkBuilder,
    FileInfo,
    Index,
    Keys,
    record_offsets,
    scan_file,
)
from capture_backend.rewind.timemachine import TimeMachine

NS = 1_000_000_000
LOCK_NAME = "retrotap-record.lock"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
SNAPLEN = 262144
LOSS_REPORT_S = 10.0  # at most one "recorder behind" line this often


class RecordError(UserError):
    """The recording cannot start or go on; str() is one line for the CLI."""


@dataclass
class RecordOptions:
    """Where and how to record."""

    directory: str
    rotate_bytes: int = 100 << 20  # 0: no size limit
    rotate_ns: int = 60 * NS  # 0: no time rotation; else files start on multiples of it (UTC)
    keep_files: int = 0  # per interface, closed files; 0: no limit
    keep_age_ns: int = 0  # by a file's last packet time; 0: no limit
    min_free_ratio: float = 0.05  # of the file system
    min_free_bytes: int = 0
    chunk_bytes: int = CHUNK_BYTES
    close_grace_ns: int = 2 * NS  # a file past its time boundary is closed this long after it, idle or not
    snaplen: int = SNAPLEN


@dataclass
class RecordStats:
    """What the recorder did so far."""

    packets: int = 0  # written to files
    bytes: int = 0  # bytes of closed files plus what is written of the open ones
    files: int = 0  # closed
    lost_packets: int = 0  # overwritten in the pool before the recorder read them
    unwritten_packets: int = 0  # the disk was full
    deleted_files: int = 0
    recovered_files: int = 0

    def summary(self) -> str:
        """One line for the end of a run."""
        return (
            f"recorded {self.packets} packets ({self.bytes} bytes) in {self.files} files; "
            f"{self.lost_packets} lost (recorder behind), {self.unwritten_packets} not written (disk full)"
        )


def file_name(iface: str, first_ns: int, n: int = 0) -> str:
    """<iface>-<UTC time of the first packet, µs>[-n].pcap"""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(first_ns // NS)) + f".{first_ns % NS // 1000:06d}Z"
    return f"{iface.replace('/', '_')}-{stamp}" + (f"-{n}" if n else "") + ".pcap"


def _always() -> bool:
    return True


class _Sink:
    """Where a PcapWriter puts its bytes, so the recorder writes them itself (whole records only)."""

    def __init__(self) -> None:
        self.data: bytes | bytearray | memoryview = b""

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.data = data
        return len(data)


@dataclass
class _Open:
    """A file being written: `<name>.partial` until it is closed."""

    iface: str
    linktype: int
    name: str
    fd: int
    writer: PcapWriter
    sink: _Sink
    boundary_ns: int  # packets from this time on go to the next file (0: none)
    chunks: ChunkBuilder
    size: int = lay.PCAP_FILE_HEADER_LEN
    first_ns: int = 0
    last_ns: int = 0
    packets: int = 0


@dataclass
class _Closed:
    """A closed file retention may delete."""

    name: str
    iface: str
    first_ns: int
    last_ns: int
    size: int


@dataclass
class _Pending:
    """Index updates the database could not take yet (disk full): retried at the next close."""

    puts: dict[str, tuple[FileInfo, list[Chunk]]] = field(default_factory=dict)
    removes: set[str] = field(default_factory=set)


class Recorder:
    """Writes blocks to rotating pcap files in one directory; one thread at a time uses it."""

    def __init__(
        self,
        opts: RecordOptions,
        log: Callable[[str], None],
        clock: Callable[[], int] = time.time_ns,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.opts = opts
        self.dir = Path(opts.directory)
        self.log = log
        self.clock = clock
        self.statvfs = statvfs
        self.stats = RecordStats()
        self.open_files: dict[str, _Open] = {}
        self.closed: dict[str, _Closed] = {}
        self.paused = False  # the disk was full at the last write
        self._paused_packets = 0
        self._pending = _Pending()
        self._index_error = ""
        self._lock_fd = -1
        self.index: Index | None = None

    # --- start and stop

    def start(self) -> None:
        """Lock the directory, recover partial files, take stock of closed ones, apply retention."""
        try:
            self._lock_fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise RecordError(f"{self.dir}: another retrotap record is writing to this directory") from None
        except OSError as e:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1
            raise RecordError(f"{self.dir}: {e.strerror or e}") from None
        try:
            self._take_stock()
        except BaseException:
            self.close()  # releases the lock: a later start may try again
            raise

    def _take_stock(self) -> None:
        try:
            self.index = Index(self.dir)
        except sqlite3.Error as e:
            raise RecordError(f"{self.dir / 'retrotap-index.sqlite'}: {e}") from None
        for path in sorted(self.dir.glob("*" + PARTIAL_SUFFIX)):
            if RECORDING_NAME.match(path.name):
                self._recover(path)
        known = self.index.files()
        for path in sorted(self.dir.glob("*.pcap")):
            m = RECORDING_NAME.match(path.name)
            if m is None:
                continue
            info = known.get(path.name)
            if info is None or info.bytes != path.stat().st_size:
                info = self._index_existing(path)
                if info is None:
                    continue
            self.closed[path.name] = _Closed(path.name, m.group("iface"), info.first_ns, info.last_ns, info.bytes)
        self._retain()

    def _recover(self, path: Path) -> None:
        """A .partial left by a crash: cut it to its last whole record, rename it, index it."""
        final = path.name.removesuffix(PARTIAL_SUFFIX)
        if path.stat().st_size <= lay.PCAP_FILE_HEADER_LEN:
            path.unlink()
            self.log(f"recovered {path}: no packets, removed")
            return
        try:
            scan = scan_file(path, self.opts.chunk_bytes, name=final)
        except CaptureFileError as e:
            self.log(f"cannot recover {path}: {e}")
            return
        if scan.info.packets == 0:
            path.unlink()
            self.log(f"recovered {path}: no packets, removed")
            return
        cut = scan.info.bytes - scan.whole_end
        if cut:
            os.truncate(path, scan.whole_end)
        target = self._free_name(final) if (self.dir / final).exists() else final
        os.rename(path, self.dir / target)
        st = (self.dir / target).stat()
        info = FileInfo(
            target,
            scan.info.iface,
            scan.info.linktype,
            scan.info.format,
            scan.info.first_ns,
            scan.info.last_ns,
            scan.info.packets,
            st.st_size,
            st.st_mtime_ns,
        )
        self._index_put(info, scan.chunks)
        self.stats.recovered_files += 1
        tail = f", {cut} trailing bytes of a cut record removed" if cut else ""
        self.log(f"recovered {self.dir / target} ({info.packets} packets, {info.bytes} bytes{tail})")

    def _index_existing(self, path: Path) -> FileInfo | None:
        try:
            scan = scan_file(path, self.opts.chunk_bytes)
        except (CaptureFileError, FileNotFoundError) as e:
            self.log(f"not indexed: {e}")
            return None
        self._index_put(scan.info, scan.chunks)
        return scan.info

    def close(self) -> None:
        """Close (rename, index) every open file; release the directory."""
        for f in list(self.open_files.values()):
            self._close(f)
        self._flush_index()
        if self._pending.puts or self._pending.removes:
            self.log(
                f"index: {len(self._pending.puts)} files not indexed, {len(self._pending.removes)} deletions not "
                f"recorded ({self._index_error}); export brings the index up to date when it runs"
            )
        if self.index is not None:
            self.index.close()
            self.index = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # --- writing

    def write(self, block: Block, keys: Keys | None = None, intact: Callable[[], bool] = _always) -> int:
        """Append a block's packets to its interface's file, rotating by size and packet time.

        `intact` says whether the block's bytes are still good (a view of the time machine's pool): it is
        asked after each run of records is assembled and before it is written. Returns the packets not
        written because it said no."""
        n = len(block)
        if n == 0:
            return 0
        keys = keys if keys is not None else Keys.of(decode(block))
        ts = block.ts_ns
        lengths: np.ndarray | None = None
        i = 0
        while i < n:
            f = self.open_files.get(block.iface)
            if f is not None and f.linktype != block.linktype:
                self._close(f)
                f = None
            if f is None:
                f = self._open(block.iface, block.linktype, int(ts[i]))
                if f is None:  # no room even for a file header
                    self._not_written(n - i)
                    self._disk_full()
                    return 0
            if lengths is None:
                lengths = f.writer.record_lengths(block)
            j = n
            if f.boundary_ns:
                later = ts[i:] >= f.boundary_ns
                if later.any():
                    j = i + int(np.argmax(later))
            if self.opts.rotate_bytes:
                fits = int(np.searchsorted(np.cumsum(lengths[i:j]), self.opts.rotate_bytes - f.size, side="right"))
                if fits == 0 and f.packets == 0:
                    fits = 1  # one record larger than the limit: a file of its own
                j = i + fits
            if j == i:
                self._close(f)
                continue
            if not self._append(f, block, i, j, lengths, keys, intact):
                return n - i
            if j < n:
                self._close(f)
            i = j
        return 0

    def _open(self, iface: str, linktype: int, first_ns: int) -> _Open | None:
        name = self._free_name(file_name(iface, first_ns))
        path = self.dir / (name + PARTIAL_SUFFIX)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        sink = _Sink()
        writer = PcapWriter(cast(BinaryIO, sink), linktype, self.opts.snaplen)
        try:
            os.pwrite(fd, sink.data, 0)
        except OSError as e:
            os.close(fd)
            path.unlink()
            if e.errno not in DISK_FULL:
                raise
            return None
        step = self.opts.rotate_ns
        boundary = (first_ns // step + 1) * step if step else 0
        f = _Open(iface, linktype, name, fd, writer, sink, boundary, ChunkBuilder(chunk_bytes=self.opts.chunk_bytes))
        self.open_files[iface] = f
        self.stats.bytes += f.size
        return f

    def _free_name(self, name: str) -> str:
        """`name`, or with -1, -2 ... before .pcap if a file of that name exists."""
        stem = name.removesuffix(".pcap")
        n = 0
        candidate = name
        while (self.dir / candidate).exists() or (self.dir / (candidate + PARTIAL_SUFFIX)).exists():
            n += 1
            candidate = f"{stem}-{n}.pcap"
        return candidate

    def _append(
        self, f: _Open, block: Block, i: int, j: int, lengths: np.ndarray, keys: Keys, intact: Callable[[], bool]
    ) -> bool:
        """Write rows [i, j) of the block as whole records; False (nothing written) if they were overwritten."""
        f.writer.write_block(block.take(slice(i, j)))
        data = memoryview(f.sink.data)
        f.sink.data = b""
        if not intact():
            return False
        done = 0
        try:
            while done < len(data):
                done += os.pwrite(f.fd, data[done:], f.size + done)
        except OSError as e:
            if e.errno not in DISK_FULL:
                raise
            ends = np.cumsum(lengths[i:j])
            whole = int(np.searchsorted(ends, done, side="right"))
            kept = int(ends[whole - 1]) if whole else 0
            if kept != done:
                os.ftruncate(f.fd, f.size + kept)
            self._wrote(f, block, i, i + whole, lengths, keys)
            self._not_written(j - i - whole)
            self._disk_full()
            return True
        self._wrote(f, block, i, j, lengths, keys)
        if self.paused:
            self.paused = False
            self.log(f"disk space available again: recording resumed ({self._paused_packets} packets not written)")
            self._paused_packets = 0
        return True

    def _wrote(self, f: _Open, block: Block, i: int, j: int, lengths: np.ndarray, keys: Keys) -> None:
        if j <= i:
            return
        ts = block.ts_ns[i:j]
        offsets, ends = record_offsets(f.size, lengths[i:j])
        f.chunks.add(offsets, ends, ts, keys.rows(i, j))
        lo, hi = int(ts.min()), int(ts.max())
        f.first_ns = lo if not f.packets else min(f.first_ns, lo)
        f.last_ns = hi if not f.packets else max(f.last_ns, hi)
        f.packets += j - i
        written = int(ends[-1]) - f.size
        f.size += written
        self.stats.packets += j - i
        self.stats.bytes += written

    def _not_written(self, n: int) -> None:
        self.stats.unwritten_packets += n
        self._paused_packets += n

    def _disk_full(self) -> None:
        if not self.paused:
            self.paused = True
            self.log(f"disk full: recording paused, {self._paused_packets} packets not written")
        self._retain()

    # --- closing and rotation

    def tick(self, now_ns: int) -> None:
        """Close files whose time is up even if no packet came to push them out."""
        for f in list(self.open_files.values()):
            if f.boundary_ns and now_ns >= f.boundary_ns + self.opts.close_grace_ns:
                self._close(f)

    def _close(self, f: _Open) -> None:
        del self.open_files[f.iface]
        os.close(f.fd)
        partial = self.dir / (f.name + PARTIAL_SUFFIX)
        if f.packets == 0:
            partial.unlink()
            self.stats.bytes -= f.size
            return
        path = self.dir / f.name
        os.rename(partial, path)
        self.stats.files += 1
        st = path.stat()
        info = FileInfo(
            f.name, f.iface, f.linktype, "pcap", f.first_ns, f.last_ns, f.packets, st.st_size, st.st_mtime_ns
        )
        self.log(f"closed {path} ({f.packets} packets, {st.st_size} bytes)")
        self.closed[f.name] = _Closed(f.name, f.iface, f.first_ns, f.last_ns, st.st_size)
        self._index_put(info, f.chunks.finish())
        self._retain()

    # --- the index, which may be on a full disk too

    def _index_put(self, info: FileInfo, chunks: list[Chunk]) -> None:
        self._pending.puts[info.path] = (info, chunks)
        self._pending.removes.discard(info.path)
        self._flush_index()

    def _index_remove(self, name: str) -> None:
        self._pending.puts.pop(name, None)
        self._pending.removes.add(name)
        self._flush_index()

    def _flush_index(self) -> None:
        if self.index is None:
            return
        try:
            for name in sorted(self._pending.removes):
                self.index.remove(name)
                self._pending.removes.discard(name)
            for name, (info, chunks) in list(self._pending.puts.items()):
                self.index.put(info, chunks)
                del self._pending.puts[name]
        except sqlite3.Error as e:
            if not self._index_error:
                self.log(f"index: cannot update {self.index.path} ({e}); will retry")
            self._index_error = str(e)
            return
        self._index_error = ""

    # --- retention

    def _retain(self) -> None:
        """Delete closed files, oldest first, by count, age and free space.

        Never a file being written, and never the newest closed file of an interface.
        """
        o = self.opts
        if not self.closed or not (o.keep_files or o.keep_age_ns or o.min_free_ratio or o.min_free_bytes):
            return
        oldest_first = sorted(self.closed.values(), key=lambda c: (c.first_ns, c.name))
        newest = {c.iface: c.name for c in oldest_first}
        candidates = [c for c in oldest_first if newest[c.iface] != c.name]
        if o.keep_files:
            per_iface: dict[str, list[_Closed]] = {}
            for c in oldest_first:
                per_iface.setdefault(c.iface, []).append(c)
            for files in per_iface.values():
                for c in files[: max(len(files) - o.keep_files, 0)]:
                    self._delete(c, f"more than {o.keep_files} files")
        if o.keep_age_ns:
            cutoff = self.clock() - o.keep_age_ns
            for c in candidates:
                if c.last_ns < cutoff and c.name in self.closed:
                    self._delete(c, "older than --keep-age")
        if o.min_free_ratio or o.min_free_bytes:
            for c in candidates:
                if c.name in self.closed and self._free_short() > 0:
                    self._delete(c, "free space below --min-free")

    def _free_short(self) -> int:
        """Bytes missing to the free space asked for (0 or less: enough)."""
        st = self.statvfs(str(self.dir))
        want = max(self.opts.min_free_bytes, int(self.opts.min_free_ratio * st.f_blocks * st.f_frsize))
        return want - st.f_bavail * st.f_frsize

    def _delete(self, c: _Closed, why: str) -> None:
        try:
            (self.dir / c.name).unlink()
        except FileNotFoundError:
            pass
        del self.closed[c.name]
        self.stats.deleted_files += 1
        self._index_remove(c.name)
        self.log(f"deleted {self.dir / c.name} ({why})")


class RecorderThread:
    """Feeds a Recorder from a TimeMachine: new spans by sequence number, missed ones counted."""

    def __init__(
        self,
        tm: TimeMachine,
        recorder: Recorder,
        on_error: Callable[[str], None],
        clock: Callable[[], int] = time.time_ns,
        poll_s: float = 0.2,
    ) -> None:
        self.tm = tm
        self.recorder = recorder
        self.on_error = on_error
        self.clock = clock
        self.poll_s = poll_s
        self.last_seq = -1
        self.expected = 0  # packets kept before the next span to read
        self.error: str | None = None
        self._unreported = 0  # packets lost since the last line about it
        self._next_report = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def skip_to_now(self) -> None:
        """Record from now on (a recording started mid-capture): what the pool holds is for snapshots."""
        self.last_seq = self.tm.next_seq - 1
        self.expected = self.tm.kept_packets

    def start(self) -> None:
        if self.tm.index_keys is None:
            self.tm.index_keys = {}  # the capture keeps each span's index columns for us from now on
        self._thread = NamedThread(target=self._run, name="retrotap-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.tm.changed.wait(self.poll_s)
                self.tm.changed.clear()
                self.drain()
                self.recorder.tick(self.clock())
        except OSError as e:
            self.error = f"recording stopped: {e.strerror or e}: {getattr(e, 'filename', None) or self.recorder.dir}"
            self.on_error(self.error)
        except Exception as e:  # a bug: stop recording in order, say what it was
            self.error = f"recording stopped: internal error: {type(e).__name__}: {e}"
            self.on_error(self.error)

    def drain(self) -> None:
        """Write every span added since the last one read."""
        stats = self.recorder.stats
        lost = stats.lost_packets
        for span in self.tm.window(after_seq=self.last_seq):
            if span.before > self.expected:
                stats.lost_packets += span.before - self.expected
            # Records are assembled straight from the pool; a span overwritten meanwhile is not written.
            index_keys = self.tm.index_keys
            keys = index_keys.pop(span.seq, None) if index_keys is not None else None
            if self.tm.intact(span):
                intact = functools.partial(self.tm.intact, span)
                stats.lost_packets += self.recorder.write(self.tm.view(span), keys=keys, intact=intact)
            else:
                stats.lost_packets += len(span.block)
            self.expected = span.before + len(span.block)
            self.last_seq = span.seq
        self._unreported += stats.lost_packets - lost
        now = time.monotonic()
        if self._unreported and now >= self._next_report:
            self.recorder.log(
                f"recorder behind: {self._unreported} packets overwritten in the pool before they were written "
                f"({stats.lost_packets} in all; a larger --buffer-size gives the recorder more slack)"
            )
            self._unreported = 0
            self._next_report = now + LOSS_REPORT_S

    def stop(self) -> None:
        """Stop the thread, then write what the pool still holds (call after capture stopped)."""
        self._stop.set()
        self.tm.changed.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.error is None:
            self.drain()
        stats = self.recorder.stats
        stats.lost_packets += max(self.tm.kept_packets - self.expected, 0) + self.tm.stats.oversize_packets
        self.expected = self.tm.kept_packets
        self.tm.index_keys = None
