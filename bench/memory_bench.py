"""Memory benchmark: peak RSS of `retrotap stats -r` fed one million distinct flows.

Run from the repository root::

    python -m bench.memory_bench --flows 1000000 --flow-cap 200000

The pcap is generated with NumPy in a temporary directory: one 60-byte UDP frame per flow, every
flow a distinct 5-tuple (distinct source address 10.x.y.z and source port, to 198.18.0.1:53), 1 us
apart, so nothing idles out and the bounded tables can only evict by capacity.  Peak RSS comes
from wait4's rusage (what /usr/bin/time -v prints as "Maximum resident set size").  Linux counts in
it what the forked child held before its exec, so the pcap is written by a child of its own and
this process stays small.  A one-packet file gives the interpreter + NumPy baseline.  No network is
touched.
"""

from __future__ import annotations

import argparse
import multiprocessing
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_json
from bench.offline_bench import (
    PCAP_HEADER,
    START_US,
    exit_on_sigterm,
    ip_checksum,
    last_record,
    machine,
    retrotap_argv,
    run_measured,
)

FRAME_LEN = 60
RECORD = 16 + FRAME_LEN


def flows_pcap(path: Path, flows: int, chunk: int = 262_144) -> int:
    """Write one UDP frame per distinct 5-tuple; return the file size."""
    head = bytearray(FRAME_LEN)
    head[0:12] = bytes.fromhex("020000000001") + bytes.fromhex("020000000002")
    head[12:14] = b"\x08\x00"
    head[14:34] = bytes.fromhex("45000000000040004011") + bytes(2) + bytes(4) + bytes([198, 18, 0, 1])
    head[16:18] = (FRAME_LEN - 14).to_bytes(2, "big")
    head[36:38] = (53).to_bytes(2, "big")
    head[38:40] = (FRAME_LEN - 34).to_bytes(2, "big")
    template = np.frombuffer(bytes(head), np.uint8)
    base_sum = ip_checksum(bytes(head[14:34])) ^ 0xFFFF  # one's-complement sum without the source address
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        for start in range(0, flows, chunk):
            i = np.arange(start, min(start + chunk, flows), dtype=np.int64)
            rec = np.zeros((i.size, RECORD), np.uint8)
            ts = START_US + i
            rec[:, 0:4] = (ts // 1_000_000).astype("<u4").view(np.uint8).reshape(-1, 4)
            rec[:, 4:8] = (ts % 1_000_000).astype("<u4").view(np.uint8).reshape(-1, 4)
            rec[:, 8:16] = np.frombuffer(struct.pack("<II", FRAME_LEN, FRAME_LEN), np.uint8)
            frame = rec[:, 16:]
            frame[:] = template
            src = (10 << 24) | (i & 0xFFFFFF)  # 10.0.0.0/8: 16.7 M distinct sources, one per flow
            frame[:, 26:30] = src.astype(">u4").view(np.uint8).reshape(-1, 4)
            sport = 1024 + i % 60000
            frame[:, 34:36] = sport.astype(">u2").view(np.uint8).reshape(-1, 2)
            s = base_sum + (src >> 16) + (src & 0xFFFF)
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            frame[:, 24:26] = (~s & 0xFFFF).astype(">u2").view(np.uint8).reshape(-1, 2)
            fh.write(rec.tobytes())
        return fh.tell()


def write_apart(path: Path, flows: int) -> int:
    """flows_pcap() in a child process (this one's RSS would count in every later child's peak)."""
    child = multiprocessing.get_context("spawn").Process(target=flows_pcap, args=(path, flows))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"writing {path} failed (exit {child.exitcode})")
    return path.stat().st_size


def measure(path: Path, flow_cap: int, timeout: float) -> dict[str, Any]:
    """Run retrotap stats on `path`; peak RSS, wall time and the flow table from its last record."""
    m = run_measured(retrotap_argv(path, "--format", "json", "--top", "5", "--flow-cap", str(flow_cap)), timeout)
    rec = last_record(m)
    return {
        "command": m.argv,
        "packets": rec["totals"]["packets"],
        "malformed": rec["totals"]["malformed"],
        "flows_active": rec["flow_table"]["active"],
        "flows_evicted": rec["flow_table"]["evicted"],
        "max_rss_mib": m.max_rss_kib / 1024,
        "wall_seconds": m.wall_seconds,
        "cpu_seconds": m.cpu_seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the flows pcap, measure retrotap's peak RSS on it and on a one-packet baseline."""
    p = argparse.ArgumentParser(prog="python -m bench.memory_bench", description=__doc__.split("\n")[0])
    p.add_argument("--flows", type=int, default=1_000_000, help="distinct 5-tuples (default 1000000)")
    p.add_argument("--flow-cap", type=int, nargs="+", default=[200_000],
                   help="retrotap --flow-cap values to try (default 200000)")
    p.add_argument("--timeout", type=float, default=600.0, help="per retrotap run, seconds")
    p.add_argument("--tmpdir", default=None, help="where to write the pcap")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' for stdout)")
    args = p.parse_args(argv)
    if not 1 <= args.flows <= 16_000_000:
        p.error("--flows must be between 1 and 16000000")
    exit_on_sigterm()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="retrotap-memory-", dir=args.tmpdir) as tmp:
        path, one = Path(tmp) / "flows.pcap", Path(tmp) / "one.pcap"
        t0 = time.monotonic()
        size = write_apart(path, args.flows)
        write_apart(one, 1)
        print(f"# wrote {args.flows:,} flows, {size / 2**20:,.0f} MiB in {time.monotonic() - t0:.1f} s",
              file=sys.stderr, flush=True)
        for cap in args.flow_cap:
            base = measure(one, cap, args.timeout)
            row = measure(path, cap, args.timeout)
            row.update(flow_cap=cap, flows=args.flows, baseline_rss_mib=base["max_rss_mib"])
            if row["packets"] != args.flows:
                print(f"# retrotap counted {row['packets']:,} packets of {args.flows:,}", file=sys.stderr)
            rows.append(row)
            print(f"# flow cap {cap:,}: {row}", file=sys.stderr, flush=True)
    print(f"\nmachine: {machine()}\n")
    print("| flows in file | --flow-cap | packets counted | flows active | flows evicted | peak RSS MiB (MB) "
          "| baseline RSS MiB (1 packet) | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['flows']:,} | {r['flow_cap']:,} | {r['packets']:,} | {r['flows_active']:,} "
              f"| {r['flows_evicted']:,} | {r['max_rss_mib']:,.0f} ({r['max_rss_mib'] * 1.048576:,.0f}) "
              f"| {r['baseline_rss_mib']:,.0f} "
              f"| {r['wall_seconds']:.2f} |")
    if args.json:
        write_json(args.json, {"bench": "memory", "argv": sys.argv, "machine": machine(), "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
