"""What a front end builds a capture run from: the options objects and the parsers of option values.

Defined here: `RunOptions` (one capture run, for every front end), `StatsOptions` (`retrotap stats`) and
`RecordRun` (`retrotap record`). The options of a part stay beside the part that reads them and are
re-exported: `RingConfig` (capture/ring), `CounterLimits` (analysis/tables), `RecordOptions`
(rewind/recorder), `ExporterSettings` with `DEFAULT_TOP`/`MAX_TOP` (exporters/base), `ExportOptions` with
`time_window`/`TimeSpecError` (rewind/export), `default_interface` and `netns_interfaces` (capture/netlink),
`RunAs`, `lookup_user` and `writable_by` (capture/privileges), the session store's `Query`, `Retention` and
`session_export` (rewind/sessions) and `SessionsQuery` (rewind/session_report).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capture_backend.analysis.tables import CounterLimits as CounterLimits
from capture_backend.capture.netlink import default_interface as default_interface
from capture_backend.capture.netlink import netns_interfaces as netns_interfaces
from capture_backend.capture.privileges import RunAs as RunAs
from capture_backend.capture.privileges import lookup_user as lookup_user
from capture_backend.capture.privileges import unreadable_by as unreadable_by
from capture_backend.capture.privileges import writable_by as writable_by
from capture_backend.capture.ring import RingConfig as RingConfig
from capture_backend.exporters.alerts import METRICS as ALERT_METRICS  # noqa: F401 (re-exported)
from capture_backend.exporters.alerts import RuleError as RuleError
from capture_backend.exporters.alerts import load_rules as load_rules
from capture_backend.exporters.alerts import parse_rule as parse_rule
from capture_backend.exporters.base import DEFAULT_TOP as DEFAULT_TOP
from capture_backend.exporters.base import MAX_TOP as MAX_TOP
from capture_backend.exporters.base import ExporterSettings as ExporterSettings
from capture_backend.exporters.incidents import IncidentSettings as IncidentSettings
from capture_backend.rewind.export import ExportOptions as ExportOptions
from capture_backend.rewind.export import TimeSpecError as TimeSpecError
from capture_backend.rewind.export import time_window as time_window
from capture_backend.rewind.recorder import RecordOptions as RecordOptions
from capture_backend.rewind.session_report import SessionsQuery as SessionsQuery
from capture_backend.rewind.sessions import SORTS as SORTS
from capture_backend.rewind.sessions import Query as Query
from capture_backend.rewind.sessions import Retention as Retention
from capture_backend.rewind.sessions import session_export as session_export


@dataclass
class RunOptions:
    """Everything a capture run is built from, whichever front end asks for it."""

    interfaces: list[str] = field(default_factory=list)
    read_file: str | None = None  # a capture file instead of live interfaces (the dashboard's -r)
    realtime: bool = False  # replay the file at its own pace
    filter_expr: str = ""
    ring: RingConfig = field(default_factory=RingConfig)
    limits: CounterLimits = field(default_factory=CounterLimits)
    buffer_size: int = 256 << 20  # the time machine; 0: off
    buffer_seconds: float = 60.0
    snapshot_dir: str = "."
    pcapng: bool = False  # time machine saves: one pcapng with process comments instead of a pcap per interface
    exporters: ExporterSettings = field(default_factory=ExporterSettings)
    processes: bool = False  # map flows to local processes (live only)
    record: RecordOptions | None = None  # record every packet from the start (`retrotap record`)
    user: RunAs | None = None  # drop root to this user once the rings are open (-Z)
    history_seconds: float = 0.0  # the dashboard's per-second history (--history); 0: off
    # How often a live capture publishes a snapshot unasked: the dashboard's refresh. A headless run asks for
    # the snapshot it prints; its exporters and the process mapper read the newest one at their own pace.
    publish_interval: float = 0.25


@dataclass
class StatsOptions:
    """What `retrotap stats` was asked for."""

    interfaces: list[str] = field(default_factory=list)
    read_file: str | None = None
    filter_expr: str = ""
    interval: float | None = None
    count: int = 0
    top: int = 10
    fmt: str = "text"
    promisc: bool = True
    ring: RingConfig = field(default_factory=RingConfig)
    limits: CounterLimits = field(default_factory=CounterLimits)
    buffer_size: int = 256 << 20
    buffer_seconds: float = 60.0
    snapshot_dir: str = "."
    pcapng: bool = False
    exporters: ExporterSettings = field(default_factory=ExporterSettings)
    user: RunAs | None = None
    directory: str | None = None  # `stats DIR`: the per-minute records of DIR's session store
    window: tuple[int, int] = (0, 0)  # their --from/--to, ns


@dataclass
class RecordRun:
    """What `retrotap record` was asked for."""

    record: RecordOptions
    interfaces: list[str] = field(default_factory=list)
    read_file: str | None = None
    filter_expr: str = ""
    ring: RingConfig = field(default_factory=RingConfig)
    limits: CounterLimits = field(default_factory=CounterLimits)
    buffer_size: int = 256 << 20
    buffer_seconds: float = 60.0
    snapshot_dir: str = "."
    pcapng: bool = False
    exporters: ExporterSettings = field(default_factory=ExporterSettings)
    user: RunAs | None = None
