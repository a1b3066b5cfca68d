"""The real dashboard up during a lab burst: kernel drops, captured, and its CPU per packet.

Run as root from the repository root::

    python -m bench.dashboard_bench --size 64 1400 --count 2000000

For each size, a fresh ``retrotap -i VETH_A`` (``python -m tui.cli``) runs inside namespace a,
pinned to core 1, in a detached 160x50 tmux session.  Once the screen shows the dashboard, view 4
(Flows) is selected and the same trafgen burst as bench/capture_bench.py is sent from veth b (core 0,
many source ports so there are many flows).  Then view 5 (Drops) is selected and the kernel ring drops
and captured counts are read off the screen (polled, bounded), and ``q`` quits.  The dashboard's CPU
is that of all its python process's threads, ended ones included (capture_bench.proc_cpu), from "dashboard
shown" to "counts read".  Only lab traffic: the lab is destroyed and the tmux session killed even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.capture_bench import (
    SENDER_CORE,
    TOOL_CORE,
    _fmt,
    core_busy,
    machine,
    proc_cpu,
    send_burst,
    trafgen_config,
)
from bench.common import need_root
from tests.lab import REPO_ROOT, Lab, LabError, cleanup_stale

READY_TIMEOUT = 60.0
SETTLE_TIMEOUT = 30.0
EXIT_TIMEOUT = 15.0
POLL = 0.2
_COVERAGE_RE = re.compile(r"link rx ([\d,]+), ring ([\d,]+), captured ([\d,]+)\)")
_KERNEL_DROPS_RE = re.compile(r"Kernel ring\W+drops\W+(\S+)\W+([\d,]+)")


def tmux(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one tmux command on the bench's own server socket."""
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10, check=check)


def screen(session: str) -> str:
    """The visible pane text."""
    return tmux("capture-pane", "-p", "-t", session).stdout


def wait_screen(session: str, pred: Any, timeout: float, what: str) -> str:
    """Poll the pane until `pred(text)` holds; raise with the last screen after `timeout`."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = screen(session)
        if pred(text):
            return text
        time.sleep(POLL)
    raise LabError(f"dashboard: no {what} within {timeout}s; screen:\n{text}")


def _descendants(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            out.extend(_descendants(int(child)))
    return out


def dashboard_pid(session: str, timeout: float = 10.0) -> int:
    """The python process under the tmux pane (sh -> env -> ip netns exec -> taskset exec into python)."""
    pane = int(tmux("display-message", "-p", "-t", session, "#{pane_pid}").stdout.strip())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _descendants(pane):
            try:
                if Path(f"/proc/{pid}/comm").read_text().startswith("python"):
                    return pid
            except FileNotFoundError:
                continue
        time.sleep(POLL)
    raise LabError(f"no python process under tmux pane {pane}")


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def drops_counts(text: str) -> tuple[int, int, int, int] | None:
    """(link rx, ring received, captured, kernel ring drops) from the Drops view, or None if not shown."""
    cov = _COVERAGE_RE.search(text)
    drops = _KERNEL_DROPS_RE.search(text)
    if cov is None or drops is None:
        return None
    return _int(cov.group(1)), _int(cov.group(2)), _int(cov.group(3)), _int(drops.group(2))


@dataclass
class Run:
    """One dashboard on one burst."""

    size: int
    requested: int
    sent: int
    link_rx: int
    offered_pps: float
    screen_link_rx: int
    ring_received: int
    captured: int
    kernel_drops: int
    dashboard_cpu_seconds: float  # python process, all threads, dashboard shown -> counts read
    seconds_to_settle: float  # burst end -> Drops view shows every packet the link received
    core1_other_seconds: float
    exit_status: int | None
    command: str
    flows_screen: str = ""  # the Flows view as the burst ended
    notes: list[str] = field(default_factory=list)

    @property
    def ns_per_packet(self) -> float:
        return self.dashboard_cpu_seconds / self.sent * 1e9 if self.sent else float("nan")


def run_dashboard(lab: Lab, conf: Path, size: int, count: int, refresh: float) -> Run:
    """Start the dashboard in tmux, burst with view 4 shown, read view 5, quit."""
    session = f"rtdash-{os.getpid()}-{size}"
    inner = (f"env -u COLUMNS -u LINES ip netns exec {shlex.quote(lab.ns_a)} taskset -c {TOOL_CORE} "
             f"{shlex.quote(sys.executable)} -m tui.cli -i {shlex.quote(lab.veth_a)} --refresh {refresh}; "
             "echo retrotap-exit=$?; sleep 30")  # keep the pane so the exit status is readable
    tmux("new-session", "-d", "-x", "160", "-y", "50", "-s", session, "-c", str(REPO_ROOT), inner)
    notes: list[str] = []
    try:
        wait_screen(session, lambda t: "Interfaces" in t and lab.veth_a in t, READY_TIMEOUT, "dashboard")
        pid = dashboard_pid(session)
        tmux("send-keys", "-t", session, "4")
        wait_screen(session, lambda t: "SPort" in t and "DPort" in t, 10.0, "Flows view")
        cpu0, core1_0 = proc_cpu(pid), core_busy(int(TOOL_CORE))
        burst = send_burst(lab, conf, count)
        burst_end = time.monotonic()
        flows_screen = screen(session)
        tmux("send-keys", "-t", session, "5")
        # Bounded poll until the Drops view accounts for every packet veth a received (captured + dropped).
        deadline = burst_end + SETTLE_TIMEOUT
        got = None
        while time.monotonic() < deadline:
            got = drops_counts(screen(session))
            if got is not None and got[0] >= burst.link_rx and got[2] + got[3] >= burst.link_rx:
                break
            time.sleep(POLL)
        settle = time.monotonic() - burst_end
        cpu1, core1_1 = proc_cpu(pid), core_busy(int(TOOL_CORE))
        text = screen(session)
        got = drops_counts(text)
        if got is None:
            raise LabError(f"Drops view not readable; screen:\n{text}")
        if got[2] + got[3] < burst.link_rx:
            notes.append(f"screen still short of link rx after {SETTLE_TIMEOUT}s")
        if lab.ip4_b not in flows_screen:
            notes.append("the Flows view showed no flow from veth b as the burst ended")
        tmux("send-keys", "-t", session, "q")
        status = None
        try:
            done = wait_screen(session, lambda t: "retrotap-exit=" in t, EXIT_TIMEOUT, "exit after q")
            status = int(done.split("retrotap-exit=", 1)[1].split()[0])
        except LabError:
            notes.append("did not exit within 15 s of q")
        if status:
            notes.append(f"exit status {status}")
    finally:
        tmux("kill-session", "-t", session, check=False)
    cpu = cpu1 - cpu0
    return Run(
        size=size, requested=count, sent=burst.sent, link_rx=burst.link_rx, offered_pps=round(burst.offered_pps),
        screen_link_rx=got[0], ring_received=got[1], captured=got[2], kernel_drops=got[3],
        dashboard_cpu_seconds=round(cpu, 4), seconds_to_settle=round(settle, 2),
        core1_other_seconds=round(max(0.0, core1_1 - core1_0 - cpu), 2), exit_status=status,
        command=inner.split(";")[0], flows_screen=flows_screen, notes=notes,
    )


def refresh_figures(timeout: float = 600.0) -> str:
    """bench/dashboard_refresh.py's output (in-process refresh cost with 100 and 100 000 flows)."""
    done = subprocess.run([sys.executable, "bench/dashboard_refresh.py"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)
    return done.stdout.strip() or done.stderr.strip()


def table(runs: Sequence[Run]) -> str:
    """Every run as a Markdown table."""
    lines = ["| size B | sent | offered pps | link rx | captured (screen) | kernel ring drops (screen) "
             "| dashboard CPU s | dashboard CPU ns/pkt | settle s | other load on core 1 s |",
             "|" + "---|" * 10]
    for r in runs:
        lines.append(
            f"| {r.size} | {r.sent:,} | {r.offered_pps:,.0f} | {r.link_rx:,} | {r.captured:,} | {r.kernel_drops:,} "
            f"| {r.dashboard_cpu_seconds:.3f} | {_fmt(r.ns_per_packet)} | {r.seconds_to_settle:.1f} "
            f"| {r.core1_other_seconds:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.dashboard_bench", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, nargs="+", default=[64, 1400], help="frame sizes (default 64 1400)")
    p.add_argument("--count", type=int, default=2_000_000, help="frames per burst (default 2000000)")
    p.add_argument("--flows", type=int, default=1024, help="distinct UDP source ports (default 1024)")
    p.add_argument("--refresh", type=float, default=1.0, help="dashboard --refresh (default 1)")
    p.add_argument("--no-refresh-bench", action="store_true", help="skip bench/dashboard_refresh.py")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if not 0 < args.count <= 50_000_000:
        p.error("--count must be between 1 and 50000000")
    if not 1 <= args.flows <= 4096:
        p.error("--flows must be between 1 and 4096")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the dashboard on each burst size and print the table."""
    args = parse_args(argv)
    if not need_root("dashboard_bench"):
        return 2
    cleanup_stale()
    runs: list[Run] = []
    with Lab() as lab:
        for size in args.size:
            conf = lab.tmpdir() / f"udp-{size}.cfg"
            conf.write_text(trafgen_config(lab, size, args.flows))
            run = run_dashboard(lab, conf, size, args.count, args.refresh)
            runs.append(run)
            print(f"# size {size}: sent {run.sent:,} at {run.offered_pps:,.0f} pps, captured {run.captured:,}, "
                  f"drops {run.kernel_drops:,}, CPU {run.dashboard_cpu_seconds:.3f} s"
                  + (f" ({'; '.join(run.notes)})" if run.notes else ""), file=sys.stderr, flush=True)
    print(f"\nmachine: {machine()}")
    print(f"dashboard on core {TOOL_CORE}, trafgen on core {SENDER_CORE}; {args.count:,} frames per burst, "
          f"{args.flows} flows, view 4 during the burst, view 5 read after\n")
    print(table(runs))
    refresh = "" if args.no_refresh_bench else refresh_figures()
    if refresh:
        print("\nbench/dashboard_refresh.py:\n" + refresh)
    if args.json:
        doc = {"bench": "dashboard", "argv": sys.argv, "machine": machine(), "options": vars(args),
               "runs": [dict(asdict(r), ns_per_packet=r.ns_per_packet) for r in runs], "refresh": refresh}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
