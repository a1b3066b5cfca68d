"""Offline accuracy: `retrotap stats -r` on the mixed capture against tshark, capinfos and tcpdump.

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
  two hosts, so retrotap counts them; the test adds them back from tshark's own per-frame
  dissection (``ipv6.fraghdr.offset > 0``) before comparing.
* Bytes: tshark 4.x prints conversation bytes with SI prefixes from 10000 on ("432 kB",
  truncated), frames exactly. Frames are compared exactly; printed bytes are compared at the
  precision printed; and exact bytes per direction come from tshark's per-frame fields
  (frame.len of the frames in which tshark dissected the IP addresses / transport conversation).
* Transport rows: retrotap keeps TCP/UDP/SCTP packets whose ports are unreadable (non-first
  fragments, transport header cut by the snaplen) as a flow with ports 0; tshark has no row for
  them. They are compared with tshark's frames that carry that protocol but no transport
  conversation (no tcp.stream / udp.stream / sctp port), ICMP flows likewise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.pcapgen import NS, mixed_packets, ts_ns, write_mixed, write_pcap

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(
    TSHARK is None or shutil.which("capinfos") is None or shutil.which("tcpdump") is None,
    reason="needs tshark, capinfos and tcpdump",
)
TSHARK_PREFS = ["-n", "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"]
UNITS = {"bytes": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9}
IPV6_EXT = {0, 43, 44, 51, 60, 135}
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
PORT_PROTOS = {"tcp", "udp", "sctp"}
HOST = "10.1.0.3"  # a host of the mix, for `-f 'host X'`


def retrotap_cmd() -> list[str]:
    """The installed `retrotap` console script of this interpreter (else the module)."""
    script = Path(sys.executable).parent / "retrotap"
    if script.exists():
        return [str(script)]
    found = shutil.which("retrotap")
    return [found] if found else [sys.executable, "-m", "tui.cli"]


def run_retrotap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*retrotap_cmd(), *args], capture_output=True, text=True, timeout=120)


def stats(path: Path, *extra: str) -> dict[str, Any]:
    """The one JSON record of `retrotap stats -r path --format json --top 0`."""
    proc = run_retrotap("stats", "-r", str(path), "--format", "json", "--top", "0", *extra)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    rec: dict[str, Any] = json.loads(lines[0])
    return rec


def tshark(path: Path, *args: str) -> str:
    assert TSHARK is not None
    proc = subprocess.run([TSHARK, "-r", str(path), *TSHARK_PREFS, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- tshark's conversation tables ---------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """A byte count as tshark printed it: exact below 10000, else truncated to an SI prefix."""

    value: int
    unit: str

    def matches(self, exact: int) -> bool:
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
    """Tables by name ('IPv4', 'IPv6', 'TCP', 'UDP', 'SCTP') from `tshark -q -z conv,...` output."""
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
]


@dataclass(frozen=True)
class Frame:
    """What tshark dissected of one frame that has IP addresses."""

    length: int
    src: str
    dst: str
    proto: int  # upper-layer protocol after any IPv6 extension headers
    v6_later_fragment: bool
    in_transport_conv: bool  # tshark's TCP/UDP/SCTP conversation tap saw it


def tshark_frames(path: Path) -> tuple[int, list[Frame]]:
    """(number of frames, the frames in which tshark dissected IPv4 or IPv6 addresses)."""
    out = tshark(
        path, "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", *[a for f in FIELDS for a in ("-e", f)]
    )
    lines = out.splitlines()
    frames = []
    for line in lines:
        v = dict(zip(FIELDS, line.split("\t"), strict=True))
        assert all("," not in x for x in v.values()), f"more than one IP layer: {line}"  # no tunnels, no ICMP errors
        src, dst = (v["ip.src"], v["ip.dst"]) if v["ip.src"] else (v["ipv6.src"], v["ipv6.dst"])
        if not src or not dst:
            continue
        if v["ip.src"]:
            proto = int(v["ip.proto"])
        else:
            chain = [v[f] for f in FIELDS if f.startswith("ipv6.") and f.endswith("nxt") and v[f]]
            upper = [int(x) for x in chain if int(x) not in IPV6_EXT]
            assert len(upper) == 1, line
            proto = upper[0]
        frames.append(
            Frame(
                length=int(v["frame.len"]),
                src=src,
                dst=dst,
                proto=proto,
                v6_later_fragment=bool(v["ipv6.fraghdr.offset"]) and int(v["ipv6.fraghdr.offset"]) > 0,
                in_transport_conv=bool(v["tcp.stream"] or v["udp.stream"] or v["sctp.srcport"]),
            )
        )
    return len(lines), frames


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


def flow_directions(rec: dict[str, Any]) -> dict[tuple[str, str, int, str, int], Dir]:
    """(proto, src, sport, dst, dport) → (packets, bytes) from retrotap's flow rows."""
    out: dict[tuple[str, str, int, str, int], Dir] = {}
    for f in rec["flows"]:
        for k, d in (
            ((f["proto"], f["src"], f["sport"], f["dst"], f["dport"]), "src_to_dst"),
            ((f["proto"], f["dst"], f["dport"], f["src"], f["sport"]), "dst_to_src"),
        ):
            if f[f"{d}_packets"]:
                assert k not in out
                out[k] = (f[f"{d}_packets"], f[f"{d}_bytes"])
    return out


def check_against_tshark(rec: dict[str, Any], path: Path) -> None:
    """Every pair, every transport conversation and the totals of `rec` equal tshark's view of `path`."""
    tables = parse_conv(
        tshark(path, "-q", "-z", "conv,ip", "-z", "conv,ipv6", "-z", "conv,tcp", "-z", "conv,udp", "-z", "conv,sctp")
    )
    n_frames, frames = tshark_frames(path)

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

    # Transport conversations with ports: the tables, per direction, bytes exact as printed.
    flows = flow_directions(rec)
    theirs: dict[tuple[str, str, int, str, int], Dir] = {}
    for name, proto in (("TCP", "tcp"), ("UDP", "udp"), ("SCTP", "sctp")):
        for row in tables.get(name, []):
            (a, ap), (b, bp) = endpoint(row.a), endpoint(row.b)
            for key, count, shown in (
                ((proto, a, ap, b, bp), row.a_to_b_frames, row.a_to_b_bytes),
                ((proto, b, bp, a, ap), row.b_to_a_frames, row.b_to_a_bytes),
            ):
                if count:
                    assert shown.unit == "bytes", "a flow grew past tshark's exact range: keep flows small"
                    assert key not in theirs, f"5-tuple reused: {key}"
                    theirs[key] = (count, shown.value)
    ported = {k: v for k, v in flows.items() if k[0] in PORT_PROTOS and (k[2] or k[4])}
    assert ported == theirs
    assert len(theirs) > 0

    # Port-less rows: TCP/UDP/SCTP frames without a transport conversation in tshark, and ICMP.
    portless: Counter[tuple[str, str, int, str, int]] = Counter()
    portless_frames: Counter[tuple[str, str, int, str, int]] = Counter()
    for f in frames:
        name = PROTO_NAMES.get(f.proto, str(f.proto))
        if name not in PORT_PROTOS or not f.in_transport_conv:
            portless[(name, f.src, 0, f.dst, 0)] += f.length
            portless_frames[(name, f.src, 0, f.dst, 0)] += 1
    rest = {k: v for k, v in flows.items() if k not in ported}
    assert rest == {k: (portless_frames[k], portless[k]) for k in portless}


# -- the mixed capture, once per module ---------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    """The mixed capture in every container, and what was written."""

    pcap: Path
    pcap_ns: Path
    pcapng: Path
    packets: int
    bytes: int
    truncated: int


@pytest.fixture(scope="module")
def mix(tmp_path_factory: pytest.TempPathFactory) -> Mix:
    d = tmp_path_factory.mktemp("mix")
    frames = write_mixed(d / "mix.pcap")
    write_mixed(d / "mix-ns.pcap", nanosecond=True)
    write_mixed(d / "mix.pcapng", pcapng=True)
    return Mix(
        d / "mix.pcap",
        d / "mix-ns.pcap",
        d / "mix.pcapng",
        len(frames),
        sum(f.wirelen for f in frames),
        sum(f.wirelen > len(f.data) for f in frames),
    )


def test_mixed_capture_is_what_pcapgen_promises(mix: Mix) -> None:
    """tshark reads every record back with caplen < wirelen exactly where pcapgen cut frames."""
    out = tshark(
        mix.pcap, "-T", "fields", "-e", "frame.len", "-e", "frame.cap_len", "-e", "vlan.id", "-e", "frame.protocols"
    )
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == mix.packets == 2000
    assert sum(int(r[0]) for r in rows) == mix.bytes
    assert sum(int(r[0]) > int(r[1]) for r in rows) == mix.truncated >= 3
    protocols = " ".join(r[3] for r in rows)
    for proto in ("tcp", "udp", "dns", "icmp", "icmpv6", "sctp", "arp", "vlan", "ipv6.hopopts", "ipv6.dstopts"):
        assert f":{proto}" in protocols, proto
    assert ":ipv6.routing" in protocols and ":ipv6.fraghdr" in protocols and "ieee8021ad" in protocols
    for path in (mix.pcap_ns, mix.pcapng):
        assert capinfos(path) == (mix.packets, mix.bytes)


def test_generator_is_deterministic() -> None:
    a, b = mixed_packets(7, 300), mixed_packets(7, 300)
    assert [bytes(p) for p in a] == [bytes(p) for p in b]
    assert [ts_ns(p) for p in a] == [ts_ns(p) for p in b]
    assert [ts_ns(p) for p in a] == sorted({ts_ns(p) for p in a})  # strictly increasing
    assert [bytes(p) for p in mixed_packets(8, 300)] != [bytes(p) for p in a]


@pytest.mark.parametrize("variant", ["pcap", "pcap_ns", "pcapng"])
def test_stats_equal_tshark(mix: Mix, variant: str) -> None:
    path: Path = getattr(mix, variant)
    rec = stats(path)
    assert rec["totals"]["malformed"] > 0
    check_against_tshark(rec, path)


TIME_KEYS = (
    "time",
    "interval",
    "first",
    "last",
    "pps",
    "bps",
    "handshake_rtt_ms",
    "ms",
    "avg_ms",
    "max_ms",
    "p50_ms",
    "p95_ms",
)


def without_times(rec: dict[str, Any]) -> dict[str, Any]:
    """A record without what depends on timestamp precision (times, rates, RTTs, latencies) or the
    interface name, tables as sets.

    Rows of equal bytes are ordered by when the table first saw them, which depends on how the
    packets were cut into blocks, so table rows are compared in a canonical order.
    """

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in TIME_KEYS}
        if isinstance(x, list):
            return sorted((strip(v) for v in x), key=lambda v: json.dumps(v, sort_keys=True))
        return x

    out: dict[str, Any] = strip({k: v for k, v in rec.items() if k != "interfaces"})
    return out


def test_containers_give_the_same_counts(mix: Mix) -> None:
    ref = stats(mix.pcap)
    assert without_times(stats(mix.pcap_ns)) == without_times(ref)
    assert without_times(stats(mix.pcapng)) == without_times(ref)
    assert [(i["captured_packets"], i["captured_bytes"]) for i in ref["interfaces"]] == [(mix.packets, mix.bytes)]


def tcpdump_filter(src: Path, expr: str, dst: Path) -> Path:
    """Write the packets of `src` that libpcap's filter `expr` accepts (tcpdump -r -w)."""
    subprocess.run(["tcpdump", "-r", str(src), "-w", str(dst), expr], capture_output=True, check=True, timeout=60)
    return dst


@pytest.mark.parametrize("expr", ["udp", f"host {HOST}", "ip6 and tcp", "vlan"])
def test_filter_equals_tcpdump_then_tshark(mix: Mix, tmp_path: Path, expr: str) -> None:
    """`-f EXPR` counts exactly the packets tcpdump's EXPR keeps, as tshark counts them."""
    filtered = tcpdump_filter(mix.pcap, expr, tmp_path / "filtered.pcap")
    rec = stats(mix.pcap, "-f", expr)
    assert rec["filter"] == expr
    assert 0 < rec["totals"]["packets"] < mix.packets
    check_against_tshark(rec, filtered)
    assert without_times(rec) == without_times(stats(filtered)) | {"filter": expr}


def test_host_filter_keeps_only_that_host(mix: Mix) -> None:
    rec = stats(mix.pcap, "-f", f"host {HOST}")
    assert rec["pairs"] and all(HOST in (p["a"], p["b"]) for p in rec["pairs"])
    host = next(h for h in rec["hosts"] if h["addr"] == HOST)
    assert host["tx_bytes"] + host["rx_bytes"] == sum(p["bytes"] for p in rec["pairs"])


# -- bad input ----------------------------------------------------------------------------------


def one_error_line(proc: subprocess.CompletedProcess[str], prefix: str = "retrotap: error: ") -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(prefix), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pcap"
    proc = run_retrotap("stats", "-r", str(path), "--format", "json")
    assert proc.returncode == 2
    assert str(path) in one_error_line(proc)
    assert proc.stdout == ""


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pcap"
    path.write_bytes(bytes((i * 37 + 11) % 256 for i in range(4096)))
    proc = run_retrotap("stats", "-r", str(path), "--format", "json")
    assert proc.returncode == 2
    assert "not a pcap or pcapng file" in one_error_line(proc)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    proc = run_retrotap("stats", "-r", str(path), "--format", "json")
    assert proc.returncode == 2
    one_error_line(proc)


def test_truncated_file_reports_the_records_read(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    frames = write_mixed(path, seed=3, n=50)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])  # the last record loses its last 10 bytes
    assert len(frames[-1].data) > 10
    proc = run_retrotap("stats", "-r", str(path), "--format", "json", "--top", "0")
    assert proc.returncode == 0, proc.stderr
    line = one_error_line(proc, "retrotap: warning: ")
    assert "truncated" in line and "49 packets" in line
    rec = json.loads(proc.stdout)
    assert rec["totals"]["packets"] == 49
    assert rec["totals"]["bytes"] == sum(f.wirelen for f in frames[:49])
    assert rec["time"] == round(frames[48].ts_ns // 1000 * 1000 / NS, 6)  # the last record read (µs file)


def test_truncated_file_has_the_same_counts_as_the_whole_records(tmp_path: Path) -> None:
    """The records before the cut are counted exactly like a file that ends cleanly after them."""
    whole, clean, cut = tmp_path / "whole.pcap", tmp_path / "clean.pcap", tmp_path / "cut.pcap"
    frames = write_mixed(whole, seed=4, n=300)
    write_pcap(clean, frames[:299])
    cut.write_bytes(whole.read_bytes()[: clean.stat().st_size + 16 + 5])  # then a record header and 5 bytes
    proc = run_retrotap("stats", "-r", str(cut), "--format", "json", "--top", "0")
    assert proc.returncode == 0
    assert "299 packets" in one_error_line(proc, "retrotap: warning: ")
    assert without_times(json.loads(proc.stdout)) == without_times(stats(clean))


def test_bad_filter_reports_libpcaps_message(mix: Mix) -> None:
    expr = "not a filter ((("
    tcpdump = subprocess.run(["tcpdump", "-r", str(mix.pcap), expr], capture_output=True, text=True, timeout=60)
    assert tcpdump.returncode != 0
    message = next(line for line in tcpdump.stderr.splitlines() if line.startswith("tcpdump: "))
    message = message.removeprefix("tcpdump: ")  # "can't parse filter expression: syntax error"
    proc = run_retrotap("stats", "-r", str(mix.pcap), "--format", "json", "-f", expr)
    assert proc.returncode == 2
    assert message in one_error_line(proc)
    assert proc.stdout == ""


def iter_records(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        yield json.loads(line)


def test_interval_records_add_up_to_the_whole(mix: Mix) -> None:
    """With --interval the last record holds every packet, and records are cumulative."""
    proc = run_retrotap("stats", "-r", str(mix.pcap), "--format", "json", "--top", "0", "--interval", "10")
    assert proc.returncode == 0, proc.stderr
    recs = list(iter_records(proc.stdout))
    assert len(recs) >= 6  # ~60 s of packets
    packets = [r["totals"]["packets"] for r in recs]
    assert packets == sorted(packets) and packets[-1] == mix.packets
    assert without_times(recs[-1]) == without_times(stats(mix.pcap))
