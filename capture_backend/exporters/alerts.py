"""Alert rules over the published snapshots: `--alert 'EXPR'` and `--alerts FILE` (TOML).

A rule is ``[NAME:] METRIC[{LABEL}] OP THRESHOLD [for DURATION] [cooldown DURATION]``, e.g.
``flood: new_flows > 2000 for 3s``, ``scan_ports > 100``, ``host_bps{10.0.0.7} > 50M for 5s``,
``dns_p95_ms > 200``, ``coverage{eth0} < 99``. A metric is a number per row (an interface, a host, a pair,
a port, a source...) computed from two successive snapshots, never per packet; the rule holds when any row
(or the row named by the label) passes the threshold. It fires once when it has held for its hold time,
and fires again only after it has stopped holding for its cooldown: a flood makes one incident.

The metrics are declared once, in METRICS, with their unit and the row label they carry.
"""

from __future__ import annotations

import operator
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from capture_backend._native import group_rows
from capture_backend.contract import (
    IPPROTO_TCP,
    KIND_DNS,
    KIND_HTTP,
    KIND_MYSQL,
    Churn,
    Ranked,
    Snapshot,
    TableSnapshot,
    UserError,
    address_text,
    match_rows,
    proto_name,
)

NS = 1_000_000_000
RECENT_NS = 10 * NS  # scans and half-open connections are counted over flows active this recently
DEFAULT_COOLDOWN_S = 60.0
TCP_SYN, TCP_RST, TCP_ACK = 0x02, 0x04, 0x10


class RuleError(UserError, ValueError):
    """A rule that cannot be read."""


@dataclass
class Sample:
    """Two successive snapshots: what every metric is computed from (with what the metrics share, computed once)."""

    snap: Snapshot
    prev: Snapshot
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def seconds(self) -> float:
        if self.snap.live:
            return self.snap.time - self.prev.time
        return (self.snap.last_ns - self.prev.last_ns) / NS

    @property
    def now_ns(self) -> int:
        return int(self.snap.time * NS) if self.snap.live else self.snap.last_ns

    def shared(self, name: str, make: Callable[[], Any]) -> Any:
        """A value several metrics need (a table's row match, the flows' initiators), made once per sample."""
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]


class Rows(NamedTuple):
    """A metric's value per row; the labels are made only for the rows asked for (a flood has 200,000 rows)."""

    values: np.ndarray
    label: Callable[[np.ndarray], list[str]]


NO_ROWS = Rows(np.zeros(0), lambda idx: [])
Compute = Callable[[Sample], Rows]


def _one(value: float) -> Rows:
    return Rows(np.array([value], np.float64), lambda idx: [""] * len(idx))


def _named(names: list[str], values: np.ndarray) -> Rows:
    return Rows(np.asarray(values, np.float64), lambda idx: [names[i] for i in idx.tolist()])


def _rate(cur: np.ndarray, old: np.ndarray, seconds: float) -> np.ndarray:
    return np.maximum(cur - old, 0) / seconds if seconds > 0 else np.zeros(cur.shape, np.float64)


def _ifaces(s: Sample, value: Callable[[object, object | None], float]) -> Rows:
    before = {i.name: i for i in s.prev.interfaces}
    names = [i.name for i in s.snap.interfaces]
    return _named(names, np.array([value(i, before.get(i.name)) for i in s.snap.interfaces], np.float64))


def _iface_rate(field_: str, scale: float = 1.0) -> Compute:
    def compute(s: Sample) -> Rows:
        def value(cur: object, old: object | None) -> float:
            return float(_rate(np.array(getattr(cur, field_)), np.array(getattr(old, field_, 0)), s.seconds)) * scale

        return _ifaces(s, value)

    return compute


NIC_DROPS = ("rx_dropped", "rx_missed", "rx_fifo")


def _nic_drops(s: Sample) -> Rows:
    def value(cur: object, old: object | None) -> float:
        def total(i: object | None) -> int:
            link = getattr(i, "link", None)
            return sum(getattr(link.stats, f) for f in NIC_DROPS) if link is not None else 0

        return float(_rate(np.array(total(cur)), np.array(total(old)), s.seconds))

    return _ifaces(s, value)


def _coverage(s: Sample) -> Rows:
    """Percent of the packets the link counted that the capture got (100 when the link counted none)."""

    def value(cur: object, old: object | None) -> float:
        link_now, link_then = getattr(cur, "link_packets", None), getattr(old, "link_packets", None)
        if link_now is None or link_then is None or link_now <= link_then:
            return 100.0
        got = getattr(cur, "packets", 0) - getattr(old, "packets", 0)
        return min(100.0, 100.0 * got / (link_now - link_then))

    return _ifaces(s, value)


def _growth(s: Sample, name: str, col: str) -> np.ndarray:
    """Per-row growth of a table's column since the previous snapshot (summed over directions); rows new since
    count whole."""
    table: TableSnapshot = getattr(s.snap, name)
    before: TableSnapshot = getattr(s.prev, name)
    cur = table.cols[col].reshape(len(table), -1).sum(axis=1)
    if not len(before):
        return cur.astype(np.float64)
    match = s.shared(f"match:{name}", lambda: match_rows(table, before))
    old = before.cols[col].reshape(len(before), -1).sum(axis=1)[np.maximum(match, 0)]
    grown = np.where(match >= 0, cur - old, cur)
    return np.where(grown < 0, cur, grown).astype(np.float64)


def _table_bps(name: str, label: Callable[[TableSnapshot, int], str]) -> Compute:
    def compute(s: Sample) -> Rows:
        t = getattr(s.snap, name)
        grown = _growth(s, name, "bytes")
        bps = grown * 8 / s.seconds if s.seconds > 0 else grown * 0
        return Rows(bps, lambda idx: [label(t, i) for i in idx.tolist()])

    return compute


def _host_label(t: TableSnapshot, i: int) -> str:
    return address_text(t.fields["addr"][i])


def _pair_label(t: TableSnapshot, i: int) -> str:
    return f"{address_text(t.fields['a'][i])}<->{address_text(t.fields['b'][i])}"


def _port_label(t: TableSnapshot, i: int) -> str:
    return f"{proto_name(int(t.fields['proto'][i]))}/{int(t.fields['port'][i])}"


def _flow_total(col: str) -> Compute:
    def compute(s: Sample) -> Rows:
        grown = float(_growth(s, "flows", col).sum())
        return _one(grown / s.seconds if s.seconds > 0 else 0.0)

    return compute


def _retrans_pct(s: Sample) -> Rows:
    t = s.snap.flows
    tcp = t.fields["proto"] == IPPROTO_TCP if len(t) else np.zeros(0, bool)
    retrans = _growth(s, "flows", "tcp_retrans")[tcp].sum()
    packets = _growth(s, "flows", "packets")[tcp].sum()
    return _one(100.0 * retrans / packets if packets else 0.0)


def _recent(s: Sample, t: TableSnapshot) -> np.ndarray:
    return t.cols["last"] >= s.now_ns - RECENT_NS if len(t) else np.zeros(0, bool)


def _new_flows(s: Sample) -> Rows:
    """Flows first seen since the last sample, the evicted ones included."""
    t = s.snap.flows
    start = s.prev.now_ns if s.snap.live else s.prev.last_ns
    seen = int(np.count_nonzero(t.cols["first"] > start)) if len(t) else 0
    evicted = max(t.evicted - s.prev.flows.evicted, 0)
    return _one((seen + evicted) / s.seconds if s.seconds > 0 else 0.0)


def _iface_new_flows(s: Sample) -> Rows:
    """Per captured interface: flows first seen on it a second since the last sample (evicted ones, whose
    interface is gone with them, are only in new_flows)."""
    t, names = s.snap.flows, s.snap.flow_ifaces
    if not names or s.seconds <= 0:
        return NO_ROWS
    start = s.prev.now_ns if s.snap.live else s.prev.last_ns
    bits = t.cols["ifaces"][t.cols["first"] > start] if len(t) else np.zeros(0, np.uint64)
    counts = [int(np.count_nonzero((bits >> np.uint64(i)) & np.uint64(1))) for i in range(len(names))]
    return _named(list(names), np.array(counts, np.float64) / s.seconds)


def _initiators(s: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each flow's initiator address (16 bytes), responder address, responder port."""

    def make() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = s.snap.flows
        f = t.fields
        a_started = (t.cols["origin"] == 0)[:, None]
        src = np.where(a_started, f["a"], f["b"])
        dst = np.where(a_started, f["b"], f["a"])
        dport = np.where(a_started[:, 0], f["bport"], f["aport"]).astype(np.int64)
        return src, dst, dport

    result: tuple[np.ndarray, np.ndarray, np.ndarray] = s.shared("initiators", make)
    return result


def _grouped(addrs: np.ndarray, values: np.ndarray | None = None) -> Rows:
    """Per address: its number of rows, or of distinct `values` when given (compiled hash grouping, no sort)."""
    if not addrs.shape[0]:
        return NO_ROWS
    words = np.ascontiguousarray(addrs, np.uint8).view("<u8").reshape(-1, 2)
    rows = np.arange(words.shape[0])
    if values is not None:  # one row per distinct (address, value)
        rows = group_rows(np.column_stack([words, values.astype(np.uint64)]), np.empty(rows.size, np.int64))
        words = words[rows]
    inv = np.empty(words.shape[0], np.int64)
    first = group_rows(words, inv)
    counts = np.bincount(inv, minlength=first.size)
    where = rows[first]
    return Rows(counts.astype(np.float64), lambda idx: [address_text(addrs[where[i]]) for i in idx.tolist()])


def _scan_ports(s: Sample) -> Rows:
    """Per source: distinct destination ports it opened flows to, over flows active in the last 10 s."""
    t = s.snap.flows
    recent = _recent(s, t)
    if not recent.any():
        return NO_ROWS
    src, _, dport = _initiators(s)
    return _grouped(src[recent], dport[recent])


def _source_new_flows(s: Sample) -> Rows:
    """Per source: flows it opened in the last 10 s."""
    t = s.snap.flows
    if not len(t):
        return NO_ROWS
    new = t.cols["first"] >= s.now_ns - RECENT_NS
    src, _, _ = _initiators(s)
    return _grouped(src[new])


def _half_open(s: Sample) -> Rows:
    """Per destination: TCP connections asked for (SYN) that it never answered, over the last 10 s."""
    t = s.snap.flows
    if not len(t):
        return NO_ROWS
    started_by_a = t.cols["origin"] == 0
    answers = np.where(started_by_a, t.cols["packets"][:, 1], t.cols["packets"][:, 0])
    syn_only = (t.fields["proto"] == IPPROTO_TCP) & ((t.cols["tcp_flags"] & TCP_SYN) != 0) & (answers == 0)
    pick = _recent(s, t) & syn_only
    _, dst, _ = _initiators(s)
    return _grouped(dst[pick])


def _rtt_ms(s: Sample) -> Rows:
    """Handshake RTTs of flows first seen since the last sample, per server."""
    t = s.snap.flows
    if not len(t):
        return NO_ROWS
    start = s.prev.now_ns if s.snap.live else s.prev.last_ns
    pick = np.flatnonzero((t.cols["first"] > start) & (t.cols["tcp_irtt"] >= 0))
    _, dst, dport = _initiators(s)
    return Rows(
        t.cols["tcp_irtt"][pick] / 1e6,
        lambda idx: [f"{address_text(dst[pick[i]])}:{int(dport[pick[i]])}" for i in idx.tolist()],
    )


def _p95_ms(kind: int) -> Compute:
    def compute(s: Sample) -> Rows:
        t = s.snap.latency.services
        if not len(t):
            return NO_ROWS
        pick = np.flatnonzero(t.fields["kind"] == kind)
        return Rows(t.cols["p95"][pick] / 1e6, lambda idx: [_port_label(t, int(pick[i])) for i in idx.tolist()])

    return compute


def _unanswered(s: Sample) -> Rows:
    grown = max(s.snap.latency.unanswered - s.prev.latency.unanswered, 0)
    return _one(grown / s.seconds if s.seconds > 0 else 0.0)


@dataclass(frozen=True)
class Metric:
    """A number per row: what it means, its unit, what its rows are."""

    doc: str
    unit: str
    rows: str  # what a row's label names ("" for one number)
    compute: Compute


METRICS: Mapping[str, Metric] = {
    "bps": Metric("bits per second captured", "bit/s", "interface", _iface_rate("bytes", 8.0)),
    "pps": Metric("packets per second captured", "packet/s", "interface", _iface_rate("packets")),
    "kernel_drops": Metric("packets the ring dropped per second", "packet/s", "interface", _iface_rate("kernel_drops")),
    "nic_drops": Metric(
        "packets the NIC dropped per second (rx dropped+missed+fifo)", "packet/s", "interface", _nic_drops
    ),
    "coverage": Metric("percent of the link's packets captured", "%", "interface", _coverage),
    "host_bps": Metric("bits per second a host sent and received", "bit/s", "host", _table_bps("hosts", _host_label)),
    "pair_bps": Metric("bits per second between two hosts", "bit/s", "pair", _table_bps("pairs", _pair_label)),
    "port_bps": Metric("bits per second of a service port", "bit/s", "port", _table_bps("ports", _port_label)),
    "retrans": Metric("TCP retransmissions per second", "segment/s", "", _flow_total("tcp_retrans")),
    "retrans_pct": Metric("percent of TCP packets that were retransmissions", "%", "", _retrans_pct),
    "resets": Metric("TCP resets per second", "segment/s", "", _flow_total("tcp_resets")),
    "rtt_ms": Metric("handshake RTT of new TCP connections", "ms", "server", _rtt_ms),
    "dns_p95_ms": Metric("DNS response time, 95th percentile", "ms", "port", _p95_ms(KIND_DNS)),
    "http_p95_ms": Metric("HTTP response time, 95th percentile", "ms", "port", _p95_ms(KIND_HTTP)),
    "mysql_p95_ms": Metric("MySQL response time, 95th percentile", "ms", "port", _p95_ms(KIND_MYSQL)),
    "unanswered": Metric("requests dropped unanswered per second", "request/s", "", _unanswered),
    "new_flows": Metric("flows first seen per second (evicted ones included)", "flow/s", "", _new_flows),
    "scan_ports": Metric("distinct destination ports per source, last 10 s", "port", "source", _scan_ports),
    "iface_new_flows": Metric("flows first seen per second on an interface", "flow/s", "interface", _iface_new_flows),
    "source_new_flows": Metric("flows a source opened in the last 10 s", "flow", "source", _source_new_flows),
    "half_open": Metric("unanswered TCP SYNs per destination, last 10 s", "connection", "destination", _half_open),
}

OPS: Mapping[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
DURATION = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_NUMBER = r"(\d+(?:\.\d+)?)"
_RULE = re.compile(
    r"^\s*(?:(?P<name>[A-Za-z][\w.-]*)\s*:\s*)?"
    r"(?P<metric>[a-z_0-9]+)\s*(?:\{\s*(?P<label>[^{}]*?)\s*\})?\s*"
    r"(?P<op>>=|<=|>|<)\s*" + _NUMBER + r"(?P<suffix>[kKMGT]?)(?:%|/s)?"
    r"(?:\s+for\s+" + _NUMBER + r"(?P<for_unit>ms|s|m|h))?"
    r"(?:\s+cooldown\s+" + _NUMBER + r"(?P<cool_unit>ms|s|m|h))?\s*$"
)


@dataclass(frozen=True)
class Rule:
    """One alert rule, as read."""

    name: str
    metric: str
    label: str  # "" : every row
    op: str
    threshold: float
    hold_s: float = 0.0
    cooldown_s: float = DEFAULT_COOLDOWN_S
    text: str = ""

    def rows(self, sample: Sample) -> tuple[list[str], np.ndarray]:
        """The labels and values of the rows that pass the threshold (and carry the rule's label), worst first."""
        values, label = metric_rows(sample, self.metric)
        values = np.asarray(values, np.float64)
        idx = np.flatnonzero(OPS[self.op](values, self.threshold))
        idx = idx[np.argsort(values[idx] if self.op.startswith("<") else -values[idx], kind="stable")]
        labels = label(idx)
        if self.label:
            keep = [n for n, lab in enumerate(labels) if lab == self.label]
            return [labels[n] for n in keep], values[idx[keep]]
        return labels, values[idx]


def parse_rule(text: str) -> Rule:
    """A rule from its text; RuleError with one line saying what is wrong."""
    m = _RULE.match(text)
    if m is None:
        raise RuleError(
            f"alert {text!r}: write [NAME:] METRIC[{{LABEL}}] OP NUMBER [for DURATION] [cooldown DURATION], "
            "e.g. 'new_flows > 2000 for 3s'"
        )
    metric = m["metric"]
    if metric not in METRICS:
        raise RuleError(f"alert {text!r}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    if m["label"] and not METRICS[metric].rows:
        raise RuleError(f"alert {text!r}: {metric} is one number, it takes no {{label}}")
    threshold = float(m.group(5)) * SUFFIX[m["suffix"]]
    hold = float(m.group(7)) * DURATION[m["for_unit"]] if m["for_unit"] else 0.0
    cool = float(m.group(9)) * DURATION[m["cool_unit"]] if m["cool_unit"] else DEFAULT_COOLDOWN_S
    name = m["name"] or metric
    return Rule(name, metric, m["label"] or "", m["op"], threshold, hold, cool, text.strip())


def load_rules(path: str | Path) -> list[Rule]:
    """Rules of a TOML file: `[[rule]]` tables with `expr` (and optionally `name`); RuleError when unreadable."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise RuleError(f"--alerts {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RuleError(f"--alerts {path}: not TOML: {e}") from None
    rules = []
    for n, entry in enumerate(data.get("rule", []), 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("expr"), str):
            raise RuleError(f'--alerts {path}: rule {n} needs expr = "..."')
        rule = parse_rule(entry["expr"])
        if isinstance(entry.get("name"), str):
            rule = replace(rule, name=entry["name"])
        rules.append(rule)
    if not rules:
        raise RuleError(f"--alerts {path}: no [[rule]] in the file")
    return rules


@dataclass(frozen=True)
class Firing:
    """A rule that fired: when, and the rows that passed its threshold (worst first, at most TOP_ROWS)."""

    rule: Rule
    time_ns: int
    labels: tuple[str, ...]
    values: tuple[float, ...]


TOP_ROWS = 10


@dataclass
class _State:
    holding_since: float | None = None  # sample time (s) the condition started to hold
    fired: bool = False  # fired in this episode
    clear_since: float | None = None  # since when it has not held, after firing


@dataclass
class Alerts:
    """Evaluates rules over successive snapshots; `feed` returns the rules that fire now."""

    rules: list[Rule]
    states: dict[str, _State] = field(default_factory=dict)
    active: dict[str, Firing] = field(default_factory=dict)  # rules holding now, by name
    errors: int = 0
    last_error: str = ""

    def feed(self, sample: Sample) -> list[Firing]:
        now = sample.now_ns / NS
        fired = []
        for rule in self.rules:
            st = self.states.setdefault(rule.name, _State())
            try:
                labels, values = rule.rows(sample)
            except Exception as e:  # counted and shown by the caller, never silent; the other rules go on
                self.errors += 1
                self.last_error = f"alert {rule.name}: {type(e).__name__}: {e}"
                continue
            if labels:
                firing = Firing(rule, sample.now_ns, tuple(labels[:TOP_ROWS]), tuple(values[:TOP_ROWS].tolist()))
                self.active[rule.name] = firing
                st.clear_since = None
                if st.holding_since is None:
                    st.holding_since = now
                if not st.fired and now - st.holding_since >= rule.hold_s:
                    st.fired = True
                    fired.append(firing)
            else:
                self.active.pop(rule.name, None)
                st.holding_since = None
                if st.fired:
                    st.clear_since = st.clear_since if st.clear_since is not None else now
                    if now - st.clear_since >= rule.cooldown_s:
                        st.fired = False
                        st.clear_since = None
        return fired


CHURN_TOP = 5


def _ranked(rows: Rows, top: int = CHURN_TOP) -> Ranked:
    values = np.asarray(rows.values, np.float64)
    if not values.size:
        return ()
    idx = np.argpartition(-values, min(top, values.size) - 1)[:top] if values.size > top else np.arange(values.size)
    idx = idx[np.argsort(-values[idx], kind="stable")]
    return tuple(zip(rows.label(idx), values[idx].tolist(), strict=True))


def metric_rows(sample: Sample, name: str) -> Rows:
    """A metric's rows for a sample, computed once however many rules (and the churn figures) read it."""
    rows: Rows = sample.shared(f"metric:{name}", lambda: METRICS[name].compute(sample))
    return rows


def churn(sample: Sample) -> Churn:
    """The flood and scan figures of a sample (the overview, the JSON and /metrics show them)."""
    half = metric_rows(sample, "half_open")
    return Churn(
        new_flows_per_s=float(metric_rows(sample, "new_flows").values[0]),
        new_flows_by_iface=_ranked(metric_rows(sample, "iface_new_flows"), top=64),
        top_new_sources=_ranked(metric_rows(sample, "source_new_flows")),
        top_scanners=_ranked(metric_rows(sample, "scan_ports")),
        half_open=int(half.values.sum()),
        top_half_open=_ranked(half),
    )
