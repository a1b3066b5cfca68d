"""Reverse DNS for the views: looked up in a worker thread, cached, never blocking the screen."""

from __future__ import annotations

import queue
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable

Lookup = Callable[[str], str | None]
CACHE_SIZE = 10_000
MAX_PENDING = 256


def reverse_dns(addr: str) -> str | None:
    """The PTR name of an address, or None (blocking; only the worker calls it)."""
    try:
        return socket.gethostbyaddr(addr)[0]
    except (OSError, UnicodeError):
        return None


class NameResolver:
    """Addresses to names: `name()` answers from the cache at once and queues what it does not know."""

    def __init__(self, lookup: Lookup = reverse_dns) -> None:
        self.lookup = lookup
        self._cache: OrderedDict[str, str | None] = OrderedDict()
        self._pending: set[str] = set()
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def name(self, addr: str) -> str:
        """The cached name of addr, else addr itself (and a lookup is queued)."""
        with self._lock:
            if addr in self._cache:
                self._cache.move_to_end(addr)
                return self._cache[addr] or addr
            if addr in self._pending or len(self._pending) >= MAX_PENDING:
                return addr
            self._pending.add(addr)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="retrotap-names", daemon=True)
            self._thread.start()
        self._queue.put(addr)
        return addr

    def known(self) -> dict[str, str]:
        """Every address with a resolved name so far."""
        with self._lock:
            return {addr: name for addr, name in self._cache.items() if name}

    def idle(self) -> bool:
        """No lookup is waiting or running."""
        with self._lock:
            return not self._pending

    def close(self) -> None:
        """Stop the worker (a lookup in progress finishes on its own)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None

    def _work(self) -> None:
        while (addr := self._queue.get()) is not None:
            try:
                found = self.lookup(addr)
            except Exception:  # a resolver's failure only means no name
                found = None
            with self._lock:
                self._pending.discard(addr)
                self._cache[addr] = found
                if len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
