"""In-process cost of application latency: decode and count a 64 B TCP/DNS mix with analysis off, on
without latency, and on with latency (no capture, one core, best of --repeat).

    PYTHONPATH=. python3 -m bench.latency_inprocess --packets 400000 --repeat 3

The mix is bench/analysis_bench.py's: per group of eight, an HTTP request and its response, a DNS
query and its answer (UDP) and four TLS data segments, over --flows templates, in --batch-frame
blocks. The last line is the time inside Latency.add and Counters.add_latency of the latency run.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Sequence

from bench.analysis_bench import HTTP_REQUEST, HTTP_RESPONSE, _eth, _ip
from capture_backend.analysis.decode import decode
from capture_backend.analysis.latency import Latency
from capture_backend.analysis.tables import CounterLimits, Counters
from capture_backend.capture.block import Block
from tests.pcapgen import block_of

MACS = ("02:00:00:00:00:01", "02:00:00:00:00:02")
IPS = ("10.9.0.1", "10.9.0.2")


def _tcp(fwd: bool, ports: tuple[int, int], seq: int, payload: bytes, size: int) -> bytes:
    macs, ips = (MACS, IPS) if fwd else (MACS[::-1], IPS[::-1])
    body = (payload * (size // len(payload) + 1))[: size - 54]
    tcp = struct.pack("!HHIIBBHHH", *ports, seq, 1, 0x50, 0x18, 64240, 0, 0)
    return _eth(*macs) + _ip(*ips, 6, size - 14) + tcp + body


def _dns(fwd: bool, ports: tuple[int, int], qid: int, size: int) -> bytes:
    macs, ips = (MACS, IPS) if fwd else (MACS[::-1], IPS[::-1])
    question = b"\x03lab\x07example\x00\x00\x01\x00\x01"
    dns = struct.pack("!HHHHHH", qid, 0x0100 if fwd else 0x8180, 1, 0, 0, 0) + question
    dns = dns.ljust(size - 42, b"\0")[: size - 42]
    return _eth(*macs) + _ip(*ips, 17, size - 14) + struct.pack("!HHHH", *ports, 8 + len(dns), 0) + dns


def frames(n: int, flows: int, size: int = 64) -> list[bytes]:
    """`n` frames round robin over `flows` templates (a multiple of 8), TCP sequence numbers advancing."""
    templates: list[bytes] = []
    for i in range(flows):
        group, slot = divmod(i, 8)
        cport = 20000 + group
        if slot == 0:
            templates.append(_tcp(True, (cport, 80), 0, HTTP_REQUEST, size))
        elif slot == 1:
            templates.append(_tcp(False, (80, cport), 0, HTTP_RESPONSE, size))
        elif slot in (2, 3):
            templates.append(_dns(slot == 2, (cport, 53) if slot == 2 else (53, cport), group & 0xFFFF, size))
        else:
            templates.append(_tcp(True, (cport + 1000 * slot, 443), 0, b"\x17\x03\x03", size))
    out: list[bytes] = []
    for i in range(n):
        rnd, t = divmod(i, flows)
        frame = templates[t]
        if frame[23] == 6:  # TCP: sequence number (bytes 38..41) moves by 256 a round
            frame = frame[:38] + struct.pack("!I", rnd * 256 & 0xFFFFFFFF) + frame[42:]
        out.append(frame)
    return out


def run(blocks: Sequence[Block], analysis: bool, latency: bool) -> tuple[float, float]:
    """Seconds to decode and count every block, and of them in Latency.add and add_latency."""
    counters, lat = Counters(CounterLimits(analysis=analysis)), Latency()
    in_latency = 0.0
    t = time.perf_counter()
    for block in blocks:
        dec = decode(block)
        counters.add(dec)
        if latency:
            t_lat = time.perf_counter()
            fid, ns = lat.add(dec, counters.flow_of, counters.flows.cols["first"])
            if fid.size:
                counters.add_latency(fid, ns)
            in_latency += time.perf_counter() - t_lat
    return time.perf_counter() - t, in_latency


def main(argv: Sequence[str] | None = None) -> int:
    """Print ns per packet of each configuration and its ratio to analysis off."""
    p = argparse.ArgumentParser(prog="python -m bench.latency_inprocess", description=__doc__.split("\n")[0])
    p.add_argument("--packets", type=int, default=400_000)
    p.add_argument("--batch", type=int, default=2048, help="frames per block (default 2048)")
    p.add_argument("--flows", type=int, default=1024, help="templates, a multiple of 8 (default 1024)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", choices=("off", "tcp", "latency"), help="run one configuration (for a profile)")
    args = p.parse_args(argv)
    raw = frames(args.packets, args.flows)
    ts0 = 1_700_000_000 * 10**9
    blocks = [
        block_of(raw[i : i + args.batch], ts_ns=[ts0 + 1000 * j for j in range(i, min(i + args.batch, len(raw)))])
        for i in range(0, len(raw), args.batch)
    ]
    configs = {"off": (False, False), "tcp": (True, False), "latency": (True, True)}
    names = {"off": "analysis off", "tcp": "TCP health on", "latency": "TCP health + latency"}
    best: dict[str, tuple[float, float]] = {}
    for name, (analysis, latency) in configs.items():
        if args.only and name != args.only:
            continue
        best[name] = min(run(blocks, analysis, latency) for _ in range(args.repeat))
    base = best["off"][0] if "off" in best else 0.0
    for name, (sec, _) in best.items():
        ratio = f"  {sec / base:.2f}" if base else ""
        print(f"{names[name]:<22} {sec * 1e9 / args.packets:8.0f} ns/pkt{ratio}")
    if "latency" in best:
        sec = best["latency"][1]
        ratio = f"  {sec / base:.2f}" if base else ""
        print(f"{'  of it in latency':<22} {sec * 1e9 / args.packets:8.0f} ns/pkt{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
