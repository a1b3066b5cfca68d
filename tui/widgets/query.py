"""The `/` text filter: host, network, port, service, protocol or process terms, matched on key columns."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from capture_backend.contract import (
    DNS_PORT,
    FLOW_KEY,
    KIND_DNS,
    KIND_NAMES,
    PROTO_NUMBERS,
    Exchange,
    Network,
    ProcessTable,
    TableSnapshot,
    match_rows,
    network_key,
    service_table,
)

KIND_NUMBERS = {name: num for num, name in KIND_NAMES.items()}  # application latency: dns, http, mysql
DOTTED_PREFIX = re.compile(r"^\d{1,3}(\.\d{1,3}){0,2}\.?$")


def owned_rows(t: TableSnapshot, processes: ProcessTable, word: str) -> np.ndarray:
    """Which rows of a flow table a process whose name contains `word` (lower case) owns."""
    owned = processes.owned
    return match_rows(t, TableSnapshot(owned.keys.keys[owned.named(word)], {}, layout=FLOW_KEY)) >= 0


@dataclass
class Term:
    """One word of the filter; a row matches it when any of its fields does."""

    text: str
    networks: list[Network] = field(default_factory=list)
    ports: set[int] = field(default_factory=set)
    protos: set[int] = field(default_factory=set)
    kinds: set[int] = field(default_factory=set)  # exchange kinds (Latency view)
    process: str = ""  # part of a local process's name, lower case (Flows view)


def _term(word: str, names: Mapping[str, str], processes: Collection[str] = ()) -> Term | None:
    term = Term(word)
    low = word.lower()
    if low in PROTO_NUMBERS:
        term.protos.add(PROTO_NUMBERS[low])
        return term
    if word.isdigit():
        if int(word) > 65535:
            return None
        term.ports.add(int(word))
        return term
    if DOTTED_PREFIX.match(word):  # '198.18' means 198.18.0.0/16
        octets = [o for o in word.rstrip(".").split(".")]
        if all(int(o) < 256 for o in octets):
            prefix = ".".join(octets + ["0"] * (4 - len(octets)))
            term.networks.append(network_key(ipaddress.IPv4Network(f"{prefix}/{8 * len(octets)}")))
            return term
    try:
        term.networks.append(network_key(ipaddress.ip_network(word, strict=False)))
        return term
    except ValueError:
        pass
    term.ports |= {port for (_, port), svc in service_table().items() if svc == low}
    if low in KIND_NUMBERS:  # 'dns': DNS exchanges, and port 53 where rows have no kind
        term.kinds.add(KIND_NUMBERS[low])
        if KIND_NUMBERS[low] == KIND_DNS:
            term.ports.add(DNS_PORT)
    for addr, name in names.items():
        if low in name.lower():
            term.networks.append(network_key(ipaddress.ip_network(addr)))
    if any(low in name.lower() for name in processes):
        term.process = low
    return term if term.ports or term.networks or term.kinds or term.process else None


@dataclass
class Query:
    """Words that must all match (AND); each word matches any end of a row (OR)."""

    text: str = ""
    terms: list[Term] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str, names: Mapping[str, str] | None = None, processes: Collection[str] = ()) -> Query:
        """Read the filter text; words it cannot place are listed in `unknown` (they match nothing).

        `names` are resolved host names by address, `processes` the names of local processes known.
        """
        query = cls(text.strip())
        for word in text.split():
            term = _term(word, names or {}, processes)
            if term is None:
                query.unknown.append(word)
            else:
                query.terms.append(term)
        return query

    def __bool__(self) -> bool:
        return bool(self.text)

    def _mask(
        self,
        n: int,
        addrs: Sequence[np.ndarray],
        ports: Sequence[np.ndarray],
        proto: np.ndarray | None,
        kinds: np.ndarray | None = None,
        owned: Callable[[str], np.ndarray] | None = None,
    ) -> np.ndarray:
        out = np.full(n, not self.unknown)
        for term in self.terms:
            if (term.networks and not addrs) or (term.ports and not ports) or (term.protos and proto is None):
                continue  # the word is about something these rows do not have: it does not narrow them
            if term.kinds and kinds is None and not (term.networks or term.ports or term.protos):
                continue
            if term.process and owned is None and not (term.networks or term.ports or term.protos or term.kinds):
                continue
            hit = np.zeros(n, bool)
            if term.process and owned is not None:
                hit |= owned(term.process)
            if term.kinds and kinds is not None:
                hit |= np.isin(kinds, np.fromiter(term.kinds, np.int64))
            for key, mask in term.networks:
                for a in addrs:
                    hit |= ((a & mask) == key).all(axis=1)
            if term.ports:
                wanted = np.fromiter(term.ports, np.int64)
                for p in ports:
                    hit |= np.isin(p, wanted)
            if term.protos and proto is not None:
                hit |= np.isin(proto, np.fromiter(term.protos, np.int64))
            out &= hit
        return out

    def flows(self, t: TableSnapshot, processes: ProcessTable | None = None) -> np.ndarray:
        """Rows of the flow table that match (process words: the flows of those local processes)."""
        k = t.fields
        ports = [k["aport"].astype(np.int64), k["bport"].astype(np.int64)]
        owned = None if processes is None else lambda word: owned_rows(t, processes, word)
        return self._mask(len(t), [k["a"], k["b"]], ports, k["proto"].astype(np.int64), owned=owned)

    def pairs(self, t: TableSnapshot) -> np.ndarray:
        """Rows of the host-pair table that match."""
        return self._mask(len(t), [t.fields["a"], t.fields["b"]], [], None)

    def hosts(self, t: TableSnapshot) -> np.ndarray:
        """Rows of the host table that match."""
        return self._mask(len(t), [t.fields["addr"]], [], None)

    def ports(self, t: TableSnapshot) -> np.ndarray:
        """Rows of the port table that match."""
        k = t.fields
        return self._mask(len(t), [], [k["port"].astype(np.int64)], k["proto"].astype(np.int64))

    def services(self, t: TableSnapshot) -> np.ndarray:
        """Rows of the latency per-service table (IP protocol, port, kind) that match."""
        k = t.fields
        port, proto, kind = (k[name].astype(np.int64) for name in ("port", "proto", "kind"))
        return self._mask(len(t), [], [port], proto, kind)

    def servers(self, t: TableSnapshot) -> np.ndarray:
        """Rows of the latency per-server table (address, IP protocol, port, kind) that match."""
        k = t.fields
        port, proto, kind = (k[name].astype(np.int64) for name in ("port", "proto", "kind"))
        return self._mask(len(t), [k["server"]], [port], proto, kind)

    def exchanges(self, items: Sequence[Exchange]) -> np.ndarray:
        """Which of these exchanges match (client, server, server port, kind; they carry no IP protocol)."""
        n = len(items)
        if n == 0:
            return np.zeros(0, bool)
        client = np.frombuffer(b"".join(x.client for x in items), np.uint8).reshape(n, 16)
        server = np.frombuffer(b"".join(x.server for x in items), np.uint8).reshape(n, 16)
        port = np.array([x.port for x in items], np.int64)
        kinds = np.array([KIND_NUMBERS.get(x.kind, 0) for x in items], np.int64)
        return self._mask(n, [client, server], [port], None, kinds)
