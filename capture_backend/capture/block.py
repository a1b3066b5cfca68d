"""The unit every source yields and every consumer reads: a run of frames of one interface."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Link types (pcap LINKTYPE_* values) the decoder understands.
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

PACKET_OUTGOING = 4


@dataclass(frozen=True, slots=True)
class Block:
    """Frames of one interface: a byte buffer plus per-packet columns (all arrays of equal length).

    ``data`` may be a view of ring memory that the kernel reclaims once the source moves on:
    consumers that keep bytes must copy them before the next block is requested.
    """

    data: np.ndarray  # uint8, the buffer the offsets point into
    start: np.ndarray  # int64, offset of each frame's first (link-layer) byte in data
    caplen: np.ndarray  # int64, bytes of the frame present in data
    wirelen: np.ndarray  # int64, length on the wire (tp_len / pcap orig_len)
    ts_ns: np.ndarray  # int64, nanoseconds since the epoch
    linktype: int
    iface: str
    vlan_tci: np.ndarray | None = None  # uint16 TCI of a tag the kernel stripped; None for files
    vlan_tpid: np.ndarray | None = None  # uint16 TPID of that tag (0 when no tag was stripped)
    vlan_valid: np.ndarray | None = None  # bool, a stripped tag exists (TP_STATUS_VLAN_VALID or tci != 0)
    pkttype: np.ndarray | None = None  # uint8 sll_pkttype (PACKET_OUTGOING = 4); None for files

    def __len__(self) -> int:
        return int(self.start.shape[0])

    def take(self, rows: np.ndarray | slice) -> Block:
        """The same buffer with only the packets at `rows` (indices, a boolean mask or a slice)."""

        def pick(col: np.ndarray | None) -> np.ndarray | None:
            return None if col is None else col[rows]

        return Block(
            data=self.data,
            start=self.start[rows],
            caplen=self.caplen[rows],
            wirelen=self.wirelen[rows],
            ts_ns=self.ts_ns[rows],
            linktype=self.linktype,
            iface=self.iface,
            vlan_tci=pick(self.vlan_tci),
            vlan_tpid=pick(self.vlan_tpid),
            vlan_valid=pick(self.vlan_valid),
            pkttype=pick(self.pkttype),
        )
