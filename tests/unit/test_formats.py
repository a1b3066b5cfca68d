"""`retrotap stats -r` output formats: the same figures as JSON, CSV rows and an iftop -t style table."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.all import IP, TCP, UDP, Ether

from tests.pcapgen import write_pcap

RETROTAP = [sys.executable, "-m", "tui.cli"]
T0 = 1_700_000_000


@pytest.fixture(scope="module")
def small_pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two conversations over 4 seconds of packet time: UDP 10.0.0.1:5555 → 10.0.0.2:53, TCP to :80."""
    pkts = []
    for i in range(40):
        p = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5555, dport=53) / (b"q" * 58)
        p.time = T0 + i * 0.1
        pkts.append(p)
    for i in range(10):
        p = Ether() / IP(src="10.0.0.3", dst="10.0.0.2") / TCP(sport=40000, dport=80, flags="S" if i == 0 else "A")
        p.time = T0 + i * 0.4
        pkts.append(p)
    pkts.sort(key=lambda p: float(p.time))
    path = tmp_path_factory.mktemp("fmt") / "small.pcap"
    write_pcap(path, pkts)
    return path


def stats(path: Path, *args: str) -> str:
    proc = subprocess.run([*RETROTAP, "stats", "-r", str(path), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def test_json_one_record_for_the_file(small_pcap: Path) -> None:
    lines = stats(small_pcap, "--format", "json", "--top", "0").splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["live"] is False and "capture" not in rec
    assert rec["totals"]["packets"] == 50
    assert rec["totals"]["bytes"] == 40 * 100 + 10 * 54
    assert rec["interval"] == pytest.approx(3.9)
    udp = next(f for f in rec["flows"] if f["proto"] == "udp")
    assert (udp["src"], udp["sport"], udp["dst"], udp["dport"], udp["packets"], udp["bytes"]) == (
        "10.0.0.1", 5555, "10.0.0.2", 53, 40, 4000,
    )
    tcp = next(f for f in rec["flows"] if f["proto"] == "tcp")
    assert tcp["tcp_flags"] == "SA" and tcp["first"] == T0 and tcp["last"] == pytest.approx(T0 + 3.6)
    assert [(p["proto"], p["port"], p["service"], p["packets"]) for p in rec["ports"]] == [
        ("udp", 53, "domain", 40),
        ("tcp", 80, "http", 10),
    ]


def test_interval_of_packet_time_gives_one_record_per_second(small_pcap: Path) -> None:
    recs = [json.loads(line) for line in stats(small_pcap, "--format", "json", "--interval", "1").splitlines()]
    # Packets at 0.0 .. 3.9 s: boundaries at 1, 2, 3 s, then the end of the file.
    assert [r["totals"]["packets"] for r in recs] == [13, 25, 38, 50]
    assert recs[-1]["totals"]["bytes"] == 4540
    assert stats(small_pcap, "--format", "json", "--interval", "1", "--count", "2").count("\n") == 2


def test_csv_rows_have_a_kind_column(small_pcap: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(stats(small_pcap, "--format", "csv", "--top", "0"))))
    kinds = [r["kind"] for r in rows]
    assert kinds.count("total") == 1 and kinds.count("flow") == 2 and kinds.count("pair") == 2
    total = next(r for r in rows if r["kind"] == "total")
    assert (total["packets"], total["bytes"], total["malformed"]) == ("50", "4540", "0")
    host = next(r for r in rows if r["kind"] == "host" and r["addr"] == "10.0.0.2")
    assert (host["rx_bytes"], host["tx_bytes"]) == ("4540", "0")
    port = next(r for r in rows if r["kind"] == "port" and r["port"] == "80")
    assert (port["proto"], port["service"], port["packets"], port["bytes"]) == ("tcp", "http", "10", "540")


def test_text_is_an_iftop_style_table(small_pcap: Path) -> None:
    out = stats(small_pcap, "--format", "text")
    assert "packets 50" in out and "malformed 0" in out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith("1 "))
    # Pair 1 is the larger one: 10.0.0.1 sends 4000 bytes to 10.0.0.2 (a => b, then b <= a).
    assert lines[first].split()[1:3] == ["10.0.0.1", "=>"]
    assert lines[first + 1].split()[0:2] == ["10.0.0.2", "<="]
    assert lines[first].split()[-2:] == ["4.0", "kB"]
    assert "udp/53 (domain)" in out and "tcp/80 (http)" in out


def test_text_writes_every_size_in_one_unit_spelling(small_pcap: Path) -> None:
    out = stats(small_pcap, "--format", "text")
    # 10 TCP packets of 54 bytes: 540 bytes, written "540 B" like "4.0 kB" beside it, never "540 Bytes".
    assert "tcp/80 (http) 540 B" in out
    assert "udp/53 (domain) 4.0 kB" in out
    assert "Byte" not in out
