"""How long a time-machine snapshot of a full buffer takes to write, and the cost of keeping blocks.

    python -m bench.snapshot_bench [--size-mib 256] [--frame 1400] [--dir /var/tmp]

Fills a TimeMachine with ring-like 1 MiB blocks of UDP frames (made once, copied into the pool the
way the capture thread does), then times save_pcap of the whole buffer to --dir, and checks the
file's packet count by reading it back.
"""

from __future__ import annotations

import argparse
import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from capture_backend.capture.block import LINKTYPE_ETHERNET, Block
from capture_backend.capture.pcapfile import FileSource
from capture_backend.rewind.timemachine import TimeMachine, save_pcap

NS = 1_000_000_000
BLOCK = 1 << 20


def frame(size: int, i: int) -> bytes:
    """An Ethernet/IPv4/UDP frame of `size` bytes (checksums left zero)."""
    payload = size - 42
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + payload, i & 0xFFFF, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    )
    udp = struct.pack("!HHHH", 1024 + i % 64, 5000, 8 + payload, 0)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp + b"x" * payload


def ring_block(size: int, t0: int) -> Block:
    """One 1 MiB block laid out like TPACKET_V3 (a 64-byte header before each frame)."""
    stride = 64 + (size + 15) // 16 * 16
    n = BLOCK // stride
    data = np.zeros(BLOCK, np.uint8)
    raw = np.frombuffer(frame(size, 0), np.uint8)
    start = np.arange(n, dtype=np.int64) * stride + 64
    for s in start.tolist():
        data[s : s + size] = raw
    ln = np.full(n, size, np.int64)
    return Block(
        data,
        start,
        ln,
        ln.copy(),
        t0 + np.arange(n, dtype=np.int64) * 2000,
        LINKTYPE_ETHERNET,
        "bench0",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--frame", type=int, default=1400)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    tm = TimeMachine(args.size_mib << 20, seconds=3600)
    t0 = 1_700_000_000 * NS
    blocks = int((args.size_mib << 20) // BLOCK)
    template = ring_block(args.frame, t0)
    copy_s = 0.0
    for k in range(blocks):
        b = template
        block = Block(b.data, b.start, b.caplen, b.wirelen, b.ts_ns + k * NS // 10, b.linktype, b.iface)
        c = time.perf_counter()
        tm.add(block)
        copy_s += time.perf_counter() - c
    with tempfile.TemporaryDirectory(dir=args.dir) as out:
        c = time.perf_counter()
        res = save_pcap(tm, out)
        took = time.perf_counter() - c
        size = os.path.getsize(res.paths[0])
        with FileSource(res.paths[0]) as src:
            back = sum(len(b) for b in src.blocks())
        name = Path(res.paths[0]).name
    print(f"buffer {args.size_mib} MiB: {tm.stats.spans} blocks, {tm.stats.packets:,} packets of {args.frame} B")
    print(f"keeping a block (capture thread): {copy_s / blocks * 1e3:.3f} ms per 1 MiB block")
    print(
        f"snapshot {name}: {res.packets:,} packets, {size / 1e6:.1f} MB in {took:.2f} s "
        f"({size / took / 1e6:.0f} MB/s); read back {back:,} packets"
    )


if __name__ == "__main__":
    main()
