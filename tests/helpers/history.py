"""A capture in three phases, each with its own top talker (host pair and UDP port), for the rewind tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.pcapgen import NS, Frame, write_pcap

T0 = 1_700_000_000  # the capture's first second (2023-11-14 22:13:20 UTC)
HEADERS = 14 + 20 + 8  # Ethernet, IPv4, UDP


class Phase(NamedTuple):
    """From second `start` for `seconds`: `rate` frames per second of `size` bytes from src to dst:port."""

    start: int
    seconds: int
    src: str
    dst: str
    port: int
    rate: int
    size: int


# Each phase sends more than all before it together, so its pair and port lead once it has run a second.
PHASES = (
    Phase(0, 5, "10.0.1.1", "10.0.1.2", 5001, 10, 200),
    Phase(5, 5, "10.0.2.1", "10.0.2.2", 5002, 20, 1000),
    Phase(10, 5, "10.0.3.1", "10.0.3.2", 5003, 40, 1400),
)
BACKGROUND = Phase(0, 15, "10.0.9.1", "10.0.9.2", 7000, 1, 100)  # a quiet pair through every phase
SECONDS = 15


def _frame(p: Phase, ts_ns: int) -> Frame:
    pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=p.src, dst=p.dst) / UDP(
        sport=40000, dport=p.port
    )
    data = bytes(pkt / (b"x" * (p.size - HEADERS)))
    assert len(data) == p.size
    return Frame(data, ts_ns, p.size)


def phase_frames(phases: Sequence[Phase] = (*PHASES, BACKGROUND)) -> list[Frame]:
    """Every phase's frames, evenly spaced inside each second, in time order."""
    frames = []
    for p in phases:
        for second in range(p.start, p.start + p.seconds):
            for n in range(p.rate):
                frames.append(_frame(p, (T0 + second) * NS + n * NS // p.rate + 1000))
    return sorted(frames, key=lambda f: f.ts_ns)


def write_phases(path: str | Path) -> list[Frame]:
    """The three-phase capture as a pcap; its frames."""
    frames = phase_frames()
    write_pcap(path, frames, nanosecond=True)
    return frames


def phase_at(second: int) -> Phase:
    """The phase running at a second of the capture (counted from T0)."""
    return next(p for p in PHASES if p.start <= second < p.start + p.seconds)
