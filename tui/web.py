"""`retrotap web`: the dashboard in a browser, one dashboard process per browser session (textual-serve).

A tab's process ends with its websocket, with the server (SIGTERM, SIGINT) and, should the server die
without a word, when its input pipe closes. The server asks it to quit, then sends SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import shlex
import signal
import sys
import threading
import time
from asyncio.subprocess import Process
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.web_runner import GracefulExit
from textual import messages
from textual.drivers.web_driver import WebDriver
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

from capture_backend.options import RunOptions
from capture_backend.run import check_source
from tui.options import (
    UsageError,
    build_parser,
    check_dashboard_user,
    endpoint,
    interfaces_of,
    ring_config,
    snapshot_dir,
    user_of,
)

DEFAULT_BIND = "127.0.0.1:8000"
LOOPBACK_NAMES = ("localhost",)
# Options of the dashboard that make no sense once per browser session (each would bind or send twice).
PER_PROCESS_ONLY = ("metrics", "ipfix", "sessions")
# The page would fetch a font from the internet: retrotap's page loads nothing from outside.
EXTERNAL_LINK = re.compile(r"<link[^>]*href=\"https?://[^\"]*\"[^>]*>", re.S)

# A tab asked to quit has this long before SIGTERM, then as long again before SIGKILL (server side), and the
# tab's own process exits hard this long after it was asked to end and has not (a wedged event loop).
QUIT_GRACE_S = 5.0
EXIT_GRACE_S = 10.0
CLOSE_TIMEOUT_S = 2.0  # for the browser's answer to the websocket's close frame

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("textual-serve")


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


def dashboard_args(args: argparse.Namespace) -> list[str]:
    """The program and arguments each browser session runs (no shell in between)."""
    return [sys.executable, "-m", "tui.cli", *dashboard_argv(args)]


def dashboard_command(args: argparse.Namespace) -> str:
    """dashboard_args as one shell-quoted line, as the server shows it."""
    return shlex.join(dashboard_args(args))


def check_dashboard(args: argparse.Namespace) -> None:
    """The dashboard's own checks, so a bad option fails here in one line rather than in every browser tab."""
    for dest in PER_PROCESS_ONLY:
        if getattr(args, dest, None):
            raise UsageError(f"--{dest} is not available with web (each browser session runs its own dashboard)")
    snapshot_dir(args.snapshot_dir, user_of(args))  # -Z: each session drops to the user once its capture is open
    check_dashboard_user(user_of(args))
    interfaces = interfaces_of(args)
    ring = ring_config(args)
    check_source(RunOptions(interfaces=interfaces, read_file=args.read, filter_expr=args.filter, ring=ring))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class TabDriver(WebDriver):
    """The dashboard's side of a tab: Textual's WebDriver, which also ends the app when its input pipe closes
    (the server is gone), and on SIGTERM/SIGINT even with a wedged event loop (hard exit after EXIT_GRACE_S)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._app_loop: asyncio.AbstractEventLoop | None = None
        self._end_requested = threading.Event()
        self._watchdog = threading.Thread(target=self._exit_when_stuck, name="retrotap-tab-watchdog", daemon=True)

    def start_application_mode(self) -> None:
        """WebDriver's, with signal handlers that work without the event loop."""
        super().start_application_mode()
        self._app_loop = loop = asyncio.get_running_loop()
        self._watchdog.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)  # WebDriver's: they need a responsive loop
            signal.signal(sig, self._on_signal)

    def run_input_thread(self) -> None:
        """WebDriver's input loop; end of input that the app did not ask for means the server has gone."""
        super().run_input_thread()
        if not self.exit_event.is_set():
            self.end()

    def on_meta(self, packet_type: str, payload: dict[str, object]) -> None:
        if packet_type == "quit":
            self.end()
        else:
            super().on_meta(packet_type, payload)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.end()

    def end(self) -> None:
        """Ask the app to exit (from any thread or a signal handler); the watchdog exits hard if it does not."""
        self._end_requested.set()
        if self._app_loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed: the app is exiting
                self._app_loop.call_soon_threadsafe(self._app.post_message, messages.ExitApp())

    def _exit_when_stuck(self) -> None:
        self._end_requested.wait()
        time.sleep(EXIT_GRACE_S)
        os._exit(1)  # still here: the daemon thread did not die with a normal exit


class Tab(AppService):
    """One browser tab's dashboard process: started without a shell, with TabDriver, ended within bounds."""

    def __init__(self, argv: list[str], **kwargs: Any) -> None:
        super().__init__(shlex.join(argv), **kwargs)
        self.argv = argv
        self._ending: asyncio.Task[None] | None = None

    @property
    def process(self) -> Process | None:
        """The dashboard process once started."""
        return self._process

    def _build_environment(self, width: int = 80, height: int = 24) -> dict[str, str]:
        env = super()._build_environment(width, height)
        env["TEXTUAL_DRIVER"] = f"{TabDriver.__module__}:{TabDriver.__name__}"
        return env

    async def _open_app_process(self, width: int = 80, height: int = 24) -> Process:
        self._process = process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._build_environment(width=width, height=height),
        )
        assert process.stdin is not None
        self._stdin = process.stdin
        return process

    async def stop(self) -> None:
        """End the process: quit, then SIGTERM, then SIGKILL; once, however many callers (shielded)."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end())
        await asyncio.shield(self._ending)

    async def _end(self) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(Exception):  # a broken pipe: the process is going anyway
                await asyncio.wait_for(self.send_meta({"type": "quit"}), QUIT_GRACE_S)
        for escalate in (process.terminate, process.kill, None):
            try:
                await asyncio.wait_for(process.wait(), QUIT_GRACE_S)
                break
            except TimeoutError:
                if escalate is None:
                    log.error("tab process %d did not exit", process.pid)
                    break
                with contextlib.suppress(ProcessLookupError):
                    escalate()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):  # its output ends with the process
                await asyncio.wait_for(self._task, QUIT_GRACE_S)
        await self._download_manager.cancel_app_downloads(app_service_id=self.app_service_id)


class DashboardServer(Server):
    """textual-serve's Server without the page's external font, with URLs from the request's Host, and
    (on loopback) only loopback Host names and same-origin websockets: no DNS rebinding or cross-site socket.
    Each tab's process ends with its websocket and with the server."""

    def __init__(self, argv: list[str], host: str, port: int) -> None:
        super().__init__(shlex.join(argv), host=host, port=port, title="retrotap")
        self.argv = argv
        self.loopback = is_loopback(host)
        names = {"127.0.0.1", "localhost", "[::1]", _url_host(host)}
        self.allowed_hosts = {f"{name}:{port}" for name in names} | (names if port == 80 else set())
        self.tabs: dict[Tab, web.WebSocketResponse] = {}
        self.exiting = False

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        templates = Path(self.templates_path)
        loader = jinja2.FunctionLoader(lambda name: EXTERNAL_LINK.sub("", (templates / name).read_text()))
        aiohttp_jinja2.setup(app, loader=loader)
        app.middlewares.append(self._guard)
        return app

    def request_exit(self) -> None:
        """The first SIGTERM/SIGINT shuts down (tabs end within bounds); later ones must not cut that short."""
        if not self.exiting:
            self.exiting = True
            raise GracefulExit()

    async def on_shutdown(self, app: web.Application) -> None:
        """End every tab's process, then close its websocket (the handlers return, the server stops)."""
        await asyncio.gather(*(tab.stop() for tab in list(self.tabs)))
        await asyncio.gather(*(self._close(ws) for ws in list(self.tabs.values())))

    @staticmethod
    async def _close(ws: web.WebSocketResponse) -> None:
        """Close a websocket, waiting a little for the browser's answer; never raises."""
        with contextlib.suppress(Exception):  # not yet prepared, already gone, or no answer in time
            await asyncio.wait_for(ws.close(code=1001, message=b"server shutdown"), CLOSE_TIMEOUT_S)

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        """textual-serve's, with a Tab: the process ends with the websocket, whatever ends it."""
        websocket = web.WebSocketResponse(heartbeat=15)
        width = to_int(request.query.get("width", "80"), 80)
        height = to_int(request.query.get("height", "24"), 24)
        tab = Tab(
            self.argv,
            write_bytes=websocket.send_bytes,
            write_str=websocket.send_str,
            close=lambda: self._close(websocket),
            download_manager=self.download_manager,
            debug=self.debug,
        )
        self.tabs[tab] = websocket
        try:
            await websocket.prepare(request)
            await tab.start(width, height)
            await self._process_messages(websocket, tab)
        except Exception as error:
            log.exception(error)
        finally:
            await tab.stop()
            del self.tabs[tab]
        await self._close(websocket)
        return websocket

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
    host, port = endpoint("--bind", args.bind)
    check_dashboard(args)
    warning = bind_warning(args.bind, host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    DashboardServer(dashboard_args(args), host, port).serve()
    return 0
