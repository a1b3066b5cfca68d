"""Threads named for the operating system too: `top -H` and `ps -L` then show which of retrotap's threads
uses the CPU (the capture thread, the process mapper, the recorder ...) instead of "python3" for each."""

from __future__ import annotations

import ctypes
import threading

PR_SET_NAME = 15  # <linux/prctl.h>
TASK_COMM_LEN = 16  # the kernel keeps 15 bytes of a thread's name
_LIBC = ctypes.CDLL(None, use_errno=True)


def os_name(name: str) -> bytes:
    """What the kernel is told: the name without the "retrotap-" prefix, cut to 15 bytes."""
    return name.removeprefix("retrotap-").encode()[: TASK_COMM_LEN - 1]


def name_this_thread(name: str) -> None:
    """Name the calling thread for the operating system (a failure is ignored: the name is only a label)."""
    _LIBC.prctl(PR_SET_NAME, ctypes.c_char_p(os_name(name)), 0, 0, 0)


class NamedThread(threading.Thread):
    """A thread whose Python name is also its name in /proc/PID/task/TID/comm."""

    def run(self) -> None:
        name_this_thread(self.name)
        super().run()
