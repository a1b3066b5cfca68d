"""retrotap's threads carry their names into /proc, where `top -H` and `ps -L` read them."""

from __future__ import annotations

import threading
from pathlib import Path

from capture_backend.capture.threads import NamedThread, os_name
from capture_backend.rewind.timemachine import TimeMachine


def comm(tid: int) -> str:
    return Path(f"/proc/self/task/{tid}/comm").read_text().strip()


def test_a_named_thread_is_named_in_proc() -> None:
    seen: list[str] = []
    t = NamedThread(target=lambda: seen.append(comm(threading.get_native_id())), name="retrotap-capture-1")
    t.start()
    t.join()
    assert seen == ["capture-1"]
    assert os_name("retrotap-sessions-db-writer") == b"sessions-db-wri"  # the kernel keeps 15 bytes


def test_the_time_machine_pager_is_named() -> None:
    tm = TimeMachine(size=64 << 20)  # the pager touches a few MiB ahead, then waits for the writer
    assert tm.wait_touched(1 << 20)
    pager = tm._pager
    assert pager.is_alive() and pager.native_id is not None
    assert comm(pager.native_id) == "pager"
