"""Read a capture file in a background thread and publish snapshots, with the Engine's surface.

FileEngine reads as fast as it can (publishing a few times a second of wall time) or, with
``realtime=True``, paced to the file's timestamps. Either way it ends on the whole file's result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from capture_backend.analysis.tables import NS, CounterLimits
from capture_backend.capture.block import LINKTYPE_ETHERNET, Block
from capture_backend.capture.bpf import compile_filter
from capture_backend.capture.pcapfile import CaptureFileError, FileSource
from capture_backend.capture.threads import NamedThread
from capture_backend.engine import (
    BlockSink,
    Counting,
    EngineEvent,
    EventSink,
    Snapshot,
    file_statuses,
    read_file_blocks,
)


def split_at_steps(blocks: Iterable[Block], step_ns: int) -> Iterator[Block]:
    """Cut blocks where packet time crosses a multiple of ``step_ns`` (at most one step per piece)."""
    for block in blocks:
        n = len(block)
        if n == 0 or step_ns <= 0:
            yield block
            continue
        # Packet time may step back a little in a file: cut on the running maximum.
        step = np.maximum.accumulate(block.ts_ns) // step_ns
        cuts = np.flatnonzero(np.diff(step)) + 1
        if cuts.size == 0:
            yield block
            continue
        bounds = [0, *cuts.tolist(), n]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            yield block.take(np.arange(lo, hi))


def file_snapshots(
    path: str,
    *,
    step_s: float = 1.0,
    filter_expr: str = "",
    limits: CounterLimits | None = None,
    clock: Callable[[], float] = time.time,
) -> Iterator[Snapshot]:
    """A snapshot at every ``step_s`` of packet time, then one of the whole file (for tests, tools)."""
    counting = Counting(limits or CounterLimits(), False, filter_expr, clock)
    step_ns = int(step_s * NS)
    pending: list[Snapshot] = []

    def stepped(blocks: Iterable[Block]) -> Iterator[Block]:
        # Runs when read_file_blocks asks for the next block, i.e. after the previous one was counted.
        current = -1
        for block in split_at_steps(blocks, step_ns):
            if len(block):
                step = int(block.ts_ns.max()) // step_ns
                if 0 <= current != step:
                    pending.append(counting.freeze(file_statuses(counting), 0.0, {}))
                current = step
            yield block

    with FileSource(path) as source:
        linktype = source.linktype or LINKTYPE_ETHERNET
        for _ in read_file_blocks(stepped(source.blocks()), counting, filter_expr, linktype):
            yield from pending
            pending.clear()
    yield counting.freeze(file_statuses(counting), 0.0, {})


class FileEngine:
    """A capture file read in a background thread; same surface as Engine (open/start/close...)."""

    def __init__(
        self,
        path: str,
        *,
        filter_expr: str = "",
        limits: CounterLimits | None = None,
        realtime: bool = False,
        publish_interval: float = 0.25,
        clock: Callable[[], float] = time.time,
        on_event: EventSink | None = None,
        block_sinks: Iterable[BlockSink] = (),
    ) -> None:
        self.path = path
        self.filter_expr = filter_expr
        self.limits = limits or CounterLimits()
        self.realtime = realtime
        self.publish_interval = publish_interval
        self.clock = clock
        self.on_event = on_event
        self.block_sinks = list(block_sinks)
        self.linktype = LINKTYPE_ETHERNET
        self.ready = threading.Event()
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counting = Counting(self.limits, False, filter_expr, clock, self.block_sinks)
        self._cpu = 0.0
        self.snapshot: Snapshot = self._freeze(self._counting)

    # --- set-up, in the caller's thread so errors reach the CLI before anything starts
    def open(self) -> None:
        """Check that the file opens and the filter compiles; raises CaptureFileError or FilterError."""
        with FileSource(self.path) as source:
            self.linktype = source.linktype or LINKTYPE_ETHERNET
        if self.filter_expr.strip():
            compile_filter(self.filter_expr, self.linktype)

    def set_filter(self, expr: str) -> None:
        """Re-read the file with a new filter; FilterError keeps the old one (and the current counts)."""
        if expr.strip():
            compile_filter(expr, self.linktype)
        was_running = self.running
        self._halt()
        self.filter_expr = expr
        self._counting = Counting(self.limits, False, expr, self.clock, self.block_sinks)
        self.done.clear()
        self.snapshot = self._freeze(self._counting)
        if was_running:
            self.start()

    @property
    def running(self) -> bool:
        """The reader thread has been started and not yet closed."""
        return self._thread is not None

    def start(self) -> None:
        """Start reading in a background thread."""
        self._stop = threading.Event()
        self._thread = NamedThread(
            target=self._run, args=(self._counting, self._stop), name="retrotap-file", daemon=True
        )
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the whole file has been read (or timeout); True if it has."""
        return self.done.wait(timeout)

    def close(self) -> None:
        """Stop reading; the last published snapshot stays."""
        self._halt()

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # --- the reader thread
    def _run(self, counting: Counting, stop: threading.Event) -> None:
        self.ready.set()
        self._emit("ready", "", f"reading {self.path}")
        try:
            with FileSource(self.path) as source:
                linktype = source.linktype or LINKTYPE_ETHERNET
                blocks: Iterable[Block] = source.blocks()
                if self.realtime:
                    blocks = self._paced(split_at_steps(blocks, int(self.publish_interval * NS)), stop)
                next_publish = time.monotonic() + self.publish_interval
                for _ in read_file_blocks(blocks, counting, counting.filter, linktype):
                    if stop.is_set():
                        return
                    if time.monotonic() >= next_publish:
                        next_publish = time.monotonic() + self.publish_interval
                        self._publish(counting)
                truncated = source.truncated
        except CaptureFileError as e:
            self._publish(counting)
            self._emit("error", "", str(e))
            return
        if stop.is_set():
            return
        self._publish(counting)
        self.done.set()
        note = f" ({truncated})" if truncated else ""
        self._emit("end", "", f"read {counting.counters.packets} packets from {self.path}{note}")

    def _paced(self, blocks: Iterable[Block], stop: threading.Event) -> Iterator[Block]:
        """Hold each block back until the wall time since the start matches its packet time."""
        start_wall = time.monotonic()
        first_ns: int | None = None
        for block in blocks:
            if len(block):
                last = int(block.ts_ns.max())
                if first_ns is None:
                    first_ns = int(block.ts_ns.min())
                delay = start_wall + (last - first_ns) / NS - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
            yield block

    def _publish(self, counting: Counting) -> None:
        self._cpu = time.thread_time()
        if counting is self._counting:  # a reader replaced by set_filter must not publish
            self.snapshot = self._freeze(counting)

    def _freeze(self, counting: Counting) -> Snapshot:
        return counting.freeze(file_statuses(counting), self._cpu, {})

    def _emit(self, kind: str, iface: str, message: str) -> None:
        if self.on_event is not None:
            self.on_event(EngineEvent(kind, iface, message))
