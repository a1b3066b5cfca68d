"""TCP sessions built segment by segment with their tshark-checked health figures."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from tests.pcapgen import T0_NS, Frame, ether

MS = 1_000_000


Tuple5 = tuple[str, int, str, int]


# retransmissions, out-of-order, duplicate ACKs, zero windows, resets, handshake RTT (ms)
Health = tuple[int, int, int, int, int, float | None]


class Session:
    """One TCP connection whose segments are built with explicit times, seq and windows."""

    def __init__(self, client: str, cport: int, server: str, sport: int, cseq: int, sseq: int) -> None:
        self.c, self.cp, self.s, self.sp = client, cport, server, sport
        self.seq = {True: cseq, False: sseq}
        self.frames: list[Frame] = []

    def send(
        self,
        t_ms: float,
        from_client: bool,
        flags: str,
        size: int = 0,
        seq: int | None = None,
        window: int = 64240,
        advance: bool = True,
        data: bytes = b"",
    ) -> int:
        """Append a segment at T0 + t_ms (size zero bytes, or data); returns its seq (the next one when seq is None)."""
        src, dst = (self.c, self.s) if from_client else (self.s, self.c)
        sp, dp = (self.cp, self.sp) if from_client else (self.sp, self.cp)
        s = self.seq[from_client] if seq is None else seq
        ack = self.seq[not from_client] if "A" in flags else 0
        ipl = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
        pkt = ether(src, dst) / ipl / TCP(sport=sp, dport=dp, flags=flags, seq=s, ack=ack, window=window)
        if data:
            size = len(data)
        if size:
            pkt = pkt / Raw(data or bytes(size))
        raw = bytes(pkt)
        self.frames.append(Frame(raw, T0_NS + int(t_ms * MS), len(raw)))
        if advance and seq is None:
            grow = size + (1 if ("S" in flags or "F" in flags) else 0)
            self.seq[from_client] = (s + grow) & 0xFFFFFFFF
        return s

    def handshake(self, t_ms: float, rtt_ms: float) -> None:
        self.send(t_ms, True, "S")
        self.send(t_ms + rtt_ms / 2, False, "SA")
        self.send(t_ms + rtt_ms, True, "A")


def sessions() -> list[Session]:
    """Interleaved sessions; expected per flow: (retransmissions, zero windows, resets, RTT ms)."""
    # A: 2 retransmissions (an older segment, then the newest), 2 zero windows, keep-alive, RST.
    a = Session("10.9.0.1", 40001, "192.0.2.10", 80, 1000, 5000)
    a.handshake(0, 50)
    s1 = a.send(60, True, "PA", 100)
    s2 = a.send(61, True, "PA", 200)
    s3 = a.send(62, True, "PA", 300)
    a.send(300, True, "PA", 200, seq=s2)  # older segment again, 238 ms after the newest
    a.send(600, True, "PA", 300, seq=s3)  # the newest again
    a.send(650, False, "A", window=0)
    a.send(700, False, "A", window=0)
    a.send(750, False, "A")
    a.send(2000, True, "A", 1, seq=a.seq[True] - 1)  # keep-alive: no retransmission
    a.send(2100, True, "RA")
    assert s1 < s2
    # B (IPv6): the SYN is sent again after 1 s (tshark: a retransmission; the RTT is from it), the
    # server re-sends its data 200 ms later, then resets.
    b = Session("2001:db8:9::1", 40002, "2001:db8:9::2", 443, 7, 900)
    b.send(10, True, "S")
    b.send(1010, True, "S", seq=7)
    b.send(1030, False, "SA")
    b.send(1050, True, "A")
    d = b.send(1100, False, "PA", 1000)
    b.send(1300, False, "PA", 1000, seq=d)
    b.send(1320, True, "A")
    b.send(1400, False, "R", advance=False)
    # C: sequence numbers wrap; the segment after the wrap is re-sent; FIN/FIN close.
    c = Session("10.9.0.3", 40003, "192.0.2.10", 80, 0xFFFFFFFF - 150, 3)
    c.handshake(5, 20)
    c.send(30, True, "PA", 100)
    w = c.send(31, True, "PA", 100)  # crosses 2**32
    c.send(32, True, "PA", 100)
    c.send(500, True, "PA", 100, seq=w)
    c.send(520, False, "A")
    c.send(600, True, "FA")
    c.send(610, False, "FA")
    c.send(620, True, "A")
    # D: captured mid-stream (no handshake, no RTT); one retransmission, a zero window from the client.
    e = Session("10.9.0.4", 40004, "192.0.2.11", 22, 123456, 654321)
    x = e.send(40, False, "PA", 500)
    e.send(41, True, "A", window=0)
    e.send(42, True, "A")
    e.send(400, False, "PA", 500, seq=x)
    e.send(410, True, "A")
    # E: reordering. No handshake (3 ms window): a segment overtaken by the next one by 1 ms is
    # out-of-order; one 10 ms late is a retransmission.
    r = Session("10.9.0.5", 40005, "192.0.2.12", 80, 100, 200)
    r1 = r.send(0, True, "PA", 100)
    r2 = r.send(1, True, "PA", 100, advance=False)
    r.seq[True] = r2 + 100
    r.send(1.5, True, "PA", 100)  # r3 before r2
    r.send(2, True, "PA", 100, seq=r2)  # r2: 0.5 ms after the highest: out-of-order
    r4 = r.send(3, True, "PA", 100)
    r.send(13, True, "PA", 100, seq=r4)  # 10 ms after: a retransmission
    r.send(14, False, "A")
    assert r1 < r2
    # F: loss, three duplicate ACKs, a fast retransmission, then a spurious one (already acked).
    f = Session("10.9.0.6", 40006, "192.0.2.13", 80, 1000, 2000)
    f.handshake(0, 10)
    f1 = f.send(20, True, "PA", 500)
    f2 = f.send(21, True, "PA", 500, advance=False)  # lost: never captured
    f.frames.pop()
    f.seq[True] = f2 + 500
    f.send(22, True, "PA", 500)
    f.send(23, True, "PA", 500)
    f.send(24, True, "PA", 500)
    f.seq[True] = f2  # the server acks up to the hole, four times: three duplicates
    for t in (31, 32, 33, 34):
        f.send(t, False, "A")
    f.seq[True] = f2 + 2000
    f.send(35, True, "PA", 500, seq=f2)  # fast retransmission
    f.send(45, False, "A")  # everything acknowledged
    f.send(300, True, "PA", 500, seq=f1)  # spurious: acknowledged long ago
    # G: a keep-alive, then ACKs that tshark calls keep-alive ACKs (never duplicates) until the client
    # sends again, a window update among them.
    g = Session("10.9.0.7", 40007, "192.0.2.14", 443, 5000, 6000)
    g.handshake(0, 4)
    g.send(10, True, "PA", 50)
    g.send(12, False, "A")
    g.send(1000, True, "A", 0, seq=g.seq[True] - 1)  # keep-alive
    g.send(1001, False, "A")  # keep-alive ACK
    g.send(1002, False, "A")  # a second one: still a keep-alive ACK to tshark
    g.send(1003, False, "A", window=30000)  # window update
    g.send(1004, False, "A", window=30000)  # same ack, same window: still a keep-alive ACK
    return [a, b, c, e, r, f, g]


EXPECTED: dict[Tuple5, Health] = {
    ("10.9.0.1", 40001, "192.0.2.10", 80): (2, 0, 0, 2, 1, 50.0),
    ("2001:db8:9::1", 40002, "2001:db8:9::2", 443): (2, 0, 0, 0, 1, 40.0),
    ("10.9.0.3", 40003, "192.0.2.10", 80): (1, 0, 0, 0, 0, 20.0),
    ("10.9.0.4", 40004, "192.0.2.11", 22): (1, 0, 1, 1, 0, None),  # the re-sent data was acked: spurious
    ("10.9.0.5", 40005, "192.0.2.12", 80): (1, 1, 0, 0, 0, None),
    ("10.9.0.6", 40006, "192.0.2.13", 80): (2, 0, 3, 0, 0, 10.0),
    ("10.9.0.7", 40007, "192.0.2.14", 443): (0, 0, 0, 0, 0, 4.0),
}


def all_frames() -> list[Frame]:
    return sorted((f for s in sessions() for f in s.frames), key=lambda f: f.ts_ns)


def probe_sessions() -> list[Frame]:
    """Zero-window probes (one byte at the highest seq while the peer's last window is 0), which tshark
    flags without moving its highest sequence, followed by re-sent and reordered segments. Flows 10 s apart."""
    # P1: no handshake (3 ms window). The server acks a1 with a zero window; the client probes (its
    # own window 0: not a zero window to tshark) and re-sends a2 1 ms after the probe but 200.9 ms
    # after its highest segment: a retransmission; probes again, re-sends a2 again, then sends on.
    p = Session("10.7.0.1", 41001, "192.0.2.20", 80, 1000, 5000)
    p.send(0, True, "PA", 100)
    a2 = p.send(0.1, True, "PA", 100)
    p.seq[True] = a2
    p.send(1, False, "A", window=0)
    p.seq[True] = a2 + 100
    p.send(200, True, "PA", 1, advance=False, window=0)
    p.send(201, True, "PA", 100, seq=a2)
    p.seq[True] = a2
    p.send(201.5, False, "A", window=0)
    p.seq[True] = a2 + 100
    p.send(400, True, "PA", 1, advance=False)
    p.send(400.5, True, "PA", 100, seq=a2)
    p.send(600, False, "A")
    p.send(601, True, "PA", 500)
    # P2: a probe right after the data. b2 again 0.5 ms after the probe ends at tshark's highest seq
    # (the probe's byte does not count): a retransmission; again 3.1 ms after the highest: one too.
    q = Session("10.7.0.2", 41002, "192.0.2.20", 80, 2**32 - 150, 5000)
    q.send(10_000, True, "PA", 100)
    b2 = q.send(10_000.1, True, "PA", 100)
    q.seq[True] = b2
    q.send(10_000.5, False, "A", window=0)
    q.seq[True] = (b2 + 100) & 0xFFFFFFFF
    q.send(10_001, True, "PA", 1, advance=False)
    q.send(10_001.5, True, "PA", 100, seq=b2)
    q.send(10_003.2, True, "PA", 100, seq=b2)
    # P3: one direction only (the peer's window unknown: one-byte segments are no probes); the first
    # again 0.1 ms after the highest: out-of-order.
    r = Session("10.7.0.3", 41003, "192.0.2.20", 80, 77, 5000)
    e1 = r.send(20_000, True, "PA", 1)
    r.send(20_000.1, True, "PA", 1)
    r.send(20_000.2, True, "PA", 1, seq=e1)
    # P4: handshake (10 ms window). A probe, d3 again (ends at the highest: a retransmission), d2 again
    # (out-of-order); the window opens, the probe's byte is sent as data (no probe: the window is
    # open) and the server's next ACK repeats its last: a duplicate ACK (no keep-alive ACK).
    s = Session("10.7.0.4", 41004, "192.0.2.20", 80, 9000, 5000)
    s.handshake(30_000, 10)
    s.send(30_020, True, "PA", 100)
    d2 = s.send(30_020.1, True, "PA", 100)
    d3 = s.send(30_020.2, True, "PA", 100)
    s.seq[True] = d2
    s.send(30_021, False, "A", window=0)
    s.seq[True] = d3 + 100
    s.send(30_022, True, "PA", 1, advance=False)
    s.send(30_023, True, "PA", 100, seq=d3)
    s.send(30_024, True, "PA", 100, seq=d2)
    s.send(30_030, False, "A")
    s.send(30_031, True, "PA", 1)
    s.seq[True] = d3 + 100
    s.send(30_031.05, False, "A")
    s.seq[True] = d3 + 101
    s.send(30_031.1, True, "PA", 100)
    return [*p.frames, *q.frames, *r.frames, *s.frames]


EXPECTED_PROBES: dict[Tuple5, Health] = {
    ("10.7.0.1", 41001, "192.0.2.20", 80): (2, 0, 0, 2, 0, None),
    ("10.7.0.2", 41002, "192.0.2.20", 80): (2, 0, 0, 1, 0, None),
    ("10.7.0.3", 41003, "192.0.2.20", 80): (0, 1, 0, 0, 0, None),
    ("10.7.0.4", 41004, "192.0.2.20", 80): (1, 1, 1, 1, 0, 10.0),
}


def stepped_sessions() -> list[Frame]:
    """Frames in capture order whose times step back by a few µs within a direction (GRO frames stamped
    on two CPUs), or behind the other direction's last frame. tshark's time gaps are unsigned: a
    frame stamped before the reference is never within the out-of-order or fast-retransmission window."""
    # T1: no handshake (3 ms window). x2 (the hole) stamped 5 µs before x3: a retransmission; x5 stamped
    # 3 µs before x4 (new data), x4 again 2 µs after x5's stamp: out-of-order; x2 again after 3.98 ms:
    # a retransmission; x5 again stamped 3.5 ms before the highest (x6): a retransmission.
    a = Session("10.7.1.1", 41101, "192.0.2.21", 80, 4000, 6000)
    a.send(10, True, "PA", 100)
    x2 = a.seq[True]
    a.seq[True] = x2 + 100
    a.send(10.010, True, "PA", 100)
    a.send(10.005, True, "PA", 100, seq=x2)
    x4 = a.send(10.020, True, "PA", 100)
    x5 = a.send(10.017, True, "PA", 100)
    a.send(10.019, True, "PA", 100, seq=x4)
    a.send(14.0, True, "PA", 100, seq=x2)
    a.send(20, True, "PA", 100)
    a.send(16.5, True, "PA", 100, seq=x5)
    # T2: a 20 µs handshake RTT (a veth). y2 stamped 1 µs before y3: a retransmission; y2 again 15 µs
    # after y3: out-of-order; y5 stamped 5 µs before y4, y4 again 15 µs after y5's stamp: out-of-order,
    # 25 µs after: a retransmission, and stamped 50 µs before the highest: a retransmission.
    b = Session("10.7.1.2", 41102, "192.0.2.21", 80, 2**32 - 250, 6000)
    b.handshake(10_000, 0.02)
    b.send(10_001, True, "PA", 100)
    y2 = b.seq[True]
    b.seq[True] = (y2 + 100) & 0xFFFFFFFF
    b.send(10_001.010, True, "PA", 100)
    b.send(10_001.009, True, "PA", 100, seq=y2)
    b.send(10_001.025, True, "PA", 100, seq=y2)
    y4 = b.send(10_001.040, True, "PA", 100)
    b.send(10_001.035, True, "PA", 100)
    b.send(10_001.050, True, "PA", 100, seq=y4)
    b.send(10_001.060, True, "PA", 100, seq=y4)
    b.send(10_001.010, True, "PA", 100, seq=y4)
    # T3: a 10 ms handshake RTT. z1 lost, three duplicate ACKs, z1 again stamped 50 µs before the last
    # of them: no fast retransmission (negative gap) but 0.35 ms after the highest: out-of-order.
    c = Session("10.7.1.3", 41103, "192.0.2.21", 80, 123, 6000)
    c.handshake(20_000, 10)
    c.send(20_020, True, "PA", 500)
    z1 = c.seq[True]
    c.seq[True] = z1 + 500
    c.send(20_020.1, True, "PA", 500)
    c.send(20_020.2, True, "PA", 500)
    c.send(20_020.3, True, "PA", 500)
    c.seq[True] = z1
    for t in (20_020.4, 20_020.5, 20_020.6, 20_020.7):
        c.send(t, False, "A")
    c.seq[True] = z1 + 2000
    c.send(20_020.65, True, "PA", 500, seq=z1)
    # T4: segments before the handshake RTT is known (3 ms window until the first ACK without SYN):
    # w1 again 1 ms after the highest: out-of-order; w3 stamped 10 µs back (new data), w2 again stamped
    # 10 µs before w3: a retransmission; the SYN again: out-of-order; then the RTT is 50 µs and w1 again
    # is a retransmission.
    d = Session("10.7.1.4", 41104, "192.0.2.21", 80, 777, 6000)
    isn = d.send(30_000, True, "S")
    w1 = d.send(30_000.1, True, "P", 100)
    w2 = d.send(30_000.2, True, "P", 100)
    d.send(30_001.2, True, "P", 100, seq=w1)
    d.send(30_001.19, True, "P", 100)
    d.send(30_001.18, True, "P", 100, seq=w2)
    d.send(30_001.25, True, "S", seq=isn)
    client_next = d.seq[True]
    d.seq[True] = isn + 1
    d.send(30_001.27, False, "SA")
    d.seq[True] = client_next
    d.send(30_001.3, True, "A")
    d.send(30_001.4, True, "PA", 100, seq=w1)
    return [*a.frames, *b.frames, *c.frames, *d.frames]


EXPECTED_STEPPED: dict[Tuple5, Health] = {
    ("10.7.1.1", 41101, "192.0.2.21", 80): (3, 1, 0, 0, 0, None),
    ("10.7.1.2", 41102, "192.0.2.21", 80): (3, 2, 0, 0, 0, 0.02),
    ("10.7.1.3", 41103, "192.0.2.21", 80): (0, 1, 3, 0, 0, 10.0),
    ("10.7.1.4", 41104, "192.0.2.21", 80): (2, 2, 0, 0, 0, 0.05),
}
