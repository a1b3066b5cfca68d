"""Bounded raw-frame sender: `python -m tests.sender --iface IF --count N ...`.

Runs inside a lab namespace and writes Ethernet frames through an AF_PACKET
SOCK_RAW socket bound to IF.  Frames come from a pcap file (`--frames`,
sent in order, `--repeat` times) or from a built-in UDP template.  Sending
stops after `--count` frames or `--timeout` seconds, whichever comes first,
then prints {"sent": n, "bytes": total} as one JSON line.  Exit status is 0
when all frames went out and 3 when the timeout cut sending short.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

RC_TIMED_OUT = 3
_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": "<",
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",
    b"\xa1\xb2\x3c\x4d": ">",
}
_LINKTYPE_ETHERNET = 1


def read_pcap(path: Path) -> list[bytes]:
    """Return the frames of a classic (non-ng) Ethernet pcap file."""
    data = path.read_bytes()
    if len(data) < 24 or data[:4] not in _PCAP_MAGIC:
        raise ValueError(f"{path}: not a classic pcap file")
    endian = _PCAP_MAGIC[data[:4]]
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    if linktype != _LINKTYPE_ETHERNET:
        raise ValueError(f"{path}: linktype {linktype}, need Ethernet (1)")
    frames: list[bytes] = []
    offset = 24
    while offset + 16 <= len(data):
        incl_len = struct.unpack_from(endian + "I", data, offset + 8)[0]
        offset += 16
        if offset + incl_len > len(data):
            raise ValueError(f"{path}: truncated record at offset {offset - 16}")
        frames.append(data[offset:offset + incl_len])
        offset += incl_len
    return frames


def _mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise argparse.ArgumentTypeError(f"bad MAC address {text!r}")
    return raw


def _ipv4_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(
    dst_mac: bytes,
    src_mac: bytes,
    src_ip: str,
    dst_ip: str,
    sport: int,
    dport: int,
    size: int,
) -> bytes:
    """An Ethernet/IPv4/UDP frame of exactly `size` bytes (>= 42), UDP checksum 0."""
    if size < 42:
        raise ValueError("UDP frame size must be at least 42")
    payload = bytes(size - 42)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
        socket.inet_aton(src_ip), socket.inet_aton(dst_ip),
    )
    ip = ip[:10] + struct.pack("!H", _ipv4_checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def _iface_mac(iface: str) -> bytes:
    return _mac(Path(f"/sys/class/net/{iface}/address").read_text().strip())


def template_frames(args: argparse.Namespace) -> list[bytes]:
    """Frames for `--template udp`: one per flow, source port varying."""
    src_mac = args.src_mac if args.src_mac is not None else _iface_mac(args.iface)
    return [
        udp_frame(args.dst_mac, src_mac, args.src_ip, args.dst_ip,
                  (args.sport + i) & 0xFFFF, args.dport, args.size)
        for i in range(args.flows)
    ]


def send(iface: str, frames: Sequence[bytes], count: int, timeout: float) -> tuple[int, int, bool]:
    """Send `frames` cyclically until `count` went out; return (sent, bytes, timed_out)."""
    deadline = time.monotonic() + timeout
    sent = total = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.bind((iface, 0))
        sock.settimeout(min(timeout, 0.5))
        i = 0
        while sent < count:
            if (sent & 0xFF) == 0 and time.monotonic() >= deadline:
                return sent, total, True
            frame = frames[i]
            try:
                sock.send(frame)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return sent, total, True
                continue
            except OSError as exc:
                # ENOBUFS: the veth peer's backlog was full; retry the same frame.
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    return sent, total, True
                time.sleep(0.0002)
                continue
            sent += 1
            total += len(frame)
            i = i + 1 if i + 1 < len(frames) else 0
    return sent, total, False


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m tests.sender", description=__doc__)
    p.add_argument("--iface", required=True)
    p.add_argument("--count", type=int, required=True, help="upper bound on frames sent")
    p.add_argument("--timeout", type=float, default=10.0, help="upper bound in seconds")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--frames", type=Path, help="pcap file of Ethernet frames")
    src.add_argument("--template", choices=["udp"], help="generate frames")
    p.add_argument("--repeat", type=int, default=1, help="times to send the pcap's frames")
    p.add_argument("--dst-mac", type=_mac, default=_mac("ff:ff:ff:ff:ff:ff"))
    p.add_argument("--src-mac", type=_mac, default=None, help="default: the iface's MAC")
    p.add_argument("--src-ip", default="198.18.0.2")
    p.add_argument("--dst-ip", default="198.18.0.1")
    p.add_argument("--sport", type=int, default=40000)
    p.add_argument("--dport", type=int, default=9)
    p.add_argument("--size", type=int, default=60, help="frame length in bytes")
    p.add_argument("--flows", type=int, default=1, help="distinct source ports")
    args = p.parse_args(argv)
    if args.count < 0 or args.repeat < 1 or args.flows < 1 or args.timeout <= 0:
        p.error("--count >= 0, --repeat >= 1, --flows >= 1 and --timeout > 0 required")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    if args.frames is not None:
        frames = read_pcap(args.frames)
        count = min(args.count, len(frames) * args.repeat)
    else:
        frames = template_frames(args)
        count = args.count
    if not frames:
        count = 0
    sent, total, timed_out = send(args.iface, frames, count, args.timeout)
    print(json.dumps({"sent": sent, "bytes": total}), flush=True)
    return RC_TIMED_OUT if timed_out else 0


if __name__ == "__main__":
    sys.exit(main())
