"""The packet inspector's backend: the packets of a selection as a pcap, decoded by tshark (pyshark, JSON mode).

``inspect_packets`` writes the last N matching packets of the time machine to a temporary pcap;
``decode_pcap`` runs tshark over a pcap and returns one PacketView per packet: the list columns,
a protocol tree built from the JSON layers and the raw bytes. Both run off the UI thread.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from capture_backend.analysis.decode import decode
from capture_backend.capture.block import Block
from capture_backend.capture.pcapfile import FileSource, PcapWriter
from capture_backend.contract import INSPECT_LIMIT, InspectJob
from capture_backend.contract import InspectorError as InspectorError
from capture_backend.contract import Node as Node
from capture_backend.contract import PacketView as PacketView
from capture_backend.contract import hexdump as hexdump
from capture_backend.rewind.timemachine import Selector, TimeMachine

DEFAULT_LIMIT = INSPECT_LIMIT
TSHARK_TIMEOUT_S = 120
TSHARK_MISSING = "tshark is not installed: apt-get install tshark"

# Wireshark's names for the layers tshark's JSON names by their filter name.
LAYER_NAMES = {
    "frame": "Frame",
    "eth": "Ethernet II",
    "vlan": "802.1Q Virtual LAN",
    "arp": "Address Resolution Protocol",
    "ip": "Internet Protocol Version 4",
    "ipv6": "Internet Protocol Version 6",
    "tcp": "Transmission Control Protocol",
    "udp": "User Datagram Protocol",
    "sctp": "Stream Control Transmission Protocol",
    "icmp": "Internet Control Message Protocol",
    "icmpv6": "Internet Control Message Protocol v6",
    "dns": "Domain Name System",
    "data": "Data",
}


def find_tshark(path: str | None = None) -> str:
    """The tshark executable to run (``path`` or tshark on $PATH); InspectorError if there is none."""
    found = shutil.which(path or "tshark")
    if found is None:
        raise InspectorError(TSHARK_MISSING)
    return found


def inspect_packets(
    tm: TimeMachine, select: Selector | None, limit: int = DEFAULT_LIMIT, tmpdir: str | Path | None = None
) -> str:
    """Write the last ``limit`` packets ``select`` keeps from the time machine to a new pcap; return its path.

    One pcap holds one link type: packets of interfaces with another link type than the newest
    matching packet's are left out. The caller deletes the file.
    """
    picked: list[tuple[Block, np.ndarray]] = []
    linktype: int | None = None
    left = max(1, limit)
    for span in reversed(tm.window()):
        if left <= 0:
            break
        block = tm.read(span)
        if block is None:  # overwritten while read: the older spans are gone too
            break
        keep = select(decode(block)) if select is not None else np.ones(len(block), bool)
        rows = np.flatnonzero(keep)
        if linktype is None and len(rows):
            linktype = block.linktype
        if not len(rows) or block.linktype != linktype:
            continue
        rows = rows[-left:]
        mask = np.zeros(len(block), bool)
        mask[rows] = True
        picked.append((block, mask))
        left -= len(rows)
    if linktype is None:
        raise InspectorError("no packets of the selection in the time machine")
    fd, path = tempfile.mkstemp(prefix="retrotap-inspect-", suffix=".pcap", dir=tmpdir)
    with os.fdopen(fd, "wb") as out:
        writer = PcapWriter(out, linktype)
        for block, mask in reversed(picked):
            writer.write_block(block, mask)
    return path


def decode_pcap(
    path: str | Path,
    limit: int = DEFAULT_LIMIT,
    tshark_path: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[PacketView]:
    """The first ``limit`` packets of a pcap (or pcapng) as tshark decodes them (progress: every 100).

    tshark runs as pyshark's FileCapture(use_json=True, include_raw=True) runs it, and its output is
    parsed by pyshark's JSON layers; the process itself is run here with subprocess, because
    FileCapture's asyncio child watcher (process-global, swapped when used from the main thread)
    lost the exit status of tshark when it ran in a worker thread next to the dashboard's event loop.
    """
    exe = find_tshark(tshark_path)
    if not Path(path).is_file():
        raise InspectorError(f"no such file: {path}")
    args = [exe, "-l", "-n", "-T", "json", "-x", "--no-duplicate-keys", "-c", str(max(1, limit)), "-r", str(path)]
    try:
        done = subprocess.run(args, capture_output=True, timeout=TSHARK_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InspectorError(f"tshark could not run: {e}") from e
    if done.returncode != 0:
        raise InspectorError(f"tshark could not read {path}: {_last_error(done.stderr)}")
    try:
        packets = json.loads(done.stdout or b"[]")
    except ValueError as e:
        raise InspectorError(f"tshark's JSON could not be read: {e}") from e
    out: list[PacketView] = []
    for item in packets[:limit]:
        out.append(packet_view(pyshark_packet(item)))
        if progress is not None and len(out) % 100 == 0:
            progress(len(out))
    if any(not p.raw for p in out):  # this tshark gave no raw bytes: read them from the file
        raws = _file_bytes(str(path), len(out))
        out = [_with_raw(p, raws[i]) if i < len(raws) else p for i, p in enumerate(out)]
    return out


def _last_error(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip() and "Running as user" not in ln]
    return lines[-1].strip() if lines else "tshark failed"


def pyshark_packet(item: dict[str, Any]) -> Any:
    """One packet of tshark's JSON output as a pyshark Packet (what pyshark's JSON parser builds)."""
    from pyshark.packet.layers.json_layer import JsonLayer
    from pyshark.packet.packet import Packet

    layers_dict = dict(item["_source"]["layers"])
    frame = layers_dict.pop("frame")
    layers = []
    for name in frame.get("frame.protocols", "").split(":"):
        if name in layers_dict:
            layers.append(JsonLayer(name, layers_dict.pop(name)))
    layers += [JsonLayer(name, value) for name, value in layers_dict.items()]
    return Packet(
        layers=layers,
        frame_info=JsonLayer("frame", frame),
        number=int(frame.get("frame.number", 0)),
        length=int(frame.get("frame.len", 0)),
        sniff_time=frame.get("frame.time_epoch"),
    )


def _with_raw(p: PacketView, raw: bytes) -> PacketView:
    return PacketView(p.number, p.time_ns, p.source, p.destination, p.protocol, p.length, p.info, p.tree, raw)


def _file_bytes(path: str, limit: int) -> list[bytes]:
    out: list[bytes] = []
    with FileSource(path) as src:
        for b in src.blocks():
            for s, c in zip(b.start.tolist(), b.caplen.tolist(), strict=True):
                out.append(b.data[s : s + c].tobytes())
                if len(out) >= limit:
                    return out
    return out


def packet_view(packet: Any) -> PacketView:
    """One pyshark JSON packet as a PacketView."""
    layers = [(layer.layer_name, layer._all_fields) for layer in packet.layers if not layer.layer_name.endswith("_raw")]
    fields: dict[str, dict[str, Any]] = {}
    for name, values in layers:
        fields.setdefault(name, values)  # the outer one when a protocol repeats (tunnels, ICMP errors)
    frame = packet.frame_info._all_fields
    names = [name for name, _ in layers]
    protocols = [n for n in names if n != "data" and "." not in n and not n.startswith("_")]  # not tcp.segments
    raw = _raw_of(packet)
    number = int(packet.number)
    tree: list[Node] = [(f"Frame {number}: {frame.get('frame.len', '?')} bytes (frame)", _nodes(frame))]
    tree += [(f"{LAYER_NAMES.get(n, n.upper())} ({n})", _nodes(values)) for n, values in layers]
    src, dst = _addresses(fields)
    return PacketView(
        number=number,
        time_ns=_epoch_ns(str(frame.get("frame.time_epoch", "0"))),
        source=src,
        destination=dst,
        protocol=protocols[-1].upper() if protocols else (names[-1].upper() if names else ""),
        length=int(frame.get("frame.len", len(raw))),
        info=_info(fields, names),
        tree=tree,
        raw=raw,
    )


def _raw_of(packet: Any) -> bytes:
    """The frame's bytes from tshark's -x output (frame_raw: [hex, offset, length, ...])."""
    for layer in packet.layers:
        if layer.layer_name == "frame_raw":
            value = layer.value if hasattr(layer, "value") else None
            text = value[0] if isinstance(value, list) and value else value
            try:
                return bytes.fromhex(text) if isinstance(text, str) else b""
            except ValueError:
                return b""
    return b""


def _epoch_ns(text: str) -> int:
    sec, _, frac = text.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def _nodes(fields: dict[str, Any]) -> list[Node]:
    """The tree of one JSON layer: `key_raw` entries dropped, `key_tree` under `key`."""
    out: list[Node] = []
    for key, value in fields.items():
        if key.endswith("_raw") or key.endswith("_tree"):
            continue
        sub = fields.get(key + "_tree")
        children = _nodes(sub) if isinstance(sub, dict) else []
        if isinstance(value, dict):
            out.append((key, _nodes(value) + children))
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    out.append((key, _nodes(item)))
                else:
                    out.append((f"{key}: {item}", []))
        else:
            out.append((f"{key}: {value}" if value != "" else key, children))
    return out


def find_field(fields: dict[str, Any], key: str) -> Any:
    """A field's value anywhere in a JSON layer (first found), or None."""
    if key in fields:
        return fields[key]
    for value in fields.values():
        subs = value if isinstance(value, list) else [value]
        for sub in subs:
            if isinstance(sub, dict):
                found = find_field(sub, key)
                if found is not None:
                    return found
    return None


def _addresses(fields: dict[str, dict[str, Any]]) -> tuple[str, str]:
    for layer in ("ip", "ipv6"):
        if layer in fields:
            f = fields[layer]
            return str(f.get(f"{layer}.src", "")), str(f.get(f"{layer}.dst", ""))
    if "arp" in fields:
        f = fields["arp"]
        return str(f.get("arp.src.proto_ipv4", "")), str(f.get("arp.dst.proto_ipv4", ""))
    if "eth" in fields:
        f = fields["eth"]
        return str(f.get("eth.src", "")), str(f.get("eth.dst", ""))
    return "", ""


TCP_FLAGS = (("syn", "SYN"), ("fin", "FIN"), ("reset", "RST"), ("push", "PSH"), ("ack", "ACK"), ("urg", "URG"))


def _info(fields: dict[str, dict[str, Any]], names: list[str]) -> str:
    """A short summary in the spirit of Wireshark's Info column."""
    if "dns" in fields:
        dns = fields["dns"]
        name = find_field(dns, "dns.qry.name")
        kind = "response" if find_field(dns, "dns.flags.response") == "1" else "query"
        return f"DNS {kind} {name or ''}".strip()
    if "tcp" in fields:
        t = fields["tcp"]
        flags = find_field(t, "tcp.flags_tree") or {}
        on = [label for key, label in TCP_FLAGS if flags.get(f"tcp.flags.{key}") == "1"]
        return (
            f"{t.get('tcp.srcport')} → {t.get('tcp.dstport')} [{', '.join(on)}] "
            f"Seq={t.get('tcp.seq')} Ack={t.get('tcp.ack')} Win={t.get('tcp.window_size_value')} "
            f"Len={t.get('tcp.len')}"
        )
    if "udp" in fields:
        u = fields["udp"]
        payload = int(u.get("udp.length", 8)) - 8
        return f"{u.get('udp.srcport')} → {u.get('udp.dstport')} Len={payload}"
    for icmp in ("icmp", "icmpv6"):
        if icmp in fields:
            f = fields[icmp]
            return f"type {f.get(f'{icmp}.type')} code {f.get(f'{icmp}.code')}"
    if "arp" in fields:
        f = fields["arp"]
        if f.get("arp.opcode") == "1":
            return f"Who has {f.get('arp.dst.proto_ipv4')}? Tell {f.get('arp.src.proto_ipv4')}"
        return f"{f.get('arp.src.proto_ipv4')} is at {f.get('arp.src.hw_mac')}"
    return " / ".join(names)


def selection_job(tm: TimeMachine, select: Selector, limit: int = DEFAULT_LIMIT) -> InspectJob:
    """Decode the last `limit` packets of a selection of the time machine (through a temporary pcap)."""

    def job(progress: Callable[[int], None]) -> list[PacketView]:
        find_tshark()  # before writing anything
        path = inspect_packets(tm, select, limit)
        try:
            return decode_pcap(path, limit, progress=progress)
        finally:
            os.unlink(path)

    return job


def file_job(path: str | Path, limit: int = DEFAULT_LIMIT) -> InspectJob:
    """Decode the first `limit` packets of a capture file."""

    def job(progress: Callable[[int], None]) -> list[PacketView]:
        return decode_pcap(path, limit, progress=progress)

    return job
