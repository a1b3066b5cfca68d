"""Session records: the writer over known traffic, the store's queries, --where, retention, broken stores."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from capture_backend.analysis.tables import NS
from capture_backend.capture.pcapfile import FileSource
from capture_backend.contract import Snapshot
from capture_backend.exporters.base import Exporters, ExporterSettings
from capture_backend.exporters.sessions import SessionSettings, SessionWriter
from capture_backend.rewind.export import export
from capture_backend.rewind.sessions import (
    COLUMNS,
    SCHEMA_VERSION,
    STORE_NAME,
    Query,
    Retention,
    SessionStore,
    SessionStoreError,
    WhereError,
    compile_where,
    schema,
    session_export,
)
from tests.helpers.sessions import T0_NS, Feed, as_rows, dns_flow, http_flow, known_records, sent, tick
from tests.lab import REPO_ROOT
from tests.pcapgen import Frame, write_pcap


def feed_writer(directory: Path, seconds: int = 21) -> tuple[SessionWriter, list[Snapshot]]:
    """Twenty seconds of file traffic through a fed writer: an HTTP flow and a DNS exchange at once, a tick
    every second."""
    feed = Feed()
    snaps = [feed.add([])]
    writer = SessionWriter(
        SessionSettings(str(directory), idle_s=5, active_s=12, closed_s=2), lambda: snaps[-1], fed=True
    )
    writer.open()
    writer.start()
    for sec in range(seconds):
        t = T0_NS + sec * NS
        packets = [tick(t)]
        if sec == 0:
            packets = sorted(packets + http_flow(t + 1000) + dns_flow(t + 2000), key=lambda p: p[1])
        snaps.append(feed.add(packets))
        writer.feed(snaps[-1])
    writer.close(snaps[-1])
    return writer, snaps


def test_writer_records_each_flow_with_its_health_latency_and_reason(tmp_path: Path) -> None:
    writer, _ = feed_writer(tmp_path)
    assert (writer.stats.records, writer.stats.dropped, writer.stats.errors) == (4, 0, 0)
    with SessionStore(tmp_path, writable=False) as store:
        rows = store.query(Query(top=0))
    web, dns = http_flow(T0_NS + 1000), dns_flow(T0_NS + 2000)
    got = [
        (
            r["proto"],
            r["src"],
            r["sport"],
            r["dst"],
            r["dport"],
            r["src_packets"],
            r["src_bytes"],
            r["dst_packets"],
            r["dst_bytes"],
            r["start"],
            r["end"],
            r["reason"],
        )
        for r in rows
    ]
    assert got == [
        ("udp", "10.9.9.9", 9999, "10.9.9.8", 9998, 13, 13 * 52, 0, 0, T0_NS, T0_NS + 12 * NS, "active"),
        (
            "tcp",
            "10.0.0.1",
            40000,
            "10.0.0.2",
            80,
            *sent(web, "10.0.0.1"),
            *sent(web, "10.0.0.2"),
            web[0][1],
            web[-1][1],
            "closed",
        ),
        (
            "udp",
            "10.0.0.1",
            5353,
            "10.0.0.3",
            53,
            *sent(dns, "10.0.0.1"),
            *sent(dns, "10.0.0.3"),
            dns[0][1],
            dns[-1][1],
            "idle",
        ),
        # The next record of the tick flow opens just after the snapshot that closed the first one.
        ("udp", "10.9.9.9", 9999, "10.9.9.8", 9998, 8, 8 * 52, 0, 0, T0_NS + 12 * NS + 1, T0_NS + 20 * NS, "end"),
    ]
    tcp = rows[1]
    assert (tcp["retrans"], tcp["ooo"], tcp["dupacks"], tcp["zero_windows"], tcp["resets"]) == (1, 0, 0, 0, 0)
    assert tcp["rtt_us"] == 2000  # SYN at 0, the handshake's ACK at 2 ms
    assert tcp["tcp_flags"] == 0x1B  # FIN SYN PSH ACK
    # The response answers the newer of the two identical requests (8 ms → 13 ms), as tshark's http.time.
    assert (tcp["exchanges"], tcp["latency_avg_us"], tcp["latency_max_us"]) == (1, 5000, 5000)
    assert tcp["slowest"] == "GET /index.html HTTP/1.1"
    assert (rows[2]["exchanges"], rows[2]["latency_max_us"], rows[2]["slowest"]) == (1, 50_000, "example.com A")
    assert rows[2]["rtt_us"] is None and rows[0]["exchanges"] == 0 and rows[0]["latency_avg_us"] is None
    assert {r["iface"] for r in rows} == {"test0"}


def known_store(directory: Path) -> SessionStore:
    store = SessionStore(directory)
    assert store.insert(as_rows(known_records())) == 6
    return store


def ids(rows: list[dict[str, object]]) -> list[object]:
    return [r["id"] for r in rows]


def test_queries_of_a_known_store(tmp_path: Path) -> None:
    with known_store(tmp_path) as store:
        assert ids(store.query(Query(host="10.0.0.7"))) == [1, 2, 5]
        assert ids(store.query(Query(host="10.0.0.0/24"))) == [1, 2, 3, 5, 6]
        assert ids(store.query(Query(host="2001:db8::/32"))) == [4]
        assert ids(store.query(Query(port=443))) == [1, 4]
        assert ids(store.query(Query(proto="udp"))) == [3]
        assert ids(store.query(Query(proto="icmp"))) == [5]
        assert ids(store.query(Query(process="RESOLVE"))) == [3]
        assert ids(store.query(Query(where="retrans > 0 and latency_ms > 200"))) == [2]
        assert ids(store.query(Query(where="latency_max_ms >= 400"))) == [2]
        assert ids(store.query(Query(where="duration_s > 30"))) == [4]
        assert ids(store.query(Query(where="rtt_ms = 12"))) == [4]
        assert ids(store.query(Query(sort="bytes", top=2))) == [6, 2]
        assert ids(store.query(Query(sort="latency", top=2))) == [2, 3]
        # Records overlapping 00:30:00.5 to 00:40: the one of minute 30 (it lasts 60 s) and the one of minute 40
        # (ending at 00:40 is outside [from, to)).
        t = T0_NS + 30 * 60 * NS
        assert ids(store.query(Query(from_ns=t + NS // 2, to_ns=t + 10 * 60 * NS))) == [4]
        assert ids(store.query(Query(from_ns=t + NS // 2, to_ns=t + 10 * 60 * NS + 1))) == [4, 5]
        assert store.matching(Query(host="10.0.0.1")) == 3
        one = store.session(2)
        assert one is not None
        assert (one["src"], one["sport"], one["dst"], one["dport"], one["proto"], one["reason"]) == (
            "10.0.0.2",
            40001,
            "10.0.0.7",
            80,
            "tcp",
            "idle",
        )
        assert store.session(99) is None


def test_summary_of_a_known_store(tmp_path: Path) -> None:
    with known_store(tmp_path) as store:
        s = store.summary(Query(top=0), top=3)
    assert (s["sessions"], s["bytes"], s["packets"]) == (6, 1000 * 3 + 50_000 + 9_000_000 + 196 + 8000 * 5, 18 * 5 + 2)
    assert s["first"] == T0_NS and s["last"] == T0_NS + 50 * 60 * NS + NS
    assert [(h["addr"], h["bytes"], h["sessions"]) for h in s["hosts"]] == [
        ("10.0.0.1", 9_008_000 + 9000 + 9000, 3),
        ("10.0.1.1", 9_008_000, 1),
        ("10.0.0.7", 58_000 + 9000 + 196, 3),
    ]
    assert [(p["proto"], p["port"], p["bytes"]) for p in s["ports"]] == [
        ("tcp", 22, 9_008_000),
        ("tcp", 80, 58_000),
        ("tcp", 443, 18_000),
    ]
    assert [(p["process"], p["bytes"], p["sessions"]) for p in s["processes"]] == [
        ("sshd", 9_008_000, 1),
        ("curl", 9000, 1),
        ("systemd-resolved", 9000, 1),
    ]
    assert s["services"][0]["service"] == "ssh"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bytes >", "--where: 'bytes >' is not FIELD OP NUMBER (OP: > >= < <= = !=)"),
        (
            "bogus > 1",
            "--where: unknown field 'bogus' (fields: bytes, packets, src_bytes, dst_bytes, src_packets, "
            "dst_packets, duration_s, retrans, ooo, dupacks, zero_windows, resets, rtt_ms, exchanges, latency_ms, "
            "latency_max_ms, sport, dport, pid)",
        ),
        ("retrans > 1;", "--where: '1;' after retrans > is not a number"),
        (
            "retrans > 1; DROP TABLE sessions",
            "--where: 'retrans > 1; DROP TABLE sessions' is not FIELD OP NUMBER (OP: > >= < <= = !=)",
        ),
        ("retrans > 0 or resets > 0", "--where: only 'and' joins clauses, in 'retrans > 0 or resets > 0'"),
        ("retrans > 0 and", "--where: an empty clause (a stray 'and'?)"),
        ("retrans > 0 and  and bytes > 1", "--where: an empty clause (a stray 'and'?)"),
        ("bytes > 1e", "--where: '1e' after bytes > is not a number"),
        ("bytes ~ 3", "--where: 'bytes ~ 3' is not FIELD OP NUMBER (OP: > >= < <= = !=)"),
    ],
)
def test_where_errors_name_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(WhereError) as e:
        compile_where(text)
    assert str(e.value) == message


def test_where_compiles_to_parameters_only() -> None:
    assert compile_where("retrans > 0 AND latency_ms >= 200.5 and bytes != 1e6") == (
        "retrans > ? AND (latency_avg_us / 1000.0) >= ? AND (src_bytes + dst_bytes) != ?",
        [0, 200.5, 1e6],
    )
    assert compile_where("  ") == ("1", [])


def test_retention_by_age_size_and_free_space(tmp_path: Path) -> None:
    with known_store(tmp_path) as store:
        # By age: records that ended more than 25 minutes before 00:51 (the ones of minutes 0, 10 and 20).
        deleted = store.retain(Retention(keep_age_ns=25 * 60 * NS), now_ns=T0_NS + 51 * 60 * NS)
        assert deleted == 3 and ids(store.query(Query())) == [4, 5, 6]
    with known_store(tmp_path / "b") as store:
        store.insert(as_rows(known_records() * 500))
        before = store.count()
        store.retain(Retention(max_bytes=store.used_bytes() // 2))
        assert 0 < store.count() < before
        kept = store.query(Query(top=0))
        assert min(r["start_ns"] for r in kept) > T0_NS  # the oldest went first
    with known_store(tmp_path / "c") as store:

        class Full:
            f_blocks, f_frsize = 1000, 4096
            f_bavail = 10  # 1 % free, 5 % asked

        deleted = store.retain(Retention(min_free_ratio=0.05), statvfs=lambda _p: Full())  # type: ignore[arg-type, return-value]
        assert deleted == 6 and store.count() == 0  # it cannot free enough: everything goes, and it stops


def test_schema_is_declared_once() -> None:
    db = sqlite3.connect(":memory:")
    db.executescript(schema())
    cols = [r[1] for r in db.execute("PRAGMA table_info(sessions)")]
    assert cols[0] == "id" and len(cols) == 32
    indexes = {r[1] for r in db.execute("PRAGMA index_list(sessions)")}
    assert indexes == {"sessions_start", "sessions_src", "sessions_dst", "sessions_dport"}


def test_corrupt_store_is_one_line_and_capture_goes_on(tmp_path: Path) -> None:
    (tmp_path / STORE_NAME).write_bytes(b"this is not a database" * 100)
    for writable in (True, False):
        with pytest.raises(SessionStoreError) as e:
            SessionStore(tmp_path, writable=writable)
        assert str(e.value) == f"sessions store {tmp_path / STORE_NAME}: corrupt (file is not a database)"
    feed = Feed()
    snaps = [feed.add([])]
    logged: list[str] = []
    exporters = Exporters(ExporterSettings(sessions=str(tmp_path)), lambda: snaps[-1], logged.append, fed=True)
    exporters.start()
    for sec in range(3):
        snaps.append(feed.add([tick(T0_NS + sec * NS)]))
        exporters.offer(snaps[-1])
    exporters.stop(snaps[-1])
    assert logged[0] == (
        f"sessions store {tmp_path / STORE_NAME}: corrupt (file is not a database) "
        "(records are counted as dropped until it can be written)"
    )
    assert logged[-1] == (
        f"sessions: 0 records written to {tmp_path / STORE_NAME}, 1 dropped, 1 minutes of aggregates dropped, "
        "0 flows evicted from the flow table before a record could be made, 1 store errors "
        f"(last: sessions store {tmp_path / STORE_NAME}: corrupt (file is not a database))"
    )


def test_unwritable_and_locked_stores(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SessionStoreError) as e:
        SessionStore(tmp_path / "file" / "dir")
    assert str(e.value) == f"sessions store {tmp_path / 'file' / 'dir' / STORE_NAME}: Not a directory"
    with pytest.raises(SessionStoreError) as e:
        SessionStore(tmp_path / "missing", writable=False)
    assert str(e.value) == f"sessions store {tmp_path / 'missing' / STORE_NAME}: no such file"
    SessionStore(tmp_path).close()
    holder = sqlite3.connect(tmp_path / STORE_NAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(SessionStoreError) as e:
            store = SessionStore(tmp_path, timeout=0.1)
            store.insert(as_rows(known_records()))
        assert str(e.value) == f"sessions store {tmp_path / STORE_NAME}: locked by another process (database is locked)"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert os.path.exists(tmp_path / STORE_NAME)


def test_export_of_one_session_is_its_packets(tmp_path: Path) -> None:
    """`retrotap export DIR --session ID`: the recording in DIR cut to that session's 5-tuple and time span."""
    feed_writer(tmp_path)
    frames = sorted(
        [tick(T0_NS + sec * NS) for sec in range(21)] + http_flow(T0_NS + 1000) + dns_flow(T0_NS + 2000),
        key=lambda p: p[1],
    )
    write_pcap(tmp_path / "test0-20251124T160000Z.pcap", [Frame(f, t, len(f)) for f, t in frames], nanosecond=True)
    with SessionStore(tmp_path, writable=False) as store:
        (web,) = store.query(Query(port=80))
        (tick2,) = store.query(Query(port=9998, where="src_packets = 8"))
    for session, expected in (
        (web, http_flow(T0_NS + 1000)),
        (tick2, [tick(T0_NS + sec * NS) for sec in range(13, 21)]),  # the packets after the first record's
    ):
        out = tmp_path / f"session-{session['id']}.pcap"
        result = export(session_export(tmp_path, session["id"], str(out)), lambda _m: None)
        assert result.packets == len(expected)
        with FileSource(str(out)) as src:
            got = [
                (bytes(b.data[int(b.start[i]) : int(b.start[i]) + int(b.caplen[i])]), int(b.ts_ns[i]))
                for b in src.blocks()
                for i in range(len(b))
            ]
        assert got == expected
    with pytest.raises(SessionStoreError) as e:
        session_export(tmp_path, 99, str(tmp_path / "x.pcap"))
    assert str(e.value) == f"sessions store {tmp_path / STORE_NAME}: no session 99"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`retrotap ARGS` from this checkout (UTC, so local times print as UTC)."""
    env = {**os.environ, "TZ": "UTC"}
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env
    )


def test_sessions_command_prints_the_records_asked_for(tmp_path: Path) -> None:
    known_store(tmp_path).close()
    proc = cli("sessions", str(tmp_path), "--from", "2025-11-24T16:05:00Z", "--to", "2025-11-24T16:35:00Z")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.splitlines() == [
        "ID  START (local)            DUR s  PROTO  CLIENT               SERVER             PKTS  C>S BYTES  "
        "S>C BYTES  RETR  RTT ms  LAT ms  PROCESS                END",
        " 2  2025-11-24 16:10:00.000    1.0  tcp    10.0.0.2:40001       10.0.0.7:80          18      50000       "
        "8000     3    0.50   400.0  -                      idle",
        " 3  2025-11-24 16:20:00.000    1.0  udp    10.0.0.1:5353        10.0.0.53:53         18       1000       "
        "8000     0       -     3.0  systemd-resolved[200]  idle",
        " 4  2025-11-24 16:30:00.000   60.0  tcp    [2001:db8::1]:50000  [2001:db8::7]:443    18       1000       "
        "8000     0   12.00       -  -                      active",
        "  #2 slowest request (400.0 ms): GET /slow HTTP/1.1",
        "  #3 slowest request (3.0 ms): example.com A",
    ]
    proc = cli("sessions", str(tmp_path), "--host", "10.0.0.7", "--where", "retrans > 0", "--format", "json")
    assert proc.returncode == 0
    (rec,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert (rec["id"], rec["src"], rec["dst"], rec["retransmissions"], rec["latency_max_ms"]) == (
        2,
        "10.0.0.2",
        "10.0.0.7",
        3,
        400.0,
    )
    proc = cli("sessions", str(tmp_path), "--sort", "bytes", "--top", "1", "--format", "csv")
    assert proc.returncode == 0 and proc.stderr == "retrotap: showing 1 of 6 sessions (--top 0: all)\n"
    assert proc.stdout.splitlines()[1].startswith("6,1764003000.0,1764003001.0,")
    proc = cli("sessions", str(tmp_path), "--summary", "--format", "csv", "--top", "1")
    assert proc.stdout.splitlines() == [
        "kind,name,bytes,packets,sessions",
        "total,,9093196,92,6",
        "host,10.0.0.1,9026000,54,3",
        "port,tcp/22,9008000,18,1",
        "service,ssh,9008000,18,1",
        "process,sshd,9008000,18,1",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--where", "rtt > 1"], "--where: unknown field 'rtt' (fields: bytes, packets, src_bytes, "),
        (["--host", "10.0.0.300"], "--host: '10.0.0.300' is not an IPv4 or IPv6 address or network"),
        (["--proto", "gre"], "--proto gre: one of icmp, tcp, udp, icmpv6, sctp or a number"),
        (["--port", "70000"], "--port 70000: must be from 0 to 65535"),
        (["--from", "yesterday"], "--from: 'yesterday' is not a time"),
    ],
)
def test_sessions_command_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    known_store(tmp_path).close()
    proc = cli("sessions", str(tmp_path), *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"retrotap: error: {message}") and proc.stderr.count("\n") == 1


def test_sessions_command_on_broken_stores(tmp_path: Path) -> None:
    proc = cli("sessions", str(tmp_path))
    assert (proc.returncode, proc.stderr) == (
        2,
        f"retrotap: error: sessions store {tmp_path / STORE_NAME}: no such file\n",
    )
    (tmp_path / STORE_NAME).write_bytes(b"garbage" * 1000)
    proc = cli("sessions", str(tmp_path))
    assert (proc.returncode, proc.stderr) == (
        2,
        f"retrotap: error: sessions store {tmp_path / STORE_NAME}: corrupt (file is not a database)\n",
    )
    proc = cli("export", str(tmp_path), "--session", "3", "--host", "10.0.0.1", "-w", str(tmp_path / "x.pcap"))
    assert proc.stderr == (
        "retrotap: error: --session picks the packets itself: leave out -f, --host, --port, --from, --to, --list\n"
    )


def test_a_store_of_schema_version_1_is_read_with_null_namespaces_and_gets_the_columns_when_written(
    tmp_path: Path,
) -> None:
    old_columns = [c for c in COLUMNS if c.name not in ("netns", "container")]
    db = sqlite3.connect(tmp_path / STORE_NAME)
    cols = ", ".join(f"{c.name} {c.type}" for c in old_columns)
    db.executescript(
        f"CREATE TABLE sessions (id INTEGER PRIMARY KEY, {cols});"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', 1);"
    )
    old = known_records()[:2]
    names = [c.name for c in old_columns]
    db.executemany(
        f"INSERT INTO sessions ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [tuple(r[n] for n in names) for r in old],
    )
    db.commit()
    db.close()
    with SessionStore(tmp_path, writable=False) as store:
        rows = store.query(Query(top=0))
        assert [(r["process"], r["netns"], r["container"]) for r in rows] == [("curl", None, None), (None, None, None)]
    with SessionStore(tmp_path) as store:
        new = dict(known_records()[5], start_ns=T0_NS + 10 * NS, end_ns=T0_NS + 11 * NS)
        new.update(netns="web", container="docker:0123456789ab")
        assert store.insert(as_rows([new])) == 1
        rows = store.query(Query(top=0, process="sshd"))
        assert [(r["process"], r["netns"], r["container"]) for r in rows] == [("sshd", "web", "docker:0123456789ab")]
        version = store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        assert version == SCHEMA_VERSION == 2


def test_session_records_carry_the_vlan_of_tagged_flows(tmp_path: Path) -> None:
    """Flows inside an 802.1Q tag get its id; untagged flows none (stats -r FILE --sessions DIR)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Dot1Q, Ether

    def frame(pkt: object, t: int) -> Frame:
        data = bytes(pkt)  # type: ignore[call-overload]
        return Frame(data, t, len(data))

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    frames = [
        frame(eth / Dot1Q(vlan=42) / IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=5000, dport=9000), T0_NS),
        frame(eth / Dot1Q(vlan=42) / IP(src="10.1.0.2", dst="10.1.0.1") / UDP(sport=9000, dport=5000), T0_NS + 10),
        frame(eth / Dot1Q(vlan=7) / IP(src="10.7.0.1", dst="10.7.0.2") / UDP(sport=5001, dport=9001), T0_NS + 20),
        frame(eth / IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=5002, dport=9002), T0_NS + 30),
    ]
    pcap = tmp_path / "vlans.pcap"
    write_pcap(pcap, frames, nanosecond=True)
    store = tmp_path / "store"
    store.mkdir()
    assert cli("stats", "-r", str(pcap), "--sessions", str(store), "--format", "json").returncode == 0
    done = cli("sessions", str(store), "--from", "2000-01-01 00:00", "--format", "json")
    assert done.returncode == 0, done.stderr
    by_port = {r["dport"]: r["vlan"] for r in map(json.loads, done.stdout.splitlines())}
    assert by_port == {9000: 42, 9001: 7, 9002: None}


def test_flows_evicted_before_the_writer_saw_them_are_counted(tmp_path: Path) -> None:
    """A flow table of 2 rows fed 6 flows between two of the writer's looks: 4 flows leave no record, and the
    writer says so (counted, in /metrics and the exit line) instead of losing them silently."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from capture_backend.analysis.tables import CounterLimits
    from capture_backend.replay import file_snapshots

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    frames = []
    for i in range(6):
        data = bytes(eth / IP(src=f"10.5.0.{i + 1}", dst="10.5.1.1") / UDP(sport=4000 + i, dport=9000))
        frames.append(Frame(data, T0_NS + i * 1000, len(data)))
    pcap = tmp_path / "six.pcap"
    write_pcap(pcap, frames, nanosecond=True)
    (snap,) = list(file_snapshots(str(pcap), step_s=60, limits=CounterLimits(flows=2)))[-1:]
    assert len(snap.flows) <= 2 and snap.flows.evicted == 6 - len(snap.flows)
    logged: list[str] = []
    exporters = Exporters(ExporterSettings(sessions=str(tmp_path)), lambda: snap, logged.append, fed=True)
    exporters.start()
    exporters.offer(snap)
    assert exporters.sessions is not None
    unseen = exporters.extra["sessions_unseen_flows_total"].read
    exporters.stop(snap)
    assert unseen() == snap.flows.evicted
    with SessionStore(tmp_path, writable=False) as store:
        assert store.count() == len(snap.flows)
    assert f"{snap.flows.evicted} flows evicted from the flow table before a record could be made" in logged[-1]


def test_a_store_that_cannot_be_written_changes_the_exit_status(tmp_path: Path) -> None:
    """stats -r FILE --sessions DIR on a corrupt store: the records are still printed, the lost session records
    are said in one line each, and the exit status is 1 (not 0 as if they had been written)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    data = bytes(Ether() / IP(src="10.6.0.1", dst="10.6.0.2") / UDP(sport=4000, dport=9000))
    pcap = tmp_path / "one.pcap"
    write_pcap(pcap, [Frame(data, T0_NS, len(data))], nanosecond=True)
    store = tmp_path / "store"
    store.mkdir()
    (store / STORE_NAME).write_bytes(b"not a database" * 100)
    done = cli("stats", "-r", str(pcap), "--sessions", str(store), "--format", "json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["totals"]["packets"] == 1
    assert "corrupt (file is not a database)" in done.stderr and "1 dropped" in done.stderr
    assert "Traceback" not in done.stderr
