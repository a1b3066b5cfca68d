"""`retrotap web`: the dashboard served by textual-serve, rendered in headless Chromium (127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.pcapgen import write_mixed
from tui.web import bind_warning, dashboard_command

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Belt and braces: no name resolves except the loopback address the test uses.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)
# Keeps a reference to the page's xterm.js Terminal (textual-serve assigns `this.terminal = new Terminal(...)`),
# so the test reads what the terminal shows, not what went over the websocket.
CAPTURE_TERMINAL = """
Object.defineProperty(Object.prototype, "terminal", {
  configurable: true,
  set(value) {
    Object.defineProperty(this, "terminal", {value, writable: true, configurable: true, enumerable: true});
    window.__retrotapTerminal = value;
  },
});
"""
SCREEN_TEXT = """
(() => {
  const t = window.__retrotapTerminal;
  if (!t) return "";
  const b = t.buffer.active, lines = [];
  for (let y = 0; y < t.rows; y++) { const l = b.getLine(y); lines.push(l ? l.translateToString(true) : ""); }
  return lines.join("\\n");
})()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"retrotap web exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing answered on 127.0.0.1:{port} within {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    try:  # whatever of its process group outlived it (a test that failed)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def png_colours(data: bytes, limit: int = 64) -> int:
    """Distinct colours of an 8-bit RGB/RGBA PNG (up to `limit`), read with zlib alone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour_type in (2, 6), (depth, colour_type)
    bpp = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev, colours = bytearray(stride), set[bytes]()
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(bytes(line[i : i + 3]) for i in range(0, stride, bpp * 7))  # every 7th pixel
        prev = line
        if len(colours) >= limit:
            break
    return len(colours)


class DevTools:
    """The few DevTools protocol calls the test needs, over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, *, check: bool = True, **params: Any) -> dict[str, Any]:
        """The result of `method`; with check=False an error (e.g. a page still loading) is an empty result."""
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.receive_str(), timeout=30))
            if msg.get("id") == self.next_id:
                assert not check or "error" not in msg, msg
                return dict(msg.get("result", {}))


async def _render(devtools_port: int, url: str, wanted: tuple[str, ...], timeout: float) -> tuple[str, bytes]:
    """Open `url`, wait (bounded) until the terminal shows every `wanted` text; the screen's text and a PNG."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{devtools_port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            dt = DevTools(ws)
            await dt.call("Page.enable")
            await dt.call("Page.addScriptToEvaluateOnNewDocument", source=CAPTURE_TERMINAL)
            await dt.call("Page.navigate", url=url)
            text, deadline = "", time.monotonic() + timeout
            while time.monotonic() < deadline:
                result = await dt.call("Runtime.evaluate", check=False, expression=SCREEN_TEXT, returnByValue=True)
                text = str(result.get("result", {}).get("value", ""))
                if all(w in text for w in wanted):
                    break
                await asyncio.sleep(0.25)
            shot = await dt.call("Page.captureScreenshot", format="png")
            return text, base64.b64decode(shot["data"])


PACKETS = 2000


@pytest.fixture
def pcap(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.pcap"
    assert len(write_mixed(path, n=PACKETS)) == PACKETS
    return path


@pytest.fixture
def web_process(pcap: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`retrotap web -r mixed.pcap` on a free loopback port: the process and the port."""
    port = _free_port()
    log = open(tmp_path / "web.log", "wb")  # closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "web", "--bind", f"127.0.0.1:{port}", "-r", str(pcap)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_port(port, proc, timeout=30)
        yield proc, port
    finally:
        _stop(proc)
        log.close()


@pytest.fixture
def web_server(web_process: tuple[subprocess.Popen[bytes], int]) -> int:
    return web_process[1]


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[int]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    proc = subprocess.Popen(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,800",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        active, deadline = profile / "DevToolsActivePort", time.monotonic() + 30
        while not (active.exists() and active.read_text().strip()):
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port within 30 s"
            time.sleep(0.1)
        yield int(active.read_text().split()[0])
    finally:
        _stop(proc)


def test_browser_shows_the_dashboard(web_server: int, chromium: int, tmp_path: Path) -> None:
    packets = f"{PACKETS:,} pkts"  # the status bar once the whole file is counted
    wanted = ("Overview", "file mixed.pcap", packets, "mixed.pcap captured")
    text, png = asyncio.run(_render(chromium, f"http://127.0.0.1:{web_server}/", wanted, timeout=60))
    (tmp_path / "web.png").write_bytes(png)
    for part in wanted:
        assert part in text, text
    lines = text.splitlines()
    assert lines[2].split()[:2] == ["mixed.pcap", "captured"], text  # the Overview: the file's rates first
    assert (tmp_path / "web.png").stat().st_size > 1000
    assert png_colours(png) > 4


def test_the_page_loads_nothing_from_outside(web_server: int) -> None:
    async def page() -> str:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{web_server}/") as resp:
                assert resp.status == 200
                return await resp.text()

    html = asyncio.run(page())
    assert "textual-terminal" in html
    assert "https://" not in html
    assert f"ws://127.0.0.1:{web_server}/ws" in html


def test_foreign_host_and_origin_are_refused(web_server: int) -> None:
    """DNS rebinding (a foreign Host) and cross-site websockets (a foreign Origin) get no dashboard."""

    async def status(headers: dict[str, str], path: str = "/") -> int:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{web_server}{path}", headers=headers) as resp:
                return resp.status

    assert asyncio.run(status({"Host": f"evil.example:{web_server}"})) == 421
    assert asyncio.run(status({"Origin": "http://evil.example"}, "/ws")) == 403
    assert asyncio.run(status({"Host": f"localhost:{web_server}"})) == 200


def test_bind_warning_names_the_flag() -> None:
    assert bind_warning("0.0.0.0:8000", "0.0.0.0") == (
        "retrotap: warning: --bind 0.0.0.0:8000 exposes live traffic to anyone who can reach this port"
    )
    assert bind_warning("[::]:9000", "::") is not None
    assert bind_warning("127.0.0.1:8000", "127.0.0.1") is None
    assert bind_warning("127.0.0.2:8000", "127.0.0.2") is None
    assert bind_warning("[::1]:8000", "::1") is None
    assert bind_warning("localhost:8000", "localhost") is None


def test_command_is_the_dashboard_with_the_same_options() -> None:
    from tui.options import build_parser

    args = build_parser().parse_args(
        ["web", "-r", "/tmp/a b.pcap", "--filter=-x; rm y", "--refresh", "0.5", "--realtime", "--bind", "9000"]
    )
    command = dashboard_command(args)
    assert command == (
        f"{shlex.quote(sys.executable)} -m tui.cli '--read=/tmp/a b.pcap' '--filter=-x; rm y' --refresh=0.5 --realtime"
    )


def test_bad_option_is_one_line_before_serving(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tui.cli", "web", "--bind", f"127.0.0.1:{_free_port()}", "-r", "/nonexistent"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "retrotap: error: cannot open '/nonexistent': No such file or directory\n"


class TabClient:
    """A browser tab over the websocket alone: reads everything (answering pings) and keeps the close message."""

    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http, self.port = http, port
        self.screen = b""
        self.closed: aiohttp.WSMessage | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None

    async def open(self, timeout: float = 60) -> None:
        """Connect and wait (bounded) until the dashboard has drawn its view bar."""
        self.ws = await self.http.ws_connect(f"http://127.0.0.1:{self.port}/ws?width=100&height=30")
        self.reader = asyncio.create_task(self._read(self.ws))
        deadline = time.monotonic() + timeout
        while b"Overview" not in self.screen:
            assert self.closed is None, f"the tab closed: {self.closed}"
            assert time.monotonic() < deadline, f"no dashboard within {timeout} s: {self.screen[-500:]!r}"
            await asyncio.sleep(0.1)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.screen += msg.data
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                self.closed = msg
                return

    async def close(self) -> None:
        assert self.ws is not None and self.reader is not None
        await self.ws.close()
        await asyncio.wait_for(self.reader, 30)


def _gone(proc: psutil.Process) -> bool:
    """Exited (a zombie not yet reaped counts: it runs nothing)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait (bounded) until every process has exited; those still running."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in procs if not _gone(p)]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return left


def _tab_processes(server: psutil.Process) -> list[psutil.Process]:
    """The server's live descendants: each tab's dashboard process and nothing else (no shell between)."""
    return [p for p in server.children(recursive=True) if not _gone(p)]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_tabs_end_with_their_connection_and_with_the_server(
    web_process: tuple[subprocess.Popen[bytes], int], stop_signal: signal.Signals
) -> None:
    proc, port = web_process
    server = psutil.Process(proc.pid)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            first, second = TabClient(http, port), TabClient(http, port)
            await first.open()
            first_process = _tab_processes(server)
            await second.open()
            tabs = _tab_processes(server)
            assert len(first_process) == 1 and len(tabs) == 2, [p.cmdline() for p in tabs]
            for tab in tabs:
                assert tab.cmdline()[1:3] == ["-m", "tui.cli"] and tab.cmdline()[3].endswith("/mixed.pcap")
            (second_process,) = [p for p in tabs if p.pid != first_process[0].pid]

            # (i) the first tab's connection closes: its process ends, the other tab's goes on
            await first.close()
            assert await _wait_gone(first_process, timeout=20) == []
            assert not _gone(second_process)
            assert _tab_processes(server) == [second_process]

            # (ii) the server is told to stop while the second tab is still open: every process ends with it
            os.kill(proc.pid, stop_signal)
            assert await asyncio.to_thread(proc.wait, 30) == 0
            assert await _wait_gone([second_process], timeout=0) == []  # gone before the server, not after
            assert second.reader is not None
            await asyncio.wait_for(second.reader, 10)
            assert second.closed is not None
            assert (second.closed.type, second.closed.data) == (aiohttp.WSMsgType.CLOSE, 1001)

    asyncio.run(scenario())


def test_tab_ends_when_the_server_dies(web_process: tuple[subprocess.Popen[bytes], int]) -> None:
    """A server killed without a word (SIGKILL): the tab's process sees its input pipe close and exits."""
    proc, port = web_process
    server = psutil.Process(proc.pid)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            tab = TabClient(http, port)
            await tab.open()
            tabs = _tab_processes(server)
            assert len(tabs) == 1
            os.kill(proc.pid, signal.SIGKILL)
            assert await _wait_gone(tabs, timeout=30) == []

    asyncio.run(scenario())


WEDGED_APP = """
import sys, time
from textual.app import App

class Wedged(App[None]):
    def on_mount(self) -> None:
        sys.__stderr__.write("wedged\\n")
        sys.__stderr__.flush()
        time.sleep(300)  # the event loop never runs again

Wedged().run()
"""


def test_tab_exits_on_sigterm_with_a_wedged_event_loop(tmp_path: Path) -> None:
    """SIGTERM ends a tab's process even when its event loop is stuck: a hard exit (status 1) after the grace."""
    script = tmp_path / "wedged.py"
    script.write_text(WEDGED_APP)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "TEXTUAL_DRIVER": "tui.web:TabDriver"},
        stdin=subprocess.PIPE,  # kept open: not the end of input that ends it here
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        err, deadline = b"", time.monotonic() + 60
        while b"wedged\n" not in err:
            assert proc.poll() is None, err
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"the app did not mount within 60 s: {err!r}"
            if select.select([proc.stderr], [], [], remaining)[0]:
                err += os.read(proc.stderr.fileno(), 4096)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 1
    finally:
        proc.kill()
        proc.wait(timeout=10)
