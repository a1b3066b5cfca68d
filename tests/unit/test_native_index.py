"""The compiled key index (_native.KeyIndex) behind KeyTable, against the dict it replaced.

`DictTable` below is KeyTable's row bookkeeping as it was before the index was compiled (a Python
dict from key bytes to row, a free list, a high-water mark, growth by doubling): random batches of
keys with repeats, inserts past the capacity, removals, idle evictions and reinsertion must give the
same row ids, the same evictions and the same rows in use.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture_backend._native import KeyIndex
from capture_backend.analysis.tables import KeyTable

LAST = {"last": (np.int64, (), 0)}


class DictTable:
    """The dict semantics KeyTable had (only the columns eviction reads)."""

    def __init__(self, width: int, capacity: int, initial: int) -> None:
        self.width, self.capacity = width, capacity
        self.index: dict[bytes, int] = {}
        self.free: list[int] = []
        self.high = 0
        self.evicted = 0
        size = max(1, min(initial, capacity))
        self.keys = np.zeros((size, width), np.uint8)
        self.used = np.zeros(size, bool)
        self.last = np.zeros(size, np.int64)

    def _grow(self) -> None:
        old = self.keys.shape[0]
        new = min(old * 2, self.capacity)
        self.keys = np.concatenate([self.keys, np.zeros((new - old, self.width), np.uint8)])
        self.used = np.concatenate([self.used, np.zeros(new - old, bool)])
        self.last = np.concatenate([self.last, np.zeros(new - old, np.int64)])

    def _alloc(self) -> int:
        if self.free:
            return self.free.pop()
        if self.high == self.keys.shape[0]:
            self._grow()
        self.high += 1
        return self.high - 1

    def remove(self, ids: np.ndarray) -> None:
        if ids.size == 0:
            return
        for key in self.keys[ids]:
            del self.index[key.tobytes()]
        self.used[ids] = False
        self.last[ids] = 0
        self.free.extend(int(i) for i in ids)

    def evict_oldest(self, count: int, keep: np.ndarray) -> None:
        # The `count` oldest by (last, row), removed in row order.
        candidates = np.flatnonzero(self.used)
        candidates = candidates[~np.isin(candidates, keep)]
        count = min(count, candidates.size)
        if count <= 0:
            return
        order = np.lexsort((candidates, self.last[candidates]))[:count]
        victims = np.sort(candidates[order])
        self.remove(victims)
        self.evicted += int(victims.size)

    def evict_idle(self, cutoff_ns: int) -> int:
        idle = np.flatnonzero(self.used & (self.last < cutoff_ns))
        self.remove(idle)
        self.evicted += int(idle.size)
        return int(idle.size)

    def ids(self, keys: np.ndarray) -> np.ndarray:
        m = keys.shape[0]
        raw = np.ascontiguousarray(keys).tobytes()
        w = self.width
        out = np.empty(m, np.int64)
        missing: list[int] = []
        for i in range(m):
            row = self.index.get(raw[i * w : (i + 1) * w], -1)
            out[i] = row
            if row < 0:
                missing.append(i)
        if not missing:
            return out
        overflow = len(self.index) + len(missing) - self.capacity
        if overflow > 0:
            self.evict_oldest(overflow + self.capacity // 16, out[out >= 0])
        for i in missing:
            key = raw[i * w : (i + 1) * w]
            row = self.index.get(key, -1)
            if row < 0:
                if len(self.index) >= self.capacity:
                    self.evicted += 1
                    out[i] = -1
                    continue
                row = self._alloc()
                self.index[key] = row
                self.keys[row] = keys[i]
                self.used[row] = True
            out[i] = row
        return out


def same_state(real: KeyTable, model: DictTable) -> None:
    assert (len(real), real.evicted, real.high) == (len(model.index), model.evicted, model.high)
    assert real.keys.shape == model.keys.shape
    assert np.array_equal(real.used, model.used)
    assert np.array_equal(real.keys[real.used], model.keys[model.used])
    assert real.index.free_rows().tolist() == model.free
    for key, row in model.index.items():
        assert real.index[key] == row
        assert key in real.index
    assert real.index.slot_count >= 2 * real.keys.shape[0]


def pool_of(width: int, size: int, seed: int) -> np.ndarray:
    """`size` distinct keys, many of them differing in one byte only (the last, or a middle one)."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 256, (size, width), dtype=np.uint8)
    keys[::3] = keys[0]
    keys[::3, -1] = np.arange(0, size, 3) % 256
    keys[1::3, width // 2] = np.arange(1, size, 3) % 256
    keys[1::3, -1] = (np.arange(1, size, 3) // 256) % 256
    return np.unique(keys, axis=0)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("ids"), st.lists(st.integers(0, 10_000), min_size=0, max_size=60), st.integers(0, 1000)),
        st.tuples(st.just("remove"), st.lists(st.integers(0, 10_000), max_size=20, unique=True), st.just(0)),
        st.tuples(st.just("idle"), st.just([]), st.integers(0, 1000)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.sampled_from([4, 16, 20, 32, 40]),
    capacity=st.integers(1, 120),
    pool=st.integers(2, 300),
    seed=st.integers(0, 2**32 - 1),
    ops=OPS,
)
def test_same_ids_and_evictions_as_a_dict(
    width: int, capacity: int, pool: int, seed: int, ops: list[tuple[str, list[int], int]]
) -> None:
    keys = pool_of(width, pool, seed)
    real = KeyTable(width, LAST, capacity)
    model = DictTable(width, capacity, capacity)  # KeyTable's arrays hold every row from the start
    for op, picks, t in ops:
        if op == "ids":
            batch = keys[[p % keys.shape[0] for p in picks]]
            got, want = real.ids(batch), model.ids(batch)
            assert got.tolist() == want.tolist()
            ok = want >= 0
            # Every key seen gets a time (different per position, the last write wins in both).
            stamps = t + np.arange(want.size, dtype=np.int64)
            real.cols["last"][got[ok]] = stamps[ok]
            model.last[want[ok]] = stamps[ok]
        elif op == "remove":
            rows = np.flatnonzero(model.used)
            if rows.size == 0:
                continue
            victims = np.unique(np.array(picks, np.int64) % rows.size)
            victims = rows[victims[np.argsort([(p * 7919) % 101 for p in victims.tolist()], kind="stable")]]
            real.remove(victims)
            model.remove(victims)
        else:
            assert real.evict_idle(t) == model.evict_idle(t)
        same_state(real, model)


def test_flood_past_capacity_keeps_the_bound_and_counts() -> None:
    """A flood of distinct keys: the table never holds more than its capacity, rows are reused, and
    every key that could not get a row counts as evicted, as the dict did."""
    rng = np.random.default_rng(1)
    width, capacity = 40, 5000
    real = KeyTable(width, LAST, capacity)
    model = DictTable(width, capacity, capacity)
    for batch_no in range(12):
        batch = rng.integers(0, 256, (1500, width), dtype=np.uint8)
        batch[700:800] = batch[:100]  # repeats inside a batch share a row
        got, want = real.ids(batch), model.ids(batch)
        assert got.tolist() == want.tolist()
        assert (got[700:800] == got[:100]).all()
        real.cols["last"][got[got >= 0]] = batch_no
        model.last[want[want >= 0]] = batch_no
        same_state(real, model)
        assert len(real) <= capacity
    assert real.evicted > 0 and real.keys.shape[0] == capacity
    assert real.index.max_probe() < 64


def test_more_new_keys_than_capacity_in_one_batch() -> None:
    real = KeyTable(16, LAST, 10)
    model = DictTable(16, 10, 1024)
    batch = np.repeat(np.arange(30, dtype=np.uint8)[:, None], 16, axis=1)
    assert real.ids(batch).tolist() == model.ids(batch).tolist() == list(range(10)) + [-1] * 20
    assert real.evicted == model.evicted == 20
    again = real.ids(batch[:5])
    assert again.tolist() == list(range(5))


def test_index_lookups_by_bytes() -> None:
    t = KeyTable(4, LAST, 100)
    rows = t.ids(np.array([[1, 2, 3, 4], [5, 6, 7, 8], [1, 2, 3, 4]], np.uint8))
    assert rows.tolist() == [0, 1, 0]
    assert t.index[bytes([5, 6, 7, 8])] == 1
    assert bytes([1, 2, 3, 4]) in t.index and bytes([1, 2, 3]) not in t.index and 7 not in t.index
    assert t.index.get(bytes(4)) is None and t.index.get(bytes(4), -1) == -1
    with pytest.raises(KeyError):
        t.index[bytes(4)]
    t.remove(np.array([0]))
    assert bytes([1, 2, 3, 4]) not in t.index and len(t) == 1
    with pytest.raises(KeyError):
        t.remove(np.array([0]))  # not indexed any more, as `del dict[key]` raised
    assert t.ids(np.zeros((0, 4), np.uint8)).size == 0


def test_wrong_shapes_are_refused() -> None:
    keys = np.zeros((8, 4), np.uint8)
    index = KeyIndex(4, 8, keys, np.zeros(8, bool))
    with pytest.raises(ValueError):
        index.lookup(np.zeros((2, 5), np.uint8), np.empty(2, np.int64), np.empty(2, np.uint64))
    with pytest.raises(ValueError):
        index.bind(np.zeros((4, 4), np.uint8), np.zeros(4, bool))  # rows never shrink
    with pytest.raises(ValueError):
        KeyIndex(4, 0, keys, np.zeros(8, bool))
