"""Prometheus /metrics: a Collector that reads the latest Snapshot at each scrape.

Nothing here runs on the capture thread and nothing is counted per packet: a scrape turns one
immutable Snapshot (plus the top-K host and port rows of report.py) into metric families.
Link counters are left to node_exporter; only what retrotap itself measures is exported.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from capture_backend.contract import DEFAULT_TOP, MAX_TOP, Extra, IfaceStatus, Snapshot
from capture_backend.output.report import host_rows, port_rows

PREFIX = "retrotap_"
DEFAULT_PORT = 9477
COVERAGE_WINDOW_S = 10.0
SnapshotSource = Callable[[], Snapshot]


_FAMILIES: Mapping[str, Callable[..., Any]] = {
    "counter": lambda name, doc, labels=None: CounterMetricFamily(name, doc, labels=labels),
    "gauge": lambda name, doc, labels=None: GaugeMetricFamily(name, doc, labels=labels),
}


def coverage(now: IfaceStatus, before: IfaceStatus) -> float:
    """Captured ÷ packets the link (else the ring) counted between two readings; 1.0 when none passed."""
    captured = now.packets - before.packets
    link_now, link_before = now.link_packets, before.link_packets
    if link_now is not None and link_before is not None:
        seen = link_now - link_before
    else:
        seen = now.received - before.received
    if seen <= 0:
        return 1.0 if captured <= 0 else float("nan")  # the link counters lag behind (read once a second)
    return captured / seen


class SnapshotCollector(Collector):
    """Metric families from the newest Snapshot, computed at scrape time."""

    def __init__(self, source: SnapshotSource, top: int = DEFAULT_TOP, extra: dict[str, Extra] | None = None) -> None:
        self.source = source
        self.top = max(0, min(top, MAX_TOP))
        self.extra: dict[str, Extra] = extra if extra is not None else {}
        self._seen: deque[Snapshot] = deque([source()], maxlen=256)
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return []  # families depend on the snapshot; an empty description skips collect() at registration

    def _reference(self, snap: Snapshot) -> Snapshot:
        """The snapshot coverage is measured from: the newest seen at least COVERAGE_WINDOW_S ago."""
        with self._lock:
            if snap is not self._seen[-1] and snap.time >= self._seen[-1].time:
                self._seen.append(snap)
            ref = self._seen[0]
            for old in self._seen:
                if snap.time - old.time < COVERAGE_WINDOW_S:
                    break
                ref = old
            while self._seen[0] is not ref:
                self._seen.popleft()
            return ref

    def collect(self) -> Iterator[Metric]:
        snap = self.source()
        yield from self._interfaces(snap)
        yield from self._totals(snap)
        if self.top:
            yield from self._hosts(snap)
            yield from self._ports(snap)
        yield from self._extras()

    def _interfaces(self, snap: Snapshot) -> Iterator[Metric]:
        per_iface: list[tuple[str, str, Callable[[IfaceStatus], float], bool]] = [
            ("packets_total", "Packets captured", lambda i: i.packets, False),
            ("bytes_total", "Bytes captured (frame length on the wire)", lambda i: i.bytes, False),
            ("ring_packets_total", "Packets the kernel passed to the ring (tp_packets)", lambda i: i.received, True),
            ("kernel_drops_total", "Packets the kernel ring dropped (tp_drops)", lambda i: i.kernel_drops, True),
            ("ring_freezes_total", "Times the ring queue froze (tp_freeze_q_cnt)", lambda i: i.freezes, True),
            ("ring_walk_errors_total", "Frames announced outside their ring block", lambda i: i.walk_errors, True),
        ]
        for suffix, doc, read, live_only in per_iface:
            if live_only and not snap.live:
                continue
            family = CounterMetricFamily(PREFIX + suffix.removesuffix("_total"), doc, labels=["interface"])
            for iface in snap.interfaces:
                family.add_metric([iface.name], float(read(iface)))
            yield family
        if snap.live:
            ref = {i.name: i for i in self._reference(snap).interfaces}
            ratio = GaugeMetricFamily(
                PREFIX + "coverage_ratio",
                f"Captured / packets the link counted (rx+tx; rx on lo; else ring), over about {COVERAGE_WINDOW_S:g} s",
                labels=["interface"],
            )
            for iface in snap.interfaces:
                ratio.add_metric([iface.name], coverage(iface, ref.get(iface.name, iface)))
            yield ratio

    def _totals(self, snap: Snapshot) -> Iterator[Metric]:
        yield CounterMetricFamily(PREFIX + "malformed", "Truncated or malformed frames", value=snap.malformed)
        yield GaugeMetricFamily(PREFIX + "flows_active", "Rows in the flow table", value=len(snap.flows))
        yield CounterMetricFamily(
            PREFIX + "flows_evicted", "Flows evicted (capacity and idle timeout)", value=snap.flows.evicted
        )
        yield CounterMetricFamily(
            PREFIX + "capture_cpu_seconds", "CPU time of the capture thread", value=snap.capture_cpu
        )
        yield CounterMetricFamily(
            PREFIX + "capture_restarts",
            "Times the capture loop failed and was restarted (the error is in the log named on stderr)",
            value=snap.restarts,
        )
        yield GaugeMetricFamily(
            PREFIX + "snapshot_timestamp_seconds",
            "When the snapshot read by this scrape was published",
            value=snap.time,
        )

    def _hosts(self, snap: Snapshot) -> Iterator[Metric]:
        labels = ["host", "direction"]
        by = CounterMetricFamily(PREFIX + "host_bytes", f"Bytes of the top {self.top} hosts by bytes", labels=labels)
        pk = CounterMetricFamily(
            PREFIX + "host_packets", f"Packets of the top {self.top} hosts by bytes", labels=labels
        )
        for row in host_rows(snap, self.top):
            for direction in ("tx", "rx"):
                by.add_metric([row["addr"], direction], row[f"{direction}_bytes"])
                pk.add_metric([row["addr"], direction], row[f"{direction}_packets"])
        yield by
        yield pk

    def _ports(self, snap: Snapshot) -> Iterator[Metric]:
        labels = ["proto", "port", "service", "direction"]
        by = CounterMetricFamily(
            PREFIX + "port_bytes", f"Bytes of the top {self.top} service ports by bytes", labels=labels
        )
        for row in port_rows(snap, self.top):
            base = [row["proto"], str(row["port"]), row["service"]]
            by.add_metric([*base, "to_port"], row["to_port_bytes"])
            by.add_metric([*base, "from_port"], row["from_port_bytes"])
        yield by

    def _extras(self) -> Iterator[Metric]:
        for name, extra in sorted(self.extra.items()):
            family = _FAMILIES[extra.kind](PREFIX + name.removesuffix("_total"), extra.help)
            if extra.read_by is None:
                family.add_metric([], float(extra.read()))
            else:
                family = _FAMILIES[extra.kind](PREFIX + name.removesuffix("_total"), extra.help, [extra.label])
                for value, n in sorted(extra.read_by().items()):
                    family.add_metric([value], float(n))
            yield family


def is_loopback(host: str) -> bool:
    """The address is a loopback address (127/8, ::1) or the name 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int) -> str | None:
    """One line of warning when /metrics would be served beyond this machine, else None."""
    if is_loopback(host):
        return None
    return f"warning: --metrics {host}:{port} is not loopback: every network that reaches it can read the counters"


class MetricsServer:
    """An HTTP server for /metrics on its own thread, with its own registry."""

    def __init__(self, collector: SnapshotCollector, host: str, port: int) -> None:
        self.collector = collector
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(collector)
        self._server: Any = None

    def start(self) -> None:
        """Bind and serve; OSError when the address is taken or unusable."""
        self._server, _thread = start_http_server(self.port, self.host, registry=self.registry)
        self.port = int(self._server.server_port)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
