"""tshark as the reference: its conversation tables and per-frame fields, compared with a retrotap record.

How tshark is made to count what retrotap counts (each a deliberate choice):

* ``-n``: addresses and ports stay numeric, so table rows can be matched to retrotap's rows.
* ``-o ip.defragment:FALSE -o ipv6.defragment:FALSE``: retrotap counts packets as they were on
  the wire: every fragment is one packet between its two hosts, and only the first fragment
  carries the transport ports. With reassembly on, tshark would hand the whole datagram (and its
  conversation) to the frame that completes it. With it off, tshark's IPv4 tap sees every
  fragment and its UDP/TCP taps see the first fragment, which is retrotap's model.
* IPv6 non-first fragments: Wireshark queues its IPv6 tap at the end of the extension header
  chain, which a non-first fragment never reaches (its payload goes to the data dissector), so
  ``conv,ipv6`` leaves those frames out even with reassembly off. They did travel between the
  two hosts, so retrotap counts them; the comparison adds them back from tshark's own per-frame
  dissection (``ipv6.fraghdr.offset > 0``).
* Bytes: tshark 4.x prints conversation bytes with SI prefixes from 10000 on ("432 kB",
  truncated), frames exactly. Frames are compared exactly; printed bytes are compared at the
  precision printed; and exact bytes per direction come from tshark's per-frame fields
  (frame.len of the frames in which tshark dissected the IP addresses / transport conversation).
* Transport rows: retrotap keeps TCP/UDP/SCTP packets whose ports are unreadable (non-first
  fragments, transport header cut by the snaplen) as a flow with ports 0; tshark has no row for
  them. They are compared with tshark's frames that carry that protocol but no transport
  conversation (no tcp.stream / udp.stream / sctp port), ICMP flows likewise.
* ICMP errors quote the packet they answer (an IP header and its transport header): tshark
  dissects it with its "in error" flag, so its taps and conversation tables only count the outer
  packet, as retrotap does. Per-frame fields are read at their first occurrence, the outer one.
* HTTP exchanges are counted with tshark's default ``http.desegment_body:TRUE`` (the body reassembled
  by its Content-Length, the response timed at its last segment). With FALSE, as test_latency uses to
  time the first segment as retrotap does, tshark cannot tell where a binary body ends: a body's last
  segment without a line end is held as the start of a message and swallows the next response's
  header (seen live: a keep-alive connection of 12 exchanges of which tshark timed 10). Only counts
  are compared here, never times.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TSHARK = shutil.which("tshark")
TSHARK_PREFS = ["-n", "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"]
UNITS = {"bytes": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9}
IPV6_EXT = {0, 43, 44, 51, 60, 135}
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
PORT_PROTOS = {"tcp", "udp", "sctp"}
CONV_TABLES = ("conv,ip", "conv,ipv6", "conv,tcp", "conv,udp", "conv,sctp")


def tshark(path: Path, *args: str, prefs: Sequence[str] = TSHARK_PREFS, timeout: float = 120) -> str:
    """tshark's standard output on `path` with `prefs` and `args`; it must exit 0."""
    assert TSHARK is not None, "tshark is not installed"
    proc = subprocess.run([TSHARK, "-r", str(path), *prefs, *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- tshark's conversation tables ---------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """A byte count as tshark printed it: exact below 10000, else truncated to an SI prefix."""

    value: int
    unit: str

    def matches(self, exact: int) -> bool:
        """Whether `exact` prints as this."""
        return exact // UNITS[self.unit] == self.value


@dataclass(frozen=True)
class ConvRow:
    """One row of a `-z conv,...` table: A, B, and each direction ("->" is A to B, "<-" B to A)."""

    a: str
    b: str
    a_to_b_frames: int
    a_to_b_bytes: Shown
    b_to_a_frames: int
    b_to_a_bytes: Shown


def parse_conv(text: str) -> dict[str, list[ConvRow]]:
    """Tables by name ('IPv4', 'IPv6', 'TCP', 'UDP', 'SCTP') from `tshark -z conv,...` output."""
    tables: dict[str, list[ConvRow]] = {}
    rows: list[ConvRow] | None = None
    for line in text.splitlines():
        head = re.fullmatch(r"(\S+) Conversations", line.strip())
        if head:
            rows = tables.setdefault(head.group(1), [])
            continue
        if rows is None or "<->" not in line:
            continue
        # A <-> B | frames bytes unit (<-) | frames bytes unit (->) | total ... | start | duration
        t = line.split()
        assert t[1] == "<->" and len(t) == 14, line
        rows.append(ConvRow(t[0], t[2], int(t[6]), Shown(int(t[7]), t[8]), int(t[3]), Shown(int(t[4]), t[5])))
    return tables


def endpoint(text: str) -> tuple[str, int]:
    """'2001:db8::1:443' → ('2001:db8::1', 443): the port follows the last colon."""
    addr, port = text.rsplit(":", 1)
    return addr, int(port)


# -- tshark's per-frame fields ------------------------------------------------------------------

FIELDS = [
    "frame.len",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.nxt",
    "ipv6.hopopts.nxt",
    "ipv6.dstopts.nxt",
    "ipv6.routing.nxt",
    "ipv6.fraghdr.nxt",
    "ipv6.fraghdr.offset",
    "tcp.stream",
    "udp.stream",
    "sctp.srcport",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "sctp.dstport",
]
# TCP health and application latency, as test_tcp_health and test_latency read them.
HEALTH_FIELDS = {
    "retransmissions": "tcp.analysis.retransmission",
    "out_of_order": "tcp.analysis.out_of_order",
    "duplicate_acks": "tcp.analysis.duplicate_ack",
    "zero_windows": "tcp.analysis.zero_window",
    "resets": "tcp.flags.reset",
}
LATENCY_FIELDS = {"dns": "dns.time", "http": "http.time"}
ANALYSIS_PREFS = TSHARK_PREFS

Key5 = tuple[str, str, int, str, int]  # (proto, src, sport, dst, dport)


@dataclass(frozen=True)
class Frame:
    """What tshark dissected of one frame that has IP addresses (the outer ones)."""

    length: int
    src: str
    dst: str
    proto: int  # upper-layer protocol after any IPv6 extension headers
    v6_later_fragment: bool
    in_transport_conv: bool  # tshark's TCP/UDP/SCTP conversation tap saw it
    sport: int = 0
    dport: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)  # the `extra` fields asked for, by name

    @property
    def proto_name(self) -> str:
        """'tcp', 'udp', 'icmp', ... or the number."""
        return PROTO_NAMES.get(self.proto, str(self.proto))

    @property
    def key(self) -> Key5:
        """(proto, src, sport, dst, dport); ports 0 outside a transport conversation."""
        if self.in_transport_conv:
            return (self.proto_name, self.src, self.sport, self.dst, self.dport)
        return (self.proto_name, self.src, 0, self.dst, 0)

    def has(self, name: str) -> bool:
        """Whether the extra field `name` is present and set (FT_NONE fields print 1, booleans 1/True)."""
        return self.extra.get(name, "") not in ("", "0", "False")


def _upper_proto(v: Mapping[str, str], line: str) -> int:
    if v["ip.src"]:
        return int(v["ip.proto"])
    if int(v["ipv6.nxt"]) not in IPV6_EXT:
        return int(v["ipv6.nxt"])
    chain = [v[f] for f in FIELDS if f.startswith("ipv6.") and f.endswith("nxt") and v[f]]
    upper = [int(x) for x in chain if int(x) not in IPV6_EXT]
    assert len(upper) == 1, line
    return upper[0]


def parse_frames(lines: Iterable[str], extra: Sequence[str] = ()) -> tuple[int, list[Frame]]:
    """(number of lines, frames with IP addresses) from `-T fields` lines of FIELDS then `extra`."""
    rows, frames = parse_rows(lines, extra)
    return len(rows), frames


def parse_rows(lines: Iterable[str], extra: Sequence[str] = ()) -> tuple[list[dict[str, str]], list[Frame]]:
    """(every line's fields by name, the frames with IP addresses) from `-T fields` lines."""
    names = [*FIELDS, *extra]
    rows = []
    frames = []
    for line in lines:
        v = dict(zip(names, line.split("\t"), strict=True))
        rows.append(v)
        src, dst = (v["ip.src"], v["ip.dst"]) if v["ip.src"] else (v["ipv6.src"], v["ipv6.dst"])
        if not src or not dst:
            continue
        proto = _upper_proto(v, line)
        name = PROTO_NAMES.get(proto, str(proto))
        in_conv = name in PORT_PROTOS and bool(v["sctp.srcport"] if name == "sctp" else v[f"{name}.stream"])
        frames.append(
            Frame(
                length=int(v["frame.len"]),
                src=src,
                dst=dst,
                proto=proto,
                v6_later_fragment=bool(v["ipv6.fraghdr.offset"]) and int(v["ipv6.fraghdr.offset"]) > 0,
                in_transport_conv=in_conv,
                sport=int(v[f"{name}.srcport"]) if in_conv else 0,
                dport=int(v[f"{name}.dstport"]) if in_conv else 0,
                extra={k: v[k] for k in extra},
            )
        )
    return rows, frames


def fields_args(extra: Sequence[str] = ()) -> list[str]:
    """tshark arguments printing FIELDS then `extra`, tab-separated, first occurrence (the outer layer)."""
    args = ["-T", "fields", "-E", "separator=/t", "-E", "occurrence=f"]
    return args + [a for f in [*FIELDS, *extra] for a in ("-e", f)]


def tshark_frames(path: Path, extra: Sequence[str] = ()) -> tuple[int, list[Frame]]:
    """(number of frames, the frames in which tshark dissected IPv4 or IPv6 addresses)."""
    return parse_frames(tshark(path, *fields_args(extra)).splitlines(), extra)


@dataclass(frozen=True)
class Dissection:
    """One tshark pass over a capture: every frame's fields and the conversation tables."""

    n_frames: int
    frames: list[Frame]
    tables: dict[str, list[ConvRow]]
    rows: list[dict[str, str]]  # every frame's fields by name, IP or not


def dissect(path: Path, extra: Sequence[str] = (), prefs: Sequence[str] = ANALYSIS_PREFS) -> Dissection:
    """Frames (FIELDS and `extra`) and the conversation tables of `path`, from a single tshark run."""
    args = [a for z in CONV_TABLES for a in ("-z", z)]
    out = tshark(path, *fields_args(extra), *args, prefs=prefs, timeout=300)
    lines = out.splitlines()
    cut = next((i for i, line in enumerate(lines) if line.startswith("=====")), len(lines))
    rows, frames = parse_rows(lines[:cut], extra)
    return Dissection(len(rows), frames, parse_conv("\n".join(lines[cut:])), rows)


def capinfos(path: Path) -> tuple[int, int]:
    """(packets, bytes on the wire) as capinfos reports them."""
    out = subprocess.run(["capinfos", "-M", "-c", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    packets = re.search(r"Number of packets:\s+(\d+)", out)
    size = re.search(r"Data size:\s+(\d+) bytes", out)
    assert packets and size, out
    return int(packets.group(1)), int(size.group(1))


# -- retrotap's rows, directional ---------------------------------------------------------------

Dir = tuple[int, int]  # (packets, bytes)


def pair_directions(rec: dict[str, Any]) -> dict[tuple[str, str], Dir]:
    """(sender, receiver) → (packets, bytes) from retrotap's pair rows (directions with traffic only)."""
    out: dict[tuple[str, str], Dir] = {}
    for p in rec["pairs"]:
        for frm, to, d in ((p["a"], p["b"], "a_to_b"), (p["b"], p["a"], "b_to_a")):
            if p[f"{d}_packets"]:
                assert (frm, to) not in out
                out[(frm, to)] = (p[f"{d}_packets"], p[f"{d}_bytes"])
    return out


def flow_directions(rec: dict[str, Any]) -> dict[Key5, Dir]:
    """(proto, src, sport, dst, dport) → (packets, bytes) from retrotap's flow rows."""
    out: dict[Key5, Dir] = {}
    for f in rec["flows"]:
        for k, d in (
            ((f["proto"], f["src"], f["sport"], f["dst"], f["dport"]), "src_to_dst"),
            ((f["proto"], f["dst"], f["dport"], f["src"], f["sport"]), "dst_to_src"),
        ):
            if f[f"{d}_packets"]:
                assert k not in out
                out[k] = (f[f"{d}_packets"], f[f"{d}_bytes"])
    return out


@dataclass(frozen=True)
class Compared:
    """How much a comparison covered: directions of host pairs, of transport flows, port-less rows."""

    pair_directions: int
    flow_directions: int
    portless_rows: int


def check_against_tshark(rec: dict[str, Any], path: Path, seen: Dissection | None = None) -> Compared:
    """Every pair, every transport conversation and the totals of `rec` equal tshark's view of `path`.

    `seen` is a dissection of `path` already made (with FIELDS); without it tshark runs here.
    """
    if seen is None:
        tables = parse_conv(tshark(path, "-q", *[a for z in CONV_TABLES for a in ("-z", z)]))
        n_frames, frames = tshark_frames(path)
    else:
        tables, n_frames, frames = seen.tables, seen.n_frames, seen.frames

    # Totals: every frame, IP or not, malformed or not, with its length on the wire.
    assert (rec["totals"]["packets"], rec["totals"]["bytes"]) == capinfos(path)
    assert rec["totals"]["packets"] == n_frames

    # Host pairs, per direction: tshark's tables (+ IPv6 non-first fragments, see the module doc).
    mine = pair_directions(rec)
    later6: Counter[tuple[str, str]] = Counter((f.src, f.dst) for f in frames if f.v6_later_fragment)
    exact_bytes: Counter[tuple[str, str]] = Counter()
    exact_frames: Counter[tuple[str, str]] = Counter()
    for f in frames:
        exact_bytes[(f.src, f.dst)] += f.length
        exact_frames[(f.src, f.dst)] += 1
    table_frames: dict[tuple[str, str], int] = {}
    for row in tables.get("IPv4", []) + tables.get("IPv6", []):
        for frm, to, count, shown in (
            (row.a, row.b, row.a_to_b_frames, row.a_to_b_bytes),
            (row.b, row.a, row.b_to_a_frames, row.b_to_a_bytes),
        ):
            if count or later6[(frm, to)]:
                table_frames[(frm, to)] = count + later6[(frm, to)]
                assert (frm, to) in mine, (frm, to)
                if not later6[(frm, to)]:
                    assert shown.matches(mine[(frm, to)][1]), (frm, to, shown, mine[(frm, to)])
    assert {k: v[0] for k, v in mine.items()} == table_frames
    assert mine == {k: (exact_frames[k], exact_bytes[k]) for k in exact_frames}
    assert len(mine) > 0

    # Transport conversations with ports: the tables' frames per direction, bytes at the precision
    # printed, and exactly from the frames of each conversation.
    flows = flow_directions(rec)
    exact_flow: Counter[Key5] = Counter()
    exact_flow_frames: Counter[Key5] = Counter()
    for f in frames:
        if f.in_transport_conv:
            exact_flow[f.key] += f.length
            exact_flow_frames[f.key] += 1
    theirs: dict[Key5, Dir] = {}
    for name, proto in (("TCP", "tcp"), ("UDP", "udp"), ("SCTP", "sctp")):
        for row in tables.get(name, []):
            (a, ap), (b, bp) = endpoint(row.a), endpoint(row.b)
            for key, count, shown in (
                ((proto, a, ap, b, bp), row.a_to_b_frames, row.a_to_b_bytes),
                ((proto, b, bp, a, ap), row.b_to_a_frames, row.b_to_a_bytes),
            ):
                if count:
                    assert key not in theirs, f"5-tuple reused: {key}"
                    assert shown.matches(exact_flow[key]), (key, shown, exact_flow[key])
                    theirs[key] = (count, exact_flow[key])
    assert theirs == {k: (exact_flow_frames[k], exact_flow[k]) for k in exact_flow}
    ported = {k: v for k, v in flows.items() if k[0] in PORT_PROTOS and (k[2] or k[4])}
    assert ported == theirs
    assert len(theirs) > 0

    # Port-less rows: TCP/UDP/SCTP frames without a transport conversation in tshark, and ICMP.
    portless: Counter[Key5] = Counter()
    portless_frames: Counter[Key5] = Counter()
    for f in frames:
        if not f.in_transport_conv:
            portless[f.key] += f.length
            portless_frames[f.key] += 1
    rest = {k: v for k, v in flows.items() if k not in ported}
    assert rest == {k: (portless_frames[k], portless[k]) for k in portless}
    return Compared(len(mine), len(theirs), len(rest))


# -- TCP health and application exchanges, per flow ------------------------------------------------

Flow = tuple[str, str, int, str, int]  # (proto, lower endpoint, its port, higher endpoint, its port)


def canonical(proto: str, a: str, ap: int, b: str, bp: int) -> Flow:
    """A flow's key whichever direction it is written in."""
    return (proto, a, ap, b, bp) if (a, ap) <= (b, bp) else (proto, b, bp, a, ap)


def tshark_health(frames: Iterable[Frame]) -> dict[Flow, tuple[int, ...]]:
    """Per TCP flow: the number of frames tshark marked with each of HEALTH_FIELDS (in that order)."""
    out: dict[Flow, list[int]] = {}
    for f in frames:
        if f.proto_name != "tcp" or not f.in_transport_conv:
            continue
        row = out.setdefault(canonical(*f.key), [0] * len(HEALTH_FIELDS))
        for i, name in enumerate(HEALTH_FIELDS.values()):
            row[i] += f.has(name)
    return {k: tuple(v) for k, v in out.items()}


def retrotap_health(rec: dict[str, Any]) -> dict[Flow, tuple[int, ...]]:
    """Per TCP flow of `rec`: its counts of HEALTH_FIELDS' keys."""
    return {
        canonical(f["proto"], f["src"], f["sport"], f["dst"], f["dport"]): tuple(
            int(f["tcp"][k]) for k in HEALTH_FIELDS
        )
        for f in rec["flows"]
        if f["proto"] == "tcp" and (f["sport"] or f["dport"])
    }


def tshark_exchanges(frames: Iterable[Frame]) -> Counter[tuple[str, Flow]]:
    """(kind, flow) → responses tshark timed (dns.time, http.time)."""
    out: Counter[tuple[str, Flow]] = Counter()
    for f in frames:
        for kind, name in LATENCY_FIELDS.items():
            if f.extra.get(name) and f.in_transport_conv:
                out[(kind, canonical(*f.key))] += 1
    return out


def tshark_services(frames: Iterable[Frame]) -> Counter[tuple[str, str, int]]:
    """(kind, proto, server port) → responses tshark timed; the server sends the response."""
    out: Counter[tuple[str, str, int]] = Counter()
    for f in frames:
        for kind, name in LATENCY_FIELDS.items():
            if f.extra.get(name) and f.in_transport_conv:
                out[(kind, f.proto_name, f.sport)] += 1
    return out


def retrotap_exchanges(rec: dict[str, Any]) -> Counter[tuple[str, Flow]]:
    """(kind, flow) → exchanges of `rec`'s flows; a flow's kind is its service's (one kind per port here)."""
    kinds = {(s["proto"], s["port"]): s["kind"] for s in rec["latency"]["services"]}
    out: Counter[tuple[str, Flow]] = Counter()
    for f in rec["flows"]:
        if "latency" in f:
            kind = kinds.get((f["proto"], f["dport"])) or kinds[(f["proto"], f["sport"])]
            out[(kind, canonical(f["proto"], f["src"], f["sport"], f["dst"], f["dport"]))] += f["latency"]["exchanges"]
    return out
