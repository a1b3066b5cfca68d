"""`retrotap export`: what the index lets it skip, and output equal to tcpdump/tshark over the same files."""

from __future__ import annotations

import os
import struct
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from capture_backend.analysis.decode import HAS_PORTS, address_key, decode
from capture_backend.capture.block import LINKTYPE_RAW
from capture_backend.rewind.export import (
    END_OF_TIME,
    ExportOptions,
    PcapRanges,
    TimeSpecError,
    export,
    parse_time,
)
from capture_backend.rewind.index import INDEX_NAME, Index
from capture_backend.rewind.recorder import Recorder, RecordOptions
from tests.helpers.recorder import RETROTAP, Log, Packet, read_back, recordings, tshark_packets
from tests.lab import REPO_ROOT
from tests.pcapgen import T0_NS, block_of, block_of_frames, mixed_frames, write_pcap, write_pcapng
from tui.options import UsageError, build_parser, export_options

NS = 1_000_000_000
WINDOW = (T0_NS + 12_300_000_000, T0_NS + 41_700_000_000)


def record_mixed(directory: Path, seeds: tuple[int, ...] = (1, 2), chunk_bytes: int = 8192) -> None:
    """Two interfaces of mixed traffic over the same minute, through the recorder."""
    rec = Recorder(
        RecordOptions(str(directory), rotate_bytes=100_000, rotate_ns=10 * NS, chunk_bytes=chunk_bytes),
        Log(),
        clock=lambda: T0_NS,
    )
    rec.start()
    for n, seed in enumerate(seeds):
        frames = mixed_frames(seed, 2000)
        for k in range(0, 2000, 100):
            part = frames[k : k + 100]
            rec.write(
                block_of(
                    [f.data for f in part],
                    wirelen=[f.wirelen for f in part],
                    ts_ns=[f.ts_ns + n for f in part],  # +n: no two interfaces share a timestamp
                    iface=f"eth{n}",
                )
            )
    rec.close()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("recording")
    record_mixed(directory)
    merged = directory.parent / "merged.pcap"
    files = [str(f) for f in recordings(directory)]
    subprocess.run(["mergecap", "-F", "nsecpcap", "-w", str(merged), *files], check=True, timeout=60)
    ts = [p[0] for p in read_back(merged)]
    assert len(ts) == 4000 and len(set(ts)) == 4000  # the reference order is by time alone
    return directory


def tcpdump(source: Path, expr: str, out: Path) -> list[Packet]:
    """What `tcpdump -r` keeps from a file with a filter (ns timestamps)."""
    subprocess.run(
        ["tcpdump", "--time-stamp-precision", "nano", "-r", str(source), "-w", str(out), expr],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return read_back(out)


def in_window(pkts: list[Packet], window: tuple[int, int]) -> list[Packet]:
    return [p for p in pkts if window[0] <= p[0] < window[1]]


def vlan_aware(expr: str) -> str:
    """A tcpdump filter that also looks inside one or two VLAN tags, as the decoder does."""
    return f"({expr}) or (vlan and (({expr}) or (vlan and ({expr}))))"


@pytest.mark.parametrize(
    ("host", "port", "expr"),
    [
        ("192.0.2.1", 80, "ip host 192.0.2.1 and port 80"),
        ("2001:db8:1::5", None, "ip6 host 2001:db8:1::5"),
        ("198.51.100.53", 53, "ip host 198.51.100.53 and port 53"),
        ("10.1.0.3", None, "ip host 10.1.0.3"),  # plain `host` would add ARP: --host means IP packets
    ],
)
def test_host_port_window_equals_tcpdump(
    recording: Path, tmp_path: Path, host: str, port: int | None, expr: str
) -> None:
    out = tmp_path / "out.pcap"
    opts = ExportOptions(str(recording), str(out), *WINDOW, host=address_key(host), port=port)
    res = export(opts, Log())
    want = in_window(tcpdump(recording.parent / "merged.pcap", vlan_aware(expr), tmp_path / "t.pcap"), WINDOW)
    got = read_back(out)
    assert got == want and len(got) > 20  # same packets, bytes, order and ns timestamps
    assert res.packets == len(want) and tshark_packets(out) == len(want)
    assert res.chunks_read < res.chunks_total  # the index spared reading the rest


def test_port_equals_tshark_through_ipv6_extension_headers(recording: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.pcap"
    export(ExportOptions(str(recording), str(out), port=443), Log())
    ref = tmp_path / "t.pcap"
    shark = "(tcp.port == 443 || udp.port == 443 || sctp.port == 443) && !icmp && !icmpv6"  # not inside ICMP errors
    subprocess.run(
        ["tshark", "-r", str(recording.parent / "merged.pcap"), "-Y", shark, "-F", "nsecpcap", "-w", str(ref)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    want = read_back(ref)
    assert read_back(out) == want and len(want) > 100


@pytest.mark.parametrize("expr", ["host 10.1.0.3", "tcp[tcpflags] & tcp-syn != 0", "vlan 20", "arp or icmp6"])
def test_bpf_filter_equals_tcpdump(recording: Path, tmp_path: Path, expr: str) -> None:
    out = tmp_path / "out.pcap"
    res = export(ExportOptions(str(recording), str(out), bpf=expr), Log())
    want = tcpdump(recording.parent / "merged.pcap", expr, tmp_path / "t.pcap")
    assert read_back(out) == want and res.packets == len(want) > 0


def test_cli_export_with_iso_times(recording: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.pcap"
    start, end = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t // NS)) + f".{t % NS:09d}Z" for t in WINDOW)
    done = subprocess.run(
        [*RETROTAP, "export", str(recording), "--from", start, "--to", end, "--port", "53", "-w", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    want = in_window(tcpdump(recording.parent / "merged.pcap", vlan_aware("port 53"), tmp_path / "t.pcap"), WINDOW)
    assert read_back(out) == want
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"retrotap: exported {len(want)} packets (") and f"to {out};" in line


def test_index_chunks_hold_exactly_their_hosts_and_ports(recording: Path) -> None:
    index = Index(recording)
    try:
        for info in index.files().values():
            ranges = PcapRanges(recording / info.path)
            chunks = index.chunks(info.path, 0, 1 << 62)
            assert sum(c.packets for c in chunks) == info.packets
            for c in chunks:
                block = ranges.block(c.offset, c.end, info.iface)
                dec = decode(block)
                hosts = np.concatenate((dec.src_key[dec.ip], dec.dst_key[dec.ip]))
                assert {tuple(h) for h in np.frombuffer(c.hosts, ">u8").reshape(-1, 2).tolist()} == {
                    tuple(h) for h in hosts.tolist()
                }
                with_ports = HAS_PORTS[np.clip(dec.proto, 0, 255)]
                proto = dec.proto[with_ports].astype(np.int64) << 16
                ports = set((proto | dec.sport[with_ports]).tolist()) | set((proto | dec.dport[with_ports]).tolist())
                assert set(np.frombuffer(c.ports, ">u4").tolist()) == ports
                assert (c.first_ns, c.last_ns, c.packets) == (
                    int(block.ts_ns.min()),
                    int(block.ts_ns.max()),
                    len(block),
                )
            ranges.close()
    finally:
        index.close()


def test_files_without_index_rows_copied_in_and_a_corrupt_one(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    directory.mkdir()
    frames = mixed_frames(3, 2000)
    write_pcap(directory / "old-capture.pcap", frames[:1000])  # µs timestamps
    write_pcapng(directory / "other.pcapng", frames[1000:], nanosecond=True)
    corrupt = directory / "broken.pcap"
    corrupt.write_bytes(
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + struct.pack("<IIII", 1, 0, 0xFFFFFF, 60)
    )
    out = tmp_path / "out.pcap"
    log = Log()
    export(ExportOptions(str(directory), str(out), host=address_key("10.1.0.2")), log)
    assert (
        log.lines[:1] == [f"skipping a corrupt file: '{corrupt}': corrupt record at byte 24 (incl_len {0xFFFFFF})"]
        and len(log.lines) == 1
    )
    merged = tmp_path / "merged.pcap"
    subprocess.run(
        [
            "mergecap",
            "-F",
            "nsecpcap",
            "-w",
            str(merged),
            str(directory / "old-capture.pcap"),
            str(directory / "other.pcapng"),
        ],
        check=True,
        timeout=60,
    )
    want = tcpdump(merged, vlan_aware("ip host 10.1.0.2"), tmp_path / "t.pcap")
    assert read_back(out) == want and len(want) > 10
    rows = Index(directory).files()
    assert {(r.path, r.format, r.packets) for r in rows.values()} == {
        ("old-capture.pcap", "pcap", 1000),
        ("other.pcapng", "pcapng", 1000),
    }


def test_a_lost_index_is_rebuilt_on_demand(tmp_path: Path) -> None:
    record_mixed(tmp_path, seeds=(4,))
    out1, out2 = tmp_path.parent / "a.pcap", tmp_path.parent / "b.pcap"
    export(ExportOptions(str(tmp_path), str(out1), port=80), Log())
    (tmp_path / INDEX_NAME).unlink()
    export(ExportOptions(str(tmp_path), str(out2), port=80), Log())
    assert read_back(out1) == read_back(out2) and len(read_back(out1)) > 10
    assert {r.path for r in Index(tmp_path).files().values()} == {f.name for f in recordings(tmp_path)}


def test_different_link_types_give_one_file_each(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    directory.mkdir()
    frames = mixed_frames(1, 400)
    ip_frames = [f for f in frames if f.data[12:14] == b"\x08\x00" and f.wirelen == len(f.data)][:50]
    rec = Recorder(RecordOptions(str(directory)), Log(), clock=lambda: T0_NS)
    rec.start()
    rec.write(block_of_frames(ip_frames, iface="eth0"))
    raw = [f.data[14:] for f in ip_frames]  # the same packets without their Ethernet header
    rec.write(block_of(raw, LINKTYPE_RAW, ts_ns=[f.ts_ns + 1 for f in ip_frames], iface="tun0"))
    rec.close()
    log = Log()
    res = export(ExportOptions(str(directory), str(tmp_path / "out.pcap"), port=80), log)
    assert res.paths == (str(tmp_path / "out-lt1.pcap"), str(tmp_path / f"out-lt{LINKTYPE_RAW}.pcap"))
    assert log.lines == [f"the files have different link types (1, {LINKTYPE_RAW}): one output per link type"]
    eth, ip = (read_back(p) for p in res.paths)
    assert [p[1][14:] for p in eth] == [p[1] for p in ip] and len(ip) > 3
    assert [p[0] + 1 for p in eth] == [p[0] for p in ip]


def stamp(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // NS)) + f".{ns % NS // 1000:06d}Z"


def test_list(recording: Path) -> None:
    done = subprocess.run(
        [*RETROTAP, "export", str(recording), "--list"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    files = sorted(recordings(recording), key=lambda f: (read_back(f)[0][0], f.name))
    assert lines[0].split() == ["FILE", "IFACE", "FIRST", "(UTC)", "LAST", "(UTC)", "PACKETS", "BYTES"]
    for line, f in zip(lines[1:-1], files, strict=True):
        pkts = read_back(f)
        name, iface, first, last, packets, size = line.split()
        assert (name, iface, int(packets), int(size)) == (f.name, f.name.split("-")[0], len(pkts), f.stat().st_size)
        assert first == stamp(pkts[0][0]) and last == stamp(max(p[0] for p in pkts))
    total = sum(f.stat().st_size for f in files)
    assert lines[-1] == f"{len(files)} files, 4000 packets, {total} bytes"


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_time_specs(berlin: None) -> None:
    utc_1702 = 1_795_453_320 * NS  # 2026-11-23T17:02:00Z
    now = datetime(2026, 11, 23, 17, 5).astimezone()  # 17:05 in Berlin (UTC+1)
    assert parse_time("2026-11-23T17:02:00Z") == utc_1702
    assert parse_time("2026-11-23T18:02:00+01:00") == utc_1702
    assert parse_time("2026-11-23T18:02:00") == utc_1702  # no zone: local time
    assert parse_time("2026-11-23 18:02:00.123456789") == utc_1702 + 123_456_789
    assert parse_time("2026-11-23T17:02Z") == utc_1702
    assert parse_time("18:02", now) == utc_1702  # later than now: still today (time_window decides on windows)
    assert parse_time("17:02", now) == utc_1702 - 3600 * NS  # earlier today
    assert parse_time("17:02:30.5", now) == utc_1702 - 3600 * NS + 30_500_000_000
    assert parse_time("17:06", now) == utc_1702 - 3600 * NS + 4 * 60 * NS
    for bad in ("17:99", "yesterday", "", "2026-13-01T00:00:00"):
        with pytest.raises(TimeSpecError):
            parse_time(bad, now)


def _at(day: int, hour: int, minute: int) -> int:
    """Local wall time in November 2026 → ns."""
    return int(datetime(2026, 11, day, hour, minute).astimezone().timestamp()) * NS


def _window(directory: Path, now: datetime, *times: str) -> tuple[int, int]:
    """The window `retrotap export DIR -w x.pcap TIMES...` reads at the wall time `now`."""
    args = build_parser().parse_args(["export", str(directory), "-w", "x.pcap", *times])
    opts = export_options(args, now=now)
    return opts.from_ns, opts.to_ns


def test_clock_times_are_today_unless_the_window_would_start_later_than_now(berlin: None, tmp_path: Path) -> None:
    at_2330 = datetime(2026, 11, 23, 23, 30).astimezone()
    at_0030 = datetime(2026, 11, 24, 0, 30).astimezone()
    # At 23:30, 23:00-23:59 is tonight's, up to now: a --to later than now stays today and ends the window now.
    assert _window(tmp_path, at_2330, "--from", "23:00", "--to", "23:59") == (_at(23, 23, 0), _at(23, 23, 30))
    assert _window(tmp_path, at_2330, "--from", "23:00") == (_at(23, 23, 0), END_OF_TIME)
    assert _window(tmp_path, at_2330, "--to", "23:59") == (0, _at(23, 23, 30))
    assert _window(tmp_path, at_2330, "--from", "22:00", "--to", "23:15") == (_at(23, 22, 0), _at(23, 23, 15))
    assert _window(tmp_path, at_2330, "--from", "22:00", "--to", "01:00") == (_at(23, 22, 0), _at(23, 23, 30))
    # At 00:30 a --from of 23:00 today would start in the future: it is last night's, and so is its --to.
    assert _window(tmp_path, at_0030, "--from", "23:00") == (_at(23, 23, 0), END_OF_TIME)
    assert _window(tmp_path, at_0030, "--from", "23:00", "--to", "23:59") == (_at(23, 23, 0), _at(23, 23, 59))
    assert _window(tmp_path, at_0030, "--from", "23:00", "--to", "00:15") == (_at(23, 23, 0), _at(24, 0, 15))
    assert _window(tmp_path, at_0030, "--from", "23:00", "--to", "01:00") == (_at(23, 23, 0), _at(24, 0, 30))
    assert _window(tmp_path, at_0030, "--from", "00:10") == (_at(24, 0, 10), END_OF_TIME)
    assert _window(tmp_path, at_0030, "--to", "00:15") == (0, _at(24, 0, 15))
    assert _window(tmp_path, at_0030, "--to", "23:00") == (0, _at(24, 0, 30))  # --to alone: today's, so now
    # ISO times are taken as written.
    iso_window = ("--from", "2026-11-23T22:00:00", "--to", "2026-11-23T23:00:00")
    assert _window(tmp_path, at_0030, *iso_window) == (_at(23, 22, 0), _at(23, 23, 0))
    for times, message in [
        (("--from", "2026-11-23T23:10:00", "--to", "2026-11-23T23:05:00"), "--from must be before --to"),
        (("--from", "2026-11-24T01:00:00"), "--from 2026-11-24T01:00:00: later than now"),
        (("--to", "25:00"), "--to: '25:00' is not a time"),
    ]:
        with pytest.raises(UsageError) as caught:
            _window(tmp_path, at_0030, *times)
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/dir", "-w", "x.pcap"], "'/nonexistent/dir': no such directory"),
        (["{dir}"], "export needs -w FILE (or --list)"),
        (["{dir}", "-w", "x.pcap", "--from", "noon"], "--from: 'noon' is not a time"),
        (["{dir}", "-w", "x.pcap", "--from", "2026-01-02", "--to", "2026-01-01"], "--from must be before --to"),
        (["{dir}", "-w", "x.pcap", "--from", "2999-01-01T00:00"], "--from 2999-01-01T00:00: later than now"),
        (["{dir}", "-w", "x.pcap", "--host", "nohost"], "--host: 'nohost' is not an IPv4 or IPv6 address"),
        (["{dir}", "-w", "x.pcap", "--port", "70000"], "--port 70000: must be from 1 to 65535"),
        (["{dir}", "-w", "x.pcap", "-f", "port 1", "--host", "10.0.0.1"], "use either -f BPF or --host/--port"),
        (["{dir}", "-w", "x.pcap", "-f", "port or"], "syntax error"),
        (["{dir}", "-w", "/nonexistent/out.pcap"], "No such file or directory"),
    ],
)
def test_export_mistakes_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    done = subprocess.run(
        [*RETROTAP, "export", *(a.replace("{dir}", str(tmp_path)) for a in args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("retrotap: error: ") and message in line
