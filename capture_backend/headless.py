"""The headless front end: `retrotap stats` (records every interval as text, iftop -t style, NDJSON or CSV),
`retrotap record`, `retrotap export` (`run_export`: rewind/export's, with the processes of the recording's
session store for a pcapng) and `retrotap sessions` (`run_sessions`, re-exported from rewind/session_report)."""

from __future__ import annotations

import csv
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

import numpy as np

from capture_backend.analysis.tables import NS
from capture_backend.capture.netlink import ListedLink, list_interfaces
from capture_backend.capture.pcapfile import CaptureFileError, FileSource
from capture_backend.contract import EngineEvent, Snapshot
from capture_backend.engine import Counting, Engine, file_statuses, filter_blocks
from capture_backend.exporters.base import Exporters
from capture_backend.exporters.incidents import incident_rows
from capture_backend.options import RecordOptions, RunOptions
from capture_backend.options import RecordRun as RecordRun
from capture_backend.options import StatsOptions as StatsOptions
from capture_backend.output.report import Row, alert_rows, bits_text, record, size_text
from capture_backend.rewind.aggregates import MINUTE_NS
from capture_backend.rewind.export import ExportOptions
from capture_backend.rewind.export import run_export as export_recording
from capture_backend.rewind.recorder import Recorder
from capture_backend.rewind.session_report import run_sessions as run_sessions
from capture_backend.rewind.sessions import END_OF_TIME, SessionStore, SessionStoreError, session_owners
from capture_backend.run import PcapSaver, Run, SaveDone

CSV_COLUMNS = (
    "kind time name state addr a b proto port service src sport dst dport packets bytes malformed "
    "rx_bytes tx_bytes rx_packets tx_packets a_to_b_bytes b_to_a_bytes received kernel_drops freeze_count "
    "rx_errors tx_errors rx_dropped tx_dropped rx_missed rx_fifo tx_fifo first last tcp_flags"
).split()


class Output:
    """Writes records to a stream in one format."""

    def __init__(self, fmt: str, stream: TextIO) -> None:
        self.fmt = fmt
        self.stream = stream
        self._csv: csv.DictWriter[str] | None = None

    def write(self, rec: Row) -> None:
        {"json": self._json, "csv": self._csv_rows, "text": self._text}[self.fmt](rec)
        self.stream.flush()

    def _json(self, rec: Row) -> None:
        self.stream.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def _csv_rows(self, rec: Row) -> None:
        if self._csv is None:
            self._csv = csv.DictWriter(self.stream, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
            self._csv.writeheader()
        t = rec["time"]
        totals = dict(rec["totals"], **rec.get("capture", {}))
        self._csv.writerow({"kind": "total", "time": t, **totals})
        for kind, key in (("interface", "interfaces"), ("host", "hosts"), ("pair", "pairs"), ("port", "ports")):
            for row in rec[key]:
                self._csv.writerow({"kind": kind, "time": t, **row})
        for row in rec["flows"]:
            self._csv.writerow({"kind": "flow", "time": t, **row})

    def _text(self, rec: Row) -> None:
        w = self.stream.write
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["time"]))
        tot = rec["totals"]
        cap = rec.get("capture")
        drops = f"  kernel drops {cap['kernel_drops']}" if cap else ""
        w(f"# {stamp}  interval {rec['interval']:.2f}s  packets {tot['packets']}  ")
        w(f"bytes {size_text(tot['bytes'])}  malformed {tot['malformed']}{drops}\n")
        w(f"{'':4}{'Host name (port/service if enabled)':<44}{'last 2s':>11}{'last 10s':>11}{'last 40s':>11}")
        w(f"{'cumulative':>12}\n")
        w("-" * 93 + "\n")
        for n, p in enumerate(rec["pairs"], 1):
            for arrow, addr, d, total in (("=>", p["a"], "a_to_b", p["a_to_b_bytes"]), ("<=", p["b"], "b_to_a", 0)):
                bps = p[f"{d}_bps"]
                cum = size_text(p[f"{d}_bytes"]) if total or d == "b_to_a" else ""
                rates = "".join(f"{bits_text(bps[w_]):>11}" for w_ in ("2s", "10s", "40s"))
                w(f"{n if arrow == '=>' else '':>3} {addr:<40}{arrow:>4}{rates}{cum:>12}\n")
        w("-" * 93 + "\n")
        if rec["ports"]:
            w(
                "Ports: "
                + ", ".join(
                    f"{p['proto']}/{p['port']}"
                    + (f" ({p['service']})" if p["service"] else "")
                    + f" {size_text(p['bytes'])}"
                    for p in rec["ports"]
                )
                + "\n"
            )
        services = rec.get("latency", {}).get("services", [])
        if services:
            w(
                "Latency: "
                + ", ".join(
                    f"{r['kind']} {r['proto']}/{r['port']} n={r['exchanges']} p50 {r['p50_ms']:.1f}ms"
                    f" p95 {r['p95_ms']:.1f}ms max {r['max_ms']:.1f}ms"
                    for r in services
                )
                + "\n"
            )
        for iface in rec["interfaces"]:
            w(f"Interface {iface['name']} ({iface['state']}): captured {iface['captured_packets']} packets")
            if "rx_missed" in iface:
                w(f", link errors {iface['rx_errors']}/{iface['tx_errors']} dropped {iface['rx_dropped']}")
                w(f" missed {iface['rx_missed']} fifo {iface['rx_fifo']}")
            w("\n")
        w("=" * 93 + "\n")


SIGNAL_POLL_S = 0.05
# A headless run's unasked snapshots (for the exporters and the process mapper): one per record interval,
# within these bounds.
HEADLESS_PUBLISH_INTERVAL = 1.0
MIN_PUBLISH_INTERVAL = 0.25


class Signals:
    """SIGINT/SIGTERM ask the loops to end after one last record; SIGUSR1 asks for a snapshot, SIGUSR2 for an
    incident."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.stop = False
        self.snapshot = False
        self.incident = False

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._set("stop"))
        signal.signal(signal.SIGUSR1, lambda *_: self._set("snapshot"))
        signal.signal(signal.SIGUSR2, lambda *_: self._set("incident"))

    def _set(self, what: str) -> None:
        # The handler runs on the main thread between two bytecodes, maybe while that thread holds the lock
        # inside `wake` (in Event.wait): setting the Event here could deadlock it. Only a flag is set; wait()
        # looks at the flags between its slices.
        setattr(self, what, True)

    @property
    def raised(self) -> bool:
        """A signal came that the loop has not handled yet."""
        return self.stop or self.snapshot or self.incident

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s for a signal (or another thread's `wake`); True if one came.

        The kernel may deliver a signal to any thread; Python then runs the handler only when the main
        thread next runs bytecode, which a long blocking wait would postpone. Short slices bound that.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.raised:
                return True
            left = deadline - time.monotonic()
            if self.wake.wait(min(max(left, 0.0), SIGNAL_POLL_S)):
                self.wake.clear()
                return True
            if left <= SIGNAL_POLL_S:
                return self.raised


# Engine events a headless run prints on stderr as they happen.
LOGGED_EVENTS = frozenset({"error", "iface-gone", "iface-error", "iface-down", "iface-up"})


def event_logger(log: Callable[[str], None]) -> Callable[[EngineEvent], None]:
    """An engine event callback that prints the events a person running headless must see."""

    def on_event(event: EngineEvent) -> None:
        if event.kind in LOGGED_EVENTS:
            log(("error: " if event.kind in ("error", "iface-error") else "") + event.message)

    return on_event


def capture_status(snap: Snapshot, log: Callable[[str], None]) -> int:
    """Exit status of a live run: 1 (and a line saying why) when the capture loop had to be restarted."""
    if not snap.restarts:
        return 0
    log(f"error: the capture loop failed {snap.restarts} time(s) and was restarted; last: {snap.last_error}")
    return 1


def _run_options(opts: StatsOptions | RecordRun, processes: bool, record: RecordOptions | None) -> RunOptions:
    # Nothing shows the snapshots between records: publishing them at the dashboard's 4 a second would copy
    # every table (tens of milliseconds each under a flood) for nobody.
    interval = (opts.interval if isinstance(opts, StatsOptions) else None) or HEADLESS_PUBLISH_INTERVAL
    return RunOptions(
        interfaces=opts.interfaces,
        filter_expr=opts.filter_expr,
        ring=opts.ring,
        limits=opts.limits,
        buffer_size=opts.buffer_size,
        buffer_seconds=opts.buffer_seconds,
        snapshot_dir=opts.snapshot_dir,
        pcapng=opts.pcapng,
        exporters=opts.exporters,
        user=opts.user,
        processes=processes or opts.pcapng,  # a pcapng save names the process of each flow
        record=record,
        publish_interval=max(MIN_PUBLISH_INTERVAL, min(interval, HEADLESS_PUBLISH_INTERVAL)),
    )


def _save_logger(log: Callable[[str], None]) -> SaveDone:
    return lambda line, failed, result: log(line)


def _save_pcap(run: Run, saver: PcapSaver | None, log: Callable[[str], None]) -> None:
    """SIGUSR1: write the time machine to a pcap (off the main and capture threads)."""
    if saver is None:
        log("snapshot: the time machine is off (--buffer-size 0)")
    elif not saver.request():
        log("snapshot: one is already being written")


def _signalled(signals: Signals, run: Run, saver: PcapSaver | None, log: Callable[[str], None]) -> None:
    """What SIGUSR1 and SIGUSR2 ask of a live run."""
    if signals.snapshot:
        signals.snapshot = False
        _save_pcap(run, saver, log)
    if signals.incident:
        signals.incident = False
        if not run.exporters.freeze("signal"):
            log("incident: no incidents without --alert, --alerts or --incidents DIR")


def _with_alerts(rec: Row, run: Run) -> Row:
    """The record, with the alert rules holding now, the incidents frozen so far and the flood/scan figures."""
    if run.exporters.incidents is not None:
        rec["alerts"] = alert_rows(run.alert_status)
    return rec


def run_live(opts: StatsOptions, out: Output, signals: Signals, log: Callable[[str], None]) -> int:
    """Capture live, writing a record every interval until count, SIGINT or SIGTERM."""
    # Reading the socket table costs ~10 ms of interpreter time a second (more with many processes):
    # only the JSON output and the session records show processes, so only they pay for them.
    # Session records name the process of each flow too.
    processes = opts.fmt == "json" or opts.exporters.sessions is not None
    run = Run(_run_options(opts, processes, None), log, on_event=event_logger(log))
    saver = run.pcap_saver(_save_logger(log))
    engine = run.engine
    assert isinstance(engine, Engine)
    with run:
        run.start()
        engine.ready.wait(10)
        log(f"listening on {', '.join(opts.interfaces)}" + _filter_note(opts.filter_expr))
        interval = opts.interval or 1.0
        prev: Snapshot | None = None
        written = 0
        next_at = time.monotonic() + interval
        while not signals.stop and not (opts.count and written >= opts.count):
            if signals.wait(next_at - time.monotonic()):
                _signalled(signals, run, saver, log)
                continue
            next_at += interval
            snap = engine.fresh_snapshot()
            mapped = run.mapper.result if run.mapper is not None else None
            out.write(_with_alerts(record(snap, prev, opts.top, mapped), run))
            prev = snap
            written += 1
        stopped = signals.stop
        engine.close()  # drain the rings
        if stopped:  # by a signal: one last record, processes attributed with a fresh socket table
            final = None
            if run.mapper is not None:
                run.mapper.close()
                run.mapper.refresh()
                final = run.mapper.update(run.snapshot)
            out.write(record(run.snapshot, prev, opts.top, final))
    if saver is not None:
        saver.join()
    return max(capture_status(run.snapshot, log), run.exit_status)


def _file_snapshots(opts: StatsOptions, source: FileSource, counting: Counting) -> Iterator[tuple[Snapshot, bool]]:
    """A snapshot at each interval boundary of packet time that packets cross (to print), at each minute's
    when session records are kept (for the per-minute aggregates only), and one at the end (to print)."""
    interval = int(opts.interval * NS) if opts.interval else 0
    steps = [step for step in (interval, MINUTE_NS if opts.exporters.sessions else 0) if step]

    def after(t: int) -> int:
        return min((t // step + 1) * step for step in steps)

    boundary = 0
    for block in filter_blocks(source.blocks(), opts.filter_expr):
        while steps and len(block):
            if boundary == 0:
                boundary = after(int(block.ts_ns[0]))
            later = block.ts_ns >= boundary
            if not later.any():
                break
            cut = int(np.argmax(later))
            counting.add(block.take(slice(0, cut)))
            block = block.take(slice(cut, None))
            printed = bool(interval) and not boundary % interval
            yield counting.freeze(file_statuses(counting), time.thread_time(), {}), printed
            boundary = after(int(block.ts_ns[0]))
        counting.add(block)
    yield counting.freeze(file_statuses(counting), time.thread_time(), {}), True


def run_file(opts: StatsOptions, out: Output, signals: Signals, log: Callable[[str], None]) -> int:
    """Read a capture file as fast as possible through the same decode and counters."""
    assert opts.read_file is not None
    with FileSource(opts.read_file) as source:
        counting = Counting(opts.limits, False, opts.filter_expr, time.time)
        latest = [counting.freeze(file_statuses(counting), 0.0, {})]
        exporters = Exporters(opts.exporters, lambda: latest[0], log, fed=True)
        exporters.start()
        prev: Snapshot | None = None
        written = 0
        try:
            for snap, printed in _file_snapshots(opts, source, counting):
                latest[0] = snap
                exporters.offer(snap)
                if not printed:
                    continue
                out.write(record(snap, prev, opts.top))
                prev = snap
                written += 1
                if (opts.count and written >= opts.count) or signals.stop:
                    break
        except CaptureFileError as e:  # report what was read before the damage, then fail
            latest[0] = counting.freeze(file_statuses(counting), time.thread_time(), {})
            out.write(record(latest[0], prev, opts.top))
            log(f"error: {e}")
            return 2
        finally:
            exporters.stop(latest[0])
        if source.truncated:
            log(f"warning: {source.truncated}")
    return 1 if exporters.failed else 0


MINUTE_ABSENT = ("cpu_seconds", "restarts", "last_error")  # of a live record's `capture`


def run_minutes(opts: StatsOptions, out: Output, log: Callable[[str], None]) -> int:
    """`retrotap stats DIR --from T1 --to T2`: a record per stored minute of the window, as a live run's.

    The counts are the minute's (a live record's are cumulative), the rates the minute's means; see
    rewind/aggregates.py for what a minute keeps.
    """
    assert opts.directory is not None
    start, end = opts.window
    with SessionStore(opts.directory, writable=False) as store:
        minutes = store.minutes(start, end)
    if not minutes:
        span = f"from {_clock(start)} to {_clock(end)}" if start else f"up to {_clock(end)}"
        log(f"error: no per-minute records in {store.path} {span}")
        return 1
    for m in minutes:
        rec = record(m.snap, m.prev, opts.top, m.processes)
        rec["flow_table"]["active"] = m.flows_active
        for key in MINUTE_ABSENT:  # not kept per minute: left out rather than shown as 0
            rec.get("capture", {}).pop(key, None)
        rec.pop("process_mapper", None)
        out.write(rec)
    return 0


def _clock(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(min(ns, END_OF_TIME) / NS))


def run_stats(opts: StatsOptions, stream: TextIO = sys.stdout, log: Callable[[str], None] | None = None) -> int:
    """Entry point of `retrotap stats` once options are parsed and checked."""
    logger = log or (lambda msg: print(f"retrotap: {msg}", file=sys.stderr, flush=True))
    signals = Signals()
    signals.install()
    out = Output(opts.fmt, stream)
    if opts.directory is not None:
        return run_minutes(opts, out, logger)
    if opts.read_file:
        return run_file(opts, out, signals, logger)
    return run_live(opts, out, signals, logger)


_LOG_LOCK = threading.Lock()


def _stderr_log(msg: str) -> None:
    """One whole line on stderr; the recorder, snapshot and main threads all log."""
    with _LOG_LOCK:
        sys.stderr.write(f"retrotap: {msg}\n")
        sys.stderr.flush()


def run_export(opts: ExportOptions, list_only: bool = False, log: Callable[[str], None] | None = None) -> int:
    """`retrotap export`; a pcapng names each flow's process as its store of session records knows it."""
    logger = log or _stderr_log
    if opts.pcapng and not list_only and opts.owners is None:
        try:
            opts.owners = session_owners(opts.directory, opts.from_ns, opts.to_ns)
        except SessionStoreError as e:
            logger(f"no process comments: {e}")
        if opts.owners is None:
            logger(f"no process comments: no session store in {opts.directory}")
    return export_recording(opts, list_only, logger)


def run_record(opts: RecordRun, log: Callable[[str], None] | None = None) -> int:
    """Entry point of `retrotap record`: capture into the time machine, the recorder thread writes files."""
    logger = log or _stderr_log
    signals = Signals()
    signals.install()
    if opts.read_file:
        return _record_file(opts, signals, logger)
    run = Run(
        _run_options(opts, opts.exporters.sessions is not None, opts.record), logger, on_event=event_logger(logger)
    )
    saver = run.pcap_saver(_save_logger(logger))
    with run:
        recorder, thread = run.recording or (None, None)
        assert recorder is not None and thread is not None
        thread.on_error = lambda _: signals.wake.set()
        run.start()
        run.engine.ready.wait(10)
        names = ", ".join(opts.interfaces)
        logger(f"listening on {names}, recording to {opts.record.directory}" + _filter_note(opts.filter_expr))
        while not signals.stop and thread.error is None:
            if signals.wait(1.0):
                _signalled(signals, run, saver, logger)
        error = thread.error
    if saver is not None:
        saver.join()
    if error is not None:
        logger(f"error: {error}")
    snap = run.snapshot
    logger(
        f"{recorder.stats.summary()}; captured {snap.packets} packets, kernel drops {snap.kernel_drops}, "
        f"capture restarts {snap.restarts}"
    )
    status = max(capture_status(snap, logger), run.exit_status)
    if recorder.stats.unwritten_packets:  # the disk was full: packets are missing from the recording
        status = 1
    return 1 if error is not None else status


def _filter_note(expr: str) -> str:
    return f" (filter: {expr})" if expr else ""


def _record_file(opts: RecordRun, signals: Signals, log: Callable[[str], None]) -> int:
    """Record a capture file's packets as if they arrived now (rotation and retention by packet time)."""
    assert opts.read_file is not None
    with FileSource(opts.read_file) as source:
        newest = [0]
        recorder = Recorder(opts.record, log, clock=lambda: newest[0])
        recorder.start()
        status = 0
        try:
            for block in filter_blocks(source.blocks(), opts.filter_expr):
                if signals.stop:
                    break
                if len(block):
                    newest[0] = max(newest[0], int(block.ts_ns.max()))
                    recorder.write(block)
        except CaptureFileError as e:
            log(f"error: {e}")
            status = 2
        finally:
            recorder.close()
        if source.truncated:
            log(f"warning: {source.truncated}")
    log(recorder.stats.summary())
    return status


def interface_row(link: ListedLink) -> dict[str, object]:
    """One interface of `retrotap interfaces --format json`."""
    return {
        "namespace": link.namespace or None,
        "process": link.process or None,
        "container": link.container or None,
        "interface": link.name,
        "capture": link.spec,
        "index": link.index,
        "state": link.state,
        "linktype": link.linktype,
        "kind": link.kind or None,
        "peer": None
        if link.peer is None and not link.unnamed_peer
        else {"namespace": link.peer_namespace or None, "interface": link.peer, "capture": link.peer_spec}
        | ({"unnamed": link.unnamed_peer} if link.unnamed_peer else {}),
    }


def run_interfaces(fmt: str = "text", stream: TextIO = sys.stdout) -> int:
    """`retrotap interfaces` (`--list-interfaces`): every interface of every network namespace found."""
    links = list_interfaces()
    if fmt == "json":
        for link in links:
            stream.write(json.dumps(interface_row(link)) + "\n")
        return 0
    header = ("CAPTURE AS (-i)", "STATE", "TYPE", "KIND", "PEER", "NAMESPACE")
    rows = [
        (
            link.spec,
            link.state,
            link.linktype,
            link.kind or "-",
            link.peer_spec or link.unnamed_peer or "-",
            (link.namespace or "(current)")
            + (f" [{link.process}]" if link.process else "")
            + (f" {link.container}" if link.container else ""),
        )
        for link in links
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        stream.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
    return 0


def run_incidents(directory: str, fmt: str = "text", stream: TextIO = sys.stdout) -> int:
    """`retrotap incidents DIR`: the incidents frozen in DIR, oldest first."""
    rows = incident_rows(directory)
    if fmt == "json":
        for row in rows:
            stream.write(json.dumps(row) + "\n")
        return 0
    if not rows:
        stream.write(f"no incidents in {directory}\n")
        return 0
    for row in rows:
        if "error" in row:
            stream.write(f"?                    {row['path']}: {row['error']}\n")
            continue
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["time"] or 0))
        top = row["top"]
        what = f"{top['label'] or row['rule']}={top['value']:.6g}" if top else "-"
        kept = f"{row['packets']} packets" if row["packets"] is not None else row["pcap_error"] or "-"
        stream.write(f"{stamp}  {row['rule']:<16} {what:<32} {kept:<16} {row['path']}\n")
    return 0
