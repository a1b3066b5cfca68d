"""Containers from cgroups, every namespace's processes and sockets from /proc, and flows attributed across
namespaces: cgroup lines of each runtime, a namespace the test creates with `ip netns add` and a process
listening in it."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

from capture_backend.analysis.processes import ProcessMapper
from capture_backend.capture.containers import container_of_cgroup, container_of_path
from capture_backend.capture.netlink import netns_interfaces
from capture_backend.capture.netns import NamespaceError
from capture_backend.capture.sockets import parse_local_addresses, parse_table, read_sockets, scan
from capture_backend.contract import IfaceStatus, Snapshot, UserError, address_bytes
from tests.conftest import lab_unusable_reason
from tests.lab import NS_PREFIX, wait_for_output
from tests.unit.test_processes import TCP, UDP_P, key, snapshot

ID = "0f99ad5f45163ed14ab8eaf92ed34bb4a631d007f8755a7d79be614bcb0df0ef"
ID2 = "2403ccfe427f1dc7b6120dccb9ac58c2f8456950380d587a9f33ea7f00dd303d"
DOCKER_V1 = "\n".join(
    [f"{n}:{c}:/docker/{ID2}" for n, c in enumerate(["cpu,cpuacct", "pids", "memory", "name=systemd"], 2)]
    + ["1:rdma:/", "0::/system.slice/containerd.service"]
)


@pytest.mark.parametrize(
    ("cgroup", "container"),
    [
        (DOCKER_V1, f"docker:{ID2[:12]}"),
        (f"0::/system.slice/docker-{ID}.scope", f"docker:{ID[:12]}"),
        (f"0::/machine.slice/libpod-{ID}.scope/container", f"podman:{ID[:12]}"),
        (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope", f"podman:{ID[:12]}"),
        (f"5:memory:/libpod_parent/libpod-{ID}\n0::/", f"podman:{ID[:12]}"),
        (f"0::/machine.slice/libpod-conmon-{ID}.scope", ""),  # podman's monitor, not the container
        (f"0::/system.slice/cri-containerd-{ID}.scope", f"containerd:{ID[:12]}"),
        (f"0::/machine.slice/crio-{ID}.scope", f"crio:{ID[:12]}"),
        (
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poddde1244b_5bb5_4297_b544_85f3bc0d80bf"
            f".slice/cri-containerd-{ID}.scope",
            f"k8s:poddde1244b/{ID[:12]}",
        ),
        (
            "1:name=systemd:/system.slice/containerd.service/kubepods-burstable-podff49d0be_16b7_4a49_bb9e_"
            f"8ec1f1f4e27f.slice:cri-containerd:{ID}",
            f"k8s:podff49d0be/{ID[:12]}",
        ),
        (f"4:pids:/kubepods/besteffort/pod91a8fc3a-0ecf-48b4-81bf-78a7275d348c/{ID}", f"k8s:pod91a8fc3a/{ID[:12]}"),
        (f"0::/kubepods/burstable/podb53dfa9e2dc9b890f7fadb2770857b03/{ID}", f"k8s:podb53dfa9e/{ID[:12]}"),
        (  # docker in a pod's docker: the innermost container
            f"0::/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable"
            f".slice/kubelet-kubepods-burstable-podd8992f589d8dd12c4342376ccb459375.slice/cri-containerd-{ID}.scope",
            f"k8s:podd8992f58/{ID[:12]}",
        ),
        ("0::/lxc.payload.web1", "lxc:web1"),
        ("0::/user.slice/user-1000.slice/session-2.scope", ""),
        ("0::/system.slice/containerd.service", ""),
        ("0::/", ""),
    ],
)
def test_container_names_from_cgroup_lines_of_each_runtime(cgroup: str, container: str) -> None:
    assert container_of_cgroup(cgroup) == container


def test_a_cgroup_path_without_a_whole_id_is_no_container() -> None:
    assert container_of_path(f"/docker/{ID[:40]}") == ""
    assert container_of_path(f"/system.slice/docker-{ID}x.scope") == ""


TCP4 = (
    b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    b"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0\n"
    b"   1: 020012C6:A2B4 010012C6:1F90 01 00000000:00000000 02:000AFC49 00000000  1000        0 4343 2 0 20 4 30\n"
    b"   2: 020012C6:A2B6 010012C6:1F90 06 00000000:00000000 03:00000F7B 00000000     0        0 0 3 0\n"
)
TCP6 = (
    b"  sl  local_address                         remote_address                        st tx_queue rx_queue tr "
    b"tm->when retrnsmt   uid  timeout inode\n"
    b"   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 "
    b"00:00000000 00000000     0        0 777 1 0 100 0 0 10 0\n"
    b"   1: 0000000000000000FFFF0000020012C6:1F90 0000000000000000FFFF0000010012C6:C350 01 00000000:00000000 "
    b"00:00000000 00000000     0        0 778 1 0 20 4 30 10 -1\n"
    b"   2: 74DE00FD000000000000000002000000:0016 74DE00FD000000000000000001000000:D431 01 00000000:00000000 "
    b"00:00000000 00000000     0        0 779 1 0 20 4 30 10 -1\n"
)


@pytest.mark.skipif(sys.byteorder != "little", reason="the sample rows are a little-endian kernel's")
def test_socket_rows_of_proc_net_tcp_and_tcp6_as_columns() -> None:
    v4 = parse_table(TCP4, TCP, 8)
    assert v4.inode.tolist() == [4242, 4343, 0]
    assert v4.lport.tolist() == [8080, 41652, 41654] and v4.pport.tolist() == [0, 8080, 8080]
    assert v4.local[0].tobytes() == address_bytes("127.0.0.1")
    assert v4.local[1].tobytes() == address_bytes("198.18.0.2") and v4.peer[1].tobytes() == address_bytes("198.18.0.1")
    assert v4.peer[0].tobytes() == address_bytes("0.0.0.0")
    v6 = parse_table(TCP6, TCP, 32)
    assert v6.inode.tolist() == [777, 778, 779] and v6.lport.tolist() == [80, 8080, 22]
    assert v6.local[0].tobytes() == bytes(16)
    assert v6.local[1].tobytes() == address_bytes("198.18.0.2")  # a dual-stack socket's IPv4-mapped address
    assert v6.peer[1].tobytes() == address_bytes("198.18.0.1") and v6.pport[1] == 50000
    assert v6.local[2].tobytes() == address_bytes("fd00:de74::2")
    assert v6.peer[2].tobytes() == address_bytes("fd00:de74::1")
    assert len(parse_table(TCP4, TCP, 32)) == 0  # IPv4 rows are no IPv6 table's


def test_local_addresses_of_fib_trie_and_if_inet6() -> None:
    fib = (
        b"Main:\n  +-- 0.0.0.0/0 3 0 5\n     +-- 127.0.0.0/8 2 0 2\n        +-- 127.0.0.0/31 1 0 0\n"
        b"           |-- 127.0.0.0\n              /8 host LOCAL\n"
        b"           |-- 127.0.0.1\n              /32 host LOCAL\n"
        b"     |-- 198.18.0.0\n        /24 link UNICAST\n     |-- 198.18.0.2\n        /32 host LOCAL\n"
        b"Local:\n     |-- 198.18.0.2\n        /32 host LOCAL\n"
    )
    inet6 = b"00000000000000000000000000000001 01 80 10 80       lo\nfd00de74000000000000000000000002 02 40 00 80 v\n"
    got = {bytes(a) for a in parse_local_addresses(fib, inet6)}
    assert got == {address_bytes(a) for a in ("127.0.0.1", "198.18.0.2", "::1", "fd00:de74::2")}


# --- a namespace the test creates, and a process in it


_names = itertools.count()
LISTENER = """
import socket, sys, time
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("0.0.0.0", 48080)); t.listen()
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.bind(("::", 5353))
print("listening", flush=True)
time.sleep(60)
"""


@pytest.fixture
def netns() -> Iterator[str]:
    reason = lab_unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    name = f"{NS_PREFIX}{os.getpid()}-u{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        subprocess.run(["ip", "-n", name, "addr", "add", "192.0.2.7/32", "dev", "lo"], check=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


@pytest.fixture
def listener(netns: str) -> Iterator[subprocess.Popen[str]]:
    """A python3 listening on TCP 8080 (0.0.0.0) and UDP 5353 (::) in the test's namespace."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", LISTENER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_output(proc, "listening", stream="stdout")
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def test_a_named_namespace_is_found_with_its_name_and_the_process_in_it(netns: str) -> None:
    sleeper = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "30"])
    try:
        found = scan(sockets=False).by_label()
        inode = os.stat(f"/var/run/netns/{netns}").st_ino
        for _ in range(100):  # `ip netns exec` enters the namespace, then runs sleep under its own pid
            found = scan(sockets=False).by_label()
            if sleeper.pid in found[netns].pids:
                break
        assert found[netns].inode == inode and found[netns].pids == (sleeper.pid,)
        assert found[netns].path == f"/var/run/netns/{netns}"
        assert found[""].inode == os.stat("/proc/self/ns/net").st_ino and os.getpid() in found[""].pids
        assert f"pid:{sleeper.pid}" not in found  # named by its ip netns name, never by a pid
    finally:
        sleeper.kill()
        sleeper.wait(10)


def test_the_sockets_of_a_process_listening_in_a_namespace(listener: subprocess.Popen[str], netns: str) -> None:
    rows = read_sockets(listener.pid)
    procs = scan()
    owners = procs.pids_of(rows.inode)
    mine = {(int(p), int(port)) for p, port, o in zip(rows.proto, rows.lport, owners, strict=True) if o == listener.pid}
    assert mine == {(TCP, 48080), (UDP_P, 5353)}
    tcp = np.flatnonzero((owners == listener.pid) & (rows.proto == TCP))
    assert rows.local[tcp[0]].tobytes() == address_bytes("0.0.0.0")
    # Our own namespace's table has no such socket.
    ours = read_sockets("self")
    assert listener.pid not in procs.pids_of(ours.inode).tolist()
    assert procs.by_label()[netns].pids == (listener.pid,)


def test_flows_in_a_namespace_are_attributed_to_its_process(listener: subprocess.Popen[str], netns: str) -> None:
    inode = os.stat(f"/var/run/netns/{netns}").st_ino
    flows = [
        (key("192.0.2.7", 48080, "198.51.100.1", 40000, TCP), (3, 2), (300, 200)),
        (key("192.0.2.7", 5353, "198.51.100.1", 40001, UDP_P), (1, 1), (100, 90)),
        (key("192.0.2.8", 48080, "198.51.100.1", 40002, TCP), (1, 0), (60, 0)),  # not local there: nobody's
        (key("127.0.0.1", 40003, "127.0.0.1", 48080, TCP), (2, 2), (120, 120)),  # local in every namespace
    ]
    captured = IfaceStatus(f"{netns}:lo", "up", "", 0, 0, 0, 0, 0, None, netns=inode)

    def seen_on(iface: IfaceStatus) -> Snapshot:
        snap = replace(snapshot(1, flows), interfaces=(iface,), flow_ifaces=(iface.name,))
        cols = dict(snap.flows.cols, ifaces=np.ones(len(flows), np.uint64))
        return replace(snap, flows=replace(snap.flows, cols=cols))

    table = ProcessMapper().update(seen_on(captured))
    pid, name = table.owner(flows[0][0]) or (0, "")
    assert pid == listener.pid and name.startswith("python")
    assert table.owner(flows[1][0]) == table.owner(flows[3][0]) == (pid, name)
    assert table.place(flows[0][0]) == (netns, "")
    assert table.owner(flows[2][0]) is None
    (mine,) = [p for p in table.processes if p.pid == listener.pid]
    assert (mine.netns, mine.container) == (netns, "")
    assert (mine.rx_bytes, mine.tx_bytes) == (200 + 90 + 120, 300 + 100 + 120)
    assert (mine.rx_packets, mine.tx_packets) == (2 + 1 + 2, 3 + 1 + 2)
    assert table.unknown.rx_bytes == 60
    # Seen in our own namespace, 127.0.0.1 is ours: nothing listens on its port here.
    own = replace(captured, name="lo", netns=os.stat("/proc/self/ns/net").st_ino)
    ours = ProcessMapper().update(seen_on(own))
    assert ours.owner(flows[3][0]) is None
    # 192.0.2.7 is local in the test's namespace only: found there whatever the interface.
    assert ours.owner(flows[0][0]) == (pid, name)


def test_netns_option_takes_plain_interfaces_in_the_namespace(netns: str) -> None:
    assert netns_interfaces(netns, ["lo", "other:eth0"]) == [f"{netns}:lo", "other:eth0"]
    assert netns_interfaces(str(os.getpid()), ["lo"]) == [f"pid:{os.getpid()}:lo"]
    with pytest.raises(NamespaceError, match=r"^--netns: unknown network namespace 'rt-no-such-ns' \(named"):
        netns_interfaces("rt-no-such-ns", [])
    with pytest.raises(UserError, match=f"no default route in network namespace '{netns}'"):
        netns_interfaces(netns, [])


def test_the_interfaces_listing_names_the_container_of_a_namespace_s_processes(netns: str) -> None:
    from capture_backend.capture.netlink import namespace_container

    assert namespace_container([os.getpid()]) == ""
    assert namespace_container([]) == ""


def test_netns_on_the_command_line_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from tui.cli import main

    assert main(["stats", "--netns", "rt-no-such-ns", "--count", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("retrotap: error: --netns: unknown network namespace 'rt-no-such-ns'")
    assert err.count("\n") == 1


def test_the_socket_table_of_our_own_namespace_holds_a_socket_we_bind() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        rows = read_sockets("self")
        owners = scan().pids_of(rows.inode)
        hit = np.flatnonzero((rows.lport == port) & (rows.proto == UDP_P))
        assert hit.size == 1 and owners[hit[0]] == os.getpid()
