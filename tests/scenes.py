"""Scenes of real traffic between the lab's two namespaces: real servers in a, real clients in b.

A scene is a frozen dataclass with three steps:

* `setup(lab)`, before any capture starts: addresses, VLANs, qdiscs, firewall rules, servers;
* `run(lab)`: the traffic itself, bounded in count and in time, returning what the clients saw
  (an `Outcome`);
* `quiesce(lab)` (the same for every scene): waits until no TCP connection is left but listeners
  and TIME-WAIT, then pins every neighbour entry (ARP, IPv6 ND) so that no timer sends a probe
  later: a capture stopped after it ends on silence.

`play(lab, scene)` does the three. Each scene's `short()` is its CI variant (about 5 to 15 s),
and `gentler()` a lower-rate variant for a retry when a capture dropped packets (None when there
is none). Every process runs in a namespace through `lab.popen`, so `lab.destroy()` stops it
even when a test fails. Traffic only ever goes between the lab's two namespaces.

The programs the scenes run (servers, clients, scanner) are this module's own, stdlib only:
`python3 -m tests.scenes PROGRAM ...`; clients print one JSON line of what they saw.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import functools
import heapq
import http.client
import json
import os
import random
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from tests.lab import REPO_ROOT, Lab, LabError, wait_for_output

Outcome = dict[str, int]
PROGRAM = [sys.executable, "-m", "tests.scenes"]
EXTRA_V4 = "198.18.0.{}"  # extra client addresses on veth b: .10, .11, ...
ZONE = "scene.test"


# ---- running programs in the lab ---------------------------------------------------------------


def start(
    lab: Lab, side: str, args: Sequence[str], ready: str | None = None, stdin: bool = False
) -> subprocess.Popen[str]:
    """Start a command in `side`'s namespace (stdout piped, stdin too if asked); wait for `ready` on its
    stdout if given."""
    proc = lab.popen(
        side,
        list(args),
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    if ready is not None:
        wait_for_output(proc, ready, timeout=20, stream="stdout")
    return proc


def program(lab: Lab, side: str, name: str, *args: object, ready: bool = False) -> subprocess.Popen[str]:
    """Start one of this module's programs in `side`'s namespace (a server waits until it listens)."""
    return start(lab, side, [*PROGRAM, name, *map(str, args)], "ready" if ready else None)


def finish(procs: Sequence[subprocess.Popen[str]], timeout: float) -> list[str]:
    """Wait for every process (all within `timeout` s); each must exit 0. Their stdouts, in order."""
    deadline = time.monotonic() + timeout
    outs = []
    try:
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise LabError(f"{proc.args!r} still running after {timeout}s") from None
            if proc.returncode != 0:
                raise LabError(f"{proc.args!r} exited {proc.returncode}: {err.strip()[-2000:]}")
            outs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    return outs


def summed(outs: Sequence[str]) -> Outcome:
    """The sum of the clients' JSON summaries (the last line each printed)."""
    total: Counter[str] = Counter()
    for out in outs:
        total.update(json.loads(out.strip().splitlines()[-1]))
    return dict(total)


def add_addresses(lab: Lab, side: str, addrs: Sequence[str], dev: str | None = None) -> None:
    """Add addresses (with their prefix) to `side`'s veth (or `dev`), again harmlessly; IPv6 ones without DAD."""
    for addr in addrs:
        extra = ["nodad"] if ":" in addr else []
        lab.exec(side, ["ip", "addr", "replace", addr, "dev", dev or lab.veth(side), *extra])


def sysctl(lab: Lab, side: str, **values: int) -> list[str]:
    """Set sysctls in `side`'s namespace (names with '__' for '.'); the ones the kernel refused."""
    refused = []
    for key, value in values.items():
        name = key.replace("__", ".")
        if lab.exec(side, ["sysctl", "-qw", f"{name}={value}"], check=False).returncode != 0:
            refused.append(name)
    return refused


# ---- quiescing -------------------------------------------------------------------------------------


def busy_tcp(lab: Lab, side: str, idle: Sequence[str] = ("LISTEN", "TIME-WAIT")) -> list[str]:
    """`ss` lines of `side`'s TCP sockets in other states than `idle` (by default: all that may still send)."""
    out = lab.exec(side, ["ss", "-Htan"]).stdout
    return [line for line in out.splitlines() if line.split()[0] not in idle]


def wait_tcp(lab: Lab, idle: Sequence[str] = ("LISTEN", "TIME-WAIT"), timeout: float = 30.0) -> None:
    """Wait until every TCP socket of both namespaces is in one of the `idle` states."""
    deadline = time.monotonic() + timeout
    while busy := busy_tcp(lab, "a", idle) + busy_tcp(lab, "b", idle):
        if time.monotonic() > deadline:
            raise LabError(f"TCP connections not idle ({', '.join(idle)}) after {timeout}s: {busy[:10]}")
        time.sleep(0.05)


def pin_neighbours(lab: Lab, side: str) -> int:
    """Make `side`'s resolved neighbour entries permanent and drop unresolved ones; how many changed.

    A STALE entry in use goes to DELAY and probes 5 s later; a permanent one never does.
    """
    changed = 0
    for n in json.loads(lab.exec(side, ["ip", "-j", "neigh", "show"]).stdout or "[]"):
        states = set(n.get("state", []))
        if states & {"PERMANENT", "NOARP"}:
            continue
        if "lladdr" in n:
            cmd = ["ip", "neigh", "replace", n["dst"], "lladdr", n["lladdr"], "dev", n["dev"], "nud", "permanent"]
        else:
            cmd = ["ip", "neigh", "del", n["dst"], "dev", n["dev"]]
        lab.exec(side, cmd, check=False)
        changed += 1
    return changed


def quiesce(lab: Lab, timeout: float = 30.0) -> None:
    """Wait until no TCP connection is left open in either namespace, then pin the neighbour tables."""
    wait_tcp(lab, timeout=timeout)
    for side in ("a", "b"):
        pin_neighbours(lab, side)


# ---- scenes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """What every scene has: a name, how often retrotap should print a record while it runs."""

    name: ClassVar[str] = "scene"
    record_interval: ClassVar[float] = 1.0

    def setup(self, lab: Lab) -> None:
        """Prepare the lab before the captures start (addresses, servers, impairments)."""

    def run(self, lab: Lab) -> Outcome:
        """The traffic; returns what the clients saw."""
        raise NotImplementedError

    def gentler(self) -> Scene | None:
        """The same scene at a lower rate, for a retry after dropped packets (None: no lower one)."""
        return None


def play(lab: Lab, scene: Scene) -> Outcome:
    """Set the scene up, run it, quiesce."""
    scene.setup(lab)
    outcome = scene.run(lab)
    quiesce(lab)
    return outcome


# -- 1. web ------------------------------------------------------------------------------------------

WEB_FILES = {"tiny.txt": 5, "index.html": 600, "100k.bin": 100_000, "2m.bin": 2_000_000}
# (method, path, weight): small requests, downloads of each size, a 404 (the server closes after it).
WEB_MIX = [
    ("GET", "/tiny.txt", 30),
    ("GET", "/index.html", 15),
    ("HEAD", "/2m.bin", 5),
    ("GET", "/100k.bin", 25),
    ("GET", "/2m.bin", 12),
    ("GET", "/missing", 8),
]


@dataclass(frozen=True)
class Web(Scene):
    """An HTTP/1.1 file server (stdlib, keep-alive) in a on port 80 over IPv4 and IPv6; in b, keep-alive
    python clients and curl processes on several source addresses downloading files of 5 B to 2 MB,
    small requests, HEADs and 404s, all at once. The veth's offloads stay on: TCP frames of up to
    64 KB cross it."""

    name: ClassVar[str] = "web"
    sources: int = 4  # extra IPv4 client addresses 198.18.0.10...
    clients: int = 2  # python keep-alive clients per source address, `requests` each
    requests: int = 30
    curls: int = 1  # curl processes per source address, `curl_urls` URLs each (one connection)
    curl_urls: int = 8
    ipv6_clients: int = 1  # python clients over IPv6 (from b's IPv6 address)
    port: int = 80
    seed: int = 1
    timeout: float = 90.0

    @classmethod
    def short(cls) -> Web:
        """The CI variant: 4 sources, 1 python client and 1 curl each, one IPv6 client."""
        return cls(sources=4, clients=1, requests=12, curls=1, curl_urls=5, ipv6_clients=1)

    def gentler(self) -> Web | None:
        """Half the source addresses at once."""
        return replace(self, sources=self.sources // 2) if self.sources > 1 else None

    def setup(self, lab: Lab) -> None:
        """Files, client addresses on b, the server in a."""
        www = lab.tmpdir() / "www"
        www.mkdir(exist_ok=True)
        rng = random.Random(self.seed)
        for fname, size in WEB_FILES.items():
            (www / fname).write_bytes(rng.randbytes(size))
        add_addresses(lab, "b", [EXTRA_V4.format(10 + i) + "/24" for i in range(self.sources)])
        program(lab, "a", "http-server", lab.ip4_a, lab.ip6_a, self.port, www, ready=True)

    def run(self, lab: Lab) -> Outcome:
        """All clients at once; their responses, statuses and body bytes summed."""
        clients, curls = [], []
        for i in range(self.sources):
            src = EXTRA_V4.format(10 + i)
            for c in range(self.clients):
                seed = self.seed * 1000 + i * 10 + c
                clients.append(program(lab, "b", "http-client", lab.ip4_a, self.port, src, self.requests, seed))
            for c in range(self.curls):
                curls.append(start(lab, "b", self._curl(lab.ip4_a, src, self.seed * 1000 + i * 10 + 5 + c)))
        for c in range(self.ipv6_clients):
            clients.append(program(lab, "b", "http-client", lab.ip6_a, self.port, lab.ip6_b, self.requests, 77 + c))
        outs = finish(clients + curls, self.timeout)
        out = summed(outs[: len(clients)])
        codes = Counter(code for o in outs[len(clients) :] for code in o.split())
        out["responses"] = out.get("responses", 0) + sum(codes.values())
        for code, n in codes.items():
            out[f"status_{code}"] = out.get(f"status_{code}", 0) + n
        return out

    def _curl(self, host: str, src: str, seed: int) -> list[str]:
        rng = random.Random(seed)
        # curl reuses one connection for the URLs of one run, and opens another after the 404.
        paths = [
            p
            for _, p, _ in rng.choices(
                [m for m in WEB_MIX if m[0] == "GET"],
                weights=[m[2] for m in WEB_MIX if m[0] == "GET"],
                k=self.curl_urls,
            )
        ]
        args = ["curl", "-s", "--max-time", "30", "--interface", src, "-w", "%{http_code}\\n"]
        for p in paths:
            args += ["-o", "/dev/null", f"http://{host}:{self.port}{p}"]
        return args


class _QuietHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive (Content-Length on every response)

    def log_message(self, format: str, *args: Any) -> None:
        """No log lines."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        """Bind without HTTPServer's getfqdn (a name lookup would leave the lab)."""
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Server6(_Server):
    address_family = socket.AF_INET6


def http_server(addr4: str, addr6: str, port: int, directory: str) -> None:
    """Serve `directory` over HTTP/1.1 on addr4 and addr6 until killed."""
    handler = functools.partial(_QuietHandler, directory=directory)
    servers = [_Server((addr4, port), handler), _Server6((addr6, port), handler)]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    servers[0].serve_forever()


def http_client(host: str, port: int, source: str, requests: int, seed: int, timeout: float = 60.0) -> Outcome:
    """`requests` requests drawn from WEB_MIX on keep-alive connections (a new one when the server closes)."""
    rng = random.Random(seed)
    deadline = time.monotonic() + timeout
    conn: http.client.HTTPConnection | None = None
    status: Counter[str] = Counter()
    body = 0
    for _ in range(requests):
        if time.monotonic() > deadline:
            break
        method, path, _ = rng.choices(WEB_MIX, weights=[m[2] for m in WEB_MIX])[0]
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=10, source_address=(source, 0))
        conn.request(method, path)
        resp = conn.getresponse()
        body += len(resp.read())
        status[f"status_{resp.status}"] += 1
        if resp.will_close:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return {"responses": sum(status.values()), "body_bytes": body, **status}


# -- 2. dns ------------------------------------------------------------------------------------------


def dns_query(qid: int, name: str, qtype: int = 1) -> bytes:
    """A DNS query (RD set) for `name`."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def dns_parse(msg: bytes) -> tuple[int, int, str, int, int]:
    """(id, flags, name, qtype, end of the question) of a DNS message."""
    qid, flags = struct.unpack_from("!HH", msg)
    i, labels = 12, []
    while msg[i]:
        labels.append(msg[i + 1 : i + 1 + msg[i]].decode())
        i += 1 + msg[i]
    qtype = struct.unpack_from("!H", msg, i + 1)[0]
    return qid, flags, ".".join(labels), qtype, i + 5


def dns_delay(name: str, qid: int) -> float | None:
    """How long the scene's server waits before answering (None: never). Names starting with 'lost'
    are never answered, 'slow' ones after 400 ms (the client re-sends at 250 ms), others 0-50 ms."""
    if name.startswith("lost"):
        return None
    if name.startswith("slow"):
        return 0.4
    return (zlib.crc32(f"{name}/{qid}".encode()) % 51) / 1000


def dns_answer(msg: bytes) -> bytes:
    """The answer to a query: A records under ZONE, an empty NOERROR for other types there, NXDOMAIN
    outside it (additional records of the query, e.g. dig's EDNS, are ignored)."""
    qid, flags, name, qtype, end = dns_parse(msg)
    in_zone = name == ZONE or name.endswith("." + ZONE)
    rr = b""
    if in_zone and qtype == 1:
        addr = zlib.crc32(name.encode()).to_bytes(4, "big")
        rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + bytes([192, 0, 2, addr[3]])
    head = struct.pack("!HHHHHH", qid, 0x8400 | (flags & 0x0100) | (0 if in_zone else 3), 1, 1 if rr else 0, 0, 0)
    return head + msg[12:end] + rr


def dns_server(addrs: Sequence[str], port: int) -> None:
    """Answer DNS over UDP and TCP on `addrs` until killed, each answer after dns_delay."""
    due: list[tuple[float, int, socket.socket, bytes, Any]] = []
    cond = threading.Condition()
    seq = 0

    def sender() -> None:
        while True:
            with cond:
                while not due or due[0][0] > time.monotonic():
                    cond.wait(None if not due else due[0][0] - time.monotonic())
                _, _, sock, data, peer = heapq.heappop(due)
            sock.sendto(data, peer)

    def udp(sock: socket.socket) -> None:
        nonlocal seq
        while True:
            msg, peer = sock.recvfrom(4096)
            qid, _, name, _, _ = dns_parse(msg)
            delay = dns_delay(name, qid)
            if delay is not None:
                with cond:
                    seq += 1
                    heapq.heappush(due, (time.monotonic() + delay, seq, sock, dns_answer(msg), peer))
                    cond.notify()

    def tcp_conn(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            while True:
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                msg = _recv_exact(conn, struct.unpack("!H", head)[0])
                if msg is None:
                    return
                qid, _, name, _, _ = dns_parse(msg)
                delay = dns_delay(name, qid)
                if delay is None:
                    continue
                time.sleep(delay)
                answer = dns_answer(msg)
                conn.sendall(struct.pack("!H", len(answer)) + answer)

    def tcp(sock: socket.socket) -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=tcp_conn, args=(conn,), daemon=True).start()

    threading.Thread(target=sender, daemon=True).start()
    for addr in addrs:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        u = socket.socket(family, socket.SOCK_DGRAM)
        u.bind((addr, port))
        t = socket.socket(family, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((addr, port))
        t.listen(64)
        threading.Thread(target=udp, args=(u,), daemon=True).start()
        threading.Thread(target=tcp, args=(t,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def dns_names(rng: random.Random, n: int, lost_every: int, slow_every: int) -> list[tuple[str, int]]:
    """`n` (name, qtype): every `lost_every`-th never answered, every `slow_every`-th slow, some outside
    the zone (NXDOMAIN), some AAAA (empty answers)."""
    out = []
    for i in range(n):
        label = f"h{rng.randrange(10**6)}"
        if lost_every and i % lost_every == lost_every - 1:
            out.append((f"lost-{label}.{ZONE}", 1))
        elif slow_every and i % slow_every == slow_every - 1:
            out.append((f"slow-{label}.{ZONE}", 1))
        elif i % 7 == 3:
            out.append((f"{label}.elsewhere.test", 1))
        else:
            out.append((f"{label}.{ZONE}", 28 if i % 5 == 4 else 1))
    return out


def dns_client(
    server: str, source: str, queries: int, tcp: int, seed: int, lost_every: int, slow_every: int
) -> Outcome:
    """`queries` UDP queries one at a time (a query unanswered after 250 ms is sent again once, same id),
    then `tcp` queries over TCP, three per connection."""
    rng = random.Random(seed)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    out: Counter[str] = Counter()
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        for name, qtype in dns_names(rng, queries, lost_every, slow_every):
            qid = rng.randrange(1 << 16)
            query = dns_query(qid, name, qtype)
            s.sendto(query, (server, 53))
            out["udp_sent"] += 1
            answered = _await_answer(s, qid, 0.25)
            if not answered:
                s.sendto(query, (server, 53))
                out["udp_resent"] += 1
                answered = _await_answer(s, qid, 0.3 if name.startswith("lost") else 1.0)
            out["udp_answered" if answered else "udp_unanswered"] += 1
    names = dns_names(rng, tcp, 0, 0)
    for at in range(0, tcp, 3):
        with socket.create_connection((server, 53), timeout=5, source_address=(source, 0)) as c:
            for name, qtype in names[at : at + 3]:
                qid = rng.randrange(1 << 16)
                query = dns_query(qid, name, qtype)
                c.sendall(struct.pack("!H", len(query)) + query)
                head = _recv_exact(c, 2)
                answer = _recv_exact(c, struct.unpack("!H", head)[0]) if head else None
                assert answer is not None and dns_parse(answer)[0] == qid
                out["tcp_answered"] += 1
    return dict(out)


def _await_answer(s: socket.socket, qid: int, timeout: float) -> bool:
    """Read answers until one has `qid` (late answers to earlier queries are skipped) or `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            msg = s.recv(4096)
        except TimeoutError:
            return False
        if dns_parse(msg)[0] == qid:
            return True
    return False


@dataclass(frozen=True)
class Dns(Scene):
    """A DNS server (stdlib, UDP and TCP, IPv4 and IPv6) in a answering A queries under ZONE after 0-50 ms,
    slow names after 400 ms (re-sent by the client), 'lost' names never, NXDOMAIN elsewhere; python
    clients on several source addresses and one over IPv6, some queries over TCP, and dig."""

    name: ClassVar[str] = "dns"
    clients: int = 4  # IPv4 clients, each on its own source address
    queries: int = 150  # UDP queries per client
    tcp: int = 9  # TCP queries per client
    ipv6_clients: int = 1
    lost_every: int = 15
    slow_every: int = 40
    digs: int = 4  # dig runs (half of them over TCP)
    seed: int = 2
    timeout: float = 120.0

    @classmethod
    def short(cls) -> Dns:
        """The CI variant: 4 + 1 clients of 60 UDP and 6 TCP queries, 4 digs."""
        return cls(clients=4, queries=60, tcp=6, ipv6_clients=1, digs=4)

    def gentler(self) -> Dns | None:
        """Half the clients at once."""
        return replace(self, clients=self.clients // 2) if self.clients > 1 else None

    def setup(self, lab: Lab) -> None:
        """Client addresses on b, the server in a."""
        add_addresses(lab, "b", [EXTRA_V4.format(10 + i) + "/24" for i in range(self.clients)])
        program(lab, "a", "dns-server", 53, lab.ip4_a, lab.ip6_a, ready=True)

    def run(self, lab: Lab) -> Outcome:
        """Every client at once, then the digs; counts summed."""
        procs = []
        sources = [(lab.ip4_a, EXTRA_V4.format(10 + i)) for i in range(self.clients)]
        sources += [(lab.ip6_a, lab.ip6_b)] * self.ipv6_clients
        for i, (server, src) in enumerate(sources):
            args = (server, src, self.queries, self.tcp, self.seed * 100 + i, self.lost_every, self.slow_every)
            procs.append(program(lab, "b", "dns-client", *args))
        out = summed(finish(procs, self.timeout))
        digs = []
        for i in range(self.digs):
            over = ["+tcp"] if i % 2 else ["+notcp"]
            digs.append(
                start(
                    lab,
                    "b",
                    ["dig", f"@{lab.ip4_a}", "-b", lab.ip4_b, "+tries=1", "+time=2", *over, f"dig{i}.{ZONE}", "A"],
                )
            )
        answers = finish(digs, 30)
        out["dig_answered"] = sum("status: NOERROR" in a for a in answers)
        out["dig_tcp"] = self.digs // 2
        return out


# -- 3. lossy ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lossy(Scene):
    """Bulk TCP transfers from b to a sink in a through an impaired path (netem is not always there; this
    uses what Debian's kernels and this one have: nftables and HTB):

    * loss after the capture point: nft on a's ingress (which runs after packet taps) drops `loss_permille`
      of the segments that carry data, and on b's ingress the same share of a's ACKs (never a SYN, FIN or
      RST), so the capture sees segments and ACKs that never arrive, then their retransmissions;
    * reordering: nft on b's output sends `reorder_percent` of the data segments, in runs of three
      (numgen inc), to a slow HTB class on b's veth, so later segments overtake them by a few milliseconds;
    * zero windows: the first connection goes to a sink port that stops reading for `pause` s after its
      first `pause_after` bytes, with a small receive buffer;
    * `preconnected` of the other connections are opened in `setup`, before the captures start (a capture
      that begins mid-connection: no handshake, so tshark's out-of-order window is 3 ms, not the RTT).
    """

    name: ClassVar[str] = "lossy"
    connections: int = 6
    preconnected: int = 3
    megabytes: int = 32  # per connection
    loss_permille: int = 10
    reorder_percent: int = 3
    slow_rate: str = "200mbit"
    pause_after: int = 1_000_000
    pause: float = 0.5
    port: int = 5201
    timeout: float = 120.0
    running: dict[str, subprocess.Popen[str]] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def short(cls) -> Lossy:
        """The CI variant: 4 connections of 16 MB: one to the slow reader, two opened before the captures."""
        return cls(connections=4, preconnected=2, megabytes=16)

    def gentler(self) -> Lossy | None:
        """One connection fewer at a time."""
        if self.connections <= 1:
            return None
        fewer = self.connections - 1
        return replace(self, connections=fewer, preconnected=min(self.preconnected, fewer - 1))

    def setup(self, lab: Lab) -> None:
        """The sink in a, the impairments on both sides, the sender in b with its early connections open."""
        program(lab, "a", "sink", lab.ip4_a, self.port, self.port + 1, self.pause_after, self.pause, ready=True)
        ports = f"{{ {self.port}, {self.port + 1} }}"
        lose = f"numgen random mod 1000 < {self.loss_permille} counter drop"
        lab.exec_a(
            ["nft", "-f", "-"],
            input=(
                "table netdev lossy {\n"
                f'  chain ingress {{ type filter hook ingress device "{lab.veth_a}" priority 0;\n'
                f"    tcp dport {ports} ip length > 100 {lose}\n  }}\n}}\n"
            ),
        )
        lab.exec_b(
            ["nft", "-f", "-"],
            input=(
                "table netdev lossy {\n"
                f'  chain ingress {{ type filter hook ingress device "{lab.veth_b}" priority 0;\n'
                f"    tcp sport {ports} tcp flags & (syn | fin | rst) == 0 {lose}\n  }}\n}}\n"
                # The class HTB puts a packet in is its priority, set here (netdev egress is only 5.16+).
                "table inet lossy {\n  chain output { type filter hook output priority 0;\n"
                f"    tcp dport {ports} numgen inc mod 100 < {self.reorder_percent} meta priority set 1:20\n  }}\n}}\n"
            ),
        )
        tc = ["tc", "-n", lab.ns_b]
        htb = [*tc, "class", "add", "dev", lab.veth_b, "parent", "1:", "classid"]
        _run_all(
            [
                [*tc, "qdisc", "add", "dev", lab.veth_b, "root", "handle", "1:", "htb", "default", "10"],
                [*htb, "1:10", "htb", "rate", "10gbit"],
                [*htb, "1:20", "htb", "rate", self.slow_rate, "ceil", self.slow_rate],
            ]
        )
        self.running["source"] = self.sender(lab)
        # Nothing may still be on its way when the captures start (a handshake ACK lost, its SYN-ACK resent).
        wait_tcp(lab, ("LISTEN", "TIME-WAIT", "ESTAB"))

    def sender(self, lab: Lab) -> subprocess.Popen[str]:
        """The sender in b, its early connections open, waiting for a line on stdin."""
        # The slow reader first, then the early connections (suffix '+'), then the others.
        specs = [str(self.port + 1)] + [
            f"{self.port}{'+' if i < self.preconnected else ''}" for i in range(self.connections - 1)
        ]
        size = str(self.megabytes * 1_000_000)
        return start(lab, "b", [*PROGRAM, "source", lab.ip4_a, size, *specs], "ready", stdin=True)

    def run(self, lab: Lab) -> Outcome:
        """Go: every connection at once, `megabytes` each; what the sink acknowledged, summed. (A run after
        the first in the same lab opens its early connections itself.)"""
        proc = self.running.pop("source", None) or self.sender(lab)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()  # communicate() closes it
        return summed(finish([proc], self.timeout))


def _run_all(cmds: Sequence[Sequence[str]]) -> None:
    for cmd in cmds:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise LabError(f"{' '.join(cmd)}: {done.stderr.strip()}")


def sink(addr: str, port: int, slow_port: int, pause_after: int, pause: float) -> None:
    """Read every connection to EOF, answer 'ok <bytes>'; on `slow_port` (small receive buffer) stop
    reading for `pause` s after `pause_after` bytes."""

    def serve(conn: socket.socket, slow: bool) -> None:
        with conn:
            conn.settimeout(60)
            got, paused = 0, not slow
            while chunk := conn.recv(1 << 16):
                got += len(chunk)
                if not paused and got >= pause_after:
                    paused = True
                    time.sleep(pause)
            conn.sendall(f"ok {got}\n".encode())

    def accept(sock: socket.socket, slow: bool) -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=serve, args=(conn, slow), daemon=True).start()

    for p, slow in ((port, False), (slow_port, True)):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if slow:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.bind((addr, p))
        s.listen(16)
        threading.Thread(target=accept, args=(s, slow), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def source(dst: str, size: int, specs: Sequence[str]) -> Outcome:
    """Open the connections of `specs` ending in '+' (a port each), print 'ready', wait for a line on stdin,
    then open the others and send `size` bytes on every connection at once; what the sink received."""
    block = random.Random(size).randbytes(1 << 18)
    early = {i: socket.create_connection((dst, int(p[:-1])), timeout=60) for i, p in enumerate(specs) if p[-1] == "+"}
    print("ready", flush=True)
    sys.stdin.readline()
    got: list[int] = []

    def one(i: int) -> None:
        with early.pop(i, None) or socket.create_connection((dst, int(specs[i])), timeout=60) as c:
            left = size
            while left > 0:
                n = min(left, len(block))
                c.sendall(block[:n])
                left -= n
            c.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := c.recv(100):
                reply += chunk
            got.append(int(reply.split()[1]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    return {"connections": len(specs), "delivered": sum(got), "complete": sum(g == size for g in got)}


# -- 4. flood ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flood(Scene):
    """trafgen in b: `packets` UDP datagrams to a's address, each from a random source address and port
    to a random port (drnd()), so nearly every packet is a new flow; as fast as trafgen goes, or `rate`
    packets a second."""

    name: ClassVar[str] = "flood"
    record_interval: ClassVar[float] = 30.0  # a record of every flow takes seconds: only the last one
    packets: int = 100_000
    rate: int | None = None
    payload: int = 18

    @classmethod
    def short(cls) -> Flood:
        """The CI variant: 20,000 packets."""
        return cls(packets=20_000)

    def gentler(self) -> Flood | None:
        """50,000 packets a second, then 10,000."""
        if self.rate is None or self.rate > 50_000:
            return replace(self, rate=50_000)
        return replace(self, rate=10_000) if self.rate > 10_000 else None

    def run(self, lab: Lab) -> Outcome:
        """One trafgen run on one CPU, bounded by -n (and a timeout of twice the time the rate needs)."""
        conf = (
            f"{{ eth(da={lab.mac_a}, sa={lab.mac_b}), ipv4(da={lab.ip4_a}, sa=drnd(), ttl=64), "
            f"udp(sp=drnd(), dp=drnd()), fill(0x41, {self.payload}) }}"
        )
        rate = ["-b", f"{self.rate}pps"] if self.rate else []
        timeout = 30 + (2 * self.packets / self.rate if self.rate else 0)
        done = lab.exec_b(
            ["trafgen", "-o", lab.veth_b, "-P", "1", "-n", str(self.packets), "-q", *rate, conf], timeout=timeout
        )
        sent = [int(line.split()[0]) for line in done.stdout.splitlines() if "packets outgoing" in line]
        return {"sent": sum(sent)}


# -- 5. scan ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scan(Scene):
    """One host in b probes a's closed ports: TCP connect() to ports 1..tcp_ports (each a SYN answered by
    a RST), UDP datagrams to ports 1..udp_ports (each answered by an ICMP port unreachable), the same over
    IPv6 for the first tcp6_ports / udp6_ports; `window` probes in flight. a's per-destination ICMP rate
    limits are lifted; the host-wide one (1000 a second, bursts of 50) is per namespace only on recent
    kernels, so UDP probes go at `udp_rate` a second, below it."""

    name: ClassVar[str] = "scan"
    tcp_ports: int = 10_000
    udp_ports: int = 2_000
    tcp6_ports: int = 2_000
    udp6_ports: int = 500
    window: int = 128
    udp_rate: int = 500

    @classmethod
    def short(cls) -> Scan:
        """The CI variant: 3,000 TCP and 600 UDP ports, 500 and 200 over IPv6."""
        return cls(tcp_ports=3000, udp_ports=600, tcp6_ports=500, udp6_ports=200)

    def gentler(self) -> Scan | None:
        """A quarter as many probes in flight, UDP at half the rate."""
        return replace(self, window=self.window // 4, udp_rate=self.udp_rate // 2) if self.window >= 8 else None

    def setup(self, lab: Lab) -> None:
        """No ICMP rate limits in a (what the kernel refuses to change is noted in `lab.notes`)."""
        lab.notes.extend(
            f"scan: sysctl {name} refused"
            for name in sysctl(
                lab,
                "a",
                net__ipv4__icmp_ratelimit=0,
                net__ipv6__icmp__ratelimit=0,
                net__ipv4__icmp_msgs_per_sec=1_000_000,
                net__ipv4__icmp_msgs_burst=1_000_000,
            )
        )

    def run(self, lab: Lab) -> Outcome:
        """The four scans one after the other, from b's addresses."""
        out: Counter[str] = Counter()
        for proto, target, src, n in (
            ("tcp", lab.ip4_a, lab.ip4_b, self.tcp_ports),
            ("udp", lab.ip4_a, lab.ip4_b, self.udp_ports),
            ("tcp", lab.ip6_a, lab.ip6_b, self.tcp6_ports),
            ("udp", lab.ip6_a, lab.ip6_b, self.udp6_ports),
        ):
            v = "6" if ":" in target else ""
            rate = self.udp_rate if proto == "udp" else 0
            res = summed(finish([program(lab, "b", "scan", proto, target, src, n, self.window, rate)], 120))
            out.update({f"{proto}{v}_{k}": val for k, val in res.items()})
        return dict(out)


def scan(proto: str, target: str, src: str, ports: int, window: int, rate: float = 0, timeout: float = 2.0) -> Outcome:
    """Probe ports 1..ports of `target` (`window` at a time, at most `rate` a second if given): TCP connect()
    or a UDP datagram on a connected socket; count refused (RST / ICMP port unreachable), open and silent
    ports."""
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sel = selectors.DefaultSelector()
    out: Counter[str] = Counter()
    todo = list(range(1, ports + 1))
    started: dict[socket.socket, float] = {}
    deadline = time.monotonic() + 60
    next_at = time.monotonic()

    def close(s: socket.socket, result: str) -> None:
        sel.unregister(s)
        started.pop(s)
        s.close()
        out[result] += 1

    while (todo or started) and time.monotonic() < deadline:
        while todo and len(started) < window and time.monotonic() >= next_at:
            next_at += 1 / rate if rate else 0
            s = socket.socket(family, kind)
            s.setblocking(False)
            s.bind((src, 0))
            port = todo.pop(0)
            if proto == "tcp":
                err = s.connect_ex((target, port))
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    out["refused" if err == errno.ECONNREFUSED else "error"] += 1
                    continue
                sel.register(s, selectors.EVENT_WRITE)
            else:
                s.connect((target, port))
                s.send(b"probe")
                sel.register(s, selectors.EVENT_READ)
            started[s] = time.monotonic()
        for key, _ in sel.select(min(0.05, max(0.0, next_at - time.monotonic()))):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            if proto == "tcp":
                err = ready.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                close(ready, "open" if err == 0 else "refused" if err == errno.ECONNREFUSED else "error")
            else:
                try:
                    ready.recv(100)
                    close(ready, "open")
                except ConnectionRefusedError:
                    close(ready, "refused")
        now = time.monotonic()
        for s in [s for s, t in started.items() if now - t > timeout]:
            close(s, "silent")
    for s in list(started):
        close(s, "silent")
    return {"probes": ports, **out}


# -- 6. mixed: VLAN, IPv6, ICMP ----------------------------------------------------------------------


@dataclass(frozen=True)
class Mixed(Scene):
    """A VLAN subinterface on both veths with IPv4 and IPv6 addresses; in b, pings to a over IPv4, IPv6
    and the VLAN (both), fragmented 3000-byte pings over IPv4 and IPv6, and UDP over IPv6 (on the veth and
    the VLAN) to an echo server in a. Neighbours are resolved during the scene (ARP, IPv6 ND)."""

    name: ClassVar[str] = "mixed"
    vlan: int = 42
    pings: int = 100
    interval: float = 0.01
    big_pings: int = 4
    udp6: int = 100  # datagrams per echo address
    port: int = 7

    @classmethod
    def short(cls) -> Mixed:
        """The CI variant: 60 pings per address, 3 big ones, 60 datagrams per address."""
        return cls(pings=60, big_pings=3, udp6=60)

    def gentler(self) -> Mixed | None:
        """Pings five times slower."""
        return replace(self, interval=self.interval * 5) if self.interval < 0.2 else None

    def vlan_addrs(self, side: str) -> tuple[str, str]:
        """(IPv4, IPv6) of `side` on the VLAN."""
        n = 1 if side == "a" else 2
        return f"198.18.{self.vlan}.{n}", f"fd00:7274:{self.vlan}::{n}"

    def setup(self, lab: Lab) -> None:
        """The VLAN subinterfaces and their addresses, the echo server in a.

        Without the kernel's 802.1Q module (`type vlan` unknown) each side gets a tap device with the
        veth's MAC address and a tagger (`vlan-tagger`) that moves frames between the tap and the veth,
        inserting the tag on the way out and taking frames of this VLAN id on the way in, as the kernel's
        VLAN device does: the veths carry the same 802.1Q frames."""
        for side in ("a", "b"):
            dev = f"{lab.veth(side)}.{self.vlan}"[:15]
            made = lab.exec(
                side,
                ["ip", "link", "add", "link", lab.veth(side), "name", dev, "type", "vlan", "id", str(self.vlan)],
                check=False,
            )
            if made.returncode != 0:
                dev = f"vl{self.vlan}"
                program(lab, side, "vlan-tagger", lab.veth(side), dev, self.vlan, ready=True)
                mac = lab.mac_a if side == "a" else lab.mac_b
                lab.exec(side, ["ip", "link", "set", dev, "address", mac])
                lab.notes.append(f"mixed: no 802.1Q module ({made.stderr.strip()}): VLAN {self.vlan} by a tap tagger")
            v4, v6 = self.vlan_addrs(side)
            add_addresses(lab, side, [f"{v4}/24", f"{v6}/64"], dev=dev)
            lab.exec(side, ["ip", "link", "set", dev, "up"])
        program(lab, "a", "udp-echo", self.port, lab.ip6_a, self.vlan_addrs("a")[1], ready=True)

    def run(self, lab: Lab) -> Outcome:
        """Everything at once; replies received per kind."""
        v4, v6 = self.vlan_addrs("a")
        pings = [
            start(lab, "b", ["ping", "-n", "-q", "-c", str(self.pings), "-i", str(self.interval), "-W", "2", addr])
            for addr in (lab.ip4_a, lab.ip6_a, v4, v6)
        ]
        pings += [
            start(
                lab, "b", ["ping", "-n", "-q", "-c", str(self.big_pings), "-i", "0.05", "-s", "3000", "-W", "2", addr]
            )
            for addr in (lab.ip4_a, lab.ip6_a)
        ]
        udp = [program(lab, "b", "udp-client", addr, self.port, self.udp6) for addr in (lab.ip6_a, v6)]
        outs = finish(pings + udp, 60)
        replies = [int(o.split(" received")[0].split()[-1]) for o in outs[: len(pings)]]
        out = summed(outs[len(pings) :])
        out.update({"ping_sent": self.pings * 4 + self.big_pings * 2, "ping_replies": sum(replies)})
        return out


def udp_echo(port: int, addrs: Sequence[str]) -> None:
    """Echo every datagram on `addrs` until killed."""

    def echo(s: socket.socket) -> None:
        while True:
            data, peer = s.recvfrom(65536)
            s.sendto(data, peer)

    for addr in addrs:
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, port))
        threading.Thread(target=echo, args=(s,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def udp_client(dst: str, port: int, count: int) -> Outcome:
    """`count` datagrams of 1 to 1400 bytes, each waiting up to 1 s for its echo."""
    sizes = [1, 64, 300, 700, 1000, 1400]
    out: Counter[str] = Counter()
    with socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((dst, port))
        s.settimeout(1)
        for i in range(count):
            s.send(bytes([i % 256]) * sizes[i % len(sizes)])
            out["udp_sent"] += 1
            try:
                s.recv(65536)
                out["udp_echoed"] += 1
            except TimeoutError:
                pass
    return dict(out)


TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
ETH_P_ALL, ETH_P_8021Q = 0x0003, 0x8100
SOL_PACKET, PACKET_AUXDATA, PACKET_OUTGOING = 263, 8, 4
TP_STATUS_VLAN_VALID = 0x10
AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata


def vlan_tagger(veth: str, tap: str, vid: int) -> None:
    """Bridge a new tap device `tap` to VLAN `vid` on `veth` until killed: frames from the tap leave
    `veth` with an 802.1Q tag; frames of VLAN `vid` arriving on `veth` (tag stripped by the kernel or
    inline) go to the tap untagged."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tap.encode(), IFF_TAP | IFF_NO_PI))
    ps = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    ps.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    ps.bind((veth, ETH_P_ALL))
    tag = struct.pack("!HH", ETH_P_8021Q, vid)
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ, "tap")
    sel.register(ps, selectors.EVENT_READ, "veth")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == "tap":
                frame = os.read(fd, 65536)
                ps.send(frame[:12] + tag + frame[12:])
                continue
            frame, anc, _, addr = ps.recvmsg(65536, socket.CMSG_SPACE(AUXDATA.size))
            if addr[2] == PACKET_OUTGOING:
                continue
            tci = None
            for level, kind, data in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    status, _, _, _, _, vlan_tci, _ = AUXDATA.unpack(data[: AUXDATA.size])
                    if status & TP_STATUS_VLAN_VALID:
                        tci = vlan_tci
            if tci is None and frame[12:14] == tag[:2]:
                tci, frame = struct.unpack("!H", frame[14:16])[0], frame[:12] + frame[16:]
            if tci is not None and tci & 0xFFF == vid:
                os.write(fd, frame)


# ---- the programs' command line ----------------------------------------------------------------------

SCENES: dict[str, Callable[[], Scene]] = {
    "web": Web.short,
    "dns": Dns.short,
    "lossy": Lossy.short,
    "flood": Flood.short,
    "scan": Scan.short,
    "mixed": Mixed.short,
}


def main(argv: Sequence[str] | None = None) -> None:
    """`python3 -m tests.scenes PROGRAM ARGS`: the servers and clients the scenes run."""
    p = argparse.ArgumentParser(prog="tests.scenes")
    sub = p.add_subparsers(dest="program", required=True)
    sub.add_parser("http-server").add_argument("args", nargs=4)
    sub.add_parser("http-client").add_argument("args", nargs=5)
    sub.add_parser("dns-server").add_argument("args", nargs="+")
    sub.add_parser("dns-client").add_argument("args", nargs=7)
    sub.add_parser("sink").add_argument("args", nargs=5)
    sub.add_parser("source").add_argument("args", nargs="+")
    sub.add_parser("scan").add_argument("args", nargs=6)
    sub.add_parser("udp-echo").add_argument("args", nargs="+")
    sub.add_parser("udp-client").add_argument("args", nargs=3)
    sub.add_parser("vlan-tagger").add_argument("args", nargs=3)
    ns = p.parse_args(argv)
    a: list[str] = ns.args
    result: Outcome | None = None
    if ns.program == "http-server":
        http_server(a[0], a[1], int(a[2]), a[3])
    elif ns.program == "http-client":
        result = http_client(a[0], int(a[1]), a[2], int(a[3]), int(a[4]))
    elif ns.program == "dns-server":
        dns_server(a[1:], int(a[0]))
    elif ns.program == "dns-client":
        result = dns_client(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]), int(a[6]))
    elif ns.program == "sink":
        sink(a[0], int(a[1]), int(a[2]), int(a[3]), float(a[4]))
    elif ns.program == "source":
        result = source(a[0], int(a[1]), a[2:])
    elif ns.program == "scan":
        result = scan(a[0], a[1], a[2], int(a[3]), int(a[4]), float(a[5]))
    elif ns.program == "udp-echo":
        udp_echo(int(a[0]), a[1:])
    elif ns.program == "udp-client":
        result = udp_client(a[0], int(a[1]), int(a[2]))
    elif ns.program == "vlan-tagger":
        vlan_tagger(a[0], a[1], int(a[2]))
    if result is not None:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
