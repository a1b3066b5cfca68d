"""The one-line prompt at the bottom: `/` (text filter) and `f` (capture filter), with an inline error."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label


class PromptBar(Vertical):
    """Hidden until asked; Enter submits, Escape cancels; an error stays shown under the input."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", show=False)]
    DEFAULT_CSS = """
    PromptBar {
        height: auto;
    }
    PromptBar > Horizontal {
        height: 1;
    }
    PromptBar #prompt-label {
        width: auto;
    }
    PromptBar #prompt-error {
        height: auto;
    }
    """

    class Changed(Message):
        """The text changed (the `/` filter applies while typing)."""

        def __init__(self, kind: str, value: str) -> None:
            super().__init__()
            self.kind = kind
            self.value = value

    class Submitted(Message):
        """Enter: the kind of prompt and its text."""

        def __init__(self, kind: str, value: str) -> None:
            super().__init__()
            self.kind = kind
            self.value = value

    class Cancelled(Message):
        """Escape: the kind of prompt."""

        def __init__(self, kind: str) -> None:
            super().__init__()
            self.kind = kind

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.kind = ""

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Label(id="prompt-label")
            yield Input(id="prompt-input", select_on_focus=False)
        yield Label(id="prompt-error")

    def ask(self, kind: str, label: str, value: str) -> None:
        """Show the prompt with a value to edit and take the keyboard."""
        self.kind = kind
        self.query_one("#prompt-label", Label).update(label)
        field = self.query_one("#prompt-input", Input)
        with field.prevent(Input.Changed):
            field.value = value
        field.cursor_position = len(value)
        self.error("")
        self.display = True
        field.focus()

    def error(self, message: str) -> None:
        """Show (or clear, with '') a message under the input."""
        label = self.query_one("#prompt-error", Label)
        label.update(message)
        label.display = bool(message)

    def close(self) -> None:
        """Hide the prompt."""
        self.display = False
        self.kind = ""

    @property
    def value(self) -> str:
        """The text in the input."""
        return self.query_one("#prompt-input", Input).value

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.kind:
            self.post_message(self.Changed(self.kind, event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Submitted(self.kind, event.value))

    def action_cancel(self) -> None:
        self.post_message(self.Cancelled(self.kind))
