"""Flows across network namespaces attributed to the process, namespace and container that own them: the lab's
two namespaces stand in for containers, each with an HTTP server (in a cgroup named like a docker container
where the cgroup filesystem lets the test make one), curl from each to the other, and `retrotap stats`
capturing from the host on each end of the veth (`-i NETNS:IFACE`, or `--netns NETNS -i IFACE`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from capture_backend.capture.containers import container_of_pid
from capture_backend.rewind.sessions import Query, SessionStore
from tests.captures import SETTLE_S
from tests.helpers.netns import interfaces_json, run_host, spec, start_host
from tests.lab import Lab, wait_for_output

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
]

PORT = 8000
FETCHES = 4  # curl runs each way
BLOB = 3000  # bytes of the file served
# Where a cgroup the test makes can hold a process: the cgroup v2 root, else v2 beside v1, else a v1 hierarchy.
CGROUP_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/systemd")


@dataclass
class Server:
    side: str
    proc: subprocess.Popen[str]
    container: str | None  # docker:<id12>, or None when no cgroup could be made here
    why_not: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid


def docker_cgroup(pid: int, made: list[Path]) -> tuple[str | None, str]:
    """Move `pid` into a cgroup named as docker names a container's; (its container name, or None and why)."""
    ident = os.urandom(32).hex()
    why = "no cgroup filesystem here takes a process"
    for root in map(Path, CGROUP_ROOTS):
        if not (root / "cgroup.procs").exists():
            continue
        parent = root / "docker"
        try:
            if not parent.exists():
                parent.mkdir()
                made.append(parent)
            group = parent / ident
            group.mkdir()
            made.append(group)
            (group / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as e:
            why = f"{root}: {e.strerror or e}"
            continue
        got = container_of_pid(pid)
        if got == f"docker:{ident[:12]}":
            return got, ""
        why = f"{root}: moved, but /proc/{pid}/cgroup says {got!r}"
    return None, why


@pytest.fixture
def servers(open_lab: Lab, tmp_path: Path) -> Iterator[dict[str, Server]]:
    lab = open_lab
    (tmp_path / "blob").write_bytes(b"x" * BLOB)
    made: list[Path] = []
    out: dict[str, Server] = {}
    try:
        for side in ("a", "b"):
            proc = lab.popen(
                side,
                [sys.executable, "-u", "-m", "http.server", str(PORT), "--bind", "0.0.0.0"],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            wait_for_output(proc, "Serving HTTP", timeout=15, stream="stdout")
            container, why = docker_cgroup(proc.pid, made)
            out[side] = Server(side, proc, container, why)
        yield out
    finally:
        for server in out.values():
            server.proc.kill()
            server.proc.wait(10)
        for group in reversed(made):
            try:
                group.rmdir()
            except OSError:
                pass


def fetch(lab: Lab, client: str, server: str) -> None:
    """curl the blob from `server`'s HTTP server, in `client`'s namespace, FETCHES times."""
    url = f"http://{lab.ip4(server)}:{PORT}/blob"
    for _ in range(FETCHES):
        done = lab.exec(client, ["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{size_download}", url])
        assert done.stdout == str(BLOB)


def last_record(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return json.loads(out.splitlines()[-1])


def http_flows(rec: dict[str, Any], lab: Lab, server: str) -> list[dict[str, Any]]:
    return [f for f in rec["flows"] if f["proto"] == "tcp" and f["dst"] == lab.ip4(server) and f["dport"] == PORT]


@pytest.mark.parametrize("how", ["a", "b", "--netns a"])
def test_flows_on_each_end_of_the_veth_are_the_servers_of_each_namespace(
    open_lab: Lab, servers: dict[str, Server], how: str, tmp_path: Path
) -> None:
    lab = open_lab
    side = how[-1]
    where = ["--netns", lab.ns(side), "-i", lab.veth(side)] if how.startswith("--netns") else ["-i", spec(lab, side)]
    where += ["--sessions", str(tmp_path)]
    stats = start_host("stats", *where, "--format", "json", "--interval", "0.5", "--top", "0")
    fetch(lab, "b", "a")
    fetch(lab, "a", "b")
    time.sleep(SETTLE_S)
    rec = last_record(stats)
    assert [i["name"] for i in rec["interfaces"]] == [spec(lab, side)]
    for server in servers.values():
        flows = http_flows(rec, lab, server.side)
        assert len(flows) == FETCHES
        assert all(f["dst_to_src_bytes"] > BLOB for f in flows)
        mine = [f for f in flows if f.get("pid") == server.pid]
        # The flow's process is the end in the namespace captured in: the server there, or the curl run from
        # there when its socket was read before it exited; the other server is the process of every other flow.
        if server.side == side:
            assert mine == flows
        else:
            assert all(f["process"] == "curl" and f["netns"] == lab.ns(side) for f in flows if f not in mine)
        for f in mine:
            assert f["process"].startswith("python")
            assert f["netns"] == lab.ns(server.side)
            if server.container is not None:
                assert f["container"] == server.container
        # Its Processes entry: its namespace, its container, and every byte of its flows.
        (entry,) = [p for p in rec["processes"] if p["pid"] == server.pid]
        assert entry["name"].startswith("python") and entry["netns"] == lab.ns(server.side)
        assert entry["rx_bytes"] == sum(f["src_to_dst_bytes"] for f in flows)
        assert entry["tx_bytes"] == sum(f["dst_to_src_bytes"] for f in flows)
        assert entry["rx_packets"] == sum(f["src_to_dst_packets"] for f in flows)
        assert entry["tx_packets"] == sum(f["dst_to_src_packets"] for f in flows)
        if server.container is not None:
            assert entry["container"] == server.container
    # The session records of the captured side's server name its namespace and container too.
    with SessionStore(tmp_path, writable=False) as store:
        records = store.query(Query(host=lab.ip4(side), port=PORT, top=0))
    mine = [r for r in records if r["dst"] == lab.ip4(side)]
    assert len(mine) == FETCHES
    here = servers[side]
    assert {(r["pid"], r["netns"], r["container"]) for r in mine} == {(here.pid, lab.ns(side), here.container)}
    missing = [s.why_not for s in servers.values() if s.container is None]
    if missing:
        pytest.skip(f"container names not checked: {missing[0]} (everything else was)")


def test_the_interfaces_listing_names_the_container_of_each_namespace(
    open_lab: Lab, servers: dict[str, Server]
) -> None:
    lab = open_lab
    rows = {row["capture"]: row for row in interfaces_json()}
    for side, server in servers.items():
        row = rows[spec(lab, side)]
        assert row["namespace"] == lab.ns(side)
        if server.container is None:
            pytest.skip(f"no container to name: {server.why_not}")
        assert row["container"] == server.container
    done = run_host("interfaces")
    assert done.returncode == 0
    line = next(x for x in done.stdout.splitlines() if x.startswith(spec(lab, "a") + " "))
    assert line.rstrip().endswith(f"{lab.ns('a')} {servers['a'].container}")
