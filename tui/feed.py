"""SnapshotFeed: an engine stand-in that publishes whatever snapshot it is given (tests, screenshots, the
dashboard refresh bench)."""

from __future__ import annotations

from capture_backend.contract import EventSink, Snapshot
from capture_backend.run import LINKTYPE_ETHERNET, check_filter


class SnapshotFeed:
    """An engine stand-in that publishes whatever snapshot it is given (tests, screenshots)."""

    def __init__(self, snapshot: Snapshot, linktype: int = LINKTYPE_ETHERNET) -> None:
        self.snapshot = snapshot
        self.linktype = linktype
        self.filter = snapshot.filter
        self.on_event: EventSink | None = None
        self.running = True

    def start(self) -> None:
        """Nothing to start."""

    def close(self) -> None:
        """Nothing to stop."""

    def set_filter(self, expr: str) -> None:
        """Check the filter as the engines do (FilterError keeps the old one)."""
        check_filter(expr, self.linktype)
        self.filter = expr
