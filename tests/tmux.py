"""A terminal program in a detached tmux session: keys in, the screen out (for the live dashboard)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

PANE_TIMEOUT = 30.0


class Tmux:
    """One detached tmux session on a private server socket (killed with the server on close)."""

    def __init__(self, command: str, width: int = 160, height: int = 50) -> None:
        self.socket = f"retrotap-test-{os.getpid()}"
        self.name = "dash"
        # COLUMNS/LINES, if inherited, would override the pane's size for the app.
        size = ("-x", str(width), "-y", str(height))
        self.run("new-session", "-d", "-s", self.name, *size, f"env -u COLUMNS -u LINES {command}")
        self.run("resize-window", "-t", self.name, *size)
        self.socket_path = Path(self.run("display-message", "-p", "#{socket_path}").strip())

    def run(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"tmux {args[0]}: {done.stderr.strip()}")
        return done.stdout

    def pane(self) -> str:
        """The screen as text."""
        return self.run("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.name, *keys)

    def wait_for(self, check: Callable[[str], bool], what: str) -> str:
        """Poll the pane until check(text) holds; fail with the last screen after PANE_TIMEOUT."""
        deadline = time.monotonic() + PANE_TIMEOUT
        text = ""
        while time.monotonic() < deadline:
            try:
                text = self.pane()
            except RuntimeError:  # the session ended: retrotap exited
                break
            if check(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"{what} not on screen within {PANE_TIMEOUT} s; last screen:\n{text}")

    def wait_exit(self) -> bool:
        """Wait until the session's command has exited (the session closes with it)."""
        deadline = time.monotonic() + PANE_TIMEOUT
        while time.monotonic() < deadline:
            alive = subprocess.run(["tmux", "-L", self.socket, "has-session", "-t", self.name], capture_output=True)
            if alive.returncode != 0:
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)
        self.socket_path.unlink(missing_ok=True)
