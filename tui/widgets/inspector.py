"""The packet inspector (`i`, `I`): packet list, protocol tree and hex dump, like termshark.

tshark decodes in a worker thread; its progress and its result come back as messages.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static, Tree
from textual.widgets.tree import TreeNode

from capture_backend.contract import INSPECT_LIMIT, InspectJob, InspectorError, Node, PacketView, hexdump

COLUMNS = ("No.", "Time", "Source", "Destination", "Protocol", "Length", "Info")


class InspectorScreen(Screen[None]):
    """A packet list; the selected packet's protocol tree and bytes under it. Escape closes."""

    BINDINGS = [Binding("escape", "dismiss", "Close")]

    class Progress(Message):
        """Packets decoded so far (from the worker)."""

        def __init__(self, decoded: int) -> None:
            super().__init__()
            self.decoded = decoded

    class Done(Message):
        """The decoded packets, or why there are none (from the worker)."""

        def __init__(self, packets: list[PacketView], error: str = "") -> None:
            super().__init__()
            self.packets = packets
            self.error = error

    def __init__(self, title: str, job: InspectJob, limit: int = INSPECT_LIMIT) -> None:
        super().__init__()
        self.what = title
        self.job = job
        self.limit = limit
        self.packets: list[PacketView] = []
        self.done = False
        self.error = ""

    def compose(self) -> ComposeResult:
        yield Static(f"Inspector: {self.what}", id="inspector-title")
        yield Static(f"decoding up to {self.limit:,} packets…", id="inspector-status")
        yield DataTable(id="inspector-list", cursor_type="row")
        yield Tree("packet", id="inspector-tree")
        with VerticalScroll(id="inspector-hex-pane"):
            yield Static("", id="inspector-hex", markup=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#inspector-list", DataTable)
        table.add_columns(*COLUMNS)
        self.query_one("#inspector-tree", Tree).show_root = False
        table.focus()
        self.run_worker(self._work, thread=True, exclusive=True, name="inspector")

    def _work(self) -> None:
        try:
            packets = self.job(self._progress)
        except InspectorError as e:
            self.post_message(self.Done([], str(e)))
        except Exception as e:  # the screen must say something, never spin forever
            self.post_message(self.Done([], f"inspector failed: {type(e).__name__}: {e}"))
        else:
            self.post_message(self.Done(packets))

    def _progress(self, decoded: int) -> None:
        self.post_message(self.Progress(decoded))

    def on_inspector_screen_progress(self, message: Progress) -> None:
        if not self.done:
            self.query_one("#inspector-status", Static).update(f"decoding {message.decoded:,} packets…")

    def on_inspector_screen_done(self, message: Done) -> None:
        self.done = True
        self.error = message.error
        status = self.query_one("#inspector-status", Static)
        if message.error:
            status.update(message.error)
            status.add_class("error")
            return
        self.packets = message.packets
        capped = f" (capped at --inspect-limit {self.limit:,})" if len(self.packets) >= self.limit else ""
        status.update(f"{len(self.packets):,} packets{capped}")
        table = self.query_one("#inspector-list", DataTable)
        t0 = self.packets[0].time_ns if self.packets else 0
        for i, p in enumerate(self.packets):
            rel = f"{(p.time_ns - t0) / 1e9:.6f}"
            cells = (str(p.number), rel, p.source, p.destination, p.protocol, str(p.length), p.info)
            table.add_row(*(Text(c) for c in cells), key=str(i))
        if self.packets:
            self.show_packet(0)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self.show_packet(int(event.row_key.value))

    def show_packet(self, index: int) -> None:
        """Fill the tree and the hex pane with one packet."""
        packet = self.packets[index]
        tree: Tree[None] = self.query_one("#inspector-tree", Tree)
        tree.clear()
        tree.root.set_label(f"Frame {packet.number}")
        for label, children in packet.tree:
            node = tree.root.add(Text(label), expand=not label.startswith("Frame "))
            _add(node, children)
        tree.root.expand()
        self.query_one("#inspector-hex", Static).update(Text(hexdump(packet.raw)))

    def tree_labels(self) -> list[str]:
        """The labels of the tree's top level (tests, and what is on screen)."""
        tree: Tree[None] = self.query_one("#inspector-tree", Tree)
        return [str(node.label) for node in tree.root.children]


def _add(parent: TreeNode[None], nodes: list[Node]) -> None:
    for label, children in nodes:
        if children:
            _add(parent.add(Text(label)), children)
        else:
            parent.add_leaf(Text(label))
