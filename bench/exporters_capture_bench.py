"""Capture cost per packet with the exporters off and on: `retrotap stats` vs `stats --metrics --ipfix`.

Run as root from the repository root::

    python -m bench.exporters_capture_bench --size 64 --count 2000000 --repeat 3

Reuses bench/capture_bench.py (lab, trafgen burst on core 0, tool on core 1, CPU: capture_bench.proc_cpu).
With the exporters on, retrotap serves /metrics on 127.0.0.1 and sends IPFIX to 127.0.0.1 inside
namespace a (loopback only).  A small collector in namespace a (pinned to core 0, off the tool's core)
binds the IPFIX UDP port and counts the datagrams it gets, and scrapes /metrics once a second for
the whole run; it is bounded by a deadline and stopped after each run.  IPFIX idle and active timeouts
are 1 s so records do go out during the burst.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.capture_bench import (
    SENDER_CORE,
    TOOL_CORE,
    Lines,
    Result,
    Tool,
    burst_arguments,
    make_tools,
    pin,
    print_report,
    run_tool,
    trafgen_config,
)
from bench.common import need_root
from tests.lab import Lab, LabError, cleanup_stale

METRICS_PORT = 19464
IPFIX_PORT = 14739
COLLECTOR_DEADLINE = 300.0
EXPORTER_ARGS = ["--metrics", f"127.0.0.1:{METRICS_PORT}", "--ipfix", f"127.0.0.1:{IPFIX_PORT}",
                 "--ipfix-idle", "1", "--ipfix-active", "1"]

# Runs inside namespace a: an IPFIX sink that counts datagrams, and a /metrics scrape every second.
COLLECTOR = r"""
import json, select, signal, socket, sys, time, urllib.request
from bench.common import need_root, write_json
from bench.common import need_root
port, ipfix_port, deadline = int(sys.argv[1]), int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink.bind(("127.0.0.1", ipfix_port))
sink.setblocking(False)
print("collector ready", flush=True)
st = {"datagrams": 0, "octets": 0, "scrapes_ok": 0, "scrapes_failed": 0, "last_packets": None, "scrape_ms": []}
next_scrape = time.monotonic()
while not stop and time.monotonic() < deadline:
    now = time.monotonic()
    if now >= next_scrape:
        next_scrape = now + 1.0
        t0 = time.perf_counter()
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            st["scrapes_failed"] += 1
        else:
            st["scrapes_ok"] += 1
            st["scrape_ms"].append(round((time.perf_counter() - t0) * 1e3, 1))
            for line in body.splitlines():
                if line.startswith("retrotap_packets_total") or line.startswith("retrotap_captured_packets_total"):
                    st["last_packets"] = line
    r, _, _ = select.select([sink], [], [], max(0.0, min(0.2, next_scrape - time.monotonic())))
    while r:
        try:
            data = sink.recv(65535)
        except BlockingIOError:
            break
        st["datagrams"] += 1
        st["octets"] += len(data)
print(json.dumps(st), flush=True)
"""


def start_collector(lab: Lab) -> tuple[subprocess.Popen[str], Lines]:
    """Start the IPFIX sink + /metrics scraper in namespace a; return once its socket is bound."""
    proc: subprocess.Popen[str] = lab.popen_a(
        [*pin(SENDER_CORE), sys.executable, "-c", COLLECTOR, str(METRICS_PORT), str(IPFIX_PORT),
         str(COLLECTOR_DEADLINE)],
        text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    out = Lines(proc.stdout)
    if out.wait_for("collector ready", 30.0) is None:
        proc.kill()
        raise LabError(f"collector did not start: {proc.stderr.read() if proc.stderr else ''}")
    return proc, out


def stop_collector(proc: subprocess.Popen[str], out: Lines) -> dict[str, Any]:
    """SIGTERM the collector and return its counts."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    out.join(5)
    last = [line for line in out.lines if line.startswith("{")]
    return json.loads(last[-1]) if last else {}


def run_pair(lab: Lab, conf: Path, size: int, count: int, repeat: int, grace: float, interval: float,
             ) -> tuple[Result, Result, dict[str, Any]]:
    """One burst with plain `retrotap stats`, one with the exporters on (and the collector running)."""
    plain = make_tools(interval, [])["retrotap"]
    exporting: Tool = make_tools(interval, EXPORTER_ARGS)["retrotap"]  # same name: run_tool parses its JSON
    off = run_tool(lab, plain, conf, size, count, repeat, grace)
    collector, out = start_collector(lab)
    try:
        on = run_tool(lab, exporting, conf, size, count, repeat, grace)
    finally:
        seen = stop_collector(collector, out)
    on = replace(on, tool="retrotap +metrics +ipfix",
                 notes=[*on.notes, f"collector: {seen.get('datagrams')} IPFIX datagrams "
                        f"({seen.get('octets')} octets), {seen.get('scrapes_ok')} scrapes ok, "
                        f"{seen.get('scrapes_failed')} failed"])
    return off, on, seen


def main(argv: Sequence[str] | None = None) -> int:
    """Run plain and exporting retrotap on the same bursts; print per-run and summary tables."""
    p = argparse.ArgumentParser(prog="python -m bench.exporters_capture_bench", description=__doc__.split("\n")[0])
    burst_arguments(p, "distinct UDP source ports (default 1024)")
    args = p.parse_args(argv)
    if not 0 < args.count <= 50_000_000 or not 1 <= args.flows <= 4096:
        p.error("--count must be in 1..50000000 and --flows in 1..4096")
    if not need_root("exporters_capture_bench"):
        return 2
    cleanup_stale()
    results: list[Result] = []
    collectors: list[dict[str, Any]] = []
    with Lab() as lab:
        for size in args.size:
            conf = lab.tmpdir() / f"udp-{size}.cfg"
            conf.write_text(trafgen_config(lab, size, args.flows))
            for repeat in range(1, args.repeat + 1):
                off, on, seen = run_pair(lab, conf, size, args.count, repeat, args.grace, args.interval)
                results += [off, on]
                collectors.append(seen)
                for r in (off, on):
                    print(f"# size {size} run {repeat} {r.tool}: sent {r.sent:,} at {r.offered_pps:,.0f} pps, "
                          f"captured {r.captured}, drops {r.kernel_drops}, CPU {r.cpu_seconds:.3f} s "
                          f"({r.ns_per_packet:,.0f} ns/pkt)" + (f" ({'; '.join(r.notes)})" if r.notes else ""),
                          file=sys.stderr, flush=True)
    print_report(results, f"retrotap on core {TOOL_CORE}, trafgen and the collector on core {SENDER_CORE}; "
                 f"{args.count:,} frames per burst, {args.flows} flows; exporters: {' '.join(EXPORTER_ARGS)}",
                 "exporters_capture", args, {"collectors": collectors})
    return 0


if __name__ == "__main__":
    sys.exit(main())
