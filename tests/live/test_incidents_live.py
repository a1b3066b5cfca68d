"""Alert rules on real traffic in the lab: a UDP flood from one host, then a TCP port scan from it, then a slowed
DNS resolver. Each rule fires once, names the right source or the slow requests, and its incident's pcap holds
exactly the frames tcpdump stamped in the incident's window; a rule that never holds leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from capture_backend.capture.pcapfile import FileSource
from tests.captures import SETTLE_S, read_pcap, start_retrotap, start_tcpdump, stop_tcpdump
from tests.lab import Lab, wait_for_output
from tests.scenes import Dns, finish, program, quiesce
from tests.tshark import tshark

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("tcpdump", "trafgen")), reason="needs tcpdump, trafgen"),
]

NS = 1_000_000_000
EDGE_NS = 5_000_000  # each socket stamps its own copy: frames this close to a window's edge may fall either side
FLOOD_PACKETS, FLOOD_RATE = 30_000, 15_000
SCAN_PORTS = 600


def frames(path: Path) -> list[tuple[int, bytes]]:
    """(timestamp ns, bytes) of every frame of a pcap or pcapng file (retrotap's reader; tshark checks it too)."""
    with FileSource(str(path)) as src:
        return [
            (int(b.ts_ns[i]), bytes(b.data[int(b.start[i]) : int(b.start[i]) + int(b.caplen[i])]))
            for b in src.blocks()
            for i in range(len(b))
        ]


def incident(directory: Path, rule: str) -> dict:  # type: ignore[type-arg]
    (path,) = [p for p in directory.iterdir() if p.name.endswith(f"-{rule}")]
    doc: dict = json.loads((path / "incident.json").read_text())  # type: ignore[type-arg]
    doc["dir"] = path
    return doc


def test_flood_scan_and_slow_dns_each_freeze_one_incident(tmp_path: Path) -> None:
    inc = tmp_path / "incidents"
    with Lab(drop_ingress=False) as lab:
        dns = Dns(clients=1, queries=40, tcp=0, ipv6_clients=0, digs=0, slow_every=2, lost_every=1000)
        dns.setup(lab)
        dump = start_tcpdump(lab, tmp_path / "tcpdump.pcap")
        stats = start_retrotap(
            lab, "stats", "-i", lab.veth_a, "--format", "json", "--interval", "1", "--incidents", str(inc),
            "--pre", "30s", "--post", "2s",
            "--alert", "flood: new_flows > 3000 for 1s",
            "--alert", "scan: scan_ports > 300",
            "--alert", "dns_slow: dns_p95_ms > 300",
            "--alert", "never: pps > 10M",
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.5)
        # 1. A UDP flood from b's address: every packet from a new source port, to a closed port of a.
        conf = (
            f"{{ eth(da={lab.mac_a}, sa={lab.mac_b}), ipv4(da={lab.ip4_a}, sa={lab.ip4_b}, ttl=64), "
            f"udp(sp=drnd(), dp=9999), fill(0x41, 18) }}"
        )
        lab.exec_b(
            ["trafgen", "-o", lab.veth_b, "-P", "1", "-n", str(FLOOD_PACKETS), "-q", "-b", f"{FLOOD_RATE}pps", conf],
            timeout=60,
        )
        flood_line = wait_for_output(stats, "incident flood", timeout=30)
        # 2. A TCP connect() scan of a's closed ports from b.
        finish([program(lab, "b", "scan", "tcp", lab.ip4_a, lab.ip4_b, SCAN_PORTS, 64, 0)], 120)
        scan_line = wait_for_output(stats, "incident scan", timeout=30)
        # 3. DNS queries, half of them for names the resolver answers after 400 ms.
        dns.run(lab)
        dns_line = wait_for_output(stats, "incident dns_slow", timeout=30)
        quiesce(lab)
        time.sleep(SETTLE_S + 2)  # past the last incident's post window
        stats.send_signal(signal.SIGINT)
        _, err = stats.communicate(timeout=60)
        counts = stop_tcpdump(dump)
    assert stats.returncode == 0 and "Traceback" not in err, err
    assert sorted(p.name.rsplit("-", 1)[1] for p in inc.iterdir()) == ["dns_slow", "flood", "scan"]
    flood, scan, slow = incident(inc, "flood"), incident(inc, "scan"), incident(inc, "dns_slow")
    b = lab.ip4_b

    # The flood: over 3,000 new flows a second, b the source of most of them.
    assert flood["incident"]["rows"][0]["label"] == "" and flood["incident"]["rows"][0]["value"] > 3000
    assert "incident flood: new_flows=" in flood_line
    hosts = {h["addr"]: h["tx_packets"] for h in flood["record"]["hosts"]}
    assert max(hosts, key=hosts.__getitem__) == b
    # The scan names the scanner, with at least the ports its rule needed.
    top = scan["incident"]["rows"][0]
    assert top["label"] == b and top["value"] > 300, scan["incident"]
    assert f"scan: {b}=" in scan_line
    # The slow resolver: the p95 of a's DNS service over the threshold, the slow names among the slowest.
    assert slow["incident"]["rows"][0]["label"] == "udp/53" and slow["incident"]["rows"][0]["value"] > 300
    slowest = slow["record"]["latency"]["slowest"]
    over = [e["request"] for e in slowest if e["ms"] > 300]
    assert over and all(r.startswith("slow-") for r in over), slowest
    assert all(not e["request"].startswith("slow-") for e in slowest if e["ms"] <= 300), slowest
    assert dns_line

    if counts["dropped"]:
        pytest.skip(f"tcpdump dropped {counts['dropped']}")
    ref = read_pcap(tmp_path / "tcpdump.pcap")
    for doc in (flood, scan, slow):
        pcap = doc["pcap"]
        (name,) = pcap["files"]
        own = frames(doc["dir"] / name)
        assert len(own) == pcap["packets"] > 0
        # tshark reads the whole file without complaint.
        numbers = tshark(doc["dir"] / name, "-T", "fields", "-e", "frame.number").split()
        assert len(numbers) == len(own)
        since, until = int(pcap["from"] * NS), int(pcap["to"] * NS)
        # Every frame of the incident is one of tcpdump's, and every frame tcpdump stamped inside the window is in
        # the incident.
        left = Counter(d for _, _, d in ref)
        left.subtract(d for _, d in own)
        assert min(left.values()) >= 0, f"{doc['incident']['rule']}: a frame tcpdump did not see"
        inside = Counter(d for t, _, d in ref if since + EDGE_NS <= t <= until - EDGE_NS)
        assert not inside - Counter(d for _, d in own), f"{doc['incident']['rule']}: tcpdump's frames missing"
    # The flood's first packets came before its rule fired: the pre-trigger window holds them.
    flood_port = (9999).to_bytes(2, "big")
    first_flood = next(d for _, _, d in ref if len(d) >= 42 and d[23] == 17 and d[36:38] == flood_port)
    assert first_flood in {d for _, d in frames(flood["dir"] / flood["pcap"]["files"][0])}
