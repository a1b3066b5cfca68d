"""Prometheus /metrics: exact values scraped over HTTP, and a real Prometheus scraping live capture.

Every server here binds loopback: the file tests' /metrics on 127.0.0.1, and in the live test
both retrotap and Prometheus inside the lab's namespace a, queried from a thread in that namespace.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from capture_backend.capture.netlink import LinkInfo, LinkStats
from capture_backend.engine import IfaceStatus
from capture_backend.exporters.metrics import (
    Extra,
    MetricsServer,
    SnapshotCollector,
    coverage,
    exposure_warning,
)
from capture_backend.replay import FileEngine
from tests.helpers.cli import retrotap_cmd
from tests.helpers.metrics import http_get, parse
from tests.lab import REPO_ROOT, Lab, wait_for_output
from tests.pcapgen import write_mixed

PROMETHEUS = shutil.which("prometheus")


def stats_json(path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [*retrotap_cmd(), "stats", "-r", str(path), "--format", "json", "--top", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rec: dict[str, Any] = json.loads(proc.stdout)
    return rec


def test_scrape_of_a_replayed_file(tmp_path: Path) -> None:
    """Values served over HTTP equal the file's own figures and `retrotap stats -r`'s record."""
    pcap = tmp_path / "mix.pcap"
    frames = write_mixed(pcap, seed=2, n=1500)
    engine = FileEngine(str(pcap))
    engine.open()
    engine.start()
    assert engine.wait(60)
    engine.close()
    server = MetricsServer(SnapshotCollector(lambda: engine.snapshot, top=3), "127.0.0.1", 0)
    server.start()
    try:
        assert server.port > 0
        samples = parse(http_get(f"http://127.0.0.1:{server.port}/metrics").decode())
    finally:
        server.stop()
    rec = stats_json(pcap)
    iface = (("interface", "mix.pcap"),)
    assert samples[("retrotap_packets_total", iface)] == len(frames) == rec["totals"]["packets"]
    assert samples[("retrotap_bytes_total", iface)] == sum(f.wirelen for f in frames) == rec["totals"]["bytes"]
    assert samples[("retrotap_malformed_total", ())] == rec["totals"]["malformed"] > 0
    assert samples[("retrotap_flows_active", ())] == rec["flow_table"]["active"] == len(rec["flows"]) > 100
    assert samples[("retrotap_flows_evicted_total", ())] == 0
    # Ring counters and coverage exist for live capture only.
    assert not any(name.startswith(("retrotap_kernel_drops", "retrotap_coverage")) for name, _ in samples)
    # Top 3 hosts and ports by bytes, nothing more: label cardinality is bounded.
    hosts = {labels for name, labels in samples if name == "retrotap_host_bytes_total"}
    assert len(hosts) == 3 * 2
    for row in rec["hosts"][:3]:
        for d in ("tx", "rx"):
            labels = (("direction", d), ("host", row["addr"]))
            assert samples[("retrotap_host_bytes_total", labels)] == row[f"{d}_bytes"]
            assert samples[("retrotap_host_packets_total", labels)] == row[f"{d}_packets"]
    ports = [labels for name, labels in samples if name == "retrotap_port_bytes_total"]
    assert len(ports) == 3 * 2
    for row in rec["ports"][:3]:
        base = (("port", str(row["port"])), ("proto", row["proto"]), ("service", row["service"]))
        for d in ("to_port", "from_port"):
            labels = tuple(sorted((*base, ("direction", d))))
            assert samples[("retrotap_port_bytes_total", labels)] == row[f"{d}_bytes"]


def test_extra_counters_hook(tmp_path: Path) -> None:
    pcap = tmp_path / "small.pcap"
    write_mixed(pcap, seed=3, n=50)
    engine = FileEngine(str(pcap))
    engine.open()
    engine.start()
    assert engine.wait(60)
    engine.close()
    held = [7]
    collector = SnapshotCollector(lambda: engine.snapshot, top=0)
    collector.extra["recorder_files_total"] = Extra("Files written", lambda: 4)
    collector.extra["timemachine_packets"] = Extra("Packets held", lambda: held[0], "gauge")
    server = MetricsServer(collector, "127.0.0.1", 0)
    server.start()
    try:
        text = http_get(f"http://127.0.0.1:{server.port}/metrics").decode()
        held[0] = 9
        again = parse(http_get(f"http://127.0.0.1:{server.port}/metrics").decode())
    finally:
        server.stop()
    samples = parse(text)
    assert samples[("retrotap_recorder_files_total", ())] == 4
    assert samples[("retrotap_timemachine_packets", ())] == 7
    assert again[("retrotap_timemachine_packets", ())] == 9
    assert "# TYPE retrotap_timemachine_packets gauge" in text
    assert not any(name.startswith(("retrotap_host", "retrotap_port")) for name, _ in samples)  # --metrics-top 0


def iface(packets: int, received: int, rx: int | None, tx: int = 0, arphrd: int = 1) -> IfaceStatus:
    link = None
    if rx is not None:
        stats = LinkStats(0, 0, rx, tx, 0, 0, 0, 0, 0, 0, 0)
        link = LinkInfo(3, "x", arphrd, True, True, "up", stats)
    return IfaceStatus("x", "up", "", packets, 0, received, 0, 0, link)


def test_coverage_ratio() -> None:
    # Link counters: rx + tx on Ethernet, rx only on lo (the ring keeps only the received copy there).
    assert coverage(iface(190, 500, 150, 50), iface(0, 0, 0, 0)) == 190 / 200
    assert coverage(iface(150, 500, 150, 150, arphrd=772), iface(0, 0, 0, 0, arphrd=772)) == 1.0
    # No link counters: what the ring received.
    assert coverage(iface(90, 100, None), iface(10, 0, None)) == 0.8
    assert coverage(iface(10, 0, 5, 5), iface(10, 0, 5, 5)) == 1.0  # nothing passed, nothing missed


def test_exposure_warning() -> None:
    for host in ("127.0.0.1", "127.0.0.9", "::1", "localhost"):
        assert exposure_warning(host, 9477) is None
    for host in ("0.0.0.0", "::", "198.18.0.1"):
        warning = exposure_warning(host, 9477)
        assert warning is not None and warning.startswith("warning: --metrics") and "\n" not in warning


@pytest.mark.parametrize(
    "args, message",
    [
        (("--metrics", "70000"), "--metrics '70000': the port must be from 1 to 65535"),
        (("--metrics", "::1:9477"), "write an IPv6 address in brackets"),
        (("--metrics", ":9477"), "no address before"),
        (("--metrics-top", "5000"), "--metrics-top 5000: at most 1000"),
        (("--ipfix", "127.0.0.1:x"), "the port must be from 1 to 65535"),
        (("--sensor-id", str(2**32)), "must fit in 32 bits"),
        (("--ipfix-active", "0"), "--ipfix-active must be greater than 0"),
        (("--ipfix", "[::1]:0"), "the port must be from 1 to 65535"),
    ],
)
def test_bad_exporter_options(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    pcap = tmp_path / "small.pcap"
    write_mixed(pcap, seed=3, n=10)
    proc = subprocess.run(
        [*retrotap_cmd(), "stats", "-r", str(pcap), "--format", "json", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("retrotap: error: ") and message in lines[0], proc.stderr
    assert proc.stdout == ""


def test_metrics_port_in_use(tmp_path: Path) -> None:
    pcap = tmp_path / "small.pcap"
    write_mixed(pcap, seed=3, n=10)
    server = MetricsServer(SnapshotCollector(lambda: FileEngine(str(pcap)).snapshot), "127.0.0.1", 0)
    server.start()
    try:
        proc = subprocess.run(
            [*retrotap_cmd(), "stats", "-r", str(pcap), "--metrics", f"127.0.0.1:{server.port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.stop()
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"retrotap: error: --metrics 127.0.0.1:{server.port}: Address already in use"]


# -- a real Prometheus scraping live capture, in the lab's namespace a ------------------------------


def free_port(lab: Lab) -> int:
    import socket

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    return lab.run_in_ns("a", pick)


def query(lab: Lab, port: int, expr: str) -> list[dict[str, Any]]:
    """An instant query to the Prometheus inside namespace a."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(lab.run_in_ns("a", lambda: http_get(url), timeout=10))
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_value(lab: Lab, port: int, expr: str, want: float, timeout: float = 45.0) -> float:
    """Poll an instant query (bounded in time) until its one value equals `want`; return the last value."""
    deadline = time.monotonic() + timeout
    value = float("nan")
    while time.monotonic() < deadline:
        result = query(lab, port, expr)
        if len(result) == 1:
            value = float(result[0]["value"][1])
            if value == want:
                return value
        time.sleep(0.5)
    return value


def wait_ready(lab: Lab, port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """Until Prometheus answers /-/ready (bounded in time)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"prometheus exited with {proc.returncode}"
        try:
            lab.run_in_ns("a", lambda: http_get(f"http://127.0.0.1:{port}/-/ready", timeout=2), timeout=5)
            return
        except OSError:
            assert time.monotonic() < deadline, "prometheus not ready"
            time.sleep(0.2)


@pytest.mark.live
@pytest.mark.skipif(PROMETHEUS is None, reason="needs prometheus (apt prometheus)")
def test_prometheus_scrapes_exact_live_counts(lab: Lab) -> None:
    assert PROMETHEUS is not None
    metrics_port, prom_port = free_port(lab), free_port(lab)
    while prom_port == metrics_port:
        prom_port = free_port(lab)
    veth = lab.veth("a")
    stats = lab.popen_a(
        [sys.executable, "-m", "tui.cli", "stats", "-i", veth, "--format", "json", "--interval", "1"]
        + ["--metrics", f"127.0.0.1:{metrics_port}", "--metrics-top", "5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    wait_for_output(stats, "listening on", timeout=30)
    tmp = lab.tmpdir()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: retrotap\n    scrape_interval: 1s\n    scrape_timeout: 1s\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    prometheus = lab.popen_a(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_ready(lab, prom_port, prometheus)
    assert wait_value(lab, prom_port, 'up{job="retrotap"}', 1.0) == 1.0, "Prometheus never scraped retrotap"
    assert prometheus.poll() is None

    frames = [
        bytes(Ether(dst=lab.mac_a, src=lab.mac_b) / IP(src=lab.ip4_b, dst=lab.ip4_a) / UDP(sport=4000, dport=5000))
        + bytes(size)
        for size in (0, 100, 1000)
    ]
    sent = lab.send_frames(frames, repeat=200)
    assert sent == 600
    wire = sum(len(f) for f in frames) * 200

    def series(name: str, **labels: str) -> str:
        return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"

    got = wait_value(lab, prom_port, series("retrotap_packets_total", interface=veth), 600)
    assert got == 600
    assert wait_value(lab, prom_port, series("retrotap_bytes_total", interface=veth), wire) == wire
    host = series("retrotap_host_packets_total", host=lab.ip4_b, direction="tx")
    assert wait_value(lab, prom_port, host, 600) == 600
    assert wait_value(lab, prom_port, series("retrotap_kernel_drops_total", interface=veth), 0) == 0
    # The link counted exactly what was captured (the coverage window ends with the last frame).
    assert wait_value(lab, prom_port, series("retrotap_coverage_ratio", interface=veth), 1.0) == 1.0

    stats.send_signal(signal.SIGINT)
    _, err = stats.communicate(timeout=30)
    assert stats.returncode == 0, err
    assert "Traceback" not in err
