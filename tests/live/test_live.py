"""`retrotap stats` capturing live in the netns lab: exact counts from real packets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from scapy.all import IP, TCP, UDP, Dot1Q, Ether, IPv6, raw

from tests.helpers.live import RETROTAP, records, start_stats, stop, udp
from tests.lab import REPO_ROOT, Lab, wait_for_output

pytestmark = pytest.mark.live


def flow(rec: dict[str, Any], proto: str, dport: int) -> dict[str, Any]:
    rows = [f for f in rec["flows"] if f["proto"] == proto and f["dport"] == dport]
    assert len(rows) == 1, rec["flows"]
    return rows[0]


def test_exact_counts_udp_tcp_ipv6_vlan(lab: Lab) -> None:
    frames = [udp(lab, 4000, 5000, size) for size in (10, 100, 1000) for _ in range(50)]
    tagged = raw(
        Ether(dst=lab.mac_a, src=lab.mac_b)
        / Dot1Q(vlan=42)
        / IP(src="198.18.0.2", dst="198.18.0.1")
        / UDP(sport=4001, dport=5001)
        / (b"v" * 60)
    )
    frames += [tagged] * 20
    v6 = raw(
        Ether(dst=lab.mac_a, src=lab.mac_b)
        / IPv6(src="fd00:7274::2", dst="fd00:7274::1")
        / TCP(sport=40000, dport=443, flags="PA")
        / (b"t" * 200)
    )
    frames += [v6] * 30
    proc = start_stats(lab, "--interval", "0.5", "--top", "0")
    assert lab.send_frames(frames) == len(frames)
    last = stop(proc)[-1]

    # The kernel strips the 802.1Q tag before the ring sees it; retrotap counts it back on.
    expected_bytes = sum(len(f) for f in frames)
    totals = last["totals"]
    assert (totals["packets"], totals["bytes"], totals["malformed"]) == (200, expected_bytes, 0)
    assert last["capture"]["kernel_drops"] == 0
    assert last["capture"]["received"] == 200
    f5000 = flow(last, "udp", 5000)
    assert (f5000["src"], f5000["sport"], f5000["dst"]) == ("198.18.0.2", 4000, "198.18.0.1")
    assert f5000["packets"] == 150
    assert f5000["bytes"] == sum(len(udp(lab, 4000, 5000, s)) * 50 for s in (10, 100, 1000))
    assert f5000["src_to_dst_packets"] == 150 and f5000["dst_to_src_packets"] == 0
    assert flow(last, "udp", 5001)["bytes"] == 20 * len(tagged)
    f443 = flow(last, "tcp", 443)
    assert (f443["src"], f443["dst"], f443["packets"], f443["bytes"]) == (
        "fd00:7274::2",
        "fd00:7274::1",
        30,
        30 * len(v6),
    )
    assert "P" in f443["tcp_flags"] and "A" in f443["tcp_flags"]
    assert last["vlans"] == [{"vlan": 42, "name": "42", "packets": 20, "bytes": 20 * len(tagged)}]
    hosts = {h["addr"]: h for h in last["hosts"]}
    assert hosts["198.18.0.2"]["tx_packets"] == 170 and hosts["198.18.0.2"]["rx_packets"] == 0
    assert hosts["198.18.0.1"]["rx_packets"] == 170
    pair = next(p for p in last["pairs"] if {p["a"], p["b"]} == {"198.18.0.1", "198.18.0.2"})
    sent_by_b = pair["b_to_a_bytes"] if pair["b"] == "198.18.0.2" else pair["a_to_b_bytes"]
    assert sent_by_b == pair["bytes"] == f5000["bytes"] + 20 * len(tagged)
    ports = {(p["proto"], p["port"]): p for p in last["ports"]}
    assert ports[("tcp", 443)]["service"] == "https" and ports[("tcp", 443)]["packets"] == 30
    # Link counters come from netlink: the veth saw at least what we sent.
    iface = last["interfaces"][0]
    assert iface["name"] == lab.veth("a") and iface["state"] == "up"
    assert iface["rx_packets"] >= 200 and iface["captured_packets"] == 200


def test_filter_is_applied_in_the_kernel(lab: Lab) -> None:
    frames = [udp(lab, 4000, 5000, 20)] * 40 + [udp(lab, 4000, 6000, 20)] * 60
    proc = start_stats(lab, "-f", "udp dst port 6000", "--interval", "0.5")
    lab.send_frames(frames)
    last = stop(proc)[-1]
    assert last["totals"]["packets"] == 60
    assert last["capture"]["received"] == 60
    assert [f["dport"] for f in last["flows"]] == [6000]
    assert last["filter"] == "udp dst port 6000"


def test_count_stops_after_n_records_and_sigterm_prints_a_last_one(lab: Lab) -> None:
    proc = start_stats(lab, "--interval", "0.2", "--count", "3")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert len(out.splitlines()) == 3
    proc = start_stats(lab, "--interval", "30")
    lab.send_frames([udp(lab, 1, 2, 30)] * 7)
    recs = stop(proc, signal.SIGTERM)
    assert len(recs) == 1 and recs[0]["totals"]["packets"] == 7


def test_link_down_then_up_resumes(lab: Lab) -> None:
    proc = start_stats(lab, "--interval", "0.2")
    lab.send_frames([udp(lab, 1000, 2000, 10)] * 10)
    lab.set_link("a", up=False)
    assert any(r["interfaces"][0]["state"] == "down" for r in records(proc))
    lab.set_link("a", up=True)
    assert any(r["interfaces"][0]["state"] == "up" for r in records(proc))
    lab.send_frames([udp(lab, 1000, 2000, 10)] * 15)
    last = stop(proc)[-1]
    assert last["totals"]["packets"] == 25
    assert flow(last, "udp", 2000)["packets"] == 25


def test_deleted_interface_is_reported_and_loopback_goes_on(lab: Lab) -> None:
    proc = lab.popen_a(
        [*RETROTAP, "stats", "-i", lab.veth("a"), "-i", "lo", "--format", "json", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    wait_for_output(proc, "listening on", timeout=30)
    lab.delete_veth()
    gone = next(r for r in records(proc) if r["interfaces"][0]["state"] == "gone")
    assert "removed" in gone["interfaces"][0]["error"]
    # Loopback, in namespace a only: each datagram appears once although lo sees it sent and received.
    send = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(12): s.sendto(b'x' * 33, ('127.0.0.1', 9999))"
    )
    lab.exec_a([sys.executable, "-c", send])
    last = stop(proc)[-1]
    lo = flow(last, "udp", 9999)
    assert lo["packets"] == 12
    assert lo["bytes"] == 12 * (14 + 20 + 8 + 33)
    states = {i["name"]: i["state"] for i in last["interfaces"]}
    assert states == {lab.veth("a"): "gone", "lo": "up"}


def run_cli(lab: Lab, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return lab.exec_a([*prefix, *RETROTAP, *args], check=False, cwd=REPO_ROOT, timeout=60)


def test_user_errors_are_one_line(lab: Lab) -> None:
    unknown = run_cli(lab, "stats", "-i", "nosuch0", "--count", "1")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        f"retrotap: error: unknown interface 'nosuch0' (interfaces: lo, {lab.veth('a')})"
    ]
    bad = run_cli(lab, "stats", "-i", lab.veth("a"), "-f", "tcp port ((", "--count", "1")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith(
        "retrotap: error: invalid filter 'tcp port ((': can't parse filter expression: syntax error"
    )
    # Without CAP_NET_RAW (uid 0 but the capability dropped from the bounding set, as for any user).
    noperm = run_cli(
        lab,
        "stats",
        "-i",
        lab.veth("a"),
        "--count",
        "1",
        prefix=("setpriv", "--bounding-set", "-net_raw,-net_admin", "--inh-caps", "-all", "--"),
    )
    assert noperm.returncode == 2
    assert len(noperm.stderr.strip().splitlines()) == 1
    assert noperm.stderr.startswith(f"retrotap: error: no permission to capture on {lab.veth('a')}")
    assert "Traceback" not in unknown.stderr + bad.stderr + noperm.stderr


def test_default_interface_is_the_default_routes(lab: Lab) -> None:
    lab.exec_a(["ip", "route", "add", "default", "via", "198.18.0.2", "dev", lab.veth("a")])
    proc = lab.popen_a(
        [*RETROTAP, "stats", "--format", "json", "--interval", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    line = wait_for_output(proc, "listening on", timeout=30)
    assert line.strip() == f"retrotap: listening on {lab.veth('a')}"
    lab.send_frames([udp(lab, 7, 8, 1)] * 3)
    assert stop(proc)[-1]["totals"]["packets"] == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_rate_at_modest_speed_has_no_kernel_drops(lab: Lab) -> None:
    frames = [udp(lab, 10000 + i % 50, 20000 + i % 7, 64 + i % 200) for i in range(500)]
    proc = start_stats(lab, "--interval", "0.5")
    sent = lab.send_frames(frames, repeat=40, timeout=30)
    last = stop(proc)[-1]
    assert sent == 20000
    assert last["capture"]["kernel_drops"] == 0
    assert last["totals"]["packets"] == 20000
    assert last["totals"]["bytes"] == 40 * sum(len(f) for f in frames)
    assert last["flow_table"]["active"] == 350  # lcm(50 source ports, 7 destination ports)


def test_a_ring_of_two_blocks_counts_each_packet_once(lab: Lab) -> None:
    frames = [udp(lab, 30000 + i % 100, 7000, 1000) for i in range(3000)]  # ~3 MB: the ring wraps
    proc = start_stats(lab, "--ring-size", "2", "--block-size", "1024", "--interval", "0.5", "--top", "0")
    sent = lab.send_frames(frames, timeout=30)
    last = stop(proc)[-1]
    assert last["totals"]["packets"] + last["capture"]["kernel_drops"] == sent == 3000
    assert last["capture"]["received"] == 3000
    to_7000 = [f for f in last["flows"] if f["dport"] == 7000]
    assert len(to_7000) == 100  # one per source port
    assert sum(f["packets"] for f in to_7000) == last["totals"]["packets"]
