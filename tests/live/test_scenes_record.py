"""`retrotap record` on real traffic (tests/scenes.py) beside tcpdump on veth a: the recorded files hold
tcpdump's frames, and `retrotap export` cuts out of them exactly what tshark's display filter selects.

Both captures listen before the scene starts and stop after it has quiesced, so they see the same frames.
The recording rotates every megabyte, so each scene is cut across many files. Compared only when neither
capture lost a packet; a scene that drops runs again at a gentler rate, and is skipped if it still drops.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.captures import SETTLE_S, read_pcap, start_retrotap, start_tcpdump, stop_tcpdump
from tests.lab import REPO_ROOT, Lab
from tests.scenes import Dns, Flood, Lossy, Mixed, Scan, Scene, Web, quiesce
from tests.tshark import tshark

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("tshark", "capinfos", "mergecap", "tcpdump", "trafgen", "dig", "ping")),
        reason="needs tshark, capinfos, mergecap, tcpdump, trafgen (netsniff-ng), dig (dnsutils), ping (iputils-ping)",
    ),
]
RETROTAP = [sys.executable, "-m", "tui.cli"]
RETRIES = 2
Frames = list[tuple[int, int, bytes]]


@dataclass
class Recorded:
    """One scene under tcpdump and `retrotap record`."""

    scene: Scene
    reference: Path
    directory: Path
    tcpdump: dict[str, int]
    summary: str  # record's closing line
    returncode: int
    stderr: str

    @property
    def kernel_drops(self) -> int:
        m = re.search(r"kernel drops (\d+)", self.summary)
        assert m, self.stderr
        return int(m.group(1))

    def unclean(self) -> str | None:
        """Why the captures cannot be compared (packets lost by either), or None."""
        d = self.tcpdump
        if d["dropped"] or d["captured"] != d["received"]:
            return f"tcpdump: {d['received']} received, {d['captured']} captured, {d['dropped']} dropped"
        if self.kernel_drops:
            return f"record: {self.summary}"
        return None

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("*.pcap"))

    def frames(self) -> Frames:
        return [f for path in self.files() for f in read_pcap(path)]


def record(lab: Lab, scene: Scene, work: Path, extra: tuple[str, ...] = ()) -> Recorded:
    """Set the scene up, start tcpdump and `retrotap record` (with `extra` options), play the scene, quiesce,
    stop both."""
    scene.setup(lab)
    reference = work / "tcpdump.pcap"
    directory = work / "recording"
    directory.mkdir()
    dump = start_tcpdump(lab, reference)
    rec = start_retrotap(
        lab, "record", "-i", lab.veth_a, "-w", str(directory), "--rotate-size", "1M", *extra, stdout=subprocess.DEVNULL
    )
    scene.run(lab)
    quiesce(lab)
    time.sleep(SETTLE_S)
    rec.send_signal(signal.SIGINT)
    _, err = rec.communicate(timeout=120)
    counts = stop_tcpdump(dump)
    summary = next((line for line in err.splitlines() if "recorded" in line), "")
    return Recorded(scene, reference, directory, counts, summary, rec.returncode, err)


def clean_recording(scene: Scene, tmp_path: Path, extra: tuple[str, ...] = ()) -> Recorded:
    """A recording of `scene` that lost nothing, trying gentler variants (a new lab each); skip if none."""
    reasons: list[str] = []
    attempt: Scene | None = scene
    for n in range(RETRIES + 1):
        if attempt is None:
            break
        work = tmp_path / f"{attempt.name}-{n}"
        work.mkdir()
        with Lab(drop_ingress=False) as lab:
            got = record(lab, attempt, work, extra)
        why = got.unclean()
        if why is None:
            return got
        reasons.append(f"{attempt}: {why}")
        attempt = attempt.gentler()
    pytest.skip(f"{scene.name}: no recording without drops: " + "; ".join(reasons))


def untimed(frames: Frames) -> list[tuple[int, bytes]]:
    """Frames without their timestamps (each socket stamps its own copy)."""
    return [(n, d) for _, n, d in frames]


def export(directory: Path, out: Path, *args: str) -> Frames:
    """`retrotap export DIR ARGS -w out`: the frames it wrote."""
    done = subprocess.run(
        [*RETROTAP, "export", str(directory), *args, "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    return read_pcap(out) if out.exists() else []


def displayed(pcap: Path, display_filter: str, out: Path) -> Frames:
    """The frames tshark's display filter keeps, written by tshark itself."""
    tshark(pcap, "-Y", display_filter, "-w", str(out), "-F", "pcap")
    return read_pcap(out)


def iso(ns: int) -> str:
    """An ISO 8601 UTC time with microseconds."""
    return datetime.fromtimestamp(ns // 1000 / 1e6, UTC).isoformat()


SCENES = {
    # scene, an address, a port (selecting with no ICMP error that quotes that port)
    "web": (Web.short(), "198.18.0.10", 80),
    "dns": (Dns.short(), "198.18.0.11", 53),
    "lossy": (Lossy.short(), "198.18.0.2", 5202),
    "scan": (Scan.short(), "fd00:7274::2", 2500),
    "mixed": (Mixed.short(), "198.18.42.2", 7),
    "flood": (Flood.short(), "198.18.0.1", 0),
}
# Scenes recorded again with two capture threads (two fanout rings, their batches taken by the recorder in turn).
THREADED = {"web --threads 2": "web"}


@pytest.mark.parametrize("name", [*SCENES, *THREADED])
def test_record_and_export_equal_tcpdump_and_tshark(name: str, tmp_path: Path) -> None:
    scene, host, port = SCENES[THREADED.get(name, name)]
    got = clean_recording(scene, tmp_path, tuple(name.split()[1:]))
    assert got.returncode == 0, got.stderr
    assert "Traceback" not in got.stderr and "error" not in got.stderr, got.stderr
    reference = read_pcap(got.reference)
    mine = got.frames()
    assert got.tcpdump["captured"] == len(reference) > 0
    # Every frame tcpdump saw, byte for byte, in files that rotated and that tshark reads.
    assert len(got.files()) >= sum(16 + len(d) for _, _, d in mine) // (1 << 20)  # rotated every megabyte
    assert re.search(rf"recorded {len(reference)} packets", got.summary), got.summary
    same_order = untimed(mine) == untimed(reference)
    assert same_order or Counter(untimed(mine)) == Counter(untimed(reference))
    for path in got.files():
        info = subprocess.run(["capinfos", "-M", "-c", str(path)], capture_output=True, text=True, check=True)
        assert re.search(rf"Number of packets:\s+{len(read_pcap(path))}$", info.stdout, re.M), info.stdout
    # Export: a host, a port, a time window — each exactly what tshark's display filter gives.
    recording = tmp_path / "recording.pcap"
    subprocess.run(["mergecap", "-a", "-F", "pcap", "-w", str(recording), *map(str, got.files())], check=True)
    field = "ipv6.addr" if ":" in host else "ip.addr"
    cases: list[tuple[list[str], str]] = [(["--host", host], f"{field} == {host}")]
    if port:
        cases.append((["--port", str(port)], f"tcp.port == {port} || udp.port == {port} || sctp.port == {port}"))
    times = sorted(t for t, _, _ in mine)
    lo, hi = times[len(times) // 3] // 1000 * 1000, times[2 * len(times) // 3] // 1000 * 1000
    window = f"frame.time_epoch >= {lo // 10**9}.{lo % 10**9:09d} && frame.time_epoch < {hi // 10**9}.{hi % 10**9:09d}"
    cases.append((["--from", iso(lo), "--to", iso(hi)], window))
    for n, (args, expr) in enumerate(cases):
        cut = export(got.directory, tmp_path / f"export-{n}.pcap", *args)
        expected = displayed(recording, expr, tmp_path / f"expected-{n}.pcap")
        assert len(cut) == len(expected) > 0, (args, expr)
        assert Counter(untimed(cut)) == Counter(untimed(expected)), (args, expr)
        # The recording's frames are tcpdump's: the same selection of tcpdump's file gives the same frames.
        if "--from" not in args:
            theirs = displayed(got.reference, expr, tmp_path / f"tcpdump-{n}.pcap")
            assert Counter(untimed(cut)) == Counter(untimed(theirs)), (args, expr)
    print(f"\n{scene}: {len(reference)} frames, {len(got.files())} files, same order {same_order}")
