"""The session store over a day: insert rate, one host's query time, disk bytes per million records.

Run from the repository root::

    python -m bench.sessions_bench --records 5000000 --dir /tmp/sessions-bench

Generates a day of records (N, ≥ 5 M for the target) in time order, as the writer appends them:
2,000 local clients (10.0.x.y, uniform), 50,000 servers (Zipf: server rank r in proportion to 1/r, the
busiest in ≈ 9 % of the records), server ports weighted like a busy office (443, 80, 53/udp, 22, 3306, 123/udp,
others), ephemeral client ports, durations up to 60 s, a process name on a third of them. Records are
written through `SessionStore.insert` in batches of --batch (the writer's path), then timed:

* ``query one client``: every record of one client host over the whole day (Query(host=..., top=0));
* ``query busiest server``: the same for the server in the most records;
* ``query one hour of a port``: --port 22 over one hour;
* ``summary of an hour``: top hosts, ports, services, processes over one hour.

Each query is run 3 times on a warm cache (the store just written); min and median are reported.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_json
from capture_backend.rewind.sessions import COLUMN_NAMES, Query, SessionStore, store_path

NS = 1_000_000_000
DAY_NS = 86_400 * NS
T0_NS = 1_764_000_000 * NS  # 2025-11-24T16:00:00Z
PORTS = [(443, 6, 0.55), (80, 6, 0.08), (53, 17, 0.20), (22, 6, 0.02), (3306, 6, 0.03), (123, 17, 0.02)]
PROCESSES = ["firefox", "curl", "systemd-resolved", "sshd", "mysqld", "chronyd", "python3"]


def generate(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    """n records' columns, sorted by start."""
    rng = np.random.default_rng(seed)
    start = np.sort(rng.integers(T0_NS, T0_NS + DAY_NS, n))
    duration = np.minimum(rng.exponential(5 * NS, n).astype(np.int64), 60 * NS)
    client = rng.integers(0, 2000, n)
    # Server rank r is picked with weight 1/r (Zipf, exponent 1): the busiest is in ≈ 9 % of the records.
    weight = 1.0 / np.arange(1, 50_001)
    server = np.searchsorted(np.cumsum(weight) / weight.sum(), rng.random(n))
    pick = rng.random(n)
    weights = np.cumsum([w for _, _, w in PORTS])
    kind = np.searchsorted(weights, pick)  # len(PORTS): another port
    dport = np.array([p for p, _, _ in PORTS] + [0])[kind]
    other = kind == len(PORTS)
    dport[other] = rng.integers(1024, 65536, int(other.sum()))
    proto = np.array([pr for _, pr, _ in PORTS] + [6])[kind]
    src_packets = rng.integers(1, 200, n)
    dst_packets = rng.integers(1, 400, n)
    return {
        "start_ns": start,
        "end_ns": start + duration,
        "client": client,
        "server": server,
        "proto": proto,
        "sport": rng.integers(32768, 61000, n),
        "dport": dport,
        "src_packets": src_packets,
        "dst_packets": dst_packets,
        "src_bytes": src_packets * rng.integers(60, 600, n),
        "dst_bytes": dst_packets * rng.integers(60, 1500, n),
        "retrans": np.where(rng.random(n) < 0.05, rng.integers(1, 20, n), 0),
        "rtt_us": rng.integers(100, 200_000, n),
        "latency": rng.integers(500, 500_000, n),
        "process": np.where(rng.random(n) < 0.33, rng.integers(0, len(PROCESSES), n), -1),
    }


CLIENTS = [ipaddress.ip_address(f"10.0.{i // 250}.{i % 250 + 1}").packed for i in range(2000)]
SERVERS = [(ipaddress.ip_address("100.64.0.0") + i * 7 + 1).packed for i in range(50_000)]


def rows(cols: dict[str, np.ndarray], lo: int, hi: int) -> list[tuple[Any, ...]]:
    """Store rows (COLUMN_NAMES order) of records lo..hi."""
    c = {k: v[lo:hi].tolist() for k, v in cols.items()}
    out = []
    for i in range(hi - lo):
        tcp = c["proto"][i] == 6
        app = c["dport"][i] in (53, 80, 3306)
        proc = c["process"][i]
        out.append(
            (
                c["start_ns"][i],
                c["end_ns"][i],
                "eth0",
                None,
                4,
                c["proto"][i],
                CLIENTS[c["client"][i]],
                c["sport"][i],
                SERVERS[c["server"][i]],
                c["dport"][i],
                c["src_packets"][i],
                c["dst_packets"][i],
                c["src_bytes"][i],
                c["dst_bytes"][i],
                0x1B if tcp else 0,
                c["retrans"][i] if tcp else 0,
                0,
                0,
                0,
                0,
                c["rtt_us"][i] if tcp else None,
                1 if app else 0,
                c["latency"][i] if app else None,
                c["latency"][i] if app else None,
                None,
                1000 + proc if proc >= 0 else None,
                PROCESSES[proc] if proc >= 0 else None,
                "user" if proc >= 0 else None,
                1 + (i % 4),
            )
        )
    return out


def timed(fn: Callable[[], Any], runs: int = 3) -> tuple[float, float, Any]:
    times, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--records", type=int, default=5_000_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--dir", default="/tmp/retrotap-sessions-bench")
    ap.add_argument("--json", default="", help="also write the results as JSON here ('-': stdout)")
    args = ap.parse_args()
    directory = Path(args.dir)
    shutil.rmtree(directory, ignore_errors=True)
    assert len(COLUMN_NAMES) == 29
    t = time.perf_counter()
    cols = generate(args.records)
    gen_s = time.perf_counter() - t
    store = SessionStore(directory)
    convert_s = insert_s = 0.0
    for lo in range(0, args.records, args.batch):
        t = time.perf_counter()
        batch = rows(cols, lo, min(lo + args.batch, args.records))
        convert_s += time.perf_counter() - t
        t = time.perf_counter()
        store.insert(batch)
        insert_s += time.perf_counter() - t
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = store_path(directory)
    disk = sum(os.path.getsize(p) for p in directory.iterdir())
    store.close()

    reader = SessionStore(directory, writable=False)
    counts = np.bincount(cols["client"], minlength=2000)
    client = f"10.0.{int(np.argsort(counts)[1000]) // 250}.{int(np.argsort(counts)[1000]) % 250 + 1}"
    busiest = int(np.bincount(cols["server"]).argmax())
    server = str(ipaddress.ip_address(SERVERS[busiest]))
    hour = T0_NS + 12 * 3600 * NS, T0_NS + 13 * 3600 * NS
    results: dict[str, Any] = {
        "records": args.records,
        "generate_s": round(gen_s, 2),
        "rows_build_s": round(convert_s, 2),
        "insert_s": round(insert_s, 2),
        "insert_rate_per_s": round(args.records / insert_s),
        "disk_bytes": disk,
        "disk_bytes_per_million": round(disk / (args.records / 1e6)),
        "file": str(path),
    }
    for name, q in (
        ("query one client", Query(host=client, top=0)),
        ("query busiest server", Query(host=server, top=0)),
        ("query busiest server, first 100 (the CLI's default)", Query(host=server)),
        ("query one hour of port 22", Query(port=22, from_ns=hour[0], to_ns=hour[1], top=0)),
    ):
        lo_s, med_s, found = timed(functools.partial(reader.query, q))
        results[name] = {
            "host_or_port": q.host or q.port,
            "records": len(found),
            "min_s": round(lo_s, 3),
            "median_s": round(med_s, 3),
        }
    lo_s, med_s, _ = timed(lambda: reader.summary(Query(from_ns=hour[0], to_ns=hour[1], top=0), top=10))
    results["summary of an hour"] = {"min_s": round(lo_s, 3), "median_s": round(med_s, 3)}
    plan = reader.db.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM sessions WHERE " + Query(host=client).sql(reader.max_span_ns)[0],
        Query(host=client).sql(reader.max_span_ns)[1],
    ).fetchall()
    results["plan one host"] = [r[-1] for r in plan]
    reader.close()
    for k, v in results.items():
        print(f"{k}: {v}")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
