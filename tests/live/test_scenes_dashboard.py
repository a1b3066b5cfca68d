"""The dashboard (`retrotap -i VETH` in tmux) through each real-traffic scene: it stays live (the snapshot
age on the status line stays under 2 s at every look), and afterwards shows the scene's top host pair
(Hosts, sorted by total) and top service port (Ports) as tshark finds them in tcpdump's capture of the
same traffic. During the flood, the Overview (the first view) names it: new flows per second above 0 and the
source that opened the most, one of the flood's sources in tcpdump's capture."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from capture_backend.analysis.services import known_ports
from tests.captures import SETTLE_S, start_tcpdump, stop_tcpdump
from tests.lab import Lab
from tests.scenes import Dns, Flood, Lossy, Mixed, Scan, Scene, Web, quiesce
from tests.tmux import Tmux
from tests.tshark import tshark_frames

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("tmux", "retrotap", "tshark", "tcpdump", "trafgen", "dig", "ping")),
        reason="needs tmux, the retrotap command, tshark, tcpdump, trafgen (netsniff-ng), dig, ping",
    ),
]
MAX_AGE_S = 2.0
AGE = re.compile(r"age (\d+(?:\.\d+)?)s")
NEW_FLOWS = re.compile(r"New flows\s+([\d,]+\.\d)/s\s+by (\d+\.\d+\.\d+\.\d+) ")
SCENES: dict[str, Scene] = {
    "web": Web.short(),
    "dns": Dns.short(),
    "lossy": Lossy.short(),
    "scan": Scan.short(),
    "mixed": Mixed.short(),
    "flood": Flood.short(),
}


def top_pair_and_port(pcap: Path) -> tuple[tuple[str, str], tuple[str, int] | None]:
    """The host pair and the service port (the known port of a flow, else the lower) with the most bytes;
    no port when several tie (a scan's probes)."""
    _, frames = tshark_frames(pcap)
    pairs: Counter[tuple[str, str]] = Counter()
    ports: Counter[tuple[str, int]] = Counter()
    known = known_ports()
    for f in frames:
        a, b = sorted((f.src, f.dst))
        pairs[(a, b)] += f.length
        if f.in_transport_conv:
            ks, kd = known[f.sport], known[f.dport]
            service = f.sport if ks and not kd else f.dport if kd and not ks else min(f.sport, f.dport)
            ports[(f.proto_name, service)] += f.length
    (pair, pair_bytes), *rest = pairs.most_common(2) + [((("", ""), 0))]
    assert rest[0][1] < pair_bytes, "the top pair must be clear"
    (port, port_bytes), *others = ports.most_common(2) + [(("", 0), 0)]
    return pair, port if others[0][1] < port_bytes else None


def ages(text: str) -> list[float]:
    return [float(m) for m in AGE.findall(text)]


@pytest.mark.parametrize("name", list(SCENES))
def test_dashboard_stays_live_and_shows_the_top_pair_and_port(name: str, tmp_path: Path) -> None:
    scene = SCENES[name]
    with Lab(drop_ingress=False) as lab:
        scene.setup(lab)
        dump = start_tcpdump(lab, tmp_path / "tcpdump.pcap")
        tmux = Tmux(f"ip netns exec {lab.ns_a} retrotap -i {lab.veth_a}")
        try:
            tmux.wait_for(lambda t: "1 Interfaces" in t and lab.veth_a in t and bool(ages(t)), "the dashboard")
            seen: list[float] = []
            flooding: list[tuple[float, str]] = []  # the Overview's new flows per second and top source
            done = threading.Event()

            def watch() -> None:
                while not done.is_set():
                    text = tmux.pane()
                    seen.extend(ages(text))
                    flooding.extend((float(r.replace(",", "")), src) for r, src in NEW_FLOWS.findall(text))
                    time.sleep(0.25)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            try:
                scene.run(lab)
                quiesce(lab)
                time.sleep(SETTLE_S)
                # The watcher samples about once a second and the screen refreshes once a second: wait (bounded)
                # for the sample that holds the flood, shown for about a second.
                deadline = time.monotonic() + 10
                while name == "flood" and not any(r > 0 for r, _ in flooding) and time.monotonic() < deadline:
                    time.sleep(0.1)
            finally:
                done.set()
                watcher.join(10)
            counts = stop_tcpdump(dump)
            # Live all along: every look at the status line found a fresh snapshot.
            assert len(seen) >= 3 and max(seen) < MAX_AGE_S, seen
            if name == "flood":  # every packet its own pair: no single top pair to name; the Overview names the flood
                named = [src for rate, src in flooding if rate > 0]
                assert named, f"no new flows on the Overview: {flooding}"
                sources = {f.src for f in tshark_frames(tmp_path / "tcpdump.pcap")[1]}
                if counts["dropped"] == 0:  # else a named source's one packet may be the one tcpdump missed
                    assert set(named) <= sources, (named, len(sources))
                assert any(src in sources for src in named), (named, len(sources))
                return
            assert counts["dropped"] == 0, counts
            (a, b), top_port = top_pair_and_port(tmp_path / "tcpdump.pcap")
            tmux.keys("2")
            for _ in range(5):
                if "sort total" in tmux.pane():
                    break
                tmux.keys("s")
                time.sleep(0.3)
            either = f"{re.escape(a)}\\s+=>\\s+{re.escape(b)}|{re.escape(b)}\\s+=>\\s+{re.escape(a)}"
            first = re.compile(rf"^\s*1\s+({either})\s")
            tmux.wait_for(lambda t: "sort total" in t and any(first.match(line) for line in t.splitlines()), "the pair")
            if top_port is not None:
                proto, port = top_port
                tmux.keys("3")
                row = re.compile(rf"^\s*1\s+{proto}\s+{port}\s")
                tmux.wait_for(lambda t: any(row.match(line) for line in t.splitlines()), f"{proto}/{port} first")
            tmux.keys("q")
            assert tmux.wait_exit(), "retrotap did not quit on q"
        finally:
            tmux.close()
