"""`NETNS:IFACE` specs, namespace look-up and entry, and the -Z user, without the lab."""

from __future__ import annotations

import os
import pwd
import tempfile
from pathlib import Path

import pytest

from capture_backend.capture.netns import IfaceSpec, NamespaceError, Netns, parse_iface, resolve, run_in
from capture_backend.capture.privileges import PrivilegeError, RunAs, lookup_user, unreadable_by, writable_by
from tui.cli import main


@pytest.mark.parametrize(
    ("text", "spec", "label"),
    [
        ("eth0", IfaceSpec("eth0"), "eth0"),
        ("lab:veth0", IfaceSpec("veth0", "lab"), "lab:veth0"),
        ("pid:42:eth0", IfaceSpec("eth0", "pid:42"), "pid:42:eth0"),
        ("42:eth0", IfaceSpec("eth0", "42"), "42:eth0"),
    ],
)
def test_interface_specs(text: str, spec: IfaceSpec, label: str) -> None:
    assert parse_iface(text) == spec
    assert spec.label == label


@pytest.mark.parametrize("text", [":eth0", "lab:", "pid:42", "pid::eth0"])
def test_incomplete_specs_say_how_to_write_them(text: str) -> None:
    with pytest.raises(NamespaceError, match="write"):
        parse_iface(text)


def test_namespaces_by_pid_and_unknown_ones() -> None:
    assert resolve(f"pid:{os.getpid()}") == Netns(f"pid:{os.getpid()}", f"/proc/{os.getpid()}/ns/net")
    assert resolve(str(os.getpid())).path == f"/proc/{os.getpid()}/ns/net"
    for bad in ("rt-no-such-namespace", "../etc", "pid:x"):
        with pytest.raises(NamespaceError, match=f"unknown network namespace {bad!r}"):
            resolve(bad)


def test_run_in_the_current_namespace_runs_in_this_thread_and_raises_what_the_call_raises() -> None:
    assert run_in(None, lambda: 7) == 7
    own = Netns("self", f"/proc/{os.getpid()}/ns/net")
    with pytest.raises(ZeroDivisionError):
        run_in(own, lambda: 1 // 0)


def test_users_by_name_and_uid() -> None:
    entry = pwd.getpwnam("nobody")
    assert lookup_user("nobody") == RunAs("nobody", entry.pw_uid, entry.pw_gid)
    assert lookup_user(str(entry.pw_uid)).name == "nobody"
    with pytest.raises(PrivilegeError, match="-Z 'rt-no-such-user': no such user"):
        lookup_user("rt-no-such-user")


def test_writable_by_reads_the_mode_bits_for_the_user(tmp_path: Path) -> None:
    user = RunAs("someone", 4242, 4243)
    os.chmod(tmp_path, 0o755)
    assert not writable_by(str(tmp_path), user)
    os.chmod(tmp_path, 0o1777)
    assert writable_by(str(tmp_path), user)
    assert writable_by(str(tmp_path), RunAs("root", 0, 0))


def test_unreadable_by_names_the_first_closed_directory() -> None:
    user = RunAs("someone", 4242, 4243)
    with tempfile.TemporaryDirectory(dir="/tmp") as top:  # /tmp itself is open to everyone
        inner = Path(top) / "a" / "b"
        inner.mkdir(parents=True)
        for d in (Path(top), Path(top) / "a", inner):
            os.chmod(d, 0o755)
        assert unreadable_by(str(inner), user) is None
        os.chmod(Path(top) / "a", 0o750)
        assert unreadable_by(str(inner), user) == str(Path(top) / "a")
        assert unreadable_by(str(inner), RunAs("root", 0, 0)) is None


def test_cli_unknown_user_and_namespace_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "-i", "lo", "-Z", "rt-no-such-user", "--count", "1"]) == 2
    assert capsys.readouterr().err == "retrotap: error: -Z 'rt-no-such-user': no such user\n"
    assert main(["stats", "-i", "rt-no-such-namespace:eth0", "--count", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("retrotap: error: unknown network namespace 'rt-no-such-namespace'")
    assert err.count("\n") == 1


def test_one_interface_named_two_ways_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # This process's namespace by pid is the current one: `pid:PID:lo` is `lo` again, counted twice if allowed.
    me = os.getpid()
    assert main(["stats", "-i", "lo", "-i", f"pid:{me}:lo", "--count", "1"]) == 2
    assert capsys.readouterr().err == f"retrotap: error: -i 'lo' and -i 'pid:{me}:lo' are the same interface\n"
    assert main(["stats", "-i", f"{me}:lo", "-i", f"pid:{me}:lo", "--count", "1"]) == 2
    assert capsys.readouterr().err == f"retrotap: error: -i '{me}:lo' and -i 'pid:{me}:lo' are the same interface\n"
