"""Soak: every scene of tests/scenes.py in rotation for N minutes, under every retrotap mode at once.

On veth a of one netns lab, all at the same time:

* `tcpdump -U -w` (the reference),
* `retrotap stats --format json --metrics 127.0.0.1:PORT --ipfix 127.0.0.1:PORT` (with an IPFIX collector
  that counts datagrams, and /metrics scraped every report),
* `retrotap record -w DIR --metrics 127.0.0.1:PORT` (rotating files, checked by tshark as they close),
* the dashboard (`retrotap -i VETH`) in tmux, its snapshot age read off the screen.

Every `--report-every` minutes, between two scenes (traffic quiet), it prints one row: packets tcpdump
wrote vs what stats counted vs what record wrote, kernel drops, capture restarts, RSS of each retrotap
process, CPU per packet, files checked by tshark, the dashboard's snapshot age. At the end the recorded
files must hold tcpdump's frames packet for packet.

    sudo python -m bench.soak --minutes 30 --json soak.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.common import need_root, write_json
from tests.captures import PCAP_MAGIC, SETTLE_S, read_pcap
from tests.lab import REPO_ROOT, Lab, LabError, wait_for_output
from tests.scenes import Dns, Flood, Lossy, Mixed, Scan, Scene, Web, quiesce
from tests.tmux import Tmux

RETROTAP = [sys.executable, "-m", "tui.cli"]
STATS_PORT, RECORD_PORT, IPFIX_PORT = 9481, 9482, 4739

# The collector counts IPFIX datagrams and writes the count to a file every half second.
COLLECTOR = """
import os, socket, sys, time, threading
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
n = [0, 0]
def save():
    while True:  # replaced whole, never truncated in place: a reader never finds it empty
        open(sys.argv[2] + ".tmp", "w").write(f"{n[0]} {n[1]}")
        os.replace(sys.argv[2] + ".tmp", sys.argv[2])
        time.sleep(0.5)
threading.Thread(target=save, daemon=True).start()
print("ready", flush=True)
while True:
    data = s.recv(65536)
    n[0] += 1
    n[1] += len(data)
"""


def rotation() -> list[Scene]:
    """The scenes of one round: full-size real traffic, the flood at a rate one capture thread keeps up with."""
    return [Web(), Dns(timeout=300), Lossy(), Flood(packets=100_000, rate=20_000), Scan(), Mixed()]


class PcapCounter:
    """Counts the whole records of a pcap file that is still being written, reading only what is new."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 24
        self.records = 0
        self.order = ""

    def count(self) -> int:
        if not self.path.exists():
            return self.records
        with open(self.path, "rb") as fh:
            if not self.order:
                head = fh.read(4)
                if len(head) < 4:
                    return 0
                self.order = "<" if struct.unpack("<I", head)[0] in PCAP_MAGIC else ">"
            fh.seek(self.offset)
            data = fh.read()
        at = 0
        while at + 16 <= len(data):
            caplen = struct.unpack_from(f"{self.order}I", data, at + 8)[0]
            if at + 16 + caplen > len(data):
                break
            at += 16 + caplen
            self.records += 1
        self.offset += at
        return self.records


def frames(path: Path) -> list[tuple[int, bytes]]:
    """(original length, data) of every record of a classic pcap."""
    return [(orig, data) for _, orig, data in read_pcap(path)]


class LastLine:
    """Keeps the newest line a process prints on stdout (a reader thread)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.line = ""
        self.lines = 0
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.line = line
            self.lines += 1

    def newer_than(self, after: float, timeout: float = 30.0) -> dict[str, Any]:
        """The first record with a time after `after`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.line:
                rec: dict[str, Any] = json.loads(self.line)
                if rec["time"] > after:
                    return rec
            time.sleep(0.2)
        raise LabError(f"no stats record after {after} within {timeout} s")


def scrape(lab: Lab, port: int) -> dict[str, float]:
    """/metrics of a process in namespace a, as {name{labels}: value}."""
    body = lab.exec_a(["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{port}/metrics"]).stdout
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric(values: dict[str, float], name: str) -> int:
    """The sum of a family's samples."""
    return int(sum(v for k, v in values.items() if k == name or k.startswith(name + "{")))


@dataclass
class Proc:
    """A retrotap process whose memory and CPU are followed."""

    name: str
    pid: int
    cpu0: float = 0.0
    rss_mb: list[float] = field(default_factory=list)

    def sample(self) -> tuple[float, float]:
        p = psutil.Process(self.pid)
        t = p.cpu_times()
        rss = p.memory_info().rss / 1e6
        self.rss_mb.append(rss)
        return rss, t.user + t.system


def dashboard_pid(tmux: Tmux) -> int:
    """The retrotap process inside the tmux pane."""
    pane = int(tmux.run("display-message", "-p", "-t", tmux.name, "#{pane_pid}").strip())
    root = psutil.Process(pane)
    for p in [root, *root.children(recursive=True)]:
        if any("tui.cli" in part or part.endswith("retrotap") for part in p.cmdline()):
            return p.pid
    raise LabError(f"no retrotap process under tmux pane {pane}")


def dashboard_age(tmux: Tmux) -> float | None:
    """The snapshot age on the dashboard's status line, in seconds."""
    m = re.search(r"age (\d+(?:\.\d+)?)s", tmux.pane())
    return float(m.group(1)) if m else None


def check_files(directory: Path, checked: set[Path]) -> tuple[int, int, list[str]]:
    """Run tshark over every closed recording not checked yet: (files, frames, errors)."""
    files = frames_ = 0
    errors = []
    for path in sorted(directory.glob("*.pcap")):
        if path in checked:
            continue
        done = subprocess.run(["tshark", "-r", str(path), "-q", "-z", "io,stat,0"], capture_output=True, text=True)
        checked.add(path)
        files += 1
        m = re.search(r"\|\s*0\.0+\s*<>\s*\S+\s*\|\s*(\d+)", done.stdout)
        if done.returncode != 0 or m is None:
            errors.append(f"{path.name}: {done.stderr.strip()[-200:]}")
        else:
            frames_ += int(m.group(1))
    return files, frames_, errors


def soak(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    scene_errors: list[str] = []
    with Lab(drop_ingress=False) as lab:
        scenes = rotation()
        for scene in scenes:
            scene.setup(lab)
        veth = lab.veth_a
        ref = work / "tcpdump.pcap"
        rec_dir = work / "recording"
        shutil.rmtree(rec_dir, ignore_errors=True)
        rec_dir.mkdir()
        counts = work / "ipfix-count"
        collector = lab.popen_a(
            [sys.executable, "-c", COLLECTOR, str(IPFIX_PORT), str(counts)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_output(collector, "ready", stream="stdout")
        dump = lab.popen_a(
            ["tcpdump", "-i", veth, "-n", "-U", "-w", str(ref), "-B", "131072", "--time-stamp-precision", "nano"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_output(dump, "listening on", timeout=20)
        common = dict(stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        stats = lab.popen_a(
            [*RETROTAP, "stats", "-i", veth, "--format", "json", "--interval", "5", "--top", "5"]
            + ["--metrics", f"127.0.0.1:{STATS_PORT}", "--ipfix", f"127.0.0.1:{IPFIX_PORT}", "--ipfix-active", "30"],
            stdout=subprocess.PIPE,
            **common,  # type: ignore[arg-type]
        )
        wait_for_output(stats, "listening on", timeout=30)
        record = lab.popen_a(
            [*RETROTAP, "record", "-i", veth, "-w", str(rec_dir), "--rotate-every", "1m"]
            + ["--metrics", f"127.0.0.1:{RECORD_PORT}"],
            stdout=subprocess.DEVNULL,
            **common,  # type: ignore[arg-type]
        )
        wait_for_output(record, "listening on", timeout=30)
        tmux = Tmux(f"ip netns exec {lab.ns_a} {' '.join(RETROTAP)} -i {veth}", width=160, height=50)
        try:
            tmux.wait_for(lambda t: "1 Interfaces" in t and veth in t, "the dashboard")
            latest = LastLine(stats)
            procs = [Proc("stats", stats.pid), Proc("record", record.pid), Proc("dashboard", dashboard_pid(tmux))]
            for p in procs:
                p.cpu0 = p.sample()[1]
            counter = PcapCounter(ref)
            checked: set[Path] = set()
            tshark_files = tshark_frames = 0
            tshark_errors: list[str] = []
            start = time.monotonic()
            next_report = start + args.report_every * 60
            end = start + args.minutes * 60
            rounds = 0
            prev_packets = 0
            while True:
                for scene in scenes:
                    try:
                        scene.run(lab)
                        quiesce(lab)
                    except LabError as e:
                        scene_errors.append(f"{scene.name}: {str(e).splitlines()[0]}")
                    now = time.monotonic()
                    if now < next_report and now < end:
                        continue
                    time.sleep(SETTLE_S)
                    quiet = time.time()
                    rec = latest.newer_than(quiet)
                    rec_metrics = scrape(lab, RECORD_PORT)
                    stats_metrics = scrape(lab, STATS_PORT)
                    files, nframes, errs = check_files(rec_dir, checked)
                    tshark_files += files
                    tshark_frames += nframes
                    tshark_errors += errs
                    ipfix = counts.read_text().split() if counts.exists() else ["0", "0"]
                    ref_packets = counter.count()
                    samples = {p.name: p.sample() for p in procs}
                    packets = rec["totals"]["packets"]
                    row = {
                        "minute": round((now - start) / 60, 1),
                        "tcpdump_packets": ref_packets,
                        "stats_packets": packets,
                        "record_packets": metric(rec_metrics, "retrotap_recorder_packets_total"),
                        "metrics_packets": metric(stats_metrics, "retrotap_packets_total"),
                        "kernel_drops": rec["capture"]["kernel_drops"],
                        "record_kernel_drops": metric(rec_metrics, "retrotap_kernel_drops_total"),
                        "restarts": rec["capture"]["restarts"] + metric(rec_metrics, "retrotap_capture_restarts_total"),
                        "ipfix_datagrams": int(ipfix[0]),
                        "rss_mb": {k: round(v[0], 1) for k, v in samples.items()},
                        "cpu_ns_per_packet": {
                            p.name: round((samples[p.name][1] - p.cpu0) * 1e9 / max(1, packets), 1) for p in procs
                        },
                        "tshark_files": tshark_files,
                        "tshark_frames": tshark_frames,
                        "tshark_errors": len(tshark_errors),
                        "dashboard_age_s": dashboard_age(tmux),
                        "scene_errors": len(scene_errors),
                        "new_packets": packets - prev_packets,
                    }
                    prev_packets = packets
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    next_report += args.report_every * 60
                    if now >= end:
                        break
                rounds += 1
                if time.monotonic() >= end:
                    break
            tmux.keys("q")
            dashboard_exited = tmux.wait_exit()
        finally:
            tmux.close()
            for proc in (stats, record, dump):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            outs = {name: proc.communicate(timeout=120)[1] for name, proc in (("stats", stats), ("record", record))}
            dump.communicate(timeout=60)
            collector.kill()
        # The whole recording against tcpdump's file, frame by frame.
        recorded = [f for path in sorted(rec_dir.glob("*.pcap")) for f in frames(path)]
        reference = frames(ref)
        same_order = recorded == reference
        same_set = same_order or Counter(recorded) == Counter(reference)
        files, nframes, errs = check_files(rec_dir, checked)
        summary = {
            "minutes": args.minutes,
            "rounds": rounds,
            "rows": rows,
            "tcpdump_frames": len(reference),
            "recorded_frames": len(recorded),
            "record_equals_tcpdump_in_order": same_order,
            "record_equals_tcpdump_as_multiset": same_set,
            # Where record's ring dropped packets, exactly those are missing from its files.
            "record_missing_is_its_kernel_drops": len(reference) - len(recorded)
            == (rows[-1]["record_kernel_drops"] if rows else 0),
            "tshark_files": tshark_files + files,
            "tshark_frames": tshark_frames + nframes,
            "tshark_errors": tshark_errors + errs,
            "scene_errors": scene_errors,
            "exit_status": {"stats": stats.returncode, "record": record.returncode},
            "stderr_tracebacks": {k: "Traceback" in v for k, v in outs.items()},
            "dashboard_quit_on_q": dashboard_exited,
            "rss_mb_first_last": {p.name: (p.rss_mb[0], p.rss_mb[-1]) for p in procs},
        }
        print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2), flush=True)
        return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--report-every", type=float, default=5.0, help="minutes between report rows")
    p.add_argument("--dir", default="/tmp/retrotap-soak", help="where the captures go")
    p.add_argument("--json", default="", help="write the results here ('-': stdout)")
    args = p.parse_args()
    if not need_root("soak"):
        return 2
    if shutil.which("tmux") is None or shutil.which("tcpdump") is None or shutil.which("tshark") is None:
        print("soak: needs tmux, tcpdump and tshark", file=sys.stderr)
        return 2
    summary = soak(args)
    if args.json:
        write_json(args.json, summary)
    ok = (
        (summary["record_equals_tcpdump_as_multiset"] or summary["record_missing_is_its_kernel_drops"])
        and not summary["tshark_errors"]
        and not any(summary["stderr_tracebacks"].values())
        and all(rc == 0 for rc in summary["exit_status"].values())
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
