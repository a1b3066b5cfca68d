"""The Overview (0), the Incidents view (9) and `!`: Pilot on captures with a scan and a flood in them, watched by
the real incident watcher (rules as `--alert` takes them), and the dashboard over a file with `--incidents`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.text import Text
from scapy.utils import rdpcap
from textual.widgets import ContentSwitcher, Static
from textual.widgets.data_table import ColumnKey

from capture_backend.contract import address_text
from capture_backend.options import RunOptions
from capture_backend.output.report import capture_health, flow_rows
from capture_backend.run import Run
from tests.helpers.cli import run_retrotap
from tests.helpers.latency import exchanges, nearest_rank
from tests.helpers.tcp_health import EXPECTED as TCP_EXPECTED
from tests.helpers.tcp_health import all_frames
from tests.helpers.tui import FIXED_CLOCK, cells, inspected, read_all, screen_text, sync, wait_rows, watched_app
from tests.pcapgen import mixed_packets, write_pcap
from tests.unit.test_alerts import FLOOD_SOURCES, SCAN_PORTS, SCANNER, TARGET, capture
from tui.app import RetrotapApp
from tui.options import build_parser, exporter_settings
from tui.widgets.flows import COLUMNS as FLOW_COLUMNS
from tui.widgets.format import bits, count, ms, size, utc_stamp
from tui.widgets.incidents import IncidentPanel
from tui.widgets.inspector import InspectorScreen
from tui.widgets.table import SnapTable

NS = 1_000_000_000
SMALL = (80, 24)


@pytest.fixture(scope="module")
def scan_pcap(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("overview") / "scan.pcap"
    capture(path)
    return str(path)


def text_of(app: RetrotapApp, wid: str) -> str:
    return str(app.query_one(f"#{wid}", Static).render())


@sync
async def test_overview_is_first_and_shows_what_the_snapshot_and_the_watcher_hold(
    scan_pcap: str, tmp_path: Path
) -> None:
    app, feed, watcher, shown = watched_app(scan_pcap, str(tmp_path / "incidents"))
    assert [a.rule for a in watcher.status.active] == ["scan", "flood"]  # the scan still holds (last 10 s)
    snap, prev = shown[-1], shown[-2]
    async with app.run_test(size=SMALL) as pilot:
        assert app.query_one(ContentSwitcher).current == "overview"
        feed.snapshot = snap
        app.pull()
        await pilot.pause()
        await pilot.pause()
        # The top pair by its 10 s average (both directions): the scanner and its target.
        t = snap.pairs
        ends = [(address_text(t.fields["a"][i]), address_text(t.fields["b"][i])) for i in range(len(t))]
        row = ends.index((TARGET, SCANNER))
        avg10 = float(t.cols["avg10"][row].sum()) * 8
        assert avg10 == max(float(t.cols["avg10"][i].sum()) * 8 for i in range(len(t)))
        top = cells(app, "ov-pairs")[0]
        assert top[:2] == [f"{TARGET} ⇄ {SCANNER}", bits(avg10)]
        # The file's one interface: what was captured between the two snapshots, by packet time.
        seconds = (snap.last_ns - prev.last_ns) / NS
        rate = (snap.interfaces[0].bytes - prev.interfaces[0].bytes) * 8 / seconds
        assert f"captured {bits(rate)}" in str(app.query_one(".ov-iface-text", Static).render())
        # Floods and scans as the watcher names them: about 2,000 new flows in that second, the scanner's 300 ports.
        churn = watcher.status.churn
        assert churn.new_flows_per_s > FLOOD_SOURCES * 0.9
        assert f"New flows {churn.new_flows_per_s:,.1f}/s" in text_of(app, "ov-churn")
        assert f"Scans     {SCANNER} {SCAN_PORTS} ports" in text_of(app, "ov-scans")
        # The rule holding now, in the alert colour; the incidents frozen so far (scan, then flood).
        alerts = text_of(app, "ov-alerts")
        since = utc_stamp(watcher.status.active[0].since, "%H:%M:%S")
        assert alerts.startswith(f"Alerts    ● scan {SCANNER}={SCAN_PORTS} since {since}  ● flood")
        assert app.query_one("#ov-alerts").has_class("-firing")
        assert [i.rule for i in watcher.status.recent] == ["scan", "flood"]
        latest = utc_stamp(watcher.status.recent[-1].time, "%H:%M:%S")
        assert f"Incidents 2, latest {latest} flood (pcap pending)" in text_of(app, "ov-incidents")
        # Drops of every layer a file has (retrotap's: malformed and evictions), and no coverage to speak of.
        assert text_of(app, "ov-drops") == "Drops     retrotap 0  a file: every packet read"
        assert capture_health(snap, prev, None, FIXED_CLOCK)["coverage"] is None
        # Ports by their rate since the last snapshot: the flood's udp/53 first.
        assert cells(app, "ov-ports")[0][0] == "udp/53 domain"
        assert [r[0] for r in cells(app, "ov-processes")] == ["live capture only"]
        # Everything fits 80 columns: the view bar numbers the other views.
        assert screen_text(app).splitlines()[0].split() == ["retrotap", "0", "Overview", *"123456789"]


def incidents_app(pcap: str, directory: Path, *extra: str) -> Iterator[tuple[RetrotapApp, Run]]:
    """The dashboard over `pcap` as `retrotap -r pcap --incidents directory ...` builds it."""
    args = build_parser().parse_args(["-r", pcap, "--incidents", str(directory), *extra])
    opts = RunOptions(
        read_file=pcap,
        realtime=args.realtime,
        snapshot_dir=str(directory),
        exporters=exporter_settings(args),
        buffer_size=args.buffer_size,
        buffer_seconds=args.buffer_seconds,
    )
    run = Run(opts, print)
    run.open()
    try:
        yield RetrotapApp(run.engine, clock=lambda: FIXED_CLOCK, source=Path(pcap).name, run=run), run
    finally:
        run.close()


@sync
async def test_incidents_view_lists_a_stats_runs_incidents_and_opens_the_frozen_moment(
    scan_pcap: str, tmp_path: Path
) -> None:
    inc = tmp_path / "incidents"
    res = run_retrotap(
        "stats", "-r", scan_pcap, "--interval", "1", "--incidents", str(inc),
        "--alert", "scan: scan_ports > 100", "--alert", "flood: new_flows > 1000",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    listed = [json.loads(line) for line in run_retrotap("incidents", str(inc), "--format", "json").stdout.splitlines()]
    assert [r["rule"] for r in listed] == ["scan", "flood"]
    for app, _ in incidents_app(scan_pcap, inc):
        async with app.run_test(size=SMALL) as pilot:
            await pilot.press("9")
            rows = await wait_rows(app, pilot, "incidents-table", 2)
            # Newest first: time, rule, what fired it, packets (a file run keeps none: no time machine).
            expected = [
                [utc_stamp(r["time"]), r["rule"], f"{r['top']['label']}={r['top']['value']:.6g}"
                 if r["top"]["label"] else f"{r['top']['value']:.6g}", "none"]
                for r in reversed(listed)
            ]  # fmt: skip
            assert [r[:4] for r in rows] == expected
            assert rows[1][2] == f"{SCANNER}={SCAN_PORTS}"
            # Enter on the scan: the rows that fired it and the moment's record, from incident.json.
            await pilot.press("down", "enter")
            await pilot.pause()
            assert isinstance(app.screen, IncidentPanel)
            doc = json.loads((Path(listed[0]["path"]) / "incident.json").read_text())
            assert cells(app, "incident-fired") == [[SCANNER, str(SCAN_PORTS)]]
            hosts = {r[0]: r[3] for r in cells(app, "incident-hosts")}
            assert hosts[TARGET] == count(2 * SCAN_PORTS) and hosts[SCANNER] == count(2 * SCAN_PORTS)
            assert hosts == {h["addr"]: count(h["packets"]) for h in doc["record"]["hosts"]}
            top_pair = doc["record"]["pairs"][0]
            assert cells(app, "incident-pairs")[0] == [f"{TARGET} ⇄ {SCANNER}", size(top_pair["bytes"]), count(600)]
            assert "pcap: the time machine is off" in screen_text(app)
            await pilot.press("escape")
            # `i` on an incident without packets says why instead of opening an empty inspector.
            await pilot.press("i")
            await pilot.pause()
            assert not isinstance(app.screen, InspectorScreen)
            assert any("the time machine is off" in n.message for n in app._notifications)


@sync
async def test_bang_freezes_an_incident_with_its_packets_and_i_inspects_them(tmp_path: Path) -> None:
    pcap = tmp_path / "mixed.pcap"
    packets = mixed_packets()
    write_pcap(pcap, packets)
    inc = tmp_path / "incidents"
    for app, run in incidents_app(str(pcap), inc, "--realtime", "--post", "0s"):
        async with app.run_test(size=(160, 50), notifications=True) as pilot:
            for _ in range(500):  # bounded (10 s): the file is read at its own pace
                await pilot.pause(0.02)
                if run.snapshot.packets:
                    break
            await pilot.press("exclamation_mark")
            for _ in range(500):  # bounded: the watcher freezes on its thread, the pcap follows (--post 0s)
                await pilot.pause(0.02)
                recent = run.alert_status.recent
                if recent and recent[-1].packets is not None:
                    break
            frozen = run.alert_status.recent[-1]
            assert frozen.rule == "manual" and Path(frozen.path).parent == inc
            app.render_view()
            status = str(app.query_one("#status-text", Static).render())
            assert f"incident frozen: {frozen.path} (pcap after --post 0s)" in status
            doc = json.loads((Path(frozen.path) / "incident.json").read_text())
            assert doc["incident"]["rule"] == "manual" and doc["record"]["totals"]["packets"] > 0
            # The pcap holds exactly the file's packets of the window [trigger - pre, trigger + post]: here, from
            # the file's first packet to the trigger (JSON times are floats: to the microsecond).
            written = rdpcap(str(Path(frozen.path) / doc["pcap"]["files"][0]))
            hi = doc["pcap"]["to"] * NS + 1000
            assert doc["pcap"]["from"] * NS < int(packets[0].time * NS)
            assert len(written) == sum(int(p.time * NS) <= hi for p in packets) == frozen.packets > 0
            assert [bytes(p) for p in written] == [bytes(p) for p in packets[: len(written)]]
            await pilot.press("9")
            rows = await wait_rows(app, pilot, "incidents-table", 1)
            assert rows[0][1:4] == ["manual", "–", count(frozen.packets)]
            # Enter: the frozen moment says where its packets are; `i` there (or in the list) decodes them.
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, IncidentPanel)
            pcap_name = doc["pcap"]["files"][0]
            assert f"pcap: {pcap_name} ({count(frozen.packets)} packets)  i: inspect" in screen_text(app)
            await pilot.press("i")
            screen = await inspected(app, pilot)
            assert len(screen.packets) == frozen.packets
            assert screen.what == pcap_name


@sync
async def test_overview_tcp_and_latency_lines_sum_the_flows(tmp_path: Path) -> None:
    """TCP health and latency over tests/helpers/tcp_health.py's sessions (figures checked against tshark) and
    tests/helpers/latency.py's exchanges: the Overview's one-line totals are the per-flow figures summed."""
    pcap = tmp_path / "health.pcap"
    write_pcap(pcap, sorted(exchanges() + all_frames(), key=lambda f: f.ts_ns), nanosecond=True)
    engine = read_all(str(pcap))
    try:
        app = RetrotapApp(engine, clock=lambda: FIXED_CLOCK, source="health.pcap")  # type: ignore[arg-type]
        async with app.run_test(size=SMALL) as pilot:
            await pilot.pause()
            tcp = [r for r in flow_rows(engine.snapshot, top=0) if r["proto"] == "tcp"]
            retr = sum(r["tcp"]["retransmissions"] for r in tcp)
            assert retr == sum(h[0] for h in TCP_EXPECTED.values()) == 9
            share = 100 * retr / sum(r["packets"] for r in tcp)
            rtts = [r["tcp"]["handshake_rtt_ms"] for r in tcp if r["tcp"]["handshake_rtt_ms"] is not None]
            rtt = f"{ms(nearest_rank(rtts, 0.5))}/{ms(nearest_rank(rtts, 0.95))}"
            assert text_of(app, "ov-tcp") == (
                f"TCP       retr 9 ({share:.1f}%)  ooo 1  dupack 4  rst 2  RTT p50/p95 {rtt} ms"
            )
            # The busiest services (tests/unit/test_tui.py's Latency view shows the same: dns 9, http/80 2): at 80
            # columns the busiest one, so that the line is not cut.
            assert text_of(app, "ov-latency") == "Latency   dns udp/53 p50 8.00 p95 1,230 ms (9) · unanswered 0"
    finally:
        engine.close()
    wide = read_all(str(pcap))  # an app reads its engine's file again: a fresh one for the second size
    try:
        app = RetrotapApp(wide, clock=lambda: FIXED_CLOCK, source="health.pcap")  # type: ignore[arg-type]
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.pause()
            assert text_of(app, "ov-latency") == (
                "Latency   dns udp/53 p50 8.00 p95 1,230 ms (9) · http tcp/80 p50 30.0 p95 99.0 ms (2) · unanswered 0"
            )
    finally:
        wide.close()


@sync
async def test_at_80_columns_hosts_and_flows_keep_their_main_columns_and_nothing_is_cut(tmp_path: Path) -> None:
    pcap = tmp_path / "mixed.pcap"
    write_pcap(pcap, mixed_packets())
    engine = read_all(str(pcap))
    try:
        app = RetrotapApp(engine, clock=lambda: FIXED_CLOCK, source="mixed.pcap")  # type: ignore[arg-type]
        async with app.run_test(size=SMALL) as pilot:
            for key, table, kept in (
                ("4", "flows-table", ["proto", "src", "sport", "dst", "dport", "rate", "total", "retrans"]),
                ("2", "hosts-table", ["rank", "pair", "2s", "10s", "40s"]),
            ):
                await pilot.press(key)
                await pilot.pause()
                shown = app.query_one(f"#{table}", SnapTable)
                assert [c.key for c in shown.spec] == kept
                assert shown.virtual_size.width <= shown.scrollable_content_region.width  # no sideways scrolling
                text = screen_text(app)
                assert all(cell.strip() in text for cell in cells(app, table)[0])  # the first row, whole
                assert shown.columns[ColumnKey(kept[-1])].label.plain.split()[0] in text  # the last header
        assert {c.key for c in FLOW_COLUMNS} > {"bytes_out", "bytes_in", "process"}  # shown when wider
    finally:
        engine.close()


@sync
async def test_incidents_view_puts_the_alerts_holding_now_first_in_the_alert_colour(
    scan_pcap: str, tmp_path: Path
) -> None:
    app, feed, watcher, shown = watched_app(scan_pcap, str(tmp_path / "incidents"))
    async with app.run_test(size=SMALL) as pilot:
        feed.snapshot = shown[-1]
        await pilot.press("9")
        rows = await wait_rows(app, pilot, "incidents-table", 4)
        scan, flood = watcher.status.active
        assert [r[:4] for r in rows[:2]] == [
            [utc_stamp(scan.since), "scan", f"{SCANNER}={SCAN_PORTS}", "holding"],
            [utc_stamp(flood.since), "flood", f"{flood.rows[0][1]:.6g}", "holding"],  # new_flows: one number
        ]
        assert [r[1] for r in rows[2:]] == ["flood", "scan"]  # then the incidents, newest first
        table = app.query_one("#incidents-table", SnapTable)
        alert = table.get_component_rich_style("snaptable--alert")
        first = table.get_row_at(0)
        assert all(isinstance(c, Text) and c.style == alert for c in first)
        assert not isinstance(table.get_row_at(2)[1], Text)  # an incident's rule: plain
