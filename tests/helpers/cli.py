"""Running the retrotap CLI as a subprocess (`retrotap stats` on a file, parsed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def retrotap_cmd() -> list[str]:
    """The installed `retrotap` console script of this interpreter (else the module)."""
    script = Path(sys.executable).parent / "retrotap"
    if script.exists():
        return [str(script)]
    found = shutil.which("retrotap")
    return [found] if found else [sys.executable, "-m", "tui.cli"]


def run_retrotap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*retrotap_cmd(), *args], capture_output=True, text=True, timeout=120)


def stats(path: Path, *extra: str) -> dict[str, Any]:
    """The one JSON record of `retrotap stats -r path --format json --top 0`."""
    proc = run_retrotap("stats", "-r", str(path), "--format", "json", "--top", "0", *extra)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    rec: dict[str, Any] = json.loads(lines[0])
    return rec
