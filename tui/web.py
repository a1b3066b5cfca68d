"""`retrotap web`: the dashboard in a browser, one dashboard process per browser session (textual-serve)."""

from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from textual_serve.server import Server

from capture_backend.engine import Engine
from capture_backend.replay import FileEngine
from tui.cli import UsageError, _endpoint, _interfaces, _ring, _snapshot_dir, build_parser

DEFAULT_BIND = "127.0.0.1:8000"
LOOPBACK_NAMES = ("localhost",)
# Options of the dashboard that make no sense once per browser session (each would bind or send twice).
PER_PROCESS_ONLY = ("metrics", "ipfix")
# The page would fetch a font from the internet: retrotap's page loads nothing from outside.
EXTERNAL_LINK = re.compile(r"<link[^>]*href=\"https?://[^\"]*\"[^>]*>", re.S)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_warning(bind_text: str, host: str) -> str | None:
    """The one-line warning for a non-loopback --bind, naming the flag as given; None on loopback."""
    if is_loopback(host):
        return None
    return f"retrotap: warning: --bind {bind_text} exposes live traffic to anyone who can reach this port"


def dashboard_argv(args: argparse.Namespace) -> list[str]:
    """The dashboard's options that differ from their defaults, as `--long=value` words (argparse-safe)."""
    words: list[str] = []
    for action in build_parser()._actions:
        if not action.option_strings or action.dest in ("help", "command"):
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default or value is None:
            continue
        flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        if isinstance(action, argparse._StoreTrueAction):
            words.append(flag)
        elif isinstance(action, argparse._AppendAction):
            words.extend(f"{flag}={item}" for item in value)
        else:
            words.append(f"{flag}={value}")
    return words


def dashboard_command(args: argparse.Namespace) -> str:
    """The shell command textual-serve runs for each browser session."""
    return shlex.join([sys.executable, "-m", "tui.cli", *dashboard_argv(args)])


def check_dashboard(args: argparse.Namespace) -> None:
    """The dashboard's own checks, so a bad option fails here in one line rather than in every browser tab."""
    for dest in PER_PROCESS_ONLY:
        if getattr(args, dest, None):
            raise UsageError(f"--{dest} is not available with web (each browser session runs its own dashboard)")
    _snapshot_dir(args.snapshot_dir)
    interfaces = _interfaces(args)
    ring = _ring(args)
    engine: Engine | FileEngine
    if args.read:
        engine = FileEngine(args.read, filter_expr=args.filter)
    else:
        engine = Engine(interfaces, filter_expr=args.filter, ring=ring)
    engine.open()
    engine.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class DashboardServer(Server):
    """textual-serve's Server without the page's external font, with URLs from the request's Host, and
    (on loopback) only loopback Host names and same-origin websockets: no DNS rebinding or cross-site socket."""

    def __init__(self, command: str, host: str, port: int) -> None:
        super().__init__(command, host=host, port=port, title="retrotap")
        self.loopback = is_loopback(host)
        names = {"127.0.0.1", "localhost", "[::1]", _url_host(host)}
        self.allowed_hosts = {f"{name}:{port}" for name in names} | (names if port == 80 else set())

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        templates = Path(self.templates_path)
        loader = jinja2.FunctionLoader(lambda name: EXTERNAL_LINK.sub("", (templates / name).read_text()))
        aiohttp_jinja2.setup(app, loader=loader)
        app.middlewares.append(self._guard)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.loopback and request.host.lower() not in self.allowed_hosts:
            raise web.HTTPMisdirectedRequest(text="retrotap web: unexpected Host\n")
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"http://{request.host}":
            raise web.HTTPForbidden(text="retrotap web: cross-origin request\n")
        return await handler(request)

    async def handle_index(self, request: web.Request) -> web.StreamResponse:  # type: ignore[override]
        """The page, with its static and websocket URLs on the host the browser used."""
        self.public_url = f"http://{request.host}"  # read synchronously by the parent below
        return await super().handle_index(request)


def run_web(args: argparse.Namespace) -> int:
    """Check the dashboard's options, warn on a non-loopback bind, then serve until Ctrl+C."""
    host, port = _endpoint("--bind", args.bind)
    check_dashboard(args)
    warning = bind_warning(args.bind, host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    DashboardServer(dashboard_command(args), host, port).serve()
    return 0
