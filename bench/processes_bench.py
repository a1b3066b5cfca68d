"""Process-mapper bench: the cost of attributing a flood's flows to processes, per snapshot and per packet.

Run from the repository root::

    python -m bench.processes_bench --packets 300000
    python -m bench.processes_bench --code /tmp/rt-base   # another checkout's capture_backend

A flood pcap (every packet a new flow from a random source to 198.18.0.1:9, bench.offline_bench's
generator) is read into snapshots every --step seconds of packet time; the snapshots are then fed to a
ProcessMapper whose socket table (a UDP listener on port 9, a connected TCP socket) is given, so the
mapper's own work is all that is timed: thread CPU per update, and per packet of the file. No network
is touched.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.common import write_json


def run(pcap: Path, step: float, repeat: int) -> dict[str, Any]:
    from capture_backend.analysis.processes import ProcessMapper
    from capture_backend.replay import file_snapshots

    every = list(file_snapshots(str(pcap), step_s=step))
    snaps = every[:-1] or every  # the last is the whole file again
    conns = [
        SimpleNamespace(type=2, laddr=("0.0.0.0", 9), raddr=(), pid=1),
        SimpleNamespace(type=1, laddr=("198.18.0.1", 40000), raddr=("203.0.113.9", 443), pid=2),
    ]
    costs = []
    for _ in range(repeat):
        mapper = ProcessMapper(
            conns=lambda: conns,
            info=lambda pid: (f"p{pid}", "root"),
            local_addrs=lambda: ["198.18.0.1"],
            alive=lambda pid: True,
        )
        mapper.refresh()
        t0 = time.thread_time()
        for snap in snaps:
            mapper.update(snap)
        costs.append(time.thread_time() - t0)
    packets = snaps[-1].packets
    best = min(costs)
    return {
        "snapshots": len(snaps),
        "flows_last": len(snaps[-1].flows),
        "packets": packets,
        "cpu_seconds": best,
        "ms_per_update": best / len(snaps) * 1e3,
        "ns_per_packet": best / packets * 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.processes_bench", description=__doc__.split("\n")[0])
    p.add_argument("--packets", type=int, default=300_000, help="flood packets in the pcap (default 300000)")
    p.add_argument("--step", type=float, default=0.5, help="seconds of packet time between snapshots (default 0.5)")
    p.add_argument("--repeat", type=int, default=3, help="runs; the fastest is reported (default 3)")
    p.add_argument("--code", metavar="DIR", help="import capture_backend from this checkout instead")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON ('-' for stdout)")
    args = p.parse_args(argv)
    if args.code:
        sys.path.insert(0, str(Path(args.code).resolve()))
    from bench.offline_bench import write_flood_pcap

    with tempfile.TemporaryDirectory(prefix="retrotap-processes-") as tmp:
        pcap = Path(tmp) / "flood.pcap"
        write_flood_pcap(pcap, args.packets, step_us=10)  # 100,000 packets a second of packet time
        result = run(pcap, args.step, args.repeat)
    import capture_backend

    where = str(Path(capture_backend.__file__).parent)
    print(f"# capture_backend from {where}")
    print("| snapshots | flows in the last | packets | mapper CPU s | ms per update | ns per packet |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {result['snapshots']} | {result['flows_last']:,} | {result['packets']:,} | {result['cpu_seconds']:.3f} "
        f"| {result['ms_per_update']:.1f} | {result['ns_per_packet']:,.0f} |"
    )
    if args.json:
        write_json(args.json, {"bench": "processes", "argv": sys.argv, **vars(args), "code": where, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
