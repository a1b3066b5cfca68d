"""The two lines above the views: which view is shown (tabs) and what is being captured (status)."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label


class ViewBar(Horizontal):
    """The views by key, the active one highlighted; when the titles do not fit (80 columns), only the active
    view keeps its title and the others show their key."""

    DEFAULT_CSS = """
    ViewBar {
        height: 1;
    }
    """
    BRAND = "retrotap"

    def __init__(self, views: Sequence[tuple[str, str]], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.views = list(views)  # (key, title)
        self.active = ""
        self.compact = False

    def compose(self) -> ComposeResult:
        yield Label(self.BRAND, id="brand")
        for key, title in self.views:
            yield Label(f"{key} {title}", id=f"tab-{key}", classes="tab")

    def full_width(self) -> int:
        """Cells the bar needs with every title (each label has one cell of padding on either side)."""
        return len(self.BRAND) + 2 + sum(len(f"{key} {title}") + 2 for key, title in self.views)

    def on_resize(self) -> None:
        compact = self.full_width() > self.size.width
        if compact != self.compact:
            self.compact = compact
            self._label()

    def activate(self, key: str) -> None:
        """Highlight the view with this key."""
        self.active = key
        self._label()

    def _label(self) -> None:
        for key, title in self.views:
            tab = self.query_one(f"#tab-{key}", Label)
            tab.set_class(key == self.active, "-active")
            tab.update(key if self.compact and key != self.active else f"{key} {title}")


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
