"""Which process: flows attributed to local sockets, per-process totals, `stats` JSON and view 6."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from capture_backend.analysis.processes import NOTE, ProcessMapper, ProcessTable, _conns_table
from capture_backend.analysis.tables import CounterLimits, TableSnapshot
from capture_backend.engine import Counting, Snapshot
from capture_backend.output.report import process_rows, record
from tests.helpers.live import records, start_stats, stop, udp
from tests.helpers.tui import cells, screen_text
from tests.lab import Lab, wait_for_output
from tui.app import RetrotapApp, SnapshotFeed

TCP, UDP_P, ICMP = 6, 17, 1
CLOCK = 1_700_000_000.0


def key(a: str, aport: int, b: str, bport: int, proto: int) -> bytes:
    """A flow-table key: a, b as 16 bytes (IPv4-mapped), ports big-endian, protocol."""

    def addr(text: str) -> bytes:
        ip = ipaddress.ip_address(text)
        return bytes(10) + b"\xff\xff" + ip.packed if ip.version == 4 else ip.packed

    return addr(a) + addr(b) + aport.to_bytes(2, "big") + bport.to_bytes(2, "big") + bytes([proto])


def snapshot(seq: int, rows: list[tuple[bytes, tuple[int, int], tuple[int, int]]]) -> Snapshot:
    """A live snapshot whose flow table holds rows (key, packets a->b/b->a, bytes a->b/b->a)."""
    base = Counting(CounterLimits(), True, "", lambda: CLOCK + seq).freeze((), 0.0, {})
    n = len(rows)
    keys = np.array([list(k) for k, _, _ in rows], np.uint8).reshape(n, 37)
    cols = {
        "packets": np.array([p for _, p, _ in rows], np.int64).reshape(n, 2),
        "bytes": np.array([b for _, _, b in rows], np.int64).reshape(n, 2),
        "first": np.full(n, int(CLOCK * 1e9), np.int64),
        "last": np.full(n, int((CLOCK + seq) * 1e9), np.int64),
        "origin": np.zeros(n, np.int64),
        "tcp_flags": np.zeros(n, np.int64),
    }
    return replace(base, seq=seq, time=CLOCK + seq, started=CLOCK, flows=TableSnapshot(keys, cols))


def conn(kind: int, laddr: tuple[str, int], raddr: tuple[str, int] | tuple[()], pid: int | None) -> SimpleNamespace:
    return SimpleNamespace(type=kind, laddr=laddr, raddr=raddr, pid=pid)


SERVER = conn(socket.SOCK_DGRAM, ("198.18.0.1", 5000), (), 100)
WEB = conn(socket.SOCK_STREAM, ("0.0.0.0", 80), (), 200)
CLIENT = conn(socket.SOCK_STREAM, ("198.18.0.1", 40000), ("203.0.113.9", 443), 300)
NAMES = {100: ("server", "alice"), 200: ("web", "www"), 300: ("client", "bob"), 400: ("late", "carol")}

F_SERVER = key("198.18.0.2", 4000, "198.18.0.1", 5000, UDP_P)
F_WEB = key("198.18.0.1", 80, "10.0.0.5", 5555, TCP)
F_CLIENT = key("198.18.0.1", 40000, "203.0.113.9", 443, TCP)
F_TRANSIT = key("10.1.1.1", 1, "10.2.2.2", 80, TCP)  # port 80, but neither address is local
F_ICMP = key("198.18.0.2", 0, "198.18.0.1", 0, ICMP)
F_SERVER2 = key("198.18.0.3", 4001, "198.18.0.1", 5000, UDP_P)
F_LATE = key("198.18.0.1", 6000, "198.18.0.9", 7000, UDP_P)


class FakeSockets:
    """A socket table the test edits, and which pids are alive."""

    def __init__(self, rows: list[SimpleNamespace]) -> None:
        self.rows = rows
        self.dead: set[int] = set()
        self.reads = 0

    def conns(self) -> list[SimpleNamespace]:
        self.reads += 1
        return list(self.rows)

    def mapper(self) -> ProcessMapper:
        now = [0.0]

        def clock() -> float:
            now[0] += 1.0
            return now[0]

        return ProcessMapper(
            conns=self.conns,
            info=NAMES.get,
            local_addrs=lambda: ["198.18.0.1", "127.0.0.1"],
            alive=lambda pid: pid not in self.dead,
            refresh_s=1e9,  # only the refreshes unexplained flows ask for
            clock=clock,
        )


def by_pid(table: ProcessTable) -> dict[int | None, dict[str, Any]]:
    return {r["pid"]: r for r in process_rows(table)}


def first_snapshot() -> Snapshot:
    return snapshot(
        1,
        [
            (F_SERVER, (3, 0), (300, 0)),
            (F_WEB, (2, 4), (200, 400)),
            (F_CLIENT, (5, 5), (500, 1500)),
            (F_TRANSIT, (7, 0), (700, 0)),
            (F_ICMP, (1, 1), (98, 98)),
        ],
    )


def test_flows_are_attributed_by_their_local_end_and_diffed_by_key() -> None:
    sockets = FakeSockets([SERVER, WEB, CLIENT])
    mapper = sockets.mapper()
    first = mapper.update(first_snapshot())
    rows = by_pid(first)
    assert rows[100] == {
        "pid": 100, "name": "server", "user": "alice", "rx_bytes": 300, "tx_bytes": 0,
        "rx_packets": 3, "tx_packets": 0, "exited": False, "netns": None, "container": None,
    }  # fmt: skip
    assert (rows[200]["rx_bytes"], rows[200]["tx_bytes"], rows[200]["rx_packets"], rows[200]["tx_packets"]) == (
        400, 200, 4, 2,
    )  # fmt: skip
    assert (rows[300]["rx_bytes"], rows[300]["tx_bytes"]) == (1500, 500)
    assert rows[None] == {
        "pid": None, "name": "unknown", "user": "", "rx_bytes": 700 + 196, "tx_bytes": 0,
        "rx_packets": 9, "tx_packets": 0, "exited": False, "netns": None, "container": None,
    }  # fmt: skip
    assert [r["pid"] for r in process_rows(first)] == [300, 200, 100, None]  # by bytes, unknown last

    # Rows in another order, the client's flow evicted and the client gone, a new flow to the server.
    sockets.rows = [SERVER, WEB]
    sockets.dead = {300}
    mapper.refresh()  # the periodic read of the socket table
    second = mapper.update(
        snapshot(
            2,
            [
                (F_SERVER2, (1, 0), (50, 0)),
                (F_ICMP, (1, 1), (98, 98)),
                (F_WEB, (2, 4), (200, 400)),
                (F_SERVER, (5, 0), (500, 0)),
            ],
        )
    )
    rows = by_pid(second)
    assert (rows[100]["rx_bytes"], rows[100]["rx_packets"]) == (300 + 200 + 50, 3 + 2 + 1)
    assert (rows[200]["rx_bytes"], rows[200]["tx_bytes"]) == (400, 200)
    assert (rows[300]["rx_bytes"], rows[300]["tx_bytes"], rows[300]["exited"]) == (1500, 500, True)
    assert (rows[None]["rx_bytes"], rows[None]["rx_packets"]) == (896, 9)
    assert not rows[100]["exited"] and not rows[200]["exited"]
    assert second.owner(F_SERVER2) == (100, "server") and second.owner(F_TRANSIT) is None
    # A snapshot with the same seq (even with other rows) is not counted again: the result stands.
    assert mapper.update(snapshot(2, [])) is second


def test_an_unexplained_new_flow_refreshes_the_socket_table() -> None:
    sockets = FakeSockets([SERVER])
    mapper = sockets.mapper()
    mapper.update(snapshot(1, [(F_SERVER, (1, 0), (100, 0))]))
    reads = sockets.reads
    mapper.update(snapshot(2, [(F_SERVER, (2, 0), (200, 0))]))
    assert sockets.reads == reads  # nothing new: no refresh (refresh_s is huge)
    sockets.rows = [SERVER, conn(socket.SOCK_DGRAM, ("198.18.0.1", 6000), ("198.18.0.9", 7000), 400)]
    table = mapper.update(snapshot(3, [(F_SERVER, (2, 0), (200, 0)), (F_LATE, (0, 2), (0, 120))]))
    assert sockets.reads == reads + 1
    rows = by_pid(table)
    assert (rows[400]["name"], rows[400]["rx_bytes"], rows[400]["rx_packets"]) == ("late", 120, 2)
    assert rows[None]["rx_bytes"] == 0


def test_stats_record_lists_processes_and_flow_owners() -> None:
    mapper = FakeSockets([SERVER, WEB, CLIENT]).mapper()
    snap = first_snapshot()
    rec = json.loads(json.dumps(record(snap, None, 0, mapper.update(snap))))
    procs = {p["pid"]: p for p in rec["processes"]}
    assert set(procs) == {100, 200, 300, None}
    assert procs[None]["name"] == "unknown" and procs[None]["rx_bytes"] == 896
    owners = {(f["proto"], f["dst"], f["dport"]): (f.get("pid"), f.get("process")) for f in rec["flows"]}
    assert owners[("udp", "198.18.0.1", 5000)] == (100, "server")
    assert owners[("tcp", "203.0.113.9", 443)] == (300, "client")
    assert owners[("icmp", "198.18.0.1", 0)] == (None, None)
    assert "processes" not in record(snap, None, 0)


def test_view_6_lists_the_processes_of_a_fed_snapshot() -> None:
    snap = first_snapshot()
    mapper = FakeSockets([SERVER, WEB, CLIENT]).mapper()
    mapper.update(snap)

    async def run() -> None:
        app = RetrotapApp(SnapshotFeed(snap), clock=lambda: CLOCK + 1, processes=mapper)
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.press("6")
            await pilot.pause()
            rows = cells(app, "processes-table")
            assert [r[:3] for r in rows] == [
                ["300", "client", "bob"],
                ["200", "web", "www"],
                ["100", "server", "alice"],
                ["–", "unknown", ""],
            ]
            assert rows[2][6] == "300 B"
            assert rows[3][8] == "9"
            assert NOTE in screen_text(app)

    asyncio.run(run())


def test_a_process_of_another_namespace_and_its_container_in_the_json_and_view_6() -> None:
    nginx = conn(socket.SOCK_STREAM, ("0.0.0.0", 80), (), 500)
    here, _ = _conns_table([SERVER], ["198.18.0.1"], 1)
    there, _ = _conns_table([nginx], ["10.9.0.2"], 2)
    tables = [here, replace(there, label="web1")]
    mapper = ProcessMapper(
        tables=lambda: tables,
        info={**NAMES, 500: ("nginx", "www")}.get,
        container=lambda pid: "docker:0123456789ab" if pid == 500 else "",
        alive=lambda pid: True,
    )
    web = key("10.9.0.1", 50000, "10.9.0.2", 80, TCP)
    snap = snapshot(1, [(web, (2, 3), (200, 900)), (F_SERVER, (3, 0), (300, 0))])
    rec = record(snap, None, 0, processes=mapper.update(snap))
    flows = {f["dport"]: f for f in rec["flows"]}
    assert {k: flows[80][k] for k in ("pid", "process", "netns", "container")} == {
        "pid": 500, "process": "nginx", "netns": "web1", "container": "docker:0123456789ab"
    }  # fmt: skip
    assert {k: flows[5000][k] for k in ("pid", "netns", "container")} == {"pid": 100, "netns": None, "container": None}
    procs = {p["pid"]: p for p in rec["processes"]}
    assert (procs[500]["netns"], procs[500]["container"], procs[500]["rx_bytes"], procs[500]["tx_bytes"]) == (
        "web1", "docker:0123456789ab", 200, 900
    )  # fmt: skip
    assert (procs[100]["netns"], procs[100]["container"]) == (None, None)

    async def run() -> None:
        app = RetrotapApp(SnapshotFeed(snap), clock=lambda: CLOCK + 1, processes=mapper)
        async with app.run_test(size=(160, 40)) as pilot:
            await pilot.press("6")
            await pilot.pause()
            rows = cells(app, "processes-table")
            assert [r[:4] for r in rows] == [
                ["500", "nginx", "www", "web1/docker:0123456789ab"],
                ["100", "server", "alice", ""],
                ["–", "unknown", "", ""],
            ]

    asyncio.run(run())


# --- live: a UDP server in namespace a, datagrams from b, `retrotap stats` in a

SERVER_CODE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.18.0.1", int(sys.argv[1])))
print("ready", flush=True)
got = size = 0
while True:
    data, _ = s.recvfrom(65535)
    got, size = got + 1, size + len(data)
    if got == int(sys.argv[2]):
        print("received", got, size, flush=True)
"""


def start_server(lab: Lab, port: int, expect: int) -> subprocess.Popen[str]:
    """A UDP server on 198.18.0.1:port in namespace a; it says when it has received `expect` datagrams."""
    args = [sys.executable, "-c", SERVER_CODE, str(port), str(expect)]
    server = lab.popen_a(args, stdout=subprocess.PIPE, text=True)
    wait_for_output(server, "ready", timeout=10, stream="stdout")
    return server


def start_json_stats(lab: Lab) -> subprocess.Popen[str]:
    return start_stats(lab, "--interval", "0.5", "--top", "0")


def send(lab: Lab, port: int, payloads: list[int]) -> list[bytes]:
    frames = [udp(lab, 4000, port, n, dst=lab.ip4_a) for n in payloads]
    assert lab.send_frames(frames) == len(frames)
    return frames


def wait_received(server: subprocess.Popen[str], payloads: list[int]) -> None:
    line = wait_for_output(server, "received", timeout=10, stream="stdout")
    assert line.split()[1:] == [str(len(payloads)), str(sum(payloads))]


def entry(rec: dict[str, Any], pid: int) -> dict[str, Any]:
    rows = [p for p in rec["processes"] if p["pid"] == pid]
    assert len(rows) == 1, rec["processes"]
    return dict(rows[0])


@pytest.mark.live
def test_stats_attributes_received_datagrams_to_the_server_process(open_lab: Lab) -> None:
    lab = open_lab
    payloads = [10, 100, 1000] * 4
    server = start_server(lab, 5353, len(payloads))
    stats = start_json_stats(lab)
    frames = send(lab, 5353, payloads)
    wait_received(server, payloads)
    rec = stop(stats)[-1]
    mine = entry(rec, server.pid)
    assert mine["name"].startswith("python")
    assert (mine["rx_bytes"], mine["rx_packets"]) == (sum(len(f) for f in frames), len(frames))
    assert (mine["tx_bytes"], mine["tx_packets"], mine["exited"]) == (0, 0, False)
    assert rec["processes"][-1]["pid"] is None and rec["processes"][-1]["name"] == "unknown"
    flows = [f for f in rec["flows"] if f["dport"] == 5353]
    assert [(f["pid"], f["process"]) for f in flows] == [(server.pid, mine["name"])]
    server.terminate()
    server.wait(10)


@pytest.mark.live
def test_an_exited_server_keeps_its_totals(open_lab: Lab) -> None:
    lab = open_lab
    payloads = [200] * 5
    server = start_server(lab, 5454, len(payloads))
    stats = start_json_stats(lab)
    frames = send(lab, 5454, payloads)
    wait_received(server, payloads)
    mine = next(
        (r for rec in records(stats, 15) for r in rec["processes"] if r["pid"] == server.pid and r["rx_packets"] == 5),
        None,
    )
    assert mine is not None, "the server never showed up with its datagrams"
    server.terminate()
    server.wait(10)
    # Until a periodic socket table read finds it gone (bounded by records' time limit).
    gone = next(
        (r for rec in records(stats, 15) for r in rec["processes"] if r["pid"] == server.pid and r["exited"]), None
    )
    stop(stats)
    assert gone is not None, "the server was never marked exited"
    assert (gone["rx_bytes"], gone["rx_packets"]) == (sum(len(f) for f in frames), 5)


def _reference_end(
    sockets: list[SimpleNamespace], local: set[str], proto: int, addr: str, port: int, peer: str, peer_port: int
) -> int | None:
    """The attribution rule written out per flow: connected socket, else bound, else a wildcard
    listener of the address's family when the address is local."""
    kind = {TCP: socket.SOCK_STREAM, UDP_P: socket.SOCK_DGRAM}.get(proto)
    mine = [s for s in sockets if s.type == kind]
    for s in mine:
        if s.raddr and s.laddr == (addr, port) and s.raddr == (peer, peer_port):
            return int(s.pid)
    for s in mine:
        if s.laddr == (addr, port):
            return int(s.pid)
    if addr in local:
        v6 = ipaddress.ip_address(addr).version == 6
        for s in mine:
            wild_host = ipaddress.ip_address(s.laddr[0])
            if wild_host.is_unspecified and s.laddr[1] == port and (wild_host.version == 6 or not v6):
                return int(s.pid)
    return None


def test_many_flows_are_attributed_as_the_rule_says() -> None:
    rng = np.random.default_rng(7)
    local = ["198.18.0.1", "127.0.0.1", "2001:db8::1"]
    remote = ["203.0.113.9", "10.1.1.1", "2001:db8::99", "198.18.0.7"]
    table = [
        conn(socket.SOCK_DGRAM, ("198.18.0.1", 5000), (), 100),
        conn(socket.SOCK_STREAM, ("0.0.0.0", 80), (), 200),
        conn(socket.SOCK_STREAM, ("::", 443), (), 400),
        conn(socket.SOCK_STREAM, ("198.18.0.1", 40000), ("203.0.113.9", 443), 300),
        conn(socket.SOCK_STREAM, ("198.18.0.1", 40000), ("10.1.1.1", 443), 100),
    ]
    addrs, ports = local + remote, [80, 443, 5000, 40000, 53]
    flows: dict[bytes, tuple[tuple[int, int], tuple[int, int], tuple[int, str, int, str, int]]] = {}
    for ends in ((TCP, "198.18.0.1", 40000, "10.1.1.1", 443), (TCP, "203.0.113.9", 443, "198.18.0.1", 40000)):
        proto, a, aport, b, bport = ends  # the connected sockets, whose port is also bound by another pid
        flows[key(a, aport, b, bport, proto)] = ((2, 3), (200, 180), ends)
    while len(flows) < 3000:
        a, b = (addrs[i] for i in rng.choice(len(addrs), 2, replace=False))
        if ipaddress.ip_address(a).version != ipaddress.ip_address(b).version:
            continue
        aport, bport = (
            int(ports[i]) if rng.random() < 0.7 else int(rng.integers(1024, 65535)) for i in rng.integers(0, 5, 2)
        )
        proto = int(rng.choice([TCP, UDP_P, ICMP]))
        p = (int(rng.integers(0, 5)), int(rng.integers(1, 5)))
        flows[key(a, aport, b, bport, proto)] = (p, (p[0] * 100, p[1] * 60), (proto, a, aport, b, bport))
    mapper = ProcessMapper(conns=lambda: table, info=NAMES.get, local_addrs=lambda: local, alive=lambda pid: True)
    got = by_pid(mapper.update(snapshot(1, [(k, p, b) for k, (p, b, _) in flows.items()])))
    want: dict[int | None, list[int]] = {}
    ends = set(local)
    for (p0, p1), (b0, b1), (proto, a, aport, b, bport) in flows.values():
        if proto == ICMP:
            pa = pb = None
        else:
            pa = _reference_end(table, ends, proto, a, aport, b, bport)
            pb = _reference_end(table, ends, proto, b, bport, a, aport)
        if pa is None and pb is None:
            w = want.setdefault(None, [0, 0, 0, 0])
            w[0] += b0 + b1
            w[2] += p0 + p1
        for pid, rx_b, tx_b, rx_p, tx_p in ((pa, b1, b0, p1, p0), (pb, b0, b1, p0, p1)):
            if pid is not None:
                w = want.setdefault(pid, [0, 0, 0, 0])
                w[0], w[1], w[2], w[3] = w[0] + rx_b, w[1] + tx_b, w[2] + rx_p, w[3] + tx_p
    assert len(want) == 5  # every socket (and the unknown entry) owns some of the flows
    assert {pid: [r["rx_bytes"], r["tx_bytes"], r["rx_packets"], r["tx_packets"]] for pid, r in got.items()} == want


def test_a_failing_mapper_is_published_and_counted_never_silent() -> None:
    table = [SERVER]
    broken = [True]

    def conns() -> list[SimpleNamespace]:
        if broken[0]:
            raise OSError("Permission denied: /proc/net/tcp")
        return table

    mapper = ProcessMapper(conns=conns, info=NAMES.get, local_addrs=lambda: ["198.18.0.1"], alive=lambda pid: True)
    mapper.refresh()
    assert (mapper.result.error, mapper.result.errors) == ("socket table: Permission denied: /proc/net/tcp", 1)
    rec = record(first_snapshot(), None, processes=mapper.result)
    assert rec["process_mapper"] == {"errors": 1, "last_error": "socket table: Permission denied: /proc/net/tcp"}
    broken[0] = False
    mapper.refresh()
    table_ = mapper.update(first_snapshot())
    assert (table_.error, table_.errors) == ("", 1)  # working again; the failure stays counted
    assert by_pid(table_)[100]["rx_bytes"] == 300

    # A bug in a round on the mapper's own thread: the thread goes on and the result says what failed.
    def bad_snapshots() -> Snapshot:
        raise RuntimeError("boom")

    looping = ProcessMapper(
        bad_snapshots, conns=lambda: table, info=NAMES.get, local_addrs=lambda: [], alive=lambda pid: True
    )
    looping.start()
    try:
        for _ in range(200):  # bounded: the thread polls every 0.1 s
            if looping.result.errors >= 2:
                break
            looping._stop.wait(0.05)
    finally:
        looping.close()
    assert looping.result.error == "RuntimeError: boom" and looping.result.errors >= 2


def test_an_unexplained_flow_is_looked_up_again_only_when_the_sockets_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood's flows no socket explains cost one lookup each, not one per update; a socket that appears
    later still explains them."""
    from capture_backend.analysis import processes as processes_mod

    looked: list[int] = []
    attribute = processes_mod._Sockets.attribute

    def counted(self: Any, flows: TableSnapshot, rows: np.ndarray, ifaces: Any) -> tuple[np.ndarray, np.ndarray]:
        looked.append(int(rows.size))
        return attribute(self, flows, rows, ifaces)

    monkeypatch.setattr(processes_mod._Sockets, "attribute", counted)
    sockets = FakeSockets([SERVER])
    mapper = sockets.mapper()
    mapper.refresh()
    reads = sockets.reads
    mapper.update(snapshot(1, [(F_SERVER, (1, 0), (100, 0)), (F_LATE, (0, 1), (0, 60))]))
    # Both new flows once; F_LATE unexplained: the table is read again, but it is the same table.
    assert (looked, sockets.reads) == ([2], reads + 1)
    looked.clear()
    for seq in (2, 3, 4):  # both grow; the socket table is unchanged: F_LATE is not looked up again
        mapper.update(snapshot(seq, [(F_SERVER, (seq, 0), (100 * seq, 0)), (F_LATE, (0, seq), (0, 60 * seq))]))
    assert looked == [] and by_pid(mapper.result)[None]["rx_bytes"] == 240
    sockets.rows = [SERVER, conn(socket.SOCK_DGRAM, ("198.18.0.1", 6000), ("198.18.0.9", 7000), 400)]
    mapper.refresh()
    table = mapper.update(snapshot(5, [(F_SERVER, (5, 0), (500, 0)), (F_LATE, (0, 5), (0, 300))]))
    assert looked == [1]
    assert (by_pid(table)[400]["rx_bytes"], by_pid(table)[400]["rx_packets"]) == (60, 1)


def test_refreshes_that_explain_nothing_come_less_often_until_one_does() -> None:
    """Forwarded traffic or a flood of spoofed sources: each update brings a flow no socket explains. The
    socket table is read again at the first, then after gaps that double (0.05 s, 0.1 s, …, at most 5 s);
    a refresh that explains a flow brings the gaps back to their start."""
    now = [0.0]
    sockets = FakeSockets([SERVER])
    mapper = ProcessMapper(
        conns=sockets.conns,
        info=NAMES.get,
        local_addrs=lambda: ["198.18.0.1"],
        alive=lambda pid: True,
        refresh_s=1e9,  # only the refreshes unexplained flows ask for
        clock=lambda: now[0],
    )

    def updates(seqs: range, late: bool) -> list[float]:
        """An update every 0.25 s, each with a new transit flow (and F_LATE growing); when the table was read."""
        read_at = []
        for seq in seqs:
            now[0] = seq * 0.25
            before = sockets.reads
            rows = [(key("10.1.1.1", seq, "10.2.2.2", 80, TCP), (1, 0), (60, 0))]
            if late:
                rows.append((F_LATE, (0, seq - 60), (0, 60 * (seq - 60))))
            mapper.update(snapshot(seq, rows))
            if sockets.reads > before:
                read_at.append(now[0])
        return read_at

    assert updates(range(1, 61), late=False) == [0.25, 0.5, 0.75, 1.25, 2.25, 4.0, 7.25, 12.25]
    # A socket appears for F_LATE; the next refresh, 5 s after the last, explains it: the gaps start over.
    sockets.rows = [SERVER, conn(socket.SOCK_DGRAM, ("198.18.0.1", 6000), ("198.18.0.9", 7000), 400)]
    assert updates(range(61, 77), late=True) == [17.25, 17.5, 17.75, 18.0, 18.5]
    rows = by_pid(mapper.result)
    assert rows[400]["rx_packets"] == 8  # from the update at 17.25 s on; the 8 packets before went to "unknown"
    assert rows[None]["rx_packets"] == 76 + 8
