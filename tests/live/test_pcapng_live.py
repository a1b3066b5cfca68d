"""Saved pcaps say who, live: `retrotap stats --pcapng` in namespace a, where a real `python3 -m http.server`
listens (the process mapper reads that namespace's sockets); curl downloads from it in b. The SIGUSR1 snapshot
is one pcapng whose frames tshark counts as the time machine's, every frame of the server's connections
commented with its pid and name, no other frame commented; an incident (SIGUSR2) is a pcapng too."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.captures import start_retrotap
from tests.lab import Lab, LabError, wait_for_output
from tests.scenes import quiesce
from tests.tshark import tshark

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("tshark", "curl")), reason="needs tshark and curl"),
]

PORT = 8000
DOWNLOADS = 5
DEADLINE_S = 30.0


def frames(path: Path) -> list[list[str]]:
    """Per frame: interface name, TCP ports, comment."""
    out = tshark(
        path,
        *("-T", "fields", "-E", "occurrence=f"),
        *("-e", "frame.interface_name", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "frame.comment"),
    )
    return [line.split("\t") for line in out.splitlines()]


def saved(stats: subprocess.Popen[str]) -> tuple[Path, int, int]:
    """SIGUSR1; the file written, its packets and how many carry their process."""
    stats.send_signal(signal.SIGUSR1)
    line = wait_for_output(stats, "snapshot:", timeout=30)
    m = re.search(r"snapshot: (\S+) \((\d+) packets, \d+ bytes(?:, (\d+) with their process)?", line)
    assert m is not None, line
    return Path(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def test_stats_pcapng_names_the_http_servers_process(open_lab: Lab, tmp_path: Path) -> None:
    lab = open_lab
    www, snaps, incidents = tmp_path / "www", tmp_path / "snaps", tmp_path / "incidents"
    for d in (www, snaps, incidents):
        d.mkdir()
    (www / "file.bin").write_bytes(random.Random(1).randbytes(30_000))
    server = lab.popen_a(
        [sys.executable, "-u", "-m", "http.server", str(PORT), "--bind", lab.ip4_a, "--directory", str(www)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_output(server, "Serving HTTP", timeout=20, stream="stdout")
    name = psutil.Process(server.pid).name()  # `ip netns exec` and the interpreter exec in place: one pid
    assert name.startswith("python3")
    stats = start_retrotap(
        lab,
        *("stats", "-i", lab.veth_a, "--pcapng", "--format", "json", "--interval", "3600"),
        *("--snapshot-dir", str(snaps), "--incidents", str(incidents), "--post", "0s"),
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"http://{lab.ip4_a}:{PORT}/file.bin"
        for _ in range(DOWNLOADS):
            got = lab.exec_b(["curl", "-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", url])
            assert got.stdout == "200"
        lab.exec_b(["ping", "-c", "3", "-i", "0.2", "-W", "2", lab.ip4_a])  # traffic no process owns
        quiesce(lab)
        # The mapper attributes each connection within about a second: save until every one is named.
        deadline = time.monotonic() + DEADLINE_S
        while True:
            path, packets, commented = saved(stats)
            rows = frames(path)
            server_rows = [r for r in rows if str(PORT) in r[1:3]]
            if all(r[3] for r in server_rows) or time.monotonic() > deadline:
                break
            path.unlink()
            time.sleep(0.5)
        stats.send_signal(signal.SIGUSR2)
        doc = wait_incident(incidents)
        stats.send_signal(signal.SIGINT)
        _, err = stats.communicate(timeout=60)
    finally:
        if stats.poll() is None:
            stats.kill()
            stats.wait()
    assert stats.returncode == 0, err
    assert "Traceback" not in err
    assert path.suffix == ".pcapng" and path.name.startswith(f"retrotap-{lab.veth_a}-")
    assert len(rows) == packets  # tshark's frames are the time machine's packets
    assert {r[0] for r in rows} == {lab.veth_a}
    want = f"process: {server.pid} {name}"
    assert len(server_rows) >= DOWNLOADS * 6  # handshake, request, data, close: each download's connection
    assert [r[3] for r in server_rows] == [want] * len(server_rows)
    assert all(r[3] == "" for r in rows if r not in server_rows)  # ICMP, ARP: no process
    assert commented == len(server_rows)
    # The incident's packets: one pcapng, the server's frames named there too.
    pcap = doc["pcap"]
    assert [f.rsplit(".", 1)[1] for f in pcap["files"]] == ["pcapng"], pcap
    inc_rows = frames(Path(doc["path"]) / pcap["files"][0])
    assert len(inc_rows) == pcap["packets"] and pcap["process_comments"] > 0
    assert {r[3] for r in inc_rows if str(PORT) in r[1:3]} == {want}


def wait_incident(directory: Path) -> dict[str, object]:
    """The incident.json of the one incident in `directory`, once its packets are written."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for inc in directory.glob("incident-*"):
            try:
                doc = json.loads((inc / "incident.json").read_text())
            except (OSError, ValueError):
                continue
            if doc.get("pcap") is not None:
                doc["path"] = str(inc)
                return doc  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise LabError(f"no incident with packets in {directory} after {DEADLINE_S}s")
