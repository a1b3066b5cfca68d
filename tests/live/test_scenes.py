"""Real traffic (tests/scenes.py) captured at once by `retrotap stats` and by tcpdump on veth a: retrotap's
record equals tshark's reading of tcpdump's file, per host pair, per flow, in TCP health and in DNS/HTTP
exchanges.

Both captures start (and listen) before the scene and stop after it has quiesced (no open TCP
connection, neighbour entries pinned), tcpdump once it has had time to read its last ring block,
retrotap once it has counted as many packets as tcpdump captured, so both see the same frames.
Figures are compared only when neither capture lost a packet; a scene that drops is run again at a
lower rate (`Scene.gentler()`), at most twice, and skipped if it still drops. retrotap's time machine
keeps 60 s: a scene must not last longer.

Timestamps: each packet socket stamps its copy of a frame itself, when the kernel hands it over, so
the two captures' times differ by up to several microseconds (one socket's copy of a 64 KB frame
delays the other's stamp). tshark tells an out-of-order segment from a retransmission by whether it
came within the handshake RTT (about 20 µs on a veth) of the highest one, so that split can differ
between two correct captures of the same frames. retrotap's own frames, as its time machine writes
them (SIGUSR1: its timestamps, its order), are therefore what its TCP health is compared with, class
by class; that snapshot is first checked to hold exactly tcpdump's frames, byte for byte. Against
tcpdump's file, TCP health is compared in what does not depend on timing: retransmissions and
out-of-order segments together, duplicate ACKs, zero windows, resets; for the flows whose segments
both captures hold in the same order (frames that reach the taps on two CPUs at once can be queued in
the two rings in opposite orders).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.captures import SETTLE_S, read_pcap, snapshot_of, start_tcpdump, stop_tcpdump
from tests.lab import IP4_A, IP6_A, IP6_B, REPO_ROOT, Lab, wait_for_output
from tests.scenes import Dns, Flood, Lossy, Mixed, Outcome, Scan, Scene, Web, quiesce
from tests.tshark import (
    HEALTH_FIELDS,
    LATENCY_FIELDS,
    Compared,
    Dissection,
    Flow,
    Frame,
    canonical,
    check_against_tshark,
    dissect,
    retrotap_exchanges,
    retrotap_health,
    tshark_exchanges,
    tshark_health,
    tshark_services,
)

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("tshark", "capinfos", "tcpdump", "trafgen", "curl", "dig", "ping")),
        reason="needs tshark, capinfos, tcpdump, trafgen (netsniff-ng), curl, dig (dnsutils), ping (iputils-ping)",
    ),
]
RETROTAP = [sys.executable, "-m", "tui.cli"]
RETRIES = 2
# What tells a flow's TCP segments apart: to see whether two captures hold them in the same order.
SEGMENT = ["tcp.seq_raw", "tcp.ack_raw", "tcp.len", "tcp.flags", "tcp.window_size_value", "ip.id"]
ZERO_WINDOW_PROBE = "tcp.analysis.zero_window_probe"
EXTRA = [
    *HEALTH_FIELDS.values(),
    ZERO_WINDOW_PROBE,
    "frame.time_epoch",
    *LATENCY_FIELDS.values(),
    "vlan.id",
    "eth.type",
    "vlan.etype",
    "icmp.type",
    "icmpv6.type",
    *SEGMENT,
]


@dataclass
class Capture:
    """One run of a scene under both captures."""

    scene: Scene
    outcome: Outcome
    pcap: Path
    records: list[dict[str, Any]]
    stderr: str
    returncode: int
    tcpdump: dict[str, int]  # captured, received (by filter), dropped (by kernel)
    snapshot: Path | None  # retrotap's time machine written at the end (None if it wrote none)
    notes: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)  # why earlier attempts could not be compared

    @property
    def last(self) -> dict[str, Any]:
        """retrotap's last record (after the signal: the whole scene)."""
        return self.records[-1]

    def unclean(self) -> str | None:
        """Why the two captures cannot be compared (packets lost by either), or None."""
        d, cap = self.tcpdump, self.last["capture"]
        if d["dropped"] or d["captured"] != d["received"]:
            return f"tcpdump: {d['received']} received, {d['captured']} captured, {d['dropped']} dropped by kernel"
        if cap["kernel_drops"] or cap["received"] != self.last["totals"]["packets"]:
            return f"retrotap: {cap['received']} received, {cap['kernel_drops']} dropped by kernel"
        return None


def capture(lab: Lab, scene: Scene, pcap: Path, extra: tuple[str, ...] = ()) -> Capture:
    """Set the scene up, start tcpdump and retrotap (with `extra` options) on veth a, play the scene,
    quiesce, stop both."""
    scene.setup(lab)
    dump = start_tcpdump(lab, pcap)
    snapshots = pcap.parent / f"{pcap.stem}-snapshot"
    snapshots.mkdir()
    with open(pcap.with_suffix(".ndjson"), "w") as out:
        stats = lab.popen_a(
            [*RETROTAP, "stats", "-i", lab.veth_a, "--format", "json", "--top", "0"]
            + ["--interval", str(scene.record_interval), "--snapshot-dir", str(snapshots), *extra],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
    wait_for_output(stats, "listening on", timeout=30)
    outcome = scene.run(lab)
    quiesce(lab)
    time.sleep(SETTLE_S)
    counts = stop_tcpdump(dump)
    wrote = snapshot_of(stats, counts["captured"])
    stats.send_signal(signal.SIGINT)
    _, err = stats.communicate(timeout=120)
    records = [json.loads(line) for line in pcap.with_suffix(".ndjson").read_text().splitlines()]
    assert records, err
    written = sorted(snapshots.glob("*.pcap"))
    assert len(written) <= 1, written
    return Capture(
        scene,
        outcome,
        pcap,
        records,
        wrote + err,
        stats.returncode,
        counts,
        written[0] if written else None,
        lab.notes,
    )


def clean_capture(scene: Scene, tmp_path: Path, extra: tuple[str, ...] = ()) -> Capture:
    """A capture of `scene` that lost nothing, trying gentler variants (a new lab each); skip if none."""
    reasons: list[str] = []
    attempt: Scene | None = scene
    for n in range(RETRIES + 1):
        if attempt is None:
            break
        with Lab(drop_ingress=False) as lab:
            cap = capture(lab, attempt, tmp_path / f"{attempt.name}-{n}.pcap", extra)
        why = cap.unclean()
        if why is None:
            cap.retried = reasons
            return cap
        reasons.append(f"{attempt}: {why}")
        attempt = attempt.gentler()
    pytest.skip(f"{scene.name}: no capture without drops: " + "; ".join(reasons))


# All that TCP health and DNS/HTTP exchanges depend on: tshark on these frames only analyses the same.
TCP_AND_DNS = "tcp or udp port 53 or (vlan and (tcp or udp port 53))"


def only_tcp_and_dns(path: Path) -> Path:
    """A copy of the capture with its TCP and DNS frames only (libpcap's filter, by tcpdump; timestamps kept to
    the nanosecond: tcpdump would write microseconds, and tshark's out-of-order window is a few of them)."""
    out = path.with_name(path.stem + "-tcp-dns.pcap")
    args = ["-r", str(path), "-w", str(out), "--time-stamp-precision", "nano", TCP_AND_DNS]
    subprocess.run(["tcpdump", *args], capture_output=True, check=True)
    return out


def segments(frames: list[Frame]) -> dict[Flow, list[tuple[str, ...]]]:
    """Each TCP flow's segments in capture order."""
    out: dict[Flow, list[tuple[str, ...]]] = {}
    for f in frames:
        if f.proto_name == "tcp" and f.in_transport_conv:
            out.setdefault(canonical(*f.key), []).append((f.src, *(f.extra[k] for k in SEGMENT)))
    return out


def stepped_back(frames: list[Frame]) -> set[Flow]:
    """TCP flows in which a frame of one direction is stamped earlier than the one before it."""
    last: dict[tuple[str, int, str, int], float] = {}
    flows: set[Flow] = set()
    for f in frames:
        if f.proto_name != "tcp" or not f.in_transport_conv:
            continue
        t = float(f.extra["frame.time_epoch"])
        way = (f.src, f.sport, f.dst, f.dport)
        if t < last.get(way, t):
            flows.add(canonical(*f.key))
        last[way] = max(t, last.get(way, t))
    return flows


def untimed(health: dict[Flow, tuple[int, ...]]) -> dict[Flow, tuple[int, ...]]:
    """TCP health without the split that depends on µs timing: retransmissions + out-of-order, then the rest."""
    names = list(HEALTH_FIELDS)
    r, o = names.index("retransmissions"), names.index("out_of_order")
    return {k: (v[r] + v[o], *(x for i, x in enumerate(v) if i not in (r, o))) for k, v in health.items()}


@dataclass
class Figures:
    """What a comparison covered, printed for the record (`pytest -s`)."""

    packets: int
    compared: Compared
    health: Counter[str]
    exchanges: Counter[str]
    tcp_flows: int
    reordered: int  # TCP flows whose segments retrotap and tcpdump received in different orders
    probed: int  # TCP flows with zero-window probes
    stepped: int  # TCP flows in which a direction's frame times step back


def compare(cap: Capture) -> tuple[Figures, Dissection]:
    """Everything retrotap's last record says that tshark can say of tcpdump's file, asserted equal."""
    # The run itself: exit 0, no traceback, every interface up in every record.
    assert cap.returncode == 0, cap.stderr
    assert "Traceback" not in cap.stderr
    for rec in cap.records:
        assert [(i["state"], i["error"]) for i in rec["interfaces"]] == [("up", "")], rec["interfaces"]
    rec = cap.last
    ref = read_pcap(cap.pcap)
    assert rec["totals"]["packets"] == len(ref) == cap.tcpdump["captured"] > 0

    # retrotap's time machine holds exactly tcpdump's frames, byte for byte.
    assert cap.snapshot is not None, cap.stderr
    own = read_pcap(cap.snapshot)
    assert Counter((n, d) for _, n, d in own) == Counter((n, d) for _, n, d in ref)

    # Totals, host pairs and flows per direction (packets, bytes) against tshark's tables of tcpdump's file.
    seen = dissect(cap.pcap, extra=EXTRA)
    compared = check_against_tshark(rec, cap.pcap, seen)

    # Per IP protocol, per ethertype (after any VLAN tag) and per VLAN id: packets and bytes.
    protos: Counter[int] = Counter()
    proto_bytes: Counter[int] = Counter()
    for f in seen.frames:
        protos[f.proto] += 1
        proto_bytes[f.proto] += f.length
    assert {p["proto"]: (p["packets"], p["bytes"]) for p in rec["protocols"]} == {
        k: (protos[k], proto_bytes[k]) for k in protos
    }
    for key, tally, of in (
        ("ethertype", "ethertypes", lambda r: int(r["vlan.etype"] or r["eth.type"], 16)),
        ("vlan", "vlans", lambda r: int(r["vlan.id"]) if r["vlan.id"] else None),
    ):
        packets: Counter[int] = Counter()
        nbytes: Counter[int] = Counter()
        for row in seen.rows:
            k = of(row)
            if k is not None:
                packets[k] += 1
                nbytes[k] += int(row["frame.len"])
        assert {t[key]: (t["packets"], t["bytes"]) for t in rec[tally]} == {k: (packets[k], nbytes[k]) for k in packets}

    # TCP health per flow (retransmissions, out-of-order, duplicate ACKs, zero windows, resets) and DNS/HTTP
    # exchanges per flow and per service: class by class against tshark on retrotap's own frames ...
    mine = dissect(only_tcp_and_dns(cap.snapshot), extra=EXTRA)
    theirs = tshark_health(mine.frames)
    # Every flow exactly, also those with zero-window probes or frame times that step back within a direction
    # (GRO frames stamped on two CPUs): counted for the record.
    assert retrotap_health(rec) == theirs
    probed = {canonical(*f.key) for f in mine.frames if f.has(ZERO_WINDOW_PROBE)}
    stepped = stepped_back(mine.frames)
    timed = tshark_exchanges(mine.frames)
    assert retrotap_exchanges(rec) == timed
    services = {(s["kind"], s["proto"], s["port"]): s["exchanges"] for s in rec["latency"]["services"]}
    assert services == dict(tshark_services(mine.frames))
    assert rec["latency"]["exchanges"] == sum(timed.values())
    # ... and against tshark on tcpdump's file, in what does not depend on timing, for every flow whose
    # segments both sockets received in the same order: two segments that reach the taps on two CPUs at
    # once can land in the two rings in opposite orders, and then tshark's reading of tcpdump's order
    # rightly differs (seen: 1 flow in 6 of a 6 x 32 MB transfer).
    assert tshark_exchanges(seen.frames) == timed
    ours, ref_order = segments(mine.frames), segments(seen.frames)
    same = {k for k, v in ref_order.items() if ours.get(k) == v}
    assert ours.keys() == ref_order.keys()
    assert {k: v for k, v in untimed(retrotap_health(rec)).items() if k in same} == {
        k: v for k, v in untimed(tshark_health(seen.frames)).items() if k in same
    }

    health: Counter[str] = Counter()
    for counts in theirs.values():
        health.update(dict(zip(HEALTH_FIELDS, counts, strict=True)))
    exchanges: Counter[str] = Counter()
    for (kind, _), n in timed.items():
        exchanges[kind] += n
    figures = Figures(
        rec["totals"]["packets"],
        compared,
        health,
        exchanges,
        len(theirs),
        len(ours) - len(same),
        len(probed),
        len(stepped),
    )
    print(f"\n{cap.scene}: {figures} tcpdump {cap.tcpdump} outcome {cap.outcome} notes {cap.notes}", end="")
    print(f" retried after: {cap.retried}" if cap.retried else "")
    return figures, seen


def frames_of(seen: Dissection, proto: str) -> Iterator[int]:
    """Lengths of the frames of one upper protocol."""
    return (f.length for f in seen.frames if f.proto_name == proto)


def test_web(tmp_path: Path) -> None:
    cap = clean_capture(Web.short(), tmp_path)
    figures, seen = compare(cap)
    # Every request the clients made was answered and timed, once; GSO frames of up to 64 KB were captured.
    assert figures.exchanges == {"http": cap.outcome["responses"]}
    assert cap.outcome["status_404"] > 0 and cap.outcome["status_200"] > 0
    assert max(frames_of(seen, "tcp")) > 10_000
    # Each client address (four extra IPv4 ones, b's IPv6 one) talked to the server.
    server = {IP4_A, IP6_A}
    clients = {({p["a"], p["b"]} - server).pop() for p in cap.last["pairs"] if server & {p["a"], p["b"]}}
    assert clients == {f"198.18.0.{10 + i}" for i in range(4)} | {IP6_B}


def test_dns(tmp_path: Path) -> None:
    cap = clean_capture(Dns.short(), tmp_path)
    figures, _ = compare(cap)
    answered = cap.outcome["udp_answered"] + cap.outcome["tcp_answered"] + cap.outcome["dig_answered"]
    assert cap.outcome["udp_unanswered"] > 0 and cap.outcome["udp_resent"] > 0
    # Each answered query once: a slow name's second answer (to the query sent again) is not timed again.
    assert figures.exchanges == {"dns": answered}


def test_lossy(tmp_path: Path) -> None:
    cap = clean_capture(Lossy.short(), tmp_path)
    figures, _ = compare(cap)
    assert cap.outcome["complete"] == cap.outcome["connections"]
    # The impairments did what they are there for (the figures themselves are tshark's = retrotap's).
    assert min(figures.health["retransmissions"], figures.health["duplicate_acks"]) > 0
    assert figures.health["out_of_order"] > 0
    assert figures.health["zero_windows"] > 0


def test_flood(tmp_path: Path) -> None:
    cap = clean_capture(Flood.short(), tmp_path)
    figures, _ = compare(cap)
    assert isinstance(cap.scene, Flood)
    assert cap.outcome["sent"] == figures.packets == cap.scene.packets
    # Every packet its own flow (bar random collisions of the 48 random bits of source address and ports).
    udp = [f for f in cap.last["flows"] if f["proto"] == "udp"]
    assert len(udp) > 0.99 * figures.packets


def test_scan(tmp_path: Path) -> None:
    cap = clean_capture(Scan.short(), tmp_path)
    figures, seen = compare(cap)
    out = cap.outcome
    # Every TCP probe refused by one RST, in its own flow; every UDP probe by an ICMP port unreachable.
    assert out["tcp_refused"] == out["tcp_probes"] and out["tcp6_refused"] == out["tcp6_probes"]
    assert figures.health["resets"] == out["tcp_probes"] + out["tcp6_probes"]
    assert figures.tcp_flows == out["tcp_probes"] + out["tcp6_probes"]
    unreachable = Counter(
        f.proto_name for f in seen.frames if f.extra["icmp.type"] == "3" or f.extra["icmpv6.type"] == "1"
    )
    assert unreachable == {"icmp": out["udp_refused"], "icmpv6": out["udp6_refused"]}
    assert out["udp_refused"] == out["udp_probes"] and out["udp6_refused"] == out["udp6_probes"]


def test_mixed(tmp_path: Path) -> None:
    cap = clean_capture(Mixed.short(), tmp_path)
    compare(cap)
    out = cap.outcome
    assert out["ping_replies"] == out["ping_sent"] and out["udp_echoed"] == out["udp_sent"]
    assert [v["vlan"] for v in cap.last["vlans"]] == [42]


def test_two_capture_threads_on_the_mixed_scene(tmp_path: Path) -> None:
    """--threads 2: two fanout rings on the veth, each counted by its own thread, merged when published, give
    tshark's figures as one thread does; each ring's share is shown and they add up."""
    cap = clean_capture(Mixed.short(), tmp_path, ("--threads", "2"))
    compare(cap)
    (iface,) = cap.last["interfaces"]
    rings = iface["rings"]
    assert [r["thread"] for r in rings] == [0, 1]
    assert sum(r["captured_packets"] for r in rings) == iface["captured_packets"] == cap.tcpdump["captured"]
    assert sum(r["received"] for r in rings) == iface["received"]
    # The hash spreads the scene's flows over both rings.
    assert min(r["captured_packets"] for r in rings) > 0
