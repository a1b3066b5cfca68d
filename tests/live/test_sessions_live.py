"""Session records of real traffic: `retrotap stats --sessions DIR` on veth a while a scene plays, compared
with tcpdump's capture of the same traffic (read by tshark) and with retrotap's own time machine.

Per TCP and UDP flow, the records of a flow summed (a long flow has several) give packets and bytes each
way equal to tshark's per-frame view of tcpdump's file; the flow's first and last time equal those of its
frames in retrotap's time machine snapshot (each packet socket stamps its own copy of a frame, so tcpdump's
times differ by microseconds: retrotap's own stamps are the reference for time). Compared only when
neither capture lost a packet; otherwise the scene is skipped.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from capture_backend.rewind.sessions import END_OF_TIME, Query, SessionStore
from tests.captures import SETTLE_S, snapshot_of, start_retrotap, start_tcpdump, stop_tcpdump
from tests.lab import REPO_ROOT, Lab
from tests.scenes import Dns, Scene, Web, quiesce
from tests.tshark import Frame, capinfos, tshark_frames

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("tshark", "tcpdump", "curl", "dig")),
        reason="needs tshark, tcpdump, curl, dig (dnsutils)",
    ),
]

End = tuple[str, int]
Flow = tuple[str, End, End]  # protocol, sender, receiver
Counts = dict[Flow, list[int]]  # packets, bytes


def epoch_ns(text: str) -> int:
    """tshark's frame.time_epoch ('1764000000.123456789') as ns, exactly."""
    sec, _, frac = text.partition(".")
    return int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


def canonical(proto: str, a: End, b: End) -> tuple[str, End, End]:
    return (proto, *sorted((a, b)))  # type: ignore[return-value]


def tshark_flows(frames: list[Frame]) -> tuple[Counts, dict[tuple[str, End, End], tuple[int, int]]]:
    """Per direction of each TCP/UDP flow: packets and bytes; per flow: first and last frame time (ns)."""
    counts: Counts = defaultdict(lambda: [0, 0])
    span: dict[tuple[str, End, End], tuple[int, int]] = {}
    for f in frames:
        if not f.in_transport_conv or f.proto_name not in ("tcp", "udp"):
            continue
        a, b = (f.src, f.sport), (f.dst, f.dport)
        c = counts[(f.proto_name, a, b)]
        c[0] += 1
        c[1] += f.length
        key, t = canonical(f.proto_name, a, b), epoch_ns(f.extra["frame.time_epoch"])
        lo, hi = span.get(key, (t, t))
        span[key] = (min(lo, t), max(hi, t))
    return dict(counts), span


def session_flows(rows: list[dict[str, Any]]) -> tuple[Counts, dict[tuple[str, End, End], tuple[int, int]]]:
    """The same from session records (a flow's records summed; directions with no packets left out)."""
    counts: Counts = defaultdict(lambda: [0, 0])
    span: dict[tuple[str, End, End], tuple[int, int]] = {}
    for r in rows:
        if r["proto"] not in ("tcp", "udp"):
            continue
        client, server = (r["src"], r["sport"]), (r["dst"], r["dport"])
        for frm, to, d in ((client, server, "src"), (server, client, "dst")):
            if r[f"{d}_packets"]:
                c = counts[(r["proto"], frm, to)]
                c[0] += r[f"{d}_packets"]
                c[1] += r[f"{d}_bytes"]
        key = canonical(r["proto"], client, server)
        lo, hi = span.get(key, (r["start_ns"], r["end_ns"]))
        span[key] = (min(lo, r["start_ns"]), max(hi, r["end_ns"]))
    return dict(counts), span


def play(lab: Lab, scene: Scene, tmp: Path) -> tuple[Path, Path, dict[str, int], str, list[dict[str, Any]]]:
    """The scene under tcpdump and `retrotap stats --sessions`; (tcpdump's file, retrotap's time machine
    snapshot, tcpdump's counts, retrotap's stderr, the session records)."""
    scene.setup(lab)
    pcap, sessions, snapshots = tmp / "tcpdump.pcap", tmp / "sessions", tmp / "snapshots"
    snapshots.mkdir()
    dump = start_tcpdump(lab, pcap)
    stats = start_retrotap(
        lab,
        *("stats", "-i", lab.veth_a, "--interval", "3600", "--format", "json"),
        *("--sessions", str(sessions), "--snapshot-dir", str(snapshots)),
        stdout=subprocess.DEVNULL,
    )
    try:
        scene.run(lab)
        quiesce(lab)
        time.sleep(SETTLE_S)
        counts = stop_tcpdump(dump)
        line = snapshot_of(stats, counts["captured"])
        stats.send_signal(signal.SIGINT)
        _, err = stats.communicate(timeout=120)
    finally:
        for proc in (dump, stats):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert stats.returncode == 0, err
    written = sorted(snapshots.glob("*.pcap"))
    assert len(written) == 1, line + err
    with SessionStore(sessions, writable=False) as store:
        rows = store.query(Query(top=0))
    return pcap, written[0], counts, line + err, rows


@pytest.mark.parametrize("scene", [Web.short(), Dns.short()], ids=lambda s: s.name)
def test_sessions_equal_tsharks_flows(open_lab: Lab, scene: Scene, tmp_path: Path) -> None:
    pcap, snapshot, counts, log, rows = play(open_lab, scene, tmp_path)
    if counts["dropped"] or counts["captured"] != counts["received"]:
        pytest.skip(f"tcpdump lost packets: {counts}")
    n_frames, frames = tshark_frames(pcap, ["frame.time_epoch"])
    assert n_frames == counts["captured"]
    snap_frames, snap = tshark_frames(snapshot, ["frame.time_epoch"])
    assert snap_frames == n_frames, log  # retrotap's time machine holds every frame tcpdump captured
    want, _ = tshark_flows(frames)
    got, spans = session_flows(rows)
    assert len(want) > 10
    assert got == want
    _, want_spans = tshark_flows(snap)
    assert spans == want_spans
    assert "sessions:" not in log  # no dropped records, no store errors
    reasons = {r["reason"] for r in rows}
    assert reasons <= {"closed", "idle", "end", "active"}
    if isinstance(scene, Web):
        tcp = [r for r in rows if r["proto"] == "tcp"]
        assert {r["dport"] for r in tcp} == {80}
        assert sum(r["exchanges"] for r in tcp) > 0 and any(r["slowest"] for r in tcp)
        # The HTTP server runs in namespace a, where retrotap reads the socket table.
        assert any(r["process"] for r in tcp)
    else:
        dns = [r for r in rows if r["dport"] == 53]
        assert sum(r["exchanges"] for r in dns) > 0


def test_record_keeps_sessions_beside_its_files_and_exports_one(open_lab: Lab, tmp_path: Path) -> None:
    """`retrotap record -w DIR` writes DIR/retrotap-sessions.sqlite by default: its records summed per flow
    equal the recording's own frames (both are retrotap's), and `export --session ID` writes that flow."""
    scene = Web.short()
    scene.setup(open_lab)
    rec = tmp_path / "rec"
    rec.mkdir()
    recorder = start_retrotap(open_lab, "record", "-i", open_lab.veth_a, "-w", str(rec), stdout=subprocess.DEVNULL)
    try:
        scene.run(open_lab)
        quiesce(open_lab)
        time.sleep(SETTLE_S)
        recorder.send_signal(signal.SIGINT)
        _, err = recorder.communicate(timeout=120)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    assert recorder.returncode == 0, err
    files = sorted(rec.glob("*.pcap"))
    assert files and (rec / "retrotap-sessions.sqlite").is_file(), err
    frames: list[Frame] = []
    for f in files:
        frames += tshark_frames(f, ["frame.time_epoch"])[1]
    with SessionStore(rec, writable=False) as store:
        rows = store.query(Query(top=0))
    want, want_spans = tshark_flows(frames)
    got, spans = session_flows(rows)
    assert len(want) > 10
    assert (got, spans) == (want, want_spans)
    # The per-minute aggregates beside them add up to the recording, every frame (ARP too) counted once.
    with SessionStore(rec, writable=False) as store:
        minutes = store.minutes(0, END_OF_TIME)
    recorded = [capinfos(f) for f in files]
    assert minutes
    assert sum(m.snap.packets for m in minutes) == sum(p for p, _ in recorded)
    assert sum(m.snap.bytes for m in minutes) == sum(b for _, b in recorded)
    assert [sum(i.packets for i in m.snap.interfaces) for m in minutes] == [m.snap.packets for m in minutes]
    # One HTTP session's packets, cut out of the recording by its id.
    row = max((r for r in rows if r["proto"] == "tcp"), key=lambda r: r["src_packets"] + r["dst_packets"])
    out = tmp_path / "one.pcap"
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", "export", str(rec), "--session", str(row["id"]), "-w", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    n, exported = tshark_frames(out, ["frame.time_epoch"])
    key = canonical("tcp", (row["src"], row["sport"]), (row["dst"], row["dport"]))
    assert n == row["src_packets"] + row["dst_packets"]
    assert {canonical(f.proto_name, (f.src, f.sport), (f.dst, f.dport)) for f in exported} == {key}
