"""The recording index: DIR/retrotap-index.sqlite, one row per closed file and one per chunk.

A chunk is a run of whole records starting at a record boundary, about every 256 KiB of file. Per
chunk the index keeps its byte range, its time span, and which hosts and (protocol, port) pairs
occur in it, so an export reads only the chunks that can match.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from capture_backend.analysis.decode import HAS_PORTS, Decoded, decode, key_bytes
from capture_backend.capture import layouts as lay
from capture_backend.capture.pcapfile import CaptureFileError, FileSource

INDEX_NAME = "retrotap-index.sqlite"
CHUNK_BYTES = 256 << 10
PARTIAL_SUFFIX = ".partial"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")
# <iface>-<UTC time of the first packet>[-n].pcap[.partial]
RECORDING_NAME = re.compile(r"^(?P<iface>.+)-(?P<stamp>\d{8}T\d{6}\.\d{6}Z)(?:-(?P<n>\d+))?\.pcap(?:\.partial)?$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,      -- file name inside DIR
    iface TEXT NOT NULL,
    linktype INTEGER NOT NULL,
    format TEXT NOT NULL,       -- 'pcap': chunks can be read on their own; 'pcapng': read whole
    first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL,
    packets INTEGER NOT NULL,
    bytes INTEGER NOT NULL,     -- file size
    mtime_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    path TEXT NOT NULL,
    offset INTEGER NOT NULL,    -- byte offset of the chunk's first record
    end INTEGER NOT NULL,       -- byte after its last record
    first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL,
    packets INTEGER NOT NULL,
    hosts BLOB NOT NULL,        -- sorted distinct 16-byte addresses (IPv4 as ::ffff:a.b.c.d)
    ports BLOB NOT NULL,        -- sorted distinct proto << 16 | port, big-endian uint32
    PRIMARY KEY (path, offset)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One indexed capture file."""

    path: str  # name inside the directory
    iface: str
    linktype: int
    format: str
    first_ns: int
    last_ns: int
    packets: int
    bytes: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """A run of whole records of one file and what occurs in it."""

    offset: int
    end: int
    first_ns: int
    last_ns: int
    packets: int
    hosts: bytes
    ports: bytes

    def has_host(self, key: np.ndarray) -> bool:
        """Whether the 16-byte address `key` ((2,) uint64) occurs in the chunk."""
        hosts = np.frombuffer(self.hosts, ">u8").reshape(-1, 2)
        return bool(((hosts[:, 0] == key[0]) & (hosts[:, 1] == key[1])).any())

    def has_port(self, port: int, protos: tuple[int, ...]) -> bool:
        """Whether `port` occurs with one of `protos` in the chunk."""
        ports = np.frombuffer(self.ports, ">u4")
        wanted = np.array([(p << 16) | port for p in protos], np.uint32)
        return bool(np.isin(wanted, ports).any())


class Keys(NamedTuple):
    """The decoded columns the index needs, for rows of one block."""

    ip: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    proto: np.ndarray
    sport: np.ndarray
    dport: np.ndarray

    @classmethod
    def of(cls, dec: Decoded) -> Keys:
        return cls(dec.ip, dec.src_key, dec.dst_key, dec.proto, dec.sport, dec.dport)

    def rows(self, a: int, b: int) -> Keys:
        return Keys(*(col[a:b] for col in self))


def _distinct_hosts(keys: np.ndarray) -> np.ndarray:
    """Distinct (n, 2) uint64 keys sorted by (hi, lo)."""
    if keys.shape[0] == 0:
        return keys
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    k = keys[order]
    new = np.ones(k.shape[0], bool)
    new[1:] = (k[1:] != k[:-1]).any(axis=1)
    return k[new]


def _hosts_by_segment(seg_of: np.ndarray, keys: Keys, nseg: int) -> list[np.ndarray]:
    """Per segment, its distinct addresses (IP packets' sources and destinations), sorted."""
    seg = np.concatenate((seg_of[keys.ip], seg_of[keys.ip]))
    k = np.concatenate((keys.src[keys.ip], keys.dst[keys.ip]))
    order = np.lexsort((k[:, 1], k[:, 0], seg))
    seg, k = seg[order], k[order]
    keep = np.ones(seg.shape[0], bool)
    keep[1:] = (seg[1:] != seg[:-1]) | (k[1:] != k[:-1]).any(axis=1)
    seg, k = seg[keep], k[keep]
    return np.split(k, np.searchsorted(seg, np.arange(1, nseg)))


def _ports_by_segment(seg_of: np.ndarray, keys: Keys, nseg: int) -> list[np.ndarray]:
    """Per segment, its distinct proto << 16 | port (TCP, UDP, SCTP; either side), sorted."""
    with_ports = HAS_PORTS[np.clip(keys.proto, 0, 255)]
    seg = seg_of[with_ports].astype(np.uint64) << np.uint64(32)
    proto = keys.proto[with_ports].astype(np.uint64) << np.uint64(16)
    sport = keys.sport[with_ports].astype(np.uint64)
    dport = keys.dport[with_ports].astype(np.uint64)
    v = np.unique(np.concatenate((seg | proto | sport, seg | proto | dport)))
    parts = np.split(v, np.searchsorted(v >> np.uint64(32), np.arange(1, nseg, dtype=np.uint64)))
    return [(p & np.uint64(0xFFFFFFFF)).astype(np.uint32) for p in parts]


class ChunkBuilder:
    """Cuts a file's records into chunks as they are written and collects each chunk's keys."""

    def __init__(self, first_offset: int = lay.PCAP_FILE_HEADER_LEN, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.chunk_bytes = chunk_bytes
        self.chunks: list[Chunk] = []
        self._offset = first_offset
        self._end = first_offset
        self._first = self._last = 0
        self._packets = 0
        self._hosts: list[np.ndarray] = []
        self._ports: list[np.ndarray] = []

    def add(self, offsets: np.ndarray, ends: np.ndarray, ts_ns: np.ndarray, keys: Keys) -> None:
        """Records at byte `offsets` (ascending, ending at `ends`) with their times and keys."""
        n = int(offsets.shape[0])
        if n == 0:
            return
        # Cut the rows into segments, each inside one chunk; `new` marks a segment that starts a chunk.
        segs: list[tuple[int, int, bool]] = []
        cur, filled, new = self._offset, self._packets > 0, False
        i = 0
        while i < n:
            j = int(np.searchsorted(offsets, cur + self.chunk_bytes, side="left"))
            if j <= i and filled:
                cur, filled, new = int(offsets[i]), False, True
                continue
            j = max(j, i + 1)  # an empty chunk takes at least one record
            segs.append((i, j, new))
            i, filled, new = j, True, False
        starts = np.array([a for a, _, _ in segs], np.int64)
        seg_of = np.repeat(np.arange(len(segs)), np.diff(np.append(starts, n)))
        hosts = _hosts_by_segment(seg_of, keys, len(segs))
        ports = _ports_by_segment(seg_of, keys, len(segs))
        firsts = np.minimum.reduceat(ts_ns, starts).tolist()
        lasts = np.maximum.reduceat(ts_ns, starts).tolist()
        for k, (a, b, starts_chunk) in enumerate(segs):
            if starts_chunk:
                self._close(int(offsets[a]))
            self._first = firsts[k] if not self._packets else min(self._first, firsts[k])
            self._last = lasts[k] if not self._packets else max(self._last, lasts[k])
            self._packets += b - a
            self._end = int(ends[b - 1])
            self._hosts.append(hosts[k])
            self._ports.append(ports[k])

    def _close(self, next_offset: int) -> None:
        hosts = self._hosts[0] if len(self._hosts) == 1 else _distinct_hosts(np.concatenate(self._hosts))
        ports = self._ports[0] if len(self._ports) == 1 else np.unique(np.concatenate(self._ports))
        self.chunks.append(
            Chunk(
                self._offset,
                self._end,
                self._first,
                self._last,
                self._packets,
                key_bytes(hosts).tobytes(),
                ports.astype(">u4").tobytes(),
            )
        )
        self._offset = self._end = next_offset
        self._packets = 0
        self._hosts, self._ports = [], []

    def finish(self) -> list[Chunk]:
        """Every chunk, the last one closed."""
        if self._packets:
            self._close(self._end)
        return self.chunks


def record_offsets(first: int, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of consecutive records of `lengths` bytes starting at byte `first`."""
    ends = first + np.cumsum(lengths, dtype=np.int64)
    return ends - lengths, ends


@dataclass
class Scan:
    """What reading a whole file found."""

    info: FileInfo
    chunks: list[Chunk]
    whole_end: int  # the byte after its last whole record (pcap)
    truncated: str | None  # the file ends mid-record


def iface_of(name: str) -> str:
    """The interface a recording's file name carries, else the name without its suffix."""
    m = RECORDING_NAME.match(name)
    if m is not None:
        return m.group("iface")
    return name.removesuffix(PARTIAL_SUFFIX).rsplit(".", 1)[0]


def scan_file(path: Path, chunk_bytes: int = CHUNK_BYTES, name: str | None = None) -> Scan:
    """Read a capture file and build its index rows; CaptureFileError if it is corrupt.

    pcap files are cut into chunks at record boundaries; a pcapng file is one chunk (it is read
    whole). `name` is the name the file will have in the index (default: its own).
    """
    st = path.stat()
    builder = ChunkBuilder(lay.PCAP_FILE_HEADER_LEN, chunk_bytes)
    first = last = 0
    packets = 0
    pos = lay.PCAP_FILE_HEADER_LEN
    with FileSource(str(path)) as src:
        fmt = src.format
        ng_chunk = ChunkBuilder(0, 1 << 62)
        for block in src.blocks():
            n = len(block)
            if n == 0:
                continue
            lo, hi = int(block.ts_ns.min()), int(block.ts_ns.max())
            first = lo if not packets else min(first, lo)
            last = hi if not packets else max(last, hi)
            packets += n
            keys = Keys.of(decode(block))
            if fmt == "pcap":
                offsets, ends = record_offsets(pos, lay.PCAP_RECORD_LEN + block.caplen.astype(np.int64))
                builder.add(offsets, ends, block.ts_ns, keys)
                pos = int(ends[-1])
            else:
                zeros = np.zeros(n, np.int64)
                ng_chunk.add(zeros, zeros + st.st_size, block.ts_ns, keys)
        linktype = src.linktype or 0
        truncated = src.truncated
    chunks = builder.finish() if fmt == "pcap" else ng_chunk.finish()
    info = FileInfo(
        name or path.name, iface_of(name or path.name), linktype, fmt, first, last, packets, st.st_size, st.st_mtime_ns
    )
    return Scan(info, chunks, pos if fmt == "pcap" else st.st_size, truncated)


class Index:
    """The SQLite index of one directory (used by one thread at a time)."""

    def __init__(self, directory: str | Path, writable: bool = True) -> None:
        """Open (or create) the index; a read-only directory gets an in-memory copy."""
        self.directory = Path(directory)
        self.path = self.directory / INDEX_NAME
        self.in_memory = not writable
        if writable:
            self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        else:
            self.db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            if self.path.exists():
                ro = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                try:
                    ro.backup(self.db)
                finally:
                    ro.close()
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def put(self, info: FileInfo, chunks: list[Chunk]) -> None:
        """Add or replace a file and its chunks, in one transaction."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM chunks WHERE path = ?", (info.path,))
            db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.path,
                    info.iface,
                    info.linktype,
                    info.format,
                    info.first_ns,
                    info.last_ns,
                    info.packets,
                    info.bytes,
                    info.mtime_ns,
                ),
            )
            db.executemany(
                "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(info.path, c.offset, c.end, c.first_ns, c.last_ns, c.packets, c.hosts, c.ports) for c in chunks],
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back already (disk full)
                db.execute("ROLLBACK")
            raise

    def remove(self, path: str) -> None:
        """Forget a file."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM chunks WHERE path = ?", (path,))
            db.execute("DELETE FROM files WHERE path = ?", (path,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back already (disk full)
                db.execute("ROLLBACK")
            raise

    def files(self) -> dict[str, FileInfo]:
        """Every indexed file by name."""
        rows = self.db.execute("SELECT * FROM files ORDER BY first_ns, path").fetchall()
        return {r[0]: FileInfo(*r) for r in rows}

    def chunks(self, path: str, from_ns: int, to_ns: int) -> list[Chunk]:
        """The chunks of a file with a packet time in [from_ns, to_ns), in file order."""
        rows = self.db.execute(
            "SELECT offset, end, first_ns, last_ns, packets, hosts, ports FROM chunks "
            "WHERE path = ? AND last_ns >= ? AND first_ns < ? ORDER BY offset",
            (path, from_ns, to_ns),
        ).fetchall()
        return [Chunk(*r) for r in rows]


def capture_files(directory: Path) -> list[Path]:
    """Closed capture files in a directory (not partials, not the index)."""
    out = []
    with os.scandir(directory) as it:
        for entry in it:
            if entry.name.endswith(CAPTURE_SUFFIXES) and entry.is_file(follow_symlinks=False):
                out.append(Path(entry.path))
    return sorted(out)


def sync(index: Index, log: Callable[[str], None], chunk_bytes: int = CHUNK_BYTES) -> dict[str, FileInfo]:
    """Bring the index in line with the directory: forget files that are gone, index new or changed ones.

    A corrupt file is reported in one line and left out.
    """
    known = index.files()
    on_disk = {p.name: p for p in capture_files(index.directory)}
    for name in sorted(known.keys() - on_disk.keys()):
        index.remove(name)
        del known[name]
    for name, path in on_disk.items():
        try:
            st = path.stat()
            info = known.get(name)
            if info is not None and info.bytes == st.st_size and info.mtime_ns == st.st_mtime_ns:
                continue
            scan = scan_file(path, chunk_bytes)
        except FileNotFoundError:  # deleted meanwhile (retention)
            known.pop(name, None)
            continue
        except CaptureFileError as e:
            log(f"skipping a corrupt file: {e}")
            if name in known:
                index.remove(name)
                del known[name]
            continue
        if scan.truncated:
            log(f"warning: {scan.truncated}; its whole records are used")
        index.put(scan.info, scan.chunks)
        known[name] = scan.info
    return known
