"""How long one dashboard refresh takes with 100 vs 100 000 live flows: `python bench/dashboard_refresh.py`.

Snapshots are built with Counters on synthetic decoded columns (no packets, no capture), two of
them a second apart so rates are computed. The refresh handler (RetrotapApp.pull: take the
snapshot, order the rows on the columns, format the visible ones, diff-update the table) is timed
with time.perf_counter inside a headless app at 200x60 and 80x24.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capture_backend.analysis.decode import Decoded  # noqa: E402
from capture_backend.analysis.tables import NS, CounterLimits  # noqa: E402
from capture_backend.engine import Counting, IfaceStatus, Snapshot  # noqa: E402
from tui.app import RetrotapApp  # noqa: E402
from tui.feed import SnapshotFeed  # noqa: E402

T0 = 1_700_000_000
V4 = np.array([0] * 10 + [0xFF, 0xFF], np.uint8)


def decoded(flows: int, second: int, packets_per_flow: int = 2) -> Decoded:
    """Packets of `flows` distinct TCP/UDP 5-tuples, both directions, all within one second."""
    n = flows * packets_per_flow
    flow = np.arange(n) % flows
    reply = (np.arange(n) // flows) % 2 == 1
    client = np.zeros((n, 16), np.uint8)
    client[:, :12] = V4
    client[:, 12] = 10
    client[:, 13] = (flow >> 16) & 0xFF
    client[:, 14] = (flow >> 8) & 0xFF
    client[:, 15] = flow & 0xFF
    server = np.zeros((n, 16), np.uint8)
    server[:, :12] = V4
    server[:, 12:15] = (192, 0, 2)
    server[:, 15] = 1 + flow % 50
    cport = (1024 + flow % 60000).astype(np.int32)
    sport_ = np.array([443, 80, 53, 22, 5432], np.int32)[flow % 5]
    proto = np.where(sport_ == 53, 17, 6).astype(np.int32)
    src = np.where(reply[:, None], server, client)
    dst = np.where(reply[:, None], client, server)
    return Decoded(
        iface="bench0",
        ts_ns=(T0 + second) * NS + (np.arange(n) * (NS // max(n, 1))).astype(np.int64),
        wirelen=(60 + flow % 1400).astype(np.int64),
        ethertype=np.full(n, 0x0800, np.int32),
        vlan=np.full(n, -1, np.int32),
        ip=np.ones(n, bool),
        src_key=np.ascontiguousarray(src).view(">u8").astype(np.uint64),
        dst_key=np.ascontiguousarray(dst).view(">u8").astype(np.uint64),
        proto=proto,
        sport=np.where(reply, sport_, cport).astype(np.int32),
        dport=np.where(reply, cport, sport_).astype(np.int32),
        tcp_flags=np.where(proto == 6, 0x18, 0).astype(np.uint8),
        malformed=np.zeros(n, bool),
        tcp_seq=np.zeros(n, np.int64),
        tcp_ack=np.zeros(n, np.int64),
        tcp_window=np.where(proto == 6, 64240, -1).astype(np.int32),
        tcp_len=np.where(proto == 6, 0, -1).astype(np.int32),
    )


def snapshots(flows: int) -> tuple[Snapshot, Snapshot, float]:
    """Two live snapshots one second apart (the second adds traffic to every flow), and freeze's cost."""
    clock = [float(T0 + 10)]
    counting = Counting(CounterLimits(flows=max(flows * 2, 1024)), True, "", lambda: clock[0])
    counting.counters.add(decoded(flows, 9))
    status = (IfaceStatus("bench0", "up", "", 0, 0, 0, 0, 0, None),)
    first = counting.freeze(status, 0.0, {})
    counting.counters.add(decoded(flows, 10))
    clock[0] += 1.0
    start = time.perf_counter()
    second = counting.freeze(status, 0.1, {})
    return first, second, time.perf_counter() - start


async def refresh_times(first: Snapshot, second: Snapshot, size: tuple[int, int], rounds: int) -> dict[str, float]:
    """Median milliseconds of one pull() per view (plus two expensive variants of Flows)."""
    feed = SnapshotFeed(first)
    app = RetrotapApp(feed, clock=lambda: second.time, resolver=lambda addr: None)
    out: dict[str, float] = {}
    async with app.run_test(size=size) as pilot:
        cases = [("0", "overview", ()), ("1", "interfaces", ()), ("2", "hosts", ()), ("3", "ports", ()),
                 ("4", "flows", ()), ("4", "flows, sort by rate", ("s",) * 6), ("4", "flows, / 192.0.2.7", ()),
                 ("5", "drops", ())]
        for key, name, extra in cases:
            await pilot.press(key, *extra)
            app.text_query = "192.0.2.7" if "/" in name else ""
            times = []
            for n in range(rounds):
                feed.snapshot = second if n % 2 == 0 else first  # a new snapshot every refresh
                start = time.perf_counter()
                app.pull()
                times.append(time.perf_counter() - start)
                await pilot.pause()
            out[name] = statistics.median(times) * 1000
            rows = app.view.query_one("SnapTable").row_count  # type: ignore[attr-defined]
            out[name + " rows"] = rows
            view = app.view
            while view.sort_index:  # back to the default sort
                await pilot.press("s")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    for flows in (100, 100_000):
        first, second, freeze_s = snapshots(flows)
        print(f"\n{len(second.flows):,} flows, {len(second.pairs):,} pairs, {len(second.hosts):,} hosts, "
              f"{len(second.ports):,} ports; freeze (capture thread, per publish): {freeze_s * 1000:.1f} ms")
        for size in ((200, 60), (80, 24)):
            result = asyncio.run(refresh_times(first, second, size, args.rounds))
            print(f"  {size[0]}x{size[1]}:")
            for name, ms in result.items():
                if not name.endswith(" rows"):
                    print(f"    {name:<22} {ms:7.1f} ms  ({int(result[name + ' rows'])} rows formatted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
