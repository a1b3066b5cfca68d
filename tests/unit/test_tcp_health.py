"""TCP health per flow against tshark's tcp.analysis: retransmissions (fast and spurious ones too),
out-of-order segments, duplicate ACKs, zero windows, resets and the handshake RTT."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from capture_backend.analysis.decode import decode
from capture_backend.analysis.tables import Counters
from capture_backend.output.report import addr_str, tcp_health
from tests.helpers.cli import run_retrotap
from tests.helpers.tcp_health import (
    EXPECTED,
    EXPECTED_PROBES,
    EXPECTED_STEPPED,
    Health,
    Session,
    Tuple5,
    all_frames,
    probe_sessions,
    stepped_sessions,
)
from tests.pcapgen import Frame, block_of, block_of_frames, ether, write_mixed, write_pcap

TSHARK = shutil.which("tshark")


def norm(a: str, ap: int, b: str, bp: int) -> Tuple5:
    """The client-first form of a 5-tuple (the client is the side with the higher port here)."""
    return (a, ap, b, bp) if ap > bp else (b, bp, a, ap)


def tshark_frames(path: Path, display_filter: str) -> list[int]:
    """Numbers of the frames tshark shows for a display filter."""
    assert TSHARK is not None
    out = subprocess.run(
        [TSHARK, "-n", "-r", str(path), "-Y", display_filter, "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [int(x) for x in out.split()]


def tshark_health(path: Path) -> dict[Tuple5, Health]:
    """Per flow: retransmissions, out-of-order, duplicate ACKs, zero windows, resets (frame counts) and
    the first initial RTT."""
    assert TSHARK is not None
    fields = ["frame.number", "ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport"]
    out = subprocess.run(
        [TSHARK, "-n", "-r", str(path), "-Y", "tcp", "-T", "fields", "-E", "separator=|"]
        + [x for f in [*fields, "tcp.analysis.initial_rtt"] for x in ("-e", f)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flow_of: dict[int, Tuple5] = {}
    rtt: dict[Tuple5, float] = {}
    for line in out.splitlines():
        num, s4, s6, sp, d4, d6, dp, irtt = line.split("|")
        key = norm(s4 or s6, int(sp), d4 or d6, int(dp))
        flow_of[int(num)] = key
        if irtt and key not in rtt:
            rtt[key] = round(float(irtt) * 1000, 3)
    counts = [
        Counter(flow_of[n] for n in tshark_frames(path, f))
        for f in (
            "tcp.analysis.retransmission",
            "tcp.analysis.out_of_order",
            "tcp.analysis.duplicate_ack",
            "tcp.analysis.zero_window",
            "tcp.flags.reset == 1",
        )
    ]
    return {k: (*(c[k] for c in counts), rtt.get(k)) for k in set(flow_of.values())}  # type: ignore[misc]


def _health(h: dict[str, Any]) -> Health:
    rtt = None if h["handshake_rtt_ms"] is None else round(h["handshake_rtt_ms"], 3)
    names = ("retransmissions", "out_of_order", "duplicate_acks", "zero_windows", "resets")
    return (*(int(h[n]) for n in names), rtt)  # type: ignore[return-value]


def retrotap_health(path: Path) -> dict[Tuple5, Health]:
    proc = run_retrotap("stats", "-r", str(path), "--format", "json", "--top", "0")
    assert proc.returncode == 0, proc.stderr
    record: dict[str, Any] = json.loads(proc.stdout.splitlines()[0])
    out = {}
    for f in record["flows"]:
        if f["proto"] == "tcp":
            out[norm(f["src"], f["sport"], f["dst"], f["dport"])] = _health(f["tcp"])
    return out


@pytest.mark.skipif(TSHARK is None, reason="needs tshark")
def test_tcp_health_equals_tshark(tmp_path: Path) -> None:
    path = tmp_path / "tcp.pcap"
    write_pcap(path, all_frames(), nanosecond=True)
    expected = tshark_health(path)
    assert expected == EXPECTED  # the capture shows what it was built to show
    assert retrotap_health(path) == expected


def counters_health(blocks: list[list[Frame]]) -> dict[Tuple5, Health]:
    """Feed the frames as the given blocks; per flow health, keyed like EXPECTED."""
    c = Counters()
    for frames in blocks:
        c.add(decode(block_of_frames(frames)))
    snap = c.flows.freeze(0)
    out = {}
    for i in range(len(snap)):
        key = snap.keys[i].tobytes()
        a, b = addr_str(key[:16]), addr_str(key[16:32])
        out[norm(a, int.from_bytes(key[32:34], "big"), b, int.from_bytes(key[34:36], "big"))] = _health(
            tcp_health(snap, i)
        )
    return out


@pytest.mark.parametrize("split", ["one", "each", "random"])
def test_tcp_health_state_carries_across_batches(split: str) -> None:
    frames = all_frames()
    if split == "one":
        blocks = [frames]
    elif split == "each":
        blocks = [[f] for f in frames]
    else:
        cuts = sorted(np.random.default_rng(5).choice(np.arange(1, len(frames)), 9, replace=False).tolist())
        blocks = [frames[a:b] for a, b in zip([0, *cuts], [*cuts, len(frames)], strict=True)]
    assert counters_health(blocks) == EXPECTED


def test_tcp_columns_decode_lengths_from_ip_header() -> None:
    """Payload length comes from the IP lengths, also when the frame is cut short (or padded)."""
    v4 = bytes(
        ether("10.0.0.1", "10.0.0.2")
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / TCP(seq=77, ack=88, window=9)
        / Raw(bytes(300))
    )
    v6 = bytes(ether("::1", "::2") / IPv6(src="::1", dst="::2") / TCP(seq=2**32 - 1, window=0) / Raw(bytes(10)))
    short = bytes(ether("10.0.0.1", "10.0.0.2") / IP(src="10.0.0.1", dst="10.0.0.2") / TCP() / Raw(bytes(5)))
    padded = short + bytes(20)
    d = decode(block_of([v4[:80], v6, padded], wirelen=[len(v4), len(v6), len(padded)]))
    assert d.tcp_len.tolist() == [300, 10, 5]
    assert d.tcp_seq.tolist() == [77, 2**32 - 1, 0]
    assert d.tcp_ack.tolist() == [88, 0, 0]
    assert d.tcp_window.tolist() == [9, 0, 8192]


@pytest.mark.skipif(TSHARK is None, reason="needs tshark")
def test_mixed_capture_equals_tshark(tmp_path: Path) -> None:
    """The accuracy tests' mix (sessions with RSTs, duplicated segments, truncated frames, IPv6)."""
    path = tmp_path / "mix.pcap"
    write_mixed(path)
    expected, got = tshark_health(path), retrotap_health(path)
    common = expected.keys() & got.keys()
    # One flow only each side has: a frame whose TCP header is cut short, which tshark files under
    # its ports and retrotap under ports 0 (it cannot read them whole).
    assert expected.keys() - common == {("10.1.0.1", 32795, "192.0.2.5", 5432)}
    assert got.keys() - common == {("192.0.2.5", 0, "10.1.0.1", 0)}
    assert len(common) == 104 and sum(v[0] for v in expected.values()) > 0
    assert {k: got[k] for k in common} == {k: expected[k] for k in common}


def lossy_sessions(
    seed: int, flows: int = 6, segments: int = 120, probes: bool = False, jitter_ns: int = 0
) -> list[Frame]:
    """Seeded bulk transfers with reordering, losses, re-sent segments, duplicate and delayed ACKs; with
    `probes`, zero-window episodes (the receiver's zero window, one-byte probes, re-sent segments, the
    window opening again) and a 20 µs RTT among the choices; with `jitter_ns`, one frame in six stamped
    up to that much earlier, its place in the file kept (times step back)."""
    rng = np.random.default_rng(seed)
    frames: list[Frame] = []
    for n in range(flows):
        s = Session(f"10.8.{n}.1", 42000 + n, f"10.8.{n}.2", 80, int(rng.integers(0, 2**32)), 77)
        rtt = float(rng.choice([0.02, 1.0, 5.0] if probes else [1.0, 5.0, 20.0]))
        s.handshake(0, rtt)
        t = rtt + 1
        sent: list[int] = []
        acked = s.seq[True]
        for _ in range(segments):
            t += float(rng.exponential(0.8))
            size = int(rng.choice([1, 100, 536, 1448]))
            r = rng.random()
            if probes and r < 0.05:  # the receiver's window closes: probes, maybe a segment again, reopens
                acked = s.seq[True] if rng.random() < 0.7 else acked
                client_next = s.seq[True]
                s.seq[True] = acked
                s.send(t, False, "A", window=0)
                for _ in range(int(rng.integers(1, 4))):
                    s.seq[True] = client_next
                    t += float(rng.choice([0.01, 0.5, 2.0, 200.0]))
                    s.send(t, True, "PA", 1, advance=False, window=int(rng.choice([0, 64240])))
                    if sent and rng.random() < 0.5:
                        t += float(rng.choice([0.005, 0.5, 2.5]))
                        s.send(t, True, "PA", size, seq=sent[int(rng.integers(max(0, len(sent) - 4), len(sent)))])
                    if rng.random() < 0.7:
                        s.seq[True] = acked
                        t += 0.05
                        s.send(t, False, "A", window=0)
                s.seq[True] = acked
                t += float(rng.choice([0.01, 1.0]))
                s.send(t, False, "A")
                s.seq[True] = client_next
            elif r < 0.08 and sent:  # re-send an earlier segment (some already acknowledged)
                old = sent[int(rng.integers(max(0, len(sent) - 6), len(sent)))]
                s.send(t, True, "PA", size, seq=old)
            elif r < 0.14:  # this one and the next swap places
                first = s.seq[True]
                s.seq[True] = (first + size) & 0xFFFFFFFF
                s.send(t, True, "PA", size)
                s.send(t + float(rng.uniform(0.1, 8.0)), True, "PA", size, seq=first)
                sent.append(first)
            elif r < 0.18:  # lost on the way: never captured
                sent.append(s.send(t, True, "PA", size))
                s.frames.pop()
            else:
                sent.append(s.send(t, True, "PA", size))
            if rng.random() < 0.35:  # the receiver acknowledges what it has, sometimes twice
                acked = s.seq[True] if rng.random() < 0.8 else acked
                client_next = s.seq[True]
                s.seq[True] = acked
                for _ in range(int(rng.choice([1, 1, 2, 3]))):
                    t += 0.05
                    s.send(t, False, "A")
                s.seq[True] = client_next
        frames += s.frames
    frames.sort(key=lambda f: f.ts_ns)
    if jitter_ns:
        back = rng.integers(1, jitter_ns + 1, len(frames)) * (rng.random(len(frames)) < 1 / 6)
        frames = [f._replace(ts_ns=f.ts_ns - int(b)) for f, b in zip(frames, back, strict=True)]
    return frames


@pytest.mark.skipif(TSHARK is None, reason="needs tshark")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lossy_transfers_equal_tshark(tmp_path: Path, seed: int) -> None:
    """Every class on randomised transfers, whole file and in random batches, equals tshark per flow."""
    frames = lossy_sessions(seed)
    path = tmp_path / "lossy.pcap"
    write_pcap(path, frames, nanosecond=True)
    expected = tshark_health(path)
    assert sum(h[0] for h in expected.values()) > 5 and sum(h[1] for h in expected.values()) > 5
    assert sum(h[2] for h in expected.values()) > 5
    assert retrotap_health(path) == expected
    cuts = sorted(np.random.default_rng(seed).choice(np.arange(1, len(frames)), 40, replace=False).tolist())
    blocks = [frames[a:b] for a, b in zip([0, *cuts], [*cuts, len(frames)], strict=True)]
    assert counters_health(blocks) == expected


def random_blocks(frames: list[Frame], seed: int, cuts: int) -> list[list[Frame]]:
    """The frames cut into batches at `cuts` seeded random points."""
    at = sorted(np.random.default_rng(seed).choice(np.arange(1, len(frames)), cuts, replace=False).tolist())
    return [frames[a:b] for a, b in zip([0, *at], [*at, len(frames)], strict=True)]


@pytest.mark.skipif(TSHARK is None, reason="needs tshark")
@pytest.mark.parametrize(
    ("build", "built"),
    [(probe_sessions, EXPECTED_PROBES), (stepped_sessions, EXPECTED_STEPPED)],
    ids=["probes", "stepped"],
)
def test_probes_and_stepped_times_equal_tshark(
    tmp_path: Path, build: Callable[[], list[Frame]], built: dict[Tuple5, Health]
) -> None:
    """Zero-window probes (tshark's highest sequence stays), and frame times that step back (tshark's
    unsigned gaps), before and after the handshake RTT is known: whole file, one frame a batch, random
    batches."""
    frames = build()
    path = tmp_path / "edges.pcap"
    write_pcap(path, frames, nanosecond=True)
    expected = tshark_health(path)
    assert expected == built  # the capture shows what it was built to show
    assert retrotap_health(path) == expected
    assert counters_health([[f] for f in frames]) == expected
    assert counters_health(random_blocks(frames, 3, 7)) == expected


@pytest.mark.skipif(TSHARK is None, reason="needs tshark")
@pytest.mark.parametrize("seed", [4, 5, 6])
def test_lossy_transfers_with_probes_and_jitter_equal_tshark(tmp_path: Path, seed: int) -> None:
    """Randomised transfers with zero-window probes, a 20 µs RTT among others, and frame times stepping
    back by up to 8 µs: every class per flow equals tshark, whole file and in random batches."""
    frames = lossy_sessions(seed, probes=True, jitter_ns=8_000)
    assert any(b.ts_ns < a.ts_ns for a, b in zip(frames, frames[1:], strict=False))
    path = tmp_path / "lossy.pcap"
    write_pcap(path, frames, nanosecond=True)
    expected = tshark_health(path)
    assert sum(h[0] for h in expected.values()) > 5 and sum(h[1] for h in expected.values()) > 5
    assert sum(h[3] for h in expected.values()) > 5
    assert len(tshark_frames(path, "tcp.analysis.zero_window_probe")) > 5
    assert retrotap_health(path) == expected
    assert counters_health(random_blocks(frames, seed, 40)) == expected
