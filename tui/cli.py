"""`retrotap`: the dashboard, or one of the subcommands stats, record, export, sessions, web."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from capture_backend.contract import UserError
from capture_backend.headless import run_export, run_incidents, run_interfaces, run_record, run_sessions, run_stats
from tui.options import (
    UsageError,
    build_parser,
    check_memory,
    export_options,
    exporter_settings,
    incidents_dir,
    interfaces_of,
    record_run,
    ring_config,
    sessions_options,
    snapshot_dir,
    stats_options,
    user_of,
)

# A user's mistake (a UsageError too) or what the system refused (a permission, a missing file): one line, status 2.
USER_ERRORS = (UserError, OSError)


def _run_export(args: argparse.Namespace) -> int:
    return run_export(export_options(args), list_only=args.list)


def _run_web(args: argparse.Namespace) -> int:
    from tui.web import run_web

    return run_web(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "stats": lambda args: run_stats(stats_options(args)),
    "record": lambda args: run_record(record_run(args)),
    "export": _run_export,
    "sessions": lambda args: run_sessions(sessions_options(args)),
    "web": _run_web,
    "interfaces": lambda args: run_interfaces(args.format),
    "incidents": lambda args: run_incidents(incidents_dir(args.directory), args.format),
}


def _fail(message: str) -> int:
    print(f"retrotap: error: {message}", file=sys.stderr, flush=True)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn a user's mistake into one line and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        if args.list_interfaces:
            if args.command is not None:
                raise UsageError(f"--list-interfaces lists and exits: leave out {args.command}")
            return run_interfaces()
        check_memory(args)
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        from tui.app import run_dashboard

        snapshot_dir(args.snapshot_dir, user_of(args))
        return run_dashboard(args, interfaces_of(args), ring_config(args), exporter_settings(args))
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_ERRORS as e:
        return _fail(str(e) or e.__class__.__name__)
    except MemoryError:
        return _fail("not enough memory: lower --buffer-size (the time machine) or --ring-size")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
