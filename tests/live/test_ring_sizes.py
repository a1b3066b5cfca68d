"""Rings of 2 blocks and of 1 GiB under real web traffic (64 KB GRO frames among small ACKs): the capture
never fails, every frame the kernel passed is counted or counted as dropped, and what tcpdump saw is what
the ring received."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.captures import SETTLE_S, start_retrotap, start_tcpdump, stop_tcpdump
from tests.lab import Lab
from tests.scenes import Web, quiesce

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("tcpdump", "curl")), reason="needs tcpdump and curl"),
]


@pytest.mark.parametrize(("ring_mib", "block_kib"), [(2, 1024), (1024, 4096)])
def test_ring_of_two_blocks_and_of_a_gibibyte(ring_mib: int, block_kib: int, tmp_path: Path) -> None:
    scene = Web.short()
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
            "--ring-size",
            str(ring_mib),
            "--block-size",
            str(block_kib),
        )
        scene.run(lab)
        quiesce(lab)
        time.sleep(SETTLE_S)
        stats.send_signal(signal.SIGINT)
        out, err = stats.communicate(timeout=60)
        counts = stop_tcpdump(dump)
    assert stats.returncode == 0, err
    assert "Traceback" not in err and "error" not in err, err
    last = json.loads(out.splitlines()[-1])
    cap = last["capture"]
    assert cap["restarts"] == 0 and cap["last_error"] == ""
    assert [(i["state"], i["walk_errors"]) for i in last["interfaces"]] == [("up", 0)]
    assert counts["dropped"] == 0, counts
    # The ring received every frame tcpdump saw; each was counted, or counted as dropped by the kernel.
    assert cap["received"] == counts["captured"]
    assert last["totals"]["packets"] + cap["kernel_drops"] == cap["received"]
    if ring_mib >= 1024:
        assert cap["kernel_drops"] == 0
    print(f"\nring {ring_mib} MiB: {cap['received']} received, {cap['kernel_drops']} dropped by the kernel")


def test_jumbo_frames_are_counted_as_tcpdump_sees_them(tmp_path: Path) -> None:
    with Lab(drop_ingress=False) as lab:
        for side in ("a", "b"):
            lab.exec(side, ["ip", "link", "set", "dev", lab.veth(side), "mtu", "9000"])
        dump = start_tcpdump(lab, tmp_path / "tcpdump.pcap")
        stats = start_retrotap(lab, "stats", "-i", lab.veth_a, "--format", "json", "--top", "0")
        # 8,972-byte pings fill a 9000-byte MTU exactly: 9,014-byte frames each way, unfragmented.
        lab.exec_b(["ping", "-n", "-q", "-c", "20", "-i", "0.01", "-M", "do", "-s", "8972", lab.ip4_a], timeout=30)
        time.sleep(SETTLE_S)
        stats.send_signal(signal.SIGINT)
        out, err = stats.communicate(timeout=60)
        counts = stop_tcpdump(dump)
    assert stats.returncode == 0 and "Traceback" not in err, err
    last = json.loads(out.splitlines()[-1])
    assert counts["dropped"] == 0 and last["capture"]["kernel_drops"] == 0
    assert last["totals"]["packets"] == counts["captured"]
    icmp = {p["name"]: (p["packets"], p["bytes"]) for p in last["protocols"]}
    assert icmp["icmp"] == (40, 40 * 9014)
