"""`retrotap sessions DIR`: the session records of a time window (and host, port, protocol, process, --where),
or their summary, as text, NDJSON or CSV."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from capture_backend.rewind.sessions import Query, SessionStore

NS = 1_000_000_000
TCP_FLAG_LETTERS = "FSRPAUEC"  # tcpdump's order, bit 0 first


@dataclass
class SessionsQuery:
    """What `retrotap sessions` was asked for."""

    directory: str
    query: Query = field(default_factory=Query)
    fmt: str = "text"
    summary: bool = False


def _ms(us: int | None) -> float | None:
    return None if us is None else us / 1000


def _flags(bits: int) -> str:
    return "".join(c for n, c in enumerate(TCP_FLAG_LETTERS) if bits >> n & 1)


def _local(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // NS)) + f".{ns % NS // 1_000_000:03d}"


def _end(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def public(r: dict[str, Any]) -> dict[str, Any]:
    """A record for scripts: times in epoch seconds (and ns), latencies in ms, flags as letters."""
    return {
        "id": r["id"],
        "start": r["start_ns"] / NS,
        "end": r["end_ns"] / NS,
        "start_ns": r["start_ns"],
        "end_ns": r["end_ns"],
        "duration": (r["end_ns"] - r["start_ns"]) / NS,
        "iface": r["iface"],
        "vlan": r["vlan"],
        "proto": r["proto"],
        "src": r["src"],
        "sport": r["sport"],
        "dst": r["dst"],
        "dport": r["dport"],
        "src_packets": r["src_packets"],
        "dst_packets": r["dst_packets"],
        "src_bytes": r["src_bytes"],
        "dst_bytes": r["dst_bytes"],
        "tcp_flags": _flags(r["tcp_flags"]),
        "retransmissions": r["retrans"],
        "out_of_order": r["ooo"],
        "duplicate_acks": r["dupacks"],
        "zero_windows": r["zero_windows"],
        "resets": r["resets"],
        "handshake_rtt_ms": _ms(r["rtt_us"]),
        "exchanges": r["exchanges"],
        "latency_avg_ms": _ms(r["latency_avg_us"]),
        "latency_max_ms": _ms(r["latency_max_us"]),
        "slowest_request": r["slowest"],
        "pid": r["pid"],
        "process": r["process"],
        "user": r["user"],
        "netns": r["netns"],
        "container": r["container"],
        "reason": r["reason"],
    }


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write_text(rows: list[dict[str, Any]], out: TextIO) -> None:
    """A table for people, oldest first as sorted."""
    cols = [
        "ID",
        "START (local)",
        "DUR s",
        "PROTO",
        "CLIENT",
        "SERVER",
        "PKTS",
        "C>S BYTES",
        "S>C BYTES",
        "RETR",
        "RTT ms",
        "LAT ms",
        "PROCESS",
        "END",
    ]
    table = [
        [
            str(r["id"]),
            _local(r["start_ns"]),
            f"{(r['end_ns'] - r['start_ns']) / NS:.1f}",
            r["proto"],
            _end(r["src"], r["sport"]),
            _end(r["dst"], r["dport"]),
            str(r["src_packets"] + r["dst_packets"]),
            str(r["src_bytes"]),
            str(r["dst_bytes"]),
            str(r["retrans"]),
            _num(_ms(r["rtt_us"]), 2),
            _num(_ms(r["latency_max_us"])),
            (f"{r['process']}[{r['pid']}]" + (f" {r['container']}" if r["container"] else "")) if r["process"] else "-",
            r["reason"],
        ]
        for r in rows
    ]
    widths = [max([len(c)] + [len(t[n]) for t in table]) for n, c in enumerate(cols)]
    right = {0, 2, 6, 7, 8, 9, 10, 11}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if n in right else c.ljust(w) for n, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out.write(line(cols) + "\n")
    for t in table:
        out.write(line(t) + "\n")
    for r in rows:
        if r["slowest"]:
            out.write(f"  #{r['id']} slowest request ({_num(_ms(r['latency_max_us']))} ms): {r['slowest']}\n")


def write_rows(rows: list[dict[str, Any]], fmt: str, out: TextIO) -> None:
    """Records as text, NDJSON or CSV."""
    if fmt == "text":
        write_text(rows, out)
    elif fmt == "json":
        for r in rows:
            out.write(json.dumps(public(r)) + "\n")
    else:
        records = [public(r) for r in rows]
        writer = csv.DictWriter(out, fieldnames=list(public_fields()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)


def public_fields() -> list[str]:
    """The keys of a record for scripts, in order."""
    sample = dict.fromkeys(
        ["id", "start_ns", "end_ns", "iface", "vlan", "proto", "src", "sport", "dst", "dport", "src_packets"]
        + ["dst_packets", "src_bytes", "dst_bytes", "tcp_flags", "retrans", "ooo", "dupacks", "zero_windows"]
        + ["resets", "rtt_us", "exchanges", "latency_avg_us", "latency_max_us", "slowest", "pid", "process"]
        + ["user", "netns", "container", "reason"],
        0,
    )
    return list(public(sample))


def write_summary(s: dict[str, Any], fmt: str, out: TextIO) -> None:
    """The summary as text, one JSON object, or CSV rows with a kind column."""
    if fmt == "json":
        doc = dict(s)
        doc["first"] = None if s["first"] is None else s["first"] / NS
        doc["last"] = None if s["last"] is None else s["last"] / NS
        out.write(json.dumps(doc) + "\n")
        return
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["kind", "name", "bytes", "packets", "sessions"])
        writer.writerow(["total", "", s["bytes"], s["packets"], s["sessions"]])
        for kind, key in (("host", "addr"), ("port", "port"), ("service", "service"), ("process", "process")):
            for row in s[f"{kind}s" if kind != "process" else "processes"]:
                name = f"{row['proto']}/{row['port']}" if kind == "port" else row[key]
                writer.writerow([kind, name, row["bytes"], row["packets"], row["sessions"]])
        return
    span = "" if s["first"] is None else f" from {_local(s['first'])} to {_local(s['last'])}"
    out.write(f"{s['sessions']} sessions, {s['packets']} packets, {s['bytes']} bytes{span}\n")
    sections: list[tuple[str, list[dict[str, Any]], Callable[[dict[str, Any]], str]]] = [
        ("Top hosts", s["hosts"], lambda r: r["addr"]),
        (
            "Top server ports",
            s["ports"],
            lambda r: f"{r['proto']}/{r['port']}" + (f" ({r['service']})" if r["service"] else ""),
        ),
        ("Top services", s["services"], lambda r: r["service"]),
        ("Top processes", s["processes"], lambda r: r["process"]),
    ]
    for title, rows, name in sections:
        if not rows:
            continue
        out.write(f"\n{title}:\n")
        width = max(len(name(r)) for r in rows)
        for r in rows:
            out.write(
                f"  {name(r):<{width}}  {r['bytes']:>14} bytes  {r['packets']:>10} packets  "
                f"{r['sessions']:>8} sessions\n"
            )


def run_sessions(opts: SessionsQuery, out: TextIO = sys.stdout, log: Callable[[str], None] | None = None) -> int:
    """Entry point of `retrotap sessions` once options are parsed and checked."""
    logger = log or (lambda msg: print(f"retrotap: {msg}", file=sys.stderr, flush=True))
    opts.query.check()
    with SessionStore(opts.directory, writable=False) as store:
        if opts.summary:
            write_summary(store.summary(opts.query, top=opts.query.top or 10), opts.fmt, out)
            return 0
        rows = store.query(opts.query)
        shown = len(rows)
        total = store.matching(opts.query) if opts.query.top and shown >= opts.query.top else shown
    write_rows(rows, opts.fmt, out)
    out.flush()
    if total > shown:
        logger(f"showing {shown} of {total} sessions (--top 0: all)")
    return 0
