"""The reference capture of the live tests: tcpdump on veth a, its statistics, a plain pcap reader, and
retrotap started in namespace a and asked for its time machine."""

from __future__ import annotations

import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from tests.lab import REPO_ROOT, Lab, wait_for_output

# libpcap asks TPACKET_V3 to hand over a block 1 s after its first frame (tcpdump's timeout): wait longer
# than that after the last frame, or the frames of a block not yet handed over die with tcpdump.
SETTLE_S = 1.5
TCPDUMP_BUFFER_KIB = 131072
PCAP_MAGIC = {0xA1B2C3D4: 1000, 0xA1B23C4D: 1}  # µs and ns pcap: ns per timestamp unit


def start_tcpdump(lab: Lab, pcap: Path) -> subprocess.Popen[str]:
    """`tcpdump -w pcap` (nanosecond stamps, a large buffer) on veth a; returns once it listens."""
    dump = lab.popen_a(
        ["tcpdump", "-i", lab.veth_a, "-n", "-w", str(pcap), "-B", str(TCPDUMP_BUFFER_KIB)]
        + ["--time-stamp-precision", "nano"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_output(dump, "listening on", timeout=20)
    return dump


def stop_tcpdump(dump: subprocess.Popen[str]) -> dict[str, int]:
    """Stop tcpdump; its closing statistics."""
    dump.send_signal(signal.SIGINT)
    _, err = dump.communicate(timeout=30)
    return tcpdump_counts(err)


def tcpdump_counts(stderr: str) -> dict[str, int]:
    """tcpdump's closing statistics: captured, received (by filter), dropped (by kernel)."""
    out = {}
    for key, text in (("captured", "captured"), ("received", "received by filter"), ("dropped", "dropped by kernel")):
        m = re.search(rf"^(\d+) packets? {text}$", stderr, re.M)
        assert m, stderr
        out[key] = int(m.group(1))
    return out


def read_pcap(path: Path) -> list[tuple[int, int, bytes]]:
    """(timestamp ns, original length, data) of every record of a classic pcap (either byte order)."""
    data = path.read_bytes()
    for order in "<>":
        unit = PCAP_MAGIC.get(struct.unpack_from(f"{order}I", data)[0])
        if unit is not None:
            break
    assert unit is not None, f"{path}: not a classic pcap"
    out, at = [], 24
    while at < len(data):
        sec, frac, caplen, orig = struct.unpack_from(f"{order}IIII", data, at)
        out.append((sec * 10**9 + frac * unit, orig, data[at + 16 : at + 16 + caplen]))
        at += 16 + caplen
    return out


def start_retrotap(lab: Lab, *args: str, stdout: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """`retrotap ARGS` (from this checkout) in namespace a; returns once it is listening."""
    proc = lab.popen_a(
        [sys.executable, "-m", "tui.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    wait_for_output(proc, "listening on", timeout=30)
    return proc


def snapshot_of(stats: subprocess.Popen[str], packets: int, timeout: float = 60.0) -> str:
    """Have retrotap write its time machine (SIGUSR1) once it holds `packets` packets; its log line.

    A burst of new flows is counted more slowly than it arrives (the ring holds the backlog): until
    retrotap has caught up, a snapshot holds fewer packets than tcpdump captured, so it is written again
    (the earlier file removed) while the count grows, until it holds them all, stops growing (retrotap
    lost some: the comparison says so) or `timeout` s have passed.
    """
    deadline = time.monotonic() + timeout
    held = -1
    while True:
        stats.send_signal(signal.SIGUSR1)
        line = wait_for_output(stats, "snapshot:", timeout=timeout)
        m = re.search(r"snapshot: (\S+) \((\d+) packets", line)
        if m is None or int(m.group(2)) >= packets or int(m.group(2)) == held or time.monotonic() > deadline:
            return line
        held = int(m.group(2))
        Path(m.group(1)).unlink()
        time.sleep(1.0)
