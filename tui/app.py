"""The live dashboard (`retrotap` with no subcommand): numbered views over the capture engine's snapshots.

The capture thread publishes an immutable Snapshot a few times a second; the app pulls it at the
refresh rate and formats only the rows the active view can show. Rare engine events arrive as
Textual messages (EngineNotice) posted from the capture thread.
"""

from __future__ import annotations

import argparse
import bisect
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Footer

from capture_backend.contract import (
    EMPTY_ALERTS,
    EMPTY_PROCESSES,
    INSPECT_LIMIT,
    AlertStatus,
    EngineEvent,
    EventSink,
    PcapSaveResult,
    ProcessTable,
    Snapshot,
    TableSnapshot,
    UserError,
)
from capture_backend.options import CounterLimits, ExporterSettings, RecordOptions, RingConfig, RunOptions
from capture_backend.run import (
    HistoryEntry,
    HistoryRing,
    ProcessMapper,
    Run,
    Selector,
    SessionHistory,
    TimeMachine,
    file_job,
    incident_rows,
    read_incident,
    session_flows,
)
from tui.feed import SnapshotFeed as SnapshotFeed  # re-exported: `from tui.app import SnapshotFeed` still works
from tui.options import check_dashboard_user, user_of
from tui.selection import Selection
from tui.widgets.banner import ErrorBanner, problems
from tui.widgets.drops import DropsView
from tui.widgets.flow_detail import FlowDetail
from tui.widgets.flows import FlowsView
from tui.widgets.format import clock_time, count, duration, size
from tui.widgets.help import HelpScreen
from tui.widgets.history import HistoryView
from tui.widgets.hosts import HostsView
from tui.widgets.incidents import IncidentPanel, IncidentsView
from tui.widgets.inspector import InspectorScreen
from tui.widgets.interfaces import InterfacesView
from tui.widgets.latency import LatencyView
from tui.widgets.names import Lookup, NameResolver
from tui.widgets.overview import OverviewView
from tui.widgets.pcap_picker import PcapPicker, capture_files
from tui.widgets.ports import PortsView
from tui.widgets.processes import ProcessesView
from tui.widgets.prompt import PromptBar
from tui.widgets.query import Query
from tui.widgets.status import StatusBar, ViewBar
from tui.widgets.view import Frame, View

VIEWS = {  # key -> (widget id, title); the view bar lists them in this order
    0: ("overview", "Overview"),
    1: ("interfaces", "Interfaces"),
    2: ("hosts", "Hosts"),
    3: ("ports", "Ports"),
    4: ("flows", "Flows"),
    5: ("drops", "Drops"),
    6: ("processes", "Processes"),
    7: ("latency", "Latency"),
    8: ("history", "History"),
    9: ("incidents", "Incidents"),
}
FIRST_VIEW = 0
HISTORY_SPARK_S = 60  # rewound Interfaces view: the sparklines' seconds up to the cursor
STORE_REREAD_S = 5.0  # rewound Flows view: the session records of the cursor's second are read again after this
NS = 1_000_000_000
NOTICE_SEVERITY = {"error": "error", "iface-gone": "error", "iface-error": "error", "iface-down": "warning"}


class PcapSaved(Message):
    """A time machine snapshot was written (or failed), posted from the writer thread."""

    def __init__(self, text: str, failed: bool, result: PcapSaveResult | None = None) -> None:
        super().__init__()
        self.text = text
        self.failed = failed
        self.result = result


class RecorderNote(Message):
    """A line from the recorder (file closed, disk full...), posted from its thread."""

    def __init__(self, text: str, failed: bool = False) -> None:
        super().__init__()
        self.text = text
        self.failed = failed


class EngineLike(Protocol):
    """What the dashboard needs from a capture engine (Engine, FileEngine, SnapshotFeed)."""

    snapshot: Snapshot
    on_event: EventSink | None

    @property
    def running(self) -> bool: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def set_filter(self, expr: str) -> None: ...


class EngineNotice(Message):
    """A rare engine event (interface down or gone, capture error, end of file)."""

    def __init__(self, event: EngineEvent) -> None:
        super().__init__()
        self.event = event


class RetrotapApp(App[int]):
    """Numbered views over the engine's snapshots: Overview, Interfaces, Hosts, Ports, Flows, Drops, Processes,
    Latency, Incidents."""

    CSS_PATH = "app.tcss"
    TITLE = "retrotap"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [  # the view keys are on the view bar, not in the footer
        Binding("0", "view(0)", "Overview", show=False),
        Binding("1", "view(1)", "Interfaces", show=False),
        Binding("2", "view(2)", "Hosts", show=False),
        Binding("3", "view(3)", "Ports", show=False),
        Binding("4", "view(4)", "Flows", show=False),
        Binding("5", "view(5)", "Drops", show=False),
        Binding("6", "view(6)", "Processes", show=False),
        Binding("7", "view(7)", "Latency", show=False),
        Binding("8", "view(8)", "History", show=False),
        Binding("9", "view(9)", "Incidents", show=False),
        Binding("slash", "text_filter", "Filter", key_display="/"),
        Binding("s", "sort", "Sort"),
        Binding("S", "reverse_sort", "Rev", key_display="S"),
        Binding("p", "pause", "Pause"),
        Binding("f", "capture_filter", "BPF"),
        Binding("n", "names", "Names"),
        Binding("a", "aggregate", "Aggregate", show=False),
        Binding("o", "ports", "Host ports", show=False),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("w", "snapshot", "Write pcap", show=False),
        Binding("W", "snapshot_selection", "Write selection", show=False, key_display="W"),
        Binding("R", "record", "Record", show=False, key_display="R"),
        Binding("i", "inspect", "Inspect", show=False),
        Binding("I", "inspect_file", "Inspect pcap", show=False, key_display="I"),
        Binding("t", "time_range", "Time range", show=False),
        Binding("left_square_bracket", "rewind(-1)", "Back 1 s", show=False, key_display="["),
        Binding("right_square_bracket", "rewind(1)", "Forward 1 s", show=False, key_display="]"),
        Binding("left_curly_bracket", "rewind(-60)", "Back 1 min", show=False, key_display="{"),
        Binding("right_curly_bracket", "rewind(60)", "Forward 1 min", show=False, key_display="}"),
        Binding("L", "live", "Live", show=False, key_display="L"),
        Binding("exclamation_mark", "freeze_incident", "Incident", show=False, key_display="!"),
    ]
    ACTION_HELP = {
        "view(0)": "Overview: rates, top 5 pairs/ports/processes, drops, TCP, alerts",
        "view(1)": "Interfaces: link rates, errors, drops, state, 60 s sparklines",
        "view(2)": "Hosts: host pairs with 2 s / 10 s / 40 s averages (iftop)",
        "view(3)": "Ports: per protocol and service port",
        "view(4)": "Flows: 5-tuples, TCP health, latency, process (Enter: details)",
        "view(5)": "Drops: losses per layer, coverage, retrotap's own cost",
        "view(6)": "Processes: traffic per local process (this namespace)",
        "view(7)": "Latency: DNS/HTTP/MySQL response times, slowest requests",
        "view(8)": "History: session records of --sessions DIR or the recording",
        "time_range": "History: the time range (FROM [TO], 15m, all)",
        "view(9)": "Incidents: alerts now, incidents frozen (Enter: moment, i: pcap)",
        "text_filter": "Filter rows: host, network, port, service, protocol",
        "sort": "Sort by the next column",
        "reverse_sort": "Reverse the sort order",
        "pause": "Pause the display (capture continues)",
        "capture_filter": "Edit the capture filter (BPF, tcpdump syntax)",
        "names": "Show host names (reverse DNS, looked up in the background)",
        "aggregate": "Hosts: pairs / by source / by destination",
        "ports": "Hosts: show ports (host:port pairs)",
        "help": "This list of keys",
        "quit": "Quit",
        "record": "Start or stop recording to rotating pcap files (--record-dir)",
        "snapshot": "Write the buffered past (time machine) to a pcap",
        "snapshot_selection": "Write only the selected flow, host pair, host or port to a pcap",
        "inspect": "Inspect the selected flow, host pair, host or port (tshark)",
        "inspect_file": "Pick a pcap (--snapshot-dir, --record-dir) to inspect (tshark)",
        "rewind(-1)": "Rewind every view one second (--history; capture goes on)",
        "rewind(1)": "One second forward (past the newest: live)",
        "rewind(-60)": "Rewind every view one minute",
        "rewind(60)": "One minute forward (past the newest: live)",
        "live": "Back to live",
        "freeze_incident": "Freeze an incident now (incident.json, pcap of --pre/--post)",
    }
    EXTRA_KEYS = [
        ("Enter", "Flows, History: details; Incidents: the frozen moment"),
        ("↑ ↓ PgUp PgDn", "Move in the table"),
        ("← →", "Scroll a wide table sideways"),
        ("Tab", "Latency: the next table (services, servers, slowest)"),
        ("Escape", "Close a panel or prompt"),
        ("Ctrl+P", "Command palette: every action by name"),
    ]

    def __init__(
        self,
        engine: EngineLike,
        *,
        clock: Callable[[], float] = time.time,
        refresh_s: float = 1.0,
        resolver: Lookup | None = None,
        source: str = "",
        timemachine: TimeMachine | None = None,
        snapshot_dir: str = ".",
        record_dir: str = "retrotap-recording",
        inspect_limit: int = INSPECT_LIMIT,
        processes: ProcessMapper | None = None,
        run: Run | None = None,
        sessions_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        # The run owns the capture's parts and stops them; a test's parts get a run around them.
        self.capture_run = run or Run.around(engine, self._recorder_line, timemachine=timemachine, mapper=processes)
        self.processes = self.capture_run.mapper
        self.timemachine = self.capture_run.timemachine
        self.snapshot_dir = snapshot_dir
        self.record_dir = record_dir
        self.inspect_limit = inspect_limit
        self.last_snapshot = ""
        self._saved_note = ""
        self._saver = self.capture_run.pcap_saver(self._pcap_saved)
        if self._saver is not None:
            self._saver.directory = snapshot_dir
        self.clock = clock
        self.refresh_s = refresh_s if refresh_s > 0 else 1.0
        self.names = NameResolver(resolver) if resolver is not None else NameResolver()
        self.source = source
        self.snap: Snapshot = engine.snapshot
        self.prev: Snapshot | None = None
        self.base: Snapshot | None = None
        self.paused = False
        self.show_names = False
        self.text_query = ""
        self._query_before = ""
        self._closed = False
        self.history: HistoryRing | None = self.capture_run.history
        self.cursor: int | None = None  # rewound: the second shown (None: live)
        # The session records of a rewound second: (second, when read, the flows and owners or why none).
        self._store_flows: tuple[int, float, tuple[TableSnapshot, ProcessTable] | str] | None = None
        self.alerts: AlertStatus = EMPTY_ALERTS
        self._freezing: int | None = None  # incidents frozen before `!` was pressed, until the new one shows
        self._frozen_note = ""
        self.active = FIRST_VIEW
        engine.on_event = self._engine_event
        self.sessions = SessionHistory(
            lambda: self._sessions_dir(sessions_dir),
            self.timemachine,
            snapshot_dir,
            self._recorder_line,
            inspect_limit,
        )

    def _sessions_dir(self, given: str | None) -> str | None:
        """The History view's store: --sessions DIR, else the recording's directory while recording."""
        if given or self.capture_run.opts.exporters.sessions:
            return given or self.capture_run.opts.exporters.sessions
        return self.record_dir if self.capture_run.recording is not None else None

    # --- layout
    def compose(self) -> ComposeResult:
        yield ViewBar([(str(key), title) for key, (_, title) in VIEWS.items()], id="viewbar")
        yield StatusBar(id="status")
        yield ErrorBanner(id="error-banner")
        interfaces = InterfacesView(refresh=self.refresh_s, id="interfaces")
        with ContentSwitcher(initial=VIEWS[FIRST_VIEW][0], id="views"):
            yield OverviewView(interfaces.history, interfaces.samples, id="overview")
            yield interfaces
            yield HostsView(id="hosts")
            yield PortsView(id="ports")
            yield FlowsView(id="flows")
            yield DropsView(id="drops")
            yield ProcessesView(lambda: self.processes.result if self.processes else EMPTY_PROCESSES, id="processes")
            yield LatencyView(id="latency")
            yield HistoryView(self.sessions, id="history")
            yield IncidentsView(incident_rows, id="incidents")
        yield PromptBar(id="prompt")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(PromptBar).display = False
        if not self.engine.running:
            self.engine.start()
        if self.processes is not None and self.processes.snapshots is not None and not self.processes.running:
            self.processes.start()
        self.capture_run.start_history()
        self.set_interval(self.refresh_s, self.pull)
        self.action_view(FIRST_VIEW)
        self.pull()

    def on_unmount(self) -> None:
        self.close_engine()

    def close_engine(self) -> None:
        """Stop the run (engine, then a recording, the process mapper, exporters) and the name worker, once."""
        if not self._closed:
            self._closed = True
            self.capture_run.close()
            self.names.close()

    # --- the refresh: pull the newest snapshot, render the active view
    @property
    def view(self) -> View:
        """The view on screen."""
        return self.query_one(f"#{VIEWS[self.active][0]}", View)

    def pull(self) -> None:
        """Take the engine's newest snapshot (unless paused) and redraw what is on screen."""
        if not self.query(InterfacesView):  # the views are gone: quitting, a last timer tick
            return
        if not self.paused:
            snap = self.engine.snapshot
            if snap is not self.snap:
                restarted = snap.seq <= self.snap.seq or snap.started != self.snap.started
                self.prev = None if restarted else self.snap
                self.snap = snap
                if restarted or self.base is None:
                    self.base = snap
                self.query_one(InterfacesView).record(snap, self.prev)
            self.alerts = self.capture_run.alert_status
        self.render_view()

    def frame(self) -> Frame:
        """What the views render from now (or, rewound, from the second of the time cursor)."""
        known = self.names.known() if self.show_names else {}
        entry = self.rewound()
        processes = self.processes.result if self.processes is not None else None
        if entry is not None:
            processes = entry.processes
        owners = processes.owned.names if processes and self.text_query else ()
        query = Query.parse(self.text_query, known, owners)
        name = self.names.name if self.show_names else str
        if entry is not None:
            return self._rewound_frame(entry, query, name, processes)
        return Frame(
            snap=self.snap,
            prev=self.prev,
            base=self.base,
            now=self.clock(),
            query=query,
            name=name,
            processes=processes,
            alerts=self.alerts,
        )

    def _rewound_frame(
        self, entry: HistoryEntry, query: Query, name: Callable[[str], str], processes: ProcessTable | None
    ) -> Frame:
        """The frame of a kept second: its reduced snapshot, the session records of that second in the Flows
        view when there is a store, the minute up to it in the Interfaces view's sparklines."""
        snap, prev = entry.snap, entry.prev
        note = f"the {len(snap.flows)} busiest flows of that second, kept in memory"
        if self.capture_run.sessions is not None and (self.active == 4 or isinstance(self.screen, FlowDetail)):
            found = self._sessions_at(entry.second)
            if isinstance(found, str):
                note = f"{found}; {note}"
            else:  # the records' counts are over each record: no rate since the second before
                snap, prev, processes = replace(snap, flows=found[0]), None, found[1]
                note = f"{len(snap.flows)} sessions active then, from the session store ({self.capture_run.sessions})"
        past: tuple[tuple[Snapshot, Snapshot | None], ...] = ()
        if self.active == 1 and self.history is not None:
            entries = self.history.entries()
            upto = self._index(entries) + 1
            past = tuple((e.snap, e.prev) for e in entries[max(0, upto - HISTORY_SPARK_S) : upto])
        return Frame(
            snap=snap,
            prev=prev,
            base=self.base,
            now=entry.snap.time,
            past=past,
            query=query,
            name=name,
            processes=processes,
            asof=entry.time,
            processes_before=entry.processes_before,
            flows_note=note,
        )

    # --- the time cursor: every view shows a second of the history (--history) while capture goes on
    def rewound(self) -> HistoryEntry | None:
        """The second the cursor is on (the oldest kept when it has fallen off the history), None when live."""
        if self.cursor is None or self.history is None:
            return None
        entries = self.history.entries()
        if not entries:
            return None
        return entries[self._index(entries)]

    def _sessions_at(self, second: int) -> tuple[TableSnapshot, ProcessTable] | str:
        """The session records that overlap a second (read again after STORE_REREAD_S), or why there are none."""
        now = time.monotonic()
        cached = self._store_flows
        if cached is not None and cached[0] == second and now - cached[1] < STORE_REREAD_S:
            return cached[2]
        assert self.capture_run.sessions is not None
        result: tuple[TableSnapshot, ProcessTable] | str
        try:
            result = session_flows(self.capture_run.sessions, second * NS, (second + 1) * NS)
            if not len(result[0]):
                result = "no session record covers that second (yet: a flow's is written when it ends)"
        except UserError as e:  # the store is missing or unreadable: said, and the memory's flows shown
            result = str(e)
        self._store_flows = (second, now, result)
        return result

    def _index(self, entries: tuple[HistoryEntry, ...]) -> int:
        assert self.cursor is not None
        return max(0, bisect.bisect_right([e.second for e in entries], self.cursor) - 1)

    def action_rewind(self, seconds: int) -> None:
        """Move the time cursor: ±1 one kept second, else that many seconds (past the newest: live)."""
        entries = self.history.entries() if self.history is not None else ()
        if not entries:
            off = self.history is None
            self.notify("the history is off (--history 0)" if off else "no history yet", severity="warning")
            return
        if self.cursor is None:
            if seconds > 0:
                return
            here = len(entries) - 1  # the newest kept second is now
        else:
            here = self._index(entries)
        if abs(seconds) == 1:
            target = here + seconds
        else:
            kept = [e.second for e in entries]
            want = entries[here].second + seconds
            target = bisect.bisect_right(kept, want) - 1 if seconds < 0 else bisect.bisect_left(kept, want)
        self.cursor = None if target >= len(entries) else entries[max(0, target)].second
        self.render_view()

    def action_live(self) -> None:
        """Back to the live figures."""
        self.cursor = None
        self.render_view()

    def render_view(self) -> None:
        """Redraw the active view, the status line and an open flow detail."""
        banners = self.query(ErrorBanner)
        if not banners:  # a refresh timer firing while the app is being torn down
            return
        frame = self.frame()
        banners.first().show(frame.snap)
        self.view.show(frame)
        self._status(frame)
        if isinstance(self.screen, FlowDetail):
            self.screen.show(frame)

    def _status(self, frame: Frame) -> None:
        snap = self.snap  # the live figures, also while the views are rewound
        if snap.live:
            where = ",".join(i.name for i in snap.interfaces) or self.source
        else:
            where = f"file {self.source}" if self.source else "file"
        parts = [where, f"bpf: {snap.filter}" if snap.filter else "no capture filter"]
        parts.append(f"{count(snap.packets)} pkts {size(snap.bytes)}")
        view = self.view
        if isinstance(view, HostsView):
            parts.append(view.mode)
        if view.sort_key is not None:
            parts.append(f"sort {view.describe_sort()}")
        if frame.query:
            known = frame.query.unknown and not isinstance(view, HistoryView)  # History reads `/` itself
            unknown = f" (unknown: {' '.join(frame.query.unknown)})" if known else ""
            parts.append(f"/{frame.query.text}{unknown}")
        if isinstance(view, FlowsView):
            parts.append(f"{view.shown} of {view.matched} flows")
        parts.append(f"age {duration(max(0.0, self.clock() - snap.time))}")
        if self.history is not None and self.history.errors:
            parts.append(f"history: {self.history.errors} errors, {self.history.last_error}")
        if self.last_snapshot:
            parts.append(f"saved {self._saved_note}")
        if self._freezing is not None:
            parts.append(self._frozen())
        if self.capture_run.recording is not None:
            stats = self.capture_run.recording[0].stats
            parts.append(f"REC {self.record_dir} {count(stats.packets)} pkts {size(stats.bytes)}")
        asof = f"as of {clock_time(frame.asof, frame.snap.time)}" if frame.asof is not None else ""
        self.query_one(StatusBar).show(" │ ".join(parts), self.paused, self.show_names, asof)

    # --- engine events (posted from the capture thread)
    def _engine_event(self, event: EngineEvent) -> None:
        self.post_message(EngineNotice(event))

    def on_engine_notice(self, message: EngineNotice) -> None:
        event = message.event
        if event.kind == "ready":
            return
        severity = NOTICE_SEVERITY.get(event.kind, "information")
        self.notify(event.message, title=event.iface or "retrotap", severity=severity)  # type: ignore[arg-type]

    # --- actions
    def action_view(self, index: int) -> None:
        """Show the view with this key (VIEWS)."""
        self.active = index
        self.query_one(ContentSwitcher).current = VIEWS[index][0]
        self.query_one(ViewBar).activate(str(index))
        if not self.query_one(PromptBar).display:
            self.view.focus_table()
        self.render_view()
        self.call_after_refresh(self.render_view)  # again once the view has its size: as many rows as fit

    def on_resize(self) -> None:
        self.call_after_refresh(self.render_view)

    def on_snap_table_reshaped(self) -> None:
        self.call_after_refresh(self.render_view)

    def action_sort(self) -> None:
        """Sort the view by its next column."""
        self.view.cycle_sort()
        self.render_view()

    def action_reverse_sort(self) -> None:
        """Reverse the view's sort order."""
        self.view.reverse_sort()
        self.render_view()

    def action_pause(self) -> None:
        """Freeze the display; the capture goes on."""
        self.paused = not self.paused
        self.pull()

    def action_names(self) -> None:
        """Toggle host names."""
        self.show_names = not self.show_names
        self.render_view()

    def action_aggregate(self) -> None:
        """Hosts view: pairs, by source, by destination."""
        mode = self.query_one(HostsView).cycle_aggregate()
        self.notify(f"Hosts: {mode}", timeout=2)
        self.action_view(2)

    def action_ports(self) -> None:
        """Hosts view: show host:port pairs."""
        shown = self.query_one(HostsView).toggle_ports()
        self.notify(f"Hosts: ports {'shown' if shown else 'hidden'}", timeout=2)
        self.action_view(2)

    def action_record(self) -> None:
        """Start recording every packet from now on to rotating pcap files, or stop it."""
        if self.capture_run.recording is not None:
            self._stop_recording()
            return
        try:
            os.makedirs(self.record_dir, mode=0o700, exist_ok=True)
            options = RecordOptions(self.record_dir)
            self.capture_run.start_recording(options, self._recorder_failed, log=self._recorder_line)
        except ValueError as e:
            self.notify(str(e), severity="warning")
            return
        except (UserError, OSError) as e:  # RecordError: the directory cannot be recorded to
            self.notify(f"cannot record: {e}", severity="error")
            return
        self.notify(f"recording to {self.record_dir}", timeout=4)
        self.render_view()

    def _recorder_line(self, line: str) -> None:
        self.post_message(RecorderNote(line))

    def _recorder_failed(self, line: str) -> None:
        self.post_message(RecorderNote(line, failed=True))

    def _stop_recording(self) -> None:
        recorder = self.capture_run.stop_recording()
        if recorder is None:
            return
        self.notify(recorder.stats.summary(), timeout=8)
        self.render_view()

    def on_recorder_note(self, message: RecorderNote) -> None:
        self.notify(message.text, severity="error" if message.failed else "information", timeout=6)
        if message.failed:
            self._stop_recording()

    def action_snapshot(self) -> None:
        """Write the time machine's whole buffer to a pcap, off the UI and capture threads."""
        self._write_snapshot(None, "")

    def action_snapshot_selection(self) -> None:
        """Write the packets of the row under the cursor (Hosts, Ports, Flows or Latency view)."""
        if isinstance(self.view, HistoryView):
            self.view.write_selected()
            return
        picked = self._selected()
        if picked is not None:
            self._write_snapshot(picked.selector(), picked.describe())

    def _selected(self) -> Selection | None:
        """The selection of the row under the cursor (views 2, 3, 4, 7), or None after saying what to do."""
        picked = self.view.selection()
        if picked is None:
            self.notify("select a flow, host pair, host or port first (views 0, 2, 3, 4, 7)", severity="warning")
        return picked

    def action_inspect(self) -> None:
        """Decode the selected row's packets from the time machine in the packet inspector."""
        if isinstance(self.screen, (InspectorScreen, PcapPicker)):
            return
        if isinstance(self.view, HistoryView):
            self.view.write_selected(inspect=True)
            return
        if isinstance(self.view, IncidentsView):
            self._inspect_incident()
            return
        if self.timemachine is None:
            self.notify("the time machine is off (--buffer-size 0)", severity="warning")
            return
        picked = self._selected()
        if picked is not None:
            job = self.capture_run.inspect_job(picked.selector(), self.inspect_limit)
            assert job is not None  # the run has the time machine checked above
            self.push_screen(InspectorScreen(picked.describe(), job, self.inspect_limit))

    def action_inspect_file(self) -> None:
        """Pick a capture file of the snapshot or recording directory, then decode it in the packet inspector."""
        if isinstance(self.screen, (InspectorScreen, PcapPicker)):
            return
        files = capture_files([self.snapshot_dir, self.record_dir])
        if not files:
            self.notify(f"no snapshot in {self.snapshot_dir}: press w or W first", severity="warning")
            return
        self.push_screen(PcapPicker(files), self._inspect_picked)

    def _inspect_incident(self) -> None:
        """Open the pcap of the incident under the cursor (a picker when it has one per interface)."""
        path = self.query_one(IncidentsView).incident_path()
        if path is None:
            self.notify("select an incident first (an alert holding now has no pcap yet)", severity="warning")
            return
        files = capture_files([path])
        if not files:
            doc = read_incident(path) or {}
            why = (doc.get("pcap") or {}).get("error") or "its pcap is written once the --post window has passed"
            self.notify(f"no pcap in {path}: {why}", severity="warning")
        elif len(files) == 1:
            self._inspect_picked(files[0].path)
        else:
            self.push_screen(PcapPicker(files), self._inspect_picked)

    def on_incidents_view_selected(self, message: IncidentsView.Selected) -> None:
        doc = read_incident(message.path)
        if doc is None:
            self.notify(f"{message.path}: incident.json cannot be read", severity="error")
            return
        self.push_screen(IncidentPanel(message.path, doc))

    def action_freeze_incident(self) -> None:
        """Freeze an incident now (as a rule firing would): incident.json now, the pcap after --post."""
        before = self.capture_run.alert_status.incidents
        if not self.capture_run.freeze_incident("manual"):
            self.notify("this run has no incident watcher", severity="warning")
            return
        self._freezing = before
        self._frozen_note = f"freezing an incident in {self.capture_run.alert_status.directory}"
        self.notify(self._frozen_note, timeout=4)
        self.render_view()

    def _frozen(self) -> str:
        """The status bar's word on the last `!`: where the incident goes, once the watcher froze it."""
        alerts = self.capture_run.alert_status
        if self._freezing is not None and alerts.incidents > self._freezing:
            manual = [i for i in alerts.recent if i.rule == "manual"]
            if manual:
                post = self.capture_run.incident_post_s
                self._frozen_note = f"incident frozen: {manual[-1].path} (pcap after --post {post:g}s)"
                self._freezing = alerts.incidents  # said; a later `!` says its own
        return self._frozen_note

    def _inspect_picked(self, path: Path | None) -> None:
        """Open the file picked (None: the picker was closed)."""
        if path is not None:
            self.push_screen(InspectorScreen(path.name, file_job(path, self.inspect_limit), self.inspect_limit))

    def _write_snapshot(self, select: Selector | None, what: str) -> None:
        if self._saver is None:
            self.notify("the time machine is off (--buffer-size 0)", severity="warning")
        elif not self._saver.request(select, what):
            self.notify("a snapshot is already being written", severity="warning")

    def _pcap_saved(self, line: str, failed: bool, result: PcapSaveResult | None) -> None:
        self.post_message(PcapSaved(line, failed, result))

    def on_pcap_saved(self, message: PcapSaved) -> None:
        self.last_snapshot = message.text.removeprefix("snapshot: ")
        result = message.result
        if result is not None and result.paths:
            names = ", ".join(Path(p).name for p in result.paths)
            self._saved_note = f"{names} ({count(result.packets)} pkts, {size(result.bytes)})"
        else:
            self._saved_note = "failed" if message.failed else "nothing"
        self.notify(message.text, severity="error" if message.failed else "information", timeout=8)
        self.render_view()

    def action_help(self) -> None:
        """Show every key."""
        self.push_screen(HelpScreen(self.key_help()))

    def key_help(self) -> list[tuple[str, str]]:
        """(key, what it does) for every binding, then the keys that are not bindings of the app."""
        out = []
        for b in self.BINDINGS:
            assert isinstance(b, Binding)
            out.append((b.key_display or b.key, self.ACTION_HELP.get(b.action, b.description)))
        return out + self.EXTRA_KEYS

    def action_text_filter(self) -> None:
        """Open the `/` prompt (the rows narrow while typing)."""
        self._query_before = self.text_query
        self.query_one(PromptBar).ask("query", "/", self.text_query)

    def action_time_range(self) -> None:
        """History view: ask for the time range."""
        if VIEWS[self.active][0] == "history":
            self.query_one(PromptBar).ask(
                "history-time", "time range (FROM [TO], 15m, all):", self.query_one(HistoryView).window
            )

    def action_capture_filter(self) -> None:
        """Open the capture filter prompt."""
        self.query_one(PromptBar).ask("capture", "capture filter (BPF):", self.snap.filter)

    def on_prompt_bar_changed(self, message: PromptBar.Changed) -> None:
        if message.kind == "query":
            self.text_query = message.value
            self.render_view()

    def on_prompt_bar_submitted(self, message: PromptBar.Submitted) -> None:
        prompt = self.query_one(PromptBar)
        if message.kind == "query":
            self.text_query = message.value.strip()
        elif message.kind == "history-time":
            try:
                self.query_one(HistoryView).set_window(message.value)
            except UserError as e:  # TimeSpecError
                prompt.error(str(e))
                return
        elif message.kind == "capture":
            try:
                self.engine.set_filter(message.value.strip())
            except UserError as e:  # FilterError: libpcap or the kernel refused it
                prompt.error(str(e))
                return
            self.notify(f"capture filter: {message.value.strip() or 'none'}", timeout=3)
        prompt.close()
        self.view.focus_table()
        self.pull()

    def on_prompt_bar_cancelled(self, message: PromptBar.Cancelled) -> None:
        if message.kind == "query":
            self.text_query = self._query_before
        self.query_one(PromptBar).close()
        self.view.focus_table()
        self.render_view()

    def on_flows_view_selected(self, message: FlowsView.Selected) -> None:
        detail = FlowDetail(message.key)
        self.push_screen(detail)
        self.call_after_refresh(detail.show, self.frame())

    # --- command palette: the same actions by name
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for b in self.BINDINGS:
            assert isinstance(b, Binding)
            if b.action == "quit":
                continue
            yield SystemCommand(
                f"{b.description} ({b.key_display or b.key})",
                self.ACTION_HELP.get(b.action, b.description),
                lambda action=b.action: self.run_action(action),  # type: ignore[misc]
            )


def run_dashboard(
    args: argparse.Namespace, interfaces: list[str], ring: RingConfig, exporters: ExporterSettings | None = None
) -> int:
    """Open the capture (errors surface here, before the screen), then run the dashboard."""
    limits = CounterLimits(flows=max(1, args.flow_cap), flow_idle_s=args.flow_idle, analysis=not args.no_analysis)
    notes: list[str] = []  # exporters' messages, printed once the screen is gone
    check_dashboard_user(user_of(args))
    opts = RunOptions(
        interfaces=interfaces,
        read_file=args.read,
        realtime=args.realtime,
        filter_expr=args.filter,
        ring=ring,
        limits=limits,
        buffer_size=args.buffer_size,
        buffer_seconds=args.buffer_seconds,
        snapshot_dir=args.snapshot_dir,
        pcapng=args.pcapng,
        exporters=exporters or ExporterSettings(),
        processes=True,  # live only: a file's sockets are not this machine's
        user=user_of(args),
        history_seconds=args.history,
    )
    run = Run(opts, notes.append)
    run.open()
    app = RetrotapApp(
        run.engine,
        refresh_s=args.refresh or 1.0,
        source=Path(args.read).name if args.read else ",".join(interfaces),
        snapshot_dir=args.snapshot_dir,
        record_dir=args.record_dir,
        inspect_limit=args.inspect_limit,
        run=run,
    )
    try:
        app.run()
    finally:
        app.close_engine()
        for note in notes:
            print(f"retrotap: {note}", file=sys.stderr)
        for line in problems(run.snapshot):
            print(f"retrotap: error: {line}", file=sys.stderr)
    return app.return_code or run.exit_status
