"""Application latency live: a real HTTP server in namespace a, a client in b, retrotap and tcpdump on veth a."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.helpers.latency import nearest_rank
from tests.helpers.live import start_stats, stop
from tests.lab import Lab, wait_for_output

TSHARK = shutil.which("tshark")
REQUESTS = 6
CLIENT = r"""
import http.client, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", f"/missing-{i}")
    c.getresponse().read()
    c.close()
print("done", n, flush=True)
"""


@pytest.mark.live
@pytest.mark.skipif(TSHARK is None or shutil.which("tcpdump") is None, reason="needs tshark and tcpdump")
def test_http_latency_live_equals_tshark_on_tcpdumps_capture(open_lab: Lab, tmp_path: Path) -> None:
    lab = open_lab
    server = lab.popen_a(
        [sys.executable, "-m", "http.server", "8080", "--bind", lab.ip4_a, "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    pcap = tmp_path / "ref.pcap"
    dump = lab.popen_a(
        # Immediate mode: stopped right after the traffic, tcpdump must not leave packets in the ring.
        ["tcpdump", "--immediate-mode", "-U", "-i", lab.veth_a, "-n", "-w", str(pcap)]
        + ["--time-stamp-precision", "nano", "tcp port 8080"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stats = None
    try:
        wait_for_output(dump, "listening on", timeout=20)
        stats = start_stats(lab, "--interval", "0.5", "--top", "0")
        client = lab.exec_b([sys.executable, "-c", CLIENT, lab.ip4_a, "8080", str(REQUESTS)], timeout=60)
        assert client.stdout.split() == ["done", str(REQUESTS)], client.stderr
        rec = stop(stats)[-1]
        stats = None
    finally:
        for proc in (dump, server, stats):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT if proc is dump else signal.SIGTERM)
                proc.wait(20)
    out = subprocess.run(
        [TSHARK or "tshark", "-n", "-o", "http.desegment_body:FALSE", "-r", str(pcap), "-Y", "http.time"]
        + ["-T", "fields", "-e", "http.time"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    expected = sorted(int(Decimal(t) * 10**9) for t in out)
    assert len(expected) == REQUESTS
    servers = [r for r in rec["latency"]["servers"] if r["port"] == 8080]
    assert [(r["kind"], r["server"], r["exchanges"]) for r in servers] == [("http", lab.ip4_a, REQUESTS)]
    row = servers[0]
    # Both read kernel timestamps of the same packets; an outgoing packet's copy is stamped per socket
    # (about a microsecond apart here), so the figures agree to well under 50 µs, not to the ns.
    assert row["max_ms"] == pytest.approx(expected[-1] / 1e6, abs=0.05)
    assert row["p50_ms"] == pytest.approx(nearest_rank(expected, 0.5) / 1e6, abs=0.05)
    assert row["avg_ms"] == pytest.approx(sum(expected) / REQUESTS / 1e6, abs=0.05)
    flows = [f for f in rec["flows"] if f["dport"] == 8080]
    assert len(flows) == REQUESTS and all(f["latency"]["exchanges"] == 1 for f in flows)
    requests = sorted(x["request"] for x in rec["latency"]["slowest"] if x["kind"] == "http")
    assert requests == sorted(f"GET /missing-{i} HTTP/1.1" for i in range(REQUESTS))
