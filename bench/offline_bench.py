"""Offline benchmark: `retrotap stats -r` vs `tshark -z conv,...` on the same generated pcap.

Run from the repository root::

    python -m bench.offline_bench --packets 5000000
    python -m bench.offline_bench --traffic flood --packets 1000000

The pcap (classic, microsecond, Ethernet) is written in a temporary directory in a few seconds with
NumPy: a few hundred distinct IPv4 TCP/UDP template frames (150 bidirectional conversations, an
IMIX-like size mix) repeated with increasing timestamps; or, with ``--traffic flood``, 64-byte UDP
frames each from a new random source address and port (every packet a new flow and host pair).
Both tools read it pinned to the same core; the file is deleted at the end.  No network is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
RECORD_HEADER = struct.Struct("<IIII")
CORE = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NICE = [0]  # set by --nice


def pin(core: str) -> list[str]:
    """Command prefix running on one core (taskset), at the --nice priority if one was given."""
    nice = ["nice", "-n", str(NICE[0])] if NICE[0] else []
    return [*nice, "taskset", "-c", core]
IMIX = ((64, 7), (570, 4), (1514, 1))  # frame length (no FCS), weight
CONVERSATIONS = 150
START_US = 1_700_000_000 * 1_000_000
CHUNK_CYCLES = 200  # template cycles per write


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so temporary files (and labs) are cleaned up by `with` blocks."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def ip_checksum(header: bytes) -> int:
    """RFC 1071 checksum of an IPv4 header whose checksum field is zero."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_frame(src: bytes, dst: bytes, proto: int, sport: int, dport: int, size: int, ident: int = 0) -> bytes:
    """An Ethernet/IPv4/TCP-or-UDP frame of `size` bytes (no FCS), zero payload, valid IP checksum."""
    l4_len = 20 if proto == 6 else 8
    payload = size - 14 - 20 - l4_len
    if payload < 0:
        raise ValueError(f"frame size {size} too small")
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len + payload, ident, 0x4000, 64, proto, 0, src, dst))
    struct.pack_into("!H", ip, 10, ip_checksum(bytes(ip)))
    if proto == 6:  # ACK|PSH, window 512, checksum left 0
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x18, 512, 0, 0)
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + payload, 0)
    macs = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")
    return macs + b"\x08\x00" + bytes(ip) + l4 + bytes(payload)


def templates(conversations: int = CONVERSATIONS) -> list[bytes]:
    """Distinct frames: each conversation (host pair, proto, ports) once in each direction, IMIX sizes."""
    sizes = [size for size, weight in IMIX for _ in range(weight)]
    frames: list[bytes] = []
    for i in range(conversations):
        client = bytes([10, 0, i // 250, 1 + i % 250])
        server = bytes([10, 1, (i * 7) % 16, 1 + (i * 13) % 200])
        proto = 17 if i % 3 == 0 else 6
        cport, sport = 20000 + i * 11, (53, 443, 80, 8080, 5201)[i % 5]
        frames.append(ipv4_frame(client, server, proto, cport, sport, sizes[(2 * i) % len(sizes)], i))
        frames.append(ipv4_frame(server, client, proto, sport, cport, sizes[(2 * i + 1) % len(sizes)], i))
    return frames


def _put_u32(buf: np.ndarray, pos: np.ndarray, values: np.ndarray, big_endian: bool = False) -> None:
    """Store uint32 `values` (mod 2**32) at byte offsets `pos` of a uint8 buffer."""
    for k in range(4):
        buf[pos + (3 - k if big_endian else k)] = (values >> (8 * k)) & 0xFF


def _tcp_fields(frames: Sequence[bytes]) -> tuple[list[int], list[int], list[int]]:
    """For each TCP frame: its index, its payload length and the index of the opposite direction's frame."""
    tcp = [i for i, f in enumerate(frames) if f[23] == 6]
    by_key = {(frames[i][26:30], frames[i][34:36], frames[i][30:34], frames[i][36:38]): i for i in tcp}
    peers = [by_key[(frames[i][30:34], frames[i][36:38], frames[i][26:30], frames[i][34:36])] for i in tcp]
    payloads = [len(frames[i]) - 54 for i in tcp]
    return tcp, payloads, peers


def write_frames_pcap(path: Path, frames: Sequence[bytes], packets: int, step_us: int = 2) -> int:
    """Write `packets` records cycling through `frames`, timestamps `step_us` apart; return file bytes.

    TCP sequence and acknowledgement numbers advance with every cycle, so each TCP conversation is
    a clean in-order exchange (no false retransmissions for tshark's TCP analysis to chase).
    """
    cycle = b"".join(RECORD_HEADER.pack(0, 0, len(f), len(f)) + f for f in frames)
    offsets = np.cumsum([0] + [RECORD_HEADER.size + len(f) for f in frames])[:-1]
    per_chunk = len(frames) * CHUNK_CYCLES
    chunk = np.frombuffer(cycle * CHUNK_CYCLES, np.uint8).copy()
    cyc = np.arange(CHUNK_CYCLES, dtype=np.int64)[:, None]
    pos = (offsets[None, :] + cyc * len(cycle)).ravel().astype(np.int64)
    ends = np.append(pos[1:], chunk.size)
    tcp, payloads, peers = _tcp_fields(frames)
    # Frame i's seq at cycle c is 1 + c * payload(i); its ack is the peer's next seq: the peer's data of
    # cycle c is already acked when the peer's frame comes first in the cycle, otherwise only cycle c - 1.
    seq_pos = (offsets[tcp][None, :] + RECORD_HEADER.size + 38 + cyc * len(cycle)).ravel().astype(np.int64)
    own = np.array(payloads, np.int64)
    peer = np.array([payloads[tcp.index(p)] for p in peers], np.int64)
    peer_first = np.array([p < i for i, p in zip(tcp, peers, strict=True)], np.int64)
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        written = 0
        while written < packets:
            n = min(per_chunk, packets - written)
            ts = START_US + (written + np.arange(per_chunk, dtype=np.int64)) * step_us
            _put_u32(chunk, pos, ts // 1_000_000)
            _put_u32(chunk, pos + 4, ts % 1_000_000)
            if tcp:
                c = written // len(frames) + cyc
                _put_u32(chunk, seq_pos, (1 + c * own).ravel(), big_endian=True)
                _put_u32(chunk, seq_pos + 4, (1 + (c + peer_first) * peer).ravel(), big_endian=True)
            fh.write(chunk[: ends[n - 1]].tobytes())
            written += n
        return fh.tell()


def write_flood_pcap(path: Path, packets: int, seed: int = 0, step_us: int = 1) -> int:
    """Write `packets` 64-byte UDP frames to 198.18.0.1:9, each from a random source address and port
    (trafgen's drnd()): every packet a new flow, host pair and source host. Returns the file's size."""
    frame = np.frombuffer(ipv4_frame(bytes(4), bytes([198, 18, 0, 1]), 17, 0, 9, 64), np.uint8)
    rec = RECORD_HEADER.size + frame.size
    rng = np.random.default_rng(seed)
    chunk_n = 65_536
    chunk = np.zeros((chunk_n, rec), np.uint8)
    chunk[:, RECORD_HEADER.size :] = frame
    chunk[:, 8:16] = np.frombuffer(struct.pack("<II", frame.size, frame.size), np.uint8)
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        written = 0
        while written < packets:
            n = min(chunk_n, packets - written)
            ts = START_US + (written + np.arange(chunk_n, dtype=np.int64)) * step_us
            words = chunk[:, :8].view("<u4")
            words[:, 0], words[:, 1] = ts // 1_000_000, ts % 1_000_000
            src = rng.integers(0, 1 << 32, chunk_n, dtype=np.uint64).astype(">u4")
            chunk[:, RECORD_HEADER.size + 26 : RECORD_HEADER.size + 30] = src.view(np.uint8).reshape(chunk_n, 4)
            sport = rng.integers(1, 1 << 16, chunk_n, dtype=np.uint64).astype(">u2")
            chunk[:, RECORD_HEADER.size + 34 : RECORD_HEADER.size + 36] = sport.view(np.uint8).reshape(chunk_n, 2)
            fh.write(chunk[:n].tobytes())
            written += n
        return fh.tell()


@dataclass
class Measured:
    """One command's exit status, wall and CPU time, peak RSS and output."""

    argv: list[str]
    status: int
    wall_seconds: float
    cpu_seconds: float
    max_rss_kib: int
    stdout: str
    stderr: str


def run_measured(argv: Sequence[str], timeout: float, cwd: Path = REPO_ROOT) -> Measured:
    """Run a command, reaping it with wait4 for its own rusage; SIGKILL after `timeout`."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(list(argv), proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss,
                        out.read(), err.read())


def retrotap_argv(path: Path, *extra: str) -> list[str]:
    """`retrotap stats -r FILE ...` from this checkout, pinned to the bench core."""
    return [*pin(CORE), sys.executable, "-m", "tui.cli", "stats", "-r", str(path), *extra]


def last_record(m: Measured) -> dict[str, Any]:
    """The last NDJSON record retrotap printed; RuntimeError with its stderr if there is none."""
    records = [line for line in m.stdout.splitlines() if line.startswith("{")]
    if m.status != 0 or not records:
        raise RuntimeError(f"retrotap failed (exit {m.status}): {' '.join(m.argv)}\n{m.stderr[-3000:]}")
    record: dict[str, Any] = json.loads(records[-1])
    return record


def tshark_conversations(text: str) -> dict[str, int]:
    """Rows per conversation table in tshark -z conv output, e.g. {'IPv4': 150, 'TCP': 100, 'UDP': 50}."""
    counts: dict[str, int] = {}
    current = None
    for line in text.splitlines():
        if line.endswith(" Conversations"):
            current = line.split()[0]
            counts[current] = 0
        elif current and "<->" in line:
            counts[current] += 1
        elif line.startswith("====") and current and counts[current]:
            current = None
    return counts


@dataclass
class ToolRun:
    """One tool reading one file."""

    tool: str
    packets: int
    file_bytes: int
    wall_seconds: float
    cpu_seconds: float
    max_rss_mib: float
    pps: float  # packets / wall seconds
    cpu_pps: float  # packets / CPU seconds: what the tool would do with the core to itself
    other_load_seconds: float  # busy time of the pinned core not used by the tool (other processes)
    conversations: dict[str, int]
    command: list[str]


def machine() -> dict[str, Any]:
    """Kernel, CPUs and Python of this machine."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "")
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version()}


def core_busy(cpu: int) -> float:
    """Non-idle seconds of one CPU so far (user, nice, system, irq, softirq, steal from /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            f = [int(x) for x in line.split()[1:]]
            return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / CLK_TCK
    raise RuntimeError(f"cpu{cpu} not in /proc/stat")


def _tool_run(name: str, m: Measured, packets: int, size: int, busy: float, convs: dict[str, int]) -> ToolRun:
    return ToolRun(name, packets, size, m.wall_seconds, m.cpu_seconds, m.max_rss_kib / 1024,
                   packets / m.wall_seconds, packets / m.cpu_seconds if m.cpu_seconds else 0.0,
                   max(0.0, busy - m.cpu_seconds), convs, m.argv)


def bench_retrotap(path: Path, packets: int, size: int, timeout: float) -> ToolRun:
    """Time retrotap stats -r on `path` and check it counted every packet."""
    busy = core_busy(int(CORE))
    m = run_measured(retrotap_argv(path, "--format", "json", "--top", "10"), timeout)
    busy = core_busy(int(CORE)) - busy
    rec = last_record(m)
    if rec["totals"]["packets"] != packets:
        raise RuntimeError(f"retrotap counted {rec['totals']['packets']} packets, file has {packets}")
    convs = {"flows": rec["flow_table"]["active"] + rec["flow_table"]["evicted"]}
    return _tool_run("retrotap", m, packets, size, busy, convs)


def bench_tshark(path: Path, packets: int, size: int, timeout: float, flood: bool = False) -> ToolRun:
    """Time tshark's IPv4/TCP/UDP conversation statistics on `path` (IPv4 only for a flood)."""
    tables = ["conv,ip"] if flood else ["conv,ip", "conv,tcp", "conv,udp"]
    argv = [*pin(CORE), "tshark", "-r", str(path), "-q", *(a for t in tables for a in ("-z", t))]
    busy = core_busy(int(CORE))
    m = run_measured(argv, timeout)
    busy = core_busy(int(CORE)) - busy
    if m.status != 0:
        raise RuntimeError(f"tshark failed (exit {m.status}): {m.stderr[-3000:]}")
    return _tool_run("tshark", m, packets, size, busy, tshark_conversations(m.stdout))


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the pcap, time both tools, print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.offline_bench", description=__doc__.split("\n")[0])
    p.add_argument("--packets", type=int, default=5_000_000, help="packets in the pcap (default 5000000)")
    p.add_argument("--traffic", choices=("imix", "flood"), default="imix",
                   help="imix: 150 conversations (default); flood: every packet a new flow and host pair")
    p.add_argument("--tshark-packets", type=int, default=0,
                   help="run tshark on a file of only this many packets and extrapolate (default: the full file)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each tool; the median is reported")
    p.add_argument("--timeout", type=float, default=3600.0, help="per tool run, seconds (default 3600)")
    p.add_argument("--tmpdir", default=None, help="where to write the pcap (default: system temp dir)")
    p.add_argument("--nice", type=int, default=0, help="run both tools at this nice value (e.g. -10)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' for stdout)")
    args = p.parse_args(argv)
    NICE[0] = args.nice
    if args.packets < 1 or args.tshark_packets < 0 or args.tshark_packets > args.packets:
        p.error("need 1 <= --packets and 0 <= --tshark-packets <= --packets")
    exit_on_sigterm()
    flood = args.traffic == "flood"
    frames = templates()

    def write(path: Path, packets: int) -> int:
        return write_flood_pcap(path, packets) if flood else write_frames_pcap(path, frames, packets)

    results: list[ToolRun] = []
    with tempfile.TemporaryDirectory(prefix="retrotap-offline-", dir=args.tmpdir) as tmp:
        path = Path(tmp) / "bench.pcap"
        t0 = time.monotonic()
        size = write(path, args.packets)
        gen = time.monotonic() - t0
        kind = "every packet a new flow" if flood else f"{len(frames)} distinct frames"
        print(f"# wrote {args.packets:,} packets, {size / 2**20:,.0f} MiB, {kind} in {gen:.1f} s",
              file=sys.stderr, flush=True)
        tshark_path, tshark_n, tshark_size = path, args.packets, size
        if args.tshark_packets and args.tshark_packets < args.packets:
            tshark_path, tshark_n = Path(tmp) / "prefix.pcap", args.tshark_packets
            tshark_size = write(tshark_path, tshark_n)
        for _ in range(args.repeat):
            for name in ("retrotap", "tshark"):
                if name == "retrotap":
                    run = bench_retrotap(path, args.packets, size, args.timeout)
                else:
                    run = bench_tshark(tshark_path, tshark_n, tshark_size, args.timeout, flood)
                results.append(run)
                print(f"# {name}: {run.packets:,} packets in {run.wall_seconds:.2f} s = {run.pps:,.0f} packets/s, "
                      f"CPU {run.cpu_seconds:.2f} s, max RSS {run.max_rss_mib:,.0f} MiB, {run.conversations}, "
                      f"other load on core {CORE} {run.other_load_seconds:.1f} s, loadavg {os.getloadavg()[0]:.2f}",
                      file=sys.stderr, flush=True)
    rows = []
    for name in ("retrotap", "tshark"):
        runs = sorted((r for r in results if r.tool == name), key=lambda r: r.wall_seconds)
        rows.append(runs[len(runs) // 2])  # the median run by wall time
    rt, ts = rows
    extrapolated = ts.packets != rt.packets
    ratio, cpu_ratio = rt.pps / ts.pps, rt.cpu_pps / ts.cpu_pps
    print(f"\nmachine: {machine()}; both tools pinned to core {CORE}, nice {args.nice}; "
          f"file {size / 2**20:,.0f} MiB in page cache; median of {args.repeat} run(s)\n")
    print("| tool | packets read | wall s | CPU s | max RSS MiB | packets/s (wall) | packets/CPU-s "
          f"| other load on core {CORE} s | conversations |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        convs = ", ".join(f"{k} {v}" for k, v in r.conversations.items())
        print(f"| {r.tool} | {r.packets:,} | {r.wall_seconds:.2f} | {r.cpu_seconds:.2f} | {r.max_rss_mib:,.0f} "
              f"| {r.pps:,.0f} | {r.cpu_pps:,.0f} | {r.other_load_seconds:.1f} | {convs} |")
    label = f" (tshark timed on the first {ts.packets:,} packets, extrapolated)" if extrapolated else ""
    print(f"\nretrotap {rt.pps:,.0f} packets/s, tshark {ts.pps:,.0f} packets/s (wall clock): retrotap is "
          f"{ratio:.1f}x faster; per CPU second {cpu_ratio:.1f}x{label}. tshark on all {args.packets:,} packets: "
          f"{args.packets / ts.pps:.1f} s" + (" (extrapolated)" if extrapolated else ""))
    if args.json:
        doc = {"bench": "offline", "argv": sys.argv, "machine": machine(), "packets": args.packets,
               "file_bytes": size, "traffic": args.traffic,
               "distinct_frames": args.packets if flood else len(frames), "generate_seconds": gen,
               "runs": [asdict(r) for r in results], "retrotap_pps": rt.pps, "tshark_pps": ts.pps,
               "retrotap_cpu_pps": rt.cpu_pps, "tshark_cpu_pps": ts.cpu_pps,
               "tshark_extrapolated": extrapolated, "speedup": ratio, "speedup_per_cpu_second": cpu_ratio}
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
