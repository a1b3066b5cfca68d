"""Recording benchmark: `retrotap record -w DIR` vs `tcpdump -w FILE` on one bounded trafgen burst, and
`retrotap export --host` vs `tcpdump -r` over an hour of recorded files.

Run as root from the repository root::

    python -m bench.record_bench --count 500000 --repeat 2

Part 1 happens inside a throw-away two-namespace lab (tests/lab.py): the recorder listens on veth a
(pinned to core 1), trafgen sends a fixed number of 1400-byte UDP frames from veth b at full speed
(core 0). No traffic touches a real interface, every burst is bounded by ``trafgen -n`` and a
timeout, and the lab is destroyed even on failure. Part 2 needs no network: an hour of synthetic
traffic (timestamps made up, one file per minute) is written through the Recorder, then both tools
pick one host out of it. Files go to a temporary directory on the file system of --dir.
"""

from __future__ import annotations

import argparse
import calendar
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.capture_bench import (
    SENDER_CORE,
    TOOL_CORE,
    Lines,
    machine,
    proc_cpu,
    reap,
    send_burst,
    trafgen_config,
)
from bench.common import need_root, write_json
from capture_backend.analysis.decode import address_key
from capture_backend.capture.block import LINKTYPE_ETHERNET, Block
from capture_backend.capture.pcapfile import FileSource
from capture_backend.rewind.export import ExportOptions, export
from capture_backend.rewind.recorder import Recorder, RecordOptions
from tests.lab import REPO_ROOT, Lab, LabError, cleanup_stale

NS = 1_000_000_000
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 300.0
RETROTAP = [sys.executable, "-m", "tui.cli"]


# ---- part 1: live recording --------------------------------------------------------------------


@dataclass
class LiveResult:
    """One tool recording one burst."""

    tool: str
    run: int
    sent: int
    send_seconds: float
    written: int  # packets in the files, counted by reading them back
    written_bytes: int  # size of the files
    files: int
    kernel_drops: int | None
    lost: int | None  # retrotap: overwritten in the pool before written
    cpu_seconds: float  # tool process, readiness to exit
    stop_seconds: float  # SIGINT to exit: the drain of what was still queued
    command: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        """Bytes written per second of the burst (the rate the files grew at while it lasted)."""
        return self.written_bytes / self.send_seconds / 1e6 if self.send_seconds else float("nan")


def count_packets(paths: Sequence[Path]) -> int:
    total = 0
    for p in paths:
        with FileSource(str(p)) as src:
            for b in src.blocks():
                total += len(b)
    return total


def run_live(
    lab: Lab, tool: str, conf: Path, count: int, run: int, grace: float, ring_mib: int, base: Path
) -> LiveResult:
    """Start one recorder on veth a (core 1), send the burst, stop it, count what it wrote."""
    out = base / f"{tool}-{run}"
    out.mkdir()
    if tool == "retrotap":
        argv = [*RETROTAP, "record", "-i", lab.veth_a, "-w", str(out), "--ring-size", str(ring_mib)]
        needle = "retrotap: listening on"
    else:
        argv = [
            "tcpdump",
            "-i",
            lab.veth_a,
            "-w",
            str(out / "tcpdump.pcap"),
            "-n",
            "-B",
            str(ring_mib * 1024),
            "--time-stamp-precision",
            "nano",
        ]
        needle = "listening on"
    argv = ["taskset", "-c", TOOL_CORE, *argv]
    proc: subprocess.Popen[str] = lab.popen_a(
        argv, cwd=REPO_ROOT, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert proc.stderr is not None
    err = Lines(proc.stderr)
    try:
        if err.wait_for(needle, READY_TIMEOUT) is None:
            raise LabError(f"{tool} not ready within {READY_TIMEOUT}s: {err.text[-2000:]}")
        cpu0 = proc_cpu(proc.pid)
        burst = send_burst(lab, conf, count)
        time.sleep(grace)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGINT)
        status, cpu_total = reap(proc, STOP_TIMEOUT)
        stop_seconds = time.monotonic() - stopped
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        raise
    err.join(10)
    text = err.text
    notes = [f"exit status {status}: {text[-300:]}"] if status != 0 else []
    files = sorted(out.glob("*.pcap"))
    drops = lost = None
    if tool == "retrotap":
        m = re.search(r"(\d+) lost \(recorder behind\), (\d+) not written.*kernel drops (\d+)", text)
        if m:
            lost, drops = int(m.group(1)), int(m.group(3))
            if int(m.group(2)):
                notes.append(f"{m.group(2)} packets not written (disk full)")
    else:
        m = re.search(r"^(\d+) packets? dropped by kernel", text, re.MULTILINE)
        drops = int(m.group(1)) if m else None
    return LiveResult(
        tool=tool,
        run=run,
        sent=burst.sent,
        send_seconds=round(burst.seconds, 3),
        written=count_packets(files),
        written_bytes=sum(f.stat().st_size for f in files),
        files=len(files),
        kernel_drops=drops,
        lost=lost,
        cpu_seconds=round(cpu_total - cpu0, 3),
        stop_seconds=round(stop_seconds, 3),
        command=argv,
        notes=notes,
    )


def live_table(results: Sequence[LiveResult]) -> str:
    lines = [
        "| tool | run | sent | written | kernel drops | lost in pool | files | MB written | burst s "
        "| MB/s during burst | CPU s | SIGINT→exit s |",
        "|" + "---|" * 12,
    ]
    for r in results:
        lines.append(
            f"| {r.tool} | {r.run} | {r.sent:,} | {r.written:,} | {_n(r.kernel_drops)} | {_n(r.lost)} | {r.files} "
            f"| {r.written_bytes / 1e6:,.1f} | {r.send_seconds:.2f} | {r.mb_per_s:,.0f} | {r.cpu_seconds:.2f} "
            f"| {r.stop_seconds:.2f} |"
        )
    return "\n".join(lines)


def _n(v: int | None) -> str:
    return "n/a" if v is None else f"{v:,}"


# ---- part 2: export over an hour of files --------------------------------------------------------


# Ethernet (dst, src, IPv4), IPv4 (no options, DF, TTL 64, UDP; length and addresses filled in), UDP.
ETH_IP_UDP = bytes.fromhex(
    "020000000002" + "020000000001" + "0800" + "45000000" + "00004000" + "40110000" + "00" * 8 + "00" * 8
)


def synthetic_minute(rng: np.random.Generator, t0: int, n: int, clients: np.ndarray, servers: np.ndarray) -> Block:
    """n UDP packets in one minute between some clients and servers; 60 % 1400 B, 40 % 80 B."""
    size = np.where(rng.random(n) < 0.6, 1400, 80).astype(np.int64)
    start = np.zeros(n, np.int64)
    np.cumsum(size[:-1], out=start[1:])
    data = np.zeros(int(size.sum()), np.uint8)
    hdr = np.tile(np.frombuffer(ETH_IP_UDP, np.uint8), (n, 1))
    client = clients[rng.integers(0, clients.shape[0], n)]
    server = servers[rng.integers(0, servers.shape[0], n)]
    up = rng.random(n) < 0.5
    src, dst = np.where(up, client, server), np.where(up, server, client)
    hdr[:, 26:30] = src.astype(">u4").view(np.uint8).reshape(n, 4)
    hdr[:, 30:34] = dst.astype(">u4").view(np.uint8).reshape(n, 4)
    cport = (1024 + (client & 0x7FFF)).astype(np.int64)
    sport, dport = np.where(up, cport, 443), np.where(up, 443, cport)
    hdr[:, 34:36] = sport.astype(">u2").view(np.uint8).reshape(n, 2)
    hdr[:, 36:38] = dport.astype(">u2").view(np.uint8).reshape(n, 2)
    hdr[:, 16:18] = (size - 14).astype(">u2").view(np.uint8).reshape(n, 2)
    hdr[:, 38:40] = (size - 34).astype(">u2").view(np.uint8).reshape(n, 2)
    data[start[:, None] + np.arange(42)] = hdr
    ts = t0 + np.sort(rng.integers(0, 60 * NS, n))
    return Block(data, start, size, size.copy(), ts, LINKTYPE_ETHERNET, "eth0")


def ip4(n: int) -> str:
    return ".".join(str(b) for b in int(n).to_bytes(4, "big"))


@dataclass
class HourRecording:
    directory: Path
    packets: int
    bytes: int
    files: int
    seconds: float  # to generate and record (index included)
    rare: str  # a client seen in a few minutes
    common: str  # a server in every minute
    window: tuple[int, int]  # ten minutes around the rare client's first minute


def record_hour(base: Path, pps: int, seed: int) -> HourRecording:
    """An hour of synthetic traffic through the Recorder: one file per minute, 50 of 3000 clients active per minute."""
    rng = np.random.default_rng(seed)
    directory = base / "hour"
    directory.mkdir()
    t0 = 1_800_000_000 * NS - 1_800_000_000 * NS % (3600 * NS)
    all_clients = (10 << 24) + rng.choice(1 << 16, 3000, replace=False).astype(np.int64)
    servers = (192 << 24) + (0 << 16) + (2 << 8) + np.arange(1, 21, dtype=np.int64)
    started = time.perf_counter()
    rec = Recorder(RecordOptions(str(directory), min_free_ratio=0), lambda _: None, clock=lambda: t0)
    rec.start()
    seen: dict[int, int] = {}
    actives: list[set[int]] = []
    for minute in range(60):
        active = rng.choice(all_clients, 50, replace=False)
        actives.append(set(active.tolist()))
        for c in active.tolist():
            seen[c] = seen.get(c, 0) + 1
        rec.write(synthetic_minute(rng, t0 + minute * 60 * NS, pps * 60, active, servers))
    rec.close()
    seconds = time.perf_counter() - started
    files = sorted(directory.glob("*.pcap"))
    rare = min((c for c, k in seen.items() if k >= 2), key=lambda c: (seen[c], c))
    first_minute = min(m for m, act in enumerate(actives) if rare in act)
    lo = min(max(first_minute - 4, 0), 50)
    return HourRecording(
        directory,
        rec.stats.packets,
        rec.stats.bytes,
        len(files),
        round(seconds, 2),
        ip4(rare),
        ip4(int(servers[0])),
        (t0 + lo * 60 * NS, t0 + (lo + 10) * 60 * NS),
    )


@dataclass
class ExportTiming:
    query: str
    tool: str
    warm_seconds: float  # best of the runs, files in the page cache
    cold_seconds: float  # best of the runs, the recording's files evicted from the page cache first
    packets: int
    same_as_tcpdump: bool | None
    command: str
    detail: str = ""


def evict(paths: Sequence[Path]) -> None:
    """Drop these files (only) from the page cache, so the next read comes from the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(argv: list[str], runs: int, cold: Sequence[Path] = ()) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Best wall time of `runs` runs (each after evicting `cold` from the page cache)."""
    best = float("inf")
    done: subprocess.CompletedProcess[str] | None = None
    for _ in range(runs):
        evict(cold)
        t = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, timeout=1800, check=False)
        best = min(best, time.perf_counter() - t)
        if done.returncode != 0:
            raise LabError(f"{' '.join(argv)} failed: {done.stderr[-1000:]}")
    assert done is not None
    return best, done


def packets_of(path: Path, unit_ns: int = 1) -> list[tuple[int, bytes]]:
    """(timestamp in units of unit_ns, captured bytes) of every packet of a file."""
    out = []
    with FileSource(str(path)) as src:
        for b in src.blocks():
            for i in range(len(b)):
                s, c = int(b.start[i]), int(b.caplen[i])
                out.append((int(b.ts_ns[i]) // unit_ns, b.data[s : s + c].tobytes()))
    return out


def iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // NS)) + f".{ns % NS:09d}Z"


def in_process(hour: HourRecording, host: str, window: tuple[int, int] | None, out: Path, runs: int) -> float:
    """Best time of the export itself, without starting an interpreter (warm cache)."""
    opts = ExportOptions(str(hour.directory), str(out), host=address_key(host))
    if window is not None:
        opts.from_ns, opts.to_ns = window
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        export(opts, lambda _: None)
        best = min(best, time.perf_counter() - t)
    return best


def export_timings(hour: HourRecording, base: Path, runs: int) -> list[ExportTiming]:
    """retrotap export --host vs tcpdump -r over the same files with the same filter, warm and cold."""
    files = sorted(hour.directory.glob("*.pcap"))
    listing = base / "files.txt"
    listing.write_text("".join(f"{f}\n" for f in files))
    start, end = hour.window
    in_window = [f for f in files if start // NS // 60 <= _minute_of(f) < end // NS // 60]
    window_list = base / "window.txt"
    window_list.write_text("".join(f"{f}\n" for f in in_window))
    out: list[ExportTiming] = []
    for label, host, window in (
        (f"host {hour.rare} (a client in few minutes), whole hour", hour.rare, None),
        (f"host {hour.common} (a server in every minute), whole hour", hour.common, None),
        (f"host {hour.rare}, 10 minutes ({iso(start)[11:16]} to {iso(end)[11:16]} UTC)", hour.rare, hour.window),
    ):
        ours = base / "export.pcap"
        argv = [*RETROTAP, "export", str(hour.directory), "--host", host, "-w", str(ours)]
        if window is not None:
            argv += ["--from", iso(start), "--to", iso(end)]
        warm, done = timed(argv, runs)
        cold, _ = timed(argv, runs, cold=files)
        inproc = in_process(hour, host, window, ours, runs)
        theirs = base / "tcpdump.pcap"
        # tcpdump -V honours --time-stamp-precision nano for the first file only: compare in µs.
        targv = ["tcpdump", "-Z", "root", "-V", str(listing if window is None else window_list), "-w", str(theirs)]
        targv.append(f"host {host}")
        twarm, _ = timed(targv, runs)
        tcold, _ = timed(targv, runs, cold=files)
        a, b = packets_of(ours, 1000), packets_of(theirs, 1000)
        if window is not None:
            b = [p for p in b if start // 1000 <= p[0] < end // 1000]
        detail = done.stderr.strip().splitlines()[-1].split("; ", 1)[-1] if done.stderr.strip() else ""
        detail += f"; the export alone (in-process, warm): {inproc:.3f} s"
        out.append(
            ExportTiming(label, "retrotap export", round(warm, 3), round(cold, 3), len(a), a == b, " ".join(argv[2:]))
        )
        out[-1].detail = detail
        n_files = len(in_window) if window is not None else len(files)
        out.append(
            ExportTiming(
                label, "tcpdump -r", round(twarm, 3), round(tcold, 3), len(b), None, " ".join(targv), f"{n_files} files"
            )
        )
    return out


def _minute_of(path: Path) -> int:
    """The minute (since the epoch) of a recording file's first packet, from its name."""
    stamp = path.name.rsplit("-", 1)[1][:15]
    return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%S")) // 60


def export_table(rows: Sequence[ExportTiming]) -> str:
    lines = [
        "| query | tool | warm s | cold s | packets | same packets as tcpdump (µs) | notes |",
        "|" + "---|" * 7,
    ]
    for r in rows:
        same = "" if r.same_as_tcpdump is None else ("yes" if r.same_as_tcpdump else "NO")
        lines.append(
            f"| {r.query} | {r.tool} | {r.warm_seconds:.3f} | {r.cold_seconds:.3f} | {r.packets:,} | {same} "
            f"| {r.detail} |"
        )
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.record_bench", description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=500_000, help="frames per burst (default 500000)")
    p.add_argument("--size", type=int, default=1400, help="frame size in bytes (default 1400)")
    p.add_argument("--repeat", type=int, default=1, help="bursts per tool (default 1)")
    p.add_argument("--flows", type=int, default=64, help="distinct UDP source ports (default 64)")
    p.add_argument("--grace", type=float, default=1.5, help="seconds after the burst before SIGINT (default 1.5)")
    p.add_argument("--ring-size", type=int, default=64, help="MiB of ring for both tools (default 64)")
    p.add_argument("--pps", type=int, default=250, help="packets per second in the synthetic hour (default 250)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per export query, best kept (default 3)")
    p.add_argument("--dir", default="/var/tmp", help="where the temporary files go (default /var/tmp)")
    p.add_argument("--skip-live", action="store_true", help="only part 2")
    p.add_argument("--skip-export", action="store_true", help="only part 1")
    p.add_argument("--json", metavar="FILE", help="also write all results as JSON ('-' for stdout)")
    args = p.parse_args(argv)
    if not 0 < args.count <= 20_000_000:
        p.error("--count must be between 1 and 20000000")
    if not 60 <= args.size <= 1514:
        p.error("--size must be between 60 and 1514")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run both parts and print Markdown tables."""
    args = parse_args(argv)
    if not need_root("record_bench"):
        return 2
    base = Path(tempfile.mkdtemp(prefix="retrotap-record-bench-", dir=args.dir))
    doc: dict[str, Any] = {"bench": "record", "argv": sys.argv, "machine": machine(), "options": vars(args)}
    try:
        print(f"machine: {machine()}\n")
        if not args.skip_live:
            cleanup_stale()
            results: list[LiveResult] = []
            with Lab() as lab:
                conf = lab.tmpdir() / f"udp-{args.size}.cfg"
                conf.write_text(trafgen_config(lab, args.size, args.flows))
                for run in range(1, args.repeat + 1):
                    for tool in ("retrotap", "tcpdump"):
                        r = run_live(lab, tool, conf, args.count, run, args.grace, args.ring_size, base)
                        results.append(r)
                        print(
                            f"# {tool} run {run}: sent {r.sent:,}, written {r.written:,}, drops {_n(r.kernel_drops)}"
                            f", {r.mb_per_s:,.0f} MB/s" + (f" ({'; '.join(r.notes)})" if r.notes else ""),
                            file=sys.stderr,
                            flush=True,
                        )
                        shutil.rmtree(base / f"{tool}-{run}")
            print(
                f"{args.count:,} frames of {args.size} B per burst, tool on core {TOOL_CORE}, trafgen on core "
                f"{SENDER_CORE}, files under {args.dir}\n"
            )
            print(live_table(results) + "\n")
            doc["live"] = [dict(asdict(r), mb_per_s=r.mb_per_s) for r in results]
        if not args.skip_export:
            hour = record_hour(base, args.pps, seed=7)
            print(
                f"synthetic hour: {hour.packets:,} packets, {hour.bytes / 1e6:,.0f} MB in {hour.files} files, "
                f"generated and recorded (with the index) in {hour.seconds} s; index "
                f"{(hour.directory / 'retrotap-index.sqlite').stat().st_size / 1e6:.1f} MB\n"
            )
            timings = export_timings(hour, base, args.runs)
            print(export_table(timings))
            doc["hour"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(hour).items()}
            doc["export"] = [asdict(t) for t in timings]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
