"""Incidents: when an alert rule fires (or on request: SIGUSR2, `!`), freeze the moment in a directory.

`incident-<UTC>-<rule>/` holds `incident.json` (the rule, the rows and values that fired it, and the
run's record of that moment: totals, interfaces, top hosts, pairs, ports, flows, processes, TCP health,
latency, drops) and, once the `post` seconds after the trigger have passed, the time machine's packets
from `pre` seconds before the trigger to `post` after: one pcapng of every interface whose packets of
flows with a known local process carry it as a comment (`--incidents-format pcap`: one pcap per interface).
The watcher runs on its own thread and reads published snapshots only; saves and `--on-incident` commands
run on it too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from capture_backend.capture.threads import NamedThread
from capture_backend.contract import (
    EMPTY_ALERTS,
    PACE_FACTOR,
    ActiveAlert,
    AlertStatus,
    Churn,
    IncidentInfo,
    ProcessTable,
    Snapshot,
)
from capture_backend.exporters.alerts import NS, Alerts, Firing, Rule, Sample, churn
from capture_backend.output.report import drop_rows, record
from capture_backend.rewind.timemachine import TimeMachine, save_pcap

INCIDENT_FILE = "incident.json"
INCIDENT_PREFIX = "incident-"
MANUAL = "manual"
SAMPLE_SECONDS = 1.0  # rules compare snapshots about this far apart, or further when a look is dear (PACE_FACTOR)
POLL_S = 0.25
TOP = 10
Log = Callable[[str], None]


@dataclass(frozen=True)
class IncidentSettings:
    """--alert/--alerts rules, --incidents DIR, --pre, --post, --on-incident, --incidents-keep,
    --incidents-format."""

    rules: tuple[Rule, ...] = ()
    directory: str = "."
    pre_s: float = 60.0
    post_s: float = 10.0
    on_incident: str = ""
    keep: int = 100  # incidents kept in the directory (the oldest are removed)
    keep_age_s: float = 0.0  # incidents older than this are removed (0: kept whatever their age)
    pcapng: bool = True  # one pcapng with process comments; False: one pcap per interface


@dataclass
class IncidentStats:
    """What the watcher did, for /metrics, the JSON and the exit line."""

    incidents: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    last_error: str = ""


@dataclass
class _Pending:
    path: Path
    firing: Firing
    due: float  # monotonic time the post window ends
    doc: dict[str, Any]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "rule"


def incident_dir(directory: str | Path, when_ns: int, rule: str) -> Path:
    """DIR/incident-<UTC time>-<rule>"""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when_ns // NS)) + f".{when_ns % NS // 1000:06d}Z"
    return Path(directory) / f"{INCIDENT_PREFIX}{stamp}-{_slug(rule)}"


def firing_doc(f: Firing) -> dict[str, Any]:
    """The rule and what made it fire, as incident.json and the JSON output give it."""
    r = f.rule
    return {
        "rule": r.name,
        "expr": r.text,
        "metric": r.metric,
        "op": r.op,
        "threshold": r.threshold,
        "for_s": r.hold_s,
        "time": f.time_ns / NS,
        "rows": [{"label": lab, "value": val} for lab, val in zip(f.labels, f.values, strict=True)],
    }


class IncidentWatcher:
    """Evaluates the rules over the run's snapshots and freezes incidents, on a thread of its own."""

    def __init__(
        self,
        settings: IncidentSettings,
        source: Callable[[], Snapshot],
        timemachine: TimeMachine | None,
        log: Log,
        processes: Callable[[], ProcessTable | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.source = source
        self.timemachine = timemachine
        self.log = log
        self.processes = processes
        self.clock = clock
        self.alerts = Alerts(list(settings.rules))
        self.stats = IncidentStats()
        self.status: AlertStatus = replace(
            EMPTY_ALERTS, rules=tuple(r.name for r in settings.rules), directory=settings.directory
        )  # published by one assignment
        self._recent: list[IncidentInfo] = []
        self._churn = Churn()
        self._pending: list[_Pending] = []
        self._asked: list[str] = []  # manual freezes asked for, by reason
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prev: Snapshot | None = None
        self._seen_seq = -1
        self._alert_errors = 0
        self.look_cpu = 0.0  # CPU seconds the last look at the rules took

    def start(self, thread: bool = True) -> None:
        """Watch from a thread of its own; without `thread`, the caller calls step() with every snapshot (files)."""
        Path(self.settings.directory).mkdir(parents=True, exist_ok=True)
        if thread:
            self._thread = NamedThread(target=self._loop, name="retrotap-incidents", daemon=True)
            self._thread.start()

    def freeze(self, reason: str = MANUAL) -> None:
        """Freeze an incident now, whatever the rules say (SIGUSR2, `!`)."""
        with self._lock:
            self._asked.append(reason)

    def close(self) -> None:
        """Stop watching; incidents waiting for their post window are written with what the pool holds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._finish(everything=True)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.step()
            except Exception as e:  # counted and said; the watcher goes on
                self._error(f"incidents: {type(e).__name__}: {e}")

    def step(self) -> None:
        """One look at the newest snapshot (the thread calls it; tests may call it directly)."""
        snap = self.source()
        with self._lock:
            asked, self._asked = self._asked, []
        for reason in asked:
            self._open(Firing(Rule(reason, "", "", "", 0.0, text=reason), _now_ns(snap), (), ()), snap)
        if snap.seq != self._seen_seq:
            self._seen_seq = snap.seq
            prev = self._prev
            if prev is None or prev.seq > snap.seq:
                self._prev = snap
            elif _seconds(snap, prev) >= max(SAMPLE_SECONDS, PACE_FACTOR * self.look_cpu):
                started = time.thread_time()
                sample = Sample(snap, prev)
                self._churn = churn(sample)
                for firing in self.alerts.feed(sample):
                    self._open(firing, snap)
                self._prev = snap
                self.look_cpu = time.thread_time() - started
                self._publish()
                if self.alerts.errors != self._alert_errors:
                    self._alert_errors = self.alerts.errors
                    self._error(self.alerts.last_error)
        self._finish()

    def _open(self, firing: Firing, snap: Snapshot) -> None:
        path = incident_dir(self.settings.directory, firing.time_ns, firing.rule.name)
        processes = self.processes() if self.processes is not None else None
        before = self._prev if self._prev is not snap else None
        doc: dict[str, Any] = {
            "incident": firing_doc(firing),
            "pre_s": self.settings.pre_s,
            "post_s": self.settings.post_s,
            "pcap": None,
            "record": record(snap, before, TOP, processes),
            "drops": drop_rows(snap, before),
        }
        try:
            path.mkdir(parents=True, exist_ok=False)
            _write_json(path / INCIDENT_FILE, doc)
        except OSError as e:
            self._error(f"incident {path}: {e.strerror or e}")
            return
        self.stats.incidents += 1
        self.stats.by_rule[firing.rule.name] = self.stats.by_rule.get(firing.rule.name, 0) + 1
        self._recent = [*self._recent, IncidentInfo(firing.time_ns / NS, firing.rule.name, str(path), None)][-TOP:]
        self._publish()
        shown = zip(firing.labels[:3], firing.values[:3], strict=True)
        what = ", ".join(f"{lab or firing.rule.metric}={val:.6g}" for lab, val in shown)
        self.log(f"incident {firing.rule.name}{': ' + what if what else ''} -> {path}")
        self._pending.append(_Pending(path, firing, self.clock() + self.settings.post_s, doc))

    def _finish(self, everything: bool = False) -> None:
        now = self.clock()
        due = [p for p in self._pending if everything or p.due <= now]
        self._pending = [p for p in self._pending if p not in due]
        for p in due:
            self._freeze_packets(p)
            self._retain()
            if self.settings.on_incident:
                self._run_command(p.path)

    def _freeze_packets(self, p: _Pending) -> None:
        if self.timemachine is None:
            p.doc["pcap"] = {"error": "the time machine is off (--buffer-size 0): no packets kept"}
        else:
            since = p.firing.time_ns - int(self.settings.pre_s * NS)
            until = p.firing.time_ns + int(self.settings.post_s * NS)
            try:
                res = save_pcap(
                    self.timemachine,
                    p.path,
                    since_ns=since,
                    until_ns=until,
                    now_ns=p.firing.time_ns,
                    pcapng=self.settings.pcapng,
                    processes=self.processes() if self.processes is not None else None,
                )
                p.doc["pcap"] = {
                    "files": [os.path.basename(f) for f in res.paths],
                    "packets": res.packets,
                    "bytes": res.bytes,
                    "lost": res.lost,
                    "process_comments": res.comments,
                    "from": since / NS,
                    "to": until / NS,
                }
            except OSError as e:
                p.doc["pcap"] = {"error": f"{e.strerror or e}"}
                self._error(f"incident {p.path}: pcap: {e.strerror or e}")
        try:
            _write_json(p.path / INCIDENT_FILE, p.doc)
        except OSError as e:
            self._error(f"incident {p.path}: {e.strerror or e}")
        packets = p.doc["pcap"].get("packets")
        self._recent = [replace(i, packets=packets) if i.path == str(p.path) else i for i in self._recent]
        self._publish()

    def _publish(self) -> None:
        active = tuple(
            ActiveAlert(
                name,
                f.rule.text,
                (self.alerts.states[name].holding_since or f.time_ns / NS),
                tuple(zip(f.labels, f.values, strict=True)),
            )
            for name, f in self.alerts.active.items()
        )
        self.status = replace(
            self.status,
            active=active,
            incidents=self.stats.incidents,
            recent=tuple(self._recent),
            errors=self.stats.errors,
            last_error=self.stats.last_error,
            churn=self._churn,
        )

    def _retain(self) -> None:
        """Remove the oldest incidents beyond --incidents-keep, and those older than --incidents-keep-age."""
        done = sorted(incidents(self.settings.directory))  # the names sort by time
        doomed = done[: max(len(done) - self.settings.keep, 0)]
        if self.settings.keep_age_s:
            cutoff = time.time() - self.settings.keep_age_s
            doomed += [p for p in done[len(doomed) :] if _mtime(p) < cutoff]
        for old in doomed:
            shutil.rmtree(old, ignore_errors=True)

    def _run_command(self, path: Path) -> None:
        argv = [*shlex.split(self.settings.on_incident), str(path)]
        try:
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            self._error(f"--on-incident {argv[0]}: {e.strerror or e}")

    def _error(self, message: str) -> None:
        self.stats.errors += 1
        self.stats.last_error = message
        self.log(f"error: {message}")
        self._publish()


def _mtime(path: Path) -> float:
    try:
        return (path / INCIDENT_FILE).stat().st_mtime
    except OSError:
        return 0.0


def _seconds(snap: Snapshot, prev: Snapshot) -> float:
    return snap.time - prev.time if snap.live else (snap.last_ns - prev.last_ns) / NS


def _now_ns(snap: Snapshot) -> int:
    return int(snap.time * NS) if snap.live else snap.last_ns


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(path)


def incidents(directory: str | Path) -> Iterator[Path]:
    """The incident directories in `directory` (any order)."""
    try:
        entries = list(Path(directory).iterdir())
    except FileNotFoundError:
        return
    for p in entries:
        if p.name.startswith(INCIDENT_PREFIX) and (p / INCIDENT_FILE).is_file():
            yield p


def read_incident(path: Path) -> dict[str, Any] | None:
    """An incident's incident.json, or None when it cannot be read."""
    try:
        doc = json.loads((path / INCIDENT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def incident_rows(directory: str | Path) -> list[dict[str, Any]]:
    """One row per incident in `directory`, oldest first: time, rule, what fired it, packets kept, path."""
    rows: list[dict[str, Any]] = []
    for path in sorted(incidents(directory)):
        doc = read_incident(path)
        if doc is None:
            rows.append({"path": str(path), "error": f"{INCIDENT_FILE} unreadable"})
            continue
        inc: dict[str, Any] = doc.get("incident", {})
        pcap: dict[str, Any] = doc.get("pcap") or {}
        top = inc.get("rows") or []
        rows.append(
            {
                "time": inc.get("time"),
                "rule": inc.get("rule"),
                "expr": inc.get("expr"),
                "top": top[0] if top else None,
                "packets": pcap.get("packets"),
                "files": pcap.get("files", []),
                "pcap_error": pcap.get("error", "" if doc.get("pcap") is not None else "post window not written"),
                "path": str(path),
            }
        )
    return rows
