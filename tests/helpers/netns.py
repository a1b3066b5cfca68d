"""retrotap run from the host namespace on the lab's interfaces (`-i NETNS:IFACE`), and what it left behind."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.lab import REPO_ROOT, Lab, run, wait_for_output

RETROTAP = [sys.executable, "-m", "tui.cli"]


def spec(lab: Lab, side: str) -> str:
    """`NETNS:IFACE` of `side`'s veth."""
    return f"{lab.ns(side)}:{lab.veth(side)}"


def start_host(*args: str, wait_for: str = "listening on") -> subprocess.Popen[str]:
    """`retrotap ARGS` in this (the host's) namespace; returns once it printed `wait_for` on stderr."""
    proc = subprocess.Popen(
        [*RETROTAP, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        wait_for_output(proc, wait_for, timeout=30)
    except BaseException:
        proc.kill()
        proc.communicate(timeout=10)
        raise
    return proc


def run_host(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`retrotap ARGS` to the end, in the host's namespace."""
    return subprocess.run([*RETROTAP, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout)


def interfaces_json() -> list[dict[str, Any]]:
    """The rows of `retrotap interfaces --format json`."""
    done = run_host("interfaces", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return [json.loads(line) for line in done.stdout.splitlines()]


def proc_status(pid: int) -> dict[str, list[str]]:
    """The fields of /proc/PID/status, split on whitespace."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.split()
    return out


def readd_veth(lab: Lab, side: str) -> None:
    """Create `side`'s veth again (after `lab.delete_veth()`), its peer in the same namespace, and set it up."""
    ns, veth = lab.ns(side), lab.veth(side)
    run(["ip", "-n", ns, "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p"])
    run(["ip", "-n", ns, "link", "set", "dev", veth, "up"])


def snapshot_line(line: str) -> tuple[Path, int]:
    """The file and packet count of a `snapshot: FILE (N packets, ...)` line."""
    m = re.search(r"snapshot: (\S+) \((\d+) packets", line)
    assert m is not None, line
    return Path(m.group(1)), int(m.group(2))
