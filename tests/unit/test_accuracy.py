"""Offline accuracy: `retrotap stats -r` on the mixed capture against tshark, capinfos and tcpdump.

How tshark is made to count what retrotap counts is explained in tests/tshark.py, which holds the
comparison (`check_against_tshark`) shared with the live scene tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import run_retrotap, stats
from tests.pcapgen import NS, mixed_packets, ts_ns, write_mixed, write_pcap
from tests.tshark import TSHARK, capinfos, check_against_tshark, tshark

pytestmark = pytest.mark.skipif(
    TSHARK is None or shutil.which("capinfos") is None or shutil.which("tcpdump") is None,
    reason="needs tshark, capinfos and tcpdump",
)
HOST = "10.1.0.3"  # a host of the mix, for `-f 'host X'`


# -- the mixed capture, once per module ---------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """The mixed capture in every container, and what was written."""

    pcap: Path
    pcap_ns: Path
    pcapng: Path
    packets: int
    bytes: int
    truncated: int


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory) -> Mix:
    d = tmp_path_factory.mktemp("mix")
    frames = write_mixed(d / "mix.pcap")
    write_mixed(d / "mix-ns.pcap", nanosecond=True)
    write_mixed(d / "mix.pcapng", pcapng=True)
    return Mix(
        d / "mix.pcap",
        d / "mix-ns.pcap",
        d / "mix.pcapng",
        len(frames),
        sum(f.wirelen for f in frames),
        sum(f.wirelen > len(f.data) for f in frames),
    )


def test_mixed_capture_is_what_pcapgen_promises(mix: Mix) -> None:
    """tshark reads every record back with caplen < wirelen exactly where pcapgen cut frames."""
    out = tshark(
        mix.pcap, "-T", "fields", "-e", "frame.len", "-e", "frame.cap_len", "-e", "vlan.id", "-e", "frame.protocols"
    )
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == mix.packets == 2000
    assert sum(int(r[0]) for r in rows) == mix.bytes
    assert sum(int(r[0]) > int(r[1]) for r in rows) == mix.truncated >= 3
    protocols = " ".join(r[3] for r in rows)
    for proto in ("tcp", "udp", "dns", "icmp", "icmpv6", "sctp", "arp", "vlan", "ipv6.hopopts", "ipv6.dstopts"):
        assert f":{proto}" in protocols, proto
    assert ":ipv6.routing" in protocols and ":ipv6.fraghdr" in protocols and "ieee8021ad" in protocols
    for path in (mix.pcap_ns, mix.pcapng):
        assert capinfos(path) == (mix.packets, mix.bytes)


def test_generator_is_deterministic() -> None:
    a, b = mixed_packets(7, 300), mixed_packets(7, 300)
    assert [bytes(p) for p in a] == [bytes(p) for p in b]
    assert [ts_ns(p) for p in a] == [ts_ns(p) for p in b]
    assert [ts_ns(p) for p in a] == sorted({ts_ns(p) for p in a})  # strictly increasing
    assert [bytes(p) for p in mixed_packets(8, 300)] != [bytes(p) for p in a]


@pytest.mark.parametrize("variant", ["pcap", "pcap_ns", "pcapng"])
def test_stats_equal_tshark(mix: Mix, variant: str) -> None:
    path: Path = getattr(mix, variant)
    rec = stats(path)
    assert rec["totals"]["malformed"] > 0
    check_against_tshark(rec, path)


TIME_KEYS = (
    "time",
    "interval",
    "first",
    "last",
    "pps",
    "bps",
    "handshake_rtt_ms",
    "ms",
    "avg_ms",
    "max_ms",
    "p50_ms",
    "p95_ms",
)


def without_times(rec: dict[str, Any]) -> dict[str, Any]:
    """A record without what depends on timestamp precision (times, rates, RTTs, latencies) or the
    interface name, tables as sets.

    Rows of equal bytes are ordered by when the table first saw them, which depends on how the
    packets were cut into blocks, so table rows are compared in a canonical order.
    """

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in TIME_KEYS}
        if isinstance(x, list):
            return sorted((strip(v) for v in x), key=lambda v: json.dumps(v, sort_keys=True))
        return x

    out: dict[str, Any] = strip({k: v for k, v in rec.items() if k != "interfaces"})
    return out


def test_containers_give_the_same_counts(mix: Mix) -> None:
    ref = stats(mix.pcap)
    assert without_times(stats(mix.pcap_ns)) == without_times(ref)
    assert without_times(stats(mix.pcapng)) == without_times(ref)
    assert [(i["captured_packets"], i["captured_bytes"]) for i in ref["interfaces"]] == [(mix.packets, mix.bytes)]


def tcpdump_filter(src: Path, expr: str, dst: Path) -> Path:
    """Write the packets of `src` that libpcap's filter `expr` accepts (tcpdump -r -w)."""
    subprocess.run(["tcpdump", "-r", str(src), "-w", str(dst), expr], capture_output=True, check=True, timeout=60)
    return dst


@pytest.mark.parametrize("expr", ["udp", f"host {HOST}", "ip6 and tcp", "vlan"])
def test_filter_equals_tcpdump_then_tshark(mix: Mix, tmp_path: Path, expr: str) -> None:
    """`-f EXPR` counts exactly the packets tcpdump's EXPR keeps, as tshark counts them."""
    filtered = tcpdump_filter(mix.pcap, expr, tmp_path / "filtered.pcap")
    rec = stats(mix.pcap, "-f", expr)
    assert rec["filter"] == expr
    assert 0 < rec["totals"]["packets"] < mix.packets
    check_against_tshark(rec, filtered)
    assert without_times(rec) == without_times(stats(filtered)) | {"filter": expr}


def test_host_filter_keeps_only_that_host(mix: Mix) -> None:
    rec = stats(mix.pcap, "-f", f"host {HOST}")
    assert rec["pairs"] and all(HOST in (p["a"], p["b"]) for p in rec["pairs"])
    host = next(h for h in rec["hosts"] if h["addr"] == HOST)
    assert host["tx_bytes"] + host["rx_bytes"] == sum(p["bytes"] for p in rec["pairs"])


# -- bad input ----------------------------------------------------------------------------------


def one_error_line(proc: subprocess.CompletedProcess[str], prefix: str = "retrotap: error: ") -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(prefix), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pcap"
    proc = run_retrotap("stats", "-r", str(path), "--format", "json")
    assert proc.returncode == 2
    assert str(path) in one_error_line(proc)
    assert proc.stdout == ""


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pcap"
    path.write_bytes(bytes((i * 37 + 11) % 256 for i in range(4096)))
    proc = run_retrotap("stats", "-r", str(path), "--format", "json")
    assert proc.returncode == 2
    assert "not a pcap or pcapng file" in one_error_line(proc)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    proc = run_retrotap("stats", "-r", str(path), "--format", "json")
    assert proc.returncode == 2
    one_error_line(proc)


def test_truncated_file_reports_the_records_read(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    frames = write_mixed(path, seed=3, n=50)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])  # the last record loses its last 10 bytes
    assert len(frames[-1].data) > 10
    proc = run_retrotap("stats", "-r", str(path), "--format", "json", "--top", "0")
    assert proc.returncode == 0, proc.stderr
    line = one_error_line(proc, "retrotap: warning: ")
    assert "truncated" in line and "49 packets" in line
    rec = json.loads(proc.stdout)
    assert rec["totals"]["packets"] == 49
    assert rec["totals"]["bytes"] == sum(f.wirelen for f in frames[:49])
    assert rec["time"] == round(frames[48].ts_ns // 1000 * 1000 / NS, 6)  # the last record read (µs file)


def test_truncated_file_has_the_same_counts_as_the_whole_records(tmp_path: Path) -> None:
    """The records before the cut are counted exactly like a file that ends cleanly after them."""
    whole, clean, cut = tmp_path / "whole.pcap", tmp_path / "clean.pcap", tmp_path / "cut.pcap"
    frames = write_mixed(whole, seed=4, n=300)
    write_pcap(clean, frames[:299])
    cut.write_bytes(whole.read_bytes()[: clean.stat().st_size + 16 + 5])  # then a record header and 5 bytes
    proc = run_retrotap("stats", "-r", str(cut), "--format", "json", "--top", "0")
    assert proc.returncode == 0
    assert "299 packets" in one_error_line(proc, "retrotap: warning: ")
    assert without_times(json.loads(proc.stdout)) == without_times(stats(clean))


def test_bad_filter_reports_libpcaps_message(mix: Mix) -> None:
    expr = "not a filter ((("
    tcpdump = subprocess.run(["tcpdump", "-r", str(mix.pcap), expr], capture_output=True, text=True, timeout=60)
    assert tcpdump.returncode != 0
    message = next(line for line in tcpdump.stderr.splitlines() if line.startswith("tcpdump: "))
    message = message.removeprefix("tcpdump: ")  # "can't parse filter expression: syntax error"
    proc = run_retrotap("stats", "-r", str(mix.pcap), "--format", "json", "-f", expr)
    assert proc.returncode == 2
    assert message in one_error_line(proc)
    assert proc.stdout == ""


def iter_records(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        yield json.loads(line)


def test_interval_records_add_up_to_the_whole(mix: Mix) -> None:
    """With --interval the last record holds every packet, and records are cumulative."""
    proc = run_retrotap("stats", "-r", str(mix.pcap), "--format", "json", "--top", "0", "--interval", "10")
    assert proc.returncode == 0, proc.stderr
    recs = list(iter_records(proc.stdout))
    assert len(recs) >= 6  # ~60 s of packets
    packets = [r["totals"]["packets"] for r in recs]
    assert packets == sorted(packets) and packets[-1] == mix.packets
    assert without_times(recs[-1]) == without_times(stats(mix.pcap))
