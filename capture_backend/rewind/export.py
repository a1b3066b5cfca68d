"""`retrotap export`: the packets of a time window, and of a host/port or a BPF filter, from a recording.

The index says which files and which chunks of them can hold a match (time span, hosts, ports);
only those byte ranges are read. Every packet read is then checked exactly (time, then host/port
with the decoder or the BPF filter with libpcap), and the files of one link type are merged into
one time-ordered pcap; or, as pcapng, every file into one, with an interface description per recorded
interface and, when the recording's session store names a flow's local process, that process as the
comment of the flow's packets.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TextIO

import numpy as np

from capture_backend.analysis.decode import PORT_PROTOS, decode
from capture_backend.analysis.processes import PacketOwners
from capture_backend.capture import layouts as lay
from capture_backend.capture.block import LINKTYPE_ETHERNET, Block
from capture_backend.capture.bpf import OfflineFilter
from capture_backend.capture.pcapfile import (
    MAX_RECORD_BYTES,
    SNAPLEN_SLACK,
    CaptureFileError,
    FileSource,
    PcapngWriter,
    PcapWriter,
)
from capture_backend.contract import UserError
from capture_backend.rewind.index import Chunk, FileInfo, Index, sync

NS = 1_000_000_000
END_OF_TIME = (1 << 63) - 1
READ_BYTES = 8 << 20  # contiguous chunks are read together up to this size
SNAPLEN = 262144
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CLOCK_TIME = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?")
_FRACTION = re.compile(r"(T?\d{2}:\d{2}:\d{2})[.,](\d+)")
# pcap magic -> (byte order, nanoseconds per fraction unit).
_PCAP_MAGICS = {
    lay.PCAP_MAGIC_US.to_bytes(4, "little"): ("<", 1000),
    lay.PCAP_MAGIC_US.to_bytes(4, "big"): (">", 1000),
    lay.PCAP_MAGIC_NS.to_bytes(4, "little"): ("<", 1),
    lay.PCAP_MAGIC_NS.to_bytes(4, "big"): (">", 1),
}
_RECORD_INCL = {"<": lay.PCAP_RECORD_INCL_LE, ">": lay.PCAP_RECORD_INCL_BE}
_FILE_HEADER = {"<": lay.PCAP_FILE_HEADER_LE, ">": lay.PCAP_FILE_HEADER_BE}


class TimeSpecError(UserError, ValueError):
    """A time the user wrote that cannot be read."""


def _ns(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1) * 1000


def _wall(clock: re.Match[str], day: date) -> int:
    """HH:MM[:SS[.frac]] on a local calendar day → ns."""
    hh, mm, ss, frac = clock.groups()
    when = datetime(day.year, day.month, day.day, int(hh), int(mm), int(ss or 0)).astimezone()
    return _ns(when) + int((frac or "0").ljust(9, "0"))


def parse_time(text: str, now: datetime | None = None) -> int:
    """ISO 8601 (no zone: local time) or HH:MM[:SS[.frac]] today (local, even if later than now) → ns."""
    t = text.strip()
    now = now or datetime.now().astimezone()
    m = _CLOCK_TIME.fullmatch(t)
    try:
        if m is not None:
            return _wall(m, now.astimezone().date())
        extra = 0
        f = _FRACTION.search(t)
        if f is not None:
            digits = f.group(2)
            extra = int(digits[6:9].ljust(3, "0")) if len(digits) > 6 else 0
            t = t[: f.start(2)] + digits[:6].ljust(6, "0") + t[f.end(2) :]
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise TimeSpecError(
            f"{text!r} is not a time (ISO 8601 like 2026-11-23T17:02:00Z, or 17:02 / 17:02:30 today)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return _ns(dt) + extra


def time_window(start: str | None, end: str | None, now: datetime | None = None) -> tuple[int, int]:
    """--from/--to → the [from, to) window in ns; TimeSpecError (one line, naming the option) if unusable.

    HH:MM[:SS] is local time today, as journalctl's --since/--until read it, with two exceptions: a
    --from later than now is yesterday's (a window cannot start in the future: at 00:30, --from 23:00 is
    last night's), and a --to after a clock-time --from is the first such time after it (at 00:30,
    --from 23:00 --to 23:59 is last night's hour). A window that ends later than now ends now.
    """
    now = now or datetime.now().astimezone()
    now_ns = _ns(now)
    from_ns, to_ns = 0, END_OF_TIME
    day = now.astimezone().date()
    start_clock = _CLOCK_TIME.fullmatch(start.strip()) if start else None
    if start:
        from_ns = _option_time("--from", start, now)
        if start_clock is not None and from_ns > now_ns:
            day -= timedelta(days=1)
            from_ns = _wall(start_clock, day)
    if end:
        end_clock = _CLOCK_TIME.fullmatch(end.strip())
        to_ns = _option_time("--to", end, now)
        if end_clock is not None and start_clock is not None:
            to_ns = _wall(end_clock, day)
            if to_ns <= from_ns:
                to_ns = _wall(end_clock, day + timedelta(days=1))
        to_ns = min(to_ns, now_ns)
    if start and from_ns > now_ns:
        raise TimeSpecError(f"--from {start}: later than now")
    if from_ns >= to_ns:
        raise TimeSpecError("--from must be before --to")
    return from_ns, to_ns


def _option_time(option: str, text: str, now: datetime) -> int:
    try:
        return parse_time(text, now)
    except TimeSpecError as e:
        raise TimeSpecError(f"{option}: {e}") from None


def iso(ns: int) -> str:
    """UTC time with microseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // NS)) + f".{ns % NS // 1000:06d}Z"


@dataclass
class ExportOptions:
    """What to export, from where, to where."""

    directory: str
    output: str = ""
    from_ns: int = 0
    to_ns: int = END_OF_TIME
    bpf: str = ""
    host: np.ndarray | None = None  # (2,) uint64 address key
    port: int | None = None
    flow: FlowMatch | None = None  # one 5-tuple, either direction (a session)
    pcapng: bool = False  # one pcapng of every recorded interface instead of a pcap per link type
    owners: PacketOwners | None = None  # pcapng: flows' local processes (from the session store), as comments


@dataclass(frozen=True)
class FlowMatch:
    """A 5-tuple in either direction: protocol, two address keys ((2,) uint64) and ports (ignored without)."""

    proto: int
    a: np.ndarray
    aport: int
    b: np.ndarray
    bport: int

    def mask(self, block: Block) -> np.ndarray:
        """Which packets of the block belong to the flow."""
        dec = decode(block)
        ab = (dec.src_key == self.a).all(axis=1) & (dec.dst_key == self.b).all(axis=1)
        ba = (dec.src_key == self.b).all(axis=1) & (dec.dst_key == self.a).all(axis=1)
        if self.proto in PORT_PROTOS:
            ab &= (dec.sport == self.aport) & (dec.dport == self.bport)
            ba &= (dec.sport == self.bport) & (dec.dport == self.aport)
        return np.asarray(dec.ip & (dec.proto == self.proto) & (ab | ba))


@dataclass
class ExportResult:
    """What an export wrote and what it had to read for it."""

    paths: tuple[str, ...]
    packets: int
    bytes: int
    files_read: int
    chunks_read: int
    chunks_total: int
    comments: int = 0  # pcapng: packets written with their process as a comment


Mask = Callable[[Block], np.ndarray]


def packet_mask(opts: ExportOptions) -> Mask:
    """The exact test every packet read goes through: time window, then host/port or BPF."""
    offline = OfflineFilter(opts.bpf, LINKTYPE_ETHERNET) if opts.bpf.strip() else None
    host = opts.host
    port = opts.port

    def mask(block: Block) -> np.ndarray:
        m = (block.ts_ns >= opts.from_ns) & (block.ts_ns < opts.to_ns)
        if not m.any():
            return m
        if host is not None or port is not None:
            dec = decode(block)
            if host is not None:
                m &= dec.ip & ((dec.src_key == host).all(axis=1) | (dec.dst_key == host).all(axis=1))
            if port is not None:
                m &= np.isin(dec.proto, PORT_PROTOS) & ((dec.sport == port) | (dec.dport == port))
        if opts.flow is not None:
            m &= opts.flow.mask(block)
        if offline is not None:
            rows = np.flatnonzero(m)
            m[rows] = offline.mask(block.take(rows))
        return m

    return mask


def chunk_may_match(chunk: Chunk, opts: ExportOptions) -> bool:
    """Whether the chunk's host and port sets allow a match (time was checked by the query)."""
    if opts.host is not None and not chunk.has_host(opts.host):
        return False
    return opts.port is None or chunk.has_port(opts.port, PORT_PROTOS)


def read_ranges(chunks: list[Chunk]) -> list[tuple[int, int]]:
    """Byte ranges to read: runs of adjacent chunks, each at most READ_BYTES (unless one chunk is more)."""
    out: list[tuple[int, int]] = []
    for c in chunks:
        if out and out[-1][1] == c.offset and c.end - out[-1][0] <= READ_BYTES:
            out[-1] = (out[-1][0], c.end)
        else:
            out.append((c.offset, c.end))
    return out


class PcapRanges:
    """Whole records of byte ranges of a pcap file (ranges start at record boundaries)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise CaptureFileError(f"cannot open '{path}': {e.strerror or e}") from None
        head = os.pread(self.fd, lay.PCAP_FILE_HEADER_LEN, 0)
        kind = _PCAP_MAGICS.get(head[:4])
        if kind is None or len(head) < lay.PCAP_FILE_HEADER_LEN:
            os.close(self.fd)
            raise CaptureFileError(f"'{path}' is not a pcap file any more")
        self.order, self.frac_ns = kind
        fields = _FILE_HEADER[self.order].unpack_from(head)
        self.snaplen, self.linktype = fields[5], fields[6] & 0xFFFF
        self.max_incl = min(MAX_RECORD_BYTES, 4 * self.snaplen + SNAPLEN_SLACK) if self.snaplen else MAX_RECORD_BYTES

    def close(self) -> None:
        os.close(self.fd)

    def block(self, offset: int, end: int, iface: str) -> Block:
        """The records in [offset, end); CaptureFileError if they do not fill it exactly."""
        buf = os.pread(self.fd, end - offset, offset)
        incl_at = _RECORD_INCL[self.order].unpack_from
        rec = lay.PCAP_RECORD_LEN
        size = len(buf)
        pos: list[int] = []
        append = pos.append
        p = 0
        while p + rec <= size:
            incl = incl_at(buf, p)[0]
            if incl > self.max_incl:
                raise CaptureFileError(f"'{self.path}': corrupt record at byte {offset + p} (incl_len {incl})")
            append(p)
            p += rec + incl
        if p != end - offset:
            raise CaptureFileError(f"'{self.path}' changed since it was indexed (byte {offset + p})")
        u8 = np.frombuffer(buf, np.uint8)
        at = np.array(pos, np.int64)
        hdr = np.ascontiguousarray(u8[at[:, None] + np.arange(rec)]).view(self.order + "u4")
        return Block(
            data=u8,
            start=at + rec,
            caplen=hdr[:, 2].astype(np.int64),
            wirelen=hdr[:, 3].astype(np.int64),
            ts_ns=hdr[:, 0].astype(np.int64) * NS + hdr[:, 1].astype(np.int64) * self.frac_ns,
            linktype=self.linktype,
            iface=iface,
        )


def file_blocks(
    directory: Path, info: FileInfo, chunks: list[Chunk], mask: Mask, log: Callable[[str], None]
) -> Iterator[Block]:
    """The matching packets of one file, as non-empty Blocks in file order; a bad file is reported and left."""
    path = directory / info.path
    try:
        if info.format != "pcap":
            with FileSource(str(path)) as src:
                for block in src.blocks():
                    m = mask(block)
                    if m.any():
                        yield block.take(m)
            return
        ranges = PcapRanges(path)
        try:
            for offset, end in read_ranges(chunks):
                block = ranges.block(offset, end, info.iface)
                m = mask(block)
                if m.any():
                    yield block.take(m)
        finally:
            ranges.close()
    except CaptureFileError as e:
        log(f"skipping the rest of {path}: {e}")
    except OSError as e:
        log(f"skipping the rest of {path}: {e.strerror or e}")


def concat(parts: list[Block]) -> Block:
    """One Block holding the packets of several (only the byte span of each that holds them is copied)."""
    if len(parts) == 1:
        return parts[0]
    datas, starts = [], []
    base = 0
    for b in parts:
        lo, hi = int(b.start.min()), int((b.start + b.caplen).max())
        datas.append(b.data[lo:hi])
        starts.append(b.start - lo + base)
        base += hi - lo
    return Block(
        data=np.concatenate(datas),
        start=np.concatenate(starts),
        caplen=np.concatenate([b.caplen for b in parts]),
        wirelen=np.concatenate([b.wirelen for b in parts]),
        ts_ns=np.concatenate([b.ts_ns for b in parts]),
        linktype=parts[0].linktype,
        iface="",
    )


@dataclass
class _Stream:
    blocks: Iterator[Block]
    source: int  # its index in the sources given to merge
    pending: Block | None = None


# A merged batch and, per packet, the index of the source it came from.
Write = Callable[[Block, np.ndarray], object]


def merge(sources: list[tuple[int, Callable[[], Iterator[Block]]]], write: Write) -> None:
    """Merge per-file streams (first packet time, opener) by time, writing sorted batches.

    Each stream is taken to be in time order. A batch goes out up to the smallest newest-pending
    time of the open streams and below the first time of the files not opened yet.
    """
    order = sorted(range(len(sources)), key=lambda i: sources[i][0])
    labels = order
    sources = [sources[i] for i in order]
    active: list[_Stream] = []
    nxt = 0
    while True:
        for s in active:
            if s.pending is None:
                s.pending = next(s.blocks, None)
        active = [s for s in active if s.pending is not None]
        frontier = min((int(s.pending.ts_ns.max()) for s in active if s.pending is not None), default=END_OF_TIME)
        while nxt < len(sources) and sources[nxt][0] <= frontier:
            s = _Stream(sources[nxt][1](), labels[nxt])
            nxt += 1
            s.pending = next(s.blocks, None)
            if s.pending is not None:
                active.append(s)
                frontier = min(frontier, int(s.pending.ts_ns.max()))
        if not active:
            if nxt >= len(sources):
                return
            continue
        watermark = min(frontier, sources[nxt][0] - 1) if nxt < len(sources) else frontier
        parts = []
        origin = []
        for s in active:
            b = s.pending
            assert b is not None
            due = b.ts_ns <= watermark
            if due.all():
                parts.append(b)
                s.pending = None
            elif due.any():
                parts.append(b.take(due))
                s.pending = b.take(~due)
            else:
                continue
            origin.append(np.full(len(parts[-1]), s.source, np.int64))
        if not parts:
            continue
        out = concat(parts)
        source = np.concatenate(origin)
        ts = out.ts_ns
        if ts.shape[0] > 1 and not bool((ts[1:] >= ts[:-1]).all()):
            by_time = np.argsort(ts, kind="stable")
            out, source = out.take(by_time), source[by_time]
        write(out, source)


def output_paths(output: str, linktypes: list[int]) -> dict[int, str]:
    """One output per link type: the name asked for, or <stem>-lt<N><suffix> when there are several."""
    if len(linktypes) <= 1:
        return {lt: output for lt in linktypes}
    p = Path(output)
    return {lt: str(p.with_name(f"{p.stem}-lt{lt}{p.suffix or '.pcap'}")) for lt in linktypes}


def export(opts: ExportOptions, log: Callable[[str], None]) -> ExportResult:
    """Write the matching packets of the recording in opts.directory to opts.output."""
    directory = Path(opts.directory)
    mask = packet_mask(opts)  # compiles the BPF filter first: a bad one fails before any work
    index = Index(directory, writable=os.access(directory, os.W_OK))
    try:
        files = sync(index, log)
        plan: list[tuple[FileInfo, list[Chunk]]] = []
        total = 0
        for info in files.values():
            if info.packets == 0 or info.last_ns < opts.from_ns or info.first_ns >= opts.to_ns:
                continue
            chunks = index.chunks(info.path, opts.from_ns, opts.to_ns)
            total += len(chunks)
            chunks = [c for c in chunks if chunk_may_match(c, opts)]
            if chunks:
                plan.append((info, chunks))
    finally:
        index.close()
    if opts.pcapng:
        return _export_pcapng(opts, directory, plan, mask, total, log)
    linktypes = sorted({info.linktype for info, _ in plan}) or [LINKTYPE_ETHERNET]
    paths = output_paths(opts.output, linktypes)
    if len(linktypes) > 1:
        log(f"the files have different link types ({', '.join(map(str, linktypes))}): one output per link type")
    packets = nbytes = 0
    for lt in linktypes:
        sources: list[tuple[int, Callable[[], Iterator[Block]]]] = [
            (info.first_ns, _opener(directory, info, chunks, mask, log)) for info, chunks in plan if info.linktype == lt
        ]
        fd = os.open(paths[lt], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            writer = PcapWriter(out, lt, SNAPLEN)
            merge(sources, _pcap_write(writer))
        packets += writer.packets
        nbytes += writer.bytes_written
    return ExportResult(
        tuple(paths[lt] for lt in linktypes),
        packets,
        nbytes,
        len(plan),
        sum(len(c) for _, c in plan),
        total,
    )


def _pcap_write(writer: PcapWriter) -> Write:
    return lambda block, _source: writer.write_block(block)


def _export_pcapng(
    opts: ExportOptions,
    directory: Path,
    plan: list[tuple[FileInfo, list[Chunk]]],
    mask: Mask,
    total: int,
    log: Callable[[str], None],
) -> ExportResult:
    """Every planned file merged into one pcapng: an IDB per recorded interface, process comments."""
    owners = opts.owners
    fd = os.open(opts.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        writer = PcapngWriter(out, SNAPLEN)
        ids = np.array([writer.interface(info.iface, info.linktype) for info, _ in plan], np.int64)
        linktypes = np.array([info.linktype for info, _ in plan], np.int64)

        def write(block: Block, source: np.ndarray) -> None:
            comment = None
            if owners is not None and len(owners):
                comment = np.full(len(block), -1, np.int64)
                lts = linktypes[source]
                for lt in np.unique(lts).tolist():  # a merged batch may hold files of several link types
                    rows = np.flatnonzero(lts == lt)
                    comment[rows] = owners.comments(decode(replace(block.take(rows), linktype=lt)))
            writer.write_block(block, comment=comment, texts=owners.texts if owners else (), interface=ids[source])

        merge([(info.first_ns, _opener(directory, info, chunks, mask, log)) for info, chunks in plan], write)
    return ExportResult(
        (opts.output,),
        writer.packets,
        writer.bytes_written,
        len(plan),
        sum(len(c) for _, c in plan),
        total,
        writer.comments,
    )


def _opener(
    directory: Path, info: FileInfo, chunks: list[Chunk], mask: Mask, log: Callable[[str], None]
) -> Callable[[], Iterator[Block]]:
    return lambda: file_blocks(directory, info, chunks, mask, log)


def list_files(directory: str, log: Callable[[str], None], out: TextIO = sys.stdout) -> int:
    """Print the recording's files with their time spans, packets and bytes; return how many."""
    index = Index(directory, writable=os.access(directory, os.W_OK))
    try:
        files = sorted(sync(index, log).values(), key=lambda f: (f.first_ns, f.path))
    finally:
        index.close()
    width = max((len(f.path) for f in files), default=4)
    out.write(
        f"{'FILE':<{width}}  {'IFACE':<12} {'FIRST (UTC)':<27} {'LAST (UTC)':<27} {'PACKETS':>10} {'BYTES':>13}\n"
    )
    for f in files:
        out.write(
            f"{f.path:<{width}}  {f.iface:<12} {iso(f.first_ns):<27} {iso(f.last_ns):<27} "
            f"{f.packets:>10} {f.bytes:>13}\n"
        )
    packets = sum(f.packets for f in files)
    nbytes = sum(f.bytes for f in files)
    out.write(f"{len(files)} files, {packets} packets, {nbytes} bytes\n")
    out.flush()
    return len(files)


def _stderr_log(msg: str) -> None:
    print(f"retrotap: {msg}", file=sys.stderr, flush=True)


def run_export(opts: ExportOptions, list_only: bool = False, log: Callable[[str], None] | None = None) -> int:
    """Entry point of `retrotap export` once options are parsed and checked."""
    logger = log or _stderr_log
    if list_only:
        list_files(opts.directory, logger)
        return 0
    res = export(opts, logger)
    said = f", {res.comments} with their process" if res.comments else ""
    logger(
        f"exported {res.packets} packets ({res.bytes} bytes{said}) to {', '.join(res.paths)}; "
        f"read {res.chunks_read} of {res.chunks_total} chunks in the time window, from {res.files_read} files"
    )
    return 0
