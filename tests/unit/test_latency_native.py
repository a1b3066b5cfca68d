"""The compiled latency matcher against the NumPy one it replaced (tests/helpers/latency_reference.py):
generated DNS (UDP and TCP), HTTP and MySQL traffic over several flows, split into random batches,
fed to both; every output must be equal."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from capture_backend.analysis import latency as native_mod
from capture_backend.analysis.decode import decode
from capture_backend.contract import LatencySnapshot, TableSnapshot
from tests.helpers import latency_reference as reference_mod
from tests.pcapgen import T0_NS, block_of

SERVERS = {"dns": 53, "dns-tcp": 53, "http": 80, "mysql": 3306, "other": 443}
HTTP_METHODS = [b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"get ", b"XGET "]
STEPS_NS = [0, 1, 1_000, 250_000, 3_000_000] * 4 + [
    900_000_000,
    4_999_999_999,
    5_000_000_000,
    6_000_000_000,
    31_000_000_000,
    -2_000_000,
]
WHAT = ["request", "response"] * 3 + ["other"]
TEXT = st.binary(min_size=0, max_size=90)


def _frame(kind: str, client: int, cport: int, to_server: bool, payload: bytes, v6: bool) -> bytes:
    """Ethernet + IPv4/IPv6 + UDP/TCP around `payload`, client 10.8.0.<client> ↔ server 10.8.1.1."""
    c_ip = bytes([10, 8, 0, client]) if not v6 else bytes(15) + bytes([client])
    s_ip = bytes([10, 8, 1, 1]) if not v6 else bytes(14) + b"\x01\x01"
    src, dst = (c_ip, s_ip) if to_server else (s_ip, c_ip)
    sp, dp = (cport, SERVERS[kind]) if to_server else (SERVERS[kind], cport)
    if kind == "dns":
        l4 = struct.pack("!HHHH", sp, dp, 8 + len(payload), 0) + payload
        proto = 17
    else:
        l4 = struct.pack("!HHIIBBHHH", sp, dp, 1000, 2000, 0x50, 0x18, 65535, 0, 0) + payload
        proto = 6
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + src + dst
        eth = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x86\xdd"
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src, dst)
        eth = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
    return eth + ip + l4


@st.composite
def payloads(draw: st.DrawFn, kind: str, what: str) -> bytes:
    """A request, a response or something else of `kind`."""
    text = draw(TEXT)
    if kind in ("dns", "dns-tcp"):
        qid = draw(st.sampled_from([0x1111, 0x2222, 0x0001]))
        flags = 0x0100 if what == "request" else 0x8180 if what == "response" else draw(st.integers(0, 0xFFFF))
        name = b"".join(bytes([len(p)]) + p for p in text.split(b".")[:4] if 0 < len(p) < 64) + b"\0"
        msg = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"
        return struct.pack("!H", len(msg)) + msg if kind == "dns-tcp" else msg
    if kind == "http":
        if what == "request":
            return draw(st.sampled_from(HTTP_METHODS)) + b"/" + text + b" HTTP/1.1\r\nHost: a\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\n\r\n" + text if what == "response" else text
    if kind == "mysql":
        seq = 0 if what == "request" else 1 if what == "response" else draw(st.integers(0, 3))
        command = b"\x03" if what != "other" else draw(st.sampled_from([b"\x03", b"\x01", b""]))
        return struct.pack("<I", len(text) + 1)[:3] + bytes([seq]) + command + text
    return text


@st.composite
def traffic(draw: st.DrawFn) -> dict[str, Any]:
    """Frames with times, the flow (and flow row) of each, and where batches end."""
    n_flows = draw(st.integers(1, 6))
    flows = [
        (
            draw(st.sampled_from(list(SERVERS))),
            draw(st.integers(1, 3)),
            draw(st.sampled_from([40000, 40001])),
            draw(st.booleans()),
        )
        for _ in range(n_flows)
    ]
    n = draw(st.integers(1, 80))
    frames, caplen, ts, flow = [], [], [], []
    t = T0_NS
    for _ in range(n):
        f = draw(st.integers(0, n_flows - 1))
        kind, client, cport, v6 = flows[f]
        what = draw(st.sampled_from(WHAT))
        to_server = (what != "response") != draw(st.sampled_from([False] * 9 + [True]))  # 1 in 10 the wrong way
        raw = _frame(kind, client, cport, to_server, draw(payloads(kind, what)), v6)
        t += draw(st.sampled_from(STEPS_NS))
        frames.append(raw)
        caplen.append(draw(st.sampled_from([len(raw)] * 6 + [max(len(raw) - 60, 0), min(len(raw), 60)])))
        ts.append(t)
        flow.append(f)
    cuts = sorted(set(draw(st.lists(st.integers(1, n), max_size=8))) | {n})
    # Flows share the 4 flow rows; -1: over the flow table's capacity.
    rows_of_flow = draw(st.lists(st.sampled_from([0, 1, 2, 3] * 3 + [-1]), min_size=n_flows, max_size=n_flows))
    evict = draw(st.lists(st.booleans(), min_size=len(cuts), max_size=len(cuts)))
    limit = draw(st.sampled_from([2, 4, 8, 65_536]))
    return {
        "frames": frames,
        "caplen": caplen,
        "ts": ts,
        "flow": flow,
        "cuts": cuts,
        "rows_of_flow": rows_of_flow,
        "evict": evict,
        "limit": limit,
    }


@contextmanager
def pending_limit(limit: int) -> Iterator[None]:
    """Both modules' PENDING_LIMIT set to `limit` while inside."""
    saved = native_mod.PENDING_LIMIT, reference_mod.PENDING_LIMIT
    native_mod.PENDING_LIMIT = reference_mod.PENDING_LIMIT = limit
    try:
        yield
    finally:
        native_mod.PENDING_LIMIT, reference_mod.PENDING_LIMIT = saved


def assert_tables_equal(a: TableSnapshot, b: TableSnapshot) -> None:
    assert a.keys.tobytes() == b.keys.tobytes() and a.keys.shape == b.keys.shape
    assert sorted(a.cols) == sorted(b.cols)
    for name in a.cols:
        assert a.cols[name].tolist() == b.cols[name].tolist(), name
    assert (a.evicted, a.layout) == (b.evicted, b.layout)


def assert_snapshots_equal(a: LatencySnapshot, b: LatencySnapshot) -> None:
    assert_tables_equal(a.servers, b.servers)
    assert_tables_equal(a.services, b.services)
    assert a.slowest == b.slowest
    assert (a.exchanges, a.unanswered) == (b.exchanges, b.unanswered)


def _pending(lat: Any) -> list[tuple[int, int, bytes]]:
    """The pending requests by key: (key, time, kept bytes)."""
    if isinstance(lat, reference_mod.Latency):
        rows = zip(lat.p_key, lat.p_ts, lat.p_slot, strict=True)
        return [(int(k), int(t), lat.pool[s].tobytes()) for k, t, s in rows]
    entry, key, ts, _ = lat.pending.live()
    text = lat.pending.text(entry)
    return sorted((int(k), int(t), text[i].tobytes()) for i, (k, t) in enumerate(zip(key, ts, strict=True)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(traffic())
def test_compiled_matcher_equals_numpy_reference(t: dict[str, Any]) -> None:
    with pending_limit(t["limit"]):
        native, ref = native_mod.Latency(), reference_mod.Latency()
        first = np.zeros(4, np.int64)
        sums = {"native": np.zeros((3, 4), np.int64), "ref": np.zeros((3, 4), np.int64)}
        lo = 0
        for hi, evict in zip(t["cuts"], t["evict"], strict=True):
            block = block_of(t["frames"][lo:hi], caplen=t["caplen"][lo:hi], ts_ns=t["ts"][lo:hi])
            dec = decode(block)
            fid_of_row = np.array([t["rows_of_flow"][f] for f in t["flow"][lo:hi]], np.int64)
            if evict:  # the flow rows were taken by new flows starting with this batch
                first[:] = t["ts"][lo]
            rows = native.add(dec, fid_of_row.__getitem__, first.copy())
            want = ref.add(dec, fid_of_row.__getitem__, first.copy())
            assert [x.tolist() for x in rows] == [x.tolist() for x in want]
            for name, (fid, lat) in (("native", rows), ("ref", want)):
                s = sums[name]
                np.add.at(s[0], fid, 1)
                np.add.at(s[1], fid, lat)
                np.maximum.at(s[2], fid, lat)
            assert _pending(native) == _pending(ref)
            assert_snapshots_equal(native.freeze(), ref.freeze())
            lo = hi
        assert sums["native"].tolist() == sums["ref"].tolist()
        snap = ref.freeze()
        event(f"exchanges {min(snap.exchanges, 3)}+, unanswered {min(snap.unanswered, 3)}+")
        event(f"kinds matched: {sorted({x.kind for x in snap.slowest})}")
        assert native.s_next == ref.s_next
        for col in ("s_server", "s_service", "s_value", "s_ts"):
            assert getattr(native, col).tolist() == getattr(ref, col).tolist(), col
