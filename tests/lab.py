"""Reusable two-namespace veth lab for live tests and benchmarks.

Side a is the capture side: an nftables netdev ingress chain drops every
frame after AF_PACKET taps have seen it, so the stack never answers.  Side b
is the sending side.  Both sides drop their own unsolicited IPv6 chatter
(MLD reports, router solicitations) in an output chain so link counters
only ever count what a test sent.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
NS_PREFIX = "rt-"
IP4_A = "198.18.0.1"
IP4_B = "198.18.0.2"
IP6_A = "fd00:7274::1"
IP6_B = "fd00:7274::2"
NFT_TABLE = "retrotap"
DEFAULT_TIMEOUT = 30.0
SENDER_TIMEOUT = 10.0
SENDER_RC_TIMED_OUT = 3

_STALE_RE = re.compile(rf"^{re.escape(NS_PREFIX)}(\d+)-")
_CLONE_NEWNET = 0x40000000
_counter = itertools.count()
_counter_lock = threading.Lock()


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its output."""


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    **kw: Any,
) -> subprocess.CompletedProcess[Any]:
    """Run a command with captured text output; raise LabError on failure."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    try:
        proc = subprocess.run(list(args), timeout=timeout, check=False, **kw)
    except subprocess.TimeoutExpired as exc:
        raise LabError(
            f"timed out after {timeout}s: {' '.join(args)}\n"
            f"stdout: {_text(exc.stdout)}\nstderr: {_text(exc.stderr)}"
        ) from exc
    except OSError as exc:
        raise LabError(f"cannot run {' '.join(args)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise LabError(
            f"exit {proc.returncode}: {' '.join(args)}\n"
            f"stdout: {_text(proc.stdout)}\nstderr: {_text(proc.stderr)}"
        )
    return proc


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace").strip()
    return data.strip()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_netns() -> list[str]:
    """Names of all named network namespaces."""
    out = run(["ip", "-j", "netns", "list"]).stdout.strip()
    if not out:
        return []
    return [str(entry["name"]) for entry in json.loads(out)]


def cleanup_stale() -> list[str]:
    """Delete `rt-<pid>-*` namespaces whose pid is dead; return their names."""
    removed: list[str] = []
    for name in list_netns():
        match = _STALE_RE.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        run(["ip", "netns", "del", name])
        removed.append(name)
    return removed


def wait_for_output(
    proc: subprocess.Popen[Any], needle: str, timeout: float = 10.0, stream: str = "stderr"
) -> str:
    """Read `proc`'s stream line by line until one contains `needle`; return it."""
    pipe = proc.stderr if stream == "stderr" else proc.stdout
    if pipe is None:
        raise LabError(f"process {proc.args!r} has no {stream} pipe")
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LabError(f"no {needle!r} from {proc.args!r} within {timeout}s; got {seen!r}")
        ready, _, _ = select.select([pipe], [], [], remaining)
        if not ready:
            continue
        raw = pipe.readline()
        line = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        if not line:
            proc.wait(timeout=max(remaining, 0.1))
            raise LabError(
                f"{proc.args!r} exited ({proc.returncode}) before {needle!r}; got {seen!r}"
            )
        seen.append(line.rstrip())
        if needle in line:
            return line


def finish_capture(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """Wait for a `-c`-bounded tcpdump to exit by itself; return its stderr.

    On timeout it is interrupted and LabError carries its packet statistics.
    """
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=5)
        raise LabError(
            f"capture did not reach its count within {timeout}s: {_text(err)}"
        ) from None
    if proc.returncode != 0:
        raise LabError(f"capture exited {proc.returncode}: {_text(err)}")
    return _text(err)


def write_pcap(path: Path, frames: Sequence[bytes]) -> None:
    """Write Ethernet frames to a classic microsecond pcap file."""
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for frame in frames:
            fh.write(struct.pack("<IIII", 0, 0, len(frame), len(frame)))
            fh.write(frame)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Lab:
    """Two network namespaces joined by a veth pair."""

    def __init__(self, drop_ingress: bool = True) -> None:
        """Name the lab; nothing is created until `create()`."""
        with _counter_lock:
            n = next(_counter)
        pid = os.getpid()
        self.drop_ingress = drop_ingress
        self.ns_a = f"{NS_PREFIX}{pid}-{n}-a"
        self.ns_b = f"{NS_PREFIX}{pid}-{n}-b"
        # The veth is created inside the namespaces and never exists in the
        # root namespace, so these names only need to be unique per lab.
        self.veth_a = f"rtva{n}"[:15]
        self.veth_b = f"rtvb{n}"[:15]
        self.ip4_a, self.ip4_b = IP4_A, IP4_B
        self.ip6_a, self.ip6_b = IP6_A, IP6_B
        self.notes: list[str] = []
        self._macs: dict[str, str] = {}
        self._procs: list[subprocess.Popen[Any]] = []
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._created = False

    # ---- lifecycle -------------------------------------------------------

    def create(self) -> Lab:
        """Build namespaces, veth, addresses and nft tables; wait until the link is up."""
        if self._created:
            raise LabError("lab already created")
        self._created = True
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise
        return self

    def _build(self) -> None:
        run(["ip", "netns", "add", self.ns_a])
        run(["ip", "netns", "add", self.ns_b])
        run(["ip", "-n", self.ns_a, "link", "add", self.veth_a, "type", "veth",
             "peer", "name", self.veth_b, "netns", self.ns_b])
        for side in ("a", "b"):
            ns, veth = self.ns(side), self.veth(side)
            for key, value in (("accept_dad", 0), ("router_solicitations", 0), ("accept_ra", 0)):
                for scope in ("all", "default", veth):
                    self.exec(side, ["sysctl", "-qw", f"net.ipv6.conf.{scope}.{key}={value}"])
            run(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{self.ip4(side)}/24", "dev", veth])
            run(["ip", "-n", ns, "addr", "add", f"{self.ip6(side)}/64", "dev", veth, "nodad"])
            self.exec(side, ["nft", "-f", "-"], input=self._nft_ruleset(side))
        self._enable_rx_vlan_offload()
        run(["ip", "-n", self.ns_a, "link", "set", "dev", self.veth_a, "up"])
        run(["ip", "-n", self.ns_b, "link", "set", "dev", self.veth_b, "up"])
        self.wait_oper("a", "UP")
        self.wait_oper("b", "UP")
        self._macs = {side: self._read_mac(side) for side in ("a", "b")}

    def _nft_ruleset(self, side: str) -> str:
        quiet = (
            f"table ip6 {NFT_TABLE}_quiet {{\n"
            "  chain output {\n"
            "    type filter hook output priority 0; policy accept;\n"
            "    icmpv6 type { mld-listener-report, mld2-listener-report,"
            " nd-router-solicit } counter drop\n"
            "  }\n"
            "}\n"
        )
        if side != "a" or not self.drop_ingress:
            return quiet
        return quiet + (
            f"table netdev {NFT_TABLE} {{\n"
            "  chain ingress {\n"
            f'    type filter hook ingress device "{self.veth_a}" priority 0; policy accept;\n'
            "    counter drop\n"
            "  }\n"
            "}\n"
        )

    def _enable_rx_vlan_offload(self) -> None:
        if shutil.which("ethtool") is None:
            self.notes.append("ethtool not installed; rx VLAN offload left at kernel default")
            return
        proc = self.exec_a(["ethtool", "-K", self.veth_a, "rxvlan", "on"], check=False)
        if proc.returncode != 0:
            self.notes.append(f"ethtool -K rxvlan on failed: {_text(proc.stderr)}")

    def destroy(self) -> None:
        """Stop lab processes and delete both namespaces; idempotent, never raises."""
        for proc in self._procs:
            try:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=3)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=3)
            except Exception as exc:  # teardown must go on
                self.notes.append(f"stopping {proc.args!r}: {exc}")
        self._procs.clear()
        for ns in (self.ns_a, self.ns_b):
            try:
                done = run(["ip", "netns", "del", ns], check=False)
                if done.returncode != 0 and "No such file" not in done.stderr:
                    self.notes.append(f"deleting {ns}: {done.stderr.strip()}")
            except Exception as exc:  # teardown must go on
                self.notes.append(f"deleting {ns}: {exc}")
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        self._created = False

    def __enter__(self) -> Lab:
        """Create the lab."""
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Destroy the lab."""
        self.destroy()

    # ---- names -----------------------------------------------------------

    def ns(self, side: str) -> str:
        """Namespace name of `side` ('a' or 'b')."""
        return {"a": self.ns_a, "b": self.ns_b}[_side(side)]

    def veth(self, side: str) -> str:
        """Veth name of `side`."""
        return {"a": self.veth_a, "b": self.veth_b}[_side(side)]

    def ip4(self, side: str) -> str:
        """IPv4 address of `side`."""
        return {"a": self.ip4_a, "b": self.ip4_b}[_side(side)]

    def ip6(self, side: str) -> str:
        """IPv6 address of `side`."""
        return {"a": self.ip6_a, "b": self.ip6_b}[_side(side)]

    @property
    def mac_a(self) -> str:
        """MAC address of veth a."""
        return self._macs["a"]

    @property
    def mac_b(self) -> str:
        """MAC address of veth b."""
        return self._macs["b"]

    # ---- running things in a namespace -----------------------------------

    def exec(
        self, side: str, args: Sequence[str], **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run `args` inside `side`'s namespace (checked, see `run`)."""
        return run(["ip", "netns", "exec", self.ns(side), *args], **kw)

    def exec_a(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run `args` in namespace a."""
        return self.exec("a", args, **kw)

    def exec_b(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run `args` in namespace b."""
        return self.exec("b", args, **kw)

    def popen(self, side: str, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `args` in `side`'s namespace; `destroy()` stops it if still running."""
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(side), *args], **kw
        )
        self._procs.append(proc)
        return proc

    def popen_a(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `args` in namespace a."""
        return self.popen("a", args, **kw)

    def popen_b(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `args` in namespace b."""
        return self.popen("b", args, **kw)

    def run_in_ns(self, side: str, fn: Callable[[], T], timeout: float = DEFAULT_TIMEOUT) -> T:
        """Call `fn` in a thread that has entered `side`'s namespace.

        Sockets created by `fn` stay in that namespace, so tests can open
        AF_PACKET sockets on the lab's veth from this process.
        """
        result: list[T] = []
        error: list[BaseException] = []

        def target() -> None:
            try:
                _setns(f"/run/netns/{self.ns(side)}")
                result.append(fn())
            except BaseException as exc:  # re-raised in caller
                error.append(exc)

        thread = threading.Thread(target=target, name=f"netns-{side}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise LabError(f"run_in_ns({side}) did not finish within {timeout}s")
        if error:
            raise error[0]
        return result[0]

    # ---- link control and inspection ---------------------------------------

    def link_info(self, side: str) -> dict[str, Any]:
        """`ip -s -j link show` record of `side`'s veth."""
        out = run(["ip", "-n", self.ns(side), "-s", "-j", "link", "show", "dev", self.veth(side)])
        info: dict[str, Any] = json.loads(out.stdout)[0]
        return info

    def _read_mac(self, side: str) -> str:
        return str(self.link_info(side)["address"])

    def ifindex(self, side: str) -> int:
        """Interface index of `side`'s veth inside its namespace."""
        return int(self.link_info(side)["ifindex"])

    def link_stats(self, side: str) -> dict[str, dict[str, int]]:
        """The 'rx' and 'tx' stats64 counters of `side`'s veth."""
        stats = self.link_info(side)["stats64"]
        return {"rx": dict(stats["rx"]), "tx": dict(stats["tx"])}

    def stats_a(self) -> int:
        """rx packets of veth a."""
        return self.link_stats("a")["rx"]["packets"]

    def ingress_drops(self) -> int:
        """Packets dropped by side a's netdev ingress rule (0 without the rule)."""
        if not self.drop_ingress:
            return 0
        out = self.exec_a(["nft", "-j", "list", "chain", "netdev", NFT_TABLE, "ingress"])
        for item in json.loads(out.stdout)["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        raise LabError(f"no counter in ingress chain: {out.stdout}")

    def wait_oper(self, side: str, state: str, timeout: float = 10.0) -> None:
        """Wait until `side`'s veth reports operstate `state` (e.g. 'UP', 'DOWN')."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            current = self.link_info(side).get("operstate")
            if current == state:
                return
            if time.monotonic() >= deadline:
                raise LabError(f"{self.veth(side)} operstate {current}, wanted {state}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def set_link(self, side: str, up: bool) -> None:
        """Set `side`'s veth admin up or down and wait for the matching operstate."""
        run(["ip", "-n", self.ns(side), "link", "set", "dev", self.veth(side),
             "up" if up else "down"])
        if not up:
            self.wait_oper(side, "DOWN")
            return
        peer = "b" if _side(side) == "a" else "a"
        if "UP" in self.link_info(peer).get("flags", []):
            self.wait_oper(side, "UP")
            self.wait_oper(peer, "UP")

    def delete_veth(self) -> None:
        """Delete the veth pair (both ends); the namespaces stay."""
        run(["ip", "-n", self.ns_a, "link", "del", "dev", self.veth_a])

    # ---- capture -------------------------------------------------------------

    def tcpdump(
        self,
        side: str,
        out: Path,
        count: int,
        bpf: Sequence[str] = (),
        buffer_kib: int = 8192,
        timeout: float = 10.0,
    ) -> subprocess.Popen[str]:
        """Start `tcpdump -c count -w out` on `side`'s veth; return once it listens.

        No --immediate-mode: libpcap then uses TPACKET_V2 with 64 KiB slots
        (the veth advertises GSO), so a 2 MiB ring holds only ~32 frames and
        drops bursts.  TPACKET_V3 blocks pack small frames densely.
        """
        proc = self.popen(
            side,
            ["tcpdump", "-i", self.veth(side), "-c", str(count), "-w", str(out), "-n",
             "-Z", "root", "-B", str(buffer_kib), *bpf],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_output(proc, "listening on", timeout=timeout)
        return proc

    # ---- traffic -------------------------------------------------------------

    def tmpdir(self) -> Path:
        """A per-lab temporary directory removed by `destroy()`."""
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="retrotap-lab-")
        return Path(self._tmpdir.name)

    def send_frames(
        self,
        frames: Sequence[bytes],
        repeat: int = 1,
        side: str = "b",
        timeout: float = SENDER_TIMEOUT,
    ) -> int:
        """Send raw frames from `side`'s veth via tests.sender; return frames sent.

        Fewer than len(frames) * repeat means the sender hit its timeout.
        """
        if not frames:
            return 0
        pcap = self.tmpdir() / f"frames-{next(_counter)}.pcap"
        write_pcap(pcap, frames)
        try:
            proc = self.exec(
                side,
                [sys.executable, "-m", "tests.sender", "--iface", self.veth(side),
                 "--count", str(len(frames) * repeat), "--frames", str(pcap),
                 "--repeat", str(repeat), "--timeout", str(timeout)],
                cwd=REPO_ROOT,
                check=False,
                timeout=timeout + 20,
            )
        finally:
            pcap.unlink(missing_ok=True)
        if proc.returncode not in (0, SENDER_RC_TIMED_OUT):
            raise LabError(f"sender failed ({proc.returncode}): {proc.stderr.strip()}")
        lines = proc.stdout.strip().splitlines()
        if not lines:
            raise LabError(f"sender printed nothing; stderr: {proc.stderr.strip()}")
        return int(json.loads(lines[-1])["sent"])


def _side(side: str) -> str:
    if side not in ("a", "b"):
        raise ValueError(f"side must be 'a' or 'b', not {side!r}")
    return side
