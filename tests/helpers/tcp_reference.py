"""The NumPy TCP sequence analysis (capture_backend/analysis/tcp.py before it became one compiled pass,
_native.tcp_sequence), kept as the reference the compiled kernel must equal (tests/unit/test_tcp_native.py).
Whole columns per batch; the state each direction ends a batch with lives in the flow table's columns."""

from __future__ import annotations

import numpy as np

from capture_backend.analysis.columns import segments

TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10
SEQ_SPAN = 1 << 32
SEG_STRIDE = 1 << 35  # above any relative sequence value of one batch (< 2**34)
OUT_OF_ORDER_NS = 3_000_000  # tshark's out-of-order window without a handshake RTT
FAST_RETRANSMIT_NS = 20_000_000  # tshark: a fast retransmission comes within 20 ms of the duplicate ACK


class Sequence:
    """TCP health of one batch's TCP packets, on whole columns: resets, zero windows, the handshake RTT
    and tshark's tcp_analyze_sequence_number(). `keys` are the sorted flow id * 2 + direction values,
    `rank` each packet's index into them; the other columns are in batch order.

    Packets are sorted stably per (flow, direction) for what one direction decides alone (a running
    maximum of seq + len seeded with the table's tcp_next, the previous segment's ack and window),
    and per flow for what the other direction's latest segment says (its ack, time, window,
    duplicate-ACK count, keep-alive). One direction must move less than 2 GiB of sequence space per
    batch. Zero-window probes do not move the running maximum, and whether a segment is a probe
    depends on that maximum: it is found by repeating the pass until the probes stay the same (each
    round settles at least the first packet that changed). Time gaps are compared unsigned, and the
    out-of-order window is the handshake RTT as known before each packet, as tshark does.

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
        self.cols, self.keys = cols, keys
        # Direction order: stable by key (a radix sort when the keys are few).
        if rank.size > 1 and (rank[1:] < rank[:-1]).any():
            order = np.argsort(rank.astype(np.uint16) if keys.size <= 1 << 16 else rank, kind="stable")
        else:
            order = np.arange(rank.size)
        self.order = order
        self.batch_rank = rank
        self.batch_cols = (ts, flags, window)
        self.rank = rank[order]
        self.ts, self.flags, self.seq = ts[order], flags[order], seq[order]
        self.ack, self.window, self.length = ack[order], window[order].astype(np.int64), length[order].astype(np.int64)
        count = np.bincount(rank, minlength=keys.size)
        self.starts = np.cumsum(count) - count
        self.ends = self.starts + count - 1
        self.first = np.zeros(rank.size, bool)
        self.first[self.starts] = True

    def _prev(self, values: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """Each packet's previous value in its direction, the table's `seed` (per key) for the first."""
        out = np.empty_like(values)
        out[1:] = values[:-1]
        out[self.starts] = seed
        return out

    def _last_before(self, mask: np.ndarray) -> np.ndarray:
        """Index of the latest earlier packet of the same direction where mask holds, else -1."""
        idx = np.arange(mask.size)
        last = np.maximum.accumulate(np.where(mask, idx, -1))
        before = np.empty_like(last)
        before[1:] = last[:-1]
        before[:1] = -1
        seg_start = self.starts[self.rank]
        return np.where(before >= seg_start, before, -1)

    def run(self) -> None:
        """Count everything into the flow table's columns."""
        cols, keys = self.cols, self.keys
        # Resets, zero windows and the handshake need no order.
        key = keys[self.batch_rank]
        ts, flags, window = self.batch_cols
        rst = (flags & TH_RST) != 0
        if rst.any():
            np.add.at(cols["tcp_resets"], key[rst] >> 1, 1)
        syn = (flags & (TH_SYN | TH_ACK)) == TH_SYN
        b_fid = key >> 1
        irtt = cols["tcp_irtt"][b_fid]
        done_fid, done_at = _handshake(cols, keys, self.batch_rank, b_fid, ts, flags, syn)
        if done_fid.size:
            # Packets after the one that completed their flow's handshake see its RTT.
            by_fid = np.argsort(done_fid)
            f_sorted, at_sorted = done_fid[by_fid], done_at[by_fid]
            pos = np.minimum(np.searchsorted(f_sorted, b_fid), f_sorted.size - 1)
            later = (f_sorted[pos] == b_fid) & (np.arange(b_fid.size) > at_sorted[pos])
            irtt = np.where(later, cols["tcp_irtt"][b_fid], irtt)
        self._sequence(irtt[self.order])

    def _sequence(self, irtt: np.ndarray) -> None:
        """The sequence pass; `irtt` is each packet's handshake RTT as known before it (direction order)."""
        cols, keys, rank = self.cols, self.keys, self.rank
        ts, flags, seq, ack, length = self.ts, self.flags, self.seq, self.ack, self.length
        k_fid, k_dir = keys >> 1, keys & 1
        m = rank.size
        idx = np.arange(m)
        stored = cols["tcp_next"][k_fid, k_dir]
        known = stored >= 0
        # Unwrap relative to the stored value (or any seq of the key in the batch); + 2**32 keeps values
        # positive, and each key's values are offset above the previous key's for one running maximum.
        first_seq = np.zeros(keys.size, np.int64)
        first_seq[rank] = seq
        ref_low = np.where(known, stored & (SEQ_SPAN - 1), first_seq) - (SEQ_SPAN >> 1)
        stride = rank * SEG_STRIDE
        rel = ((seq - ref_low[rank]) & (SEQ_SPAN - 1)) + ((SEQ_SPAN >> 1) + stride)
        synfin = (flags & (TH_SYN | TH_FIN)) != 0
        x = rel + length + synfin
        # The other direction's latest segment before each packet: flow order, then back.
        fid = k_fid[rank]
        direction = k_dir[rank]
        # Flow order: each flow's packets in batch order (a stable sort by a small flow rank).
        k_flow = np.cumsum(np.append(True, k_fid[1:] != k_fid[:-1])) - 1
        b_flow = k_flow[self.batch_rank]
        if m > 1 and (b_flow[1:] < b_flow[:-1]).any():
            f_batch = np.argsort(b_flow.astype(np.uint16) if k_flow[-1] < 1 << 16 else b_flow, kind="stable")
        else:
            f_batch = idx
        to_dir = np.empty(m, np.int64)
        to_dir[self.order] = idx
        f_order = to_dir[f_batch]
        f_fid, f_dir = fid[f_order], direction[f_order]
        _, f_seg, f_starts = segments(f_fid)
        f_start = f_starts[f_seg]
        last0 = np.maximum.accumulate(np.where(f_dir == 0, idx, -1))
        last1 = np.maximum.accumulate(np.where(f_dir == 1, idx, -1))
        f_rev = np.where(f_dir == 0, last1, last0)
        f_rev = np.where(f_rev >= f_start, f_rev, -1)
        rev = np.full(m, -1, np.int64)  # in direction order: index (direction order) of the other side's latest
        rev[f_order] = np.where(f_rev >= 0, f_order[np.maximum(f_rev, 0)], -1)
        has_rev = rev >= 0
        r = np.maximum(rev, 0)
        other = 1 - direction
        rev_win = np.where(has_rev, self.window[r], cols["tcp_window"][fid, other])

        seed = np.where(known, SEQ_SPAN, 0) + np.arange(keys.size) * SEG_STRIDE
        prior_known = ~self.first | known[rank]
        # Zero-window probes (one byte at the highest seq, the other side's last window 0) do not count
        # in the running maximum; repeat until the probes found are the ones left out.
        probe = np.zeros(m, bool)
        for _ in range(m + 1):
            x_seeded = np.where(probe, stride, x)
            x_seeded[self.starts] = np.maximum(x_seeded[self.starts], seed)
            running = np.maximum.accumulate(x_seeded)
            prior = self._prev(running, seed)
            found = (length == 1) & prior_known & (rel == prior) & (rev_win == 0)
            if np.array_equal(found, probe):
                break
            probe = found
        # When the highest sequence last grew: tshark's nextseqtime.
        grew = ((x > prior) | ~prior_known) & ~probe
        last_grew = self._last_before(grew)
        next_t = np.where(last_grew >= 0, ts[np.maximum(last_grew, 0)], cols["tcp_next_t"][k_fid, k_dir][rank])
        prev_ack = self._prev(ack, cols["tcp_lastack"][k_fid, k_dir])
        prev_win = self._prev(self.window, cols["tcp_window"][k_fid, k_dir])
        no_sfr = (flags & (TH_SYN | TH_FIN | TH_RST)) == 0
        keepalive = (length <= 1) & prior_known & (rel == prior - 1) & no_sfr
        at_next = prior_known & (rel == prior)
        dup_like = (length == 0) & (self.window != 0) & (self.window == prev_win) & at_next & (ack == prev_ack) & no_sfr
        zero = (self.window == 0) & no_sfr & ~probe
        rev_ka = np.where(has_rev, keepalive[r], cols["tcp_ka"][fid, other] != 0)
        dupack = dup_like & ~rev_ka

        # Duplicate ACKs in a row since the ack last changed (tshark's dupacknum), after each packet.
        changed = ack != prev_ack
        cum = np.cumsum(dupack)
        reset = np.maximum.accumulate(np.where(changed, idx, -1))
        seg_start = self.starts[rank]
        before_seg = np.where(seg_start > 0, cum[np.maximum(seg_start - 1, 0)], 0)
        dupnum = np.where(
            reset >= seg_start,
            cum - cum[np.maximum(reset, 0)],
            cols["tcp_dupacks"][k_fid, k_dir][rank] + cum - before_seg,
        )
        rev_ack = np.where(has_rev, ack[r], cols["tcp_lastack"][fid, other])
        rev_t = np.where(has_rev, ts[r], cols["tcp_last_t"][fid, other])
        rev_dups = np.where(has_rev, dupnum[r], cols["tcp_dupacks"][fid, other])

        carries = ((length > 0) | synfin) & ~keepalive
        behind = carries & prior_known & (rel < prior) & ~((length > 1) & (rel == prior - 1))
        end = (seq + length) & (SEQ_SPAN - 1)
        spurious = carries & (length > 0) & (rev_ack != 0) & (((rev_ack - end) & (SEQ_SPAN - 1)) < (SEQ_SPAN >> 1))
        # tshark's time gaps are unsigned: a frame stamped before the reference is never within a window.
        fast = ~spurious & behind & (rev_dups >= 2) & (rev_ack == seq) & (_gap(ts, rev_t) < FAST_RETRANSMIT_NS)
        threshold = np.where((irtt == 0) | (irtt == -1), OUT_OF_ORDER_NS, irtt).view(np.uint64)
        ooo = ~spurious & ~fast & behind & (_gap(ts, next_t) < threshold) & (prior != x)
        retrans = spurious | fast | (behind & ~ooo)
        for name, hit in (("tcp_retrans", retrans), ("tcp_ooo", ooo), ("tcp_dupack", dupack), ("tcp_zero_win", zero)):
            if hit.any():
                np.add.at(cols[name], fid[hit], 1)

        ends = self.ends
        ref = np.where(known, stored, first_seq)
        cols["tcp_next"][k_fid, k_dir] = running[ends] - np.arange(keys.size) * SEG_STRIDE + ref - SEQ_SPAN
        grew_last = np.maximum.accumulate(np.where(grew, idx, -1))[ends]
        cols["tcp_next_t"][k_fid, k_dir] = np.where(
            grew_last >= self.starts, ts[np.maximum(grew_last, 0)], cols["tcp_next_t"][k_fid, k_dir]
        )
        cols["tcp_lastack"][k_fid, k_dir] = ack[ends]
        cols["tcp_last_t"][k_fid, k_dir] = ts[ends]
        cols["tcp_window"][k_fid, k_dir] = self.window[ends]
        cols["tcp_dupacks"][k_fid, k_dir] = dupnum[ends]
        cols["tcp_ka"][k_fid, k_dir] = keepalive[ends]


def _gap(later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """later - earlier as tshark's unsigned 64-bit gap (wrapping like int64)."""
    return (later - earlier).view(np.uint64)


NONE = (np.zeros(0, np.int64), np.zeros(0, np.int64))


def _handshake(
    cols: dict[str, np.ndarray],
    keys: np.ndarray,
    rank: np.ndarray,
    fid: np.ndarray,
    ts: np.ndarray,
    flags: np.ndarray,
    syn: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """tshark's initial RTT: the latest SYN without ACK to the first ACK without SYN, either direction.
    Returns the flows measured by this batch and the batch index of the packet that completed each."""
    k_fid = keys >> 1
    k_pending = cols["tcp_irtt"][k_fid] == -1
    if not k_pending.any():
        return NONE
    k_armed = cols["tcp_syn"][k_fid] > 0
    if syn.any():
        # A SYN arms both directions of its flow: keys are sorted, so a flow's two keys are adjacent.
        with_syn = np.zeros(keys.size, bool)
        with_syn[rank[syn]] = True
        same = np.zeros(keys.size, bool)
        np.equal(k_fid[1:], k_fid[:-1], out=same[1:])
        with_syn[1:] |= same[1:] & with_syn[:-1]
        with_syn[:-1] |= same[1:] & with_syn[1:]
        k_armed |= with_syn
    k_live = k_pending & k_armed
    if not k_live.any():
        return NONE
    rows = np.flatnonzero(k_live[rank] & (syn | ((flags & (TH_SYN | TH_ACK)) == TH_ACK)))
    if rows.size == 0:
        return NONE
    o = rows[np.argsort(fid[rows], kind="stable")]
    f, t, is_syn = fid[o], ts[o], syn[o]
    _, hseg, hstarts = segments(f)
    last = np.maximum.accumulate(np.where(is_syn, np.arange(o.size), -1))
    in_seg = last >= hstarts[hseg]
    syn_t = np.where(in_seg, t[np.maximum(last, 0)], cols["tcp_syn"][f])
    done = np.flatnonzero(~is_syn & (syn_t > 0))
    firsts = done[segments(f[done])[2]] if done.size else done
    cols["tcp_irtt"][f[firsts]] = t[firsts] - syn_t[firsts]
    hends = np.append(hstarts[1:], o.size) - 1
    seen = in_seg[hends]
    cols["tcp_syn"][f[hends[seen]]] = t[last[hends[seen]]]
    return f[firsts], o[firsts]
