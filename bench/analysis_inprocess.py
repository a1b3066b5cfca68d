"""In-process analysis cost: Counters.add (and the latency matcher) of analysis_bench's TCP/DNS mix, on vs off.

Run from the repository root::

    python -m bench.analysis_inprocess                      # this checkout
    python -m bench.analysis_inprocess --code /tmp/rt-base  # another checkout (e.g. `git archive`)

The frames are those of bench/analysis_bench.py (64 B, 1024 templates in groups of eight: an HTTP
request and its response, a DNS query and its answer, four TCP data segments; each TCP template's
sequence number moves by 256 per use), decoded untimed into batches of `--batch` packets. Timed,
in process CPU time, as the capture thread runs them (engine.Counting.add without decode): off is
Counters.add with analysis off; "TCP" adds the TCP health (analysis on, no latency matcher); "TCP +
latency" is everything analysis on does. Each mode runs `--repeat` times in a fresh Counters; the
minimum ns per packet is printed.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time

import numpy as np

T0_NS = 1_700_000_000 * 1_000_000_000
STEP_NS = 2_000  # 500 kpps of packet time, the lab's rate
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
IP_A, IP_B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
QUESTION = b"\x03lab\x07example\x00\x00\x01\x00\x01"


def _frame(forward: bool, proto: int, l4: bytes, size: int) -> bytes:
    src, dst = (IP_B, IP_A) if forward else (IP_A, IP_B)
    eth = (MAC_A + MAC_B if forward else MAC_B + MAC_A) + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size - 14, 0, 0x4000, 64, proto, 0, src, dst)
    return (eth + ip + l4).ljust(size, b"\0")[:size]


def templates(flows: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The frames of analysis_bench's templates as rows, and which rows are TCP (their seq moves)."""
    rows, tcp = [], []
    for i in range(flows):
        group, slot = divmod(i, 8)
        cport = 20000 + group
        if slot in (2, 3):
            sport, dport = (cport, 53) if slot == 2 else (53, cport)
            dns = struct.pack("!HHHHHH", group & 0xFFFF, 0x8180 if slot == 3 else 0x0100, 1, 0, 0, 0) + QUESTION
            udp = struct.pack("!HHHH", sport, dport, size - 34, 0) + dns
            rows.append(_frame(slot == 2, 17, udp, size))
            tcp.append(False)
            continue
        sport, dport = {0: (cport, 80), 1: (80, cport)}.get(slot, (cport + 1000 * slot, 443))
        seg = struct.pack("!HHIIBBHHH", sport, dport, (sport & 0xFFFF) << 16, 1, 0x50, 0x18, 64240, 0, 0)
        rows.append(_frame(slot != 1, 6, seg, size))
        tcp.append(True)
    return np.frombuffer(b"".join(rows), np.uint8).reshape(flows, size).copy(), np.array(tcp)


def main(argv: list[str] | None = None) -> int:
    """Decode the batches once, then time the three modes."""
    p = argparse.ArgumentParser(prog="python -m bench.analysis_inprocess", description=__doc__.split("\n")[0])
    p.add_argument("--packets", type=int, default=400_000)
    p.add_argument("--batch", type=int, default=8_000)
    p.add_argument("--flows", type=int, default=1024, help="templates, a multiple of 8 (default 1024)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--code", metavar="DIR", help="import capture_backend from this checkout instead")
    args = p.parse_args(argv)
    if args.code:
        sys.path.insert(0, os.path.abspath(args.code))
    import capture_backend
    from capture_backend.analysis.decode import decode
    from capture_backend.analysis.latency import Latency
    from capture_backend.analysis.tables import CounterLimits, Counters
    from tests.pcapgen import block_of

    print(f"# capture_backend from {os.path.dirname(capture_backend.__file__)}", file=sys.stderr)
    frames, is_tcp = templates(args.flows, 64)
    batches = []
    for start in range(0, args.packets, args.batch):
        i = np.arange(start, min(start + args.batch, args.packets))
        rows = frames[i % args.flows]
        moving = is_tcp[i % args.flows]
        rows[moving, 14 + 20 + 6] = (i[moving] // args.flows) & 0xFF  # seq byte 2, as trafgen's dinc
        block = block_of([r.tobytes() for r in rows], ts_ns=(T0_NS + STEP_NS * i).tolist())
        batches.append(decode(block))
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for mode in ("off", "TCP", "TCP + latency"):
            counters, latency = Counters(CounterLimits(analysis=mode != "off")), Latency()
            t0 = time.process_time()
            for dec in batches:
                counters.add(dec)
                if mode == "TCP + latency":
                    fid, lat = latency.add(dec, counters.flow_of, counters.flows.cols["first"])
                    if fid.size:
                        counters.add_latency(fid, lat)
            ns = (time.process_time() - t0) / args.packets * 1e9
            best[mode] = min(best.get(mode, ns), ns)
    print("| batch | off ns/pkt | TCP ns/pkt (× off) | TCP + latency ns/pkt (× off) |\n|---|---|---|---|")
    off = best["off"]
    print(
        f"| {args.batch:,} | {off:,.0f} | {best['TCP']:,.0f} ({best['TCP'] / off:.2f}) "
        f"| {best['TCP + latency']:,.0f} ({best['TCP + latency'] / off:.2f}) |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
