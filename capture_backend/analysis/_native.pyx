# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of the hot path.

KeyIndex: an open-addressing hash index (linear probing, backward-shift deletion, load factor at
most 0.5) from fixed-width byte keys to the rows of a counters.KeyTable. The key bytes stay in the
table's own `keys` rows (no second copy); a slot is one 64-bit word, the key hash's low 32 bits
(they also give the slot the key starts probing from) above row + 1 (0: empty), so a probe reads
8 bytes per slot and a key row only when the hashes match. The slot array grows with the table's
row arrays (at least twice their length), so a table of a few hundred flows stays in L1/L2.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcmp, memcpy
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree, PyMem_RawRealloc

import numpy as np

cdef uint64_t EMPTY = 0
cdef uint64_t LOW32 = 0xFFFFFFFFULL


cdef inline uint64_t _load64(const uint8_t* p) noexcept nogil:
    cdef uint64_t w
    memcpy(&w, p, 8)
    return w


cdef inline uint64_t _hash(const uint8_t* p, Py_ssize_t width) noexcept nogil:
    """64-bit hash of `width` bytes: multiply-xorshift per 8-byte word, murmur3's finaliser."""
    cdef uint64_t h = 0x9E3779B97F4A7C15ULL ^ <uint64_t>width
    cdef uint64_t w
    cdef Py_ssize_t j = 0
    while j + 8 <= width:
        h = (h ^ _load64(p + j)) * 0xBF58476D1CE4E5B9ULL
        h ^= h >> 29
        j += 8
    if j < width:
        w = 0
        memcpy(&w, p + j, width - j)
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL
        h ^= h >> 29
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= 0xC4CEB9FE1A85EC53ULL
    h ^= h >> 33
    return h


cdef inline bint _equal(const uint8_t* a, const uint8_t* b, Py_ssize_t width) noexcept nogil:
    cdef Py_ssize_t j = 0
    while j + 8 <= width:
        if _load64(a + j) != _load64(b + j):
            return False
        j += 8
    return j == width or memcmp(a + j, b + j, width - j) == 0


cdef class KeyIndex:
    """Row of each key among a table's key rows; rows are handed out from a free stack, then from
    the high-water mark. Only one thread may use an index at a time (the capture thread)."""

    cdef uint64_t* slots
    cdef uint64_t mask
    cdef int64_t* free_stack
    cdef Py_ssize_t nfree
    cdef Py_ssize_t rows
    cdef uint8_t* kp
    cdef uint8_t* up
    cdef object _keys
    cdef object _used
    cdef readonly Py_ssize_t width
    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t high
    cdef readonly Py_ssize_t count

    def __cinit__(self, Py_ssize_t width, Py_ssize_t capacity, keys, used):
        if width <= 0 or capacity <= 0 or <uint64_t>capacity >= LOW32:
            raise ValueError("width and capacity must be positive (capacity < 2**32 - 1)")
        self.width = width
        self.capacity = capacity
        self.slots = NULL
        self.mask = 0
        self.free_stack = NULL
        self.nfree = 0
        self.rows = 0
        self.high = 0
        self.count = 0
        self.bind(keys, used)

    def __dealloc__(self):
        PyMem_RawFree(self.slots)
        PyMem_RawFree(self.free_stack)

    def bind(self, keys, used) -> None:
        """Use the table's (rows, width) uint8 key array and its (rows,) bool `used` array: called
        again whenever the table reallocates them (rows only ever grow, the old rows copied)."""
        cdef uint8_t[:, ::1] k = keys
        cdef uint8_t[::1] u = np.asarray(used).view(np.uint8)
        cdef Py_ssize_t rows = k.shape[0]
        if k.shape[1] != self.width or u.shape[0] != rows or rows < self.rows or rows == 0:
            raise ValueError("keys must be (rows, width) uint8 with rows >= the bound rows, used (rows,)")
        cdef uint64_t want = 16
        while want < <uint64_t>(2 * rows):
            want <<= 1
        if self.slots == NULL or want > self.mask + 1:
            self._rehash(want)
        cdef int64_t* stack = <int64_t*>PyMem_RawRealloc(self.free_stack, rows * sizeof(int64_t))
        if stack == NULL:
            raise MemoryError()
        self.free_stack = stack
        self._keys, self._used = keys, u
        self.kp = &k[0, 0]
        self.up = &u[0]
        self.rows = rows

    cdef int _rehash(self, uint64_t size) except -1:
        cdef uint64_t* new = <uint64_t*>PyMem_RawCalloc(size, sizeof(uint64_t))
        if new == NULL:
            raise MemoryError()
        cdef uint64_t new_mask = size - 1
        cdef uint64_t i, j, s
        if self.slots != NULL:
            for i in range(self.mask + 1):
                s = self.slots[i]
                if s != EMPTY:
                    j = (s >> 32) & new_mask
                    while new[j] != EMPTY:
                        j = (j + 1) & new_mask
                    new[j] = s
            PyMem_RawFree(self.slots)
        self.slots = new
        self.mask = new_mask
        return 0

    cdef inline int64_t _find(self, const uint8_t* key, uint64_t h) noexcept nogil:
        cdef uint64_t i = h & self.mask
        cdef uint64_t s
        cdef uint64_t tag = h & LOW32
        cdef int64_t row
        while True:
            s = self.slots[i]
            if s == EMPTY:
                return -1
            if (s >> 32) == tag:
                row = <int64_t>(s & LOW32) - 1
                if _equal(self.kp + row * self.width, key, self.width):
                    return row
            i = (i + 1) & self.mask

    cdef inline void _place(self, uint64_t h, int64_t row) noexcept nogil:
        cdef uint64_t i = h & self.mask
        while self.slots[i] != EMPTY:
            i = (i + 1) & self.mask
        self.slots[i] = ((h & LOW32) << 32) | <uint64_t>(row + 1)

    cdef bint _delete(self, int64_t row) noexcept nogil:
        """Take `row` out of the index (backward-shift deletion); False when it is not in it."""
        cdef uint64_t h = _hash(self.kp + row * self.width, self.width)
        cdef uint64_t want = ((h & LOW32) << 32) | <uint64_t>(row + 1)
        cdef uint64_t i = h & self.mask
        cdef uint64_t j, s, home
        while True:
            s = self.slots[i]
            if s == EMPTY:
                return False
            if s == want:
                break
            i = (i + 1) & self.mask
        j = i
        while True:
            j = (j + 1) & self.mask
            s = self.slots[j]
            if s == EMPTY:
                break
            home = (s >> 32) & self.mask
            # The entry at j may fill the hole at i when its home is not in (i, j] (cyclically).
            if ((j - home) & self.mask) >= ((j - i) & self.mask):
                self.slots[i] = s
                i = j
        self.slots[i] = EMPTY
        return True

    def lookup(self, const uint8_t[:, ::1] keys, int64_t[::1] out, uint64_t[::1] hashes) -> int:
        """Fill out[i] with the row of keys[i] (-1: unknown) and hashes[i] with its hash; returns how
        many positions are unknown (a key repeated in `keys` counts each time)."""
        cdef Py_ssize_t m = keys.shape[0]
        cdef Py_ssize_t i, missing = 0
        cdef Py_ssize_t w = self.width
        cdef uint64_t h
        cdef int64_t row
        if keys.shape[1] != w or out.shape[0] != m or hashes.shape[0] != m:
            raise ValueError("keys must be (m, width) uint8, out (m,) int64 and hashes (m,) uint64")
        if m == 0:
            return 0
        cdef const uint8_t* kb = &keys[0, 0]
        with nogil:
            for i in range(m):
                h = _hash(kb + i * w, w)
                hashes[i] = h
                row = self._find(kb + i * w, h)
                out[i] = row
                if row < 0:
                    missing += 1
        return missing

    def insert(self, const uint8_t[:, ::1] keys, int64_t[::1] out, const uint64_t[::1] hashes, Py_ssize_t start):
        """Give a row to every key from position `start` on whose out[i] is -1, in order: the row of
        an equal key inserted before it, else a free row, else -1 when `capacity` keys are indexed
        already. Returns (stop, over): stop < m when the table must grow its rows first (call again
        from `stop` after bind()), over the keys left at -1 for want of capacity."""
        cdef Py_ssize_t m = keys.shape[0]
        cdef Py_ssize_t i, stop = m, over = 0
        cdef Py_ssize_t w = self.width
        cdef const uint8_t* key
        cdef uint64_t h
        cdef int64_t row
        if keys.shape[1] != w or out.shape[0] != m or hashes.shape[0] != m:
            raise ValueError("keys must be (m, width) uint8, out (m,) int64 and hashes (m,) uint64")
        if start < 0 or start >= m:
            return m, 0
        cdef const uint8_t* kb = &keys[0, 0]
        with nogil:
            for i in range(start, m):
                if out[i] >= 0:
                    continue
                key = kb + i * w
                h = hashes[i]
                row = self._find(key, h)
                if row < 0:
                    if self.count >= self.capacity:
                        over += 1
                        continue
                    if self.nfree > 0:
                        self.nfree -= 1
                        row = self.free_stack[self.nfree]
                    elif self.high < self.rows:
                        row = self.high
                        self.high += 1
                    else:
                        stop = i
                        break
                    memcpy(self.kp + row * w, key, w)
                    self.up[row] = 1
                    self._place(h, row)
                    self.count += 1
                out[i] = row
        return stop, over

    def remove(self, const int64_t[::1] rows) -> None:
        """Take rows out of the index; they go on the free stack in order (the last is reused first).
        KeyError (after the others are removed) when a row is not indexed."""
        cdef Py_ssize_t n = rows.shape[0]
        cdef Py_ssize_t i, bad = -1
        cdef int64_t row
        with nogil:
            for i in range(n):
                row = rows[i]
                if row < 0 or row >= self.high or not self._delete(row):
                    bad = i
                    continue
                self.count -= 1
                self.free_stack[self.nfree] = row
                self.nfree += 1
        if bad >= 0:
            raise KeyError(f"row {rows[bad]} is not in the index")

    def free_rows(self):
        """The free stack, bottom first (a copy)."""
        out = np.empty(self.nfree, np.int64)
        cdef int64_t[::1] o = out
        cdef Py_ssize_t i
        for i in range(self.nfree):
            o[i] = self.free_stack[i]
        return out

    @property
    def slot_count(self) -> int:
        return self.mask + 1

    def max_probe(self) -> int:
        """The longest distance of an entry from its home slot (a health check for tests)."""
        cdef uint64_t i, s, worst = 0
        for i in range(self.mask + 1):
            s = self.slots[i]
            if s != EMPTY and ((i - ((s >> 32) & self.mask)) & self.mask) > worst:
                worst = (i - ((s >> 32) & self.mask)) & self.mask
        return worst

    cdef int64_t _get(self, key) except -2:
        cdef const uint8_t[::1] b
        if not isinstance(key, (bytes, bytearray, memoryview)):
            return -1
        b = key
        if b.shape[0] != self.width:
            return -1
        return self._find(&b[0], _hash(&b[0], self.width))

    def get(self, key, default=None):
        """The row of one key (bytes of the table's width), else `default`."""
        cdef int64_t row = self._get(key)
        return default if row < 0 else row

    def __getitem__(self, key) -> int:
        cdef int64_t row = self._get(key)
        if row < 0:
            raise KeyError(key)
        return row

    def __contains__(self, key) -> bool:
        return self._get(key) >= 0

    def __len__(self) -> int:
        return self.count
