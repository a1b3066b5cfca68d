"""One capture run for every front end (dashboard, stats, record, web).

`Run` builds the packet source (a live `Engine` or a `FileEngine`), the time machine, the recorder,
the exporters and the process mapper from one `RunOptions`, starts them, and stops them in one
order: the engine first (a last drain of the rings into the pool), then the recorder (it writes
what the pool still holds), the process mapper, and the exporters with the final snapshot.

What a front end does with a run goes through here too: `check_source` and `check_filter` (a user's
mistake surfaces before anything starts, or when `f` edits the filter), `Run.inspect_job` and
`file_job` (the packet inspector), `incident_rows` and `read_incident` (the Incidents view), the time
machine's selectors (`select_flow`, `select_pair`, `select_host`, `select_port`), `file_snapshots` (a
file's snapshots for tools and screenshots), and the `TimeMachine` and `ProcessMapper` types a run holds;
`SessionHistory`, what the History view does with the session store (query, one record, a session's packets
from the recording or the time machine).
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from capture_backend.analysis.decode import Decoded
from capture_backend.analysis.processes import ProcessMapper as ProcessMapper
from capture_backend.capture.block import LINKTYPE_ETHERNET as LINKTYPE_ETHERNET
from capture_backend.capture.bpf import compile_filter
from capture_backend.capture.heap import reuse_freed_memory
from capture_backend.capture.privileges import drop_privileges
from capture_backend.capture.threads import NamedThread
from capture_backend.contract import (
    EMPTY_ALERTS,
    INSPECT_LIMIT,
    PROTO_NUMBERS,
    AlertStatus,
    EventSink,
    InspectJob,
    PcapSaveResult,
    ProcessTable,
    SessionPage,
    SessionPcap,
    Snapshot,
    UserError,
)
from capture_backend.engine import Engine
from capture_backend.exporters.base import Exporters, recorder_counters, time_machine_counters
from capture_backend.exporters.incidents import IncidentSettings
from capture_backend.exporters.incidents import incident_rows as incident_rows
from capture_backend.exporters.incidents import read_incident as _read_incident
from capture_backend.options import ExporterSettings, RecordOptions
from capture_backend.options import RunOptions as RunOptions
from capture_backend.replay import FileEngine
from capture_backend.replay import file_snapshots as file_snapshots
from capture_backend.rewind.export import export as export_packets
from capture_backend.rewind.history import HistoryEntry as HistoryEntry
from capture_backend.rewind.history import HistoryRing as HistoryRing
from capture_backend.rewind.history import HistoryThread
from capture_backend.rewind.history import data_time as data_time
from capture_backend.rewind.history import session_flows as session_flows
from capture_backend.rewind.index import RECORDING_NAME
from capture_backend.rewind.inspect import file_job as file_job
from capture_backend.rewind.inspect import selection_job
from capture_backend.rewind.recorder import Recorder, RecorderThread
from capture_backend.rewind.session_report import public as public_session
from capture_backend.rewind.sessions import SORTS as SESSION_SORTS
from capture_backend.rewind.sessions import Query as SessionQuery
from capture_backend.rewind.sessions import SessionStore, filter_query, session_export, window_of
from capture_backend.rewind.timemachine import Selector as Selector
from capture_backend.rewind.timemachine import TimeMachine as TimeMachine
from capture_backend.rewind.timemachine import save_pcap
from capture_backend.rewind.timemachine import select_flow as select_flow
from capture_backend.rewind.timemachine import select_host as select_host
from capture_backend.rewind.timemachine import select_pair as select_pair
from capture_backend.rewind.timemachine import select_port as select_port

Log = Callable[[str], None]
# Imported on first use deep inside libraries: loaded before root is dropped (-Z), since the user may not be
# allowed to read the interpreter's files (a Python under /root).
LATE_IMPORTS = ("numpy.ma", "pyroute2.netlink.exceptions", "sqlite3", "shutil", "encodings.idna")
METRICS_MODULE = "capture_backend.exporters.metrics"  # imported when the exporters start, after the drop


class EngineLike(Protocol):
    """What a run needs of its packet source (Engine, FileEngine, a test's snapshot feed)."""

    snapshot: Snapshot

    def close(self) -> None: ...


# What a pcap save reports when it ends: its line, whether it failed, and the result when it did not.
SaveDone = Callable[[str, bool, PcapSaveResult | None], None]


def read_incident(path: str) -> dict[str, Any] | None:
    """An incident directory's incident.json (None when it cannot be read); incident_rows lists a directory's."""
    return _read_incident(Path(path))


def check_filter(expr: str, linktype: int = LINKTYPE_ETHERNET) -> None:
    """Compile a capture filter as the engines do; FilterError (a UserError) when libpcap refuses it."""
    if expr.strip():
        compile_filter(expr, linktype)


def check_source(opts: RunOptions) -> None:
    """Open and close the packet source (interfaces or file) with its filter: a user's mistake raises here."""
    engine: Engine | FileEngine
    if opts.read_file:
        engine = FileEngine(opts.read_file, filter_expr=opts.filter_expr)
    else:
        engine = Engine(opts.interfaces, filter_expr=opts.filter_expr, ring=opts.ring)
    engine.open()
    engine.close()


class PcapSaver:
    """Writes the time machine (or a selection of it) to a pcap (or a pcapng) on its own thread, one save at a
    time."""

    def __init__(
        self,
        tm: TimeMachine,
        directory: str,
        done: SaveDone,
        *,
        pcapng: bool = False,
        processes: Callable[[], ProcessTable | None] | None = None,
    ) -> None:
        self.tm = tm
        self.directory = directory
        self.done = done
        self.pcapng = pcapng  # one pcapng of every interface, packets commented with their process
        self.processes = processes
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def request(self, select: Selector | None = None, what: str = "") -> bool:
        """Start a save; False (and nothing started) while one is still being written."""
        if self.busy:
            return False
        self._thread = NamedThread(target=self._save, args=(select, what), name="retrotap-pcap", daemon=True)
        self._thread.start()
        return True

    def _save(self, select: Selector | None, what: str) -> None:
        try:
            table = self.processes() if self.pcapng and self.processes is not None else None
            result = save_pcap(self.tm, self.directory, select=select, pcapng=self.pcapng, processes=table)
            self.done(result.summary() + (f" [{what}]" if what else ""), False, result)
        except OSError as e:
            where = getattr(e, "filename", "") or self.directory
            self.done(f"snapshot failed: {e.strerror or e}: {where}", True, None)
        except Exception as e:  # reported, never silent: the next save must still work
            self.done(f"snapshot failed: {type(e).__name__}: {e}", True, None)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


class Run:
    """A capture run: `open()` (errors surface here, before anything starts), `start()`, `close()`.

    Used as a context manager, `with Run(...) as run:` opens it and closes it on the way out.
    """

    def __init__(self, opts: RunOptions, log: Log, on_event: EventSink | None = None) -> None:
        self.opts = opts
        self.log = log
        reuse_freed_memory()
        self.timemachine = TimeMachine(opts.buffer_size, opts.buffer_seconds) if opts.buffer_size else None
        sinks = [self.timemachine] if self.timemachine is not None else []
        self.engine: Engine | FileEngine
        if opts.read_file:
            self.engine = FileEngine(
                opts.read_file,
                filter_expr=opts.filter_expr,
                limits=opts.limits,
                realtime=opts.realtime,
                block_sinks=sinks,
            )
        else:
            self.engine = Engine(
                opts.interfaces,
                filter_expr=opts.filter_expr,
                ring=opts.ring,
                limits=opts.limits,
                publish_interval=opts.publish_interval,
                block_sinks=sinks,
                on_event=on_event,
            )
        live = not opts.read_file
        self.mapper = ProcessMapper(lambda: self.engine.snapshot) if opts.processes and live else None
        exporters = opts.exporters
        if exporters.incidents is None:  # no rules: floods and scans are still named, `!` still freezes
            exporters = replace(exporters, incidents=IncidentSettings(directory=opts.snapshot_dir))
        self.exporters = Exporters(
            exporters,
            lambda: self.engine.snapshot,
            log,
            processes=lambda: self.mapper.result if self.mapper is not None else None,
            timemachine=self.timemachine,
        )
        self.recording: tuple[Recorder, RecorderThread] | None = None
        self.history = HistoryRing(int(opts.history_seconds)) if opts.history_seconds >= 1 else None
        self._history_thread = self._history_of(self.history)
        self._opened = self._started = self._closed = False

    def _history_of(self, ring: HistoryRing | None) -> HistoryThread | None:
        if ring is None:
            return None
        return HistoryThread(ring, lambda: self.engine.snapshot, self._process_table)

    def _process_table(self) -> ProcessTable | None:
        return self.mapper.result if self.mapper is not None else None

    @classmethod
    def around(
        cls,
        engine: Engine | FileEngine | EngineLike,
        log: Log,
        *,
        timemachine: TimeMachine | None = None,
        mapper: ProcessMapper | None = None,
        snapshot_dir: str = ".",
        history: HistoryRing | None = None,
        sessions: str | None = None,
    ) -> Run:
        """A run over parts built elsewhere (tests, screenshots: a snapshot feed instead of a capture)."""
        run = cls.__new__(cls)
        run.opts = RunOptions(snapshot_dir=snapshot_dir, buffer_size=0, exporters=ExporterSettings(sessions=sessions))
        run.log = log
        run.timemachine = timemachine
        run.engine = engine  # type: ignore[assignment]
        run.mapper = mapper
        run.exporters = Exporters(ExporterSettings(), lambda: run.engine.snapshot, log)
        run.recording = None
        run.history = history
        run._history_thread = run._history_of(history)
        run._opened = run._started = run._closed = False
        return run

    @property
    def sessions(self) -> str | None:
        """The session store's directory (--sessions), None without one."""
        return self.opts.exporters.sessions

    @property
    def snapshot(self) -> Snapshot:
        """The newest published snapshot."""
        return self.engine.snapshot

    @property
    def alert_status(self) -> AlertStatus:
        """The newest published alert status (rules holding, incidents, floods and scans)."""
        watcher = self.exporters.incidents
        return watcher.status if watcher is not None else EMPTY_ALERTS

    @property
    def incident_post_s(self) -> float:
        """Seconds after a trigger an incident's pcap waits for (--post)."""
        watcher = self.exporters.incidents
        return watcher.settings.post_s if watcher is not None else 0.0

    def freeze_incident(self, reason: str = "manual") -> bool:
        """Freeze an incident now (`!`, SIGUSR2); False when the run has no incident watcher."""
        return self.exporters.freeze(reason)

    def open(self) -> None:
        """Open the source (rings or file) and the recorder, start the exporters; nothing captures yet."""
        self.engine.open()
        self._opened = True
        try:
            if self.opts.user is not None:  # the rings and netlink sockets are open: nothing below needs root
                for name in LATE_IMPORTS + (METRICS_MODULE,) * bool(self.opts.exporters.metrics):
                    importlib.import_module(name)
                drop_privileges(self.opts.user)
                if isinstance(self.engine, Engine):
                    self.engine.dropped_to = self.opts.user.name
            if self.timemachine is not None:
                self.exporters.extra.update(time_machine_counters(self.timemachine))
            if self.opts.record is not None:
                recorder = self.start_recording(self.opts.record, self.log, from_now=False)
                self.exporters.extra.update(recorder_counters(recorder.stats))
            self.exporters.start()
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """Start capturing (and mapping processes)."""
        self._started = True
        self.engine.start()
        if self.mapper is not None:
            self.mapper.start()
        self.start_history()

    def start_history(self) -> None:
        """Start keeping the per-second history (--history), if it is on and not started yet."""
        if self._history_thread is not None:
            self._history_thread.start()

    def start_recording(
        self, options: RecordOptions, on_error: Log, *, from_now: bool = True, log: Log | None = None
    ) -> Recorder:
        """Record every packet the time machine gets to rotating files (from now on, or from its start)."""
        if self.timemachine is None:
            raise ValueError("recording needs the time machine (--buffer-size 0 turns it off)")
        recorder = Recorder(options, log or self.log)
        recorder.start()
        thread = RecorderThread(self.timemachine, recorder, on_error=on_error)
        if from_now:
            thread.skip_to_now()
        thread.start()
        self.recording = (recorder, thread)
        return recorder

    def stop_recording(self) -> Recorder | None:
        """Write what the pool still holds and close the files; the recorder, if one was running."""
        if self.recording is None:
            return None
        recorder, thread = self.recording
        self.recording = None
        thread.stop()
        recorder.close()
        return recorder

    def pcap_saver(self, done: SaveDone) -> PcapSaver | None:
        """A saver of the time machine to --snapshot-dir (None when the time machine is off)."""
        if self.timemachine is None:
            return None
        return PcapSaver(
            self.timemachine,
            self.opts.snapshot_dir,
            done,
            pcapng=self.opts.pcapng,
            processes=lambda: self.mapper.result if self.mapper is not None else None,
        )

    def inspect_job(self, select: Selector, limit: int = INSPECT_LIMIT) -> InspectJob | None:
        """The packet inspector's job over a selection of the time machine (None when it is off)."""
        if self.timemachine is None:
            return None
        return selection_job(self.timemachine, select, limit)

    def close(self) -> None:
        """Stop everything in order (once): engine, recorder, process mapper, history, exporters."""
        if self._closed:
            return
        self._closed = True
        self.engine.close()
        self.stop_recording()
        if self.mapper is not None:
            self.mapper.close()
        if self._history_thread is not None:
            self._history_thread.stop()
        self.exporters.stop(self.engine.snapshot)

    @property
    def exit_status(self) -> int:
        """1 when the capture loop failed and had to be restarted, or a writer (session store, incidents) lost
        what it had to write; else 0."""
        return 1 if self.engine.snapshot.restarts or self.exporters.failed else 0

    def __enter__(self) -> Run:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


HISTORY_TOP = 500  # records the History view fetches per query (it says how many more matched)


def _recording_files(directory: Path) -> bool:
    """Whether a directory holds files `retrotap record` wrote (not retrotap's own snapshots)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    return any(RECORDING_NAME.match(n) and not n.startswith("retrotap-") for n in names)


class SessionHistory:
    """What the History view does with a session store, each call on the caller's (worker) thread and each
    failure a UserError of one line: a page of records (the `/` filter and time range read as `retrotap
    sessions` reads its options), one record, and a session's packets written to a pcap, from the recording
    beside the store when it holds them, else from the time machine."""

    sorts = tuple(SESSION_SORTS)

    def __init__(
        self,
        directory: Callable[[], str | None],
        timemachine: TimeMachine | None,
        output_dir: str,
        log: Log,
        inspect_limit: int = INSPECT_LIMIT,
    ) -> None:
        self.directory = directory
        self.timemachine = timemachine
        self.output_dir = output_dir
        self.log = log
        self.inspect_limit = inspect_limit

    def available(self) -> bool:
        """Whether there is a store to read (--sessions DIR, or a recording's directory)."""
        return self.directory() is not None

    def _store(self) -> SessionStore:
        directory = self.directory()
        if directory is None:
            raise UserError("no session store: run with --sessions DIR, or record")
        return SessionStore(directory, writable=False)

    def check_window(self, text: str) -> None:
        """TimeSpecError (one line) when the `t` prompt's text is not a time range."""
        window_of(text, time.time_ns())

    def page(
        self, text: str, window: str, sort: str, reverse: bool, now_ns: int | None, top: int = HISTORY_TOP
    ) -> SessionPage:
        """The records of the window (before now_ns; None: before the store's newest record) that match text."""
        with self._store() as store:
            if now_ns is None:
                now_ns = store.newest_start() or time.time_ns()
            from_ns, to_ns = window_of(window, now_ns)
            q = filter_query(text, SessionQuery(from_ns=from_ns, to_ns=to_ns, sort=sort, reverse=reverse, top=top))
            rows = store.query(q)
            matched = store.matching(q) if len(rows) >= top else len(rows)
        return SessionPage(tuple(public_session(r) for r in rows), matched, from_ns, to_ns)

    def record(self, session_id: int) -> dict[str, object] | None:
        """One record as `retrotap sessions --format json` prints it (None: gone, e.g. retention)."""
        with self._store() as store:
            rec = store.session(session_id)
        return None if rec is None else public_session(rec)

    def write(self, session_id: int) -> SessionPcap:
        """The session's packets in a pcap of output_dir: from the recording when it holds them, else from the
        time machine; UserError saying why neither could."""
        with self._store() as store:
            rec = store.session(session_id)
            where = store.path.parent
        if rec is None:
            raise UserError(f"session {session_id} is no longer in the store")
        if _recording_files(where):
            output = str(Path(self.output_dir) / f"retrotap-session-{session_id}.pcap")
            res = export_packets(session_export(str(where), session_id, output), self.log)
            if res.packets:
                return SessionPcap(res.paths, res.packets, res.bytes, "recording")
            for path in res.paths:
                os.unlink(path)
        tm = self.timemachine
        spans = tm.window() if tm is not None else []
        start, end = rec["start_ns"], rec["end_ns"]
        if tm is not None and any(s.first_ns <= end and s.last_ns >= start for s in spans):
            proto = PROTO_NUMBERS.get(rec["proto"]) or int(rec["proto"])
            flow = select_flow(proto, rec["src"], rec["sport"], rec["dst"], rec["dport"])

            def select(dec: Decoded) -> np.ndarray:
                return flow(dec) & (dec.ts_ns >= start) & (dec.ts_ns <= end)

            result = save_pcap(tm, self.output_dir, select=select)
            if result.packets:
                return SessionPcap(result.paths, result.packets, result.bytes, "time machine")
        recorded = "none in the recording" if _recording_files(where) else "no recording"
        if tm is None:
            held = "the time machine is off"
        elif spans:
            oldest = time.strftime("%H:%M:%S", time.localtime(min(s.first_ns for s in spans) // 1_000_000_000))
            held = f"none in the time machine (it holds {oldest} on)"
        else:
            held = "the time machine is empty"
        raise UserError(f"session {session_id}: {recorded} in {where}, {held}")

    def inspect_job(self, path: str) -> InspectJob:
        """The packet inspector's job over a written pcap."""
        return file_job(Path(path), self.inspect_limit)
