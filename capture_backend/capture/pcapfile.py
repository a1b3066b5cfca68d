"""pcap and pcapng files: a chunked reader that yields Blocks, and pcap and pcapng writers.

The reader walks record headers sequentially in one tight loop per chunk (the only per-packet
Python) and gathers every other field with NumPy afterwards.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

import numpy as np

from capture_backend._native import copy_runs, walk_pcap
from capture_backend.capture import layouts as lay
from capture_backend.capture.block import LINKTYPE_ETHERNET, Block
from capture_backend.contract import UserError

MAX_RECORD_BYTES = 256 << 20
SNAPLEN_SLACK = 65536  # incl_len may exceed 4 x snaplen by this much before it counts as corrupt
_DEFAULT_TSRESOL = 6  # if_tsresol absent: 10^-6 s
_NS = 1_000_000_000
_PACKET_BLOCKS = frozenset((lay.PCAPNG_EPB, lay.PCAPNG_SPB))

# First four bytes of a file -> (format, byte order, nanoseconds per timestamp fraction unit).
_MAGICS: dict[bytes, tuple[str, str, int]] = {
    lay.PCAP_MAGIC_US.to_bytes(4, "little"): ("pcap", "<", 1000),
    lay.PCAP_MAGIC_US.to_bytes(4, "big"): ("pcap", ">", 1000),
    lay.PCAP_MAGIC_NS.to_bytes(4, "little"): ("pcap", "<", 1),
    lay.PCAP_MAGIC_NS.to_bytes(4, "big"): ("pcap", ">", 1),
    lay.PCAPNG_SHB.to_bytes(4, "little"): ("pcapng", "", 0),
}
_BYTE_ORDER_MAGICS: dict[bytes, str] = {
    lay.PCAPNG_BYTE_ORDER_MAGIC.to_bytes(4, "little"): "<",
    lay.PCAPNG_BYTE_ORDER_MAGIC.to_bytes(4, "big"): ">",
}


class CaptureFileError(UserError):
    """A capture file that cannot be opened or parsed; str() is a one-line message for the CLI."""


@dataclass(frozen=True, slots=True)
class _Order:
    """The structs of one byte order."""

    file_header: struct.Struct
    record_incl: struct.Struct
    block_hdr: struct.Struct
    u32: struct.Struct
    idb_body: struct.Struct
    opt_hdr: struct.Struct
    opt_i64: struct.Struct
    words: np.dtype[np.uint32]
    big: bool


_ORDERS: dict[str, _Order] = {
    "<": _Order(
        lay.PCAP_FILE_HEADER_LE,
        lay.PCAP_RECORD_INCL_LE,
        lay.PCAPNG_BLOCK_HDR_LE,
        lay.PCAPNG_U32_LE,
        lay.PCAPNG_IDB_BODY_LE,
        lay.PCAPNG_OPT_HDR_LE,
        lay.PCAPNG_OPT_I64_LE,
        np.dtype("<u4"),
        False,
    ),
    ">": _Order(
        lay.PCAP_FILE_HEADER_BE,
        lay.PCAP_RECORD_INCL_BE,
        lay.PCAPNG_BLOCK_HDR_BE,
        lay.PCAPNG_U32_BE,
        lay.PCAPNG_IDB_BODY_BE,
        lay.PCAPNG_OPT_HDR_BE,
        lay.PCAPNG_OPT_I64_BE,
        np.dtype(">u4"),
        True,
    ),
}


@dataclass(slots=True)
class _Interface:
    """One pcapng Interface Description Block."""

    linktype: int
    snaplen: int
    name: str
    tsresol: int = _DEFAULT_TSRESOL
    tsoffset_s: int = 0

    def to_ns(self, ticks: np.ndarray) -> np.ndarray:
        """Convert uint64 timestamps in this interface's units to int64 ns since the epoch."""
        exp = self.tsresol & 0x7F
        if self.tsresol & 0x80:  # 2^-exp seconds
            shift = min(exp, 34)  # frac << 30 (x 10^9) must fit in 64 bits
            sec = ticks >> np.uint64(exp) if exp < 64 else np.zeros_like(ticks)
            frac = ticks & np.uint64((1 << exp) - 1) if exp < 64 else ticks
            if exp > shift:
                frac = frac >> np.uint64(exp - shift) if exp - shift < 64 else np.zeros_like(ticks)
            ns = sec * np.uint64(_NS) + ((frac * np.uint64(_NS)) >> np.uint64(shift))
        elif exp <= 9:
            ns = ticks * np.uint64(10 ** (9 - exp))
        elif exp - 9 < 20:
            ns = ticks // np.uint64(10 ** (exp - 9))
        else:
            ns = np.zeros_like(ticks)
        out = ns.astype(np.int64)
        if self.tsoffset_s:
            out += np.int64(self.tsoffset_s * _NS)
        return out


def _opt_name(iface: _Interface, value: bytes, order: _Order) -> None:
    """if_name: UTF-8, possibly NUL-terminated."""
    name = value.split(b"\0", 1)[0].decode("utf-8", "replace")
    if name:
        iface.name = name


def _opt_tsresol(iface: _Interface, value: bytes, order: _Order) -> None:
    """if_tsresol: one byte, MSB clear = 10^-n, set = 2^-n."""
    if value:
        iface.tsresol = value[0]


def _opt_tsoffset(iface: _Interface, value: bytes, order: _Order) -> None:
    """if_tsoffset: signed 64-bit seconds added to every timestamp."""
    if len(value) >= 8:
        iface.tsoffset_s = max(min(order.opt_i64.unpack_from(value)[0], 1 << 33), -(1 << 33))


_IDB_OPTIONS: dict[int, Callable[[_Interface, bytes, _Order], None]] = {
    lay.PCAPNG_OPT_IF_NAME: _opt_name,
    lay.PCAPNG_OPT_IF_TSRESOL: _opt_tsresol,
    lay.PCAPNG_OPT_IF_TSOFFSET: _opt_tsoffset,
}

# A generator that yields Blocks for one chunk and returns (bytes consumed, bytes needed to go on).
_ChunkWalk = Generator[Block, None, tuple[int, int]]


def _items(u8: np.ndarray, width: int) -> np.ndarray:
    """An overlapping view of a uint8 buffer whose item i is the ``width`` bytes u8[i:i + width].

    Fancy indexing on it gathers or scatters many byte runs of one length at memcpy speed.
    """
    return np.ndarray(
        shape=(max(u8.shape[0] - width + 1, 0),), dtype=np.dtype((np.void, width)), buffer=u8, strides=(1,)
    )


def _copy_runs(dst8: np.ndarray, dst: np.ndarray, src8: np.ndarray, src: np.ndarray, length: np.ndarray) -> None:
    """Copy src8[src[i]:src[i] + length[i]] to dst8[dst[i]:...] for every i (compiled, one memcpy each)."""
    copy_runs(dst8, _i64(dst), src8, _i64(src), _i64(length))


def _i64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


class FileSource:
    """Read a pcap or pcapng file as Blocks, one (or a few, for pcapng) per chunk of the file."""

    def __init__(self, path: str, chunk_bytes: int = 8 << 20) -> None:
        """Open ``path`` and validate its header; raise CaptureFileError if that fails."""
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        self.path = path
        self.name = os.path.basename(path) or path
        self.chunk_bytes = chunk_bytes
        self.packets = 0
        self.truncated: str | None = None
        self.linktype: int | None = None
        self.snaplen = 0
        self.format = ""
        try:
            self._f = open(path, "rb", buffering=0)
        except OSError as exc:
            raise CaptureFileError(f"cannot open '{path}': {exc.strerror or exc}") from None
        try:
            self._read_header()
        except BaseException:
            self._f.close()
            raise
        self._last_ts = 0
        self._ifaces: list[_Interface] = []

    # -- header ------------------------------------------------------------------------------

    def _read_header(self) -> None:
        """Identify the format and read what the header says (pcapng: also peek for the 1st IDB)."""
        try:
            head = self._f.read(64 << 10)
        except OSError as exc:
            raise CaptureFileError(f"cannot read '{self.path}': {exc.strerror or exc}") from None
        kind = _MAGICS.get(head[:4])
        if kind is None:
            what = f"magic 0x{head[:4].hex()}" if head else "empty file"
            raise CaptureFileError(f"'{self.path}' is not a pcap or pcapng file ({what})")
        self.format, byte_order, self._frac_ns = kind
        if self.format == "pcap":
            if len(head) < lay.PCAP_FILE_HEADER_LEN:
                raise CaptureFileError(f"'{self.path}' ends inside the pcap file header (truncated file)")
            self._order = _ORDERS[byte_order]
            fields = self._order.file_header.unpack_from(head)
            self.snaplen, self.linktype = fields[5], fields[6] & 0xFFFF
            self._max_incl = MAX_RECORD_BYTES
            if self.snaplen:
                self._max_incl = min(MAX_RECORD_BYTES, 4 * self.snaplen + SNAPLEN_SLACK)
            return
        self._order = self._shb_order(head, 0, 0)
        blen = self._order.block_hdr.unpack_from(head)[1]
        if blen & 3 or blen < lay.PCAPNG_MIN_BLOCK_LEN[lay.PCAPNG_SHB]:
            raise self._corrupt("block", 0, f"block length {blen}")
        self._peek_first_idb(head)

    def _shb_order(self, buf: bytes | memoryview, p: int, base: int) -> _Order:
        """The byte order a Section Header Block at ``p`` declares."""
        if len(buf) < p + 12:
            raise CaptureFileError(f"'{self.path}' ends inside a pcapng section header (truncated file)")
        byte_order = _BYTE_ORDER_MAGICS.get(bytes(buf[p + 8 : p + 12]))
        if byte_order is None:
            raise CaptureFileError(
                f"'{self.path}': corrupt section header at byte {base + p} "
                f"(byte-order magic 0x{bytes(buf[p + 8 : p + 12]).hex()})"
            )
        return _ORDERS[byte_order]

    def _peek_first_idb(self, head: bytes) -> None:
        """Set linktype/snaplen from the first IDB if it lies in ``head``; errors wait for blocks()."""
        p = 0
        order = self._order
        while p + 20 <= len(head):
            btype, blen = order.block_hdr.unpack_from(head, p)
            if btype == lay.PCAPNG_IDB:
                self.linktype, _, self.snaplen = order.idb_body.unpack_from(head, p + 8)
                return
            if blen < 12 or blen & 3 or (p and btype == lay.PCAPNG_SHB):
                return
            p += blen

    # -- iteration ---------------------------------------------------------------------------

    def blocks(self) -> Iterator[Block]:
        """Yield the file's packets as Blocks, from the start of the file.

        Raises CaptureFileError on a corrupt record, after yielding every whole record before
        it. A file cut mid-record ends the iteration normally and sets ``truncated``.
        """
        self.packets = 0
        self.truncated = None
        self._last_ts = 0
        self._ifaces = []
        walk = self._walk_pcap if self.format == "pcap" else self._walk_pcapng
        base = lay.PCAP_FILE_HEADER_LEN if self.format == "pcap" else 0
        self._f.seek(base)
        carry = b""
        need = 0
        while True:
            want = max(self.chunk_bytes, need)
            arr = np.empty(len(carry) + want, np.uint8)  # not zeroed: every byte used is read into it first
            arr[: len(carry)] = np.frombuffer(carry, np.uint8)
            buf = arr.data
            got = self._fill(buf[len(carry) :])
            end = len(carry) + got
            eof = got < want
            if end == 0:
                return
            consumed, need = yield from walk(buf, end, base)
            if eof:
                if consumed < end:
                    unit = "record" if self.format == "pcap" else "block"
                    self.truncated = f"'{self.path}' ends mid-{unit} after {self.packets} packets (truncated file)"
                return
            carry = bytes(buf[consumed:end])
            base += consumed
            need = max(need - len(carry), 0)

    def _fill(self, view: memoryview) -> int:
        """Read into ``view`` until it is full or the file ends; return the bytes read."""
        got = 0
        try:
            while got < len(view):
                n = self._f.readinto(view[got:])
                if not n:
                    break
                got += n
        except OSError as exc:
            raise CaptureFileError(f"cannot read '{self.path}': {exc.strerror or exc}") from None
        return got

    def _corrupt(self, what: str, offset: int, detail: str) -> CaptureFileError:
        """The one-line error for a bad record or block at file ``offset``."""
        return CaptureFileError(f"'{self.path}': corrupt {what} at byte {offset} ({detail})")

    def _walk_pcap(self, buf: memoryview, end: int, base: int) -> _ChunkWalk:
        """Yield the whole records in buf[:end] as one Block."""
        rec_len = lay.PCAP_RECORD_LEN
        u8 = np.frombuffer(buf, np.uint8, count=end)
        u8.flags.writeable = False
        offsets, caplen, wirelen, ts = np.empty((4, end // rec_len + 1), np.int64)
        count, p = walk_pcap(
            u8, end, self._order.big, self._max_incl, self._frac_ns, offsets, caplen, wirelen, ts
        )  # compiled: no Python per record
        if count:
            offsets[:count] += rec_len
            self.packets += count
            yield Block(
                data=u8,
                start=offsets[:count],
                caplen=caplen[:count],
                wirelen=wirelen[:count],
                ts_ns=ts[:count],
                linktype=self.linktype or 0,
                iface=self.name,
            )
        if p > end - rec_len:
            return p, rec_len
        incl_len = self._order.record_incl.unpack_from(buf, p)[0]
        if incl_len > self._max_incl:
            raise self._corrupt("record", base + p, f"incl_len {incl_len}")
        return p, lay.PCAP_RECORD_LEN + incl_len

    def _walk_pcapng(self, buf: memoryview, end: int, base: int) -> _ChunkWalk:
        """Yield the packet blocks in buf[:end] as Blocks; handle other blocks on the way."""
        run: list[int] = []
        p = 0
        last = end - 12
        while True:
            # Fast path: consecutive packet blocks of the current section.
            block_hdr = self._order.block_hdr.unpack_from
            append = run.append
            packet_blocks = _PACKET_BLOCKS
            while p <= last:
                btype, blen = block_hdr(buf, p)
                nxt = p + blen
                if btype not in packet_blocks or not p < nxt <= end:
                    break
                append(p)
                p = nxt
            if run:
                yield from self._flush(buf, end, base, run)
                run = []
            if p > last:
                return p, 12
            # Slow path: one block of any kind, fully validated.
            btype, blen = block_hdr(buf, p)
            order = self._shb_order(buf, p, base) if btype == lay.PCAPNG_SHB else self._order
            blen = order.block_hdr.unpack_from(buf, p)[1]
            if blen & 3 or blen < lay.PCAPNG_MIN_BLOCK_LEN.get(btype, 12) or blen > MAX_RECORD_BYTES:
                raise self._corrupt("block", base + p, f"block length {blen}")
            if p + blen > end:
                return p, blen
            trailer = order.u32.unpack_from(buf, p + blen - 4)[0]
            if trailer != blen:
                raise self._corrupt("block", base + p, f"trailing length {trailer} != {blen}")
            handler = self._ng_handlers.get(btype)
            if handler is not None:
                handler(self, buf, p, blen, base)
            elif btype in _PACKET_BLOCKS:
                self._check_packet_block(buf, p, btype, blen, base)
                run.append(p)
            p += blen

    def _flush(self, buf: memoryview, end: int, base: int, run: list[int]) -> Iterator[Block]:
        """Yield the packet blocks at offsets ``run`` as Blocks, one per interface run.

        The fast walk checked only that each block lies inside the chunk; every other check
        happens here, vectorised; the first bad block is raised after the good ones are yielded.
        """
        order = self._order
        pos = np.array(run, dtype=np.int64)
        words = np.frombuffer(buf, order.words, count=end // 4)
        w = pos >> 2
        btype = words[w]
        blen = words[w + 1].astype(np.int64)
        is_epb = btype == lay.PCAPNG_EPB
        min_len = np.where(is_epb, lay.PCAPNG_MIN_BLOCK_LEN[lay.PCAPNG_EPB], lay.PCAPNG_MIN_BLOCK_LEN[lay.PCAPNG_SPB])
        ok = ((pos & 3) == 0) & ((blen & 3) == 0) & (blen >= min_len)
        n = int(np.argmin(ok)) if not ok.all() else pos.shape[0]
        # Blocks from here on are in bounds, so their fixed fields can be gathered.
        pos, w, blen, is_epb = pos[:n], w[:n], blen[:n], is_epb[:n]
        ok = words[(pos + blen - 4) >> 2] == blen
        caplen = np.empty(n, dtype=np.int64)
        wirelen = np.empty(n, dtype=np.int64)
        ifid = np.zeros(n, dtype=np.int64)
        ts = np.empty(n, dtype=np.int64)
        epb = np.flatnonzero(is_epb)
        spb = np.flatnonzero(~is_epb)
        we = w[epb]
        ifid[epb] = words[we + lay.PCAPNG_EPB_IFID]
        caplen[epb] = words[we + lay.PCAPNG_EPB_CAPLEN]
        wirelen[epb] = words[we + lay.PCAPNG_EPB_LEN]
        ok[epb] &= caplen[epb] <= blen[epb] - 32
        ok &= ifid < len(self._ifaces)
        if spb.size:
            wirelen[spb] = words[w[spb] + lay.PCAPNG_SPB_LEN]
            snaplen = self._ifaces[0].snaplen if self._ifaces else 0
            body = blen[spb] - 16
            caplen[spb] = np.minimum(wirelen[spb], np.minimum(body, snaplen or MAX_RECORD_BYTES))
        if not ok.all():
            n = int(np.argmin(ok))
        if n:
            ifid, caplen, wirelen, ts, is_epb = ifid[:n], caplen[:n], wirelen[:n], ts[:n], is_epb[:n]
            start = pos[:n] + np.where(is_epb, lay.PCAPNG_EPB_DATA, lay.PCAPNG_SPB_DATA)
            epb = np.flatnonzero(is_epb)
            we = w[epb]
            ticks = words[we + lay.PCAPNG_EPB_TS_HIGH].astype(np.uint64) << np.uint64(32)
            ticks |= words[we + lay.PCAPNG_EPB_TS_LOW].astype(np.uint64)
            ep_ifid = ifid[epb]
            for i in np.unique(ep_ifid).tolist():
                sel = ep_ifid == i
                ts[epb[sel]] = self._ifaces[i].to_ns(ticks[sel])
            if epb.size < n:  # SPBs carry no timestamp: repeat the previous packet's
                prev = np.maximum.accumulate(np.where(is_epb, np.arange(n), -1))
                ts = np.where(prev >= 0, ts[prev], self._last_ts)
            self._last_ts = int(ts[-1])
            u8 = np.frombuffer(buf, np.uint8, count=end)
            u8.flags.writeable = False
            cuts = [0, *(np.flatnonzero(ifid[1:] != ifid[:-1]) + 1).tolist(), n]
            for a, b in zip(cuts[:-1], cuts[1:], strict=True):
                iface = self._ifaces[int(ifid[a])]
                self.packets += b - a
                yield Block(
                    data=u8,
                    start=start[a:b],
                    caplen=caplen[a:b],
                    wirelen=wirelen[a:b],
                    ts_ns=ts[a:b],
                    linktype=iface.linktype,
                    iface=iface.name,
                )
        if n < len(run):
            bad = run[n]
            btype_bad, blen_bad = order.block_hdr.unpack_from(buf, bad)
            if blen_bad & 3 or blen_bad < lay.PCAPNG_MIN_BLOCK_LEN[btype_bad]:
                raise self._corrupt("block", base + bad, f"block length {blen_bad}")
            self._check_packet_block(buf, bad, btype_bad, blen_bad, base)
            raise self._corrupt("block", base + bad, "bad packet block")  # pragma: no cover

    def _check_packet_block(self, buf: memoryview, p: int, btype: int, blen: int, base: int) -> None:
        """Raise the precise error for a packet block that the vectorised checks rejected."""
        u32 = self._order.u32.unpack_from
        trailer = u32(buf, p + blen - 4)[0]
        if trailer != blen:
            raise self._corrupt("block", base + p, f"trailing length {trailer} != {blen}")
        if btype == lay.PCAPNG_EPB:
            ifid = u32(buf, p + 4 * lay.PCAPNG_EPB_IFID)[0]
            caplen = u32(buf, p + 4 * lay.PCAPNG_EPB_CAPLEN)[0]
            if caplen > blen - 32:
                raise self._corrupt("block", base + p, f"EPB caplen {caplen} exceeds block length {blen}")
        else:
            ifid = 0
        if ifid >= len(self._ifaces):
            raise self._corrupt("block", base + p, f"packet on undeclared interface {ifid}")

    def _on_shb(self, buf: memoryview, p: int, blen: int, base: int) -> None:
        """A Section Header Block: new byte order, no interfaces yet."""
        self._order = self._shb_order(buf, p, base)
        self._ifaces = []

    def _on_idb(self, buf: memoryview, p: int, blen: int, base: int) -> None:
        """An Interface Description Block: append an interface (options: name, tsresol, tsoffset)."""
        order = self._order
        linktype, _, snaplen = order.idb_body.unpack_from(buf, p + 8)
        iface = _Interface(linktype, snaplen, f"{self.name}#{len(self._ifaces)}")
        q = p + lay.PCAPNG_IDB_OPTIONS_OFFSET
        stop = p + blen - 4
        while q + 4 <= stop:
            code, olen = order.opt_hdr.unpack_from(buf, q)
            if code == lay.PCAPNG_OPT_ENDOFOPT or q + 4 + olen > stop:
                break
            parse = _IDB_OPTIONS.get(code)
            if parse is not None:
                parse(iface, bytes(buf[q + 4 : q + 4 + olen]), order)
            q += 4 + ((olen + 3) & ~3)
        self._ifaces.append(iface)
        if self.linktype is None:
            self.linktype, self.snaplen = linktype, snaplen

    _ng_handlers: dict[int, Callable[[FileSource, memoryview, int, int, int], None]] = {
        lay.PCAPNG_SHB: _on_shb,
        lay.PCAPNG_IDB: _on_idb,
    }

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file."""
        self._f.close()

    def __enter__(self) -> FileSource:
        """Context manager: returns self."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the file."""
        self.close()


def _selected(block: Block, mask: np.ndarray | None) -> tuple[np.ndarray | slice, np.ndarray, np.ndarray, np.ndarray]:
    """The rows a mask picks (a slice for all) and their start, caplen and wire length as int64."""
    if mask is None:
        sel: np.ndarray | slice = slice(None)
        start, cap, wire = block.start, block.caplen, block.wirelen
    else:
        sel = np.flatnonzero(np.asarray(mask, dtype=bool))
        start, cap, wire = block.start[sel], block.caplen[sel], block.wirelen[sel]
    return sel, start.astype(np.int64), cap.astype(np.int64), wire.astype(np.int64)


def _tagged(block: Block, linktype: int, sel: np.ndarray | slice, cap: np.ndarray) -> np.ndarray:
    """Which selected packets get a stripped VLAN tag re-inserted (Ethernet frames in an Ethernet file)."""
    tagged = np.zeros(cap.shape[0], dtype=bool)
    if linktype != LINKTYPE_ETHERNET or block.linktype != LINKTYPE_ETHERNET:
        return tagged
    if block.vlan_valid is not None:
        tagged |= block.vlan_valid[sel].astype(bool)
    if block.vlan_tci is not None:
        tagged |= block.vlan_tci[sel] != 0
    return tagged & (cap >= 12)


def _put_frames(
    o8: np.ndarray,
    body: np.ndarray,
    block: Block,
    sel: np.ndarray | slice,
    start: np.ndarray,
    incl: np.ndarray,
    tagged: np.ndarray,
) -> None:
    """Copy the selected frames' first ``incl`` bytes to o8 at ``body``; a tagged frame gets its tag back."""
    t = np.flatnonzero(tagged)
    if t.size:
        tpid = np.full(t.size, 0x8100, dtype=np.int64)
        if block.vlan_tpid is not None:
            given = block.vlan_tpid[sel][t].astype(np.int64)
            tpid = np.where(given != 0, given, tpid)
        tci = block.vlan_tci[sel][t].astype(np.int64) if block.vlan_tci is not None else 0 * tpid
        tag = np.empty((t.size, 2), dtype=">u2")
        tag[:, 0] = tpid
        tag[:, 1] = tci
        _items(o8, 4)[body[t] + 12] = tag.view(np.dtype((np.void, 4)))[:, 0]
        # A tagged frame is two runs around its tag.
        u = np.flatnonzero(~tagged)
        dst = np.concatenate((body[u], body[t], body[t] + 16))
        src = np.concatenate((start[u], start[t], start[t] + 12))
        length = np.concatenate((incl[u], np.full(t.size, 12), incl[t] - 16))
    else:
        dst, src, length = body, start, incl
    _copy_runs(o8, dst, np.ascontiguousarray(block.data, dtype=np.uint8), src, length)


class PcapWriter:
    """Write Blocks (or single packets) as pcap records, re-inserting VLAN tags the kernel stripped."""

    def __init__(self, f: BinaryIO, linktype: int, snaplen: int = 262144, nanosecond: bool = True) -> None:
        """Write the pcap global header to ``f``."""
        if snaplen < 16:
            raise ValueError("snaplen must be at least 16")
        self._f = f
        self.linktype = linktype
        self.snaplen = snaplen
        self._frac_div = 1 if nanosecond else 1000
        magic = lay.PCAP_MAGIC_NS if nanosecond else lay.PCAP_MAGIC_US
        f.write(lay.PCAP_FILE_HEADER_LE.pack(magic, 2, 4, 0, 0, snaplen, linktype))
        self.packets = 0
        self.bytes_written = lay.PCAP_FILE_HEADER_LEN

    def write_packet(self, ts_ns: int, data: bytes, wirelen: int) -> int:
        """Write one record (data cut to snaplen); return the bytes written."""
        incl = min(len(data), self.snaplen)
        sec, frac = divmod(ts_ns, _NS)
        rec = lay.PCAP_RECORD_LE.pack(sec, frac // self._frac_div, incl, max(wirelen, incl))
        self._f.write(rec + bytes(data[:incl]))
        self.packets += 1
        self.bytes_written += lay.PCAP_RECORD_LEN + incl
        return lay.PCAP_RECORD_LEN + incl

    def record_lengths(self, block: Block) -> np.ndarray:
        """The bytes each packet of the block will take in the file, record header included."""
        cap = block.caplen.astype(np.int64)
        add = self._tagged(block, slice(None), cap).astype(np.int64) * 4
        return lay.PCAP_RECORD_LEN + np.minimum(cap + add, self.snaplen)

    def write_block(self, block: Block, mask: np.ndarray | None = None) -> int:
        """Write the block's packets (those where ``mask`` is true) in one write; return bytes."""
        sel, start, cap, wire = _selected(block, mask)
        n = int(start.shape[0])
        if n == 0:
            return 0
        ts = block.ts_ns[sel]
        tagged = self._tagged(block, sel, cap)
        add = tagged.astype(np.int64) * 4
        incl = np.minimum(cap + add, self.snaplen)
        rec = lay.PCAP_RECORD_LEN + incl
        off = np.zeros(n, dtype=np.int64)
        np.cumsum(rec[:-1], out=off[1:])
        total = int(off[-1] + rec[-1])

        # Every byte is written below (a header, then the frame): no need to zero it first.
        o8 = np.empty(total, np.uint8)
        hdr = np.empty((n, 4), dtype="<u4")
        sec, frac = np.divmod(ts.astype(np.int64), _NS)
        hdr[:, 0] = sec
        hdr[:, 1] = frac // self._frac_div
        hdr[:, 2] = incl
        hdr[:, 3] = np.maximum(wire + add, incl)
        _items(o8, lay.PCAP_RECORD_LEN)[off] = hdr.view(np.dtype((np.void, lay.PCAP_RECORD_LEN)))[:, 0]
        _put_frames(o8, off + lay.PCAP_RECORD_LEN, block, sel, start, incl, tagged)
        self._f.write(o8.data)
        self.packets += n
        self.bytes_written += total
        return total

    def _tagged(self, block: Block, sel: np.ndarray | slice, cap: np.ndarray) -> np.ndarray:
        """Which selected packets get a stripped VLAN tag re-inserted."""
        return _tagged(block, self.linktype, sel, cap)


def _pad4(n: np.ndarray | int) -> np.ndarray | int:
    """n rounded up to a multiple of 4 (pcapng pads every field to 32 bits)."""
    return (n + 3) & ~3


def _option(code: int, value: bytes) -> bytes:
    """One pcapng option: option_code, option_length, the value padded to 4."""
    return lay.PCAPNG_OPT_HDR_LE.pack(code, len(value)) + value + bytes(-len(value) % 4)


def _end_of_options() -> bytes:
    return lay.PCAPNG_OPT_HDR_LE.pack(lay.PCAPNG_OPT_ENDOFOPT, 0)


def _pcapng_block(fixed: struct.Struct, values: tuple[int, ...], options: bytes) -> bytes:
    """A whole block: its fixed part (block_type first, block_total_length filled in), options, trailer."""
    total = fixed.size + len(options) + lay.PCAPNG_TRAILER_LEN
    return fixed.pack(values[0], total, *values[1:]) + options + lay.PCAPNG_U32_LE.pack(total)


# The EPB's fixed part as a NumPy record, for a whole batch of headers at once.
_EPB_RECORD = np.dtype([(name, "<" + code) for name, code in lay.PCAPNG_EPB_FIELDS])
PCAPNG_TSRESOL_NS = 9  # if_tsresol: 10^-9 s, timestamps are ns since the epoch


class PcapngWriter:
    """Write one pcapng section (little-endian): a Section Header Block, one Interface Description Block per
    interface (if_name, if_tsresol 9; written when the interface is first named), Enhanced Packet Blocks
    with an opt_comment on the packets given one. Stripped VLAN tags are put back as PcapWriter does."""

    def __init__(self, f: BinaryIO, snaplen: int = 262144, application: str = "retrotap") -> None:
        """Write the Section Header Block to ``f``."""
        if snaplen < 16:
            raise ValueError("snaplen must be at least 16")
        self._f = f
        self.snaplen = snaplen
        self.interfaces: list[tuple[str, int]] = []  # (name, linktype) by interface id
        self._ids: dict[tuple[str, int], int] = {}
        options = _option(lay.PCAPNG_OPT_SHB_USERAPPL, application.encode()) + _end_of_options()
        shb = _pcapng_block(
            lay.PCAPNG_SHB_LE,
            (
                lay.PCAPNG_SHB,
                lay.PCAPNG_BYTE_ORDER_MAGIC,
                lay.PCAPNG_MAJOR_VERSION,
                lay.PCAPNG_MINOR_VERSION,
                lay.PCAPNG_SECTION_LENGTH_UNKNOWN,
            ),
            options,
        )
        f.write(shb)
        self.packets = 0
        self.comments = 0  # packets written with a comment
        self.bytes_written = len(shb)

    def interface(self, name: str, linktype: int) -> int:
        """The interface id of (name, link type), its IDB written the first time it is asked for."""
        key = (name, linktype)
        found = self._ids.get(key)
        if found is not None:
            return found
        options = _option(lay.PCAPNG_OPT_IF_NAME, name.encode())
        options += _option(lay.PCAPNG_OPT_IF_TSRESOL, bytes([PCAPNG_TSRESOL_NS])) + _end_of_options()
        idb = _pcapng_block(lay.PCAPNG_IDB_LE, (lay.PCAPNG_IDB, linktype, 0, self.snaplen), options)
        self._f.write(idb)
        self.bytes_written += len(idb)
        self._ids[key] = len(self.interfaces)
        self.interfaces.append(key)
        return self._ids[key]

    def write_block(
        self,
        block: Block,
        mask: np.ndarray | None = None,
        comment: np.ndarray | None = None,
        texts: Sequence[str] = (),
        interface: np.ndarray | None = None,
    ) -> int:
        """Write the block's packets (where ``mask`` is true) as EPBs in one write; return the bytes.

        ``comment``: per packet of the block, an index into ``texts`` (-1: none) written as its opt_comment.
        ``interface``: per packet, its interface id (from ``interface()``); by default the block's own.
        """
        sel, start, cap, wire = _selected(block, mask)
        n = int(start.shape[0])
        if n == 0:
            return 0
        ts = block.ts_ns[sel].astype(np.int64)
        tagged = _tagged(block, block.linktype, sel, cap)
        add = tagged.astype(np.int64) * 4
        incl = np.minimum(cap + add, self.snaplen)
        # Each distinct comment's options (opt_comment, opt_endofopt) once, gathered per packet.
        blobs = [_option(lay.PCAPNG_OPT_COMMENT, t.encode()) + _end_of_options() for t in texts]
        blob_len = np.array([len(b) for b in blobs] + [0], np.int64)  # the last entry: no comment
        blob_at = np.zeros(blob_len.size, np.int64)
        np.cumsum(blob_len[:-1], out=blob_at[1:])
        cid = np.full(n, -1, np.int64) if comment is None else np.asarray(comment, np.int64)[sel]
        opt_len = blob_len[cid]  # -1 picks the last entry, 0
        blen = lay.PCAPNG_EPB_DATA + _pad4(incl) + opt_len + lay.PCAPNG_TRAILER_LEN
        off = np.zeros(n, dtype=np.int64)
        np.cumsum(blen[:-1], out=off[1:])
        total = int(off[-1] + blen[-1])

        out = bytearray(total)
        o8 = np.frombuffer(out, np.uint8)
        hdr = np.empty(n, _EPB_RECORD)
        hdr["block_type"] = lay.PCAPNG_EPB
        hdr["block_total_length"] = blen
        if interface is not None:
            hdr["interface_id"] = np.asarray(interface)[sel]
        else:
            hdr["interface_id"] = self.interface(block.iface, block.linktype)
        ticks = ts.astype(np.uint64)
        hdr["timestamp_upper"] = ticks >> np.uint64(32)
        hdr["timestamp_lower"] = ticks & np.uint64(0xFFFFFFFF)
        hdr["captured_packet_length"] = incl
        hdr["original_packet_length"] = np.maximum(wire + add, incl)
        _items(o8, _EPB_RECORD.itemsize)[off] = hdr.view(np.dtype((np.void, _EPB_RECORD.itemsize)))
        trailer = blen.astype("<u4")
        _items(o8, lay.PCAPNG_TRAILER_LEN)[off + blen - lay.PCAPNG_TRAILER_LEN] = trailer.view(
            np.dtype((np.void, lay.PCAPNG_TRAILER_LEN))
        )
        body = off + lay.PCAPNG_EPB_DATA
        _put_frames(o8, body, block, sel, start, incl, tagged)
        said = np.flatnonzero(cid >= 0)
        if said.size:
            src = np.frombuffer(b"".join(blobs), np.uint8)
            _copy_runs(o8, body[said] + _pad4(incl[said]), src, blob_at[cid[said]], opt_len[said])
        self._f.write(out)
        self.packets += n
        self.comments += int(said.size)
        self.bytes_written += total
        return total
