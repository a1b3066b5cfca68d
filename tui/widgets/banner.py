"""A banner over the views that says, in full, when the capture failed or an interface went away."""

from __future__ import annotations

from textual.widgets import Static

from capture_backend.contract import Snapshot


def problems(snap: Snapshot) -> list[str]:
    """What the user must know about the capture itself, one line each (nothing when all is well)."""
    lines = [f"{i.name}: {i.error}" for i in snap.interfaces if i.error]
    if snap.restarts:
        lines.append(f"capture restarted {snap.restarts}× — {snap.last_error}")
    return lines


class ErrorBanner(Static):
    """Hidden while the capture is healthy; the whole message otherwise, never cut to a cell."""

    def show(self, snap: Snapshot) -> None:
        """Show the snapshot's capture problems, or hide."""
        lines = problems(snap)
        self.display = bool(lines)
        if lines:
            self.update("\n".join(lines))
