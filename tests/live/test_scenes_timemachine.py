"""The time machine asked for a pcap (SIGUSR1) in the middle of real traffic: the file holds exactly the frames
tcpdump captured from the start up to the snapshot's last frame, byte for byte."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from tests.captures import SETTLE_S, read_pcap, start_retrotap, start_tcpdump, stop_tcpdump
from tests.lab import Lab, wait_for_output
from tests.scenes import Lossy, Outcome, Web, quiesce

EDGE_NS = 5_000_000
pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("tcpdump", "curl")), reason="needs tcpdump and curl"),
]


SCENES = [replace(Web.short(), requests=40), replace(Lossy.short(), megabytes=64)]


@pytest.mark.parametrize("scene", SCENES, ids=["web", "lossy"])
def test_a_snapshot_in_mid_scene_holds_tcpdumps_frames_up_to_that_moment(scene: Web | Lossy, tmp_path: Path) -> None:
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    with Lab(drop_ingress=False) as lab:
        scene.setup(lab)
        dump = start_tcpdump(lab, tmp_path / "tcpdump.pcap")
        stats = start_retrotap(
            lab,
            "stats",
            "-i",
            lab.veth_a,
            "--format",
            "json",
            "--top",
            "0",
            "--snapshot-dir",
            str(snaps),
            stdout=subprocess.DEVNULL,
        )
        outcome: list[Outcome] = []
        traffic = threading.Thread(target=lambda: outcome.append(scene.run(lab)), daemon=True)
        traffic.start()
        # Once a few hundred frames have crossed, while the scene still runs.
        deadline = time.monotonic() + 30
        while sum(lab.link_stats("a")[d]["packets"] for d in ("rx", "tx")) < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert traffic.is_alive(), "the scene ended before the snapshot: make it longer"
        stats.send_signal(signal.SIGUSR1)
        wrote = wait_for_output(stats, "snapshot:", timeout=60)
        traffic.join(120)
        assert outcome, "the scene did not finish"
        quiesce(lab)
        time.sleep(SETTLE_S)
        stats.send_signal(signal.SIGINT)
        _, err = stats.communicate(timeout=60)
        counts = stop_tcpdump(dump)
    assert stats.returncode == 0 and "Traceback" not in err, err
    if counts["dropped"]:
        pytest.skip(f"tcpdump dropped {counts['dropped']}")
    (path,) = snaps.glob("*.pcap")
    own = read_pcap(path)
    ref = read_pcap(tmp_path / "tcpdump.pcap")
    # Mid-scene: some of the traffic, not all of it ...
    assert 0 < len(own) < len(ref), wrote
    # ... every frame of it tcpdump's, byte for byte ...
    left = Counter((n, d) for _, n, d in ref)
    left.subtract((n, d) for _, n, d in own)
    assert min(left.values()) >= 0, "a frame in the snapshot that tcpdump did not see"
    # ... and every frame tcpdump stamped before the snapshot's last one (each socket stamps its own copy:
    # frames delivered within EDGE_NS of that moment may be on either side of it).
    end = max(t for t, _, _ in own) - EDGE_NS
    before = Counter((n, d) for t, n, d in ref if t < end)
    assert not before - Counter((n, d) for _, n, d in own), "a frame tcpdump saw before the snapshot is missing"
    print(f"\n{scene}: snapshot {len(own)} of {len(ref)} frames ({wrote.strip()})")
