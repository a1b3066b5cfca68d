"""The optional exporters of a run (Prometheus /metrics, IPFIX, session records), started and stopped around its
loop.

All read the snapshots a run publishes, from their own threads: nothing is added to the capture
thread's work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from capture_backend.contract import DEFAULT_TOP as DEFAULT_TOP
from capture_backend.contract import MAX_TOP as MAX_TOP
from capture_backend.contract import Churn, ProcessTable, Snapshot
from capture_backend.contract import Extra as Extra
from capture_backend.exporters.incidents import IncidentSettings, IncidentWatcher
from capture_backend.exporters.ipfix import FlowExporter, resolve
from capture_backend.exporters.sessions import SessionSettings, SessionWriter
from capture_backend.rewind.recorder import RecordStats
from capture_backend.rewind.sessions import Retention, SessionStoreError
from capture_backend.rewind.timemachine import TimeMachine

if TYPE_CHECKING:  # prometheus_client is imported only when /metrics is asked for
    from capture_backend.exporters.metrics import MetricsServer

Log = Callable[[str], None]


@dataclass
class ExporterSettings:
    """--metrics, --metrics-top, --ipfix, --sensor-id, --ipfix-idle, --ipfix-active, --sessions,
    --sessions-idle, --sessions-active (and the retention of the session store)."""

    metrics: tuple[str, int] | None = None
    metrics_top: int = DEFAULT_TOP
    ipfix: tuple[str, int] | None = None
    sensor_id: int = 0
    ipfix_idle: float = 15.0
    ipfix_active: float = 60.0
    sessions: str | None = None  # directory (or .sqlite file) of the session store
    sessions_idle: float = 30.0
    sessions_active: float = 60.0
    sessions_closed: float = 5.0
    sessions_retention: Retention = field(default_factory=Retention)
    incidents: IncidentSettings | None = None  # alert rules and where incidents are frozen


class Exporters:
    """The exporters asked for, over one source of snapshots (``engine.snapshot`` or a file loop's latest).

    With `fed`, the loop also hands every snapshot to offer() (files: IPFIX then follows packet time).
    """

    def __init__(
        self,
        settings: ExporterSettings,
        source: Callable[[], Snapshot],
        log: Log,
        fed: bool = False,
        processes: Callable[[], ProcessTable | None] | None = None,
        timemachine: TimeMachine | None = None,
    ) -> None:
        self.settings = settings
        self.timemachine = timemachine  # where incidents take their packets from
        self.source = source
        self.log = log
        self.fed = fed
        self.processes = processes  # the process mapper's newest table, for the session records
        self.extra: dict[str, Extra] = {}  # more counters for /metrics (time machine, recorder...)
        self.metrics: MetricsServer | None = None
        self.ipfix: FlowExporter | None = None
        self.sessions: SessionWriter | None = None
        self.incidents: IncidentWatcher | None = None
        self.failed = False  # set by stop(): a writer lost records or incidents (the run's exit status says so)

    def start(self) -> None:
        """Bind /metrics and open the IPFIX socket; OSError with the option named when that fails.

        A session store that cannot be opened is said (one line) and tried again later: capture goes on.
        """
        s = self.settings
        if s.sessions is not None:
            self.sessions = SessionWriter(
                SessionSettings(
                    s.sessions, s.sessions_idle, s.sessions_active, s.sessions_closed, s.sessions_retention
                ),
                self.source,
                processes=self.processes,
                fed=self.fed,
                log=self.log,
            )
            try:
                self.sessions.open()
            except SessionStoreError as e:
                self.log(f"{e} (records are counted as dropped until it can be written)")
            st = self.sessions.stats
            self.extra["sessions_records_total"] = Extra("Session records written", lambda: st.records)
            self.extra["sessions_dropped_total"] = Extra(
                "Session records not written (queue full or store failing)", lambda: st.dropped
            )
            self.extra["sessions_errors_total"] = Extra("Session store errors", lambda: st.errors)
            self.extra["sessions_unseen_flows_total"] = Extra(
                "Flows evicted from the flow table before the session writer saw them (no record)", lambda: st.unseen
            )
        if s.ipfix is not None:
            host, port = s.ipfix
            try:
                self.ipfix = FlowExporter(
                    resolve(host, port),
                    self.source,
                    domain=s.sensor_id,
                    idle_s=s.ipfix_idle,
                    active_s=s.ipfix_active,
                    fed=self.fed,
                    log=self.log,
                )
            except OSError as e:
                raise OSError(f"--ipfix {host}:{port}: {e.strerror or e}") from None
            ipfix = self.ipfix
            self.extra["ipfix_messages_total"] = Extra("IPFIX messages sent", lambda: ipfix.encoder.messages)
            self.extra["ipfix_flow_records_total"] = Extra("IPFIX flow records sent", lambda: ipfix.encoder.records)
            self.extra["ipfix_send_errors_total"] = Extra("IPFIX messages not sent", lambda: ipfix.send_errors)
        if s.metrics is not None:
            from capture_backend.exporters.metrics import MetricsServer, SnapshotCollector, exposure_warning

            host, port = s.metrics
            warning = exposure_warning(host, port)
            if warning is not None:
                self.log(warning)
            server = MetricsServer(SnapshotCollector(self.source, s.metrics_top, self.extra), host, port)
            try:
                server.start()
            except OSError as e:
                self.stop(None)
                raise OSError(f"--metrics {host}:{port}: {e.strerror or e}") from None
            self.metrics = server
        if s.incidents is not None:
            watcher = IncidentWatcher(s.incidents, self.source, self.timemachine, self.log, self.processes)
            self.incidents = watcher
            st_i = watcher.stats
            self.extra["incidents_total"] = Extra(
                "Incidents frozen, by rule", lambda: st_i.incidents, label="rule", read_by=lambda: dict(st_i.by_rule)
            )
            self.extra["alerts_active"] = Extra(
                "Alert rules holding now",
                lambda: len(watcher.alerts.active),
                "gauge",
                label="rule",
                read_by=lambda: {r.name: float(r.name in watcher.alerts.active) for r in watcher.alerts.rules},
            )
            self.extra["incident_errors_total"] = Extra("Incident and alert errors", lambda: st_i.errors)
            self.extra.update(churn_gauges(watcher))
        if self.ipfix is not None:
            self.ipfix.start()
        if self.sessions is not None:
            self.sessions.start()
        if self.incidents is not None:
            self.incidents.start(thread=not self.fed)

    def offer(self, snap: Snapshot) -> None:
        """A new snapshot of a fed run."""
        if self.ipfix is not None and self.fed:
            self.ipfix.feed(snap)
        if self.sessions is not None and self.fed:
            self.sessions.feed(snap)
        if self.incidents is not None and self.fed:
            self.incidents.step()

    def freeze(self, reason: str = "manual") -> bool:
        """Freeze an incident now (SIGUSR2, `!`); False when incidents are off."""
        if self.incidents is None:
            return False
        self.incidents.freeze(reason)
        return True

    def stop(self, final: Snapshot | None) -> None:
        """Export what IPFIX has not sent yet (from `final`, else the newest snapshot), stop serving /metrics."""
        if self.incidents is not None:
            watcher, self.incidents = self.incidents, None
            watcher.close()
            ist = watcher.stats
            self.failed |= ist.errors > 0
            if ist.incidents or ist.errors:
                self.log(
                    f"incidents: {ist.incidents} frozen in {watcher.settings.directory}, {ist.errors} errors"
                    + (f" (last: {ist.last_error})" if ist.errors else "")
                )
        if self.ipfix is not None:
            self.ipfix.close(final)
            self.ipfix = None
        if self.sessions is not None:
            writer, self.sessions = self.sessions, None
            writer.close(final)
            st = writer.stats
            self.failed |= bool(st.dropped or st.minutes_dropped or st.errors)
            if st.dropped or st.minutes_dropped or st.errors or st.unseen:
                self.log(
                    f"sessions: {st.records} records written to {writer.path}, {st.dropped} dropped, "
                    f"{st.minutes_dropped} minutes of aggregates dropped, "
                    f"{st.unseen} flows evicted from the flow table before a record could be made, "
                    f"{st.errors} store errors (last: {st.last_error or 'none'})"
                )
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None


def time_machine_counters(tm: TimeMachine) -> dict[str, Extra]:
    """The time machine's pool, as /metrics counters and gauges."""
    st = tm.stats
    return {
        "timemachine_packets": Extra("Packets the time machine holds", lambda: st.packets, "gauge"),
        "timemachine_bytes": Extra("Bytes the time machine holds", lambda: st.bytes, "gauge"),
        "timemachine_expired_packets_total": Extra("Packets the time machine let go", lambda: st.expired_packets),
        "timemachine_oversize_packets_total": Extra(
            "Packets in a range larger than the time machine", lambda: st.oversize_packets
        ),
    }


def recorder_counters(stats: RecordStats) -> dict[str, Extra]:
    """`retrotap record`'s files, as /metrics counters."""
    fields = {
        "packets": "Packets written to files",
        "bytes": "Bytes written to files",
        "files": "Files closed",
        "lost_packets": "Packets overwritten in the time machine before the recorder read them",
        "unwritten_packets": "Packets not written: the disk was full",
        "deleted_files": "Files deleted by retention",
    }
    return {f"recorder_{name}_total": Extra(doc, _field(stats, name)) for name, doc in fields.items()}


def _field(obj: object, name: str) -> Callable[[], float]:
    return lambda: getattr(obj, name)


# The churn gauges with one series per label value: (name, help, label, the Churn field of ranked rows).
LABELLED_CHURN = (
    ("interface_new_flows_per_second", "Flows first seen per second, per interface", "interface", "new_flows_by_iface"),
    ("source_new_flows", "Flows the top sources opened in the last 10 s", "source", "top_new_sources"),
    (
        "scan_ports",
        "Distinct destination ports the top sources opened flows to in the last 10 s",
        "source",
        "top_scanners",
    ),
)


def churn_gauges(watcher: IncidentWatcher) -> dict[str, Extra]:
    """Floods and scans as /metrics gauges (top sources as labels: at most five series each)."""

    def churn() -> Churn:
        return watcher.status.churn

    def ranked(column: str) -> Callable[[], dict[str, float]]:
        return lambda: dict(getattr(churn(), column))

    gauges = {
        "new_flows_per_second": Extra("Flows first seen per second", lambda: churn().new_flows_per_s, "gauge"),
        "half_open_connections": Extra("TCP SYNs never answered in the last 10 s", lambda: churn().half_open, "gauge"),
    }
    for name, text, label, column in LABELLED_CHURN:
        gauges[name] = Extra(text, lambda: 0, "gauge", label=label, read_by=ranked(column))
    return gauges
