"""`?`: every key of the dashboard, in one screen."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static


def key_table(keys: Iterable[tuple[str, str]]) -> Table:
    """Keys and what they do, as a two-column Rich table."""
    grid = Table.grid(padding=(0, 3))
    grid.add_column(style="bold", justify="right")
    grid.add_column()
    for key, what in keys:
        grid.add_row(key, what)
    return grid


class HelpScreen(ModalScreen[None]):
    """The list of keys; Escape, q or ? closes it."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Label("retrotap keys", id="help-title")
            yield Static(key_table(self.keys), id="help-keys")
