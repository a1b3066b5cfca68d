"""How well capture threads scale: the per-packet work of one thread against two, in process.

Run from the repository root::

    python -m bench.threads_bench                   # steady and flood, 1 and 2 threads
    python -m bench.threads_bench --analysis        # with TCP health and latency on

What each capture thread does with `--threads N` is timed without the kernel: decode + counting
(`Counting.add`, its own tables) of batches of 32,768 frames (`--batch`; the largest a capture thread
takes, engine.BATCH_PACKETS) laid out as in a ring block, the same
frames as bench/flood_bench.py (steady: 1,024 flows cycled; flood: every frame a new flow and host
pair). The batches are built before the clock starts. One thread counts every batch; then two threads
each count half of them at once, each in its own Counting, as two fanout rings would be counted. The
wall-clock packets per second of the two against the one is the scaling: 2.0 when nothing is
serialised by the interpreter lock. The process's CPU time is printed too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import numpy as np

from bench.flood_bench import BATCH, START_NS, STEP_NS, put_be, template_batch
from capture_backend.engine import BATCH_PACKETS


def batches(
    scenario: str, count: int, seed: int, frames: int = BATCH
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """`count` batches (buffer, start, caplen, ts) of `frames` frames of one scenario, built ahead."""
    size = 1400 if scenario == "steady-1400" else 64
    rng = np.random.default_rng(seed)
    out = []
    for n in range(count):
        buf, start = template_batch(size, frames)
        src_pos, sport_pos = start + 14 + 12, start + 14 + 20
        if scenario == "flood-64":
            put_be(buf, src_pos, rng.integers(0, 1 << 32, frames, dtype=np.int64), 4)
            put_be(buf, sport_pos, rng.integers(1, 1 << 16, frames, dtype=np.int64), 2)
        else:
            flow = np.arange(frames, dtype=np.int64) % 1024
            put_be(buf, src_pos, (10 << 24) | ((flow // 200) << 8) | (flow % 200 + 1), 4)
            put_be(buf, sport_pos, 1024 + flow, 2)
        ts = START_NS + (n * frames + np.arange(frames, dtype=np.int64)) * STEP_NS
        out.append((buf, start, np.full(frames, size, np.int64), ts))
    return out


def count(work: list, analysis: bool) -> None:
    from capture_backend.analysis.tables import CounterLimits
    from capture_backend.capture.block import LINKTYPE_ETHERNET, Block
    from capture_backend.engine import Counting

    counting = Counting(CounterLimits(analysis=analysis), True, "", time.time)
    for buf, start, caplen, ts in work:
        counting.add(Block(buf, start, caplen, caplen.copy(), ts, LINKTYPE_ETHERNET, "bench0"))


def timed(shares: list[list], analysis: bool) -> tuple[float, float]:
    """Wall and process CPU seconds for one thread per share, all at once."""
    threads = [threading.Thread(target=count, args=(share, analysis)) for share in shares]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, time.process_time() - cpu0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.threads_bench", description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=BATCH_PACKETS,
                   help=f"frames per batch (default {BATCH_PACKETS:,}: the largest batch a capture thread takes)")
    p.add_argument("--batches", type=int, default=25, help="batches per run (default 25)")
    p.add_argument("--repeat", type=int, default=3, help="runs per thread count (default 3)")
    p.add_argument("--scenarios", default="steady-64,flood-64")
    p.add_argument("--analysis", action="store_true", help="TCP health and latency on (off in flood_bench)")
    args = p.parse_args(argv)
    packets = args.batches * args.batch
    print(f"# {packets:,} frames per run, {args.repeat} runs; analysis {'on' if args.analysis else 'off'}",
          file=sys.stderr)
    print("| scenario | threads | wall s (min–median) | Mpps (best) | CPU s (median) | scaling (best / best) |")
    print("|---|---|---|---|---|---|")
    for scenario in args.scenarios.split(","):
        # Two seeds: the two threads of a flood see different new flows, as two rings would.
        work = batches(scenario, args.batches, 1, args.batch)
        best: dict[int, float] = {}
        for n in (1, 2):
            runs = [timed([work[k::n] for k in range(n)], args.analysis) for _ in range(args.repeat)]
            walls = [w for w, _ in runs]
            best[n] = packets / min(walls)
            scaling = f"{best[n] / best[1]:.2f}×" if n > 1 else "—"
            print(f"| {scenario} | {n} | {min(walls):.3f}–{statistics.median(walls):.3f} | {best[n] / 1e6:.2f} "
                  f"| {statistics.median(c for _, c in runs):.3f} | {scaling} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
