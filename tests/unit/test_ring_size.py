"""The default ring is sized from the link's speed; --ring-size fixes it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from capture_backend.capture.ring import NO_SPEED_RING, RingConfig, link_speed_mbps, ring_blocks
from tests.lab import REPO_ROOT, Lab
from tui.options import UsageError, build_parser, ring_config

MIB = 1 << 20


def by_speed(block_size: int = MIB, block_nr: int = 128) -> RingConfig:
    return RingConfig(block_size=block_size, block_nr=block_nr, by_link_speed=True)


@pytest.mark.parametrize(
    ("speed", "ring_mib"),
    [
        (None, 16),  # lo, tun, a NIC without a reported speed: the floor
        (100, 16),  # 1.25 MB in 100 ms: the 16 MiB floor
        (1_000, 16),  # 12.5 MB
        (2_500, 32),  # 31.25 MB, rounded up to a power of two blocks
        (10_000, 128),  # 125 MB: a veth, a 10 GbE NIC
        (25_000, 128),  # 312.5 MB, capped at the configured 128 MiB
    ],
)
def test_ring_blocks_follow_the_link_speed(speed: int | None, ring_mib: int) -> None:
    assert ring_blocks(by_speed(), speed) == ring_mib


def test_a_fixed_ring_ignores_the_speed_and_big_blocks_keep_two() -> None:
    assert ring_blocks(RingConfig(block_size=MIB, block_nr=64), 10_000) == 64
    assert ring_blocks(by_speed(block_size=64 * MIB, block_nr=2), None) == 2
    assert NO_SPEED_RING == 16 * MIB


def test_lo_reports_no_speed() -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        assert link_speed_mbps(sock, "lo") is None
        assert link_speed_mbps(sock, "no-such-interface") is None


@pytest.mark.live
def test_a_veth_ring_is_sized_from_its_speed_in_its_own_namespace(lab: Lab) -> None:
    # From the host, on the lab's veth inside its namespace: the speed is asked of the socket's namespace.
    out = subprocess.run(
        [sys.executable, "-m", "tui.cli", "stats", "-i", f"{lab.ns_a}:{lab.veth('a')}", "-i", "lo", "--count", "1",
         "--interval", "0.2", "--format", "json"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rings = {i["name"]: i["ring_bytes"] for i in json.loads(out.stdout.splitlines()[-1])["interfaces"]}
    assert rings == {f"{lab.ns_a}:{lab.veth('a')}": 128 * MIB, "lo": 16 * MIB}  # veth: 10000 Mb/s


def test_the_cli_sizes_by_speed_unless_told() -> None:
    auto = ring_config(build_parser().parse_args(["stats"]))
    assert (auto.by_link_speed, auto.block_size * auto.block_nr) == (True, 128 * MIB)
    fixed = ring_config(build_parser().parse_args(["stats", "--ring-size", "64"]))
    assert (fixed.by_link_speed, fixed.block_size * fixed.block_nr) == (False, 64 * MIB)
    with pytest.raises(UsageError, match="at least two blocks"):
        ring_config(build_parser().parse_args(["stats", "--ring-size", "1", "--block-size", "1024"]))


@pytest.mark.parametrize(
    ("packets", "ring_share", "elapsed", "wait"),
    [
        (0, 0.0, 0.02, 0.1),  # an idle link: the longest wait
        (1_000, 0.01, 0.02, 0.1),  # 50 kpps would take 0.66 s to fill a batch: capped
        (16_384, 0.02, 0.02, 0.04),  # 819 kpps of small frames: 40 ms make a batch of 32,768
        (65_536, 0.05, 0.02, 0.02),  # faster still: never below the shortest wait
        (8_000, 0.2, 0.05, 0.0625),  # large frames: a quarter of the ring fills in 62.5 ms, before a batch does
    ],
)
def test_the_wait_between_drains_fills_a_batch_and_never_a_quarter_ring(
    packets: int, ring_share: float, elapsed: float, wait: float
) -> None:
    from capture_backend.engine import drain_interval

    assert drain_interval(packets, ring_share, elapsed) == pytest.approx(wait)
