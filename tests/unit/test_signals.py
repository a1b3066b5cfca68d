"""Headless runs answer a signal whichever thread the kernel delivers it to."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from capture_backend.headless import Signals


@pytest.fixture
def signals() -> Iterator[Signals]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    s = Signals()
    s.install()
    yield s
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_signal_taken_by_another_thread_still_wakes_the_main_loop(signals: Signals) -> None:
    # The kernel gives a process-directed signal to any thread that does not block it; here it is a worker's.
    worker = threading.Thread(target=lambda: signal.pthread_kill(threading.get_ident(), signal.SIGUSR1))
    worker.start()
    worker.join()
    assert signals.wait(30.0) is True  # a 30 s wait that only ended at its timeout would return False
    assert signals.snapshot is True and signals.stop is False


def test_no_signal_is_a_timeout(signals: Signals) -> None:
    assert signals.wait(0.3) is False
    assert (signals.snapshot, signals.stop) == (False, False)


def test_sigterm_asks_to_stop(signals: Signals) -> None:
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
    assert signals.wait(30.0) is True
    assert (signals.stop, signals.snapshot) == (True, False)


def test_a_signal_while_the_main_thread_holds_the_wake_lock_does_not_deadlock(signals: Signals) -> None:
    """The handler runs between two bytecodes of the main thread, which may be inside Event.wait holding the
    Event's own lock: a handler that set the Event there waited for that lock forever (seen as a SIGUSR1 that
    a `stats` run never answered)."""

    def stuck(*_: object) -> None:
        raise TimeoutError("the signal handler deadlocked on the main thread")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(5)
    try:
        with signals.wake._cond:  # type: ignore[attr-defined]  # as Event.wait holds it around its waits
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
            for _ in range(1000):  # bytecodes: the handler runs among them
                pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert signals.wait(30.0) is True
    assert (signals.snapshot, signals.stop) == (True, False)
