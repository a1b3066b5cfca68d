"""Type stub of the compiled module (_native.pyx)."""

import numpy as np

class KeyIndex:
    width: int
    capacity: int
    high: int
    count: int
    def __init__(self, width: int, capacity: int, keys: np.ndarray, used: np.ndarray) -> None: ...
    def bind(self, keys: np.ndarray, used: np.ndarray) -> None: ...
    def lookup(self, keys: np.ndarray, out: np.ndarray, hashes: np.ndarray) -> int: ...
    def insert(self, keys: np.ndarray, out: np.ndarray, hashes: np.ndarray, start: int) -> tuple[int, int]: ...
    def remove(self, rows: np.ndarray) -> None: ...
    def free_rows(self) -> np.ndarray: ...
    @property
    def slot_count(self) -> int: ...
    def max_probe(self) -> int: ...
    def get(self, key: bytes, default: int | None = None) -> int | None: ...
    def __getitem__(self, key: bytes) -> int: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...

def fill_rows(rows: np.ndarray, ids: np.ndarray, fill: np.ndarray) -> None: ...
def oldest_rows(used: np.ndarray, last: np.ndarray, keep: np.ndarray, count: int) -> np.ndarray: ...
def slot_spans(caplen: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray, int]: ...
def pack_frames(
    pool: np.ndarray, at: int, data: np.ndarray, start: np.ndarray, caplen: np.ndarray, offset: np.ndarray
) -> int: ...
def copy_runs(dst8: np.ndarray, dst: np.ndarray, src8: np.ndarray, src: np.ndarray, length: np.ndarray) -> None: ...
def batch_totals(
    wire: np.ndarray,
    malformed: np.ndarray,
    ts: np.ndarray,
    ethertype: np.ndarray,
    vlan: np.ndarray,
    ip: np.ndarray,
    proto: np.ndarray,
    by_proto: np.ndarray,
) -> tuple[int, int, int, int, int, int, int, int, int]: ...
def add_traffic(
    packets: np.ndarray,
    nbytes: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    ids: np.ndarray,
    direction: np.ndarray,
    p: np.ndarray,
    b: np.ndarray,
    f: np.ndarray,
    l: np.ndarray,
) -> None: ...
def add_directed(target: np.ndarray, ids: np.ndarray, direction: np.ndarray, values: np.ndarray) -> None: ...
def group_packets(
    src: np.ndarray,
    dst: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    proto: np.ndarray,
    ts: np.ndarray,
    wire: np.ndarray,
    flags: np.ndarray,
    inv: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
def group_keys(
    rep: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    proto: np.ndarray,
    known: np.ndarray,
    has_ports: np.ndarray,
    at: np.ndarray,
    flow: np.ndarray,
    pair: np.ndarray,
    host: np.ndarray,
    port: np.ndarray,
    direction: np.ndarray,
    port_dir: np.ndarray,
) -> None: ...
def match_keys(keys: np.ndarray, before: np.ndarray, cand: np.ndarray, out: np.ndarray) -> None: ...
def window_sums(
    hist: np.ndarray,
    slot_sec: np.ndarray,
    hist_from: np.ndarray,
    rows: np.ndarray,
    now_sec: int,
    windows: np.ndarray,
    out: np.ndarray,
) -> None: ...
def group_rows(k: np.ndarray, inv: np.ndarray) -> np.ndarray: ...
def walk_pcap(
    buf: np.ndarray,
    end: int,
    big_endian: bool,
    max_incl: int,
    frac_ns: int,
    out: np.ndarray,
    caplen: np.ndarray,
    wirelen: np.ndarray,
    ts_ns: np.ndarray,
) -> tuple[int, int]: ...
def walk_frames(
    buf: np.ndarray,
    base: int,
    block_size: int,
    num_pkts: int,
    first_rel: int,
    used: int,
    min_first: int,
    min_hdr: int,
    at: np.ndarray,
    vlan_valid_bit: int,
    row: int,
    hdr: np.ndarray,
    start: np.ndarray,
    caplen: np.ndarray,
    wirelen: np.ndarray,
    ts: np.ndarray,
    tci: np.ndarray,
    tpid: np.ndarray,
    valid: np.ndarray,
    pkttype: np.ndarray,
) -> tuple[int, int, int, int]: ...
def _init_tables(
    l4_need: list[int], has_ports: list[bool], ext_mult: list[int], ext_add: list[int], null_family: list[int]
) -> None: ...
def decode_frames(
    buf: np.ndarray,
    start: np.ndarray,
    caplen: np.ndarray,
    wirelen: np.ndarray,
    linktype: int,
    ethertype: np.ndarray,
    vlan: np.ndarray,
    ip: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    proto: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    tcp_flags: np.ndarray,
    malformed: np.ndarray,
    tcp_seq: np.ndarray,
    tcp_ack: np.ndarray,
    tcp_window: np.ndarray,
    tcp_len: np.ndarray,
    l7_start: np.ndarray,
    l7_cap: np.ndarray,
    l7_head: np.ndarray,
) -> None: ...
def tcp_sequence(
    keys: np.ndarray,
    rank: np.ndarray,
    ts: np.ndarray,
    flags: np.ndarray,
    seq: np.ndarray,
    ack: np.ndarray,
    window: np.ndarray,
    length: np.ndarray,
    nxt: np.ndarray,
    nxt_t: np.ndarray,
    lastack: np.ndarray,
    last_t: np.ndarray,
    win: np.ndarray,
    dupacks: np.ndarray,
    ka: np.ndarray,
    syn_t: np.ndarray,
    irtt: np.ndarray,
    retrans: np.ndarray,
    ooo: np.ndarray,
    dupack: np.ndarray,
    zero_win: np.ndarray,
    resets: np.ndarray,
) -> None: ...

class PendingRequests:
    width: int
    count: int
    stamp: int
    def __init__(self, width: int) -> None: ...
    def match(
        self,
        key: np.ndarray,
        request: np.ndarray,
        ts: np.ndarray,
        text: np.ndarray,
        answered: np.ndarray,
        asked_ts: np.ndarray,
        asked_text: np.ndarray,
    ) -> int: ...
    def add_batch(
        self,
        buf: np.ndarray,
        l7_start: np.ndarray,
        l7_cap: np.ndarray,
        l7_head: np.ndarray | None,
        proto: np.ndarray,
        sport: np.ndarray,
        dport: np.ndarray,
        http_heads: np.ndarray,
        flow: np.ndarray | None,
        ts: np.ndarray,
        lo: int,
        hi: int,
        answered: np.ndarray,
        kind: np.ndarray,
        key: np.ndarray,
        asked_ts: np.ndarray,
        asked_text: np.ndarray,
    ) -> tuple[int, int, int]: ...
    def live(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
    def text(self, entries: np.ndarray) -> np.ndarray: ...
    def drop(self, entries: np.ndarray) -> None: ...
    def __len__(self) -> int: ...

def add_exchanges(count: np.ndarray, total: np.ndarray, top: np.ndarray, ids: np.ndarray, lat: np.ndarray) -> None: ...
def latency_tables(
    count: np.ndarray,
    total: np.ndarray,
    top: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    ids: np.ndarray,
    lat: np.ndarray,
    ts: np.ndarray,
) -> None: ...
