"""Live tests of the netns lab itself."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from tests.lab import REPO_ROOT, Lab, cleanup_stale, finish_capture, list_netns, run

pytestmark = pytest.mark.live

SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
ETH_P_ALL = 0x0003


def udp_frames(lab: Lab, n: int) -> list[bytes]:
    """n UDP frames b -> a whose lengths are 42, 43, ... (payload i bytes)."""
    return [
        bytes(
            Ether(dst=lab.mac_a, src=lab.mac_b)
            / IP(src=lab.ip4_b, dst=lab.ip4_a)
            / UDP(sport=40000 + i, dport=9)
            / bytes(i)
        )
        for i in range(n)
    ]


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    """Rows of the given tshark fields for every frame in `path`."""
    args = ["tshark", "-r", str(path), "-T", "fields"]
    for field in fields:
        args += ["-e", field]
    out = run(args).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def test_create_and_destroy() -> None:
    lab = Lab()
    lab.create()
    try:
        assert {lab.ns_a, lab.ns_b} <= set(list_netns())
        assert lab.link_info("a")["ifname"] == lab.veth_a
        assert lab.link_info("b")["ifname"] == lab.veth_b
        assert lab.link_info("a")["operstate"] == "UP"
        assert len(lab.veth_a) <= 15 and len(lab.veth_b) <= 15
        addrs = json.loads(lab.exec_a(["ip", "-j", "addr", "show", "dev", lab.veth_a]).stdout)
        local = {a["local"] for a in addrs[0]["addr_info"]}
        assert {"198.18.0.1", "fd00:7274::1"} <= local
        # The veth never appears in the root namespace.
        assert run(["ip", "link", "show", "dev", lab.veth_a], check=False).returncode != 0
    finally:
        lab.destroy()
    assert not {lab.ns_a, lab.ns_b} & set(list_netns())
    lab.destroy()  # idempotent


def test_destroy_when_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        assert lab.ns_a in list_netns()
        raise RuntimeError("boom")
    assert not {lab.ns_a, lab.ns_b} & set(list_netns())


def test_cleanup_stale_removes_only_dead_pids(lab: Lab) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    stale = f"rt-{dead.pid}-0-a"
    run(["ip", "netns", "add", stale])
    try:
        removed = cleanup_stale()
        assert stale in removed
        assert stale not in list_netns()
        assert {lab.ns_a, lab.ns_b} <= set(list_netns())
    finally:
        run(["ip", "netns", "del", stale], check=False)


def test_rx_counter_counts_frames_dropped_at_ingress(lab: Lab) -> None:
    frames = udp_frames(lab, 50)
    before_a = lab.link_stats("a")
    before_b = lab.link_stats("b")
    assert lab.send_frames(frames) == 50
    after_a = lab.link_stats("a")
    # veth counts rx at the peer's xmit, before the netdev ingress hook drops.
    assert after_a["rx"]["packets"] - before_a["rx"]["packets"] == 50
    assert after_a["rx"]["bytes"] - before_a["rx"]["bytes"] == sum(map(len, frames))
    assert lab.stats_a() == after_a["rx"]["packets"]
    assert lab.ingress_drops() == 50
    # The stack on a never saw them, so it answered nothing (no ARP, no ICMP).
    assert after_a["tx"]["packets"] == before_a["tx"]["packets"]
    assert lab.link_stats("b")["rx"]["packets"] == before_b["rx"]["packets"]


def test_tcpdump_sees_all_frames_with_exact_lengths(lab: Lab, tmp_path: Path) -> None:
    frames = udp_frames(lab, 50)
    out = tmp_path / "cap.pcap"
    proc = lab.tcpdump("a", out, 50)
    assert lab.send_frames(frames) == 50
    finish_capture(proc)
    lengths = [int(row[0]) for row in tshark_fields(out, "frame.len")]
    assert lengths == [len(f) for f in frames]
    assert lengths[0] == 42  # no padding to 60 on veth


def test_repeat_sends_frames_in_order(lab: Lab, tmp_path: Path) -> None:
    frames = udp_frames(lab, 3)
    out = tmp_path / "cap.pcap"
    proc = lab.tcpdump("a", out, 12)
    assert lab.send_frames(frames, repeat=4) == 12
    finish_capture(proc)
    ports = [int(row[0]) for row in tshark_fields(out, "udp.srcport")]
    assert ports == [40000, 40001, 40002] * 4


def test_sender_udp_template(lab: Lab) -> None:
    before = lab.stats_a()
    proc = lab.exec_b(
        [sys.executable, "-m", "tests.sender", "--iface", lab.veth_b, "--count", "20",
         "--template", "udp", "--dst-mac", lab.mac_a, "--size", "100", "--flows", "4"],
        cwd=REPO_ROOT,
    )
    assert json.loads(proc.stdout.splitlines()[-1]) == {"sent": 20, "bytes": 2000}
    assert lab.stats_a() - before == 20


def test_vlan_tag_is_stripped_to_auxdata_and_reinserted_by_tcpdump(
    lab: Lab, tmp_path: Path
) -> None:
    frame = bytes(
        Ether(dst=lab.mac_a, src=lab.mac_b)
        / Dot1Q(vlan=42)
        / IP(src=lab.ip4_b, dst=lab.ip4_a)
        / UDP(sport=40000, dport=9)
        / b"vlan"
    )

    def open_raw() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((lab.veth_a, 0))
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        return sock

    out = tmp_path / "vlan.pcap"
    with lab.run_in_ns("a", open_raw) as sock:
        sock.settimeout(10)
        proc = lab.tcpdump("a", out, 1)
        assert lab.send_frames([frame]) == 1
        data, anc, _, _ = sock.recvmsg(65535, socket.CMSG_SPACE(20))
    finish_capture(proc)

    # The kernel untags in __netif_receive_skb_core before AF_PACKET sees it.
    assert len(data) == len(frame) - 4
    assert data[12:14] == b"\x08\x00"
    aux = [d for level, kind, d in anc if level == SOL_PACKET and kind == PACKET_AUXDATA]
    assert len(aux) == 1
    status, _, _, _, _, tci, tpid = struct.unpack("IIIHHHH", aux[0][:20])
    assert status & TP_STATUS_VLAN_VALID
    assert status & TP_STATUS_VLAN_TPID_VALID and tpid == 0x8100
    assert tci & 0x0FFF == 42
    # libpcap puts the tag back from auxdata.
    assert tshark_fields(out, "vlan.id", "frame.len") == [["42", str(len(frame))]]


def test_set_link_and_delete_veth(lab: Lab) -> None:
    lab.set_link("a", False)
    assert lab.link_info("a")["operstate"] == "DOWN"
    lab.set_link("a", True)
    assert lab.link_info("a")["operstate"] == "UP"
    before = lab.stats_a()
    assert lab.send_frames(udp_frames(lab, 5)) == 5
    assert lab.stats_a() - before == 5
    lab.delete_veth()
    for side in ("a", "b"):
        shown = run(["ip", "-n", lab.ns(side), "link", "show", "dev", lab.veth(side)],
                    check=False)
        assert shown.returncode != 0


@pytest.fixture
def open_lab() -> Iterator[Lab]:
    """A lab whose side a answers like a normal host (no ingress drop)."""
    the_lab = Lab(drop_ingress=False)
    try:
        the_lab.create()
        yield the_lab
    finally:
        the_lab.destroy()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_without_drop_the_stack_answers(open_lab: Lab, family: socket.AddressFamily) -> None:
    dst = open_lab.ip4_a if family == socket.AF_INET else open_lab.ip6_a

    def probe() -> str:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            sock.connect((dst, 9))
            sock.send(b"x")
            try:
                sock.recv(16)
            except ConnectionRefusedError:
                return "refused"
            return "answered"

    # ICMP port unreachable from a proves addresses, ARP/ND and routing work.
    assert open_lab.run_in_ns("b", probe) == "refused"
    assert open_lab.ingress_drops() == 0
