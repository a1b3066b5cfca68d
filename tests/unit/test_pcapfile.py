"""pcap/pcapng reading (FileSource) and pcap writing (PcapWriter), checked against scapy and tshark."""

from __future__ import annotations

import dataclasses
import shutil
import struct
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import EDecimal, PcapNgWriter, rdpcap, wrpcap

from capture_backend.capture.block import LINKTYPE_ETHERNET, LINKTYPE_RAW, Block
from capture_backend.capture.pcapfile import CaptureFileError, FileSource, PcapWriter

NS = 1_000_000_000
T0 = 1_700_000_000


class Pkt(NamedTuple):
    """One packet as a reader should report it."""

    iface: str
    linktype: int
    data: bytes
    caplen: int
    wirelen: int
    ts_ns: int


def frames(count: int = 12) -> list[bytes]:
    """Ethernet frames of varied sizes (odd sizes exercise pcapng padding)."""
    out = []
    for i in range(count):
        pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst=f"10.0.1.{i}")
        pkt = pkt / (UDP(sport=1000 + i, dport=53) if i % 2 else TCP(sport=2000 + i, dport=80))
        out.append(bytes(pkt / Raw(bytes(range(i * 13 % 256)) * (1 + i % 3))))
    return out


def read_all(path: Path, chunk_bytes: int = 8 << 20) -> tuple[list[Pkt], FileSource]:
    """Every packet a FileSource yields, flattened."""
    src = FileSource(str(path), chunk_bytes)
    with src:
        return [pkt for block in src.blocks() for pkt in unpack(block)], src


def unpack(block: Block) -> list[Pkt]:
    """A Block's packets as Pkt tuples (copies the bytes)."""
    assert block.start.dtype == np.int64 and block.ts_ns.dtype == np.int64
    assert len(block) == block.caplen.shape[0] == block.wirelen.shape[0] == block.ts_ns.shape[0]
    return [
        Pkt(block.iface, block.linktype, bytes(block.data[s : s + c]), c, w, t)
        for s, c, w, t in zip(
            block.start.tolist(), block.caplen.tolist(), block.wirelen.tolist(), block.ts_ns.tolist(), strict=True
        )
    ]


# -- pcap built by hand ------------------------------------------------------------------------


def pcap_bytes(pkts: list[Pkt], order: str = "<", nano: bool = True, snaplen: int = 65535) -> bytes:
    """A pcap file of ``pkts`` (their ts must be whole µs when not nano)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, pkts[0].linktype if pkts else 1)]
    for p in pkts:
        sec, frac = divmod(p.ts_ns, NS)
        out.append(struct.pack(order + "IIII", sec, frac if nano else frac // 1000, p.caplen, p.wirelen))
        out.append(p.data)
    return b"".join(out)


def pcap_pkts(name: str, nano: bool) -> list[Pkt]:
    """Expected packets: some cut short (caplen < wirelen), distinct ns or µs timestamps."""
    pkts = []
    for i, f in enumerate(frames()):
        cut = f[:40] if i % 4 == 3 else f
        ts = T0 * NS + i * 1_234_567_891
        ts = ts if nano else ts // 1000 * 1000
        pkts.append(Pkt(name, LINKTYPE_ETHERNET, cut, len(cut), len(f), ts))
    return pkts


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [True, False])
def test_built_pcap_variants(tmp_path: Path, order: str, nano: bool) -> None:
    """Both byte orders, µs and ns: every field of every packet comes back exactly."""
    path = tmp_path / "x.pcap"
    want = pcap_pkts("x.pcap", nano)
    path.write_bytes(pcap_bytes(want, order, nano))
    got, src = read_all(path)
    assert got == want
    assert src.packets == len(want) and src.truncated is None and src.linktype == LINKTYPE_ETHERNET
    assert any(p.caplen < p.wirelen for p in got)


@pytest.mark.parametrize("nano", [False, True])
def test_scapy_wrpcap(tmp_path: Path, nano: bool) -> None:
    """Files scapy writes, compared with what scapy reads back (bytes, lengths, times)."""
    pkts = [Ether(f) for f in frames()]
    for i, p in enumerate(pkts):
        p.time = EDecimal(T0 + i) + EDecimal("0.123456789")
    path = tmp_path / "s.pcap"
    wrpcap(str(path), pkts, nano=nano)
    ref = rdpcap(str(path))
    got, src = read_all(path)
    assert len(got) == len(ref) == 12 == src.packets
    for g, r in zip(got, ref, strict=True):
        assert (g.data, g.caplen, g.wirelen) == (bytes(r), len(r), len(r))
        assert g.ts_ns == int(Decimal(r.time) * NS)
        assert g.iface == "s.pcap" and g.linktype == LINKTYPE_ETHERNET
    assert got[3].ts_ns == (T0 + 3) * NS + (123456789 if nano else 123457000)


# -- pcapng ------------------------------------------------------------------------------------


def ng_block(order: str, btype: int, body: bytes) -> bytes:
    """One pcapng block, body padded to 4."""
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(order + "II", btype, length) + body + struct.pack(order + "I", length)


def ng_option(order: str, code: int, value: bytes) -> bytes:
    """One option, value padded to 4."""
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(order: str) -> bytes:
    """A Section Header Block."""
    return ng_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(order: str, linktype: int, snaplen: int, name: bytes | None = None, tsresol: int | None = None) -> bytes:
    """An Interface Description Block with optional if_name and if_tsresol."""
    opts = b""
    if name is not None:
        opts += ng_option(order, 2, name)
    if tsresol is not None:
        opts += ng_option(order, 9, bytes([tsresol]))
    if opts:
        opts += ng_option(order, 0, b"")
    return ng_block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts)


def epb(order: str, ifid: int, ticks: int, data: bytes, wirelen: int) -> bytes:
    """An Enhanced Packet Block."""
    head = struct.pack(order + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(data), wirelen)
    return ng_block(order, 6, head + data)


def spb(order: str, data: bytes, wirelen: int) -> bytes:
    """A Simple Packet Block (data = what the file holds)."""
    return ng_block(order, 3, struct.pack(order + "I", wirelen) + data)


def built_pcapng(name: str) -> tuple[bytes, list[Pkt], list[tuple[str, int]]]:
    """Two sections (LE then BE), 3 interfaces, ns / 2^-20 / default µs resolutions, EPB and SPB.

    Returns the file, the expected packets and the expected (iface, count) of each Block.
    """
    f = frames()
    ns_ts = T0 * NS + 987_654_321
    p2_sec, p2_frac = T0 + 5, 777_777  # ticks of 2^-20 s
    p2_ns = (T0 + 5) * NS + p2_frac * NS // (1 << 20)
    parts = [
        shb("<"),
        idb("<", LINKTYPE_ETHERNET, 100, b"eth0", 9),
        idb("<", LINKTYPE_RAW, 65535, None, 0x80 | 20),
        ng_block("<", 4, struct.pack("<HH", 0, 0)),  # NRB with no records: skipped
        epb("<", 0, ns_ts, f[0], len(f[0])),
        epb("<", 0, ns_ts + 1, f[1][:60], len(f[1])),
        epb("<", 1, (p2_sec << 20) | p2_frac, f[2][14:], len(f[2]) - 14),
        epb("<", 1, (p2_sec << 20) | p2_frac, f[3][14:], len(f[3]) - 14),
        spb("<", f[4][:100], len(f[4])),  # iface 0, snaplen 100
        spb("<", f[5][:100] if len(f[5]) > 100 else f[5], len(f[5])),
        epb("<", 0, ns_ts + 5, f[6], len(f[6])),
        ng_block("<", 5, struct.pack("<III", 0, 0, 0)),  # ISB
        shb(">"),
        idb(">", LINKTYPE_ETHERNET, 262144, b"wlan0"),
        spb(">", f[7], len(f[7])),  # before any EPB of this section: previous packet's time
        epb(">", 0, (T0 + 9) * 1_000_000 + 1, f[8], len(f[8])),
        spb(">", f[9], len(f[9])),
    ]
    cap4, cap5 = min(len(f[4]), 100), min(len(f[5]), 100)
    want = [
        Pkt("eth0", 1, f[0], len(f[0]), len(f[0]), ns_ts),
        Pkt("eth0", 1, f[1][:60], 60, len(f[1]), ns_ts + 1),
        Pkt(f"{name}#1", LINKTYPE_RAW, f[2][14:], len(f[2]) - 14, len(f[2]) - 14, p2_ns),
        Pkt(f"{name}#1", LINKTYPE_RAW, f[3][14:], len(f[3]) - 14, len(f[3]) - 14, p2_ns),
        Pkt("eth0", 1, f[4][:cap4], cap4, len(f[4]), p2_ns),
        Pkt("eth0", 1, f[5][:cap5], cap5, len(f[5]), p2_ns),
        Pkt("eth0", 1, f[6], len(f[6]), len(f[6]), ns_ts + 5),
        Pkt("wlan0", 1, f[7], len(f[7]), len(f[7]), ns_ts + 5),
        Pkt("wlan0", 1, f[8], len(f[8]), len(f[8]), (T0 + 9) * NS + 1000),
        Pkt("wlan0", 1, f[9], len(f[9]), len(f[9]), (T0 + 9) * NS + 1000),
    ]
    blocks = [("eth0", 2), (f"{name}#1", 2), ("eth0", 3), ("wlan0", 3)]
    return b"".join(parts), want, blocks


def test_built_pcapng(tmp_path: Path) -> None:
    """Sections of both byte orders, IDB options, EPB and SPB, skipped blocks; split per interface."""
    data, want, want_blocks = built_pcapng("x.pcapng")
    path = tmp_path / "x.pcapng"
    path.write_bytes(data)
    with FileSource(str(path)) as src:
        assert src.linktype == LINKTYPE_ETHERNET and src.snaplen == 100
        blocks = list(src.blocks())
        assert [(b.iface, len(b)) for b in blocks] == want_blocks
        assert [p for b in blocks for p in unpack(b)] == want
        assert src.packets == 10 and src.truncated is None


def test_spb_caplen_is_min_of_len_snaplen_and_body(tmp_path: Path) -> None:
    """SPB caplen = min(original length, interface snaplen, body); the file's bytes beyond it are skipped."""
    data = bytes(range(200))
    parts = [shb("<"), idb("<", 1, 100), spb("<", data, 150), spb("<", data[:80], 300), spb("<", data[:50], 50)]
    path = tmp_path / "s.pcapng"
    path.write_bytes(b"".join(parts))
    got, _ = read_all(path)
    assert [(p.data, p.caplen, p.wirelen, p.ts_ns) for p in got] == [
        (data[:100], 100, 150, 0),
        (data[:80], 80, 300, 0),
        (data[:50], 50, 50, 0),
    ]


def test_built_pcapng_checked_by_tshark(tmp_path: Path) -> None:
    """tshark reads the hand-built pcapng with the same lengths, so the builder is sound."""
    data, want, _ = built_pcapng("x.pcapng")
    path = tmp_path / "x.pcapng"
    path.write_bytes(data)
    rows = tshark(path, "frame.len", "frame.cap_len", "frame.time_epoch")
    assert [row[:2] for row in rows] == [[str(p.wirelen), str(p.caplen)] for p in want]
    epb_rows = [(row[2], p.ts_ns) for row, p in zip(rows, want, strict=True) if row[2]]  # SPBs have no time
    assert len(epb_rows) == 6
    assert all(shown == f"{ts // NS}.{ts % NS:09d}" for shown, ts in epb_rows)


def test_scapy_pcapng(tmp_path: Path) -> None:
    """scapy's PcapNgWriter (EPBs, an unnamed and a named interface) against scapy's reader."""
    path = tmp_path / "s.pcapng"
    writer = PcapNgWriter(str(path))
    for i, f in enumerate(frames()):
        pkt = Ether(f)
        pkt.time = EDecimal(T0 + i) + EDecimal("0.25")
        if i in (4, 5, 9):
            pkt.sniffed_on = "eth1"
        writer.write(pkt)
    writer.close()
    ref = rdpcap(str(path))
    with FileSource(str(path)) as src:
        blocks = list(src.blocks())
        got = [p for b in blocks for p in unpack(b)]
    assert [(b.iface, len(b)) for b in blocks] == [
        ("s.pcapng#0", 4),
        ("eth1", 2),
        ("s.pcapng#0", 3),
        ("eth1", 1),
        ("s.pcapng#0", 2),
    ]
    assert len(got) == len(ref) == 12
    for g, r in zip(got, ref, strict=True):
        assert (g.data, g.caplen, g.wirelen) == (bytes(r), len(r), len(r))
        assert g.ts_ns == int(Decimal(r.time) * NS)
    assert got[1].ts_ns == (T0 + 1) * NS + NS // 4


# -- chunking, truncation, errors ----------------------------------------------------------------


@pytest.fixture
def sample_files(tmp_path: Path) -> list[Path]:
    """A µs pcap, a big-endian ns pcap and the hand-built pcapng."""
    a = tmp_path / "a.pcap"
    a.write_bytes(pcap_bytes(pcap_pkts("a.pcap", False), "<", False))
    b = tmp_path / "b.pcap"
    b.write_bytes(pcap_bytes(pcap_pkts("b.pcap", True), ">", True))
    c = tmp_path / "c.pcapng"
    c.write_bytes(built_pcapng("c.pcapng")[0])
    return [a, b, c]


@pytest.mark.parametrize("chunk", [1, 7, 64, 100, 333, 4096])
def test_tiny_chunks_give_identical_results(sample_files: list[Path], chunk: int) -> None:
    """Records straddling chunk ends are carried over: same packets whatever the chunk size."""
    for path in sample_files:
        want, _ = read_all(path)
        got, src = read_all(path, chunk)
        assert got == want and src.packets == len(want) > 0 and src.truncated is None


def test_block_data_is_the_chunk(sample_files: list[Path]) -> None:
    """One Block per chunk for pcap: data is the chunk, start points past each record header."""
    longest = 16 + max(len(p.data) for p in pcap_pkts("a.pcap", False))
    with FileSource(str(sample_files[0]), 200) as src:
        blocks = list(src.blocks())
    assert len(blocks) > 3
    for b in blocks:
        assert b.data.shape[0] <= 200 + longest  # a chunk plus the record carried into it
        assert int(b.start[0]) == 16  # every chunk starts at a record header


@pytest.mark.parametrize("index", [0, 1, 2])
def test_truncated_file_yields_whole_records(sample_files: list[Path], index: int) -> None:
    """Cut inside the last record (every cut point): all earlier records, then the warning."""
    path = sample_files[index]
    full = path.read_bytes()
    want = [p[2:] for p in read_all(path)[0]]
    unit = "block" if path.suffix == ".pcapng" else "record"
    f9 = frames()[9]
    last_len = len(spb(">", f9, len(f9))) if unit == "block" else 16 + len(want[-1][0])
    cut_path = path.with_name("cut" + path.suffix)
    for cut in range(len(full) - last_len + 1, len(full)):
        cut_path.write_bytes(full[:cut])
        for chunk in (50, 8 << 20):
            got, src = read_all(cut_path, chunk)
            assert [p[2:] for p in got] == want[:-1]
            assert src.truncated == f"'{cut_path}' ends mid-{unit} after {len(want) - 1} packets (truncated file)"
    cut_path.write_bytes(full[: len(full) - last_len])
    got, src = read_all(cut_path)
    assert [p[2:] for p in got] == want[:-1] and src.truncated is None


def test_missing_and_bad_files(tmp_path: Path) -> None:
    """One-line errors for a missing file, a directory, an empty file, garbage and a short header."""
    missing = tmp_path / "x.pcap"
    with pytest.raises(CaptureFileError, match=r"^cannot open '.*x\.pcap': No such file or directory$"):
        FileSource(str(missing))
    with pytest.raises(CaptureFileError, match=r"^cannot open '.*': Is a directory$"):
        FileSource(str(tmp_path))
    missing.write_bytes(b"")
    with pytest.raises(CaptureFileError, match=r"is not a pcap or pcapng file \(empty file\)$"):
        FileSource(str(missing))
    missing.write_bytes(b"\x7fELF" + bytes(100))
    with pytest.raises(CaptureFileError) as exc:
        FileSource(str(missing))
    assert str(exc.value) == f"'{missing}' is not a pcap or pcapng file (magic 0x7f454c46)"
    missing.write_bytes(struct.pack("<I", 0xA1B2C3D4) + bytes(10))
    with pytest.raises(CaptureFileError, match="ends inside the pcap file header"):
        FileSource(str(missing))
    missing.write_bytes(struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x11223344, 1, 0, -1))
    with pytest.raises(CaptureFileError, match=r"corrupt section header at byte 0 \(byte-order magic 0x44332211\)"):
        FileSource(str(missing))


@pytest.mark.parametrize("chunk", [40, 300, 8 << 20])
@pytest.mark.parametrize("bad_incl", [99_999_999, 400_000, 70_000])
def test_absurd_incl_len_after_good_records(tmp_path: Path, chunk: int, bad_incl: int) -> None:
    """Records before the corrupt one are yielded, then the error names its offset and incl_len.

    With snaplen 100, incl_len 70000 is absurd (> 4 x snaplen + 64 KiB) yet fits inside a big chunk.
    """
    pkts = pcap_pkts("x.pcap", True)[:5]
    good = pcap_bytes(pkts, snaplen=100)
    bad = struct.pack("<IIII", T0, 0, bad_incl, 60) + bytes(100_000)
    path = tmp_path / "x.pcap"
    path.write_bytes(good + bad + pcap_bytes(pkts)[24:])
    seen: list[Pkt] = []
    with FileSource(str(path), chunk) as src, pytest.raises(CaptureFileError) as exc:
        for block in src.blocks():
            seen.extend(unpack(block))
    assert str(exc.value) == f"'{path}': corrupt record at byte {len(good)} (incl_len {bad_incl})"
    assert seen == pkts and src.packets == 5


def pcapng_with(bad: bytes) -> tuple[bytes, int]:
    """Two good EPBs, then ``bad``; returns the file and the offset of ``bad``."""
    head = shb("<") + idb("<", 1, 0) + epb("<", 0, 1, b"a" * 20, 20) + epb("<", 0, 2, b"b" * 21, 21)
    return head + bad + epb("<", 0, 3, b"c" * 20, 20), len(head)


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        (struct.pack("<II", 6, 45) + bytes(40), "block length 45"),
        (struct.pack("<II", 6, 8) + bytes(40), "block length 8"),
        (struct.pack("<II", 1, 4) + bytes(40), "block length 4"),
        (epb("<", 0, 4, b"d" * 20, 20)[:-4] + struct.pack("<I", 40), "trailing length 40 != 52"),
        (ng_block("<", 2, bytes(16))[:-4] + struct.pack("<I", 0), "trailing length 0 != 28"),
        (epb("<", 3, 4, b"d" * 20, 20), "packet on undeclared interface 3"),
        (
            struct.pack("<IIIIIII", 6, 36, 0, 0, 0, 9, 9) + bytes(4) + struct.pack("<I", 36),
            "EPB caplen 9 exceeds block length 36",
        ),
        (struct.pack("<II", 6, 0x7FFFFFF0) + bytes(40), f"block length {0x7FFFFFF0}"),
    ],
)
@pytest.mark.parametrize("chunk", [30, 8 << 20])
def test_corrupt_pcapng_blocks(tmp_path: Path, bad: bytes, detail: str, chunk: int) -> None:
    """Bad block lengths and packet fields: the good blocks first, then the offset and reason."""
    data, offset = pcapng_with(bad)
    path = tmp_path / "x.pcapng"
    path.write_bytes(data)
    seen: list[Pkt] = []
    with FileSource(str(path), chunk) as src, pytest.raises(CaptureFileError) as exc:
        for block in src.blocks():
            seen.extend(unpack(block))
    assert str(exc.value) == f"'{path}': corrupt block at byte {offset} ({detail})"
    assert [p.data for p in seen] == [b"a" * 20, b"b" * 21]


def test_blocks_can_be_iterated_again(sample_files: list[Path]) -> None:
    """blocks() restarts from the beginning of the file."""
    with FileSource(str(sample_files[2]), 100) as src:
        first = [p for b in src.blocks() for p in unpack(b)]
        second = [p for b in src.blocks() for p in unpack(b)]
    assert first == second and len(first) == src.packets == 10


HEADERS = {
    "pcap": struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 1500, 1),
    "pcap-be-ns": struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 0, 1),
    "pcapng": shb("<") + idb("<", 1, 128, b"e", 0x85),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(sorted(HEADERS)),
    tail=st.binary(max_size=400),
    chunk=st.sampled_from([1, 13, 64, 8 << 20]),
    good=st.integers(0, 3),
)
def test_random_bytes_only_raise_capture_file_error(
    tmp_path: Path, kind: str, tail: bytes, chunk: int, good: int
) -> None:
    """Garbage after a valid header (and a few good records) never raises anything else."""
    if kind == "pcapng":
        body = b"".join(epb("<", 0, i, bytes([i]) * (17 + i), 99) for i in range(good))
    else:
        order = ">" if kind.endswith("be-ns") else "<"
        body = b"".join(struct.pack(order + "IIII", T0, i, 17 + i, 99) + bytes([i]) * (17 + i) for i in range(good))
    path = tmp_path / "r.bin"
    path.write_bytes(HEADERS[kind] + body + tail)
    count = 0
    try:
        with FileSource(str(path), chunk) as src:
            for block in src.blocks():
                assert np.all(block.start + block.caplen <= block.data.shape[0]) and np.all(block.caplen >= 0)
                count += len(block)
    except CaptureFileError as exc:
        assert "\n" not in str(exc)
    assert count >= good


# -- writer ---------------------------------------------------------------------------------------


def tshark(path: Path, *fields: str) -> list[list[str]]:
    """tshark's field rows for a file; asserts it printed nothing on stderr."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    cmd = ["tshark", "-r", str(path), "-T", "fields"]
    for f in fields:
        cmd += ["-e", f]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    stderr = "\n".join(line for line in res.stderr.splitlines() if "Running as user" not in line)
    assert res.returncode == 0 and stderr == ""
    return [line.split("\t") for line in res.stdout.splitlines()]


def test_writer_round_trip_with_vlan_reinsertion(tmp_path: Path) -> None:
    """Stripped VLAN tags come back after the MACs; lengths +4; ns times exact; tshark agrees."""
    src_path = tmp_path / "in.pcap"
    pkts = pcap_pkts("in.pcap", True)
    src_path.write_bytes(pcap_bytes(pkts))
    block = next(FileSource(str(src_path)).blocks())
    n = len(block)
    tci = np.zeros(n, dtype=np.uint16)
    tci[[1, 4, 5]] = [100, 0x2000 | 200, 300]
    valid = tci != 0
    valid[7] = True  # tag with TCI 0 (priority tag, VLAN 0)
    tpid = np.zeros(n, dtype=np.uint16)
    tpid[5] = 0x88A8
    block = dataclasses.replace(block, vlan_tci=tci, vlan_valid=valid, vlan_tpid=tpid)
    out = tmp_path / "out.pcap"
    with out.open("wb") as f:
        writer = PcapWriter(f, LINKTYPE_ETHERNET)
        written = writer.write_block(block)
    assert written == out.stat().st_size - 24 == sum(16 + p.caplen + 4 * bool(valid[i]) for i, p in enumerate(pkts))
    fields = ("frame.len", "frame.cap_len", "frame.time_epoch", "vlan.id", "ieee8021ad.id", "vlan.etype", "eth.type")
    rows = tshark(out, *fields)
    for i, (p, row) in enumerate(zip(pkts, rows, strict=True)):
        add = 4 if valid[i] else 0
        sec, frac = divmod(p.ts_ns, NS)
        assert row[:3] == [str(p.wirelen + add), str(p.caplen + add), f"{sec}.{frac:09d}"]
        vlan_id = str(tci[i] & 0xFFF) if valid[i] else ""
        assert row[3:5] == ([vlan_id, ""] if tpid[i] == 0 else ["", vlan_id])  # 0x88a8 is an 802.1ad tag
    assert [rows[i][6] for i in (0, 1, 5, 7)] == ["0x0800", "0x8100", "0x88a8", "0x8100"]
    assert rows[1][5] == "0x0800" and rows[7][3] == "0"
    back, _ = read_all(out)
    for i, (p, q) in enumerate(zip(pkts, back, strict=True)):
        tag = struct.pack(">HH", tpid[i] or 0x8100, tci[i]) if valid[i] else b""
        assert q.data == p.data[:12] + tag + p.data[12:] and q.ts_ns == p.ts_ns


def test_writer_mask_usec_and_snaplen(tmp_path: Path) -> None:
    """A mask selects packets; µs files round timestamps down; snaplen cuts the records."""
    src_path = tmp_path / "in.pcap"
    pkts = pcap_pkts("in.pcap", True)
    src_path.write_bytes(pcap_bytes(pkts))
    block = next(FileSource(str(src_path)).blocks())
    mask = np.zeros(len(block), dtype=bool)
    mask[[0, 2, 3, 9]] = True
    out = tmp_path / "out.pcap"
    with out.open("wb") as f:
        writer = PcapWriter(f, LINKTYPE_ETHERNET, snaplen=64, nanosecond=False)
        written = writer.write_block(block, mask)
        assert writer.write_block(block, np.zeros(len(block), dtype=bool)) == 0
    assert written == out.stat().st_size - 24 == sum(16 + min(pkts[i].caplen, 64) for i in (0, 2, 3, 9))
    chosen = [pkts[i] for i in (0, 2, 3, 9)]
    rows = tshark(out, "frame.len", "frame.cap_len", "frame.time_epoch")
    assert rows == [
        [str(p.wirelen), str(min(p.caplen, 64)), f"{p.ts_ns // NS}.{p.ts_ns % NS // 1000:06d}000"] for p in chosen
    ]
    back, _ = read_all(out)
    assert [q.data for q in back] == [p.data[:64] for p in chosen]


def test_writer_many_lengths_and_write_packet(tmp_path: Path) -> None:
    """Thousands of packets with common and rare lengths (both copy paths), then write_packet."""
    rng = np.random.default_rng(7)
    lengths = np.where(rng.random(3000) < 0.7, rng.choice([60, 1514], 3000), rng.integers(14, 2000, 3000))
    payload = rng.integers(0, 256, int(lengths.sum()) + 3000 * 7, dtype=np.uint8)
    start = np.cumsum(np.concatenate(([0], lengths[:-1] + 7)))
    block = Block(
        data=payload,
        start=start.astype(np.int64),
        caplen=lengths.astype(np.int64),
        wirelen=lengths.astype(np.int64) + 2,
        ts_ns=T0 * NS + np.arange(3000, dtype=np.int64) * 999,
        linktype=LINKTYPE_ETHERNET,
        iface="lab0",
    )
    out = tmp_path / "out.pcap"
    with out.open("wb") as f:
        writer = PcapWriter(f, LINKTYPE_ETHERNET)
        total = writer.write_block(block)
        total += writer.write_packet(T0 * NS + 5, b"\x01" * 70, 80)
    assert total == out.stat().st_size - 24 == int(lengths.sum()) + 16 * 3000 + 86
    back, src = read_all(out)
    assert src.packets == 3001
    for i in (0, 1, 2, 777, 2999):
        s, k = int(start[i]), int(lengths[i])
        assert back[i] == Pkt("out.pcap", 1, payload[s : s + k].tobytes(), k, k + 2, T0 * NS + i * 999)
    assert all(
        q.data == payload[int(s) : int(s) + int(k)].tobytes() for q, s, k in zip(back[:-1], start, lengths, strict=True)
    )
    assert back[-1] == Pkt("out.pcap", 1, b"\x01" * 70, 70, 80, T0 * NS + 5)
    assert tshark(out, "frame.len")[-1] == ["80"]


MUTATION_BASES = {
    "pcapng": built_pcapng("m.bin")[0],
    "pcap": pcap_bytes(pcap_pkts("m.bin", True)[:6], ">", True, snaplen=200),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(sorted(MUTATION_BASES)),
    edits=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(0, 4000),
    chunk=st.sampled_from([5, 64, 8 << 20]),
)
def test_mutated_files_only_raise_capture_file_error(
    tmp_path: Path, kind: str, edits: list[tuple[int, int]], cut: int, chunk: int
) -> None:
    """Valid files with a few bytes changed and cut anywhere: CaptureFileError or sane Blocks."""
    data = bytearray(MUTATION_BASES[kind])
    for pos, value in edits:
        data[pos % len(data)] = value
    path = tmp_path / "m.bin"
    path.write_bytes(bytes(data[: max(cut, 24)]))
    try:
        with FileSource(str(path), chunk) as src:
            for block in src.blocks():
                assert np.all(block.start + block.caplen <= block.data.shape[0]) and np.all(block.caplen >= 0)
                assert np.all(block.start >= 0)
    except CaptureFileError as exc:
        assert "\n" not in str(exc)


def test_writer_leaves_runts_and_non_ethernet_untagged(tmp_path: Path) -> None:
    """A frame shorter than two MACs, or a non-Ethernet link type, gets no tag re-inserted."""
    data = np.frombuffer(bytes(range(40)), dtype=np.uint8)
    block = Block(
        data=data,
        start=np.array([0, 10], dtype=np.int64),
        caplen=np.array([10, 30], dtype=np.int64),
        wirelen=np.array([10, 30], dtype=np.int64),
        ts_ns=np.array([T0 * NS, T0 * NS + 1], dtype=np.int64),
        linktype=LINKTYPE_ETHERNET,
        iface="lab0",
        vlan_tci=np.array([7, 7], dtype=np.uint16),
    )
    out = tmp_path / "out.pcap"
    with out.open("wb") as f:
        assert PcapWriter(f, LINKTYPE_ETHERNET).write_block(block) == 16 + 10 + 16 + 34
    assert [p.data for p in read_all(out)[0]] == [
        bytes(range(10)),
        bytes(range(10, 22)) + b"\x81\x00\x00\x07" + bytes(range(22, 40)),
    ]
    raw = dataclasses.replace(block, linktype=LINKTYPE_RAW)
    with out.open("wb") as f:
        assert PcapWriter(f, LINKTYPE_RAW).write_block(raw) == 16 + 10 + 16 + 30
    assert [p.data for p in read_all(out)[0]] == [bytes(range(10)), bytes(range(10, 40))]
