"""Application latency (DNS, HTTP/1.x, MySQL) against tshark's dns.time, http.time and MySQL frames."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.dns import DNS, DNSQR

from capture_backend.analysis.decode import decode
from capture_backend.analysis.latency import (
    KIND_DNS,
    KIND_HTTP,
    KIND_MYSQL,
    TEXT_BYTES,
    Latency,
    PendingRequests,
    request_text,
)
from capture_backend.contract import LatencySnapshot
from tests.helpers.cli import stats
from tests.helpers.latency import dns_frame, exchanges, nearest_rank
from tests.helpers.tcp_health import MS, Session
from tests.pcapgen import Frame, block_of_frames, write_pcap

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")


def tshark_fields(path: Path, display: str, *fields: str) -> list[list[str]]:
    assert TSHARK is not None
    # The HTTP response's first segment, as retrotap measures: tshark without reassembling bodies.
    cmd = [TSHARK, "-n", "-o", "http.desegment_body:FALSE", "-r", str(path), "-Y", display, "-T", "fields"]
    cmd += ["-E", "separator=|"]
    out = subprocess.run(cmd + [x for f in fields for x in ("-e", f)], capture_output=True, text=True, check=True)
    return [line.split("|") for line in out.stdout.splitlines()]


def tshark_latency(path: Path) -> dict[tuple[str, str, int], list[int]]:
    """(kind, server, port) → latencies in ns per tshark: dns.time, http.time, and MySQL from frame
    times (tshark has no MySQL time: a query's first response packet is the next server packet of
    its stream carrying a mysql.response_code or a result set header)."""
    out: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    for kind, field in (("dns", "dns.time"), ("http", "http.time")):
        for src, src6, port, t in tshark_fields(
            path, f"{field}", "ip.src", "ipv6.src", "udp.srcport" if kind == "dns" else "tcp.srcport", field
        ):
            out[(kind, src or src6, int(port))].append(int(Decimal(t) * 10**9))
    pending: dict[str, Decimal] = {}
    for stream, src, sport, t, cmd in tshark_fields(
        path, "mysql", "tcp.stream", "ip.src", "tcp.srcport", "frame.time_epoch", "mysql.command"
    ):
        if cmd == "3":
            pending[stream] = Decimal(t)
        elif sport == "3306" and stream in pending:
            out[("mysql", src, 3306)].append(int((Decimal(t) - pending.pop(stream)) * 10**9))
    return out


@needs_tshark
def test_latency_per_server_equals_tshark(tmp_path: Path) -> None:
    path = tmp_path / "apps.pcap"
    write_pcap(path, exchanges(), nanosecond=True)
    expected = tshark_latency(path)
    # What the session was built to hold, so that tshark reading it differently would show.
    assert sorted(expected) == [
        ("dns", "10.7.0.53", 53),
        ("dns", "2001:db8:7::53", 53),
        ("http", "10.7.0.80", 80),
        ("http", "2001:db8:7::80", 8080),
        ("mysql", "10.7.0.33", 3306),
    ]
    assert sorted(expected[("dns", "10.7.0.53", 53)]) == [
        2 * MS,
        4 * MS,
        6 * MS,
        8 * MS,
        10 * MS,
        12_500_000,
        200 * MS,
        1230 * MS,
    ]
    # Pipelined: tshark answers the first response from the newest request, the second from none.
    assert expected[("http", "10.7.0.80", 80)] == [30 * MS, 99 * MS]
    assert expected[("mysql", "10.7.0.33", 3306)] == [300 * MS, 1_500_000]

    lat = stats(path)["latency"]
    got = {(r["kind"], r["server"], r["port"]): r for r in lat["servers"]}
    assert sorted(got) == sorted(expected)
    for k, values in expected.items():
        row = got[k]
        assert row["exchanges"] == len(values), k
        assert row["max_ms"] == pytest.approx(max(values) / 1e6, abs=1e-6), k
        assert row["avg_ms"] == pytest.approx(sum(values) / len(values) / 1e6, abs=1e-6), k
        assert row["p50_ms"] == pytest.approx(nearest_rank(values, 0.5) / 1e6, abs=1e-6), k
        assert row["p95_ms"] == pytest.approx(nearest_rank(values, 0.95) / 1e6, abs=1e-6), k
    services = {(r["kind"], r["proto"], r["port"]): r["exchanges"] for r in lat["services"]}
    assert services == {
        ("dns", "udp", 53): 9,
        ("http", "tcp", 80): 2,
        ("http", "tcp", 8080): 1,
        ("mysql", "tcp", 3306): 2,
    }
    assert lat["exchanges"] == 14
    slow = lat["slowest"]
    assert [(x["kind"], round(x["ms"], 3)) for x in slow[:4]] == [
        ("dns", 1230.0),
        ("mysql", 300.0),
        ("dns", 200.0),
        ("http", 99.0),
    ]
    assert slow[0]["request"] == "slow.example A"
    assert slow[1]["request"] == "SELECT * FROM orders WHERE total > 100"
    assert slow[3]["request"] == "HEAD /x HTTP/1.1"
    assert slow[0]["client"] == "10.7.0.1" and slow[0]["server"] == "10.7.0.53"


def test_latency_per_flow(tmp_path: Path) -> None:
    path = tmp_path / "apps.pcap"
    write_pcap(path, exchanges(), nanosecond=True)
    flows = {(f["src"], f["sport"], f["dst"], f["dport"]): f.get("latency") for f in stats(path)["flows"]}
    http = flows[("10.7.0.1", 41000, "10.7.0.80", 80)]
    assert http == {"exchanges": 2, "avg_ms": pytest.approx(64.5), "max_ms": pytest.approx(99.0)}
    assert flows[("10.7.0.1", 33002, "10.7.0.53", 53)] == {"exchanges": 1, "avg_ms": 1230.0, "max_ms": 1230.0}
    assert flows[("10.7.0.1", 33003, "10.7.0.53", 53)] is None  # never answered
    assert flows[("10.7.0.3", 33006, "10.7.0.53", 53)]["exchanges"] == 5


def test_one_packet_per_batch_gives_the_same_exchanges() -> None:
    """Requests waiting across batches are matched as within one batch."""
    frames = exchanges()
    whole = _run([frames])
    single = _run([[f] for f in frames])
    assert whole == single
    assert len(whole) == 14
    assert whole[-1] == 1230 * MS


def _run(batches: list[list[Frame]]) -> list[int]:
    from capture_backend.analysis.tables import Counters

    counters, lat = Counters(), Latency()
    got: list[int] = []
    for frames in batches:
        dec = decode(block_of_frames(frames))
        counters.add(dec)
        fid, ns = lat.add(dec, counters.flow_of, counters.flows.cols["first"])
        assert fid.size == ns.size
        got += ns.tolist()
    return sorted(got)


def _match(pending: PendingRequests, key: list[int], request: list[int], ts: list[int]) -> tuple[list, list, list]:
    """One batch through the pending table: (answered event, its request's time, its request's first byte)."""
    n = len(key)
    text = np.zeros((n, TEXT_BYTES), np.uint8)
    text[:, 0] = np.flatnonzero(request).tolist() + [0] * (n - sum(request))  # a request's text: its event number
    answered, asked_ts, asked_text = np.empty(n, np.int64), np.empty(n, np.int64), np.empty((n, TEXT_BYTES), np.uint8)
    m = pending.match(np.array(key, np.uint64), np.array(request, np.uint8), np.array(ts, np.int64), text,
                      answered, asked_ts, asked_text)  # fmt: skip
    return answered[:m].tolist(), asked_ts[:m].tolist(), asked_text[:m, 0].tolist()


def test_pending_table_answers_the_standing_request_and_skips_unsolicited_and_repeats() -> None:
    """A key holds one request: for HTTP and MySQL the newest (tshark's http.time), for DNS the first
    until a query comes DNS_RETRANSMIT_NS later; a response with none pending answers nothing."""
    for kind, asked in ((KIND_HTTP, [0, 3, 7]), (KIND_MYSQL, [0, 3, 7]), (KIND_DNS, [0, 3, 6])):
        pending = PendingRequests(TEXT_BYTES)
        key = [1 << 24 | kind << 16] * 5 + [2 << 24 | kind << 16] * 4
        got = _match(pending, key, [1, 0, 0, 1, 0, 0, 1, 1, 0], [i * MS for i in range(9)])
        assert got == ([1, 4, 8], [a * MS for a in asked], asked), kind
        assert len(pending) == 0
    # Across batches: a request waits; in the next batch its response comes before a new request.
    pending = PendingRequests(TEXT_BYTES)
    http = [5 << 24 | KIND_HTTP << 16]
    assert _match(pending, http, [1], [MS]) == ([], [], [])
    assert _match(pending, http * 3, [0, 1, 0], [2 * MS, 3 * MS, 4 * MS]) == ([0, 2], [MS, 3 * MS], [0, 1])
    entry, keys, ts, touched = pending.live()
    assert (entry.size, len(pending)) == (0, 0)


def test_dns_query_repeated_after_five_seconds_opens_a_new_exchange() -> None:
    """tshark's retransmission timer: a query 5 s or more after the opening one is timed anew."""
    pending = PendingRequests(TEXT_BYTES)
    key = [KIND_DNS << 16 | 7] * 6
    ts = [t * MS for t in (0, 1_000, 5_000, 6_000, 10_500, 11_000)]
    # Opens at 0, 5 s and 10.5 s (5.5 s after 5 s); the newest opening answers.
    assert _match(pending, key[:2], [1, 1], ts[:2]) == ([], [], [])
    assert _match(pending, key[2:], [1, 1, 1, 0], ts[2:]) == ([3], [10_500 * MS], [2])
    # Another DNS id of the same flow is another exchange; the table keeps one per key, growing past 64.
    many = [KIND_DNS << 16 | i for i in range(200)]
    assert _match(pending, many + many, [1] * 200 + [0] * 200, list(range(400))) == (
        list(range(200, 400)), list(range(200)), list(range(200)),
    )  # fmt: skip
    assert len(pending) == 0


def test_a_request_cut_short_or_padding_is_no_request() -> None:
    """A request cut short after 2 payload bytes is not read past its end and does not stand for its flow,
    and padding is no payload: the response is timed from the whole request (tshark's http.time)."""
    from capture_backend.analysis.tables import Counters

    s = Session("10.7.0.1", 41000, "10.7.0.80", 80, 1, 2)
    s.send(0, True, "PA", data=b"GET / HTTP/1.1\r\n\r\n")
    s.send(1, False, "A")  # 60-byte frame with padding, 0 payload bytes
    cut = Frame(s.frames[0].data[:56], s.frames[0].ts_ns + 2 * MS, s.frames[0].wirelen)  # "GE" of a GET
    s.send(5, False, "PA", data=b"HTTP/1.1 200 OK\r\n\r\n")
    query = dns_frame(6, "10.7.0.1", "10.7.0.53", 33001, 7, "a.example", False)
    answer = dns_frame(10, "10.7.0.1", "10.7.0.53", 33001, 7, "a.example", True)
    dec = decode(block_of_frames([s.frames[0], s.frames[1], cut, s.frames[2], query, answer]))
    counters, lat = Counters(), Latency()
    counters.add(dec)
    fid, ns = lat.add(dec, counters.flow_of, counters.flows.cols["first"])
    assert sorted(ns.tolist()) == [4 * MS, 5 * MS]  # DNS 6 → 10 ms; HTTP 0 → 5 ms (not 2 → 5 ms)
    assert sorted(x.kind for x in lat.freeze().slowest) == ["dns", "http"]


def test_request_text() -> None:
    q = bytes(DNS(id=1, qd=DNSQR(qname="www.example.org", qtype="AAAA")))
    assert request_text(KIND_DNS, q) == "www.example.org AAAA"
    assert request_text(KIND_HTTP, b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n") == "GET /a?b=1 HTTP/1.1"


def test_unanswered_requests_time_out_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A response after 30 s answers nothing; past the pending limit the oldest requests go, counted."""
    from capture_backend.analysis import latency as lat_mod
    from capture_backend.analysis.tables import Counters

    late = [
        dns_frame(0, "10.7.0.1", "10.7.0.53", 33001, 1, "a.example", False),
        dns_frame(31_000, "10.7.0.1", "10.7.0.53", 33001, 1, "a.example", True),
    ]
    counters, lat = Counters(), Latency()
    for f in late:
        dec = decode(block_of_frames([f]))
        counters.add(dec)
        assert lat.add(dec, counters.flow_of, counters.flows.cols["first"])[0].size == 0
    assert (lat.freeze().exchanges, lat.freeze().unanswered) == (0, 1)

    monkeypatch.setattr(lat_mod, "PENDING_LIMIT", 8)
    queries = [dns_frame(i, "10.7.0.1", "10.7.0.53", 33001, i, "a.example", False) for i in range(20)]
    answers = [dns_frame(100 + i, "10.7.0.1", "10.7.0.53", 33001, i, "a.example", True) for i in range(20)]
    counters, lat = Counters(), lat_mod.Latency()
    matched: list[int] = []
    for batch in (queries[:5], queries[5:], answers):
        dec = decode(block_of_frames(batch))
        counters.add(dec)
        matched += lat.add(dec, counters.flow_of, counters.flows.cols["first"])[1].tolist()
    # The last 8 queries (ids 12..19) waited; each answered 100 ms - id ms + id ms later.
    assert matched == [100 * MS] * 8
    assert (lat.freeze().exchanges, lat.freeze().unanswered) == (8, 12)
    assert len(lat.pending) == 0


def test_no_analysis_turns_tcp_health_and_latency_off(tmp_path: Path) -> None:
    path = tmp_path / "apps.pcap"
    write_pcap(path, exchanges(), nanosecond=True)
    on, off = stats(path), stats(path, "--no-analysis")
    assert on["latency"]["exchanges"] == 14 and off["latency"]["exchanges"] == 0
    rtts = {f["dport"]: f["tcp"]["handshake_rtt_ms"] for f in on["flows"] if f["proto"] == "tcp"}
    assert rtts == {80: 2.0, 8080: 1.0, 3306: 1.0}
    assert {f["dport"]: f["tcp"]["handshake_rtt_ms"] for f in off["flows"] if f["proto"] == "tcp"} == dict.fromkeys(
        (80, 8080, 3306)
    )
    assert on["totals"] == off["totals"]  # counting itself is the same


def test_counts_stay_current_and_flows_over_capacity_are_skipped() -> None:
    """The snapshot's unanswered count moves without new exchanges; rows without a flow row are left out."""
    from capture_backend.analysis.tables import Counters

    q = dns_frame(0, "10.7.0.1", "10.7.0.53", 33001, 1, "a.example", False)
    a = dns_frame(2, "10.7.0.1", "10.7.0.53", 33001, 1, "a.example", True)
    counters, lat = Counters(), Latency()
    dec = decode(block_of_frames([q, a]))
    counters.add(dec)
    assert lat.add(dec, counters.flow_of, counters.flows.cols["first"])[1].tolist() == [2 * MS]
    assert (lat.freeze().exchanges, lat.freeze().unanswered) == (1, 0)
    for t_ms, answer in ((10, False), (40_000, True)):  # answered after the 30 s timeout
        dec = decode(block_of_frames([dns_frame(t_ms, "10.7.0.1", "10.7.0.53", 33001, 2, "b.example", answer)]))
        counters.add(dec)
        lat.add(dec, counters.flow_of, counters.flows.cols["first"])
    assert (lat.freeze().exchanges, lat.freeze().unanswered) == (1, 1)
    dec = decode(block_of_frames([q, a]))
    none = lat.add(dec, lambda rows: np.full(rows.size, -1, np.int64), counters.flows.cols["first"])
    assert none[0].size == 0 and lat.freeze().exchanges == 1


def test_top_limits_latency_rows_to_the_busiest(tmp_path: Path) -> None:
    path = tmp_path / "apps.pcap"
    write_pcap(path, exchanges(), nanosecond=True)
    lat = stats(path, "--top", "1")["latency"]
    assert [(r["kind"], r["server"], r["exchanges"]) for r in lat["servers"]] == [("dns", "10.7.0.53", 8)]
    assert [(r["kind"], r["port"], r["exchanges"]) for r in lat["services"]] == [("dns", 53, 9)]
    assert lat["exchanges"] == 14 and len(lat["slowest"]) == 14


def test_a_large_batch_is_matched_in_slices_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file chunk of more events than MATCH_SLICE gives the exchanges of one whole-batch match."""
    from capture_backend.analysis import latency as lat_mod
    from capture_backend.analysis.tables import Counters

    frames = [dns_frame(i, "10.7.0.1", "10.7.0.53", 33001 + i % 5, i % 40, "a.example", False) for i in range(60)]
    frames += [dns_frame(100 + i, "10.7.0.1", "10.7.0.53", 33001 + i % 5, i % 40, "a.example", True) for i in range(45)]
    results = []
    for size in (7, lat_mod.MATCH_SLICE):
        monkeypatch.setattr(lat_mod, "MATCH_SLICE", size)
        counters, lat = Counters(), lat_mod.Latency()
        dec = decode(block_of_frames(frames))
        counters.add(dec)
        fid, ns = lat.add(dec, counters.flow_of, counters.flows.cols["first"])
        snap = lat.freeze()
        results.append((fid.tolist(), ns.tolist(), snap.exchanges, snap.unanswered, len(lat.pending)))
    assert results[0] == results[1]
    assert (results[0][2], results[0][4]) == (40, 0)  # 40 keys asked (20 re-asked within 5 s), each answered


def test_periodic_snapshots_reuse_quantiles_for_a_second_exact_ones_never() -> None:
    """p50/p95 sort the whole sample ring: a periodic (not exact) snapshot may show those of up to a second
    ago, with current counts; an exact one (a record, the last snapshot) and one a second later are current."""
    from capture_backend.analysis.tables import Counters

    now = [100.0]
    counters, lat = Counters(), Latency()
    lat.clock = lambda: now[0]

    def exchange(t_ms: float, qid: int, after_ms: float) -> None:
        frames = [dns_frame(t, "10.7.0.1", "10.7.0.53", 33001, qid, "a.example", answer)
                  for t, answer in ((t_ms, False), (t_ms + after_ms, True))]  # fmt: skip
        dec = decode(block_of_frames(frames))
        counters.add(dec)
        fid, ns = lat.add(dec, counters.flow_of, counters.flows.cols["first"])
        counters.add_latency(fid, ns)

    def server(snap: LatencySnapshot) -> tuple[int, int, int]:
        cols = snap.servers.cols
        return int(cols["count"][0]), int(cols["p50"][0]), int(cols["max"][0])

    exchange(0, 1, 2)
    assert server(lat.freeze(exact=False)) == (1, 2 * MS, 2 * MS)  # the first quantiles are always made
    for qid, t_ms in ((2, 100), (3, 200)):
        exchange(t_ms, qid, 50)
    now[0] += 0.5
    assert server(lat.freeze(exact=False)) == (3, 2 * MS, 50 * MS)  # counts and max current, p50 of 0.5 s ago
    assert server(lat.freeze()) == (3, 50 * MS, 50 * MS)  # exact
    for qid in (4, 5, 6, 7):  # samples 2, 50, 50, 90, 90, 90, 90: the nearest-rank p50 becomes 90
        exchange(100.0 * qid, qid, 90)
    now[0] += 0.4
    assert server(lat.freeze(exact=False)) == (7, 50 * MS, 90 * MS)  # 0.4 s after the exact one: its p50
    now[0] += 0.6
    assert server(lat.freeze(exact=False)) == (7, 90 * MS, 90 * MS)  # a second on: sorted again
