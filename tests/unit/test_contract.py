"""The snapshot contract: key layouts as wide as the tables' keys, keys counted and read back by name,
one set of address helpers, the published types reachable from their old modules."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from capture_backend import contract, engine
from capture_backend.analysis import decode, latency, processes
from capture_backend.analysis.latency import Latency
from capture_backend.analysis.tables import CounterLimits, Counters
from capture_backend.capture import netlink
from capture_backend.contract import (
    FLOW_KEY,
    HOST_KEY,
    KIND_DNS,
    PAIR_KEY,
    PORT_KEY,
    SERVER_KEY,
    SERVICE_KEY,
    V4_MAPPED,
    TableSnapshot,
    address_bytes,
    address_key,
    address_text,
    is_v4,
    key_records,
    match_rows,
    network_key,
    pack_keys,
)
from capture_backend.engine import Counting
from capture_backend.output import report
from tests.pcapgen import T0_NS, Frame, block_of_frames, ether

MS = 1_000_000
V4_CLIENT, V4_SERVER = "10.9.0.2", "192.0.2.80"
V6_CLIENT, V6_SERVER = "2001:db8:9::2", "2001:db8:9::53"


def frame(pkt: object, t_ms: float) -> Frame:
    raw = bytes(pkt)  # type: ignore[call-overload]
    return Frame(raw, T0_NS + int(t_ms * MS), len(raw))


def traffic() -> list[Frame]:
    """A TCP conversation over IPv4 (client port 40000 to 443) and a DNS exchange over IPv6 (5353 to 53)."""
    v4 = IP(src=V4_CLIENT, dst=V4_SERVER)
    back4 = IP(src=V4_SERVER, dst=V4_CLIENT)
    v6 = IPv6(src=V6_CLIENT, dst=V6_SERVER)
    back6 = IPv6(src=V6_SERVER, dst=V6_CLIENT)
    return [
        frame(ether(V4_CLIENT, V4_SERVER) / v4 / TCP(sport=40000, dport=443, flags="S", seq=1), 0),
        frame(ether(V4_SERVER, V4_CLIENT) / back4 / TCP(sport=443, dport=40000, flags="SA", seq=7, ack=2), 1),
        frame(ether(V6_CLIENT, V6_SERVER) / v6 / UDP(sport=5353, dport=53) / DNS(id=7, qd=DNSQR(qname="a.example")), 2),
        frame(
            ether(V6_SERVER, V6_CLIENT)
            / back6
            / UDP(sport=53, dport=5353)
            / DNS(id=7, qr=1, qd=DNSQR(qname="a.example"), an=DNSRR(rrname="a.example", rdata="192.0.2.9")),
            5,
        ),
    ]


def counted() -> contract.Snapshot:
    counting = Counting(CounterLimits(), False, "", lambda: 0.0)
    counting.add(block_of_frames(traffic()))
    return counting.freeze((), 0.0, {})


def test_each_layout_is_as_wide_as_its_tables_keys() -> None:
    c, lat = Counters(), Latency()
    widths = {
        FLOW_KEY: c.flows.width,
        PAIR_KEY: c.pairs.width,
        HOST_KEY: c.hosts.width,
        PORT_KEY: c.ports.width,
        SERVER_KEY: lat.servers.width,
        SERVICE_KEY: lat.services.width,
    }
    assert {layout.itemsize: width for layout, width in widths.items()} == {w: w for w in widths.values()}
    assert [layout.itemsize for layout in widths] == [40, 32, 16, 4, 20, 4]


def test_published_tables_carry_their_layout() -> None:
    snap = counted()
    assert (snap.flows.layout, snap.pairs.layout, snap.hosts.layout, snap.ports.layout) == (
        FLOW_KEY,
        PAIR_KEY,
        HOST_KEY,
        PORT_KEY,
    )
    assert (snap.latency.servers.layout, snap.latency.services.layout) == (SERVER_KEY, SERVICE_KEY)
    empty = contract.EMPTY_LATENCY
    assert (empty.servers.layout, empty.services.layout) == (SERVER_KEY, SERVICE_KEY)
    assert set(empty.servers.cols) == set(snap.latency.servers.cols) == set(contract.LATENCY_TABLE_COLUMNS)


def test_keys_counted_read_back_by_name() -> None:
    snap = counted()
    f = snap.flows.fields
    flows = {
        (int(p), frozenset({(address_text(a), int(ap)), (address_text(b), int(bp))}))
        for p, a, ap, b, bp in zip(f["proto"], f["a"], f["aport"], f["b"], f["bport"], strict=True)
    }
    assert flows == {
        (6, frozenset({(V4_CLIENT, 40000), (V4_SERVER, 443)})),
        (17, frozenset({(V6_CLIENT, 5353), (V6_SERVER, 53)})),
    }
    assert {bytes(p) for p in f["pad"]} == {bytes(3)}
    i = int(np.flatnonzero(f["proto"] == 6)[0])
    k = snap.flows.key(i)
    assert {k["a"].tobytes(), k["b"].tobytes()} == {address_bytes(V4_CLIENT), address_bytes(V4_SERVER)}
    assert snap.flows.key_bytes(i) == snap.flows.keys[i].tobytes()
    assert is_v4(f["a"]).tolist() == [int(p) == 6 for p in f["proto"]]

    pairs = {frozenset(map(address_text, (a, b))) for a, b in zip(*(snap.pairs.fields[n] for n in "ab"), strict=True)}
    assert pairs == {frozenset({V4_CLIENT, V4_SERVER}), frozenset({V6_CLIENT, V6_SERVER})}
    hosts = {address_text(a) for a in snap.hosts.fields["addr"]}
    assert hosts == {V4_CLIENT, V4_SERVER, V6_CLIENT, V6_SERVER}
    ports = {(int(p), int(n)) for p, n in zip(snap.ports.fields["proto"], snap.ports.fields["port"], strict=True)}
    assert ports == {(6, 443), (17, 53)}

    servers, services = snap.latency.servers, snap.latency.services
    assert len(servers) == len(services) == 1
    s, v = servers.key(0), services.key(0)
    assert (address_text(s["server"]), int(s["proto"]), int(s["port"]), int(s["kind"])) == (V6_SERVER, 17, 53, KIND_DNS)
    assert (int(v["proto"]), int(v["port"]), int(v["kind"])) == (17, 53, KIND_DNS)


def test_pack_keys_and_key_records_are_inverse() -> None:
    a = np.frombuffer(address_bytes("10.0.0.1") + address_bytes("::1"), np.uint8).reshape(2, 16)
    keys = pack_keys(FLOW_KEY, 2, a=a, b=a[::-1], aport=np.array([1, 65535]), bport=80, proto=np.array([6, 17]))
    assert keys.shape == (2, 40) and keys.dtype == np.uint8
    assert keys[0, 32:37].tolist() == [0, 1, 0, 80, 6]  # the wire order: ports big-endian, then the protocol
    rec = key_records(keys, FLOW_KEY)
    assert rec["aport"].tolist() == [1, 65535] and rec["proto"].tolist() == [6, 17]
    assert np.array_equal(rec["b"], a[::-1])
    with pytest.raises(ValueError):
        key_records(keys[:, :32], FLOW_KEY)


def test_a_table_without_a_layout_says_so() -> None:
    ports = TableSnapshot(np.zeros((1, 4), np.uint8), {})
    assert ports.layout is None  # a port or a service: only the table knows
    with pytest.raises(TypeError):
        _ = ports.fields
    assert ports.with_layout(SERVICE_KEY).fields["kind"].tolist() == [0]
    with pytest.raises(ValueError):
        ports.with_layout(FLOW_KEY)
    # Flow keys built by hand without the trailing pad still read by name.
    short = TableSnapshot(np.arange(37, dtype=np.uint8)[None], {})
    assert short.layout is FLOW_KEY and int(short.key(0)["proto"]) == 36


@pytest.mark.parametrize("text", ["192.0.2.1", "0.0.0.0", "::1", "2001:db8::ff", "::ffff:10.0.0.1", "fe80::1%eth0"])
def test_address_forms_agree(text: str) -> None:
    raw = address_bytes(text)
    assert len(raw) == 16 and raw == contract.key_bytes(address_key(text)[None]).tobytes()
    plain = ipaddress.ip_address(text.split("%")[0])
    mapped = plain.ipv4_mapped if isinstance(plain, ipaddress.IPv6Address) else plain
    assert raw.startswith(V4_MAPPED) == (mapped is not None) == bool(is_v4(np.frombuffer(raw, np.uint8)))
    shown = str(mapped or plain)
    assert address_text(raw) == address_text(np.frombuffer(raw, np.uint8)) == shown


def test_network_key_masks_addresses() -> None:
    addrs = np.frombuffer(b"".join(map(address_bytes, ["10.1.2.3", "10.2.0.1", "2001:db8::1"])), np.uint8)
    addrs = addrs.reshape(3, 16)
    for net, hits in (("10.1.0.0/16", [1, 0, 0]), ("10.0.0.0/8", [1, 1, 0]), ("2001:db8::/32", [0, 0, 1])):
        key, mask = network_key(net)
        assert ((addrs & mask) == key).all(axis=1).astype(int).tolist() == hits
    assert [len(x) for x in network_key(ipaddress.ip_network("10.0.0.0/8"))] == [16, 16]


def test_the_published_types_are_one_wherever_imported() -> None:
    assert engine.Snapshot is contract.Snapshot and engine.IfaceStatus is contract.IfaceStatus
    assert netlink.LinkInfo is contract.LinkInfo and netlink.LinkStats is contract.LinkStats
    assert latency.EMPTY is contract.EMPTY_LATENCY and latency.Exchange is contract.Exchange
    assert processes.ProcessTable is contract.ProcessTable and processes.NOTE == contract.PROCESS_NOTE
    assert report.match_rows is contract.match_rows and report.addr_str is contract.address_text
    assert decode.address_key is contract.address_key
    from capture_backend.analysis import tables as counters
    from capture_backend.exporters import base as exporters

    assert counters.TableSnapshot is contract.TableSnapshot and exporters.Extra is contract.Extra


def _module(package: Path, f: Path) -> str:
    parts = [package.name, *f.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(package: Path) -> dict[str, set[str]]:
    """Each module of a package (subpackages included) and the package's modules it imports (anywhere: top
    level, functions, TYPE_CHECKING)."""
    files = sorted(package.rglob("*.py"))
    names = {_module(package, f) for f in files}
    out: dict[str, set[str]] = {}
    for f in files:
        me = _module(package, f)
        found: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        # A subpackage's __init__ is not a cycle with its own modules' imports of it.
        out[me] = (found & names) - {me} - {n for n in names if me.startswith(n + ".")}
    return out


def test_the_contract_imports_nothing_of_retrotap_and_capture_backend_has_no_import_cycle() -> None:
    graph = _imports(Path(contract.__file__).parent)
    assert graph["capture_backend.contract"] == set()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import cycle: " + " -> ".join((*path[path.index(module) :], module))
        if module not in done:
            for dep in sorted(graph[module]):
                visit(dep, (*path, module))
            done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_match_rows_by_slot_equals_matching_by_key() -> None:
    rng = np.random.default_rng(11)
    keys = rng.integers(0, 256, (400, 8), dtype=np.uint8)  # distinct enough: 8 random bytes each
    before_slots = np.sort(rng.choice(1000, 300, replace=False))
    before = TableSnapshot(keys[:300], {}, slots=before_slots)
    # Next snapshot: most rows keep their slot, some were evicted and their slots reused by new keys,
    # some keys moved to another slot (evicted, then seen again), and the row order is by slot again.
    now_keys = keys[:300].copy()
    now_slots = before_slots.copy()
    reused = rng.choice(300, 40, replace=False)
    now_keys[reused] = keys[300:340]
    moved = rng.choice(np.setdiff1d(np.arange(300), reused), 20, replace=False)
    now_slots[moved] = 1000 + np.arange(20)
    order = np.argsort(now_slots)
    table = TableSnapshot(now_keys[order], {}, slots=now_slots[order])
    by_key = match_rows(TableSnapshot(table.keys, {}), TableSnapshot(before.keys, {}))
    assert (match_rows(table, before) == by_key).all()
    assert (by_key >= 0).sum() == 260  # 40 rows are new keys
    sub = np.array([5, 17, 250, 299])
    assert (match_rows(table, before, sub) == by_key[sub]).all()
