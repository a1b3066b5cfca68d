"""Capture in another network namespace from the host's (`-i NETNS:IFACE`), the interfaces of every
namespace (`retrotap interfaces`), and dropping root (`-Z USER`), in the netns lab."""

from __future__ import annotations

import csv
import io
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.captures import SETTLE_S, read_pcap, start_tcpdump, stop_tcpdump
from tests.helpers.live import udp
from tests.helpers.netns import (
    RETROTAP,
    interfaces_json,
    proc_status,
    readd_veth,
    run_host,
    snapshot_line,
    spec,
    start_host,
)
from tests.lab import REPO_ROOT, Lab, wait_for_output
from tests.tmux import Tmux

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump"),
]

REPEAT = 20


def frames(lab: Lab) -> list[bytes]:
    """Ten UDP frames of different sizes from b to a."""
    return [udp(lab, 40000 + i, 5000 + i, 20 + 37 * i) for i in range(10)]


def test_stats_from_the_host_counts_what_tcpdump_in_the_namespace_saw(lab: Lab, tmp_path: Path) -> None:
    dump = start_tcpdump(lab, tmp_path / "tcpdump.pcap")
    proc = start_host("stats", "-i", spec(lab, "a"), "--format", "json", "--top", "0", "--interval", "0.5")
    sent = lab.send_frames(frames(lab), repeat=REPEAT)
    time.sleep(SETTLE_S)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    counts = stop_tcpdump(dump)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    last = json.loads(out.splitlines()[-1])
    reference = read_pcap(tmp_path / "tcpdump.pcap")
    assert sent == len(frames(lab)) * REPEAT
    assert counts["captured"] == len(reference) == sent
    want_bytes = sum(orig for _, orig, _ in reference)
    assert want_bytes == REPEAT * sum(len(f) for f in frames(lab))
    assert last["totals"]["packets"] == sent
    assert last["totals"]["bytes"] == want_bytes
    (iface,) = last["interfaces"]
    assert iface["name"] == spec(lab, "a")
    assert (iface["captured_packets"], iface["captured_bytes"]) == (sent, want_bytes)
    # Link counters come from netlink in the namespace: veth a received exactly what b sent.
    assert iface["rx_packets"] == lab.link_stats("a")["rx"]["packets"] == sent
    assert iface["operstate"] == "UP"
    ports = {(p["proto"], p["port"]) for p in last["ports"]}
    assert {("udp", 5000 + i) for i in range(10)} <= ports


@pytest.mark.parametrize("fmt", ["text", "csv"])
def test_stats_in_two_namespaces_name_both_ends(lab: Lab, fmt: str) -> None:
    proc = start_host("stats", "-i", spec(lab, "a"), "-i", spec(lab, "b"), "--format", fmt, "--interval", "0.5")
    sent = lab.send_frames(frames(lab), repeat=2)
    time.sleep(SETTLE_S)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert sent == 20
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        last = {r["name"]: r for r in rows if r["kind"] == "interface"}
        assert set(last) == {spec(lab, "a"), spec(lab, "b")}
        assert [int(last[spec(lab, side)]["received"]) for side in "ab"] == [sent, sent]  # the rings
        # and each link's own counters, from its namespace's netlink: a only received, b only sent
        assert [int(last[spec(lab, "a")][k]) for k in ("rx_packets", "tx_packets")] == [sent, 0]
        assert [int(last[spec(lab, "b")][k]) for k in ("rx_packets", "tx_packets")] == [0, sent]
    else:
        assert spec(lab, "a") in out and spec(lab, "b") in out


def test_interfaces_lists_the_veth_pair_with_each_end_s_namespace_and_peer(lab: Lab) -> None:
    rows = {row["capture"]: row for row in interfaces_json()}
    a, b = rows[spec(lab, "a")], rows[spec(lab, "b")]
    assert (a["namespace"], a["interface"], a["kind"], a["state"], a["linktype"]) == (
        lab.ns_a,
        lab.veth_a,
        "veth",
        "up",
        "ether",
    )
    assert a["peer"] == {"namespace": lab.ns_b, "interface": lab.veth_b, "capture": spec(lab, "b")}
    assert b["peer"] == {"namespace": lab.ns_a, "interface": lab.veth_a, "capture": spec(lab, "a")}
    assert rows[f"{lab.ns_a}:lo"]["linktype"] == "loopback"
    assert any(row["namespace"] is None for row in rows.values())  # the current namespace is listed too
    text = run_host("--list-interfaces")
    assert text.returncode == 0, text.stderr
    line_a = next(line for line in text.stdout.splitlines() if line.startswith(spec(lab, "a") + " "))
    assert line_a.split() == [spec(lab, "a"), "up", "ether", "veth", spec(lab, "b"), lab.ns_a]


def test_a_process_namespace_is_listed_once_and_captured_as_pid(lab: Lab) -> None:
    sleeper = lab.popen_a(["sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{sleeper.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "sleep never entered the namespace"
            time.sleep(0.05)
        rows = interfaces_json()
        # Namespace a has a name: its interfaces are listed under it, not again under the sleeper's pid.
        assert [r["namespace"] for r in rows if r["interface"] == lab.veth_a] == [lab.ns_a]
        proc = start_host("stats", "-i", f"pid:{sleeper.pid}:{lab.veth_a}", "--format", "json", "--interval", "0.5")
        sent = lab.send_frames(frames(lab), repeat=1)
        time.sleep(SETTLE_S)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        last = json.loads(out.splitlines()[-1])
        assert last["interfaces"][0]["name"] == f"pid:{sleeper.pid}:{lab.veth_a}"
        assert last["totals"]["packets"] == sent == 10
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def test_dropped_to_nobody_counts_exactly_writes_as_nobody_and_cannot_open_a_ring(lab: Lab) -> None:
    nobody = pwd.getpwnam("nobody")
    base = lab.tmpdir()
    os.chmod(base, 0o755)
    out_dir = base / "rec"
    out_dir.mkdir()
    os.chown(out_dir, nobody.pw_uid, nobody.pw_gid)
    proc = start_host(
        "record", "-i", spec(lab, "a"), "-Z", "nobody", "-w", str(out_dir), "--snapshot-dir", str(out_dir)
    )
    try:
        status = proc_status(proc.pid)
        assert status["Uid"] == [str(nobody.pw_uid)] * 4
        assert status["Gid"] == [str(nobody.pw_gid)] * 4
        assert status["Groups"] == []
        assert int(status["CapEff"][0], 16) == int(status["CapPrm"][0], 16) == 0
        sent = lab.send_frames(frames(lab), repeat=REPEAT)
        time.sleep(SETTLE_S)
        proc.send_signal(signal.SIGUSR1)
        snap, held = snapshot_line(wait_for_output(proc, "snapshot:", timeout=30))
        assert held == sent == 10 * REPEAT
        assert snap.stat().st_uid == nobody.pw_uid
        assert [data for _, _, data in read_pcap(snap)] == frames(lab) * REPEAT
        # A new ring needs root: the interface removed and back is refused in one line, capture goes on.
        lab.delete_veth()
        wait_for_output(proc, "was removed", timeout=20)
        readd_veth(lab, "a")
        line = wait_for_output(proc, "cannot open a new ring", timeout=20)
        assert f"retrotap: error: cannot open a new ring on {spec(lab, 'a')}: retrotap dropped root" in line
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err
    assert f"captured {sent} packets" in err
    written = sorted(out_dir.iterdir())
    recordings = [p for p in written if p.name.startswith(spec(lab, "a")) and p.suffix == ".pcap"]
    assert len(recordings) == 1
    assert [data for _, _, data in read_pcap(recordings[0])] == frames(lab) * REPEAT
    assert {p.name: p.stat().st_uid for p in written} == {p.name: nobody.pw_uid for p in written}


def test_bad_namespace_interface_or_user_is_one_line_and_status_2(lab: Lab, tmp_path: Path) -> None:
    cases = {
        ("-i", "rt-no-such-namespace:eth0"): "unknown network namespace 'rt-no-such-namespace'",
        ("-i", f"{lab.ns_a}:nope0"): f"unknown interface 'nope0' in network namespace '{lab.ns_a}'",
        ("-i", "pid:999999999:eth0"): "unknown network namespace 'pid:999999999': no process 999999999",
        ("-i", spec(lab, "a"), "-Z", "rt-no-such-user"): "-Z 'rt-no-such-user': no such user",
    }
    for args, message in cases.items():
        done = run_host("stats", *args, "--count", "1", "--format", "json")
        assert done.returncode == 2, (args, done.stderr)
        assert done.stdout == ""
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert done.stderr.startswith(f"retrotap: error: {message}")
    os.chmod(tmp_path, 0o700)
    done = run_host("record", "-i", spec(lab, "a"), "-Z", "nobody", "-w", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr == f"retrotap: error: -w {str(tmp_path)!r}: not writable by user nobody (-Z)\n"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_with_only_net_raw_and_net_admin_the_own_namespace_works_and_others_are_one_line(lab: Lab) -> None:
    limited = ["setpriv", "--bounding-set", "-all,+net_raw,+net_admin", *RETROTAP]
    own = subprocess.run(
        [*limited, "stats", "-i", "lo", "--count", "1", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert own.returncode == 0, own.stderr
    assert json.loads(own.stdout)["interfaces"][0]["name"] == "lo"
    other = subprocess.run(
        [*limited, "stats", "-i", spec(lab, "a"), "--count", "1"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert other.returncode == 2
    assert other.stderr == f"retrotap: error: cannot enter network namespace '{lab.ns_a}': needs CAP_SYS_ADMIN\n"
    listed = subprocess.run(
        [*limited, "interfaces", "--format", "json"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert {json.loads(line)["namespace"] for line in listed.stdout.splitlines()} == {None}


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_the_dashboard_from_the_host_shows_the_namespace_s_interface(lab: Lab) -> None:
    both = f"{spec(lab, 'a')} {spec(lab, 'b')}"
    tmux = Tmux(
        f"sh -c 'cd {REPO_ROOT} && exec {sys.executable} -m tui.cli -i {spec(lab, 'a')} -i {spec(lab, 'b')}'"
    )
    try:
        tmux.wait_for(lambda t: "0 Overview" in t and spec(lab, "b") in t, both)
        tmux.keys("1")
        screen = tmux.wait_for(lambda t: "1 Interfaces" in t and spec(lab, "b") in t and "Captured" in t, both)
        assert spec(lab, "a") in screen
        sent = lab.send_frames(frames(lab), repeat=3)
        assert sent == 30
        # Both ends captured the 30 frames; the link rates come from each namespace's own netlink: a only
        # received, b only sent (the sparklines' maxima over the last 60 s).
        a_rx, b_tx = f"{spec(lab, 'a')} rx", f"{spec(lab, 'b')} tx"

        def peaks(screen: str) -> dict[str, str]:
            return dict(re.findall(r"^\s*(\S+ [rt]x) .*max ([^)]+)\)", screen, re.M))

        screen = tmux.wait_for(
            lambda t: f"{2 * sent} pkts" in t and "0 b/s" not in (peaks(t).get(a_rx, "0 b/s"), peaks(t).get(b_tx)),
            f"{2 * sent} packets captured, a receiving and b sending",
        )
        assert peaks(screen)[f"{spec(lab, 'a')} tx"] == peaks(screen)[f"{spec(lab, 'b')} rx"] == "0 b/s"
        tmux.keys("q")
        assert tmux.wait_exit(), "retrotap did not quit on q"
    finally:
        tmux.close()


def test_after_the_drop_a_filter_change_and_a_link_down_and_up_keep_working(lab: Lab) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.dropped", spec(lab, "a"), "nobody"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    assert driver.stdin is not None and driver.stdout is not None
    nobody = pwd.getpwnam("nobody").pw_uid

    def ask(command: str) -> dict[str, object]:
        assert driver.stdin is not None and driver.stdout is not None
        driver.stdin.write(command + "\n")
        driver.stdin.flush()
        answer: dict[str, object] = json.loads(driver.stdout.readline())
        return answer

    try:
        assert json.loads(driver.stdout.readline()) == {"uid": nobody, "euid": nobody}
        assert ask("filter udp dst port 5003") == {"filter": "udp dst port 5003"}
        sent = lab.send_frames(frames(lab), repeat=REPEAT)
        time.sleep(SETTLE_S)
        # Only frame 3 of each ten matches the new filter.
        assert ask("count") == {"name": spec(lab, "a"), "packets": sent // 10, "state": "up"}
        lab.set_link("a", False)
        lab.set_link("a", True)
        lab.set_link("b", True)
        sent_again = lab.send_frames(frames(lab), repeat=REPEAT)
        time.sleep(SETTLE_S)
        assert ask("count")["packets"] == (sent + sent_again) // 10
        refused = ask("filter udp port (")  # libpcap's message, and the filter in force is kept
        assert set(refused) == {"error"} and "udp port (" in str(refused["error"])
        assert ask("filter udp dst port 5003") == {"filter": "udp dst port 5003"}
    finally:
        _, err = driver.communicate("quit\n", timeout=30)
    assert driver.returncode == 0, err
    assert "Traceback" not in err
