"""The time machine: the last N seconds / bytes of traffic, kept in a preallocated pool.

On the capture thread each batch's packets are copied into pre-touched memory by one compiled pass
(_native.pack_frames, the GIL released), packed in 16-byte slots: a ring frame's header and padding are not
kept, so at 64 B the pool holds twice the packets it held as whole ring blocks. Readers (the snapshot writer,
the recorder) copy spans out and check afterwards that the capture thread did not reuse the space meanwhile.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from capture_backend._native import pack_frames, slot_spans
from capture_backend.analysis.decode import Decoded, address_key, decode
from capture_backend.analysis.processes import PacketOwners, ProcessTable
from capture_backend.capture.block import Block
from capture_backend.capture.pcapfile import PcapngWriter, PcapWriter
from capture_backend.capture.threads import NamedThread, name_this_thread
from capture_backend.contract import PcapSaveResult as PcapSaveResult
from capture_backend.rewind.index import Keys

NS = 1_000_000_000
PAGE = 4096
# The pool's pages are faulted in ahead of the writer by a pager thread, so the capture thread never pays
# for a page fault (dear in a VM: ~10 µs each): REST_AHEAD while the link carries less than REST_AHEAD a
# second (a quiet link keeps a small pool resident), up to 2 * TOUCH_AHEAD once traffic flows.
TOUCH_AHEAD = 16 << 20
REST_AHEAD = 4 << 20
PAGER_STEP = 4 << 20
# A batch is kept in spans of at most this many bytes: the pool expires a whole span at a time.
SPAN_BYTES = 4 << 20
SLOT = 16  # each packet starts on a 16-byte boundary of the pool (whole-unit non-temporal copies)
MAX_NAMED_INTERFACES = 3  # a pcapng of more interfaces is named after their number
MADV_POPULATE_WRITE = 23  # Linux 5.14: fault pages in, writable, without touching their contents
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_LIBC.madvise.restype = ctypes.c_int


@dataclass(frozen=True, slots=True)
class Span:
    """One kept byte range of one interface and the columns of the packets inside it."""

    seq: int
    offset: int  # where its bytes start in the pool
    length: int
    # The packets, with `start` relative to the span and data unset (empty), kept small (`_compact`):
    # view() and read() give them back as a Block like any other.
    block: Block
    before: int = 0  # packets kept in all earlier spans: a reader that skipped spans can count what it missed

    @property
    def first_ns(self) -> int:
        return int(self.block.ts_ns.min())

    @property
    def last_ns(self) -> int:
        return int(self.block.ts_ns.max())


@dataclass
class PoolStats:
    """What the pool holds and what it had to let go."""

    packets: int = 0
    bytes: int = 0
    spans: int = 0
    expired_packets: int = 0
    oversize_packets: int = 0  # larger than the whole pool: never kept


class _Pager(NamedThread):
    """Faults the pool's pages in ahead of the writer; the kernel call runs without the GIL (ctypes)."""

    def __init__(self, tm: TimeMachine) -> None:
        super().__init__(name="retrotap-pager", daemon=True)
        self.tm = weakref.ref(tm)  # the pager never keeps a time machine alive ...
        self.map = tm._map  # ... but keeps its memory mapped while it writes there
        self.cond = tm._paging
        self.base = tm.pool.ctypes.data
        self.size = tm.size

    def run(self) -> None:
        name_this_thread(self.name)
        done = 0
        while done < self.size:
            tm = self.tm()
            if tm is None:
                return
            with self.cond:
                target = min(self.size, tm._wanted + tm._ahead)
                if target <= done:
                    del tm
                    self.cond.wait(1.0)
                    continue
            del tm
            step = min(target, done + PAGER_STEP) - done
            if _LIBC.madvise(self.base + done, step, MADV_POPULATE_WRITE) != 0:
                if ctypes.get_errno() != errno.EINVAL:
                    return  # the writer faults the rest in itself (it sees this thread has ended)
                ctypes.memset(self.base + done, 0, step)  # before Linux 5.14: write the (still unused) pages
            done += step
            with self.cond:
                tm = self.tm()
                if tm is None:
                    return
                tm.touched = max(tm.touched, done)  # never below what the writer faulted in itself
                del tm
                self.cond.notify_all()


class TimeMachine:
    """A ring of spans in one preallocated buffer, bounded by bytes and by age (packet time)."""

    def __init__(self, size: int = 256 << 20, seconds: float = 60.0) -> None:
        self.size = size
        self.max_age_ns = int(seconds * NS)
        # Private anonymous memory: untouched pages cost address space, not memory, and a page faults in for
        # about half the kernel time of a shared (shmem) one.
        self._map = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.pool = np.frombuffer(self._map, np.uint8)[:size]
        self.touched = 0  # pool[:touched] has been faulted in (only the pager moves it)
        self._wanted = 0  # where the writer will write up to next
        self._ahead = REST_AHEAD  # how far past it the pager touches
        self._second = (0, 0, 0)  # the writer's monotonic second, bytes kept in it and in the one before
        self._paging = threading.Condition()
        self._pager = _Pager(self)
        self._pager.start()
        self.spans: deque[Span] = deque()
        self.stats = PoolStats()
        self.expired_seq = -1  # every span with seq <= this may have been overwritten
        self._head = 0
        self._seq = 0
        self.kept_packets = 0  # every packet ever kept (spans' `before` counts up to this)
        self.changed = threading.Event()  # set whenever a span is added (the recorder waits on it)
        # While a recorder reads: each span's index columns from the capture's own decode, by span seq (the
        # recorder takes them, expiry drops those it never took), so the recorder need not decode again.
        self.index_keys: dict[int, Keys] | None = None

    @property
    def next_seq(self) -> int:
        """The sequence number the next span will get."""
        return self._seq

    def __call__(self, block: Block, dec: Decoded) -> None:
        """Block sink: keep the batch."""
        self.add(block, dec)

    def add(self, block: Block, dec: Decoded | None = None) -> None:
        """Copy every packet of the block into the pool, packed (capture thread only), in spans of at most
        SPAN_BYTES; with `dec` (the block decoded) and a recorder reading, each span's index keys are kept
        beside it."""
        n = len(block)
        if n == 0:
            return
        keys = Keys.of(dec) if dec is not None and self.index_keys is not None else None
        limit = min(SPAN_BYTES, self.size)
        ends, lengths, biggest = slot_spans(np.ascontiguousarray(block.caplen, np.int64), limit)
        if biggest > self.size:  # a packet larger than the whole pool is never kept
            fits = (block.caplen.astype(np.int64) + (SLOT - 1)) & -SLOT <= self.size
            self.stats.oversize_packets += n - int(fits.sum())
            block = block.take(fits)
            keys = Keys(*(col[fits] for col in keys)) if keys is not None else None
            if len(block) == 0:
                return
            ends, lengths, _ = slot_spans(np.ascontiguousarray(block.caplen, np.int64), limit)
        a = 0
        for b, length in zip(ends.tolist(), lengths.tolist(), strict=True):
            self._keep(block, slice(a, b), length, keys)
            a = b
        self.changed.set()

    def _keep(self, block: Block, rows: slice, length: int, keys: Keys | None = None) -> None:
        part = block.take(rows)
        if self._head + length > self.size:
            # Wrap: the spans between the old head and the end of the pool are the oldest left.
            old_head, self._head = self._head, 0
            while self.spans and self.spans[0].offset >= old_head:
                self._expire()
        end = self._head + length
        while self.spans and self._overlaps(self.spans[0], self._head, end):
            self._expire()
        rate = self._rate(length)
        if end + TOUCH_AHEAD > self.touched:
            self._want(end, rate)
        offset = np.empty(len(part), np.uint32)
        c = np.ascontiguousarray
        pack_frames(self.pool, self._head, block.data, c(part.start, np.int64), c(part.caplen, np.int64), offset)
        kept = _compact(part, offset)
        index_keys = self.index_keys
        if keys is not None and index_keys is not None:
            index_keys[self._seq] = Keys(*(col[rows].copy() for col in keys))
        self.spans.append(Span(self._seq, self._head, length, kept, self.kept_packets))
        self._seq += 1
        self.kept_packets += len(kept)
        self._head = end
        self.stats.packets += len(kept)
        self.stats.bytes += length
        self.stats.spans += 1
        oldest_allowed = int(kept.ts_ns.max()) - self.max_age_ns
        while len(self.spans) > 1 and self.spans[0].last_ns < oldest_allowed:
            self._expire()

    def _rate(self, length: int) -> int:
        """Bytes kept in this monotonic second or the one before, `length` included."""
        now = int(time.monotonic())
        second, current, previous = self._second
        if now != second:
            current, previous = 0, current if now == second + 1 else 0
        self._second = (now, current + length, previous)
        return max(current + length, previous)

    def _want(self, end: int, rate: int) -> None:
        """Ask the pager for pages up to `end` and past it (REST_AHEAD below REST_AHEAD a second, else
        2 * TOUCH_AHEAD); wait only if it has not reached `end` yet."""
        with self._paging:
            self._wanted = max(self._wanted, end)
            self._ahead = REST_AHEAD if rate < REST_AHEAD else 2 * TOUCH_AHEAD
            self._paging.notify_all()
            while self.touched < min(end, self.size):
                if not self._pager.is_alive():  # it never dies quietly on us: fault the pages in here
                    self.pool[self.touched : min(end, self.size) : PAGE] = 0
                    self.touched = min(end, self.size)
                    break
                self._paging.wait(0.1)

    def wait_touched(self, upto: int, timeout: float = 10.0) -> bool:
        """Wait until the pager has faulted in the pool up to `upto` (tests, benches)."""
        deadline = time.monotonic() + timeout
        with self._paging:
            while self.touched < min(upto, self.size) and time.monotonic() < deadline:
                self._paging.wait(0.05)
        return self.touched >= min(upto, self.size)

    @staticmethod
    def _overlaps(span: Span, lo: int, hi: int) -> bool:
        return span.offset < hi and lo < span.offset + span.length

    def _expire(self) -> None:
        span = self.spans.popleft()
        self.expired_seq = span.seq
        index_keys = self.index_keys
        if index_keys is not None:
            index_keys.pop(span.seq, None)
        self.stats.packets -= len(span.block)
        self.stats.bytes -= span.length
        self.stats.spans -= 1
        self.stats.expired_packets += len(span.block)

    def window(self, since_ns: int = 0, after_seq: int = -1) -> list[Span]:
        """The spans held now (any thread), oldest first, newer than a time or a sequence number."""
        while True:
            try:
                spans = list(self.spans)
                break
            except RuntimeError:  # the capture thread changed the deque while it was copied
                continue
        return [s for s in spans if s.seq > after_seq and s.last_ns >= since_ns]

    def view(self, span: Span) -> Block:
        """A span's packets in the pool itself, not copied: whatever is made from them is good only if
        `intact(span)` still holds afterwards (the capture thread expires a span before overwriting it)."""
        return _widened(span.block, self.pool[span.offset : span.offset + span.length])

    def intact(self, span: Span) -> bool:
        """The span's bytes have not been (and are not being) overwritten."""
        return span.seq > self.expired_seq

    def read(self, span: Span) -> Block | None:
        """A copy of a span's packets (any thread), or None if it was overwritten meanwhile."""
        data = self.pool[span.offset : span.offset + span.length].copy()
        if span.seq <= self.expired_seq:
            return None
        return _widened(span.block, data)


_EMPTY = np.zeros(0, np.uint8)


def _compact(part: Block, offset: np.ndarray) -> Block:
    """A span's packet columns as the pool keeps them for its whole window: `offset` (uint32, from the span's
    first byte) and lengths as uint32, exact for every source (the ring's tp_len and a capture file's lengths
    are 32-bit, and a span is at most SPAN_BYTES); the stripped-VLAN columns only when a packet of the span has
    such a tag. New arrays, so the batch's own columns go with the batch: 20 bytes a packet instead of 37."""
    tagged = (part.vlan_valid is not None and bool(part.vlan_valid.any())) or (
        part.vlan_tci is not None and bool(part.vlan_tci.any())
    )
    return replace(
        part,
        data=_EMPTY,
        start=offset,
        caplen=part.caplen.astype(np.uint32),
        wirelen=part.wirelen.astype(np.uint32),
        ts_ns=part.ts_ns.copy(),
        vlan_tci=part.vlan_tci.copy() if tagged and part.vlan_tci is not None else None,
        vlan_tpid=part.vlan_tpid.copy() if tagged and part.vlan_tpid is not None else None,
        vlan_valid=part.vlan_valid.copy() if tagged and part.vlan_valid is not None else None,
        pkttype=None,
    )


def _widened(kept: Block, data: np.ndarray) -> Block:
    """A kept span's packets over `data`, with int64 offsets and lengths as every Block has."""
    return replace(
        kept,
        data=data,
        start=kept.start.astype(np.int64),
        caplen=kept.caplen.astype(np.int64),
        wirelen=kept.wirelen.astype(np.int64),
    )

# Which packets of a decoded block to keep; None keeps them all.
Selector = Callable[[Decoded], np.ndarray]


def snapshot_name(directory: str | Path, iface: str, when_ns: int, suffix: str = ".pcap") -> Path:
    """./retrotap-<iface>-<UTC time>.pcap"""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when_ns // NS)) + f".{when_ns % NS // 1000:06d}Z"
    safe = iface.replace("/", "_")
    return Path(directory) / f"retrotap-{safe}-{stamp}{suffix}"


def interfaces_label(names: list[str]) -> str:
    """One file's interfaces in its name: 'eth0+eth1' (up to three), else '4-interfaces'."""
    return "+".join(names) if len(names) <= MAX_NAMED_INTERFACES else f"{len(names)}-interfaces"


def _create(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "wb")


class _PcapFiles:
    """One classic pcap per interface, each opened with its first packet."""

    def __init__(self, directory: str | Path, when: int) -> None:
        self.directory, self.when = directory, when
        self.files: dict[str, tuple[Path, PcapWriter, BinaryIO]] = {}
        self.comments = 0

    def write(self, block: Block, mask: np.ndarray, dec: Decoded | None) -> int:
        if block.iface not in self.files:
            path = snapshot_name(self.directory, block.iface, self.when)
            out = _create(path)
            self.files[block.iface] = (path, PcapWriter(out, block.linktype), out)
        return self.files[block.iface][1].write_block(block, mask)

    def paths(self) -> tuple[str, ...]:
        return tuple(str(p) for p, _, _ in self.files.values())

    def close(self) -> None:
        for _, _, opened in self.files.values():
            opened.close()


class _PcapngFile:
    """One pcapng for every interface (an IDB each), opened with the first packet; packets of flows whose
    process is known carry it as a comment."""

    def __init__(self, directory: str | Path, when: int, label: str, owners: PacketOwners | None) -> None:
        self.path = snapshot_name(directory, label, when, ".pcapng")
        self.owners = owners
        self.out: BinaryIO | None = None
        self.writer: PcapngWriter | None = None

    def write(self, block: Block, mask: np.ndarray, dec: Decoded | None) -> int:
        if self.writer is None:
            self.out = _create(self.path)
            self.writer = PcapngWriter(self.out)
        if self.owners is None or dec is None:
            return self.writer.write_block(block, mask)
        return self.writer.write_block(block, mask, self.owners.comments(dec), self.owners.texts)

    @property
    def comments(self) -> int:
        return self.writer.comments if self.writer is not None else 0

    def paths(self) -> tuple[str, ...]:
        return (str(self.path),) if self.writer is not None else ()

    def close(self) -> None:
        if self.out is not None:
            self.out.close()


def save_pcap(
    tm: TimeMachine,
    directory: str | Path = ".",
    seconds: float | None = None,
    select: Selector | None = None,
    now_ns: int | None = None,
    since_ns: int = 0,
    until_ns: int | None = None,
    *,
    pcapng: bool = False,
    processes: ProcessTable | None = None,
) -> PcapSaveResult:
    """Write the buffered past (the last `seconds`, default all of it; only packets stamped from since_ns to
    until_ns when given) to one pcap per interface, or with `pcapng` to one pcapng for all of them whose
    packets of flows attributed in `processes` carry their process as a comment."""
    spans = tm.window()
    if not spans:
        return PcapSaveResult((), 0, 0, 0)
    newest = max(s.last_ns for s in spans)
    since = max(newest - int(seconds * NS) if seconds is not None else 0, since_ns)
    spans = [s for s in spans if s.last_ns >= since]
    when = now_ns if now_ns is not None else time.time_ns()
    files: _PcapFiles | _PcapngFile
    owners = None
    if pcapng:
        if processes is not None and len(processes.flow_owners):
            owners = PacketOwners.of(processes)
        label = interfaces_label(list(dict.fromkeys(s.block.iface for s in spans)))
        files = _PcapngFile(directory, when, label, owners)
    else:
        files = _PcapFiles(directory, when)
    packets = nbytes = lost = 0
    try:
        for span in spans:
            block = tm.read(span)
            if block is None:
                lost += len(span.block)
                continue
            mask = block.ts_ns >= since
            if until_ns is not None:
                mask &= block.ts_ns <= until_ns
            dec = decode(block) if select is not None or owners is not None else None
            if select is not None and dec is not None:
                mask &= select(dec)
            if not mask.any():
                continue
            nbytes += files.write(block, mask, dec)
            packets += int(mask.sum())
    finally:
        files.close()
    return PcapSaveResult(files.paths(), packets, nbytes, lost, files.comments)


def select_host(addr: str) -> Selector:
    """Packets from or to one address."""
    key = address_key(addr)

    def mask(dec: Decoded) -> np.ndarray:
        return dec.ip & ((dec.src_key == key).all(axis=1) | (dec.dst_key == key).all(axis=1))

    return mask


def select_port(proto: int, port: int) -> Selector:
    """Packets of one protocol with one port on either side."""

    def mask(dec: Decoded) -> np.ndarray:
        return (dec.proto == proto) & ((dec.sport == port) | (dec.dport == port))

    return mask


def select_pair(a: str, b: str) -> Selector:
    """Packets between two addresses, either way."""
    ka, kb = address_key(a), address_key(b)

    def mask(dec: Decoded) -> np.ndarray:
        s, d = dec.src_key, dec.dst_key
        return dec.ip & (
            ((s == ka).all(axis=1) & (d == kb).all(axis=1)) | ((s == kb).all(axis=1) & (d == ka).all(axis=1))
        )

    return mask


def select_flow(proto: int, a: str, aport: int, b: str, bport: int) -> Selector:
    """Packets of one bidirectional 5-tuple."""
    between = select_pair(a, b)
    ka = address_key(a)

    def mask(dec: Decoded) -> np.ndarray:
        from_a = (dec.src_key == ka).all(axis=1)
        ports = np.where(
            from_a, (dec.sport == aport) & (dec.dport == bport), (dec.sport == bport) & (dec.dport == aport)
        )
        return between(dec) & (dec.proto == proto) & ports

    return mask
