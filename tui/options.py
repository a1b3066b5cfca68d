"""The command line's options: one parser for every subcommand and the options objects built from it
(shared by the CLI and `retrotap web`, which starts the dashboard with the same options)."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import psutil

from capture_backend.contract import UserError, address_key
from capture_backend.options import (
    DEFAULT_TOP,
    MAX_TOP,
    SORTS,
    CounterLimits,
    ExporterSettings,
    ExportOptions,
    IncidentSettings,
    Query,
    RecordOptions,
    RecordRun,
    Retention,
    RingConfig,
    RuleError,
    RunAs,
    SessionsQuery,
    StatsOptions,
    TimeSpecError,
    default_interface,
    load_rules,
    lookup_user,
    netns_interfaces,
    parse_rule,
    session_export,
    time_window,
    unreadable_by,
    writable_by,
)

# Checked for -Z's user only when given: a save there that the user may not write fails in one line.
DEFAULT_SNAPSHOT_DIR = "."
SUBCOMMANDS = ("stats", "record", "export", "sessions", "web", "interfaces")


T = TypeVar("T")


class UsageError(UserError):
    """A bad option value, reported in one line."""


def _positive(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value > MAX_NUMBER:
            raise argparse.ArgumentTypeError(f"{text!r} is too large")
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
        return value

    return parse


MAX_NUMBER = 1 << 50  # larger sizes, counts and durations are mistakes (and overflow nanoseconds)
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int:
    """'256M', '1G', '4096' → bytes."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in SIZE_UNITS else ""
    number = t[: len(t) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 256M, 1G)") from None
    if not math.isfinite(value) or value * SIZE_UNITS[unit] > MAX_NUMBER:
        raise argparse.ArgumentTypeError(f"{text!r} is too large")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return int(value * SIZE_UNITS[unit])


DURATION_UNITS = {"": 1, "S": 1, "M": 60, "H": 3600, "D": 86400, "W": 7 * 86400}


def _duration(text: str) -> float:
    """'30s', '1m', '2h', '7d', '90' (seconds) → seconds."""
    t = text.strip().upper()
    unit = t[-1:] if t[-1:].isalpha() else ""
    try:
        value = float(t[: len(t) - len(unit)]) * DURATION_UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 1m, 2h, 7d)") from None
    if not math.isfinite(value) or value > MAX_NUMBER:
        raise argparse.ArgumentTypeError(f"{text!r} is too large")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _min_free(text: str) -> tuple[float, int]:
    """'5%' → (0.05, 0); '2G' → (0.0, bytes)."""
    t = text.strip()
    if not t.endswith("%"):
        return 0.0, _size(t)
    try:
        pct = float(t[:-1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage or a size (e.g. 5%, 2G)") from None
    if not 0 <= pct < 100:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 0% to below 100%")
    return pct / 100, 0


def _checked(parse: Callable[[str], T], option: str, text: str) -> T:
    """A value parsed after argparse, so a bad one is one line (UsageError) rather than usage text."""
    try:
        return parse(text)
    except (argparse.ArgumentTypeError, ValueError, OverflowError) as e:
        raise UsageError(f"{option}: {e}") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-i",
        "--interface",
        action="append",
        default=[],
        metavar="IFACE",
        help="interface (repeatable); NETNS:IFACE or pid:PID:IFACE in another network namespace",
    )
    p.add_argument(
        "--netns",
        metavar="NAME|PID",
        help="take -i IFACE (and the default interface) in this network namespace (`ip netns` name or a pid in it)",
    )
    p.add_argument("-r", "--read", metavar="FILE", help="read a pcap or pcapng file instead of capturing")
    p.add_argument("-f", "--filter", default="", metavar="BPF", help="capture filter, tcpdump syntax")
    p.add_argument(
        "-Z",
        "--user",
        metavar="USER",
        help="drop root to USER once the capture is open (files written after are USER's)",
    )
    p.add_argument("--no-promisc", action="store_true", help="do not put the interface in promiscuous mode")
    p.add_argument(
        "--ring-size",
        type=_positive(int),
        default=None,
        metavar="MiB",
        help="ring size per interface (default: 100 ms of the link's speed, 16 to 128 MiB; 16 MiB for links "
        "that report no speed, such as lo)",
    )
    p.add_argument(
        "--threads",
        type=_positive(int),
        default=1,
        metavar="N",
        help="capture threads: N rings per interface joined with PACKET_FANOUT (hash), one thread each (default 1)",
    )
    p.add_argument("--block-size", type=_positive(int), default=1024, metavar="KiB", help="ring block (default 1024)")
    p.add_argument("--block-timeout", type=_positive(int), default=50, metavar="MS", help="block retire timeout")
    p.add_argument("--flow-cap", type=_positive(int), default=200_000, metavar="N", help="flow table capacity")
    p.add_argument("--flow-idle", type=_positive(float), default=300.0, metavar="S", help="flow idle timeout")
    p.add_argument(
        "--no-analysis",
        action="store_true",
        help="skip TCP health and DNS/HTTP/MySQL latency (less CPU per packet)",
    )
    p.add_argument(
        "--buffer-seconds", type=_positive(float), default=60.0, metavar="S", help="time machine: seconds kept"
    )
    p.add_argument(
        "--buffer-size", type=_size, default=256 << 20, metavar="SIZE", help="time machine memory (256M; 0: off)"
    )
    p.add_argument("--snapshot-dir", default=DEFAULT_SNAPSHOT_DIR, metavar="DIR", help="where snapshots are written")
    p.add_argument(
        "--pcapng",
        action="store_true",
        help="snapshots (w, W, SIGUSR1) as one pcapng of every interface, packets commented with their process",
    )
    p.add_argument("--metrics", metavar="[ADDR:]PORT", help="serve Prometheus /metrics (ADDR: 127.0.0.1)")
    p.add_argument(
        "--metrics-top", type=_positive(int), default=DEFAULT_TOP, metavar="K", help="hosts and ports in /metrics"
    )
    p.add_argument("--ipfix", metavar="HOST:PORT", help="export finished flows to an IPFIX collector (UDP)")
    p.add_argument("--sensor-id", type=_positive(int), default=0, metavar="N", help="IPFIX observation domain id")
    p.add_argument("--ipfix-idle", type=_positive(float), default=15.0, metavar="S", help="flow idle timeout (15)")
    p.add_argument("--ipfix-active", type=_positive(float), default=60.0, metavar="S", help="active timeout (60)")
    p.add_argument("--sessions", metavar="DIR", help="write a record of every session to DIR/retrotap-sessions.sqlite")
    p.add_argument(
        "--sessions-idle", type=_positive(float), default=30.0, metavar="S", help="a session ends after S quiet (30)"
    )
    p.add_argument(
        "--sessions-active",
        type=_positive(float),
        default=60.0,
        metavar="S",
        help="long sessions: a record every S (60)",
    )
    p.add_argument(
        "--sessions-keep-age",
        default=None,
        metavar="DURATION",
        help="delete session records older than this (0: never; record: its --keep-age)",
    )
    p.add_argument(
        "--alert",
        action="append",
        default=[],
        metavar="EXPR",
        help="alert rule, e.g. 'new_flows > 2000 for 3s' (repeatable; `retrotap alerts` lists the metrics)",
    )
    p.add_argument("--alerts", metavar="FILE", help="alert rules from a TOML file ([[rule]] expr = ...)")
    p.add_argument(
        "--incidents", metavar="DIR", help="freeze incidents (pcap + incident.json) in DIR (default: --snapshot-dir)"
    )
    p.add_argument("--pre", default="60s", metavar="DURATION", help="incident pcap: time before the trigger (60s)")
    p.add_argument("--post", default="10s", metavar="DURATION", help="incident pcap: time after the trigger (10s)")
    p.add_argument("--on-incident", default="", metavar="CMD", help="run CMD INCIDENT_DIR when an incident is frozen")
    p.add_argument("--incidents-keep", type=_positive(int), default=100, metavar="N", help="incidents kept (100)")
    p.add_argument(
        "--incidents-keep-age", default="0", metavar="DURATION", help="remove incidents older than this (0: never)"
    )
    p.add_argument(
        "--incidents-format",
        choices=("pcapng", "pcap"),
        default="pcapng",
        help="incident packets: one pcapng with process comments (default) or one pcap per interface",
    )


def _dashboard(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--refresh", type=_positive(float), default=1.0, metavar="S", help="screen refresh")
    p.add_argument("--realtime", action="store_true", help="with -r: replay at the file's pace")
    p.add_argument(
        "--history",
        type=_duration,
        default=900.0,
        metavar="DURATION",
        help="per-second history the time cursor ([ ] { } L) moves over (15m; 0: off)",
    )
    p.add_argument(
        "--record-dir", default="retrotap-recording", metavar="DIR", help="where R records (rotating pcap files)"
    )
    p.add_argument(
        "--inspect-limit", type=_positive(int), default=2000, metavar="N", help="packets the inspector (i, I) decodes"
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    # No abbreviations at the top: the top level sees every argument, and export's --session would be taken
    # for an abbreviation of --sessions.
    parser = argparse.ArgumentParser(
        prog="retrotap", description="Live network traffic monitor with rewind.", allow_abbrev=False
    )
    _dashboard(parser)
    parser.add_argument(
        "--list-interfaces", action="store_true", help="list the interfaces of every network namespace, then exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ifs = sub.add_parser("interfaces", help="the interfaces of every network namespace (what -i takes), veth peers")
    ifs.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    inc = sub.add_parser("incidents", help="the incidents frozen by alert rules (--alert, SIGUSR2, !)")
    inc.add_argument("directory", metavar="DIR", help="the --incidents directory")
    inc.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    stats = sub.add_parser("stats", help="print counters every interval (text, json or csv)")
    stats.add_argument(
        "directory",
        nargs="?",
        metavar="DIR",
        help="print the per-minute records kept in DIR's session store (--sessions DIR, record -w DIR) instead",
    )
    stats.add_argument("--from", dest="from_time", metavar="T1", help="with DIR: from this time (as export's)")
    stats.add_argument("--to", dest="to_time", metavar="T2", help="with DIR: up to this time (default: now)")
    _common(stats)
    stats.add_argument("--interval", type=_positive(float), metavar="S", help="seconds between records")
    stats.add_argument("--count", type=_positive(int), default=0, metavar="N", help="stop after N records")
    stats.add_argument("--top", type=_positive(int), default=10, metavar="N", help="rows per table (0: all)")
    stats.add_argument("--format", choices=("text", "json", "csv"), default="text", help="output format")
    rec = sub.add_parser("record", help="record to rotating, indexed pcap files in a directory")
    _common(rec)
    rec.add_argument("-w", "--write", dest="directory", required=True, metavar="DIR", help="where files go")
    rec.add_argument("--rotate-size", default="100M", metavar="SIZE", help="new file at this size (100M; 0: off)")
    rec.add_argument(
        "--rotate-every", default="1m", metavar="DURATION", help="new file on each multiple of it, UTC (1m; 0: off)"
    )
    rec.add_argument("--keep-files", default="0", metavar="N", help="closed files kept per interface (0: all)")
    rec.add_argument("--keep-age", default="0", metavar="DURATION", help="delete files older than this (0: never)")
    rec.add_argument("--min-free", default="5%", metavar="PCT|SIZE", help="delete oldest files below this free space")
    rec.add_argument(
        "--no-sessions", action="store_true", help="no session records in DIR (default: DIR/retrotap-sessions.sqlite)"
    )
    web = sub.add_parser("web", help="serve the dashboard to a browser (one dashboard per browser session)")
    _dashboard(web)
    web.add_argument(
        "--bind", default="127.0.0.1:8000", metavar="[ADDR:]PORT", help="where to listen (default 127.0.0.1:8000)"
    )
    exp = sub.add_parser("export", help="packets of a time window (and host/port or filter) from a recording")
    exp.add_argument("directory", metavar="DIR", help="the directory `retrotap record` wrote")
    _window(exp)
    exp.add_argument("-f", "--filter", default="", metavar="BPF", help="tcpdump filter")
    exp.add_argument("--host", metavar="ADDR", help="packets from or to this IPv4/IPv6 address")
    exp.add_argument("--port", metavar="PORT", help="TCP, UDP or SCTP packets with this port on either side")
    exp.add_argument("-w", "--write", dest="output", metavar="FILE", help="the pcap (or .pcapng) to write")
    exp.add_argument(
        "--pcapng",
        action="store_true",
        help="one pcapng of every interface, packets commented with their process (the default for -w *.pcapng)",
    )
    exp.add_argument("--list", action="store_true", help="list the files with their time spans instead")
    exp.add_argument("--session", type=int, metavar="ID", help="the packets of one session of `retrotap sessions DIR`")
    ses = sub.add_parser("sessions", help="session records: what talked to what, when (from --sessions or record)")
    ses.add_argument("directory", metavar="DIR", help="where the records are (DIR/retrotap-sessions.sqlite)")
    _window(ses)
    ses.add_argument("--host", metavar="ADDR|NET", help="sessions of this address or network (either side)")
    ses.add_argument("--port", metavar="PORT", help="sessions with this port on either side")
    ses.add_argument("--proto", metavar="PROTO", help="tcp, udp, icmp, icmpv6, sctp or a protocol number")
    ses.add_argument("--process", metavar="NAME", help="sessions of local processes whose name contains NAME")
    ses.add_argument(
        "--where",
        default="",
        metavar="EXPR",
        help="FIELD OP NUMBER [and ...], e.g. 'retrans > 0 and latency_ms > 200' (fields: bytes, packets, "
        "retrans, resets, rtt_ms, latency_ms, latency_max_ms, duration_s, ...)",
    )
    ses.add_argument("--sort", choices=tuple(SORTS), default="start", help="order (start: oldest first; else largest)")
    ses.add_argument("--top", type=_positive(int), default=100, metavar="N", help="at most N records (0: all)")
    ses.add_argument("--format", choices=("text", "json", "csv"), default="text", help="output format")
    ses.add_argument("--summary", action="store_true", help="totals and the top hosts, ports, services, processes")
    return parser


def _window(p: argparse.ArgumentParser) -> None:
    """--from and --to, read as `retrotap export` reads them."""
    p.add_argument(
        "--from",
        dest="from_time",
        metavar="TIME",
        help="ISO 8601 or HH:MM[:SS] local time today (yesterday's if later than now); inclusive",
    )
    p.add_argument(
        "--to",
        dest="to_time",
        metavar="TIME",
        help="ISO 8601 or HH:MM[:SS] local time today (after a clock-time --from: the first such time after it); "
        "exclusive; a time later than now means now",
    )


DEFAULT_MAX_RING_MIB = 128  # a ring sized by link speed is at most this


def ring_config(args: argparse.Namespace) -> RingConfig:
    block = args.block_size * 1024
    if block < 4096 or block & (block - 1):
        raise UsageError(f"--block-size {args.block_size} KiB: must be a power of two of at least 4 KiB")
    ring_bytes = (args.ring_size or DEFAULT_MAX_RING_MIB) << 20
    if ring_bytes < 2 * block:
        raise UsageError(f"--ring-size {args.ring_size or DEFAULT_MAX_RING_MIB} MiB: must hold at least two blocks")
    if args.block_timeout < 1:
        raise UsageError("--block-timeout must be at least 1 ms")
    return RingConfig(
        block_size=block,
        block_nr=ring_bytes // block,
        block_timeout_ms=args.block_timeout,
        promisc=not args.no_promisc,
        by_link_speed=args.ring_size is None,
        threads=args.threads,
    )


def interfaces_of(args: argparse.Namespace) -> list[str]:
    if args.read:
        if args.interface or args.netns:
            raise UsageError(f"-r and {'-i' if args.interface else '--netns'} cannot be used together")
        return []
    names = list(dict.fromkeys(args.interface))
    if args.netns:
        return list(dict.fromkeys(netns_interfaces(args.netns, names)))
    return names or [default_interface()]


def stats_options(args: argparse.Namespace, now: datetime | None = None) -> StatsOptions:
    """StatsOptions from parsed arguments; UsageError on inconsistent values."""
    if args.interval is not None and args.interval <= 0:
        raise UsageError("--interval must be greater than 0")
    if args.directory is None and (args.from_time or args.to_time):
        raise UsageError("--from and --to read stored minutes: give the directory, as in stats DIR --from T1")
    if args.directory is not None:
        if args.read or args.interface or args.interval or args.count:
            raise UsageError("stats DIR prints stored minutes: -r, -i, --interval and --count are for capturing")
        return StatsOptions(
            top=args.top,
            fmt=args.format,
            directory=args.directory,
            window=time_window(args.from_time, args.to_time, now),
        )
    user = user_of(args)
    return StatsOptions(
        interfaces=interfaces_of(args),
        read_file=args.read,
        filter_expr=args.filter,
        interval=args.interval,
        count=args.count,
        top=args.top,
        fmt=args.format,
        promisc=not args.no_promisc,
        ring=ring_config(args),
        limits=CounterLimits(flows=max(1, args.flow_cap), flow_idle_s=args.flow_idle, analysis=not args.no_analysis),
        buffer_size=args.buffer_size,
        buffer_seconds=args.buffer_seconds,
        snapshot_dir=snapshot_dir(args.snapshot_dir, user),
        pcapng=args.pcapng,
        exporters=exporter_settings(args),
        user=user,
    )


def user_of(args: argparse.Namespace) -> RunAs | None:
    """The user of -Z (PrivilegeError, one line, when there is none), or None."""
    return lookup_user(args.user) if getattr(args, "user", None) else None


def check_dashboard_user(user: RunAs | None) -> None:
    """The dashboard loads parts of Textual as it goes: after -Z, its user must be able to read them."""
    import textual

    where = unreadable_by(os.path.dirname(textual.__file__), user) if user is not None else None
    if user is not None and where is not None:
        raise UsageError(
            f"-Z {user.name}: {user.name} cannot read {where}, where the dashboard's modules are: "
            "install retrotap where that user can read it, or use stats or record"
        )


def record_run(args: argparse.Namespace) -> RecordRun:
    """RecordRun from parsed arguments; UsageError on bad values."""
    directory = args.directory
    if not os.path.isdir(directory):
        raise UsageError(f"-w {directory!r}: no such directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"-w {directory!r}: not writable")
    user = user_of(args)
    if user is not None and not writable_by(directory, user):
        raise UsageError(f"-w {directory!r}: not writable by user {user.name} (-Z)")
    if not args.buffer_size:
        raise UsageError("record needs the time machine (--buffer-size greater than 0): it is the recorder's queue")
    exporters = exporter_settings(args)
    if args.read and (exporters.metrics or exporters.ipfix or exporters.sessions):
        raise UsageError(
            "--metrics, --ipfix and --sessions follow live capture: record -r FILE has no snapshots to export"
        )
    keep_files = _checked(int, "--keep-files", args.keep_files)
    if keep_files < 0:
        raise UsageError("--keep-files must not be negative")
    ratio, free_bytes = _checked(_min_free, "--min-free", args.min_free)
    keep_age_ns = int(_checked(_duration, "--keep-age", args.keep_age) * 1e9)
    if not args.no_sessions and not args.read:
        # The session records sit beside the files and are kept as long as they are, by the same rules.
        exporters.sessions = exporters.sessions or directory
        if args.sessions_keep_age is None:
            exporters.sessions_retention.keep_age_ns = keep_age_ns
        exporters.sessions_retention.min_free_ratio = ratio
        exporters.sessions_retention.min_free_bytes = free_bytes
    rotate_s = _checked(_duration, "--rotate-every", args.rotate_every)
    if rotate_s and rotate_s < 1:
        raise UsageError("--rotate-every must be at least 1s (or 0: off)")
    return RecordRun(
        record=RecordOptions(
            directory=directory,
            rotate_bytes=_checked(_size, "--rotate-size", args.rotate_size),
            rotate_ns=int(rotate_s * 1e9),
            keep_files=keep_files,
            keep_age_ns=keep_age_ns,
            min_free_ratio=ratio,
            min_free_bytes=free_bytes,
        ),
        interfaces=interfaces_of(args),
        read_file=args.read,
        filter_expr=args.filter,
        ring=ring_config(args),
        limits=CounterLimits(flows=max(1, args.flow_cap), flow_idle_s=args.flow_idle, analysis=not args.no_analysis),
        buffer_size=args.buffer_size,
        buffer_seconds=args.buffer_seconds,
        snapshot_dir=snapshot_dir(args.snapshot_dir, user),
        pcapng=args.pcapng,
        exporters=exporters,
        user=user,
    )


def export_options(args: argparse.Namespace, now: datetime | None = None) -> ExportOptions:
    """ExportOptions from parsed arguments, clock times read at `now` (default: the clock); UsageError on bad values."""
    if not os.path.isdir(args.directory):
        raise UsageError(f"{args.directory!r}: no such directory")
    if not args.list and not args.output:
        raise UsageError("export needs -w FILE (or --list)")
    if args.session is not None:
        if args.filter.strip() or args.host or args.port or args.from_time or args.to_time or args.list:
            raise UsageError("--session picks the packets itself: leave out -f, --host, --port, --from, --to, --list")
        opts = session_export(args.directory, args.session, args.output)
        opts.pcapng = _wants_pcapng(args)
        return opts
    if args.filter.strip() and (args.host or args.port):
        raise UsageError("use either -f BPF or --host/--port, not both")
    opts = ExportOptions(
        directory=args.directory, output=args.output or "", bpf=args.filter, pcapng=_wants_pcapng(args)
    )
    try:
        opts.from_ns, opts.to_ns = time_window(args.from_time, args.to_time, now)
    except TimeSpecError as e:
        raise UsageError(str(e)) from None
    if args.host:
        opts.host = _checked(address_key, "--host", args.host)
    if args.port:
        opts.port = _checked(int, "--port", args.port)
        if not 0 < opts.port < 65536:
            raise UsageError(f"--port {args.port}: must be from 1 to 65535")
    return opts


def _wants_pcapng(args: argparse.Namespace) -> bool:
    return bool(args.pcapng or (args.output or "").lower().endswith(".pcapng"))


def endpoint(option: str, text: str) -> tuple[str, int]:
    """'PORT', 'HOST:PORT' or '[IPV6]:PORT' → (host, port); the host is 127.0.0.1 when left out."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(f"{option} {text!r}: write an IPv6 address in brackets, e.g. [::1]:{port_text}")
    if not host:
        raise UsageError(f"{option} {text!r}: no address before the ':'")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"{option} {text!r}: the port must be from 1 to 65535")
    return host, int(port_text)


def exporter_settings(args: argparse.Namespace) -> ExporterSettings:
    """ExporterSettings from parsed arguments; UsageError on bad values."""
    if args.metrics_top > MAX_TOP:
        raise UsageError(f"--metrics-top {args.metrics_top}: at most {MAX_TOP} (each is a label value)")
    if args.sensor_id > 0xFFFFFFFF:
        raise UsageError(f"--sensor-id {args.sensor_id}: must fit in 32 bits")
    for option, value in (("--ipfix-idle", args.ipfix_idle), ("--ipfix-active", args.ipfix_active)):
        if value <= 0:
            raise UsageError(f"{option} must be greater than 0")
    for option, value in (("--sessions-idle", args.sessions_idle), ("--sessions-active", args.sessions_active)):
        if value <= 0:
            raise UsageError(f"{option} must be greater than 0")
    keep_age = args.sessions_keep_age
    return ExporterSettings(
        incidents=incident_settings(args),
        metrics=endpoint("--metrics", args.metrics) if args.metrics else None,
        metrics_top=args.metrics_top,
        ipfix=endpoint("--ipfix", args.ipfix) if args.ipfix else None,
        sensor_id=args.sensor_id,
        ipfix_idle=args.ipfix_idle,
        ipfix_active=args.ipfix_active,
        sessions=args.sessions,
        sessions_idle=args.sessions_idle,
        sessions_active=args.sessions_active,
        sessions_retention=Retention(
            keep_age_ns=int(_checked(_duration, "--sessions-keep-age", keep_age) * 1e9) if keep_age else 0
        ),
    )


def incident_settings(args: argparse.Namespace) -> IncidentSettings | None:
    """IncidentSettings when rules or an incidents directory are asked for; UsageError on a bad rule."""
    if not args.alert and not args.alerts and not args.incidents and args.incidents_format == "pcapng":
        return None
    try:
        rules = [parse_rule(text) for text in args.alert]
        if args.alerts:
            rules += load_rules(args.alerts)
    except RuleError as e:
        raise UsageError(str(e)) from None
    names = [r.name for r in rules]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--alert: two rules are named {twice[0]!r}: name them ('NAME: EXPR')")
    directory = args.incidents or args.snapshot_dir
    _writable_dir("--incidents", directory, create=True)
    return IncidentSettings(
        rules=tuple(rules),
        directory=directory,
        pre_s=_checked(_duration, "--pre", args.pre),
        post_s=_checked(_duration, "--post", args.post),
        on_incident=args.on_incident,
        keep=args.incidents_keep,
        keep_age_s=_checked(_duration, "--incidents-keep-age", args.incidents_keep_age),
        pcapng=args.incidents_format == "pcapng",
    )


def incidents_dir(path: str) -> str:
    """The directory `retrotap incidents` lists; UsageError when there is none."""
    if not os.path.isdir(path):
        raise UsageError(f"{path!r}: no such directory")
    return path


def _writable_dir(option: str, path: str, create: bool = False) -> None:
    """UsageError unless `path` is (or, with create, can be made) a writable directory."""
    if create and not os.path.exists(path):
        try:
            os.makedirs(path)
        except OSError as e:
            raise UsageError(f"{option} {path!r}: {e.strerror or e}") from None
    if not os.path.isdir(path):
        raise UsageError(f"{option} {path!r}: not a directory")
    if not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path!r}: not writable")


def sessions_options(args: argparse.Namespace, now: datetime | None = None) -> SessionsQuery:
    """SessionsQuery from parsed arguments, clock times read at `now` (default: the clock); UsageError on bad
    values (a bad --where or --host says what is wrong when the query is checked)."""
    if not os.path.isdir(args.directory) and not args.directory.endswith(".sqlite"):
        raise UsageError(f"{args.directory!r}: no such directory")
    try:
        from_ns, to_ns = time_window(args.from_time, args.to_time, now)
    except TimeSpecError as e:
        raise UsageError(str(e)) from None
    port = None
    if args.port:
        port = _checked(int, "--port", args.port)
        if not 0 <= port < 65536:
            raise UsageError(f"--port {args.port}: must be from 0 to 65535")
    query = Query(
        from_ns=from_ns,
        to_ns=to_ns,
        host=args.host,
        port=port,
        proto=args.proto,
        process=args.process,
        where=args.where,
        sort=args.sort,
        top=args.top,
    )
    query.check()
    return SessionsQuery(args.directory, query, args.format, args.summary)


def snapshot_dir(path: str, user: RunAs | None = None) -> str:
    if not os.path.isdir(path):
        raise UsageError(f"--snapshot-dir {path!r}: no such directory")
    if not os.access(path, os.W_OK):
        raise UsageError(f"--snapshot-dir {path!r}: not writable")
    if user is not None and path != DEFAULT_SNAPSHOT_DIR and not writable_by(path, user):
        raise UsageError(f"--snapshot-dir {path!r}: not writable by user {user.name} (-Z)")
    return path


def check_memory(args: argparse.Namespace) -> None:
    """Refuse a time machine larger than the memory there is (it grows with traffic up to its size)."""
    size = getattr(args, "buffer_size", 0) or 0
    available = psutil.virtual_memory().available
    if size > available * 0.8:
        raise UsageError(f"--buffer-size {size >> 20} MiB: only {available >> 20} MiB of memory is available")
