"""What every bench script shares: the root check and the JSON output."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any


def need_root(name: str) -> bool:
    """True when running as root; else say why not. Also make SIGTERM unwind `with Lab()` blocks."""
    if os.geteuid() != 0:
        print(f"{name}: needs root (network namespaces, AF_PACKET, trafgen)", file=sys.stderr)
        return False
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return True


def write_json(target: str, doc: dict[str, Any]) -> None:
    """Write a bench's results as JSON to a file, or to stdout for '-'."""
    text = json.dumps(doc, indent=2, default=str)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text + "\n")
