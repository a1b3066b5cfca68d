"""BPF filters compiled by libpcap (through ctypes), attached to sockets or run on file blocks."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
from dataclasses import dataclass
from functools import cache

import numpy as np

from capture_backend.capture.block import LINKTYPE_LINUX_SLL, Block
from capture_backend.capture.layouts import (
    SO_ATTACH_FILTER,
    SO_DETACH_FILTER,
    SOCK_FILTER,
    SOCK_FPROG,
)
from capture_backend.contract import UserError

PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
DEFAULT_SNAPLEN = 262144
BPF_MAXINSNS = 4096
SLL_HDR_LEN = 16
SKF_AD_OFF = 0x1_0000_0000 - 0x1000  # -0x1000 as the u32 k field holds it
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
# pcap_open_dead takes a DLT; files and blocks carry LINKTYPE values, which differ (on Linux) only here.
_LINKTYPE_TO_DLT = {100: 11, 101: 12, 102: 15, 103: 16, 106: 19}


class FilterError(UserError, ValueError):
    """A filter expression libpcap rejects, or one the kernel will not take."""


class _BpfInsn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _PcapPkthdr(ctypes.Structure):
    _fields_ = [("ts", _Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


@cache
def _libpcap() -> ctypes.CDLL:
    """Load libpcap once and declare the few functions used."""
    name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise FilterError(f"libpcap not found ({exc}); install libpcap0.8") from None
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_compile.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(_BpfProgram),
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
    ]
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_freecode.restype = None
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    lib.pcap_close.restype = None
    lib.pcap_offline_filter.argtypes = [
        ctypes.POINTER(_BpfProgram),
        ctypes.POINTER(_PcapPkthdr),
        ctypes.c_void_p,
    ]
    lib.pcap_offline_filter.restype = ctypes.c_int
    return lib


@dataclass(frozen=True)
class BpfProgram:
    """A compiled classic BPF program: (code, jt, jf, k) per instruction."""

    expr: str
    linktype: int
    instructions: tuple[tuple[int, int, int, int], ...]

    def __len__(self) -> int:
        return len(self.instructions)


def compile_filter(expr: str, linktype: int, snaplen: int = DEFAULT_SNAPLEN) -> BpfProgram:
    """Compile a pcap filter expression for a link type, as tcpdump would (optimized)."""
    lib = _libpcap()
    pcap = lib.pcap_open_dead(_LINKTYPE_TO_DLT.get(linktype, linktype), snaplen)
    if not pcap:
        raise FilterError(f"libpcap cannot open a handle for link type {linktype}")
    try:
        prog = _BpfProgram()
        try:
            encoded = expr.encode()
        except UnicodeEncodeError:
            raise FilterError(f"invalid filter {expr!r}: not valid text") from None
        if lib.pcap_compile(pcap, ctypes.byref(prog), encoded, 1, PCAP_NETMASK_UNKNOWN) != 0:
            message = (lib.pcap_geterr(pcap) or b"unknown error").decode(errors="replace")
            raise FilterError(f"invalid filter {expr!r}: {' '.join(message.split())}")
        try:
            instructions = tuple(
                (ins.code, ins.jt, ins.jf, ins.k) for ins in prog.bf_insns[: prog.bf_len]
            )
        finally:
            lib.pcap_freecode(ctypes.byref(prog))
    finally:
        lib.pcap_close(pcap)
    return BpfProgram(expr=expr, linktype=linktype, instructions=instructions)


def compile_optional(expr: str | None, linktype: int) -> BpfProgram | None:
    """Compile ``expr``, or return None when it is absent or blank (capture everything)."""
    if expr is None or not expr.strip():
        return None
    return compile_filter(expr, linktype)


def for_cooked_socket(prog: BpfProgram) -> BpfProgram:
    """Relocate a LINUX_SLL program for a SOCK_DGRAM packet socket, whose data starts at the
    network header (libpcap's fix_offset): protocol and packet type become kernel ancillary loads.
    """
    out = []
    for code, jt, jf, k in prog.instructions:
        if code & 0x07 in (0x00, 0x01) and code & 0xE0 in (0x20, 0x40, 0xA0):  # LD/LDX ABS/IND/MSH
            if SLL_HDR_LEN <= k < SKF_AD_OFF:
                k -= SLL_HDR_LEN
            elif k == 0:
                k = SKF_AD_OFF + SKF_AD_PKTTYPE
            elif k == 14:
                k = SKF_AD_OFF + SKF_AD_PROTOCOL
            elif k < SKF_AD_OFF:
                raise FilterError(
                    f"filter {prog.expr!r} reads cooked-header fields the kernel cannot filter on"
                )
        out.append((code, jt, jf, k))
    return BpfProgram(expr=prog.expr, linktype=prog.linktype, instructions=tuple(out))


def attach(sock: socket.socket, prog: BpfProgram) -> None:
    """Attach ``prog`` to ``sock``; an attached filter is replaced atomically by the kernel.

    A LINUX_SLL program on a SOCK_DGRAM (cooked) socket is relocated first.
    """
    if prog.linktype == LINKTYPE_LINUX_SLL and sock.type == socket.SOCK_DGRAM:
        prog = for_cooked_socket(prog)
    if len(prog) > BPF_MAXINSNS:
        raise FilterError(
            f"filter {prog.expr!r} is too long for the kernel "
            f"({len(prog)} instructions, at most {BPF_MAXINSNS})"
        )
    code = ctypes.create_string_buffer(b"".join(SOCK_FILTER.pack(*ins) for ins in prog.instructions))
    fprog = SOCK_FPROG.pack(len(prog), ctypes.addressof(code))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        raise FilterError(f"cannot attach filter {prog.expr!r}: {exc.strerror}") from None


def detach(sock: socket.socket) -> None:
    """Remove the socket's filter, if it has one."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


class _Compiled:
    """A BpfProgram laid out as libpcap's struct bpf_program (owns the instruction array)."""

    def __init__(self, prog: BpfProgram) -> None:
        self.insns = (_BpfInsn * len(prog))(*(_BpfInsn(*ins) for ins in prog.instructions))
        self.program = _BpfProgram(len(prog), self.insns)


class OfflineFilter:
    """Run a filter in user space on blocks read from files, with libpcap's own interpreter."""

    def __init__(self, expr: str, linktype: int, snaplen: int = DEFAULT_SNAPLEN) -> None:
        self.expr = expr
        self.snaplen = snaplen
        self._by_linktype: dict[int, _Compiled] = {
            linktype: _Compiled(compile_filter(expr, linktype, snaplen))
        }
        self._hdr = _PcapPkthdr()

    def _compiled(self, linktype: int) -> _Compiled:
        """The program for ``linktype`` (pcapng files may mix link types)."""
        compiled = self._by_linktype.get(linktype)
        if compiled is None:
            compiled = _Compiled(compile_filter(self.expr, linktype, self.snaplen))
            self._by_linktype[linktype] = compiled
        return compiled

    def mask(self, block: Block) -> np.ndarray:
        """Booleans, one per packet of ``block``: True where the filter accepts it."""
        n = len(block)
        out = np.zeros(n, dtype=bool)
        if n == 0:
            return out
        data = block.data
        if data.dtype != np.uint8 or data.ndim != 1 or not data.flags.c_contiguous:
            raise ValueError("block.data must be a contiguous 1-D uint8 array")
        start = block.start.astype(np.int64, copy=False)
        caplen = block.caplen.astype(np.int64, copy=False)
        if int(start.min()) < 0 or int(caplen.min()) < 0 or int((start + caplen).max()) > data.size:
            raise ValueError("block offsets point outside block.data")
        program = ctypes.byref(self._compiled(block.linktype).program)
        hdr = self._hdr
        hdr_ref = ctypes.byref(hdr)
        run = _libpcap().pcap_offline_filter
        base = data.ctypes.data
        wirelen = np.maximum(block.wirelen, block.caplen)
        for i, (off, cap, wire) in enumerate(
            zip(start.tolist(), caplen.tolist(), wirelen.tolist(), strict=True)
        ):
            hdr.caplen = cap
            hdr.len = wire
            if run(program, hdr_ref, base + off):
                out[i] = True
        return out
