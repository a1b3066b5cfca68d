"""The capture engine: background threads that read rings, count, and publish snapshots.

Each capture thread is the only writer of its counters. With `RingConfig.threads` above one, every
interface gets that many rings joined with PACKET_FANOUT, one per thread; the first thread merges the
others' latest counters into its own when it publishes. A few times a second it swaps in a new immutable
Snapshot (one reference assignment); readers take ``engine.snapshot`` and never lock anything.
Rare events (capture failed, interface gone) go to an ``on_event`` callback.
"""

from __future__ import annotations

import os
import select
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from types import MappingProxyType

from capture_backend.analysis.decode import Decoded, decode
from capture_backend.analysis.latency import Latency
from capture_backend.analysis.merge import merge_snapshots
from capture_backend.analysis.tables import IFACE_BITS, NS, CounterLimits, Counters, Tally, published_rtt
from capture_backend.capture.block import LINKTYPE_ETHERNET, LINKTYPE_RAW, Block
from capture_backend.capture.bpf import FilterError, OfflineFilter, attach, compile_filter, compile_optional, detach
from capture_backend.capture.netlink import InterfaceError, LinkMonitor
from capture_backend.capture.netns import IfaceSpec, Netns, parse_iface, resolve, run_in
from capture_backend.capture.ring import NEW_FANOUT, RAW_LINKTYPES, CaptureError, Ring, RingConfig
from capture_backend.capture.threads import NamedThread
from capture_backend.contract import (
    FLOW_KEY,
    HOST_KEY,
    PAIR_KEY,
    PORT_KEY,
    LinkInfo,
    RingStatus,
    UserError,
)
from capture_backend.contract import EngineEvent as EngineEvent
from capture_backend.contract import EventSink as EventSink
from capture_backend.contract import IfaceStatus as IfaceStatus
from capture_backend.contract import Snapshot as Snapshot

# Called on the capture thread with each batch and its decoded columns, before counting.
BlockSink = Callable[[Block, Decoded], None]
LINK_POLL_SECONDS = 1.0
# A snapshot may take at most 1/PUBLISH_COST_FACTOR of the capture thread's time (it is published less often).
# Not the consumers' PACE_FACTOR: the snapshot is what every view shows, and must stay within a second or two.
PUBLISH_COST_FACTOR = 8
# A capture loop that keeps failing is restarted at most this often (seconds between restarts).
RESTART_BACKOFF = (0.0, 0.1, 1.0)
SMALL_RING_BLOCKS = 16
OWN_NETNS = "/proc/self/ns/net"
# Seconds between drains: blocks gather until a batch would hold BATCH_PACKETS (fixed costs are paid per batch),
# within these bounds, and never longer than a quarter of the ring takes to fill at the rate just seen.
MIN_DRAIN_INTERVAL = 0.02  # the default 128 MiB ring holds 100 ms even of a full 10 Gbit/s link
MAX_DRAIN_INTERVAL = 0.1
RING_SHARE_PER_WAIT = 0.25
# A batch takes blocks until it holds this many packets, at most BATCH_BLOCKS and a quarter of the ring (the
# kernel keeps the rest to fill meanwhile).
BATCH_PACKETS = 32768
BATCH_BLOCKS = 64
ANSWER_TIMEOUT = 0.3  # how long a fresh snapshot waits for the other capture threads' counters


def _frozen_tallies(table: dict[int, Tally]) -> Mapping[int, tuple[int, int]]:
    return MappingProxyType({k: (t.packets, t.bytes) for k, t in table.items()})


class Counting:
    """Counters plus the snapshot they publish; shared by live capture and file reading."""

    def __init__(
        self,
        limits: CounterLimits,
        live: bool,
        filter_expr: str,
        clock: Callable[[], float],
        sinks: Iterable[BlockSink] = (),
    ) -> None:
        self.counters = Counters(limits)
        self.latency = Latency()
        self.live = live
        self.filter = filter_expr
        self.clock = clock
        self.sinks = list(sinks)
        self.started = clock()
        self.seq = 0

    def add(self, block: Block) -> None:
        """Decode a batch, hand it to the sinks, count it."""
        dec = decode(block)
        for sink in self.sinks:
            sink(block, dec)
        self.counters.add(dec)
        c = self.counters
        if c.limits.analysis:
            fid, lat = self.latency.add(dec, c.flow_of, c.flows.cols["first"])
            if fid.size:
                c.add_latency(fid, lat)

    def freeze(
        self,
        interfaces: tuple[IfaceStatus, ...],
        cpu: float,
        links: Mapping[str, LinkInfo],
        restarts: int = 0,
        last_error: str = "",
        exact: bool = True,
    ) -> Snapshot:
        """Build a Snapshot of the counters as they are now (not `exact`: latency quantiles may be up to a
        second old)."""
        c = self.counters
        now = self.clock()
        now_ns = int(now * NS) if self.live else c.last_ns
        if self.live:
            c.expire(now_ns)
        now_sec = now_ns // NS
        self.seq += 1
        return Snapshot(
            seq=self.seq,
            time=now,
            started=self.started,
            now_ns=now_ns,
            live=self.live,
            filter=self.filter,
            packets=c.packets,
            bytes=c.bytes,
            malformed=c.malformed,
            first_ns=c.first_ns,
            last_ns=c.last_ns,
            ethertypes=_frozen_tallies(c.ethertypes),
            protocols=_frozen_tallies(c.protocols),
            vlans=_frozen_tallies(c.vlans),
            interfaces=interfaces,
            flows=c.flows.freeze(now_sec, published_rtt).with_layout(FLOW_KEY),
            pairs=c.pairs.freeze(now_sec).with_layout(PAIR_KEY),
            hosts=c.hosts.freeze(now_sec).with_layout(HOST_KEY),
            ports=c.ports.freeze(now_sec).with_layout(PORT_KEY),
            latency=self.latency.freeze(exact),
            capture_cpu=cpu,
            links=MappingProxyType(dict(links)),
            restarts=restarts,
            last_error=last_error,
            flow_ifaces=tuple(sorted(c.iface_bits, key=c.iface_bits.__getitem__))[:IFACE_BITS],
        )


class _Capture:
    """One interface's ring and its state, owned by the engine thread."""

    def __init__(self, spec: IfaceSpec) -> None:
        self.spec = spec
        self.name = spec.label
        self.ring: Ring | None = None
        self.state = "up"
        self.error = ""
        self.received = self.drops = self.freezes = 0
        self.walk_errors_base = 0
        self.netns = 0  # the inode of its namespace, and of its veth peer's (0: not a veth, or not found)
        self.peer_netns = 0
        self._base = (0, 0, 0)  # totals of rings closed before (an interface removed and back)

    def fold_stats(self) -> None:
        if self.ring is not None:
            s = self.ring.read_stats()
            r, d, f = self._base
            self.received, self.drops, self.freezes = r + s.received, d + s.drops, f + s.freezes

    @property
    def walk_errors(self) -> int:
        return self.walk_errors_base + (self.ring.walk_errors if self.ring is not None else 0)

    def close(self) -> None:
        if self.ring is not None:
            self.fold_stats()
            self.walk_errors_base += self.ring.walk_errors
            self.ring.close()
            self.ring = None
            self._base = (self.received, self.drops, self.freezes)


def drain_interval(packets: int, ring_share: float, elapsed: float) -> float:
    """How long the next wait between drains lets blocks gather, from the last drain: `packets` taken, the
    largest share of one ring's blocks they took, `elapsed` seconds since the drain before."""
    wait = MAX_DRAIN_INTERVAL
    if packets:
        wait = min(wait, BATCH_PACKETS * elapsed / packets)
    if ring_share:
        wait = min(wait, RING_SHARE_PER_WAIT * elapsed / ring_share)
    return max(MIN_DRAIN_INTERVAL, wait)


class _Lane:
    """One capture thread's share: a ring on each interface (one of a fanout group with several threads) and
    the counters of what those rings deliver."""

    def __init__(self, index: int, captures: list[_Capture], counting: Counting) -> None:
        self.index = index
        self.captures = captures
        self.counting = counting
        self.cpu = 0.0  # seconds of CPU its thread used
        self.part: Snapshot | None = None  # its counters, frozen on its own thread when the first thread asks
        self.asked = threading.Event()
        self.answered = threading.Event()
        self.thread: threading.Thread | None = None
        self.drain_interval = MIN_DRAIN_INTERVAL  # paced by what each drain takes
        self.exact = True  # what the first thread asked for: a snapshot with exact latency quantiles


def _serialised(sink: BlockSink, lock: threading.Lock) -> BlockSink:
    """A sink several capture threads call in turn (the time machine and the recorder keep one order)."""

    def call(block: Block, dec: Decoded) -> None:
        with lock:
            sink(block, dec)

    return call


class Engine:
    """Live capture on one or more interfaces in background threads (start() / close())."""

    def __init__(
        self,
        ifaces: list[str],
        *,
        filter_expr: str = "",
        ring: RingConfig = RingConfig(),
        limits: CounterLimits = CounterLimits(),
        publish_interval: float = 0.25,
        clock: Callable[[], float] = time.time,
        on_event: EventSink | None = None,
        block_sinks: Iterable[BlockSink] = (),
        links: LinkMonitor | None = None,
        error_log: str | None = None,
    ) -> None:
        self.ring_config = ring
        self.error_log = error_log or default_error_log()
        self.restarts = 0
        self.last_error = ""
        self.publish_interval = publish_interval
        self.on_event = on_event
        self.threads = max(1, ring.threads)
        if self.threads > 1:
            # Both directions of a flow reach one thread: the flow table's capacity is shared out.
            limits = replace(limits, flows=-(-limits.flows // self.threads))
            lock = threading.Lock()
            block_sinks = [_serialised(sink, lock) for sink in block_sinks]
        self._capacities = {"flows": limits.flows, "pairs": limits.pairs, "hosts": limits.hosts, "ports": limits.ports}
        self.counting = Counting(limits, True, filter_expr, clock, block_sinks)
        self.links = links if links is not None else LinkMonitor()
        self._captures = [_Capture(parse_iface(name)) for name in ifaces]
        self._lanes = [_Lane(0, self._captures, self.counting)] + [
            _Lane(
                k, [_Capture(c.spec) for c in self._captures], Counting(limits, True, filter_expr, clock, block_sinks)
            )
            for k in range(1, self.threads)
        ]
        if self.threads > 1:  # every thread names an interface by the same bit in the flows' "ifaces" column
            for lane in self._lanes:
                lane.counting.counters.iface_bits.update({c.name: i for i, c in enumerate(self._captures)})
        self._fanout: dict[str, int] = {}  # each interface's fanout group id
        self._fanout_lock = threading.Lock()
        # Link watching in the other namespaces captured in: one netlink socket each, opened by open().
        self._netns: dict[str, Netns] = {}
        self._ns_links: dict[str, LinkMonitor] = {}
        self.dropped_to = ""  # the user root was dropped to (-Z): opening a new ring is refused from then on
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link_info: dict[str, LinkInfo] = {}
        self.ready = threading.Event()
        self._rings_lock = threading.Lock()
        self._asked = threading.Event()
        self._answered = threading.Event()
        self._drained = False
        self.publish_cost = 0.0  # seconds the last snapshot took to build
        # Waiting for blocks to gather pays only when the ring has room to wait: a small one is drained at once.
        self._drain_interval = MIN_DRAIN_INTERVAL if ring.block_nr >= SMALL_RING_BLOCKS else 0.0
        self.snapshot = self._publish_now()

    # --- set-up, in the caller's thread so errors reach the CLI before anything starts
    def open(self) -> None:
        """Open every ring; raises InterfaceError, FilterError or CaptureError."""
        seen: dict[tuple[int, int, str], str] = {}
        for cap in self._captures:
            ns = cap.spec.netns
            if ns is not None and ns not in self._netns:
                self._netns[ns] = resolve(ns)
            # One interface named two ways (a namespace's name and a pid in it) would be counted twice.
            pinned = os.stat(self._netns[ns].path if ns is not None else OWN_NETNS)
            same = seen.setdefault((pinned.st_dev, pinned.st_ino, cap.spec.ifname), cap.name)
            cap.netns = pinned.st_ino
            if same != cap.name:
                raise InterfaceError(f"-i {same!r} and -i {cap.name!r} are the same interface")
        for ns, netns in self._netns.items():
            if ns not in self._ns_links:
                self._ns_links[ns] = LinkMonitor(netns)
        self._link_info = self._all_links()
        for cap in self._captures:
            info = self._link_info.get(cap.name)
            if info is None:
                monitor = self.links if cap.spec.netns is None else self._ns_links[cap.spec.netns]
                monitor.get(cap.spec.ifname)  # raises InterfaceError naming the interfaces
                raise InterfaceError(f"unknown interface {cap.name!r}")
            cap.ring = self._open_ring(cap, info)
            cap.state = "up" if info.up else "down"
            monitor = self.links if cap.spec.netns is None else self._ns_links[cap.spec.netns]
            try:
                cap.peer_netns = monitor.veth_peer_netns(cap.spec.ifname, cap.netns)
            except (OSError, UserError, LookupError):
                cap.peer_netns = 0  # the process mapper then looks in every namespace
        for lane in self._lanes[1:]:
            for cap, first in zip(lane.captures, self._captures, strict=True):
                cap.ring = self._open_ring(cap, self._link_info[cap.name])
                cap.state, cap.netns, cap.peer_netns = first.state, first.netns, first.peer_netns
        smallest = min((c.ring.block_nr for c in self._captures if c.ring is not None), default=SMALL_RING_BLOCKS)
        self._drain_interval = MIN_DRAIN_INTERVAL if smallest >= SMALL_RING_BLOCKS else 0.0
        self.snapshot = self._publish_now()

    def _all_links(self) -> dict[str, LinkInfo]:
        """The links of this namespace by name, and those of each other namespace captured in as NETNS:IFACE."""
        links = self.links.links()
        for ns, monitor in self._ns_links.items():
            for name, info in monitor.links().items():
                label = f"{ns}:{name}"
                links[label] = replace(info, name=label)
        return links

    def _open_ring(self, cap: _Capture, info: LinkInfo) -> Ring:
        linktype = RAW_LINKTYPES.get(info.arphrd, LINKTYPE_RAW)
        bpf = compile_optional(self.counting.filter, linktype)
        if self.dropped_to:
            raise CaptureError(
                f"cannot open a new ring on {cap.name}: retrotap dropped root to user {self.dropped_to!r} (-Z); "
                "restart it to capture there again"
            )
        netns = self._netns.get(cap.spec.netns) if cap.spec.netns else None
        if self.threads == 1:
            return run_in(netns, lambda: Ring(cap.spec.ifname, info.arphrd, self.ring_config, bpf, label=cap.name))
        with self._fanout_lock:
            group = self._fanout.get(cap.name, NEW_FANOUT)
            ring = run_in(
                netns, lambda: Ring(cap.spec.ifname, info.arphrd, self.ring_config, bpf, label=cap.name, fanout=group)
            )
            self._fanout[cap.name] = ring.fanout_id
            return ring

    def set_filter(self, expr: str) -> None:
        """Compile and swap the kernel filter of every ring; FilterError keeps the old one."""
        with self._rings_lock:  # the capture thread may be closing or reopening a ring
            programs = [
                (cap.ring, compile_filter(expr, cap.ring.linktype) if expr.strip() else None)
                for lane in self._lanes
                for cap in lane.captures
                if cap.ring is not None
            ]
            try:
                for ring_, prog in programs:
                    if prog is None:
                        detach(ring_.sock)
                    else:
                        attach(ring_.sock, prog)
            except OSError as e:
                raise FilterError(f"cannot set filter {expr!r}: {e.strerror or e}") from None
            for lane in self._lanes:
                lane.counting.filter = expr

    def fresh_snapshot(self, timeout: float = 0.5) -> Snapshot:
        """A snapshot published after this call (the capture thread makes one at its next turn)."""
        if self._thread is not None:
            self._answered.clear()
            self._asked.set()
            self._answered.wait(timeout)
        return self.snapshot

    @property
    def running(self) -> bool:
        """The capture thread has been started and not yet closed."""
        return self._thread is not None

    def start(self) -> None:
        """Start the capture threads."""
        for lane in self._lanes[1:]:
            lane.thread = NamedThread(
                target=self._run, args=(lane,), name=f"retrotap-capture-{lane.index}", daemon=True
            )
            lane.thread.start()
        self._thread = NamedThread(target=self._run, name="retrotap-capture", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the threads after a last drain of the rings, then publish a final snapshot."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for lane in self._lanes[1:]:
            if lane.thread is not None:
                lane.thread.join()
                lane.thread = None
        for lane in self._lanes:
            for cap in lane.captures:
                cap.close()
        try:
            self._link_info = self._all_links()
        except OSError:
            pass  # keep the last link counters read
        self.snapshot = self._publish_now()
        self.links.close()
        for monitor in self._ns_links.values():
            monitor.close()

    # --- the capture thread
    def _run(self, lane: _Lane | None = None) -> None:
        # A failure inside the loop (a bug, a surprise from the kernel) is reported in full and the
        # loop restarts on the same rings: the blocks it held went back to the kernel on the way out.
        lane = lane or self._lanes[0]
        failed_stopping = 0
        while True:
            try:
                self._loop(lane)
                return
            except Exception as e:
                self.restarts += 1
                where = log_traceback(self.error_log, e)
                thread = f" in capture thread {lane.index}" if lane.index else ""
                self.last_error = f"capture error{thread}: {type(e).__name__}: {e} (restart {self.restarts}; {where})"
                if lane.index == 0:
                    self.snapshot = self._publish_now()
                self._emit("error", "", self.last_error)
                pause = RESTART_BACKOFF[min(self.restarts, len(RESTART_BACKOFF)) - 1]
                if self._stop.wait(pause):
                    failed_stopping += 1
                    if self._drained or failed_stopping > 2:
                        return

    def _loop(self, lane: _Lane) -> None:
        poller = select.poll()
        for cap in lane.captures:
            if cap.ring is not None:
                poller.register(cap.ring.fileno(), select.POLLIN | select.POLLERR)
        by_fd = {cap.ring.fileno(): cap for cap in lane.captures if cap.ring is not None}
        timeout_ms = max(10, min(100, int(self.publish_interval * 1000)))
        next_publish = 0.0
        next_links = 0.0
        last_drain = 0.0
        if lane.index:
            self._follow(lane, poller, by_fd, timeout_ms)
            return
        self._drained = False
        if not self.ready.is_set():
            self.ready.set()
            self._emit("ready", ",".join(c.name for c in self._captures), "capturing")
        while not self._stop.is_set():
            last_drain = self._turn(lane, poller, by_fd, timeout_ms, last_drain)
            now = time.monotonic()
            if now >= next_links:
                next_links = now + LINK_POLL_SECONDS
                self._watch_links(lane, poller, by_fd)
            asked = self._asked.is_set()
            if now >= next_publish or asked:
                if asked:
                    self._asked.clear()
                for cap in self._captures:
                    cap.fold_stats()
                lane.cpu = time.thread_time()
                self.snapshot = self._publish_now(wait=asked, exact=asked)
                # Large tables make a snapshot dear: publish less often rather than let it starve the ring.
                cost = time.monotonic() - now
                self.publish_cost = cost
                next_publish = now + max(self.publish_interval, cost * PUBLISH_COST_FACTOR)
                if asked:
                    self._answered.set()
        self._last_drain(lane, poller)
        self._drained = True

    def _turn(
        self, lane: _Lane, poller: select.poll, by_fd: dict[int, _Capture], timeout_ms: int, last_drain: float
    ) -> float:
        """Wait for blocks, then drain the lane's rings; returns when this drain began."""
        for fd, ev in poller.poll(timeout_ms):
            cap_ = by_fd.get(fd)
            if cap_ is not None and cap_.ring is not None and ev & select.POLLERR:
                cap_.ring.pending_error()
        # Let blocks gather: fixed costs are paid per batch, and the ring holds plenty. A burst after a quiet
        # spell is not left to fill the ring: the wait ends once a quarter of any ring is ready.
        deadline = last_drain + (lane.drain_interval if self._drain_interval else 0.0)
        while (pause := deadline - time.monotonic()) > 0 and not self._quarter_ready(lane):
            time.sleep(min(pause, MIN_DRAIN_INTERVAL))
        began = time.monotonic()
        packets, ring_share = self._drain(lane)
        if last_drain:
            lane.drain_interval = drain_interval(packets, ring_share, began - last_drain)
        return began

    @staticmethod
    def _quarter_ready(lane: _Lane) -> bool:
        return any(c.ring is not None and c.ring.ready_ahead(c.ring.block_nr // 4) for c in lane.captures)

    def _last_drain(self, lane: _Lane, poller: select.poll) -> None:
        """The kernel retires a partly filled block after its timeout: drain for a few of them."""
        deadline = time.monotonic() + 3 * self.ring_config.block_timeout_ms / 1000
        while time.monotonic() < deadline:
            poller.poll(self.ring_config.block_timeout_ms)
            self._drain(lane)
        lane.cpu = time.thread_time()

    def _follow(self, lane: _Lane, poller: select.poll, by_fd: dict[int, _Capture], timeout_ms: int) -> None:
        """Another capture thread's loop: drain its rings, follow the first thread's view of the links, and
        freeze its counters when asked."""
        last_drain = next_links = 0.0
        while not self._stop.is_set():
            last_drain = self._turn(lane, poller, by_fd, timeout_ms, last_drain)
            if last_drain >= next_links:
                next_links = last_drain + LINK_POLL_SECONDS
                self._watch_links(lane, poller, by_fd)
            if lane.asked.is_set():
                lane.asked.clear()
                for cap in lane.captures:
                    cap.fold_stats()
                lane.cpu = time.thread_time()
                lane.part = self._freeze(lane, lane.exact)
                lane.answered.set()
        self._last_drain(lane, poller)

    def _drain(self, lane: _Lane) -> tuple[int, float]:
        """Count what the lane's rings hold; returns the packets taken and the largest share of one ring's
        blocks taken."""
        add = lane.counting.add
        packets, share = 0, 0.0
        for cap in lane.captures:
            ring = cap.ring
            if ring is None:
                continue
            taken = ring.blocks_taken
            batches = ring.batches(max(1, min(BATCH_BLOCKS, ring.block_nr // 4)), BATCH_PACKETS)
            try:
                for block in batches:
                    packets += len(block)
                    add(block)
            finally:
                batches.close()  # on an error too: the batch's blocks go back to the kernel now
            share = max(share, (ring.blocks_taken - taken) / ring.block_nr)
        return packets, share

    def _watch_links(self, lane: _Lane, poller: select.poll, by_fd: dict[int, _Capture]) -> None:
        """Close the rings of interfaces gone, reopen those back. The first thread reads the links (and says
        what changed); the others follow what it read."""
        if lane.index == 0:
            try:
                self._link_info = self._all_links()
            except OSError as e:
                self._emit("error", "", f"netlink: {e}")
                return
        emit = self._emit if lane.index == 0 else _quiet
        for cap in lane.captures:
            info = self._link_info.get(cap.name)
            if info is None or (cap.ring is not None and info.index != cap.ring.ifindex):
                if cap.ring is not None:
                    fd = cap.ring.fileno()
                    poller.unregister(fd)
                    by_fd.pop(fd, None)
                    with self._rings_lock:
                        cap.close()
                if cap.state != "gone":
                    cap.state, cap.error = "gone", f"interface {cap.name} was removed"
                    emit("iface-gone", cap.name, cap.error)
                if info is None:
                    continue
            if cap.ring is None:
                try:
                    with self._rings_lock:
                        cap.ring = self._open_ring(cap, info)
                except (UserError, OSError) as e:
                    if str(e) != cap.error:
                        emit("iface-error", cap.name, str(e))
                    cap.error = str(e)
                    continue
                poller.register(cap.ring.fileno(), select.POLLIN | select.POLLERR)
                by_fd[cap.ring.fileno()] = cap
                cap.error = ""
            state = "up" if info.up and info.running else "down"
            if state != cap.state:
                cap.state = state
                emit(f"iface-{state}", cap.name, f"{cap.name} is {state}")

    def _emit(self, kind: str, iface: str, message: str) -> None:
        if self.on_event is not None:
            self.on_event(EngineEvent(kind, iface, message))

    def _statuses(self, lane: _Lane) -> tuple[IfaceStatus, ...]:
        tallies = lane.counting.counters.interfaces
        return tuple(
            IfaceStatus(
                name=c.name,
                state=c.state,
                error=c.error,
                packets=tallies[c.name].packets if c.name in tallies else 0,
                bytes=tallies[c.name].bytes if c.name in tallies else 0,
                received=c.received,
                kernel_drops=c.drops,
                freezes=c.freezes,
                link=self._link_info.get(c.name),
                walk_errors=c.walk_errors,
                ring_bytes=c.ring.config.block_size * c.ring.block_nr if c.ring is not None else 0,
                netns=c.netns,
                peer_netns=c.peer_netns,
            )
            for c in lane.captures
        )

    def _freeze(self, lane: _Lane, exact: bool = True) -> Snapshot:
        """The lane's counters now (on its own thread, or when its thread is not running)."""
        first = lane.index == 0
        return lane.counting.freeze(
            self._statuses(lane),
            lane.cpu,
            self._link_info,
            self.restarts if first else 0,
            self.last_error if first else "",
            exact,
        )

    def _publish_now(self, wait: bool = False, exact: bool = True) -> Snapshot:
        """Every lane's counters merged; the periodic ones (not `exact`) may carry latency quantiles up to a
        second old."""
        own = self._freeze(self._lanes[0], exact)
        if self.threads == 1:
            return own
        others = self._lanes[1:]
        for lane in others:
            if lane.thread is None:  # not started, or stopped: nothing else writes its counters
                for cap in lane.captures:
                    cap.fold_stats()
                lane.part = self._freeze(lane)
            else:
                lane.exact = exact
                lane.answered.clear()
                lane.asked.set()
        if wait:
            for lane in others:
                if lane.thread is not None:
                    lane.answered.wait(ANSWER_TIMEOUT)
        parts = [own, *(lane.part for lane in others if lane.part is not None)]
        return merge_snapshots(parts, _merged_statuses(parts), self._capacities)


def _quiet(kind: str, iface: str, message: str) -> None:
    """What the other capture threads say of links: nothing (the first thread says it once)."""


def _merged_statuses(parts: list[Snapshot]) -> tuple[IfaceStatus, ...]:
    """Each interface's row summed over the capture threads, with each thread's ring beside it."""
    out = []
    for i, head in enumerate(parts[0].interfaces):
        mine = [p.interfaces[i] for p in parts]
        rings = tuple(
            RingStatus(k, s.packets, s.bytes, s.received, s.kernel_drops, s.freezes, parts[k].capture_cpu)
            for k, s in enumerate(mine)
        )
        out.append(
            replace(
                head,
                packets=sum(s.packets for s in mine),
                bytes=sum(s.bytes for s in mine),
                received=sum(s.received for s in mine),
                kernel_drops=sum(s.kernel_drops for s in mine),
                freezes=sum(s.freezes for s in mine),
                walk_errors=sum(s.walk_errors for s in mine),
                ring_bytes=sum(s.ring_bytes for s in mine),
                error=next((s.error for s in mine if s.error), ""),  # a ring that could not be reopened, say
                rings=rings,
            )
        )
    return tuple(out)


def default_error_log() -> str:
    """Where tracebacks of capture errors go: $XDG_STATE_HOME/retrotap/errors.log, else the temp dir."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "retrotap", "errors.log")


def log_traceback(path: str, error: BaseException) -> str:
    """Append the error's traceback to `path` (else to a file in the temp dir); say where it went."""
    text = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}\n" + "".join(traceback.format_exception(error))
    for candidate in (path, os.path.join(tempfile.gettempdir(), "retrotap-errors.log")):
        try:
            os.makedirs(os.path.dirname(candidate) or ".", exist_ok=True)
            with open(candidate, "a", encoding="utf-8") as fh:
                fh.write(text)
            return f"traceback in {candidate}"
        except OSError:
            continue
    return "traceback not saved: no writable log file"


def filter_blocks(blocks: Iterable[Block], filter_expr: str) -> Iterator[Block]:
    """Apply a filter to blocks read from a file (with libpcap, as the kernel would)."""
    offline = OfflineFilter(filter_expr, LINKTYPE_ETHERNET) if filter_expr.strip() else None
    for block in blocks:
        yield block if offline is None else block.take(offline.mask(block))


def read_file_blocks(
    blocks: Iterable[Block], counting: Counting, filter_expr: str, linktype: int = 0
) -> Iterator[Block]:
    """Filter and count blocks read from a file; yields each once counted."""
    for block in filter_blocks(blocks, filter_expr):
        counting.add(block)
        yield block


def file_statuses(counting: Counting) -> tuple[IfaceStatus, ...]:
    """Interface rows for a file: one per interface name seen in it."""
    return tuple(
        IfaceStatus(name, "file", "", t.packets, t.bytes, 0, 0, 0, None)
        for name, t in counting.counters.interfaces.items()
    )
