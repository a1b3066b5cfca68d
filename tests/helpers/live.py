"""`retrotap stats` in the netns lab: start it, stop it, read its JSON records; UDP frames to send."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from scapy.all import IP, UDP, Ether, raw

from tests.lab import REPO_ROOT, Lab, wait_for_output

RETROTAP = [sys.executable, "-m", "tui.cli"]


def start_stats(lab: Lab, *args: str, iface: str | None = None) -> subprocess.Popen[str]:
    """Start `retrotap stats` in namespace a and wait until it is capturing."""
    proc = lab.popen_a(
        [*RETROTAP, "stats", "-i", iface or lab.veth("a"), "--format", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    wait_for_output(proc, "listening on", timeout=30)
    return proc


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> list[dict[str, Any]]:
    """Stop retrotap with a signal; return every record it printed."""
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return [json.loads(line) for line in out.splitlines()]


def records(proc: subprocess.Popen[str], timeout: float = 20.0) -> Iterator[dict[str, Any]]:
    """Records as they are printed, until the time bound."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            return
        yield json.loads(line)


def udp(lab: Lab, sport: int, dport: int, payload: int, dst: str = "198.18.0.1") -> bytes:
    return raw(
        Ether(dst=lab.mac_a, src=lab.mac_b)
        / IP(src="198.18.0.2", dst=dst)
        / UDP(sport=sport, dport=dport)
        / (b"u" * payload)
    )
