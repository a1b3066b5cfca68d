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
