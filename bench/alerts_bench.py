"""What alert rules cost: the incident watcher's work per look (about once a second), with no rules and with
the twenty rules of bench/rules20.toml, over snapshots of a flood (every packet a new flow) and of a steady
mix. The rules are evaluated on the watcher's thread from published snapshots, never per packet; their cost
per packet is this cost per look divided by the packets a second the capture takes.

    python -m bench.alerts_bench                       # 200,000-packet flood pcap, 2-second snapshots
    python -m bench.alerts_bench --packets 1000000 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.offline_bench import templates, write_flood_pcap, write_frames_pcap
from capture_backend.analysis.tables import CounterLimits
from capture_backend.exporters.alerts import Alerts, Sample, churn, load_rules
from capture_backend.replay import file_snapshots

RULES = Path(__file__).with_name("rules20.toml")


def looks(path: Path, rules: int, repeat: int, flow_cap: int) -> dict[str, Any]:
    """Time churn + the rules over each pair of successive snapshots of the file (thread CPU time)."""
    snaps = list(file_snapshots(str(path), step_s=0.05, limits=CounterLimits(flows=flow_cap)))
    pairs = list(zip(snaps, snaps[1:], strict=False))
    chosen = load_rules(RULES)[:rules]
    costs = []
    for _ in range(repeat):
        alerts = Alerts(list(chosen))
        for prev, snap in pairs:
            t0 = time.thread_time_ns()
            sample = Sample(snap, prev)
            churn(sample)
            alerts.feed(sample)
            costs.append((time.thread_time_ns() - t0) / 1e6)
    flows = max(len(s.flows) for s in snaps)
    return {"rules": len(chosen), "looks": len(costs), "flows_max": flows,
            "ms_min": min(costs), "ms_median": statistics.median(costs), "ms_max": max(costs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.alerts_bench", description=__doc__.split("\n")[0])
    p.add_argument("--packets", type=int, default=200_000, help="packets in each generated pcap (200000)")
    p.add_argument("--repeat", type=int, default=3, help="passes over the snapshots (3)")
    p.add_argument("--flow-cap", type=int, default=200_000, help="flow table capacity (retrotap's default)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        flood, steady = Path(tmp) / "flood.pcap", Path(tmp) / "steady.pcap"
        write_flood_pcap(flood, args.packets)
        write_frames_pcap(steady, templates(), args.packets)
        print("| traffic | rules | looks | flows (max) | ms per look min / median / max |")
        print("|---|---|---|---|---|")
        for name, path in (("flood", flood), ("steady", steady)):
            for rules in (0, 20):
                r = looks(path, rules, args.repeat, args.flow_cap)
                print(f"| {name} | {r['rules']} | {r['looks']} | {r['flows_max']:,} | "
                      f"{r['ms_min']:.2f} / {r['ms_median']:.2f} / {r['ms_max']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
