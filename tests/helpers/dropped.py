"""`python -m tests.helpers.dropped NETNS:IFACE USER`: an Engine opened on the interface, root dropped to
USER, then driven line by line on stdin (`filter EXPR`, `count`, `quit`) so a test can check what still
works after the drop; each command answers one JSON line on stdout."""

from __future__ import annotations

import json
import os
import sys

from capture_backend.capture.privileges import drop_privileges, lookup_user
from capture_backend.contract import UserError
from capture_backend.engine import Engine
from capture_backend.run import LATE_IMPORTS


def main() -> int:
    spec, user = sys.argv[1], lookup_user(sys.argv[2])
    engine = Engine([spec])
    engine.open()
    for name in LATE_IMPORTS:
        __import__(name)
    drop_privileges(user)
    engine.dropped_to = user.name
    engine.start()
    engine.ready.wait(10)
    print(json.dumps({"uid": os.getuid(), "euid": os.geteuid()}), flush=True)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "filter":
            try:
                engine.set_filter(arg)
                print(json.dumps({"filter": engine.counting.filter}), flush=True)
            except UserError as e:
                print(json.dumps({"error": str(e)}), flush=True)
        elif command == "count":
            snap = engine.fresh_snapshot(2.0)
            (iface,) = snap.interfaces
            print(json.dumps({"name": iface.name, "packets": iface.packets, "state": iface.state}), flush=True)
        else:
            break
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
