"""In-process churn bench: decode + Counters.add per packet, steady traffic against a flood of new flows.

Run from the repository root::

    python -m bench.flood_bench                      # this checkout
    python -m bench.flood_bench --code /tmp/rt-base  # another checkout's capture_backend (e.g. `git archive`)

Batches of 8,000 (`--batch`) Ethernet/IPv4/UDP frames laid out as in a TPACKET_V3 ring block (frame data at
tp_mac = 82 of each 16-byte aligned slot) are decoded and counted (`decode()` then
`Counters.add()`, TCP analysis off as in the issue's figures), 2 M frames per run:

* steady 64 B: 1,024 flows (source 10.0.x.y, ports 1024..) to 198.18.0.1:9, cycled;
* steady 1400 B: the same flows, 1400-byte frames;
* flood 64 B: every frame a new random source address and source port (trafgen's `drnd()`), so every
  frame is a new flow, host pair and source host; the tables fill up and evict.

Only decode + add are timed (the frames of the next batch are written in between, untimed);
`--decode-only` times decode() alone. Each
scenario runs `--repeat` times in a fresh Counters; min and median ns per packet are printed. The
flood's table sizes and eviction counts are printed too (the tables must stay bounded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

BATCH = 8_000
TP_MAC = 82
START_NS = 1_700_000_000 * 1_000_000_000
STEP_NS = 1_000  # 1 Mpps of packet time: 2 M frames span 2 s
DST = bytes([198, 18, 0, 1])


def slot_size(size: int) -> int:
    return (TP_MAC + size + 15) // 16 * 16


def template_batch(size: int, frames: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """A buffer of `frames` copies of one UDP frame of `size` bytes at ring-like offsets, and the offsets."""
    payload = size - 14 - 20 - 8
    ip = bytearray(20)
    ip[0], ip[8], ip[9] = 0x45, 64, 17
    ip[2:4] = (20 + 8 + payload).to_bytes(2, "big")
    ip[6:8] = b"\x40\x00"
    ip[16:20] = DST
    udp = bytearray(8)
    udp[2:4] = (9).to_bytes(2, "big")
    udp[4:6] = (8 + payload).to_bytes(2, "big")
    frame = bytes.fromhex("020000000001020000000002") + b"\x08\x00" + bytes(ip) + bytes(udp) + bytes(payload)
    stride = slot_size(size)
    buf = np.zeros(frames * stride, np.uint8)
    start = np.arange(frames, dtype=np.int64) * stride + TP_MAC
    buf.reshape(frames, stride)[:, TP_MAC : TP_MAC + size] = np.frombuffer(frame, np.uint8)
    return buf, start


def put_be(buf: np.ndarray, pos: np.ndarray, values: np.ndarray, nbytes: int) -> None:
    for k in range(nbytes):
        buf[pos + k] = (values >> (8 * (nbytes - 1 - k))) & 0xFF


def run(scenario: str, packets: int, seed: int, decode_only: bool = False, batch: int = BATCH) -> dict[str, Any]:
    """One run of a scenario in a fresh Counters; returns ns/packet and the tables' state."""
    from capture_backend.analysis.decode import decode
    from capture_backend.analysis.tables import CounterLimits, Counters
    from capture_backend.capture.block import LINKTYPE_ETHERNET, Block

    size = 1400 if scenario == "steady-1400" else 64
    buf, start = template_batch(size, batch)
    src_pos, sport_pos = start + 14 + 12, start + 14 + 20
    rng = np.random.default_rng(seed)
    flow = np.arange(batch, dtype=np.int64) % 1024
    if scenario != "flood-64":  # steady: the same 1,024 flows in every batch
        put_be(buf, src_pos, (10 << 24) | ((flow // 200) << 8) | (flow % 200 + 1), 4)
        put_be(buf, sport_pos, 1024 + flow, 2)
    counters = Counters(limits=CounterLimits(analysis=False))
    caplen = np.full(batch, size, np.int64)
    busy = 0.0
    done = 0
    while done < packets:
        n = min(batch, packets - done)
        if scenario == "flood-64":
            put_be(buf, src_pos, rng.integers(0, 1 << 32, batch, dtype=np.int64), 4)
            put_be(buf, sport_pos, rng.integers(1, 1 << 16, batch, dtype=np.int64), 2)
        ts = START_NS + (done + np.arange(n, dtype=np.int64)) * STEP_NS
        block = Block(buf, start[:n], caplen[:n], caplen[:n].copy(), ts, LINKTYPE_ETHERNET, "bench0")
        t0 = time.perf_counter_ns()
        if decode_only:
            decode(block)
        else:
            counters.add(decode(block))
        busy += time.perf_counter_ns() - t0
        done += n
    assert counters.packets == (0 if decode_only else packets)
    return {
        "ns_per_packet": busy / packets,
        "flows": len(counters.flows),
        "flows_evicted": counters.flows.evicted,
        "pairs": len(counters.pairs),
        "pairs_evicted": counters.pairs.evicted,
        "hosts": len(counters.hosts),
        "hosts_evicted": counters.hosts.evicted,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.flood_bench", description=__doc__.split("\n")[0])
    p.add_argument("--packets", type=int, default=2_000_000, help="frames per run (default 2000000)")
    p.add_argument("--repeat", type=int, default=3, help="runs per scenario (default 3)")
    p.add_argument("--scenarios", default="steady-64,steady-1400,flood-64")
    p.add_argument("--decode-only", action="store_true", help="time decode() alone, not Counters.add")
    p.add_argument("--batch", type=int, default=BATCH, help=f"frames per batch (default {BATCH:,})")
    p.add_argument("--code", metavar="DIR", help="import capture_backend from this checkout instead")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' for stdout)")
    args = p.parse_args(argv)
    if args.code:
        sys.path.insert(0, os.path.abspath(args.code))
    import capture_backend

    where = os.path.dirname(os.path.abspath(capture_backend.__file__))
    try:
        from capture_backend import _native

        compiled = _native.__file__
    except ImportError:
        compiled = None
    print(f"# capture_backend from {where}; compiled module: {compiled}", file=sys.stderr)
    results: dict[str, Any] = {}
    print("| scenario | runs | min ns/packet | median ns/packet | flows (evicted) | pairs (evicted) "
          "| hosts (evicted) |")
    print("|---|---|---|---|---|---|---|")
    for scenario in args.scenarios.split(","):
        runs = [run(scenario, args.packets, seed, args.decode_only, args.batch) for seed in range(args.repeat)]
        ns = [r["ns_per_packet"] for r in runs]
        last = runs[-1]
        results[scenario] = {"ns_per_packet": ns, "tables": last}
        print(
            f"| {scenario} | {len(ns)} | {min(ns):,.0f} | {statistics.median(ns):,.0f} "
            f"| {last['flows']:,} ({last['flows_evicted']:,}) | {last['pairs']:,} ({last['pairs_evicted']:,}) "
            f"| {last['hosts']:,} ({last['hosts_evicted']:,}) |",
            flush=True,
        )
    if args.json:
        doc = {"bench": "flood", "argv": sys.argv, "code": where, "compiled": compiled, "packets": args.packets,
               "batch": args.batch, "results": results}
        text = json.dumps(doc, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as fh:
                fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
