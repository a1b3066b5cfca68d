"""IPFIX export: the encoder's wire format, when flows finish, and nfcapd/nfdump reading what retrotap sends.

The collector is Debian's nfcapd bound to 127.0.0.1 on a free UDP port; nothing leaves loopback.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from capture_backend.analysis.services import proto_name
from capture_backend.analysis.tables import NS, CounterLimits
from capture_backend.engine import Counting, Snapshot, file_statuses
from capture_backend.exporters.ipfix import (
    ACTIVE_TIMEOUT,
    FIELD_SPECIFIER,
    FLOW_IPV4_FIELDS,
    FLOW_IPV4_TEMPLATE_ID,
    FLOW_IPV6_FIELDS,
    FLOW_IPV6_TEMPLATE_ID,
    FLOW_RECORD_IPV4,
    FLOW_RECORD_IPV6,
    FORCED_END,
    IDLE_TIMEOUT,
    LACK_OF_RESOURCES,
    MESSAGE_HEADER,
    NOT_MEASURED,
    OPTIONS_TEMPLATE_RECORD_HEADER,
    SET_HEADER,
    STATISTICS_FIELDS,
    STATISTICS_RECORD,
    STATISTICS_SCOPE,
    STATISTICS_TEMPLATE_ID,
    TEMPLATE_RECORD_HEADER,
    Encoder,
    Finished,
    FlowTracker,
    flow_records,
)
from tests.helpers.cli import retrotap_cmd
from tests.helpers.latency import exchanges
from tests.helpers.metrics import http_get, parse
from tests.helpers.tcp_health import all_frames
from tests.lab import REPO_ROOT, Lab, wait_for_output
from tests.pcapgen import T0_NS, block_of, write_mixed, write_pcap

NFCAPD, NFDUMP = shutil.which("nfcapd"), shutil.which("nfdump")
needs_nfdump = pytest.mark.skipif(NFCAPD is None or NFDUMP is None, reason="needs nfcapd and nfdump (apt nfdump)")
PROTO_NUMBERS = {proto_name(p): p for p in range(256)}


# -- the wire format ------------------------------------------------------------------------------


def sets_of(message: bytes) -> list[tuple[int, bytes]]:
    """(set id, body with its padding) of each Set of a Message, checking the lengths add up."""
    out = []
    at = MESSAGE_HEADER.size
    while at < len(message):
        set_id, length = SET_HEADER.unpack_from(message, at)
        assert length >= SET_HEADER.size and at + length <= len(message)
        out.append((set_id, message[at + SET_HEADER.size : at + length]))
        at += length
    assert at == len(message)
    return out


def read_specs(body: bytes, at: int, n: int) -> tuple[list[tuple[int, int, int]], int]:
    """n Field Specifiers from `at`: (element id, length, enterprise number or 0), and where they end."""
    specs = []
    for _ in range(n):
        element, length = FIELD_SPECIFIER.unpack_from(body, at)
        at += FIELD_SPECIFIER.size
        enterprise = 0
        if element & 0x8000:
            (enterprise,) = struct.unpack_from("!I", body, at)
            at += 4
        specs.append((element & 0x7FFF, length, enterprise))
    return specs, at


def test_template_message_layout() -> None:
    enc = Encoder(domain=7, clock=lambda: 1_700_000_123.9)
    msg = enc.templates()
    version, length, export_time, sequence, domain = MESSAGE_HEADER.unpack_from(msg)
    assert (version, length, export_time, sequence, domain) == (10, len(msg), 1_700_000_123, 0, 7)
    (tid, tbody), (oid, obody) = sets_of(msg)
    assert (tid, oid) == (2, 3)
    at = 0
    for template_id, fields in ((FLOW_IPV4_TEMPLATE_ID, FLOW_IPV4_FIELDS), (FLOW_IPV6_TEMPLATE_ID, FLOW_IPV6_FIELDS)):
        assert TEMPLATE_RECORD_HEADER.unpack_from(tbody, at) == (template_id, len(fields))
        specs, at = read_specs(tbody, at + TEMPLATE_RECORD_HEADER.size, len(fields))
        assert specs == [(f.id, f.length, f.enterprise) for f in fields]
        assert [s for s in specs if s[2]] == [(n, 4, 32473) for n in range(1, 10)]  # retrotap's elements
    assert at == len(tbody) and template_id >= 256
    fields = (*STATISTICS_SCOPE, *STATISTICS_FIELDS)
    assert OPTIONS_TEMPLATE_RECORD_HEADER.unpack_from(obody) == (STATISTICS_TEMPLATE_ID, len(fields), 1)
    specs = [FIELD_SPECIFIER.unpack_from(obody, 6 + 4 * i) for i in range(len(fields))]
    assert specs == [(149, 4), (41, 8), (42, 8), (164, 8), (166, 8)]
    assert len(obody) == -(-(6 + 4 * len(fields)) // 4) * 4  # padded to 4 octets
    assert obody[6 + 4 * len(fields) :] == bytes(len(obody) - 6 - 4 * len(fields))
    # The record layouts agree with the templates.
    assert FLOW_RECORD_IPV4.size == sum(f.length for f in FLOW_IPV4_FIELDS) == 88
    assert FLOW_RECORD_IPV6.size == sum(f.length for f in FLOW_IPV6_FIELDS) == 112
    assert STATISTICS_RECORD.size == sum(f.length for f in fields)


def test_data_messages_split_number_and_pad() -> None:
    enc = Encoder(domain=3)
    enc.templates()  # template records do not count in the sequence
    odd = bytes(range(1, 8)) * 300  # records of 7 octets: sets of them need padding
    runs = [(300, odd, 7), (FLOW_IPV4_TEMPLATE_ID, bytes(52) * 60, 52)]
    messages = enc.data(runs)
    records = 0
    sent_odd = b""
    for msg in messages:
        version, length, _, sequence, domain = MESSAGE_HEADER.unpack_from(msg)
        assert (version, length, domain) == (10, len(msg), 3)
        assert len(msg) <= 1400
        assert sequence == records
        for set_id, body in sets_of(msg):
            size = 7 if set_id == 300 else 52
            assert len(body) % 4 == 0 and len(body) - len(body) // size * size < 4
            count = len(body) // size
            records += count
            assert body[count * size :] == bytes(len(body) - count * size)
            if set_id == 300:
                sent_odd += body[: count * size]
    assert records == 360 and sent_odd == odd
    # 197 + 103 records of 7 octets (1 and 3 octets of padding), then 12 + 26 + 22 of 52: as full as allowed.
    assert [len(m) for m in messages] == [16 + 4 + 1380, 16 + 4 + 724 + 4 + 12 * 52, 16 + 4 + 26 * 52, 16 + 4 + 22 * 52]
    assert [len(sets_of(m)) for m in messages] == [1, 2, 1, 1]
    assert enc.sequence == 360 and enc.records == 360 and enc.messages == 5
    stats = enc.statistics(ignored_packets=11, not_sent_flows=2)
    assert MESSAGE_HEADER.unpack_from(stats)[3] == 360
    ((set_id, body),) = sets_of(stats)
    assert set_id == STATISTICS_TEMPLATE_ID
    assert STATISTICS_RECORD.unpack_from(body) == (3, 6, 360, 11, 2)
    assert enc.sequence == 361


def finished(keys: list[bytes], packets: list[tuple[int, int]], nbytes: list[tuple[int, int]]) -> Finished:
    n = len(keys)
    return Finished(
        keys=np.frombuffer(b"".join(keys), np.uint8).reshape(n, 40),
        packets=np.array(packets, np.int64),
        bytes=np.array(nbytes, np.int64),
        start_ns=np.array([T0_NS + 1_234_567] * n, np.int64),
        end_ns=np.array([T0_NS + 9_999_999_999] * n, np.int64),
        tcp_flags=np.array([0x12] * n, np.uint8),
        reason=np.array([IDLE_TIMEOUT] * n, np.uint8),
    )


def flow_key(a: str, b: str, aport: int, bport: int, proto: int) -> bytes:
    def addr(text: str) -> bytes:
        ip = ipaddress.ip_address(text)
        return ip.packed if ip.version == 6 else bytes(10) + b"\xff\xff" + ip.packed

    return addr(a) + addr(b) + aport.to_bytes(2, "big") + bport.to_bytes(2, "big") + bytes([proto, 0, 0, 0])


def test_flow_records_one_per_direction_that_sent() -> None:
    rows = finished(
        [flow_key("10.0.0.1", "10.0.0.2", 1000, 53, 17), flow_key("2001:db8::1", "2001:db8::2", 0, 0, 58)],
        [(3, 2), (0, 4)],
        [(300, 200), (0, 416)],
    )
    runs = flow_records(rows, ifindex=9)
    assert [(tid, size) for tid, _, size in runs] == [(FLOW_IPV4_TEMPLATE_ID, 88), (FLOW_IPV6_TEMPLATE_ID, 112)]
    v4 = [FLOW_RECORD_IPV4.unpack_from(runs[0][1], i * 88) for i in range(len(runs[0][1]) // 88)]
    unmeasured = (0, 0, 0, 0, 0, NOT_MEASURED, 0, NOT_MEASURED, NOT_MEASURED)  # a tracker without those columns
    start_ms, end_ms = (T0_NS + 1_234_567) // 10**6, (T0_NS + 9_999_999_999) // 10**6
    a, b = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    assert v4 == [
        (a, b, 1000, 53, 17, 0x12, 9, 300, 3, start_ms, end_ms, IDLE_TIMEOUT, *unmeasured),
        (b, a, 53, 1000, 17, 0x12, 9, 200, 2, start_ms, end_ms, IDLE_TIMEOUT, *unmeasured),
    ]
    v6 = FLOW_RECORD_IPV6.unpack(runs[1][1])
    assert v6[:2] == (ipaddress.ip_address("2001:db8::2").packed, ipaddress.ip_address("2001:db8::1").packed)
    assert v6[2:] == (0, 0, 58, 0x12, 9, 416, 4, start_ms, end_ms, IDLE_TIMEOUT, *unmeasured)


# -- when flows finish ----------------------------------------------------------------------------


def udp_frame(src: str, dst: str, sport: int, dport: int, size: int = 10) -> bytes:
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / UDP(sport=sport, dport=dport) / bytes(size)
    )


class Feed:
    """A file-like Counting fed second by second; each snapshot's clock is its newest packet's time."""

    def __init__(self, limits: CounterLimits | None = None) -> None:
        self.counting = Counting(limits or CounterLimits(), False, "", time.time)

    def add(self, packets: list[tuple[bytes, int]]) -> Snapshot:
        if packets:
            frames, ts = zip(*packets, strict=True)
            self.counting.add(block_of(list(frames), ts_ns=list(ts)))
        return self.counting.freeze(file_statuses(self.counting), 0.0, {})


def test_idle_active_and_final_exports() -> None:
    fwd = udp_frame("10.0.0.1", "10.0.0.2", 1000, 2000)
    rev = udp_frame("10.0.0.2", "10.0.0.1", 2000, 1000)
    short = udp_frame("10.0.0.3", "10.0.0.4", 3000, 4000)
    feed, tracker = Feed(), FlowTracker(idle_s=15, active_s=60)
    exported: list[tuple[int, Finished]] = []
    for sec in range(101):
        t = T0_NS + sec * NS
        pkts = [(fwd, t)] + ([(rev, t)] if sec % 10 == 0 else []) + ([(short, t)] if sec < 3 else [])
        snap = feed.add(pkts)
        done = tracker.update(snap, final=sec == 100)
        if len(done):
            exported.append((sec, done))
    rows = [
        (sec, int(d.keys[i, 35]), d.packets[i].tolist(), int(d.start_ns[i]), int(d.end_ns[i]), int(d.reason[i]))
        for sec, d in exported
        for i in range(len(d))
    ]
    port_4000 = [r for r in rows if r[1] == 4000 % 256]
    # The short flow: idle from second 2, so due at second 17 (15 s idle), once.
    assert port_4000 == [(17, 4000 % 256, [3, 0], T0_NS, T0_NS + 2 * NS, IDLE_TIMEOUT)]
    long = [r for r in rows if r[1] == 2000 % 256]
    # The long flow: its record is due after 60 s active, then counting goes on until the end.
    assert long == [
        (60, 2000 % 256, [61, 7], T0_NS, T0_NS + 60 * NS, ACTIVE_TIMEOUT),
        # The second record's packets came after the snapshot that closed the first (at 60 s).
        (100, 2000 % 256, [40, 4], T0_NS + 60 * NS + 1, T0_NS + 100 * NS, FORCED_END),
    ]
    final = feed.counting.counters
    assert sum(int(d.packets.sum()) for _, d in exported) == final.packets
    assert sum(int(d.bytes.sum()) for _, d in exported) == final.bytes


def test_evicted_flows_are_exported_and_unseen_ones_counted() -> None:
    flows = [udp_frame("10.0.1.1", "10.0.1.2", 5000 + i, 53) for i in range(5)]
    feed, tracker = Feed(CounterLimits(flows=2)), FlowTracker(idle_s=15, active_s=60)
    t = T0_NS
    tracker.update(feed.add([(flows[0], t), (flows[1], t + 1)]))
    # A third flow evicts the one seen longest ago: its counts are due at once.
    snap = feed.add([(flows[2], t + 2 * NS)])
    done = tracker.update(snap)
    assert len(done) == 1 and int(done.keys[0, 32]) << 8 | int(done.keys[0, 33]) == 5000
    assert done.packets.tolist() == [[1, 0]] and int(done.reason[0]) == LACK_OF_RESOURCES
    assert tracker.not_sent(snap.flows) == 0
    # Three new flows in one batch for a table of two: one never gets a row, so no snapshot shows it.
    snap = feed.add([(flows[3], t + 3 * NS), (flows[4], t + 3 * NS + 1), (flows[0], t + 3 * NS + 2)])
    tracker.update(snap)
    assert snap.flows.evicted - tracker.vanished == 1 == tracker.not_sent(snap.flows)


# -- nfcapd and nfdump --------------------------------------------------------------------------


@dataclass
class Collector:
    port: int
    directory: Path
    proc: subprocess.Popen[str]
    log: Path

    def stop(self) -> str:
        """SIGTERM (nfcapd writes out its file), wait, return what it logged."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.log.read_text()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture
def nfcapd(tmp_path: Path) -> Iterator[Collector]:
    """nfcapd on 127.0.0.1:<free port>, writing to a temp directory; stopped in teardown."""
    assert NFCAPD is not None
    directory = tmp_path / "flows"
    directory.mkdir()
    log = tmp_path / "nfcapd.log"
    port = free_udp_port()
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [NFCAPD, "-b", "127.0.0.1", "-p", str(port), "-w", str(directory), "-t", "3600", "-B", "4000000"],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=subprocess.STDOUT,
            text=True,
        )
    collector = Collector(port, directory, proc, log)
    try:
        deadline = time.monotonic() + 10
        while not port_taken(port):
            assert proc.poll() is None, f"nfcapd exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"nfcapd did not bind: {log.read_text()}"
            time.sleep(0.05)
        yield collector
    finally:
        collector.stop()


def nfdump_flows(directory: Path) -> list[dict[str, Any]]:
    assert NFDUMP is not None
    proc = subprocess.run(
        [NFDUMP, "-R", str(directory), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TZ": "UTC"},
    )
    assert proc.returncode == 0, proc.stderr
    flows: list[dict[str, Any]] = json.loads(proc.stdout)
    return flows


def epoch_ms(text: str) -> int:
    when = datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC)
    return round(when.timestamp() * 1000)


def norm(addr: str) -> str:
    return str(ipaddress.ip_address(addr))


Tuple5 = tuple[str, int, str, int, int]


def collected(flows: list[dict[str, Any]]) -> dict[Tuple5, list[int]]:
    """nfdump's records summed per directional 5-tuple: [packets, bytes, first ms, last ms]."""
    out: dict[Tuple5, list[int]] = {}
    for f in flows:
        assert f["type"] == "FLOW"
        src, dst = norm(f.get("src4_addr") or f["src6_addr"]), norm(f.get("dst4_addr") or f["dst6_addr"])
        dport = f.get("dst_port", f.get("icmp_type", 0) << 8 | f.get("icmp_code", 0))
        key = (src, f.get("src_port", 0), dst, dport, f["proto"])
        row = out.setdefault(key, [0, 0, 2**63, 0])
        row[0] += f["in_packets"]
        row[1] += f["in_bytes"]
        row[2] = min(row[2], epoch_ms(f["first"]))
        row[3] = max(row[3], epoch_ms(f["last"]))
    return out


def expected(rec: dict[str, Any]) -> dict[Tuple5, list[int]]:
    """retrotap's own flow rows as directional 5-tuples: [packets, bytes, first ms, last ms]."""
    out: dict[Tuple5, list[int]] = {}
    for f in rec["flows"]:
        proto = PROTO_NUMBERS[f["proto"]]
        first_ms, last_ms = round(f["first"] * 10**6) // 1000, round(f["last"] * 10**6) // 1000  # µs pcap
        for src, sport, dst, dport, way in (
            (f["src"], f["sport"], f["dst"], f["dport"], "src_to_dst"),
            (f["dst"], f["dport"], f["src"], f["sport"], "dst_to_src"),
        ):
            if f[f"{way}_packets"]:
                out[(norm(src), sport, norm(dst), dport, proto)] = [
                    f[f"{way}_packets"],
                    f[f"{way}_bytes"],
                    first_ms,
                    last_ms,
                ]
    return out


def run_stats(*args: str) -> list[dict[str, Any]]:
    proc = subprocess.run([*retrotap_cmd(), "stats", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return [json.loads(line) for line in proc.stdout.splitlines()]


@needs_nfdump
@pytest.mark.parametrize("extra", [(), ("--interval", "1", "--ipfix-active", "5", "--ipfix-idle", "2")])
def test_nfdump_reads_every_flow(nfcapd: Collector, tmp_path: Path, extra: tuple[str, ...]) -> None:
    """Each direction of each flow: packets, bytes, first and last ms as nfdump stores them."""
    pcap = tmp_path / "mix.pcap"
    write_mixed(pcap, seed=5, n=3000)
    target = f"127.0.0.1:{nfcapd.port}"
    recs = run_stats("-r", str(pcap), "--format", "json", "--top", "0", "--ipfix", target, "--sensor-id", "7", *extra)
    log = nfcapd.stop()
    assert "Observation domain 7 from: 127.0.0.1" in log, log
    assert "Sequence Errors: 0, Bad Packets: 0" in log, log
    flows = nfdump_flows(nfcapd.directory)
    want = expected(recs[-1])
    got = collected(flows)
    assert got == want
    assert len(want) > 300 and any(":" in k[0] for k in want)  # IPv4 and IPv6 both exported
    if extra:  # active and idle timeouts split flows into several records
        assert len(flows) > len(want)
    else:
        assert len(flows) == len(want)


# -- live: an idle flow leaves while capture goes on ------------------------------------------------


def lab_port(lab: Lab, kind: int) -> int:
    def pick() -> int:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    return lab.run_in_ns("a", pick)


def lab_metric(lab: Lab, port: int, name: str) -> float | None:
    text = lab.run_in_ns("a", lambda: http_get(f"http://127.0.0.1:{port}/metrics").decode(), timeout=10)
    return parse(text).get((name, ()))


@pytest.mark.live
@needs_nfdump
def test_live_idle_flow_reaches_nfcapd(lab: Lab, tmp_path: Path) -> None:
    """A live flow idle for --ipfix-idle is exported while capture runs, with the veth's ifindex."""
    assert NFCAPD is not None
    flows_dir, log = tmp_path / "flows", tmp_path / "nfcapd.log"
    flows_dir.mkdir()
    collector_port, metrics_port = lab_port(lab, socket.SOCK_DGRAM), lab_port(lab, socket.SOCK_STREAM)
    with open(log, "w") as err:
        nfcapd = lab.popen_a(
            [NFCAPD, "-b", "127.0.0.1", "-p", str(collector_port), "-w", str(flows_dir), "-t", "3600"],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 10
    while not lab.run_in_ns("a", lambda: port_taken(collector_port)):
        assert nfcapd.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    out_path = tmp_path / "stats.json"
    with open(out_path, "w") as out:
        stats = lab.popen_a(
            [sys.executable, "-m", "tui.cli", "stats", "-i", lab.veth("a"), "--format", "json", "--interval", "5"]
            + ["--top", "0", "--ipfix", f"127.0.0.1:{collector_port}", "--ipfix-idle", "1", "--sensor-id", "42"]
            + ["--metrics", f"127.0.0.1:{metrics_port}"],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
    wait_for_output(stats, "listening on", timeout=30)
    frame = Ether(dst=lab.mac_a, src=lab.mac_b) / IP(src=lab.ip4_b, dst=lab.ip4_a) / UDP(sport=4000, dport=5000)
    frames = [bytes(frame) + bytes(size) for size in (0, 64, 512)]
    assert lab.send_frames(frames, repeat=100) == 300
    deadline = time.monotonic() + 20
    while lab_metric(lab, metrics_port, "retrotap_ipfix_flow_records_total") != 1:
        assert time.monotonic() < deadline, "the idle flow was not exported"
        time.sleep(0.25)
    text = nfcapd_stop(nfcapd, log)
    assert "Observation domain 42 from: 127.0.0.1" in text and "Sequence Errors: 0" in text, text
    stats.send_signal(signal.SIGINT)
    _, err = stats.communicate(timeout=30)
    assert stats.returncode == 0 and "Traceback" not in err, err
    (flow,) = [f for f in json.loads(out_path.read_text().splitlines()[-1])["flows"] if f["dport"] == 5000]
    (got,) = nfdump_flows(flows_dir)
    assert (got["src4_addr"], got["src_port"], got["dst4_addr"], got["dst_port"], got["proto"]) == (
        lab.ip4_b,
        4000,
        lab.ip4_a,
        5000,
        17,
    )
    assert got["in_packets"] == 300 == flow["packets"]
    assert got["in_bytes"] == 100 * sum(len(f) for f in frames) == flow["bytes"]
    assert got["input_snmp"] == lab.ifindex("a")
    assert epoch_ms(got["first"]) == int(flow["first"] * 1000) and epoch_ms(got["last"]) == int(flow["last"] * 1000)


def nfcapd_stop(proc: subprocess.Popen[Any], log: Path) -> str:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
    return log.read_text()


# -- Wireshark's IPFIX dissector reads every set, the statistics options record included ---------------


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
def test_wireshark_decodes_templates_records_and_statistics(tmp_path: Path) -> None:
    enc = Encoder(domain=42, clock=lambda: 1_700_000_000)
    rows = finished(
        [flow_key("10.0.0.1", "10.0.0.2", 1000, 53, 17), flow_key("2001:db8::1", "2001:db8::2", 5, 6, 6)],
        [(3, 2), (0, 4)],
        [(300, 200), (0, 416)],
    )
    messages = [enc.templates(), *enc.data(flow_records(rows, ifindex=9)), enc.statistics(11, 2)]
    pcap = tmp_path / "ipfix.pcap"
    wrpcap(
        str(pcap), [Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=40000, dport=4739) / m for m in messages]
    )
    fields = ["cflow.od_id", "cflow.sequence", "cflow.template_id", "cflow.srcaddr", "cflow.srcaddrv6"]
    fields += ["cflow.srcport", "cflow.dstport", "cflow.octets", "cflow.packets", "cflow.inputint"]
    fields += ["cflow.flow_end_reason", "cflow.packetsexp", "cflow.flowsexp", "cflow.ignore_packets"]
    fields += ["cflow.notsent_flows", "_ws.expert"]
    proc = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", "udp.port==4739,cflow", "-T", "fields", "-E", "occurrence=a"]
        + [arg for f in fields for arg in ("-e", f)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [dict(zip(fields, line.split("\t"), strict=True)) for line in proc.stdout.splitlines()]
    templates, flows, stats = lines
    assert (templates["cflow.od_id"], templates["cflow.sequence"]) == ("42", "0")
    assert templates["cflow.template_id"] == "256,257,258"
    assert flows["cflow.srcaddr"] == "10.0.0.1,10.0.0.2" and flows["cflow.srcaddrv6"] == "2001:db8::2"
    assert (flows["cflow.srcport"], flows["cflow.dstport"]) == ("1000,53,6", "53,1000,5")
    assert (flows["cflow.octets"], flows["cflow.packets"]) == ("300,200,416", "3,2,4")
    assert (flows["cflow.inputint"], flows["cflow.flow_end_reason"]) == ("9,9,9", "1,1,1")
    assert stats["cflow.sequence"] == "3" and stats["cflow.od_id"] == "42,42"
    assert (stats["cflow.packetsexp"], stats["cflow.flowsexp"]) == ("3", "3")
    assert (stats["cflow.ignore_packets"], stats["cflow.notsent_flows"]) == ("11", "2")
    assert all(line["_ws.expert"] == "" for line in lines)  # no malformed or unexpected field


# -- retrotap's enterprise elements carry what the session store keeps for the same flows -----------------


def decode_ipfix(messages: list[bytes]) -> list[dict[str, Any]]:
    """Every flow Data Record of the messages, decoded by the templates they carry (a collector's reading),
    fields named by the exporter's element lists."""
    names = {(f.id, f.enterprise): f.name for f in (*FLOW_IPV4_FIELDS, *FLOW_IPV6_FIELDS)}
    templates: dict[int, list[tuple[str, int]]] = {}
    out = []
    for msg in messages:
        for set_id, body in sets_of(msg):
            if set_id == 2:
                at = 0
                while at + TEMPLATE_RECORD_HEADER.size <= len(body):
                    tid, n = TEMPLATE_RECORD_HEADER.unpack_from(body, at)
                    if tid == 0:
                        break  # padding
                    specs, at = read_specs(body, at + TEMPLATE_RECORD_HEADER.size, n)
                    templates[tid] = [(names[(e, pen)], length) for e, length, pen in specs]
            elif set_id in (FLOW_IPV4_TEMPLATE_ID, FLOW_IPV6_TEMPLATE_ID):
                fields = templates[set_id]
                size = sum(length for _, length in fields)
                for start in range(0, len(body) - size + 1, size):
                    rec, at = {}, start
                    for name, length in fields:
                        raw = body[at : at + length]
                        at += length
                        rec[name] = str(ipaddress.ip_address(raw)) if "Address" in name else int.from_bytes(raw, "big")
                    out.append(rec)
    return out


def test_enterprise_elements_equal_the_session_store(tmp_path: Path) -> None:
    pcap = tmp_path / "health.pcap"
    write_pcap(pcap, sorted(exchanges() + all_frames(), key=lambda f: f.ts_ns), nanosecond=True)
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    collector.bind(("127.0.0.1", 0))
    port = collector.getsockname()[1]
    try:
        run_stats("-r", str(pcap), "--format", "json", "--sessions", str(tmp_path), "--ipfix", f"127.0.0.1:{port}")
        messages = []
        collector.settimeout(2.0)  # the run has ended: what it sent is in the socket's buffer
        while True:
            try:
                messages.append(collector.recv(65535))
            except TimeoutError:
                break
    finally:
        collector.close()
    records = decode_ipfix(messages)
    db = sqlite3.connect(tmp_path / "retrotap-sessions.sqlite")
    db.row_factory = sqlite3.Row
    store = [dict(r) for r in db.execute("SELECT * FROM sessions")]
    db.close()
    assert len(store) > 10 and sum(r["retrans"] for r in store) > 0 and sum(r["exchanges"] for r in store) > 0

    def key(src: str, sport: int, dst: str, dport: int, proto: int) -> tuple[str, int, str, int, int]:
        return (src, sport, dst, dport, proto)

    carried: dict[tuple[str, int, str, int, int], list[dict[str, Any]]] = {}
    for rec in records:
        src = rec.get("sourceIPv4Address", rec.get("sourceIPv6Address"))
        dst = rec.get("destinationIPv4Address", rec.get("destinationIPv6Address"))
        k = key(src, rec["sourceTransportPort"], dst, rec["destinationTransportPort"], rec["protocolIdentifier"])
        carried.setdefault(k, []).append(rec)
    not_measured = 0xFFFFFFFF
    checked = 0
    for s in store:
        src, dst = str(ipaddress.ip_address(s["src"])), str(ipaddress.ip_address(s["dst"]))
        client = carried.get(key(src, s["sport"], dst, s["dport"], s["proto"]), [])
        server = carried.get(key(dst, s["dport"], src, s["sport"], s["proto"]), [])
        assert len(client) == (s["src_packets"] > 0) and len(server) == (s["dst_packets"] > 0), s
        (rec,) = client or server  # the elements ride on the client's record (the server's if it alone sent)
        others = server if client else []
        got = (
            rec["tcpRetransmissions"],
            rec["tcpOutOfOrder"],
            rec["tcpDuplicateAcks"],
            rec["tcpZeroWindows"],
            rec["tcpResets"],
            rec["tcpHandshakeRttMicroseconds"],
            rec["applicationExchanges"],
            rec["applicationLatencyMeanMicroseconds"],
            rec["applicationLatencyMaxMicroseconds"],
            rec["flowStartMilliseconds"],
            rec["flowEndMilliseconds"],
        )
        want = (
            s["retrans"],
            s["ooo"],
            s["dupacks"],
            s["zero_windows"],
            s["resets"],
            not_measured if s["rtt_us"] is None else s["rtt_us"],
            s["exchanges"],
            not_measured if s["latency_avg_us"] is None else s["latency_avg_us"],
            not_measured if s["latency_max_us"] is None else s["latency_max_us"],
            s["start_ns"] // 10**6,
            s["end_ns"] // 10**6,
        )
        assert got == want, (s, rec)
        for other in others:  # the other direction's record: nothing counted twice
            assert other["tcpRetransmissions"] == other["applicationExchanges"] == 0
            assert other["tcpHandshakeRttMicroseconds"] == not_measured
        checked += 1
    assert checked == len(store) and len(records) == sum((s["src_packets"] > 0) + (s["dst_packets"] > 0) for s in store)
