"""capture_backend.capture.bpf against tcpdump's compiler, hand-built frames and a real AF_PACKET socket."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.utils import rdpcap, wrpcap

from capture_backend.capture.block import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_RAW,
    Block,
)
from capture_backend.capture.bpf import (
    BpfProgram,
    FilterError,
    OfflineFilter,
    attach,
    compile_filter,
    compile_optional,
    for_cooked_socket,
)

REPO = Path(__file__).resolve().parents[2]
_seq = itertools.count()


def tcpdump_program(expr: str, dlt: str) -> tuple[tuple[int, int, int, int], ...]:
    """The program ``tcpdump -ddd -y DLT expr`` prints (count line, then code jt jf k)."""
    out = subprocess.run(
        ["tcpdump", "-ddd", "-y", dlt, expr], check=True, capture_output=True, text=True
    ).stdout.split("\n")
    count = int(out[0])
    rows = [tuple(int(v) for v in line.split()) for line in out[1 : count + 1]]
    assert len(rows) == count
    return tuple((r[0], r[1], r[2], r[3]) for r in rows)


@pytest.mark.parametrize(
    ("expr", "linktype", "dlt"),
    [
        ("udp port 53", LINKTYPE_ETHERNET, "EN10MB"),
        ("udp port 53", LINKTYPE_RAW, "RAW"),
        ("udp port 53", LINKTYPE_LINUX_SLL, "LINUX_SLL"),
        ("tcp[tcpflags] & tcp-syn != 0 and not net 10.0.0.0/8", LINKTYPE_ETHERNET, "EN10MB"),
        ("vlan and host 198.18.0.1", LINKTYPE_ETHERNET, "EN10MB"),
        ("ip6 and tcp portrange 1000-2000", LINKTYPE_RAW, "RAW"),
    ],
)
def test_compile_matches_tcpdump(expr: str, linktype: int, dlt: str) -> None:
    prog = compile_filter(expr, linktype)
    assert prog.expr == expr
    assert prog.linktype == linktype
    assert prog.instructions == tcpdump_program(expr, dlt)


@pytest.mark.parametrize(
    ("expr", "libpcap_text"),
    [
        ("tcp port x", "unknown port 'x'"),
        ("udp port 99999", "illegal port number 99999"),
        ("((", "syntax error"),
        ("host", "syntax error"),
    ],
)
def test_invalid_expression(expr: str, libpcap_text: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_filter(expr, LINKTYPE_ETHERNET)
    message = str(info.value)
    assert message.startswith(f"invalid filter {expr!r}: ")
    assert libpcap_text in message
    assert "\n" not in message


def test_link_layer_keyword_on_raw_link_is_rejected() -> None:
    with pytest.raises(FilterError, match="ethernet addresses supported only"):
        compile_filter("ether host 02:00:00:00:00:01", LINKTYPE_RAW)


def test_compile_optional() -> None:
    assert compile_optional(None, LINKTYPE_ETHERNET) is None
    assert compile_optional(" \t ", LINKTYPE_ETHERNET) is None
    prog = compile_optional("udp", LINKTYPE_ETHERNET)
    assert prog is not None and prog.instructions == tcpdump_program("udp", "EN10MB")


def make_block(frames: list[bytes], linktype: int, caplens: list[int] | None = None) -> Block:
    """One buffer holding the frames, 3 junk bytes apart, so wrong offsets would show."""
    buf = bytearray(b"\xee" * 5)
    starts = []
    for frame in frames:
        starts.append(len(buf))
        buf += frame + b"\xee" * 3
    wire = np.array([len(f) for f in frames], dtype=np.int64)
    return Block(
        data=np.frombuffer(bytes(buf), dtype=np.uint8),
        start=np.array(starts, dtype=np.int64),
        caplen=wire.copy() if caplens is None else np.array(caplens, dtype=np.int64),
        wirelen=wire,
        ts_ns=np.zeros(len(frames), dtype=np.int64),
        linktype=linktype,
        iface="test",
    )


ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
FRAMES = [
    ETH / IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=1000, dport=53) / (b"x" * 100),
    ETH / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80),
    ETH / IP(src="10.0.0.2", dst="198.18.0.1") / TCP(sport=80, dport=5555),
    ETH / Dot1Q(vlan=7) / IP(src="10.0.0.1", dst="10.0.0.3") / UDP(sport=1, dport=2),
    ETH / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=53, dport=53),
    Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="198.18.0.1", pdst="198.18.0.2"),
]
# Frame 6 is frame 0 captured with only its Ethernet header (caplen 14, wirelen intact).
EXPECTED = {
    "udp": [1, 0, 0, 0, 1, 0, 0],
    "tcp port 80": [0, 1, 1, 0, 0, 0, 0],
    "host 198.18.0.1": [1, 0, 1, 0, 0, 1, 0],
    "vlan": [0, 0, 0, 1, 0, 0, 0],
    "vlan and udp": [0, 0, 0, 1, 0, 0, 0],
    "ether dst ff:ff:ff:ff:ff:ff": [0, 0, 0, 0, 0, 1, 0],
    "greater 100": [1, 0, 0, 0, 0, 0, 1],
}


@pytest.fixture(scope="module")
def eth_block() -> Block:
    frames = [bytes(f) for f in FRAMES]
    frames.append(frames[0])
    return make_block(frames, LINKTYPE_ETHERNET, [len(f) for f in frames[:-1]] + [14])


@pytest.mark.parametrize("expr", sorted(EXPECTED))
def test_offline_filter_mask(eth_block: Block, expr: str) -> None:
    mask = OfflineFilter(expr, LINKTYPE_ETHERNET).mask(eth_block)
    assert mask.dtype == np.bool_
    assert mask.tolist() == [bool(v) for v in EXPECTED[expr]]


@pytest.mark.parametrize("expr", ["udp", "tcp port 80", "host 198.18.0.1", "vlan", "ip6"])
def test_offline_filter_agrees_with_tcpdump(tmp_path: Path, expr: str) -> None:
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    wrpcap(str(src), FRAMES)
    subprocess.run(["tcpdump", "-r", str(src), "-w", str(out), expr], check=True, capture_output=True)
    kept = [bytes(p) for p in rdpcap(str(out))]
    frames = [bytes(f) for f in FRAMES]
    mask = OfflineFilter(expr, LINKTYPE_ETHERNET).mask(make_block(frames, LINKTYPE_ETHERNET))
    assert [f for f, m in zip(frames, mask.tolist(), strict=True) if m] == kept


def test_offline_filter_raw_linktype_and_empty_block() -> None:
    packets = [
        bytes(IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=5, dport=53)),
        bytes(IP(src="198.18.0.1", dst="198.18.0.2") / TCP(sport=5, dport=53)),
        bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5, dport=54)),
    ]
    flt = OfflineFilter("udp", LINKTYPE_RAW)
    assert flt.mask(make_block(packets, LINKTYPE_RAW)).tolist() == [True, False, True]
    assert OfflineFilter("port 53", LINKTYPE_RAW).mask(make_block(packets, LINKTYPE_RAW)).tolist() == [
        True,
        True,
        False,
    ]
    # The same filter on an Ethernet block compiles for that link type too.
    eth = make_block([bytes(ETH / IP() / UDP()), bytes(ETH / IP() / TCP())], LINKTYPE_ETHERNET)
    assert flt.mask(eth).tolist() == [True, False]
    assert flt.mask(make_block([], LINKTYPE_RAW)).tolist() == []


def test_offline_filter_rejects_offsets_outside_data() -> None:
    block = make_block([bytes(ETH / IP() / UDP())], LINKTYPE_ETHERNET)
    bad = Block(
        data=block.data[:20],
        start=block.start,
        caplen=block.caplen,
        wirelen=block.wirelen,
        ts_ns=block.ts_ns,
        linktype=block.linktype,
        iface="test",
    )
    with pytest.raises(ValueError, match="outside"):
        OfflineFilter("udp", LINKTYPE_ETHERNET).mask(bad)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"rtbpf{os.getpid()}_{next(_seq)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


# Runs inside the test's namespace: counts incoming UDP frames on lo per destination port
# under three filter states (filter A, filter B swapped in, no filter). argv[1] "raw" uses
# an Ethernet SOCK_RAW socket, "cooked" a SOCK_DGRAM one (frames start at the IP header).
CHILD = r"""
import json, socket, struct, sys
from capture_backend.capture.bpf import attach, compile_filter, detach

cooked = sys.argv[1] == "cooked"
linktype, l2 = (113, 0) if cooked else (1, 14)
rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM if cooked else socket.SOCK_RAW, socket.htons(3))
rx.bind(("lo", 0))
rx.settimeout(0.5)
sinks = []
for port in (5555, 6666):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    sinks.append(s)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

def count():
    for port in (6666, 5555) * 3:
        tx.sendto(b"retrotap", ("127.0.0.1", port))
    seen = {"5555": 0, "6666": 0, "other": 0}
    for _ in range(100):
        try:
            frame, addr = rx.recvfrom(65535)
        except TimeoutError:
            break
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        if addr[1] == 0x0800 and frame[l2 + 9] == 17:
            dport = str(struct.unpack_from("!H", frame, l2 + 4 * (frame[l2] & 15) + 2)[0])
            if dport in seen:
                seen[dport] += 1
                continue
        seen["other"] += 1
    return seen

result = {}
attach(rx, compile_filter("udp port 5555", linktype))
result["5555"] = count()
attach(rx, compile_filter("udp port 6666", linktype))
result["6666"] = count()
detach(rx)
detach(rx)
result["none"] = count()
print(json.dumps(result))
"""


@pytest.mark.parametrize("mode", ["raw", "cooked"])
def test_attach_on_af_packet_socket(netns: str, mode: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", CHILD, mode],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["5555"] == {"5555": 3, "6666": 0, "other": 0}
    assert result["6666"] == {"5555": 0, "6666": 3, "other": 0}
    assert result["none"]["5555"] == 3
    assert result["none"]["6666"] == 3


def test_for_cooked_socket() -> None:
    prog = compile_filter("udp port 53", LINKTYPE_LINUX_SLL)
    moved = for_cooked_socket(prog)
    loads = [
        (a[3], b[3])
        for a, b in zip(prog.instructions, moved.instructions, strict=True)
        if a[0] & 0x07 in (0, 1) and a[0] & 0xE0 in (0x20, 0x40, 0xA0)
    ]
    assert (14, 0xFFFFF000) in loads  # protocol → SKF_AD_OFF + SKF_AD_PROTOCOL
    assert all(new == old - 16 for old, new in loads if old >= 16)
    assert moved.instructions[-2:] == prog.instructions[-2:]
    with pytest.raises(FilterError, match="cooked-header fields"):
        for_cooked_socket(compile_filter("ether[6] == 1", LINKTYPE_LINUX_SLL))


def test_attach_errors_are_filter_errors() -> None:
    too_long = BpfProgram("too long", LINKTYPE_ETHERNET, ((6, 0, 0, 0),) * 4097)
    jumps_out = BpfProgram("jumps out", LINKTYPE_ETHERNET, ((21, 5, 0, 0), (6, 0, 0, 0)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(FilterError, match="too long"):
            attach(sock, too_long)
        with pytest.raises(FilterError, match="cannot attach filter 'jumps out': Invalid argument"):
            attach(sock, jumps_out)
