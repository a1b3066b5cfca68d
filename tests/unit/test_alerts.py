"""Alert rules and incidents: the rule language, and rules over a capture file with a scan and a flood in it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from capture_backend.exporters.alerts import RuleError, load_rules, parse_rule
from tests.helpers.cli import retrotap_cmd
from tests.pcapgen import Frame, write_pcap

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
SCANNER, TARGET, CLIENT, SERVER = "10.9.9.9", "10.0.0.2", "10.0.0.3", "10.0.0.4"
SCAN_PORTS = 300
FLOOD_SOURCES = 2_000


def frame(pkt: object, t_ns: int) -> Frame:
    data = bytes(pkt)  # type: ignore[call-overload]
    return Frame(data, t_ns, len(data))


def capture(path: Path) -> None:
    """10 s: a steady client/server UDP exchange every 100 ms; from 3 s to 4 s a SYN scan of 300 ports that the
    target answers with RSTs; from 6 s to 7 s a flood of 2,000 new sources at one UDP port."""
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    frames = []
    for k in range(100):
        steady = eth / IP(src=CLIENT, dst=SERVER) / UDP(sport=40000, dport=9000) / (b"x" * 64)
        frames.append(frame(steady, T0 + k * NS // 10))
    for k in range(SCAN_PORTS):
        t = T0 + 3 * NS + k * (NS // SCAN_PORTS)
        frames.append(frame(eth / IP(src=SCANNER, dst=TARGET) / TCP(sport=50000, dport=1 + k, flags="S"), t))
        frames.append(frame(eth / IP(src=TARGET, dst=SCANNER) / TCP(sport=1 + k, dport=50000, flags="RA"), t + 1000))
    for k in range(FLOOD_SOURCES):
        src = f"10.{100 + k // 250}.{k % 250}.1"
        t = T0 + 6 * NS + k * (NS // FLOOD_SOURCES)
        frames.append(frame(eth / IP(src=src, dst=SERVER) / UDP(sport=1024 + k, dport=53) / b"q", t))
    frames.sort(key=lambda f: f.ts_ns)
    write_pcap(path, frames)


def test_rules_read_as_written() -> None:
    r = parse_rule("flood: new_flows > 2k for 3s cooldown 2m")
    assert (r.name, r.metric, r.label, r.op, r.threshold, r.hold_s, r.cooldown_s) == (
        "flood", "new_flows", "", ">", 2000.0, 3.0, 120.0
    )
    r = parse_rule("host_bps{10.0.0.7} >= 50M")
    assert (r.metric, r.label, r.op, r.threshold, r.hold_s) == ("host_bps", "10.0.0.7", ">=", 5e7, 0.0)
    assert parse_rule("coverage{eth0} < 99.5%").threshold == 99.5


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("bogus > 3", "unknown metric 'bogus'"),
        ("new_flows >> 3", "write [NAME:] METRIC"),
        ("new_flows{x} > 3", "new_flows is one number"),
        ("new_flows > 3 for ever", "write [NAME:] METRIC"),
    ],
)
def test_bad_rules_say_why(text: str, says: str) -> None:
    with pytest.raises(RuleError) as e:
        parse_rule(text)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_rules_file(tmp_path: Path) -> None:
    f = tmp_path / "rules.toml"
    f.write_text('[[rule]]\nexpr = "scan_ports > 100"\nname = "scanner"\n[[rule]]\nexpr = "dns_p95_ms > 200 for 5s"\n')
    rules = load_rules(f)
    assert [(r.name, r.metric, r.threshold, r.hold_s) for r in rules] == [
        ("scanner", "scan_ports", 100.0, 0.0),
        ("dns_p95_ms", "dns_p95_ms", 200.0, 5.0),
    ]
    f.write_text("[[rule]]\nexpr = 3\n")
    with pytest.raises(RuleError, match="rule 1 needs expr"):
        load_rules(f)
    f.write_text("not = toml = at all")
    with pytest.raises(RuleError, match="not TOML"):
        load_rules(f)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*retrotap_cmd(), *args], capture_output=True, text=True, timeout=120)


def test_scan_and_flood_rules_freeze_one_incident_each(tmp_path: Path) -> None:
    pcap = tmp_path / "scan.pcap"
    capture(pcap)
    inc = tmp_path / "incidents"
    res = run(
        "stats", "-r", str(pcap), "--interval", "1", "--format", "json", "--incidents", str(inc),
        "--alert", "scan: scan_ports > 100",
        "--alert", "flood: new_flows > 1000",
        "--alert", "never: new_flows > 100000",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in run("incidents", str(inc), "--format", "json").stdout.splitlines()]
    assert [r["rule"] for r in rows] == ["scan", "flood"]
    scan, flood = rows
    # The scanner opened 300 ports in the last 10 s; it is the only source over 100.
    assert scan["top"] == {"label": SCANNER, "value": SCAN_PORTS}
    doc = json.loads((Path(scan["path"]) / "incident.json").read_text())
    assert [r["label"] for r in doc["incident"]["rows"]] == [SCANNER]
    assert doc["incident"]["expr"] == "scan: scan_ports > 100"
    # incident.json holds the moment's record: the target is the top host by packets in that second's table.
    hosts = {h["addr"]: h["packets"] for h in doc["record"]["hosts"]}
    assert hosts[TARGET] == 2 * SCAN_PORTS and hosts[SCANNER] == 2 * SCAN_PORTS
    # A file run has no time machine: the incident says so instead of a pcap.
    assert "time machine is off" in doc["pcap"]["error"]
    # 2,000 new flows (the steady flow is not new) between the last packets before 6 s and before 7 s of the file.
    seconds = (6 * NS + (FLOOD_SOURCES - 1) * (NS // FLOOD_SOURCES) - 59 * NS // 10) / NS
    assert flood["top"]["label"] == "" and flood["top"]["value"] == pytest.approx(FLOOD_SOURCES / seconds)
    assert sorted(p.name.split("-")[-1] for p in inc.iterdir()) == ["flood", "scan"]
    assert "incident scan: 10.9.9.9=300" in res.stderr


def test_bad_rule_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    res = run("stats", "-r", "/dev/null", "--alert", "a: pps > 1", "--alert", "a: bps > 1")
    assert res.returncode == 2
    assert res.stderr.strip() == "retrotap: error: --alert: two rules are named 'a': name them ('NAME: EXPR')"
    res = run("incidents", str(Path(sys.prefix) / "no-such-dir"))
    assert res.returncode == 2 and "no such directory" in res.stderr


def test_watcher_retention_manual_freeze_and_command(tmp_path: Path) -> None:
    from capture_backend.exporters.incidents import IncidentSettings, IncidentWatcher, incident_rows
    from capture_backend.replay import file_snapshots

    pcap = tmp_path / "scan.pcap"
    capture(pcap)
    inc = tmp_path / "incidents"
    log_file = tmp_path / "ran.txt"
    settings = IncidentSettings(
        rules=(parse_rule("scan: scan_ports > 100"), parse_rule("flood: new_flows > 1000")),
        directory=str(inc),
        post_s=0.0,
        on_incident=f"sh -c 'echo \"$1\" >> {log_file}' sh",
        keep=1,
    )
    snaps = list(file_snapshots(str(pcap)))
    current = [snaps[0]]
    said: list[str] = []
    watcher = IncidentWatcher(settings, lambda: current[0], None, said.append)
    watcher.start(thread=False)
    for snap in snaps:
        current[0] = snap
        watcher.step()
    watcher.freeze()
    watcher.step()
    watcher.close()
    # Three incidents (scan, flood, manual) frozen; only the newest kept.
    assert watcher.stats.incidents == 3 and watcher.stats.by_rule == {"scan": 1, "flood": 1, "manual": 1}
    (kept,) = incident_rows(inc)
    assert kept["rule"] == "manual" and kept["top"] is None
    status = watcher.status
    assert [i.rule for i in status.recent] == ["scan", "flood", "manual"] and status.incidents == 3
    # The scan's figures are published with the status: the scanner opened 300 ports in the last 10 s.
    assert status.churn.top_scanners[0] == (SCANNER, float(SCAN_PORTS))
    # --on-incident ran once per incident, with its directory (the processes are detached: wait for them).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not log_file.exists() or len(log_file.read_text().split()) < 3):
        time.sleep(0.05)
    ran = log_file.read_text().split()
    assert sorted(Path(p).name.rsplit("-", 1)[1] for p in ran) == ["flood", "manual", "scan"]
    assert any("incident scan: 10.9.9.9=300" in line for line in said)


def test_incidents_and_churn_in_metrics(tmp_path: Path) -> None:
    from capture_backend.exporters.base import Exporters, ExporterSettings
    from capture_backend.exporters.incidents import IncidentSettings
    from capture_backend.exporters.metrics import MetricsServer, SnapshotCollector
    from capture_backend.replay import file_snapshots
    from tests.helpers.metrics import http_get, parse

    pcap = tmp_path / "scan.pcap"
    capture(pcap)
    snaps = list(file_snapshots(str(pcap)))
    current = [snaps[0]]
    rules = (parse_rule("scan: scan_ports > 100"), parse_rule("never: pps > 10M"))
    settings = ExporterSettings(incidents=IncidentSettings(rules=rules, directory=str(tmp_path / "inc"), post_s=0))
    exporters = Exporters(settings, lambda: current[0], lambda _msg: None, fed=True)
    exporters.start()
    try:
        for snap in snaps[:5]:  # up to the second after the scan
            current[0] = snap
            exporters.offer(snap)
        server = MetricsServer(SnapshotCollector(lambda: current[0], 0, exporters.extra), "127.0.0.1", 0)
        server.start()
        try:
            samples = parse(http_get(f"http://127.0.0.1:{server.port}/metrics").decode())
        finally:
            server.stop()
    finally:
        exporters.stop(current[0])
    assert samples[("retrotap_incidents_total", (("rule", "scan"),))] == 1
    assert samples[("retrotap_alerts_active", (("rule", "scan"),))] == 1
    assert samples[("retrotap_alerts_active", (("rule", "never"),))] == 0
    assert samples[("retrotap_scan_ports", (("source", SCANNER),))] == SCAN_PORTS
    assert samples[("retrotap_source_new_flows", (("source", SCANNER),))] == SCAN_PORTS
    assert samples[("retrotap_half_open_connections", ())] == 0  # every SYN was answered by a RST
    # One interface (the file), no evictions: its new flows a second are all of them.
    per_iface = {dict(labels)["interface"]: v for (name, labels), v in samples.items()
                 if name == "retrotap_interface_new_flows_per_second"}  # fmt: skip
    assert list(per_iface.values()) == [samples[("retrotap_new_flows_per_second", ())]]
    assert samples[("retrotap_new_flows_per_second", ())] > 0
