"""DNS, HTTP and MySQL exchanges with known latencies, and the nearest-rank percentile."""

from __future__ import annotations

import math
import struct

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from tests.helpers.tcp_health import MS, Session
from tests.pcapgen import T0_NS, Frame, ether


def dns_frame(t_ms: float, client: str, server: str, cport: int, qid: int, name: str, answer: bool) -> Frame:
    ipl = IPv6(src=client, dst=server) if ":" in client else IP(src=client, dst=server)
    if answer:
        ipl = IPv6(src=server, dst=client) if ":" in client else IP(src=server, dst=client)
        dns = DNS(id=qid, qr=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, rdata="192.0.2.99"))
        udp = UDP(sport=53, dport=cport)
    else:
        dns = DNS(id=qid, rd=1, qd=DNSQR(qname=name))
        udp = UDP(sport=cport, dport=53)
    src, dst = (server, client) if answer else (client, server)
    raw = bytes(ether(src, dst) / ipl / udp / dns)
    return Frame(raw, T0_NS + int(t_ms * MS), len(raw))


def mysql_packet(seq_id: int, body: bytes) -> bytes:
    return struct.pack("<I", len(body))[:3] + bytes([seq_id]) + body


def exchanges() -> list[Frame]:
    """DNS over IPv4 and IPv6 (a re-sent query, an unanswered one, an unsolicited answer), HTTP with
    keep-alive, pipelining and a response in two segments, MySQL queries after the server's greeting."""
    f: list[Frame] = []
    f.append(dns_frame(0, "10.7.0.1", "10.7.0.53", 33001, 0x1111, "example.com", False))
    f.append(dns_frame(12.5, "10.7.0.1", "10.7.0.53", 33001, 0x1111, "example.com", True))
    f.append(dns_frame(20, "10.7.0.1", "10.7.0.53", 33002, 0x2222, "slow.example", False))
    f.append(dns_frame(1020, "10.7.0.1", "10.7.0.53", 33002, 0x2222, "slow.example", False))  # re-sent
    f.append(dns_frame(1250, "10.7.0.1", "10.7.0.53", 33002, 0x2222, "slow.example", True))
    f.append(dns_frame(2000, "10.7.0.1", "10.7.0.53", 33007, 0x7777, "again.example", False))
    f.append(dns_frame(8000, "10.7.0.1", "10.7.0.53", 33007, 0x7777, "again.example", False))  # > 5 s: anew
    f.append(dns_frame(8200, "10.7.0.1", "10.7.0.53", 33007, 0x7777, "again.example", True))
    f.append(dns_frame(30, "10.7.0.1", "10.7.0.53", 33003, 0x3333, "lost.example", False))  # no answer
    f.append(dns_frame(40, "10.7.0.2", "10.7.0.53", 33004, 0x4444, "late.example", True))  # unsolicited
    f.append(dns_frame(50, "2001:db8:7::1", "2001:db8:7::53", 33005, 0x5555, "six.example", False))
    f.append(dns_frame(53, "2001:db8:7::1", "2001:db8:7::53", 33005, 0x5555, "six.example", True))
    for i in range(5):  # same port, new ids: five exchanges of 2, 4, 6, 8, 10 ms
        f.append(dns_frame(100 + 20 * i, "10.7.0.3", "10.7.0.53", 33006, 0x100 + i, f"n{i}.example", False))
        f.append(dns_frame(102 + 22 * i, "10.7.0.3", "10.7.0.53", 33006, 0x100 + i, f"n{i}.example", True))

    h = Session("10.7.0.1", 41000, "10.7.0.80", 80, 1000, 9000)
    h.handshake(0, 2)
    h.send(5, True, "PA", data=b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n")
    h.send(6, False, "A")
    h.send(35, False, "PA", data=b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + bytes(1000))
    h.send(36, False, "PA", data=bytes(1000))  # the rest of the body: no second response
    h.send(40, True, "PA", data=b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    h.send(41, True, "PA", data=b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")  # pipelined
    h.send(140, False, "PA", data=b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    h.send(145, False, "PA", data=b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    h.send(150, True, "A")
    h6 = Session("2001:db8:7::1", 41001, "2001:db8:7::80", 8080, 5, 7)
    h6.handshake(10, 1)
    h6.send(12, True, "PA", data=b"GET /v6 HTTP/1.1\r\nHost: b\r\n\r\n")
    h6.send(19, False, "PA", data=b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    h6.send(20, True, "A")

    m = Session("10.7.0.1", 42000, "10.7.0.33", 3306, 50, 60)
    m.handshake(0, 1)
    m.send(2, False, "PA", data=mysql_packet(0, b"\x0a8.0.36\x00" + bytes(40)))  # greeting: no exchange
    m.send(3, True, "PA", data=mysql_packet(1, bytes(32) + b"app\x00"))
    m.send(4, False, "PA", data=mysql_packet(2, b"\x00\x00\x00\x02\x00\x00\x00"))  # OK
    m.send(10, True, "PA", data=mysql_packet(0, b"\x03SELECT * FROM orders WHERE total > 100"))
    m.send(310, False, "PA", data=mysql_packet(1, b"\x01") + mysql_packet(2, bytes(20)))
    m.send(311, False, "PA", data=mysql_packet(3, bytes(30)))  # more of the result set
    m.send(320, True, "PA", data=mysql_packet(0, b"\x03SELECT 1"))
    m.send(321.5, False, "PA", data=mysql_packet(1, b"\x01") + mysql_packet(2, bytes(8)))
    m.send(330, True, "PA", data=mysql_packet(0, b"\x0e"))  # COM_PING: not a query
    m.send(331, False, "PA", data=mysql_packet(1, b"\x00\x00\x00\x02\x00\x00\x00"))
    frames = f + h.frames + h6.frames + m.frames
    return sorted(frames, key=lambda x: x.ts_ns)


def nearest_rank(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[math.ceil(p * len(ordered)) - 1]
