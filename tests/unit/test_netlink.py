"""capture_backend.capture.netlink on a veth pair between two namespaces the test creates."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from capture_backend.capture.block import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW
from capture_backend.capture.netlink import (
    InterfaceError,
    LinkMonitor,
    default_interface,
    linktype_for_arphrd,
)

_seq = itertools.count()
ADDR_A, ADDR_B = "198.18.0.1", "198.18.0.2"
ICMP_FRAME = 14 + 20 + 8 + 56  # Ethernet + IPv4 + ICMP echo with ping's default payload
ARP_FRAME = 42
# Sends N ICMP echo requests (56-byte payload, like ping) one at a time, each awaiting its reply.
PINGER = r"""
import socket, struct, sys
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
n, dst = int(sys.argv[1]), sys.argv[2]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.settimeout(1.0)
replies = 0
for seq in range(n):
    body = struct.pack("!HH", 0x5254, seq) + bytes(56)
    sock.sendto(struct.pack("!BBH", 8, 0, csum(b"\x08\x00\x00\x00" + body)) + body, (dst, 0))
    try:
        while True:
            pkt, _ = sock.recvfrom(2048)
            icmp = pkt[(pkt[0] & 15) * 4:]
            if icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (0x5254, seq):
                replies += 1
                break
    except TimeoutError:
        pass
print(replies)
"""


@dataclass(frozen=True)
class Pair:
    ns_a: str
    ns_b: str
    veth_a: str
    veth_b: str


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def pair() -> Iterator[Pair]:
    n = next(_seq)
    p = Pair(
        f"rtnl{os.getpid()}_{n}a", f"rtnl{os.getpid()}_{n}b", f"rtv{os.getpid()}{n}a", f"rtv{os.getpid()}{n}b"
    )
    try:
        for ns in (p.ns_a, p.ns_b):
            ip("netns", "add", ns)
            # No IPv6 on the test links: no router solicitations or MLD reports in the counters.
            ip("netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            ip("netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", p.ns_a, "link", "add", p.veth_a, "type", "veth", "peer", "name", p.veth_b, "netns", p.ns_b)
        ip("-n", p.ns_a, "addr", "add", f"{ADDR_A}/30", "dev", p.veth_a)
        ip("-n", p.ns_b, "addr", "add", f"{ADDR_B}/30", "dev", p.veth_b)
        ip("-n", p.ns_a, "link", "set", p.veth_a, "up")
        ip("-n", p.ns_b, "link", "set", p.veth_b, "up")
        yield p
    finally:
        for ns in (p.ns_a, p.ns_b):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def test_get_shows_index_type_and_state(pair: Pair) -> None:
    shown = json.loads(ip("-n", pair.ns_a, "-j", "link", "show", pair.veth_a))[0]
    with LinkMonitor(netns=pair.ns_a) as mon:
        info = mon.get(pair.veth_a)
        links = mon.links()
    assert info.name == pair.veth_a
    assert info.index == shown["ifindex"]
    assert info.arphrd == 1
    assert linktype_for_arphrd(info.arphrd) == LINKTYPE_ETHERNET
    assert (info.up, info.running, info.operstate) == (True, True, "UP")
    assert sorted(links) == sorted(["lo", pair.veth_a])
    assert links[pair.veth_a].index == info.index
    assert links["lo"].arphrd == 772


def test_ping_counts(pair: Pair) -> None:
    n = 7
    with LinkMonitor(netns=pair.ns_a) as mon_a, LinkMonitor(netns=pair.ns_b) as mon_b:
        a0, b0 = mon_a.get(pair.veth_a).stats, mon_b.get(pair.veth_b).stats
        done = subprocess.run(
            ["ip", "netns", "exec", pair.ns_b, sys.executable, "-c", PINGER, str(n), ADDR_A],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert int(done.stdout) == n
        a1, b1 = mon_a.get(pair.veth_a).stats, mon_b.get(pair.veth_b).stats
    # n echo requests B→A and n replies A→B, plus at most a few ARP frames.
    assert n <= b1.tx_packets - b0.tx_packets <= n + 3
    assert n <= a1.rx_packets - a0.rx_packets <= n + 3
    assert n <= a1.tx_packets - a0.tx_packets <= n + 3
    assert n <= b1.rx_packets - b0.rx_packets <= n + 3
    assert n * ICMP_FRAME <= a1.rx_bytes - a0.rx_bytes <= n * ICMP_FRAME + 3 * ARP_FRAME
    assert n * ICMP_FRAME <= b1.tx_bytes - b0.tx_bytes <= n * ICMP_FRAME + 3 * ARP_FRAME
    assert (a1.rx_errors, a1.tx_errors, a1.rx_missed) == (0, 0, 0)


def test_link_down(pair: Pair) -> None:
    ip("-n", pair.ns_a, "link", "set", pair.veth_a, "down")
    with LinkMonitor(netns=pair.ns_a) as mon_a, LinkMonitor(netns=pair.ns_b) as mon_b:
        a, b = mon_a.get(pair.veth_a), mon_b.get(pair.veth_b)
    assert (a.up, a.running, a.operstate) == (False, False, "DOWN")
    assert (b.up, b.running, b.operstate) == (True, False, "DOWN")  # up, but no carrier


@pytest.mark.parametrize("name", ["nosuch0", "x" * 40, ""])
def test_unknown_interface(pair: Pair, name: str) -> None:
    with LinkMonitor(netns=pair.ns_a) as mon, pytest.raises(InterfaceError) as info:
        mon.get(name)
    where = f"in network namespace {pair.ns_a!r}"
    assert str(info.value) == f"unknown interface {name!r} {where} (interfaces: lo, {pair.veth_a})"


def test_unknown_namespace() -> None:
    name = f"rtnl{os.getpid()}_missing"
    with pytest.raises(InterfaceError, match="unknown network namespace"):
        LinkMonitor(netns=name)
    assert name not in ip("netns", "list")


def test_default_interface(pair: Pair) -> None:
    ip("-n", pair.ns_a, "route", "add", "default", "dev", pair.veth_a)
    with IPRoute(netns=pair.ns_a, flags=0) as ipr:
        assert default_interface(ipr) == pair.veth_a
    with IPRoute(netns=pair.ns_b, flags=0) as ipr, pytest.raises(InterfaceError) as info:
        default_interface(ipr)
    assert str(info.value) == "no default route; choose an interface with -i"


def test_default_interface_falls_back_to_ipv6(pair: Pair) -> None:
    ip("netns", "exec", pair.ns_b, "sysctl", "-qw", f"net.ipv6.conf.{pair.veth_b}.disable_ipv6=0")
    ip("-n", pair.ns_b, "-6", "route", "add", "default", "dev", pair.veth_b)
    with IPRoute(netns=pair.ns_b, flags=0) as ipr:
        assert default_interface(ipr) == pair.veth_b


@pytest.mark.parametrize(
    ("arphrd", "linktype"),
    [
        (1, LINKTYPE_ETHERNET),
        (772, LINKTYPE_ETHERNET),
        (0xFFFE, LINKTYPE_RAW),
        (768, LINKTYPE_RAW),
        (769, LINKTYPE_RAW),
        (776, LINKTYPE_RAW),
        (778, LINKTYPE_RAW),
        (823, LINKTYPE_RAW),
        (512, LINKTYPE_LINUX_SLL),  # ARPHRD_PPP
        (801, LINKTYPE_LINUX_SLL),  # ARPHRD_IEEE80211
    ],
)
def test_linktype_for_arphrd(arphrd: int, linktype: int) -> None:
    assert linktype_for_arphrd(arphrd) == linktype
