"""The two lines above the views: which view is shown (tabs) and what is being captured (status)."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label


class ViewBar(Horizontal):
    """The numbered views, the active one highlighted."""

    DEFAULT_CSS = """
    ViewBar {
        height: 1;
    }
    """

    def __init__(self, titles: Sequence[str], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.titles = list(titles)
        self.active = 1

    def compose(self) -> ComposeResult:
        yield Label("retrotap", id="brand")
        for n, title in enumerate(self.titles, 1):
            yield Label(f"{n} {title}", id=f"tab-{n}", classes="tab")

    def activate(self, index: int) -> None:
        """Highlight view number index (1-based); when the titles do not all fit, only the active one is
        spelled out (the others keep their number)."""
        self.active = index
        full = len("retrotap") + 2 + sum(len(f"{n} {t}") + 2 for n, t in enumerate(self.titles, 1))
        narrow = 0 < self.size.width < full
        for n, title in enumerate(self.titles, 1):
            tab = self.query_one(f"#tab-{n}", Label)
            tab.set_class(n == index, "-active")
            tab.update(str(n) if narrow and n != index else f"{n} {title}")

    def on_resize(self) -> None:
        self.activate(self.active)


class StatusBar(Horizontal):
    """Source, filters and totals on the left; badges (paused, names) on the right."""

    DEFAULT_CSS = """
    StatusBar {
        height: 1;
    }
    #status-text {
        width: 1fr;
    }
    """

    def compose(self) -> ComposeResult:
        yield Label(id="asof-badge", classes="badge")
        yield Label(id="status-text")
        yield Label("names", id="names-badge", classes="badge")
        yield Label("PAUSED", id="paused-badge", classes="badge")

    def show(self, text: str, paused: bool, names: bool, asof: str = "") -> None:
        """Set the status line and the badges (asof: the rewound time the views show, '' when live)."""
        self.query_one("#status-text", Label).update(text)
        badge = self.query_one("#asof-badge", Label)
        badge.display = bool(asof)
        badge.update(asof)
        self.query_one("#paused-badge", Label).display = paused
        self.query_one("#names-badge", Label).display = names
