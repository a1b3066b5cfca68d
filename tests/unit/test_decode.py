"""decode() on hand-built frames, field by field, and Counters on known frames, value by value."""

from __future__ import annotations

import socket
import struct
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert, IPOption_RR, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit
from scapy.packet import Packet, Raw

import capture_backend.analysis.tables as counters_mod
from capture_backend.analysis.decode import Decoded, decode
from capture_backend.analysis.tables import FLOW_STATE, NS, CounterLimits, Counters, KeyTable
from capture_backend.capture.block import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    Block,
)
from tests.pcapgen import block_of

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
V4_A, V4_B = "10.0.0.1", "10.0.0.2"
V6_A, V6_B = "2001:db8::a", "2001:db8::b"
PAYLOAD = Raw(bytes(range(32)))


def eth(pkt: Packet) -> bytes:
    """An Ethernet frame around an L3 packet."""
    return bytes(Ether(src=MAC_A, dst=MAC_B) / pkt)


def key(addr: str) -> bytes:
    """The 16-byte address key decode() produces: IPv6, or IPv4-mapped ::ffff:a.b.c.d."""
    if ":" in addr:
        return socket.inet_pton(socket.AF_INET6, addr)
    return bytes(10) + b"\xff\xff" + socket.inet_aton(addr)


def rows(d: Decoded) -> list[dict[str, Any]]:
    """Every decoded packet as a dict of plain Python values."""
    return [
        {
            "ethertype": int(d.ethertype[i]),
            "vlan": int(d.vlan[i]),
            "ip": bool(d.ip[i]),
            "src": d.src[i].tobytes(),
            "dst": d.dst[i].tobytes(),
            "proto": int(d.proto[i]),
            "sport": int(d.sport[i]),
            "dport": int(d.dport[i]),
            "flags": int(d.tcp_flags[i]),
            "malformed": bool(d.malformed[i]),
            "wirelen": int(d.wirelen[i]),
        }
        for i in range(len(d))
    ]


def one(frame: bytes, linktype: int = LINKTYPE_ETHERNET, **kw: Any) -> dict[str, Any]:
    """decode() a one-frame block; returns its only row."""
    d = decode(block_of([frame], linktype, **kw))
    assert len(d) == 1
    return rows(d)[0]


def expect(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0, flags: int = 0, **kw: Any) -> dict[str, Any]:
    """The fields of a well-formed IP packet (ethertype from the address family unless given)."""
    return {
        "ethertype": kw.get("ethertype", 0x86DD if ":" in src else 0x0800),
        "vlan": kw.get("vlan", -1),
        "ip": True,
        "src": key(src),
        "dst": key(dst),
        "proto": proto,
        "sport": sport,
        "dport": dport,
        "flags": flags,
        "malformed": False,
        "wirelen": kw["wirelen"],
    }


# -- Ethernet, IPv4 / IPv6, transports -----------------------------------------------------------


def test_ipv4_tcp_every_field() -> None:
    frame = eth(IP(src=V4_A, dst=V4_B) / TCP(sport=40000, dport=443, flags="SA") / PAYLOAD)
    assert one(frame) == expect(V4_A, V4_B, 6, 40000, 443, 0x12, wirelen=len(frame))


def test_ipv4_addresses_are_ipv4_mapped() -> None:
    r = one(eth(IP(src="192.0.2.200", dst="255.255.255.255") / UDP(sport=68, dport=67)))
    assert r["src"] == bytes.fromhex("00000000000000000000ffffc00002c8")
    assert r["dst"] == bytes.fromhex("00000000000000000000ffffffffffff")


def test_ipv6_udp_every_field() -> None:
    frame = eth(IPv6(src=V6_A, dst=V6_B) / UDP(sport=5353, dport=53) / PAYLOAD)
    assert one(frame) == expect(V6_A, V6_B, 17, 5353, 53, wirelen=len(frame))


@pytest.mark.parametrize("flags", ["S", "SA", "A", "PA", "FA", "R", "RA", "FSRPAUEC"])
def test_tcp_flags_byte(flags: str) -> None:
    tcp = TCP(sport=1, dport=2, flags=flags)
    assert one(eth(IP(src=V4_A, dst=V4_B) / tcp))["flags"] == int(tcp.flags)


def test_icmp_and_icmpv6_have_no_ports() -> None:
    f4 = eth(IP(src=V4_A, dst=V4_B) / ICMP(type=8, id=0x1234, seq=7) / PAYLOAD)
    f6 = eth(IPv6(src=V6_A, dst=V6_B) / ICMPv6EchoRequest(id=0x1234, seq=7))
    assert one(f4) == expect(V4_A, V4_B, 1, wirelen=len(f4))
    assert one(f6) == expect(V6_A, V6_B, 58, wirelen=len(f6))


def test_sctp_ports() -> None:
    frame = eth(IP(src=V4_A, dst=V4_B) / SCTP(sport=3868, dport=50000, tag=9) / SCTPChunkInit())
    assert one(frame) == expect(V4_A, V4_B, 132, 3868, 50000, wirelen=len(frame))


def test_other_ip_protocol_has_no_ports_and_is_not_malformed() -> None:
    frame = eth(IP(src=V4_A, dst=V4_B, proto=47) / Raw(b"\x00\x00\x08\x00" + bytes(20)))  # GRE
    assert one(frame) == expect(V4_A, V4_B, 47, wirelen=len(frame))


def test_non_ip_ethertypes() -> None:
    arp = bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=V4_A, pdst=V4_B, hwsrc=MAC_A))
    other = bytes(Ether(src=MAC_A, dst=MAC_B, type=0x88B5) / Raw(b"x" * 46))
    d = rows(decode(block_of([arp, other])))
    for r, et, n in zip(d, (0x0806, 0x88B5), (len(arp), len(other)), strict=True):
        del r["src"], r["dst"]  # meaningless when ip is false
        assert r == {
            "ethertype": et,
            "vlan": -1,
            "ip": False,
            "proto": -1,
            "sport": 0,
            "dport": 0,
            "flags": 0,
            "malformed": False,
            "wirelen": n,
        }


# -- VLAN tags -----------------------------------------------------------------------------------


def test_dot1q_vlan_id_ignores_priority_and_dei_bits() -> None:
    frame = bytes(
        Ether(src=MAC_A, dst=MAC_B) / Dot1Q(prio=5, dei=1, vlan=100) / IP(src=V4_A, dst=V4_B) / UDP(sport=9, dport=53)
    )
    assert one(frame) == expect(V4_A, V4_B, 17, 9, 53, vlan=100, wirelen=len(frame))


@pytest.mark.parametrize("outer_tpid", [0x88A8, 0x9100, 0x8100])
def test_qinq_reports_the_outer_tag(outer_tpid: int) -> None:
    inner = Dot1Q(vlan=300) / IPv6(src=V6_A, dst=V6_B) / TCP(sport=5, dport=6, flags="A")
    outer = Dot1AD(vlan=200) if outer_tpid == 0x88A8 else Dot1Q(vlan=200)
    frame = bytes(Ether(src=MAC_A, dst=MAC_B, type=outer_tpid) / outer / inner)
    assert frame[12:14] == outer_tpid.to_bytes(2, "big")
    assert one(frame) == expect(V6_A, V6_B, 6, 5, 6, 0x10, vlan=200, wirelen=len(frame))


def test_stripped_kernel_tag_counts_as_that_vlan_with_its_four_bytes() -> None:
    plain = eth(IP(src=V4_A, dst=V4_B) / UDP(sport=1000, dport=2000))
    tagged_inside = bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=7) / IP(src=V4_A, dst=V4_B) / UDP(sport=1, dport=2))
    d = rows(
        decode(
            block_of(
                [plain, plain, plain, plain, tagged_inside],
                vlan_tci=[0x2000 | 42, 0, 0, 0x0000, 0x0000 | 300],
                vlan_valid=[True, False, True, False, True],
            )
        )
    )
    assert [r["vlan"] for r in d] == [42, -1, 0, -1, 300]  # stripped tag (outermost) wins over an inner one
    assert [r["wirelen"] for r in d] == [len(plain) + 4, len(plain), len(plain) + 4, len(plain), len(tagged_inside) + 4]
    assert [(r["sport"], r["dport"]) for r in d] == [(1000, 2000)] * 4 + [(1, 2)]


def test_stripped_tag_on_cooked_capture_adds_no_bytes() -> None:
    frame = bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=b"\x02" * 8, proto=0x0800))
    frame += bytes(IP(src=V4_A, dst=V4_B) / UDP(sport=3, dport=4))
    r = one(frame, LINKTYPE_LINUX_SLL, vlan_tci=[5], vlan_valid=[True])
    assert (r["vlan"], r["wirelen"], r["sport"]) == (5, len(frame), 3)


# -- IPv4 options and fragments ------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        [IPOption_Router_Alert()],
        [IPOption_NOP(), IPOption_RR(routers=["192.0.2.254", "192.0.2.253", "0.0.0.0"])],
        [IPOption_RR(routers=["198.51.100.1"] * 9)],  # 39 bytes + padding: IHL 15, the maximum
    ],
)
def test_ipv4_options_shift_the_transport_header(options: list[Packet]) -> None:
    pkt = IP(src=V4_A, dst=V4_B, options=options) / UDP(sport=1111, dport=2222) / PAYLOAD
    frame = eth(pkt)
    ihl = frame[14] & 0xF
    assert ihl > 5
    r = one(frame)
    assert r == expect(V4_A, V4_B, 17, 1111, 2222, wirelen=len(frame))
    # Without the options the ports would have been read from the option bytes.
    assert struct.unpack_from(">HH", frame, 14 + 20) != (1111, 2222)


def test_ipv4_first_fragment_has_ports_later_fragments_do_not() -> None:
    big = IP(src=V4_A, dst=V4_B, id=77) / UDP(sport=5000, dport=6000) / Raw(bytes(2500))
    frags = [eth(f) for f in fragment(big, fragsize=1000)]
    assert len(frags) == 3
    d = rows(decode(block_of(frags)))
    assert [(r["proto"], r["sport"], r["dport"], r["ip"], r["malformed"]) for r in d] == [
        (17, 5000, 6000, True, False),
        (17, 0, 0, True, False),
        (17, 0, 0, True, False),
    ]
    tcp_later = eth(IP(src=V4_A, dst=V4_B, frag=100, flags="MF") / TCP(sport=1, dport=2, flags="S"))
    assert one(tcp_later) == expect(V4_A, V4_B, 6, wirelen=len(tcp_later))


def test_ipv4_tiny_first_fragment_is_malformed() -> None:
    frame = eth(IP(src=V4_A, dst=V4_B, flags="MF", proto=6) / Raw(bytes(8)))  # only 8 bytes of TCP
    r = one(frame)
    assert (r["ip"], r["proto"], r["sport"], r["malformed"]) == (True, 6, 0, True)


# -- IPv6 extension headers and fragments --------------------------------------------------------


def ah_header(next_header: int) -> bytes:
    """An IPsec AH header (length in 4-byte units minus 2): 12 fixed bytes + 12 bytes of ICV."""
    return struct.pack(">BBHII", next_header, 24 // 4 - 2, 0, 0x1234, 1) + bytes(12)


@pytest.mark.parametrize(
    "chain",
    [
        lambda: IPv6ExtHdrHopByHop(),
        lambda: IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt(),
        lambda: IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=["2001:db8:ff::1", "2001:db8:ff::2"], segleft=0),
        lambda: IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(addresses=["2001:db8:ff::1"]) / IPv6ExtHdrDestOpt(),
        lambda: IPv6ExtHdrFragment(offset=0, m=0, id=5),  # atomic fragment: ports present
    ],
)
def test_ipv6_extension_headers_are_walked(chain: Any) -> None:
    frame = eth(IPv6(src=V6_A, dst=V6_B) / chain() / TCP(sport=7000, dport=22, flags="PA") / PAYLOAD)
    assert one(frame) == expect(V6_A, V6_B, 6, 7000, 22, 0x18, wirelen=len(frame))


def test_ipv6_ah_header_length_is_in_four_byte_units() -> None:
    l4 = bytes(UDP(sport=4500, dport=4501, len=8, chksum=0))
    frame = eth(IPv6(src=V6_A, dst=V6_B, nh=51) / Raw(ah_header(17) + l4))
    assert one(frame) == expect(V6_A, V6_B, 17, 4500, 4501, wirelen=len(frame))


def test_ipv6_fragments_only_the_first_has_ports() -> None:
    big = IPv6(src=V6_A, dst=V6_B) / IPv6ExtHdrFragment(id=99) / UDP(sport=8000, dport=9000) / Raw(bytes(3000))
    frags = [eth(f) for f in fragment6(big, 1280)]
    assert len(frags) == 3
    d = rows(decode(block_of(frags)))
    assert [(r["proto"], r["sport"], r["dport"], r["ip"], r["malformed"]) for r in d] == [
        (17, 8000, 9000, True, False),
        (17, 0, 0, True, False),
        (17, 0, 0, True, False),
    ]
    assert all(r["src"] == key(V6_A) and r["dst"] == key(V6_B) for r in d)


# -- malformed and truncated ---------------------------------------------------------------------


def test_bad_ip_versions_and_header_lengths_are_malformed() -> None:
    good4 = bytearray(eth(IP(src=V4_A, dst=V4_B) / UDP(sport=1, dport=2)))
    bad_version = bytearray(good4)
    bad_version[14] = 0x55  # version 5 in an IPv4 ethertype
    bad_ihl = bytearray(good4)
    bad_ihl[14] = 0x44  # IHL 4 words < 20 bytes
    bad6 = bytearray(eth(IPv6(src=V6_A, dst=V6_B) / UDP(sport=1, dport=2)))
    bad6[14] = 0x45  # an IPv4 header under the IPv6 ethertype
    d = rows(decode(block_of([bytes(good4), bytes(bad_version), bytes(bad_ihl), bytes(bad6)])))
    assert [(r["ip"], r["malformed"], r["proto"], r["sport"]) for r in d] == [
        (True, False, 17, 1),
        (False, True, -1, 0),
        (False, True, -1, 0),
        (False, True, -1, 0),
    ]


def truncation_cases() -> list[tuple[str, bytes, int, int]]:
    """(name, frame, cut from which addresses are valid, cut from which the ports are there)."""
    v4 = eth(IP(src=V4_A, dst=V4_B, options=[IPOption_Router_Alert()]) / TCP(sport=1, dport=2, flags="S") / PAYLOAD)
    v6 = bytes(
        Ether(src=MAC_A, dst=MAC_B)
        / Dot1Q(vlan=3)
        / IPv6(src=V6_A, dst=V6_B)
        / IPv6ExtHdrHopByHop()
        / UDP(sport=3, dport=4)
        / PAYLOAD
    )
    sctp = eth(IP(src=V4_A, dst=V4_B) / SCTP(sport=5, dport=6) / SCTPChunkInit())
    return [
        # IPv4: a header cut inside its options is void, like a cut IPv6 extension header chain.
        ("v4-options-tcp", v4, 14 + 24, 14 + 24 + 20),
        # IPv6 behind a VLAN tag: a cut extension header chain voids the whole IPv6 header.
        ("vlan-v6-hbh-udp", v6, 18 + 40 + 8, 18 + 40 + 8 + 8),
        ("v4-sctp", sctp, 14 + 20, 14 + 20 + 12),
    ]


@pytest.mark.parametrize("name,frame,addr_end,ports_end", truncation_cases())
def test_truncated_at_every_length_is_flagged_never_raises(
    name: str, frame: bytes, addr_end: int, ports_end: int
) -> None:
    n = len(frame)
    full = one(frame)
    assert not full["malformed"] and full["sport"] != 0
    # One block holding every cut at once (caplen < wirelen), decoded in one vectorised pass.
    d = rows(decode(block_of([frame] * n, caplen=list(range(n)), wirelen=[n] * n)))
    # Addresses are only meaningful where ip is true.
    got = [(r["malformed"], r["ip"], r["ip"] and (r["src"], r["dst"]), r["sport"], r["dport"], r["wirelen"]) for r in d]
    want = [
        (
            cut < ports_end,
            cut >= addr_end,
            cut >= addr_end and (full["src"], full["dst"]),
            full["sport"] if cut >= ports_end else 0,
            full["dport"] if cut >= ports_end else 0,
            n,
        )
        for cut in range(n)
    ]
    assert got == want


def test_ipv4_header_cut_inside_its_options_is_malformed() -> None:
    """Even for a protocol whose header decode() does not read (GRE), a cut IPv4 header is flagged."""
    frame = eth(IP(src=V4_A, dst=V4_B, proto=47, options=[IPOption_Router_Alert()]) / Raw(bytes(20)))
    r = one(frame, caplen=[14 + 22], wirelen=[len(frame)])  # 22 of the 24 header bytes
    assert (r["ip"], r["malformed"], r["proto"]) == (False, True, -1)
    whole = one(frame, caplen=[14 + 24], wirelen=[len(frame)])
    assert (whole["ip"], whole["malformed"], whole["proto"]) == (True, False, 47)


# -- link types ----------------------------------------------------------------------------------

V4_PKT = bytes(IP(src=V4_A, dst=V4_B) / TCP(sport=1234, dport=80, flags="S"))
V6_PKT = bytes(IPv6(src=V6_A, dst=V6_B) / UDP(sport=4321, dport=53))
V4_ROW = expect(V4_A, V4_B, 6, 1234, 80, 0x02, wirelen=0)
V6_ROW = expect(V6_A, V6_B, 17, 4321, 53, wirelen=0)


def decoded_as(frames: list[bytes], linktype: int) -> list[dict[str, Any]]:
    """Rows of a block with wirelen left out (each case checks it separately)."""
    out = []
    for r, f in zip(rows(decode(block_of(frames, linktype))), frames, strict=True):
        assert r.pop("wirelen") == len(f)
        out.append(r)
    return out


def without_wirelen(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "wirelen"}


@pytest.mark.parametrize("linktype", [LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6])
def test_raw_ip_link_types(linktype: int) -> None:
    assert decoded_as([V4_PKT, V6_PKT], linktype) == [without_wirelen(V4_ROW), without_wirelen(V6_ROW)]


def test_linux_sll() -> None:
    hdr4 = bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=b"\x02" * 8, proto=0x0800))
    hdr6 = bytes(CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6, src=b"\x02" * 8, proto=0x86DD))
    assert len(hdr4) == 16
    got = decoded_as([hdr4 + V4_PKT, hdr6 + V6_PKT], LINKTYPE_LINUX_SLL)
    assert got == [without_wirelen(V4_ROW), without_wirelen(V6_ROW)]


def test_linux_sll2() -> None:
    hdr4 = bytes(CookedLinuxV2(proto=0x0800, ifindex=3, lladdrtype=1, pkttype=0, lladdrlen=6, src=b"\x02" * 8))
    hdr6 = bytes(CookedLinuxV2(proto=0x86DD, ifindex=3, lladdrtype=1, pkttype=4, lladdrlen=6, src=b"\x02" * 8))
    assert len(hdr4) == 20
    got = decoded_as([hdr4 + V4_PKT, hdr6 + V6_PKT], LINKTYPE_LINUX_SLL2)
    assert got == [without_wirelen(V4_ROW), without_wirelen(V6_ROW)]


@pytest.mark.parametrize(
    "linktype,fmt",
    # NULL: the writer's byte order (either, as Wireshark reads it); LOOP: network order.
    [(LINKTYPE_NULL, "<I"), (LINKTYPE_NULL, ">I"), (LINKTYPE_LOOP, ">I")],
)
def test_bsd_loopback_families(linktype: int, fmt: str) -> None:
    frames = [struct.pack(fmt, 2) + V4_PKT] + [struct.pack(fmt, fam) + V6_PKT for fam in (24, 28, 30)]
    frames.append(struct.pack(fmt, 7) + V4_PKT)  # an unknown family: readable, just not IP
    got = decoded_as(frames, linktype)
    assert got[:4] == [without_wirelen(V4_ROW)] + [without_wirelen(V6_ROW)] * 3
    assert (got[4]["ethertype"], got[4]["ip"], got[4]["malformed"]) == (0, False, False)


@pytest.mark.parametrize(
    "linktype,header",
    [
        (LINKTYPE_ETHERNET, 14),
        (LINKTYPE_LINUX_SLL, 16),
        (LINKTYPE_LINUX_SLL2, 20),
        (LINKTYPE_NULL, 4),
        (LINKTYPE_RAW, 1),
    ],
)
def test_short_link_header_is_malformed(linktype: int, header: int) -> None:
    r = one(bytes(header - 1), linktype)
    assert (r["ethertype"], r["ip"], r["malformed"], r["proto"]) == (0, False, True, -1)


def test_unknown_link_type_is_malformed_not_an_error() -> None:
    r = one(eth(IP(src=V4_A, dst=V4_B)), 147)
    assert (r["ip"], r["malformed"]) == (False, True)


def test_empty_block_and_empty_buffer() -> None:
    assert len(decode(block_of([]))) == 0
    d = rows(decode(block_of([b"", b""])))  # frames with no captured bytes at all
    assert [(r["malformed"], r["ip"]) for r in d] == [(True, False)] * 2


# -- Counters ------------------------------------------------------------------------------------


def table_row(table: KeyTable, k: bytes) -> dict[str, Any]:
    """One row of a KeyTable by key, as plain values (a column not written yet: the one value it holds)."""
    i = table.index[k]
    return {
        name: table.constant[name] if name in table.constant else table.cols[name][i].tolist()
        for name in table.cols
        if name not in ("hist", "peak")
    }


def flow_key(a: str, b: str, aport: int, bport: int, proto: int) -> bytes:
    return key(a) + key(b) + aport.to_bytes(2, "big") + bport.to_bytes(2, "big") + bytes([proto]) + bytes(3)


def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: str) -> bytes:
    return eth(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))


def test_counters_per_flow_pair_and_host_both_directions() -> None:
    t0 = 1_000 * NS
    # B (the larger address) opens the flow, so origin is direction 1 (b → a).
    frames = [
        tcp_frame(V4_B, V4_A, 50000, 80, "S"),
        tcp_frame(V4_A, V4_B, 80, 50000, "SA"),
        tcp_frame(V4_B, V4_A, 50000, 80, "A"),
        tcp_frame(V4_B, V4_A, 50000, 80, "PA"),
        tcp_frame(V4_A, V4_B, 80, 50000, "PA"),
    ]
    wire = [100, 200, 300, 400, 1500]
    c = Counters()
    # Two blocks: counts accumulate; the second block's packets are in a later second.
    c.add(decode(block_of(frames[:3], wirelen=wire[:3], ts_ns=[t0, t0 + 1, t0 + 2])))
    c.add(decode(block_of(frames[3:], wirelen=wire[3:], ts_ns=[t0 + 2 * NS, t0 + 3 * NS])))
    assert (c.packets, c.bytes, c.malformed, c.first_ns, c.last_ns) == (5, 2500, 0, t0, t0 + 3 * NS)
    # a = 10.0.0.1 (port 80), b = 10.0.0.2 (port 50000); direction 0 is a → b.
    assert table_row(c.flows, flow_key(V4_A, V4_B, 80, 50000, 6)) == {
        "packets": [2, 3],
        "bytes": [1700, 800],
        "first": t0,
        "last": t0 + 3 * NS,
        "tcp_flags": 0x02 | 0x12 | 0x10 | 0x18,
        "origin": 1,
        # scapy's seq 0: each SYN takes one sequence number; the handshake's ACK came 2 ns after the SYN.
        "tcp_retrans": 0,
        "tcp_ooo": 0,
        "tcp_dupack": 0,
        "tcp_zero_win": 0,
        "tcp_resets": 0,
        "tcp_next": [1, 1],
        "tcp_next_t": [t0 + 1, t0],
        # Per direction: the last segment's raw ack, time and window; scapy's seq-0 ACKs sit one
        # below the next sequence with no payload, which tshark calls keep-alives.
        "tcp_lastack": [0, 0],
        "tcp_last_t": [t0 + 3 * NS, t0 + 2 * NS],
        "tcp_window": [8192, 8192],
        "tcp_dupacks": [0, 0],
        "tcp_ka": [1, 1],
        "tcp_syn": t0,
        "tcp_irtt": 2,
        "app_count": 0,
        "app_sum": 0,
        "app_max": 0,
        "ifaces": 1,  # seen on the one interface counted (bit 0)
        "vlan": 0,  # untagged
    }
    # Snapshots carry what readers show, not the sequence analysis state.
    snap_cols = set(c.flows.freeze(0).cols)
    assert snap_cols == set(c.flows.cols) - FLOW_STATE and "tcp_retrans" in snap_cols and "tcp_next" not in snap_cols
    assert table_row(c.pairs, key(V4_A) + key(V4_B)) == {
        "packets": [2, 3],
        "bytes": [1700, 800],
        "first": t0,
        "last": t0 + 3 * NS,
    }
    host_a, host_b = table_row(c.hosts, key(V4_A)), table_row(c.hosts, key(V4_B))
    assert (host_a["packets"], host_a["bytes"]) == ([2, 3], [1700, 800])  # [tx, rx]
    assert (host_b["packets"], host_b["bytes"]) == ([3, 2], [800, 1700])
    assert {k: (t.packets, t.bytes) for k, t in c.protocols.items()} == {6: (5, 2500)}
    assert {k: (t.packets, t.bytes) for k, t in c.ethertypes.items()} == {0x0800: (5, 2500)}
    assert (len(c.flows), len(c.pairs), len(c.hosts)) == (1, 1, 2)


def test_counters_origin_is_the_earliest_packet_even_across_blocks() -> None:
    c = Counters()
    late = tcp_frame(V4_A, V4_B, 80, 50000, "SA")
    early = tcp_frame(V4_B, V4_A, 50000, 80, "S")
    c.add(decode(block_of([late], ts_ns=[5 * NS])))
    assert table_row(c.flows, flow_key(V4_A, V4_B, 80, 50000, 6))["origin"] == 0
    c.add(decode(block_of([early], ts_ns=[4 * NS])))  # an earlier packet from b arrives later
    assert table_row(c.flows, flow_key(V4_A, V4_B, 80, 50000, 6))["origin"] == 1


def test_counters_vlans_non_ip_and_malformed() -> None:
    tagged = bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=12) / IP(src=V4_A, dst=V4_B) / UDP(sport=1, dport=2))
    arp = bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=V4_A, pdst=V4_B))
    c = Counters()
    c.add(decode(block_of([tagged, arp, b"\x00" * 10], wirelen=[100, 60, 64])))
    assert (c.packets, c.bytes, c.malformed) == (3, 224, 1)
    assert {k: (t.packets, t.bytes) for k, t in c.vlans.items()} == {12: (1, 100)}
    assert {k: (t.packets, t.bytes) for k, t in c.ethertypes.items()} == {0x0800: (1, 100), 0x0806: (1, 60), 0: (1, 64)}
    assert {k: (t.packets, t.bytes) for k, t in c.interfaces.items()} == {"test0": (3, 224)}
    assert (len(c.flows), len(c.pairs), len(c.hosts)) == (1, 1, 2)


def udp_frame(src: str, dst: str, sport: int, dport: int) -> bytes:
    return eth(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport))


def port_table(c: Counters) -> dict[tuple[int, int], dict[str, Any]]:
    """(proto, service port) → row of the ports table."""
    return {
        (k[0], int.from_bytes(bytes(k[1:3]), "big")): table_row(c.ports, bytes(k)) for k in c.ports.keys[c.ports.used]
    }


def test_port_table_counts_dns_under_53_both_directions() -> None:
    c = Counters()
    frames = [udp_frame(V4_A, "198.51.100.53", 40001, 53), udp_frame("198.51.100.53", V4_A, 53, 40001)]
    frames += [udp_frame(V4_B, "198.51.100.53", 61000, 53)]
    c.add(decode(block_of(frames, wirelen=[70, 150, 80], ts_ns=[NS, NS + 5, NS + 9])))
    ports = port_table(c)
    assert list(ports) == [(17, 53)]
    assert ports[(17, 53)]["packets"] == [2, 1]  # [to the service port, from it]
    assert ports[(17, 53)]["bytes"] == [150, 150]


def test_port_table_prefers_the_known_port_else_the_lower(monkeypatch: pytest.MonkeyPatch) -> None:
    known = np.zeros(65536, bool)
    known[8080] = True
    monkeypatch.setattr(counters_mod, "known_ports", lambda: known)
    c = Counters()
    frames = [tcp_frame(V4_A, V4_B, 1024, 8080, "S"), tcp_frame(V4_B, V4_A, 8080, 1024, "SA")]
    frames += [udp_frame(V4_A, V4_B, 7000, 6000), udp_frame(V4_A, V4_B, 7000, 6000)]
    c.add(decode(block_of(frames, wirelen=[60, 64, 100, 110], ts_ns=[NS, NS + 1, NS + 2, NS + 3])))
    ports = port_table(c)
    assert sorted(ports) == [(6, 8080), (17, 6000)]
    assert (ports[(6, 8080)]["packets"], ports[(6, 8080)]["bytes"]) == ([1, 1], [60, 64])
    assert (ports[(17, 6000)]["packets"], ports[(17, 6000)]["bytes"]) == ([2, 0], [210, 0])


def distinct_flows(count: int, base_ns: int = NS) -> tuple[list[bytes], list[int]]:
    """`count` UDP frames, each its own flow (different source ports), one microsecond apart."""
    frames = [udp_frame(V4_A, V4_B, 1024 + i, 53) for i in range(count)]
    return frames, [base_ns + i * 1000 for i in range(count)]


def test_flow_table_bounded_in_one_block() -> None:
    c = Counters(CounterLimits(flows=100))
    frames, ts = distinct_flows(1000)
    c.add(decode(block_of(frames, ts_ns=ts)))
    # Nothing existed to evict: the first 100 new keys get rows, the 900 others are refused (counted).
    assert (len(c.flows), c.flows.evicted) == (100, 900)
    assert int(c.flows.cols["packets"][c.flows.used].sum()) == 100
    assert (len(c.pairs), c.pairs.evicted) == (1, 0)
    assert table_row(c.pairs, key(V4_A) + key(V4_B))["packets"] == [1000, 0]  # pairs are not capped here


def test_flow_table_bounded_one_flow_per_block_evicts_oldest() -> None:
    c = Counters(CounterLimits(flows=100))
    frames, ts = distinct_flows(1000)
    for f, t in zip(frames, ts, strict=True):
        c.add(decode(block_of([f], ts_ns=[t])))
    # On overflow the table evicts the overflow plus capacity // 16 = 1 + 6 oldest rows: every 7th new
    # flow from the 101st evicts 7, i.e. 129 evictions of 7 rows for flows 101..1000.
    assert (len(c.flows), c.flows.evicted) == (97, 903)
    kept = sorted(int.from_bytes(bytes(k[32:34]), "big") for k in c.flows.keys[c.flows.used])
    assert kept == [1024 + i for i in range(903, 1000)]  # the 97 most recent


def test_idle_expiry_evicts_rows_last_seen_before_the_timeout() -> None:
    c = Counters(CounterLimits(flow_idle_s=10.0, pair_idle_s=30.0))
    frames = [udp_frame(V4_A, V4_B, 1000 + s, 53) for s in (0, 20, 25, 40)] + [udp_frame(V4_A, "10.0.0.3", 9, 9)]
    ts = [s * NS for s in (0, 20, 25, 40)] + [5 * NS]
    c.add(decode(block_of(frames, ts_ns=ts)))
    c.expire(35 * NS)  # flows idle since before 25 s go; pairs and hosts idle since before 5 s go
    ports = sorted(int.from_bytes(bytes(k[32:34]), "big") for k in c.flows.keys[c.flows.used])
    assert (ports, c.flows.evicted) == ([1025, 1040], 3)
    assert (len(c.pairs), c.pairs.evicted, len(c.hosts), c.hosts.evicted) == (2, 0, 3, 0)
    c.expire(36 * NS)  # now the pair with 10.0.0.3 (last seen at 5 s) and that host are idle
    assert (len(c.pairs), c.pairs.evicted) == (1, 1)
    assert (len(c.hosts), c.hosts.evicted) == (2, 1)
    assert key("10.0.0.3") not in c.hosts.index


def test_history_averages_and_peak_for_a_known_per_second_pattern() -> None:
    """A pair sends one packet per second for 45 s; bytes per second follow a known pattern."""
    base = 1_000
    pattern_ab = {s: 1000 + 37 * ((s * 7) % 11) for s in range(45)}
    pattern_ab[2] = 90_000  # the peak lies in a second whose slot has been reused since
    pattern_ba = {s: 10 * s for s in range(45) if s % 3 == 0}
    c = Counters()
    for s in range(45):  # one block per second, as the live engine would deliver them
        frames, wire, ts = [udp_frame(V4_A, V4_B, 1000, 2000)], [pattern_ab[s]], [(base + s) * NS + 500]
        if s in pattern_ba:
            frames.append(udp_frame(V4_B, V4_A, 2000, 1000))
            wire.append(pattern_ba[s])
            ts.append((base + s) * NS + 900)
        c.add(decode(block_of(frames, wirelen=wire, ts_ns=ts)))
    now = base + 45  # seconds 44, 43, ... are complete; 45 has not started
    snap = c.pairs.freeze(now)
    assert len(snap) == 1
    for direction, pat in ((0, pattern_ab), (1, pattern_ba)):
        for window in (2, 10, 40):
            want = sum(pat.get(s, 0) for s in range(45 - window, 45)) / window
            assert snap.cols[f"avg{window}"][0, direction] == want, (direction, window)
        assert snap.cols["peak"][0, direction] == max(pat.values())
    # The current second is not averaged: add traffic in second 45 and freeze at 45 again.
    c.add(decode(block_of([udp_frame(V4_A, V4_B, 1000, 2000)], wirelen=[10**6], ts_ns=[(base + 45) * NS])))
    again = c.pairs.freeze(now)
    assert again.cols["avg2"][0, 0] == (pattern_ab[43] + pattern_ab[44]) / 2
    assert again.cols["peak"][0, 0] == 90_000
    # One second later it is the last complete second.
    later = c.pairs.freeze(now + 1)
    assert later.cols["avg2"][0, 0] == (pattern_ab[44] + 10**6) / 2
    assert later.cols["peak"][0, 0] == 10**6
    # Hosts keep the same history per host: A transmits pattern_ab (+ the 10**6 second).
    hosts = c.hosts.freeze(now)
    i = [bytes(k) for k in hosts.keys].index(key(V4_A))
    assert hosts.cols["avg10"][i, 0] == sum(pattern_ab[s] for s in range(35, 45)) / 10
    assert hosts.cols["avg10"][i, 1] == sum(pattern_ba.get(s, 0) for s in range(35, 45)) / 10


def test_history_of_one_block_spanning_more_than_40_seconds_keeps_every_second() -> None:
    """A file chunk may span minutes: its early seconds still reach the peak, as one block per second would."""
    base = 5_000
    pattern = {s: 100 + s for s in range(60)}
    pattern[3] = 50_000  # its bucket is reused by second 43 of the same block
    frames = [udp_frame(V4_A, V4_B, 1000, 2000)] * 60
    wire = [pattern[s] for s in range(60)]
    ts = [(base + s) * NS for s in range(60)]
    whole = Counters()
    whole.add(decode(block_of(frames, wirelen=wire, ts_ns=ts)))
    split = Counters()
    for s in range(60):
        split.add(decode(block_of(frames[s : s + 1], wirelen=wire[s : s + 1], ts_ns=ts[s : s + 1])))
    for counters in (whole, split):
        snap = counters.pairs.freeze(base + 60)
        assert snap.cols["peak"][0].tolist() == [50_000.0, 0.0]
        assert snap.cols["avg40"][0, 0] == sum(pattern[s] for s in range(20, 60)) / 40
        assert snap.cols["avg2"][0, 0] == (pattern[58] + pattern[59]) / 2


def test_block_take_keeps_columns_aligned() -> None:
    frames = [udp_frame(V4_A, V4_B, 1, 2), udp_frame(V4_A, V4_B, 3, 4), udp_frame(V4_A, V4_B, 5, 6)]
    b = block_of(frames, vlan_tci=[0, 9, 0], vlan_valid=[False, True, False])
    sub: Block = b.take(np.array([False, True, True]))
    r = rows(decode(sub))
    assert [(x["sport"], x["vlan"]) for x in r] == [(3, 9), (5, -1)]


def test_fragments_without_ports_count_for_the_pair_not_a_port() -> None:
    pkt = IP(src="10.9.0.1", dst="10.9.0.2", id=7) / UDP(sport=5353, dport=53) / (b"f" * 3000)
    frags = [bytes(Ether() / f) for f in fragment(pkt, fragsize=1000)]
    c = Counters()
    c.add(decode(block_of(frags)))
    pairs = c.pairs.freeze(0)
    assert int(pairs.cols["packets"].sum()) == len(frags) == 4
    ports = c.ports.freeze(0)
    assert [bytes(k[1:3]) for k in ports.keys] == [(53).to_bytes(2, "big")]
    assert int(ports.cols["packets"].sum()) == 1
