"""What the exporters cost per snapshot with a large flow table: the IPFIX diff and a /metrics scrape.

Run from the repository root::

    python -m bench.exporters_bench --flows 100000

Builds a file-like Counting with N two-way UDP flows (2 N packets, distinct addresses so the host
table has 2 N rows too), then times, on this thread, with nothing sent anywhere:

* ``freeze``: the engine's own snapshot (for scale: the capture thread pays it 4 times a second);
* ``ipfix diff, nothing due``: FlowTracker.update on a new snapshot where no flow is finished (rows
  in the same order, as the flow table keeps them; and every row moved, its worst case);
* ``ipfix diff + encode, all due``: every flow finished at once (2 N records into ≤1400-octet messages);
* ``scrape``: SnapshotCollector.collect and the text exposition (top-K hosts and ports).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from capture_backend.analysis.tables import NS, CounterLimits, TableSnapshot
from capture_backend.capture.block import LINKTYPE_ETHERNET, Block
from capture_backend.engine import Counting, Snapshot, file_statuses
from capture_backend.exporters.ipfix import FLOW_CARRIED, FLOW_COUNTED, Encoder, FlowTracker, flow_records
from capture_backend.exporters.metrics import SnapshotCollector

T0_NS = 1_700_000_000 * NS
FRAME = bytes.fromhex(
    "020000000002"
    "020000000001"
    "0800"  # Ethernet
    "4500002e00004000401100000a000001"
    "0b000001"  # IPv4, 46 octets, UDP, 10.0.0.1 > 11.0.0.1
    "1388"
    "0035"
    "001a0000"  # UDP 5000 > 53, 26 octets
) + bytes(18)


def flows_block(n: int, t_ns: int) -> Block:
    """n flows, one packet each way: 10.x.y.z:port <-> 11.x.y.z:53."""
    m = 2 * n
    data = np.tile(np.frombuffer(FRAME, np.uint8), (m, 1))
    i = np.arange(n, dtype=np.uint32)
    host = (i >> 0).astype(">u4").view(np.uint8).reshape(n, 4)[:, 1:]
    fwd, rev = data[:n], data[n:]
    fwd[:, 27:30] = host
    fwd[:, 31:34] = host
    rev[:, 26], rev[:, 30] = 11, 10
    rev[:, 27:30] = host
    rev[:, 31:34] = host
    rev[:, 34:36], rev[:, 36:38] = fwd[:, 36:38], fwd[:, 34:36]
    length = len(FRAME)
    return Block(
        data=data.ravel(),
        start=np.arange(m, dtype=np.int64) * length,
        caplen=np.full(m, length, np.int64),
        wirelen=np.full(m, length, np.int64),
        ts_ns=t_ns + np.arange(m, dtype=np.int64),
        linktype=LINKTYPE_ETHERNET,
        iface="bench0",
    )


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and max milliseconds of fn over `repeat` calls."""
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * 1000)
    return statistics.median(runs), max(runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flows", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()
    n = args.flows
    limits = CounterLimits(flows=2 * n, pairs=2 * n, hosts=4 * n)
    counting = Counting(limits, False, "", time.time)
    counting.add(flows_block(n, T0_NS))

    def freeze() -> Snapshot:
        return counting.freeze(file_statuses(counting), 0.0, {})

    snap = freeze()
    assert len(snap.flows) == n, len(snap.flows)
    results: dict[str, tuple[float, float]] = {"freeze (engine, for scale)": timed(freeze, args.repeat)}

    steady = FlowTracker(idle_s=15, active_s=60, counted=FLOW_COUNTED, carried=FLOW_CARRIED)  # as FlowExporter
    steady.update(snap)
    results["ipfix diff, nothing due"] = timed(lambda: steady.update(snap), args.repeat)
    perm = np.random.default_rng(1).permutation(n)
    moved = replace(snap, flows=TableSnapshot(snap.flows.keys[perm], {k: v[perm] for k, v in snap.flows.cols.items()}))

    flip = [moved, snap]

    def reordered() -> None:  # every call sees every row at another place than the call before
        flip.reverse()
        steady.update(flip[0])

    results["ipfix diff, nothing due, every row moved (worst case)"] = timed(reordered, args.repeat)

    def flush_all() -> int:
        tracker = FlowTracker(idle_s=15, active_s=60, counted=FLOW_COUNTED, carried=FLOW_CARRIED)
        runs = flow_records(tracker.update(snap, final=True))
        return len(Encoder(1).data(runs))

    messages = flush_all()
    results[f"ipfix diff + encode, all due ({2 * n} records, {messages} messages)"] = timed(flush_all, args.repeat)

    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: snap, top=args.top))
    results[f"scrape (top {args.top})"] = timed(lambda: generate_latest(registry), args.repeat)

    print(f"{n} flows, {len(snap.hosts)} hosts, {len(snap.ports)} ports; ms per call (median, max of {args.repeat})")
    for name, (median, worst) in results.items():
        print(f"  {name:<60} {median:8.1f} {worst:8.1f}")


if __name__ == "__main__":
    main()
