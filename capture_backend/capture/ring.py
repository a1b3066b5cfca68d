"""AF_PACKET socket with a TPACKET_V3 RX ring: set-up, whole-block iteration, statistics."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import socket
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from capture_backend import _native
from capture_backend.capture import layouts as L
from capture_backend.capture.block import LINKTYPE_ETHERNET, LINKTYPE_RAW, Block
from capture_backend.capture.bpf import BpfProgram, attach
from capture_backend.contract import UserError

ARPHRD_LOOPBACK = 772
ARPHRD_ETHER = 1
# Interfaces whose frames a SOCK_RAW socket delivers with an Ethernet header; IP-only link layers
# (tun, tunnels) deliver the IP packet itself. Everything else is opened cooked (SOCK_DGRAM), which
# also starts at the network header.
RAW_LINKTYPES = {ARPHRD_ETHER: LINKTYPE_ETHERNET, ARPHRD_LOOPBACK: LINKTYPE_ETHERNET}


class CaptureError(UserError):
    """A capture could not start or went away; the message is one line for the user."""


@dataclass(frozen=True)
class RingConfig:
    """Ring geometry: block_nr blocks of block_size bytes, retired after block_timeout_ms."""

    block_size: int = 1 << 20
    block_nr: int = 128
    frame_size: int = 1 << 11
    block_timeout_ms: int = 50
    promisc: bool = True
    # Size each interface's ring from its link speed (up to block_nr blocks) instead of block_nr itself.
    by_link_speed: bool = False
    # Rings per interface, each read by its own capture thread, joined with PACKET_FANOUT (hash mode).
    threads: int = 1


NEW_FANOUT = -1  # Ring(fanout=NEW_FANOUT): start a fanout group with an id no other socket uses

# A ring sized by link speed holds this long of line-rate traffic, within these bounds.
RING_SECONDS = 0.1
MIN_LINK_RING = 16 << 20
NO_SPEED_RING = MIN_LINK_RING  # lo, tun and NICs that report no speed: the floor (at rest a ring is resident memory)


def link_speed_mbps(sock: socket.socket, ifname: str) -> int | None:
    """The link's speed in Mbit/s as its driver reports it (ethtool, asked on `sock`, so in the socket's
    namespace), None when unknown: lo, tun and many virtual NICs have none."""
    cmd = ctypes.create_string_buffer(L.ETHTOOL_CMD.pack(L.ETHTOOL_GSET, *([0] * 15)), L.ETHTOOL_CMD.size)
    try:
        fcntl.ioctl(sock.fileno(), L.SIOCETHTOOL, L.IFREQ_DATA.pack(ifname.encode()[:15], ctypes.addressof(cmd)))
    except OSError:
        return None
    fields = L.ETHTOOL_CMD.unpack(cmd.raw)
    speed = fields[3] | fields[12] << 16  # speed, speed_hi
    return speed if 0 < speed < L.SPEED_UNKNOWN else None


def ring_blocks(config: RingConfig, speed_mbps: int | None) -> int:
    """Blocks of a ring for a link: RING_SECONDS at its speed, at least MIN_LINK_RING, rounded up to a power of
    two blocks, at most block_nr blocks."""
    if not config.by_link_speed:
        return config.block_nr
    want = NO_SPEED_RING if speed_mbps is None else int(speed_mbps * 1_000_000 / 8 * RING_SECONDS)
    blocks = 1 << max(0, -(-max(want, MIN_LINK_RING) // config.block_size) - 1).bit_length()  # a power of two
    return max(2, min(blocks, config.block_nr))


@dataclass
class RingStats:
    """PACKET_STATISTICS accumulated over reads (each read resets the kernel's counters)."""

    received: int = 0
    drops: int = 0
    freezes: int = 0


@dataclass(frozen=True)
class BlockWalk:
    """The packet headers of one ring block: absolute offsets, in order, all inside the block."""

    offsets: np.ndarray  # int64 offsets of each tpacket3_hdr
    first: int  # where the block's first packet starts
    end: int  # where its used part ends (base + blk_len, never past the block)
    lost: int  # packets num_pkts announced that could not be reached inside the block


# A header must hold tpacket3_hdr and the sockaddr_ll after it.
MIN_FRAME_HDR = L.SLL_OFFSET_IN_FRAME + L.SOCKADDR_LL.size
# The header fields a batch's columns are read from, in _native.walk_frames' order.
FRAME_FIELDS = np.array(
    [L.TP_SEC, L.TP_NSEC, L.TP_SNAPLEN, L.TP_LEN, L.TP_STATUS, L.TP_MAC, L.TP_VLAN_TCI, L.TP_VLAN_TPID,
     L.SLL_OFFSET_IN_FRAME + L.SLL_PKTTYPE, L.TP_NEXT_OFFSET],
    np.int64,
)  # fmt: skip


@dataclass(frozen=True)
class FrameColumns:
    """The per-frame columns of a ring batch, read from the frames' tpacket3_hdr (allocated for `n` frames)."""

    hdr: np.ndarray  # int64 offset of each tpacket3_hdr
    start: np.ndarray  # int64, where the frame's bytes start in the ring
    caplen: np.ndarray  # int64
    wirelen: np.ndarray  # int64
    ts: np.ndarray  # int64 ns
    tci: np.ndarray  # uint16
    tpid: np.ndarray  # uint16
    valid: np.ndarray  # bool: tp_status says the VLAN tag is valid
    pkttype: np.ndarray  # uint8

    @classmethod
    def empty(cls, n: int) -> FrameColumns:
        hdr, start, caplen, wirelen, ts = np.empty((5, n), np.int64)
        tci, tpid = np.empty((2, n), np.uint16)
        return cls(hdr, start, caplen, wirelen, ts, tci, tpid, np.empty(n, np.bool_), np.empty(n, np.uint8))


def frames_bound(num_pkts: int, block_size: int) -> int:
    """Frames a block can hold, whatever its num_pkts claims."""
    return max(0, min(num_pkts, block_size // MIN_FRAME_HDR + 1))


def walk_block(
    u32: np.ndarray, base: int, block_size: int, into: FrameColumns | None = None, row: int = 0
) -> BlockWalk:
    """Follow tp_next_offset frame by frame through the block at byte `base` of a ring viewed as
    uint32 words (compiled: _native.walk_frames, the GIL released), reading each frame's header columns
    into rows `row`.. of `into` in the same pass (each header read once, while in cache).

    Every offset is checked against the block's bounds before it is read, so a corrupt or
    unexpected layout (a 64 KB GRO frame among small ACKs, a block at the end of the ring) never
    reads outside the block: what cannot be reached is counted in ``lost``.
    """
    num = int(u32[(base + L.BLOCK_NUM_PKTS_OFFSET) >> 2])
    first_rel = int(u32[(base + L.BLOCK_FIRST_PKT_OFFSET) >> 2])
    used = int(u32[(base + L.BLOCK_LEN_OFFSET) >> 2])
    if into is None:
        into, row = FrameColumns.empty(frames_bound(num, block_size)), 0
    c = into
    count, first, end, lost = _native.walk_frames(
        u32.view(np.uint8), base, block_size, num, first_rel, used, L.TPACKET_BLOCK_DESC.size, MIN_FRAME_HDR,
        FRAME_FIELDS, L.TP_STATUS_VLAN_VALID, row, c.hdr, c.start, c.caplen, c.wirelen, c.ts, c.tci, c.tpid,
        c.valid.view(np.uint8), c.pkttype,
    )  # fmt: skip
    return BlockWalk(c.hdr[row : row + count], first, end, lost)


class Ring:
    """One interface's TPACKET_V3 ring. Not thread-safe: one capture thread owns it."""

    def __init__(
        self,
        ifname: str,
        arphrd: int,
        config: RingConfig = RingConfig(),
        bpf: BpfProgram | None = None,
        label: str = "",
        fanout: int | None = None,
    ) -> None:
        """`fanout`: None alone; NEW_FANOUT starts a fanout group (its id is then `fanout_id`); else joins it."""
        self.ifname = ifname
        self.fanout_id = 0
        self.label = label or ifname  # what its blocks are counted under (NETNS:IFACE in another namespace)
        self.config = config
        self.linktype = RAW_LINKTYPES.get(arphrd, LINKTYPE_RAW)
        self.stats = RingStats()
        self.walk_errors = 0  # frames a block announced but whose headers lay outside the block
        self._next = 0
        self.blocks_taken = 0  # blocks handed back to the kernel so far (the drain paces itself by it)
        kind = socket.SOCK_RAW if arphrd in RAW_LINKTYPES or self.linktype == LINKTYPE_RAW else socket.SOCK_DGRAM
        try:
            self.sock = socket.socket(socket.AF_PACKET, kind, 0)
        except PermissionError:
            raise CaptureError(
                f"no permission to capture on {self.label}: run as root or give the interpreter CAP_NET_RAW "
                "(sudo setcap cap_net_raw,cap_net_admin+eip $(readlink -f $(which python3)))"
            ) from None
        try:
            self._setup(arphrd, bpf)
            if fanout is not None:
                self._join_fanout(fanout)
        except OSError as e:
            self.close()
            raise CaptureError(f"cannot capture on {self.label}: {e.strerror or e}") from None
        except BaseException:
            self.close()
            raise

    def _setup(self, arphrd: int, bpf: BpfProgram | None) -> None:
        c = self.config
        s = self.sock
        s.bind((self.ifname, 0))
        self.ifindex = socket.if_nametoindex(self.ifname)
        if c.promisc:
            mreq = L.PACKET_MREQ.pack(self.ifindex, L.PACKET_MR_PROMISC, 0, b"")
            s.setsockopt(L.SOL_PACKET, L.PACKET_ADD_MEMBERSHIP, mreq)
        s.setsockopt(L.SOL_PACKET, L.PACKET_VERSION, L.TPACKET_V3)
        s.setsockopt(L.SOL_PACKET, L.PACKET_RESERVE, 4)
        if arphrd == ARPHRD_LOOPBACK:
            # Every packet on lo shows twice (sent and received): keep only the received copy.
            s.setsockopt(L.SOL_PACKET, L.PACKET_IGNORE_OUTGOING, 1)
        block_nr = ring_blocks(c, link_speed_mbps(s, self.ifname))
        while True:
            req = L.TPACKET_REQ3.pack(
                c.block_size, block_nr, c.frame_size, c.block_size // c.frame_size * block_nr, c.block_timeout_ms, 0, 0
            )
            try:
                s.setsockopt(L.SOL_PACKET, L.PACKET_RX_RING, req)
                break
            except OSError as e:
                if e.errno != errno.ENOMEM or block_nr <= 2:
                    raise
                block_nr //= 2
        self.block_nr = block_nr
        self.mm = mmap.mmap(s.fileno(), c.block_size * block_nr, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.buf = np.frombuffer(self.mm, np.uint8)
        self.u32 = self.buf.view(np.uint32)
        self.mv32 = memoryview(self.mm).cast("I")
        if bpf is not None:
            attach(s, bpf)
        s.bind((self.ifname, L.ETH_P_ALL))
        s.setblocking(False)

    def _join_fanout(self, group: int) -> None:
        mode = L.PACKET_FANOUT_HASH | (L.PACKET_FANOUT_FLAG_UNIQUEID if group == NEW_FANOUT else 0)
        self.sock.setsockopt(L.SOL_PACKET, L.PACKET_FANOUT, (max(group, 0) & 0xFFFF) | mode << 16)
        self.fanout_id = self.sock.getsockopt(L.SOL_PACKET, L.PACKET_FANOUT) & 0xFFFF

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_filter(self, bpf: BpfProgram) -> None:
        """Swap the kernel filter in place (atomic in the kernel)."""
        attach(self.sock, bpf)

    def read_stats(self) -> RingStats:
        """Fold the kernel's counters since the last read into self.stats."""
        raw = self.sock.getsockopt(L.SOL_PACKET, L.PACKET_STATISTICS, L.TPACKET_STATS_V3.size)
        packets, drops, freezes = L.TPACKET_STATS_V3.unpack(raw)
        self.stats.received += packets
        self.stats.drops += drops
        self.stats.freezes += freezes
        return self.stats

    def pending_error(self) -> int:
        """Read and clear SO_ERROR (ENETDOWN when the link went down)."""
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def ready_ahead(self, blocks: int) -> bool:
        """Whether the kernel has handed over at least `blocks` blocks from the next one on (it fills them in
        ring order, so the last of them being ours says all are)."""
        k = min(max(blocks, 1), self.block_nr)
        status_word = ((((self._next + k - 1) % self.block_nr) * self.config.block_size) + L.BLOCK_STATUS_OFFSET) >> 2
        return bool(self.u32[status_word] & L.TP_STATUS_USER)

    def batches(self, max_blocks: int = 4, max_packets: int = 1 << 62) -> Generator[Block, None, None]:
        """Yield the packets of every block the kernel has handed over, several blocks at a time: at most
        `max_blocks`, and no more once the batch holds `max_packets`. A batch that reached a block the kernel
        still holds is the last: blocks retired while it was counted are left for the next call.

        Blocks are taken strictly in ring order; a batch is one Block whose data is the whole ring
        and whose offsets are absolute, so fixed per-call costs are paid once per batch. The
        batch's blocks go back to the kernel when the caller asks for the next batch (or stops
        iterating): copy whatever must outlive that.
        """
        bs = self.config.block_size
        u32 = self.u32
        mv32 = self.mv32
        while True:
            taken: list[int] = []  # the blocks' status words
            bounds: list[int] = []  # frames each block can hold
            # Whatever happens below (a consumer's exception included), the blocks taken go back.
            packets = 0
            caught_up = False  # the next block is still the kernel's: this batch is the last of this call
            try:
                while len(taken) < min(max_blocks, self.block_nr) and packets < max_packets:
                    base = ((self._next + len(taken)) % self.block_nr) * bs
                    status_word = (base + L.BLOCK_STATUS_OFFSET) >> 2
                    if not u32[status_word] & L.TP_STATUS_USER:
                        caught_up = True
                        break
                    taken.append(status_word)
                    bounds.append(frames_bound(int(u32[(base + L.BLOCK_NUM_PKTS_OFFSET) >> 2]), bs))
                    packets += bounds[-1]
                if not taken:
                    return
                cols = FrameColumns.empty(sum(bounds))
                row = 0
                for k in range(len(taken)):
                    walk = walk_block(u32, ((self._next + k) % self.block_nr) * bs, bs, cols, row)
                    self.walk_errors += walk.lost
                    row += len(walk.offsets)
                yield self._batch(cols, row)
            finally:
                for status_word in taken:
                    mv32[status_word] = L.TP_STATUS_KERNEL
                self._next = (self._next + len(taken)) % self.block_nr
                self.blocks_taken += len(taken)
            if caught_up:  # blocks the kernel hands over meanwhile wait for the next call, in a larger batch
                return

    def _batch(self, cols: FrameColumns, n: int) -> Block:
        return Block(
            data=self.buf,
            start=cols.start[:n],
            caplen=cols.caplen[:n],
            wirelen=cols.wirelen[:n],
            ts_ns=cols.ts[:n],
            linktype=self.linktype,
            iface=self.label,
            vlan_tci=cols.tci[:n],
            vlan_tpid=cols.tpid[:n],
            vlan_valid=cols.valid[:n],
            pkttype=cols.pkttype[:n],
        )

    def close(self) -> None:
        """Release the ring and the socket."""
        for name in ("mv32", "u32", "buf"):
            if hasattr(self, name):
                obj = getattr(self, name)
                delattr(self, name)
                if isinstance(obj, memoryview):
                    obj.release()
                del obj
        if hasattr(self, "mm"):
            try:
                self.mm.close()
            except BufferError:
                pass  # a caller still holds a Block view; the mapping goes with the last reference
        self.sock.close()
