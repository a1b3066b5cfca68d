"""What the dashboard's per-second history (--history 15m) costs: memory held and CPU per second.

    python -m bench.history_bench [--seconds 900] [--flows 20000] [--pairs 5000] [--hosts 2000] [--ports 1000]

Builds snapshots with the columns a real one has (taken from a snapshot of tests/pcapgen's capture) and
tables of the given sizes, a random tenth of the rows growing each second, and offers one per second to a
HistoryRing as the history thread does. Prints the CPU time of each offer (thread time: median and max),
the NumPy bytes the ring holds (`HistoryRing.nbytes`) and, in a second pass under tracemalloc, everything it
holds (Python objects included; the one full snapshot it keeps for the next second's rates counted too).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import numpy as np

from capture_backend.contract import Snapshot, TableSnapshot
from capture_backend.replay import file_snapshots
from capture_backend.rewind.history import DEFAULT_HISTORY_S, HistoryRing

NS = 1_000_000_000


def template() -> Snapshot:
    from tests.pcapgen import write_mixed

    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "mixed.pcap")
        write_mixed(path)
        return list(file_snapshots(path, clock=lambda: 0.0))[-1]


def big_table(like: TableSnapshot, n: int, rng: np.random.Generator) -> TableSnapshot:
    assert like.layout is not None
    keys = rng.integers(0, 256, (n, like.keys.shape[1]), dtype=np.uint8)
    cols = {name: np.zeros((n, *col.shape[1:]), col.dtype) for name, col in like.cols.items()}
    for name in ("packets", "bytes"):
        cols[name][:] = rng.integers(1, 1 << 20, cols[name].shape)
    return TableSnapshot(keys, MappingProxyType(cols), layout=like.layout, slots=np.arange(n))


def grown(t: TableSnapshot, rng: np.random.Generator) -> TableSnapshot:
    """The next second's table: a random tenth of the rows grew (new arrays, as a publish makes)."""
    cols = dict(t.cols)
    rows = rng.choice(len(t), max(1, len(t) // 10), replace=False)
    for name in ("packets", "bytes"):
        col = cols[name].copy()
        col[rows] += rng.integers(1, 1 << 16, (rows.size, 2))
        cols[name] = col
    return replace(t, cols=MappingProxyType(cols))


def series(args: argparse.Namespace, base: Snapshot) -> Iterator[Snapshot]:
    """One snapshot a second, made as they are offered (the same ones on every call)."""
    rng = np.random.default_rng(1)
    sizes = {"flows": args.flows, "pairs": args.pairs, "hosts": args.hosts, "ports": args.ports}
    tables = {name: big_table(getattr(base, name), n, rng) for name, n in sizes.items()}
    for second in range(args.seconds):
        tables = {name: grown(t, rng) for name, t in tables.items()}
        yield replace(base, seq=second + 1, time=1e9 + second, live=True, started=1e9, **tables)  # type: ignore[arg-type]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=DEFAULT_HISTORY_S)
    p.add_argument("--flows", type=int, default=20_000)
    p.add_argument("--pairs", type=int, default=5_000)
    p.add_argument("--hosts", type=int, default=2_000)
    p.add_argument("--ports", type=int, default=1_000)
    args = p.parse_args()
    base = template()
    ring = HistoryRing(args.seconds)
    cpu = []
    for s in series(args, base):
        t0 = time.thread_time()
        ring.offer(s)
        cpu.append(time.thread_time() - t0)
    print(f"{args.seconds} s of history, tables {args.flows}/{args.pairs}/{args.hosts}/{args.ports} rows")
    print(f"CPU per second: median {statistics.median(cpu) * 1e3:.2f} ms, max {max(cpu) * 1e3:.2f} ms")
    print(f"NumPy arrays held: {ring.nbytes() / 1e6:.1f} MB")
    del ring
    tracemalloc.start()
    ring = HistoryRing(args.seconds)
    before = tracemalloc.get_traced_memory()[0]
    for s in series(args, base):
        ring.offer(s)
    del s  # the ring still holds the newest full snapshot, for the next second's rates
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"everything held (tracemalloc): {held / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
