"""Reading back what `retrotap record` wrote: packets, recording files, tshark counts, stderr log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from capture_backend.capture.pcapfile import FileSource

RETROTAP = [sys.executable, "-m", "tui.cli"]


Packet = tuple[int, bytes, int]  # ts_ns, captured bytes, wire length


def read_back(path: str | Path) -> list[Packet]:
    out = []
    with FileSource(str(path)) as src:
        for b in src.blocks():
            for i in range(len(b)):
                s, c = int(b.start[i]), int(b.caplen[i])
                out.append((int(b.ts_ns[i]), b.data[s : s + c].tobytes(), int(b.wirelen[i])))
        assert src.truncated is None
    return out


def tshark_packets(path: str | Path) -> int:
    """Packets tshark reads from the file; fails on any warning (a cut record, a bad header)."""
    shark = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number"], capture_output=True, text=True, timeout=60
    )
    warnings = [w for w in shark.stderr.splitlines() if "Running as user" not in w]  # tshark's note when root
    assert shark.returncode == 0 and warnings == [], shark.stderr
    return len(shark.stdout.splitlines())


def recordings(directory: Path) -> list[Path]:
    """Closed recording files, oldest first (names sort by time)."""
    return sorted(directory.glob("*.pcap"))


class Log:
    """Collects the recorder's lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, msg: str) -> None:
        self.lines.append(msg)

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]
