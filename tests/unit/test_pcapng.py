"""pcapng saves: the writer read back by our reader and by tshark, process comments on exactly the packets of
the attributed flows (time machine saves and exports), interface blocks per interface."""

from __future__ import annotations

import io
import json
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, IPv6, raw

from capture_backend.analysis.processes import process_comment
from capture_backend.capture import layouts as lay
from capture_backend.capture.block import LINKTYPE_ETHERNET, LINKTYPE_RAW
from capture_backend.capture.pcapfile import FileSource, PcapngWriter
from capture_backend.contract import EMPTY_UNKNOWN, FLOW_KEY, FlowOwners, ProcessTable, address_bytes, pack_keys
from capture_backend.exporters.incidents import IncidentSettings, IncidentWatcher
from capture_backend.replay import file_snapshots
from capture_backend.rewind.export import ExportOptions, export
from capture_backend.rewind.recorder import Recorder, RecordOptions
from capture_backend.rewind.sessions import COLUMN_NAMES, SessionStore, address_blob
from capture_backend.rewind.timemachine import TimeMachine, save_pcap, select_port
from tests.helpers.recorder import Log
from tests.lab import REPO_ROOT
from tests.pcapgen import T0_NS, Frame, block_of, block_of_frames, mixed_frames, write_pcap
from tests.tshark import tshark

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")

NS = 1_000_000_000
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # given: scapy would otherwise ask ARP for one
Flow = tuple[int, str, int, str, int]  # proto, client, client port, server, server port


def read_back(path: str | Path) -> list[tuple[str, int, int, bytes, int]]:
    """(interface, link type, ns time, frame, wire length) of every packet, by our reader."""
    out = []
    with FileSource(str(path)) as src:
        for b in src.blocks():
            for i in range(len(b)):
                s, c = int(b.start[i]), int(b.caplen[i])
                out.append((b.iface, b.linktype, int(b.ts_ns[i]), b.data[s : s + c].tobytes(), int(b.wirelen[i])))
    return out


def tshark_rows(path: Path, *fields: str) -> list[list[str]]:
    """tshark's fields of every frame (first occurrence of each), tab-separated."""
    args = ["-T", "fields", "-E", "occurrence=f"] + [a for f in fields for a in ("-e", f)]
    return [line.split("\t") for line in tshark(path, *args).splitlines()]


def test_writer_round_trip_and_tshark(tmp_path: Path) -> None:
    """Two interfaces of two link types, a comment on some packets: our reader and tshark read back the same
    frames, ns times, interface names and link types; a stripped VLAN tag is put back."""
    frames = mixed_frames(1, 300)
    eth = block_of_frames(frames[:200], iface="veth-a")
    ip_frames = [f for f in frames if f.data[12:14] == b"\x08\x00" and f.wirelen == len(f.data)][:40]
    tun = block_of([f.data[14:] for f in ip_frames], LINKTYPE_RAW, ts_ns=[f.ts_ns + 7 for f in ip_frames], iface="tun0")
    tagged = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP() / UDP() / b"v")
    vlan = block_of([tagged], ts_ns=[T0_NS + 123_456_789], vlan_tci=[0x2064], vlan_valid=[True], iface="veth-a")
    path = tmp_path / "two.pcapng"
    comment = np.full(len(eth), -1)
    comment[::7] = 0
    comment[3::7] = 1
    texts = ["process: 1234 nginx", "process: 77 python3 ü"]  # UTF-8
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        w.write_block(eth, comment=comment, texts=texts)
        w.write_block(tun, mask=np.arange(len(tun)) % 2 == 0)
        w.write_block(vlan)
    assert w.interfaces == [("veth-a", LINKTYPE_ETHERNET), ("tun0", LINKTYPE_RAW)]
    assert (w.packets, w.comments, w.bytes_written) == (200 + 20 + 1, int((comment >= 0).sum()), path.stat().st_size)
    want_tagged = tagged[:12] + struct.pack(">HH", 0x8100, 0x2064) + tagged[12:]
    want = [("veth-a", LINKTYPE_ETHERNET, f.ts_ns, f.data, f.wirelen) for f in frames[:200]]
    want += [("tun0", LINKTYPE_RAW, f.ts_ns + 7, f.data[14:], len(f.data) - 14) for f in ip_frames[::2]]
    want += [("veth-a", LINKTYPE_ETHERNET, T0_NS + 123_456_789, want_tagged, len(want_tagged))]
    assert read_back(path) == want

    rows = tshark_rows(path, "frame.interface_name", "frame.comment", "frame.time_epoch", "frame.len", "vlan.id")
    assert [r[0] for r in rows] == [w[0] for w in want]
    said = [texts[c] if c >= 0 else "" for c in comment] + [""] * 21
    assert [r[1] for r in rows] == said
    assert [r[2] for r in rows] == [f"{w[2] // NS}.{w[2] % NS:09d}" for w in want]  # ns exact
    assert [int(r[3]) for r in rows] == [w[4] for w in want]
    assert rows[-1][4] == "100"
    # One IDB per interface, with its link type and snap length, as tshark reads the file's header.
    info = subprocess.run(["capinfos", "-M", str(path)], capture_output=True, text=True, timeout=60)
    if info.returncode == 0:
        assert "Number of interfaces in file: 2" in info.stdout
        assert "Encapsulation = Ethernet (1 - ether)" in info.stdout and "Encapsulation = Raw IP" in info.stdout
        assert info.stdout.count("Capture length = 262144") == 2


def test_block_layouts_are_the_specs() -> None:
    """The declared layouts give the offsets the reader always used and the spec's fixed block lengths."""
    assert lay.PCAPNG_MIN_BLOCK_LEN == {lay.PCAPNG_SHB: 28, lay.PCAPNG_IDB: 20, lay.PCAPNG_SPB: 16, lay.PCAPNG_EPB: 32}
    assert (lay.PCAPNG_EPB_IFID, lay.PCAPNG_EPB_TS_HIGH, lay.PCAPNG_EPB_TS_LOW) == (2, 3, 4)
    assert (lay.PCAPNG_EPB_CAPLEN, lay.PCAPNG_EPB_LEN, lay.PCAPNG_EPB_DATA) == (5, 6, 28)
    assert (lay.PCAPNG_SPB_LEN, lay.PCAPNG_SPB_DATA, lay.PCAPNG_IDB_OPTIONS_OFFSET) == (2, 12, 16)
    buf = io.BytesIO()
    PcapngWriter(buf, application="x")
    shb = buf.getvalue()
    assert lay.PCAPNG_SHB_LE.unpack_from(shb) == (lay.PCAPNG_SHB, len(shb), 0x1A2B3C4D, 1, 0, -1)


# --- process comments on the packets of attributed flows


def traffic(seed: int = 3) -> tuple[list[bytes], list[Flow | None]]:
    """TCP and UDP conversations over IPv4 and IPv6 (some between the same hosts on other ports), ICMP and
    ARP between the same hosts, interleaved; each frame with its flow (None: no ports)."""
    rnd = random.Random(seed)
    convs: list[list[tuple[bytes, Flow | None]]] = []
    for i in range(24):
        v6 = i % 3 == 2
        client, server = (f"2001:db8::{i % 5 + 1}", "2001:db8::99") if v6 else (f"10.0.0.{i % 5 + 1}", "10.0.9.9")
        ip = IPv6 if v6 else IP
        proto = 6 if i % 2 else 17
        sport, dport = 40000 + i, 80 if proto == 6 else 53
        l4 = TCP if proto == 6 else UDP
        flow = (proto, client, sport, server, dport)
        conv = []
        for k in range(rnd.randint(2, 8)):
            out = k % 2 == 0
            s, d, sp, dp = (client, server, sport, dport) if out else (server, client, dport, sport)
            conv.append((raw(ETH / ip(src=s, dst=d) / l4(sport=sp, dport=dp) / (b"x" * rnd.randint(0, 300))), flow))
        convs.append(conv)
    convs.append([(raw(ETH / IP(src="10.0.0.1", dst="10.0.9.9") / ICMP()), None)] * 3)
    convs.append([(raw(ETH / ARP(psrc="10.0.0.1", pdst="10.0.9.9")), None)] * 2)
    frames: list[tuple[bytes, Flow | None]] = []
    while any(convs):
        conv = rnd.choice([c for c in convs if c])
        frames.append(conv.pop(0))
    return [f for f, _ in frames], [flow for _, flow in frames]


def flow_key(flow: Flow) -> bytes:
    """A flow's FLOW_KEY built here from its ends (the smaller endpoint first), not by retrotap's flow_ends."""
    proto, a, aport, b, bport = flow
    ends = sorted([(address_bytes(a), aport), (address_bytes(b), bport)])
    (ka, pa), (kb, pb) = ends
    rec = pack_keys(
        FLOW_KEY,
        1,
        a=np.frombuffer(ka, np.uint8)[None],
        b=np.frombuffer(kb, np.uint8)[None],
        aport=pa,
        bport=pb,
        proto=proto,
    )
    return rec.tobytes()


def owners_of(flows: list[Flow]) -> tuple[ProcessTable, dict[Flow, str]]:
    """A process table owning every other flow: three processes, a pid each."""
    procs = [(4242, "nginx"), (77, "python3"), (31337, "curl")]
    owned = {f: procs[n % 3] for n, f in enumerate(flows[::2])}
    keys = np.frombuffer(b"".join(flow_key(f) for f in owned), np.uint8).reshape(len(owned), FLOW_KEY.itemsize)
    pid = np.array([p for p, _ in owned.values()], np.int64)
    names = dict(procs)
    table = ProcessTable(1, 0.0, (), EMPTY_UNKNOWN, FlowOwners.of(keys, pid, lambda p: names[p]))
    return table, {f: process_comment(*owner) for f, owner in owned.items()}


def filled(frames: list[bytes], batch: int = 9) -> TimeMachine:
    """A time machine fed the frames in batches, alternately from two interfaces."""
    tm = TimeMachine(size=4 << 20, seconds=600)
    for n, k in enumerate(range(0, len(frames), batch)):
        part = frames[k : k + batch]
        tm.add(block_of(part, ts_ns=[T0_NS + (k + i) * 1000 for i in range(len(part))], iface=f"veth{n % 2}"))
    return tm


def test_time_machine_pcapng_comments_exactly_the_attributed_flows(tmp_path: Path) -> None:
    frames, flows = traffic()
    distinct = list(dict.fromkeys(f for f in flows if f is not None))
    table, said = owners_of(distinct)
    tm = filled(frames)
    res = save_pcap(tm, tmp_path, now_ns=T0_NS, pcapng=True, processes=table)
    assert [Path(p).name for p in res.paths] == ["retrotap-veth0+veth1-20231114T221320.000000Z.pcapng"]
    want = [said.get(f, "") if f is not None else "" for f in flows]
    assert res.packets == len(frames) and res.comments == sum(1 for w in want if w) > len(frames) // 4
    rows = tshark_rows(Path(res.paths[0]), "frame.interface_name", "frame.comment")
    assert len(rows) == tm.stats.packets
    assert [r[1] for r in rows] == want
    assert [r[0] for r in rows] == [f"veth{(i // 9) % 2}" for i in range(len(frames))]
    assert [p[3] for p in read_back(res.paths[0])] == frames
    # A selection keeps its packets and their comments; without a process table there are none.
    dns = save_pcap(tm, tmp_path / "", select=select_port(17, 53), now_ns=T0_NS + 1, pcapng=True, processes=table)
    rows = tshark_rows(Path(dns.paths[0]), "udp.srcport", "udp.dstport", "frame.comment")
    assert all("53" in r[:2] for r in rows)
    assert [r[2] for r in rows] == [w for f, w in zip(flows, want, strict=True) if f is not None and f[0] == 17]
    bare = save_pcap(tm, tmp_path, now_ns=T0_NS + 2, pcapng=True)
    assert bare.comments == 0 and {r[0] for r in tshark_rows(Path(bare.paths[0]), "frame.comment")} == {""}


# --- exports


def record(directory: Path, frames: list[bytes]) -> None:
    """The frames recorded from two interfaces, in the order and times of `filled`."""
    rec = Recorder(RecordOptions(str(directory)), Log(), clock=lambda: T0_NS)
    rec.start()
    for n, k in enumerate(range(0, len(frames), 9)):
        part = frames[k : k + 9]
        rec.write(block_of(part, ts_ns=[T0_NS + (k + i) * 1000 for i in range(len(part))], iface=f"veth{n % 2}"))
    rec.close()


def test_export_pcapng_names_the_processes_of_the_session_store(tmp_path: Path) -> None:
    frames, flows = traffic()
    distinct = list(dict.fromkeys(f for f in flows if f is not None))
    directory = tmp_path / "rec"
    directory.mkdir()
    record(directory, frames)
    owned = distinct[::3]
    store_rows = []
    for n, (proto, client, sport, server, dport) in enumerate(owned):
        rec = dict.fromkeys(COLUMN_NAMES, 0)
        rec.update(
            start_ns=T0_NS, end_ns=T0_NS + NS, iface="veth0", vlan=None, family=6 if ":" in client else 4,
            proto=proto, src=address_blob(client), sport=sport, dst=address_blob(server), dport=dport,
            rtt_us=None, latency_avg_us=None, latency_max_us=None, slowest=None,
            pid=1000 + n % 2, process=["nginx", "python3"][n % 2], user="root", reason=1,
        )  # fmt: skip
        store_rows.append(tuple(rec[c] for c in COLUMN_NAMES))
    with SessionStore(directory) as store:
        store.insert(store_rows)
    said = {f: process_comment(1000 + n % 2, ["nginx", "python3"][n % 2]) for n, f in enumerate(owned)}
    out = tmp_path / "out.pcapng"
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", "export", str(directory), "-w", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    want = [said.get(f, "") if f is not None else "" for f in flows]
    assert f"{sum(1 for w in want if w)} with their process" in done.stderr
    rows = tshark_rows(out, "frame.interface_name", "frame.comment")
    assert [r[1] for r in rows] == want
    assert [r[0] for r in rows] == [f"veth{(i // 9) % 2}" for i in range(len(frames))]
    # Without a store: the same packets, no comments, and a line saying why.
    (directory / "retrotap-sessions.sqlite").unlink()
    log = Log()
    res = export(ExportOptions(str(directory), str(tmp_path / "bare.pcapng"), pcapng=True), log)
    assert res.packets == len(frames) and res.comments == 0
    assert [p[3] for p in read_back(res.paths[0])] == frames


def test_export_pcapng_holds_every_link_type_in_one_file(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    directory.mkdir()
    frames = mixed_frames(1, 400)
    ip_frames = [f for f in frames if f.data[12:14] == b"\x08\x00" and f.wirelen == len(f.data)][:50]
    rec = Recorder(RecordOptions(str(directory)), Log(), clock=lambda: T0_NS)
    rec.start()
    rec.write(block_of_frames(ip_frames, iface="eth0"))
    rec.write(
        block_of([f.data[14:] for f in ip_frames], LINKTYPE_RAW, ts_ns=[f.ts_ns + 1 for f in ip_frames], iface="tun0")
    )
    rec.close()
    log = Log()
    res = export(ExportOptions(str(directory), str(tmp_path / "out.pcapng"), pcapng=True), log)
    assert res.paths == (str(tmp_path / "out.pcapng"),) and log.lines == []
    got = read_back(res.paths[0])
    want = []
    for f in ip_frames:  # merged by time: each eth0 packet, then its tun0 copy 1 ns later
        want += [
            ("eth0", LINKTYPE_ETHERNET, f.ts_ns, f.data, f.wirelen),
            ("tun0", LINKTYPE_RAW, f.ts_ns + 1, f.data[14:], f.wirelen - 14),
        ]
    assert got == want
    assert {r[0] for r in tshark_rows(Path(res.paths[0]), "frame.interface_name")} == {"eth0", "tun0"}


@pytest.mark.parametrize("pcapng", [True, False], ids=["pcapng", "pcap"])
def test_an_incident_is_a_pcapng_unless_asked_for_pcaps(tmp_path: Path, pcapng: bool) -> None:
    frames, flows = traffic()
    table, said = owners_of(list(dict.fromkeys(f for f in flows if f is not None)))
    tm = filled(frames)
    path = tmp_path / "t.pcap"
    write_pcap(path, [Frame(f, T0_NS + i * 1000, len(f)) for i, f in enumerate(frames)], nanosecond=True)
    snap = list(file_snapshots(str(path)))[-1]
    settings = IncidentSettings(directory=str(tmp_path / "inc"), pre_s=60, post_s=0, pcapng=pcapng)
    watcher = IncidentWatcher(settings, lambda: snap, tm, Log(), processes=lambda: table)
    watcher.start(thread=False)
    watcher.freeze()
    watcher.step()
    watcher.close()
    (inc,) = (tmp_path / "inc").glob("incident-*")
    doc = json.loads((inc / "incident.json").read_text())
    files = sorted(inc / f for f in doc["pcap"]["files"])
    assert [f.suffix for f in files] == ([".pcapng"] if pcapng else [".pcap", ".pcap"])
    assert doc["pcap"]["packets"] == len(frames)
    comments = [r[0] for f in files for r in tshark_rows(f, "frame.comment")]
    want = [said.get(f, "") if f is not None else "" for f in flows]
    assert comments == (want if pcapng else [""] * len(frames))
    assert doc["pcap"]["process_comments"] == sum(1 for w in comments if w)
