"""Per-minute aggregates in the session store (rewind/aggregates.py) and `retrotap stats DIR --from --to`.

A capture of a little over three minutes (three talkers that take turns, and a quiet pair throughout) goes
through `retrotap stats -r FILE --sessions DIR`; `retrotap stats DIR --from --to --format json` must then
print one record per minute whose totals, interfaces, pairs, hosts and ports equal what tshark counts in
each minute of the same file.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from capture_backend.contract import EMPTY_UNKNOWN, ProcessTable, ProcessTotals
from capture_backend.output.report import record
from capture_backend.replay import file_snapshots
from capture_backend.rewind.aggregates import AGGREGATES, MINUTE_NS, MinuteAggregator, merge
from capture_backend.rewind.sessions import END_OF_TIME, STORE_NAME, Retention, SessionStore
from tests.helpers.cli import run_retrotap
from tests.helpers.history import T0, Phase, phase_frames
from tests.pcapgen import NS, write_mixed, write_pcap
from tests.tshark import tshark

PHASES = (
    Phase(0, 70, "10.0.1.1", "10.0.1.2", 6001, 5, 300),
    Phase(50, 100, "10.0.2.1", "10.0.2.2", 6002, 3, 700),
    Phase(140, 60, "10.0.3.1", "10.0.3.2", 6003, 8, 1200),
    Phase(0, 200, "10.0.9.1", "10.0.9.2", 7000, 1, 100),
)


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The capture, and the directory `stats -r --sessions` kept its store in."""
    base = tmp_path_factory.mktemp("minutes")
    pcap = base / "minutes.pcap"
    write_pcap(pcap, phase_frames(PHASES), nanosecond=True)
    store = base / "store"
    proc = run_retrotap("stats", "-r", str(pcap), "--sessions", str(store), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1  # the minute snapshots feed the store only
    return pcap, store


@pytest.fixture(scope="module")
def reference(capture: tuple[Path, Path]) -> dict[int, dict[str, Counter[Any]]]:
    """Per minute (its start, ns), from tshark: packets and bytes, bytes per (src, dst) and per UDP port."""
    out: dict[int, dict[str, Counter[Any]]] = {}
    fields = ["-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len", "-e", "ip.src", "-e", "ip.dst"]
    for line in tshark(capture[0], *fields, "-e", "udp.dstport").splitlines():
        epoch, length, src, dst, port = line.split("\t")
        whole, _, frac = epoch.partition(".")
        minute = (int(whole) * NS + int(frac.ljust(9, "0")[:9])) // MINUTE_NS * MINUTE_NS
        m = out.setdefault(minute, {"totals": Counter(), "pairs": Counter(), "ports": Counter(), "tx": Counter()})
        m["totals"]["packets"] += 1
        m["totals"]["bytes"] += int(length)
        m["pairs"][(src, dst)] += int(length)
        m["ports"][int(port)] += int(length)
        m["tx"][src] += int(length)
    return out


def minutes(store: Path, *args: str) -> list[dict[str, Any]]:
    proc = run_retrotap("stats", str(store), *args, "--format", "json", "--top", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_every_minute_equals_tshark(
    capture: tuple[Path, Path], reference: dict[int, dict[str, Counter[Any]]]
) -> None:
    records = minutes(capture[1], "--from", iso(T0 - 3600), "--to", iso(T0 + 3600))
    assert len(reference) == 4  # the capture starts 20 s into a minute and spans 200 s
    assert [r["time"] for r in records] == [(m + MINUTE_NS) / NS for m in sorted(reference)]
    for rec, minute in zip(records, sorted(reference), strict=True):
        ref = reference[minute]
        assert rec["interval"] == 60.0 and rec["live"] is False
        assert (rec["totals"]["packets"], rec["totals"]["bytes"]) == (ref["totals"]["packets"], ref["totals"]["bytes"])
        assert rec["totals"]["pps"] == ref["totals"]["packets"] / 60
        (iface,) = rec["interfaces"]
        assert (iface["name"], iface["captured_packets"], iface["captured_bytes"]) == (
            "minutes.pcap",
            ref["totals"]["packets"],
            ref["totals"]["bytes"],
        )
        assert {(p["a"], p["b"]): p["a_to_b_bytes"] for p in rec["pairs"]} == ref["pairs"]
        assert all(p["b_to_a_bytes"] == 0 for p in rec["pairs"])
        assert {p["port"]: p["bytes"] for p in rec["ports"]} == ref["ports"]
        assert {h["addr"]: h["tx_bytes"] for h in rec["hosts"] if h["tx_bytes"]} == ref["tx"]
        assert rec["pairs"][0]["a_to_b_bytes"] == max(ref["pairs"].values())  # largest first, as live
        assert rec["protocols"] == [
            {"proto": 17, "name": "udp", "packets": ref["totals"]["packets"], "bytes": ref["totals"]["bytes"]}
        ]
        assert rec["flows"] == []  # per-flow detail is in the sessions (retrotap sessions DIR)
        assert "cpu_seconds" not in rec.get("capture", {}) and "process_mapper" not in rec


def test_the_window_picks_the_minutes_it_overlaps(capture: tuple[Path, Path]) -> None:
    first = T0 // 60 * 60
    records = minutes(capture[1], "--from", iso(first + 70), "--to", iso(first + 121))
    assert [r["time"] for r in records] == [first + 120, first + 180]
    tops = [(r["pairs"][0]["a"], r["pairs"][0]["b"]) for r in records]
    assert tops == [("10.0.2.1", "10.0.2.2"), ("10.0.3.1", "10.0.3.2")]  # each minute's own top talker


def test_text_and_csv(capture: tuple[Path, Path]) -> None:
    window = ("--from", iso(T0 - 60), "--to", iso(T0 + 3600))
    text = run_retrotap("stats", str(capture[1]), *window)
    assert text.returncode == 0 and text.stdout.count("interval 60.00s") == 4
    csv = run_retrotap("stats", str(capture[1]), *window, "--format", "csv")
    assert csv.returncode == 0
    assert [line.split(",")[0] for line in csv.stdout.splitlines()].count("total") == 4


def test_mistakes_are_one_line(capture: tuple[Path, Path], tmp_path: Path) -> None:
    missing = run_retrotap("stats", str(tmp_path / "nothing"), "--from", "00:00")
    assert missing.returncode == 2
    assert missing.stderr == f"retrotap: error: sessions store {tmp_path / 'nothing' / STORE_NAME}: no such file\n"
    empty = run_retrotap("stats", str(capture[1]), "--from", iso(T0 + 86400), "--to", iso(T0 + 90000))
    assert empty.returncode == 1 and empty.stdout == ""
    assert empty.stderr.startswith(f"retrotap: error: no per-minute records in {capture[1] / STORE_NAME} from ")
    assert len(empty.stderr.splitlines()) == 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / STORE_NAME).write_bytes(b"not a database at all" * 200)
    corrupt = run_retrotap("stats", str(tmp_path / "bad"), "--from", iso(T0))
    assert corrupt.returncode == 2 and "corrupt" in corrupt.stderr and len(corrupt.stderr.splitlines()) == 1
    stray = run_retrotap("stats", "--from", iso(T0))
    assert stray.returncode == 2 and len(stray.stderr.splitlines()) == 1 and "--from" in stray.stderr
    both = run_retrotap("stats", str(capture[1]), "-r", str(capture[0]))
    assert both.returncode == 2 and len(both.stderr.splitlines()) == 1


def test_retention_removes_old_minutes_with_old_sessions(capture: tuple[Path, Path], tmp_path: Path) -> None:
    copy = tmp_path / STORE_NAME
    copy.write_bytes((capture[1] / STORE_NAME).read_bytes())
    with SessionStore(copy) as store:
        kept = lambda: [  # noqa: E731
            store.db.execute(f"SELECT count(DISTINCT minute_ns) FROM {t}").fetchone()[0] for t in AGGREGATES
        ]
        assert kept()[0] == 4
        store.retain(Retention(keep_age_ns=60 * NS), now_ns=(T0 + 200) * NS)  # keeps what ends after T0+140
        minutes_left = [m for (m,) in store.db.execute("SELECT minute_ns FROM minute_totals ORDER BY minute_ns")]
        assert minutes_left == [(T0 // 60 * 60 + 120) * NS, (T0 // 60 * 60 + 180) * NS]
        assert all(n <= 2 for n in kept())
    with sqlite3.connect(copy) as db:  # the sessions table is untouched by the minutes' layout
        assert db.execute("SELECT count(*) FROM sessions").fetchone()[0] > 0


def test_retention_by_size_removes_minutes_without_sessions(capture: tuple[Path, Path], tmp_path: Path) -> None:
    copy = tmp_path / STORE_NAME
    copy.write_bytes((capture[1] / STORE_NAME).read_bytes())
    with SessionStore(copy) as store:
        store.db.execute("DELETE FROM sessions")
        assert store.db.execute("SELECT count(*) FROM minute_totals").fetchone()[0] == 4
        store.retain(Retention(max_bytes=1))  # never reachable: everything goes, and it ends
        assert [store.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in AGGREGATES] == [0] * 6


def test_live_minutes_from_snapshots_add_up(tmp_path: Path) -> None:
    """Live snapshots (minutes by their wall time), latency and processes: each minute holds what grew in it,
    and the minutes read back add up to the run."""
    path = tmp_path / "mixed.pcap"
    write_mixed(path)
    start = 1_800_000_000.0  # a minute boundary
    snaps = [
        replace(s, live=True, time=start + 20 * n, started=start)
        for n, s in enumerate(file_snapshots(str(path), step_s=5.0, clock=lambda: start))
    ]
    assert len(snaps) >= 9 and snaps[-1].latency.exchanges > 0

    def procs(n: int) -> ProcessTable:
        curl = ProcessTotals(7, "curl", "root", 100 * n, 10 * n, n, n)
        return ProcessTable(n + 1, start + 20 * n, (curl,), EMPTY_UNKNOWN)

    agg = MinuteAggregator()
    batch: dict[str, list[Any]] = {}
    for n, s in enumerate(snaps):
        merge(batch, agg.update(s, procs(n), final=n == len(snaps) - 1))
    totals = batch["minute_totals"]
    assert [t[0] for t in totals] == [int(start * NS) + k * MINUTE_NS for k in range(len(totals))]
    # A minute holds 3 snapshots' growth (20 s apart): from the last one before it to its last one.
    ends = [snaps[min(3 * k + 2, len(snaps) - 1)] for k in range(len(totals))]
    befores = [None, *ends[:-1]]
    assert [t[5] for t in totals] == [e.packets - (b.packets if b else 0) for e, b in zip(ends, befores, strict=True)]
    with SessionStore(tmp_path / "store") as store:
        store.insert_batch([], batch)
        read = store.minutes(0, END_OF_TIME)
    assert sum(m.snap.packets for m in read) == snaps[-1].packets
    assert sum(m.snap.bytes for m in read) == snaps[-1].bytes
    exchanges = sum(int(m.snap.latency.services.cols["count"].sum()) for m in read)
    assert exchanges == int(snaps[-1].latency.services.cols["count"].sum())
    curl = [p for m in read for p in (m.processes.processes if m.processes else ()) if p.pid == 7]
    assert sum(p.rx_bytes for p in curl) == 100 * (len(snaps) - 1)
    rec = record(read[0].snap, read[0].prev, 0, read[0].processes)
    assert rec["live"] is True and rec["interval"] == 60.0 and rec["time"] == start + 60
    assert rec["processes"][0]["name"] == "curl" and rec["processes"][0]["rx_bytes"] == 100 * 2
