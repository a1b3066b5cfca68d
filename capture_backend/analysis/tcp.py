"""TCP health of a batch as tshark's tcp.analysis classifies it: retransmissions (fast and spurious
included), out-of-order segments, duplicate ACKs, keep-alives, zero windows, resets, the handshake RTT.
One compiled pass per batch (_native.tcp_sequence, the GIL released); the state each direction ends a
batch with lives in the flow table's columns."""

from __future__ import annotations

import numpy as np

from capture_backend._native import tcp_sequence

# Flow table columns the pass reads and writes, in tcp_sequence's order.
STATE_COLUMNS = ("tcp_next", "tcp_next_t", "tcp_lastack", "tcp_last_t", "tcp_window", "tcp_dupacks", "tcp_ka")
FLOW_COLUMNS = ("tcp_syn", "tcp_irtt", "tcp_retrans", "tcp_ooo", "tcp_dupack", "tcp_zero_win", "tcp_resets")


class Sequence:
    """TCP health of one batch's TCP packets: resets, zero windows, the handshake RTT and tshark's
    tcp_analyze_sequence_number(), walked packet by packet in batch (capture) order. `keys` are the
    sorted flow id * 2 + direction values, `rank` each packet's index into them; the other columns
    are in batch order.

    A direction's sequence numbers are unwrapped around the table's highest one (tcp_next) or, for a
    direction new to the table, the batch's last seq of it; it must move less than 2 GiB of sequence
    space per batch. As in tshark: a zero-window probe (one byte at the highest seq while the other
    side's last window is 0) neither moves the highest seq nor counts as a zero window; the
    out-of-order window is the handshake RTT as known before each packet (3 ms until then); time gaps
    are unsigned, so a frame stamped before the reference time (frame times that step back) is never
    within the out-of-order or fast-retransmission window.

    Where tshark decides differently: it starts a new stream when a SYN reuses the ports, reassembles
    IP fragments, and sets the duplicate-ACK count to 1 after an ACK of unseen data; none of these is
    followed here.
    """

    def __init__(
        self,
        cols: dict[str, np.ndarray],
        keys: np.ndarray,
        rank: np.ndarray,
        ts: np.ndarray,
        flags: np.ndarray,
        seq: np.ndarray,
        ack: np.ndarray,
        window: np.ndarray,
        length: np.ndarray,
    ) -> None:
        self.cols = cols
        i64 = np.int64
        self.packets = (
            np.ascontiguousarray(keys, i64),
            np.ascontiguousarray(rank, i64),
            np.ascontiguousarray(ts, i64),
            np.ascontiguousarray(flags, np.uint8),
            np.ascontiguousarray(seq, i64),
            np.ascontiguousarray(ack, i64),
            np.ascontiguousarray(window, np.int32),
            np.ascontiguousarray(length, np.int32),
        )

    def run(self) -> None:
        """Count everything into the flow table's columns."""
        cols = self.cols
        tcp_sequence(*self.packets, *(cols[name] for name in STATE_COLUMNS), *(cols[name] for name in FLOW_COLUMNS))
