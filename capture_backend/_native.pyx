# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels of the hot path.

KeyIndex: an open-addressing hash index (linear probing, backward-shift deletion, load factor at
most 0.5) from fixed-width byte keys to the rows of a counters.KeyTable. The key bytes stay in the
table's own `keys` rows (no second copy); a slot is one 64-bit word, the key hash's low 32 bits
(they also give the slot the key starts probing from) above row + 1 (0: empty), so a probe reads
8 bytes per slot and a key row only when the hashes match. The slot array grows with the table's
row arrays (at least twice their length), so a table of a few hundred flows stays in L1/L2.
"""

from libc.stdint cimport INT64_MAX, INT64_MIN, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree, PyMem_RawMalloc, PyMem_RawRealloc

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


cdef extern from *:
    """
    static inline uint64_t rt_mum(uint64_t a, uint64_t b) {
        __uint128_t r = (__uint128_t)a * b;
        return (uint64_t)r ^ (uint64_t)(r >> 64);
    }
    """
    uint64_t _mum "rt_mum"(uint64_t a, uint64_t b) noexcept nogil


cdef extern from *:
    """
    #include <string.h>
    static inline uint64_t rt_be32(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return __builtin_bswap32(v); }
    static inline uint64_t rt_be64(const uint8_t* p) { uint64_t v; memcpy(&v, p, 8); return __builtin_bswap64(v); }
    """
    uint64_t _be32 "rt_be32"(const uint8_t* p) noexcept nogil
    uint64_t _be64 "rt_be64"(const uint8_t* p) noexcept nogil


cdef extern from *:
    """
    #define rt_prefetch(p) __builtin_prefetch((const void*)(p), 0, 3)
    #define rt_prefetch_w(p) __builtin_prefetch((const void*)(p), 1, 3)
    """
    void _prefetch "rt_prefetch"(const void* p) noexcept nogil
    void _prefetch_w "rt_prefetch_w"(const void* p) noexcept nogil

# How far ahead a pass over scattered rows asks for the cache lines it will touch (a flood's new keys each
# miss the cache in every table: asked for early, the misses overlap instead of following one another).
cdef Py_ssize_t AHEAD = 12


cdef inline uint64_t _hash6(const uint64_t* k) noexcept nogil:
    """64-bit hash of six words (a packet's group key: addresses' high and low words, ports and protocol,
    second): the low words, which tell IPv4 flows apart, multiplied with the ports; the high words and the
    second folded into a second multiply (a batch's table is probed with the low bits)."""
    return (_mum(k[1] ^ 0xA0761D6478BD642FULL, k[3] ^ 0xE7037ED1A0B428DBULL)
            ^ _mum(k[4] ^ 0x8EBC6AF09C88C6E3ULL, (k[0] + (k[2] << 1) + k[5] * 0x9E3779B97F4A7C15ULL)
                   ^ 0x589965CC75374CC3ULL))


cdef inline bint _same6(const uint64_t* a, const uint64_t* b) noexcept nogil:
    return (a[0] == b[0]) & (a[1] == b[1]) & (a[2] == b[2]) & (a[3] == b[3]) & (a[4] == b[4]) & (a[5] == b[5])


cdef inline bint _equal(const uint8_t* a, const uint8_t* b, Py_ssize_t width) noexcept nogil:
    cdef Py_ssize_t j = 0
    while j + 8 <= width:
        if _load64(a + j) != _load64(b + j):
            return False
        j += 8
    return j == width or memcmp(a + j, b + j, width - j) == 0


# Slot tables (KeyIndex, PendingRequests): linear probing over 64-bit words, 0 empty, each word keeping its
# key's home slot in its high 32 bits (home = (word >> 32) & mask), so growing and deleting never rehash keys.

cdef uint64_t* _slots_grown(uint64_t* old, uint64_t old_mask, uint64_t size) noexcept nogil:
    """A zeroed slot array of `size` (a power of two) holding old's words (old freed); NULL: out of memory
    (old kept)."""
    cdef uint64_t* new = <uint64_t*>PyMem_RawCalloc(size, sizeof(uint64_t))
    cdef uint64_t i, j, s
    if new == NULL:
        return NULL
    if old != NULL:
        for i in range(old_mask + 1):
            s = old[i]
            if s != EMPTY:
                j = (s >> 32) & (size - 1)
                while new[j] != EMPTY:
                    j = (j + 1) & (size - 1)
                new[j] = s
        PyMem_RawFree(old)
    return new


cdef inline void _vacate(uint64_t* slots, uint64_t mask, uint64_t i) noexcept nogil:
    """Empty slot i, moving later words of its probe run back (backward-shift deletion: no tombstones)."""
    cdef uint64_t j = i, s, home
    while True:
        j = (j + 1) & mask
        s = slots[j]
        if s == EMPTY:
            break
        home = (s >> 32) & mask
        # The word at j may fill the hole at i when its home is not in (i, j] (cyclically).
        if ((j - home) & mask) >= ((j - i) & mask):
            slots[i] = s
            i = j
    slots[i] = EMPTY


cdef int _slot_order(const uint64_t* hashes, Py_ssize_t n, uint64_t mask, int32_t* order) noexcept nogil:
    """order[:n]: the positions 0..n-1 by the home slot's top bits (a counting sort, stable), so that deletions
    made in that order walk the slot array forwards, a page at a time, instead of jumping at random.
    Returns -1 when out of memory (order then holds 0..n-1)."""
    cdef int bits = 0, shift
    cdef Py_ssize_t i, b, nb, total = 0, c
    while (<uint64_t>1 << bits) <= mask:
        bits += 1
    nb = 1 << min(bits, 12)
    shift = bits - min(bits, 12)
    cdef Py_ssize_t* count = <Py_ssize_t*>PyMem_RawCalloc(nb, sizeof(Py_ssize_t))
    if count == NULL:
        for i in range(n):
            order[i] = <int32_t>i
        return -1
    for i in range(n):
        count[(hashes[i] & mask) >> shift] += 1
    for b in range(nb):
        c = count[b]
        count[b] = total
        total += c
    for i in range(n):
        b = <Py_ssize_t>((hashes[i] & mask) >> shift)
        order[count[b]] = <int32_t>i
        count[b] += 1
    PyMem_RawFree(count)
    return 0


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
        cdef uint64_t* new = _slots_grown(self.slots, self.mask, size)
        if new == NULL:
            raise MemoryError()
        self.slots = new
        self.mask = size - 1
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
        return self._delete_hashed(row, _hash(self.kp + row * self.width, self.width))

    cdef bint _delete_hashed(self, int64_t row, uint64_t h) noexcept nogil:
        cdef uint64_t want = ((h & LOW32) << 32) | <uint64_t>(row + 1)
        cdef uint64_t i = h & self.mask
        cdef uint64_t s
        while True:
            s = self.slots[i]
            if s == EMPTY:
                return False
            if s == want:
                break
            i = (i + 1) & self.mask
        _vacate(self.slots, self.mask, i)
        return True

    def lookup(self, const uint8_t[:, ::1] keys, int64_t[::1] out, uint64_t[::1] hashes) -> int:
        """Fill out[i] with the row of keys[i] (-1: unknown) and hashes[i] with its hash; returns how
        many positions are unknown (a key repeated in `keys` counts each time)."""
        cdef Py_ssize_t m = keys.shape[0]
        cdef Py_ssize_t i, missing = 0
        cdef Py_ssize_t w = self.width
        cdef int64_t row
        if keys.shape[1] != w or out.shape[0] != m or hashes.shape[0] != m:
            raise ValueError("keys must be (m, width) uint8, out (m,) int64 and hashes (m,) uint64")
        if m == 0:
            return 0
        cdef const uint8_t* kb = &keys[0, 0]
        cdef uint64_t s
        with nogil:
            for i in range(m):
                hashes[i] = _hash(kb + i * w, w)
            for i in range(m):
                # Two stages ahead: the home slot of key i + 2*AHEAD, then the key row its slot names.
                if i + 2 * AHEAD < m:
                    _prefetch(&self.slots[hashes[i + 2 * AHEAD] & self.mask])
                if i + AHEAD < m:
                    s = self.slots[hashes[i + AHEAD] & self.mask]
                    if s != EMPTY:
                        _prefetch(self.kp + (<int64_t>(s & LOW32) - 1) * w)
                row = self._find(kb + i * w, hashes[i])
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
                if i + AHEAD < m and out[i + AHEAD] < 0:
                    _prefetch(&self.slots[hashes[i + AHEAD] & self.mask])
                if out[i] >= 0:
                    continue
                if self.nfree > AHEAD // 4:  # the row a key a few places on will take
                    _prefetch_w(self.kp + self.free_stack[self.nfree - 1 - AHEAD // 4] * w)
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
        cdef Py_ssize_t i, j, bad = -1
        cdef int64_t row
        if n >= 0x7FFFFFFF:
            raise ValueError("too many rows")
        # Deleted in the order of their home slots (_slot_order); the free stack takes them in the given order.
        cdef uint64_t* hashes = <uint64_t*>PyMem_RawMalloc(max(n, 1) * (sizeof(uint64_t) + sizeof(int32_t) + 1))
        if hashes == NULL:
            raise MemoryError()
        cdef int32_t* order = <int32_t*>(hashes + max(n, 1))
        cdef uint8_t* gone = <uint8_t*>(order + max(n, 1))
        with nogil:
            for i in range(n):
                if i + AHEAD < n and 0 <= rows[i + AHEAD] < self.high:
                    _prefetch(self.kp + rows[i + AHEAD] * self.width)
                row = rows[i]
                hashes[i] = _hash(self.kp + row * self.width, self.width) if 0 <= row < self.high else 0
            _slot_order(hashes, n, self.mask, order)
            for j in range(n):
                if j + AHEAD < n:
                    _prefetch(&self.slots[hashes[order[j + AHEAD]] & self.mask])
                i = order[j]
                row = rows[i]
                gone[i] = row >= 0 and row < self.high and self._delete_hashed(row, hashes[i])
            for i in range(n):
                if not gone[i]:
                    bad = i
                    continue
                self.count -= 1
                self.free_stack[self.nfree] = rows[i]
                self.nfree += 1
        PyMem_RawFree(hashes)
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


def fill_rows(uint8_t[:, ::1] rows, const int64_t[::1] ids, const uint8_t[::1] fill) -> None:
    """Set rows `ids` of a table column (viewed as bytes, one row per line) to the bytes of `fill`."""
    cdef Py_ssize_t n = ids.shape[0], width = rows.shape[1], size = rows.shape[0]
    cdef Py_ssize_t i
    cdef int64_t r
    if fill.shape[0] != width:
        raise ValueError(f"fill is {fill.shape[0]} bytes, rows are {width}")
    if width == 0:
        return
    with nogil:
        for i in range(n):
            if i + AHEAD < n and 0 <= ids[i + AHEAD] < size:
                _prefetch_w(&rows[ids[i + AHEAD], 0])
            r = ids[i]
            if 0 <= r < size:
                memcpy(&rows[r, 0], &fill[0], width)


def oldest_rows(const uint8_t[::1] used, const int64_t[::1] last, const int64_t[::1] keep, Py_ssize_t count):
    """The `count` used rows with the smallest (last, row), rows in `keep` left out, in ascending row order.

    One pass finds the range of `last`, a second counts the rows in 4,096 buckets of it, a third takes the
    rows of the buckets up to the one holding the cut; the cut is then narrowed among those alone (no sort),
    so an eviction costs three passes over the rows whatever the table holds."""
    cdef Py_ssize_t h = last.shape[0], i, n = 0, b, k, m
    cdef int64_t lo = INT64_MAX, hi = INT64_MIN, cut, v, top
    cdef int64_t below = 0, cum, need, cut_k = -1
    cdef uint64_t width
    cdef int shift
    cdef int64_t counts[4096]
    if used.shape[0] < h:
        raise ValueError("oldest_rows: used is shorter than last")
    skip_arr = np.zeros(h, np.uint8)
    cdef uint8_t[::1] skip = skip_arr
    for i in range(keep.shape[0]):
        if 0 <= keep[i] < h:
            skip[keep[i]] = 1
    with nogil:
        for i in range(h):
            if used[i] and not skip[i]:
                n += 1
                v = last[i]
                if v < lo:
                    lo = v
                if v > hi:
                    hi = v
    if count > n:
        count = n
    out_arr = np.empty(max(count, 0), np.int64)
    if count <= 0:
        return out_arr
    cdef int64_t[::1] out = out_arr
    # The bucket of the cut over all rows: its top bounds the candidates.
    top = hi
    if lo < hi:
        width = <uint64_t>hi - <uint64_t>lo
        shift = 0
        while (width >> shift) >= 4096:
            shift += 1
        memset(counts, 0, sizeof(counts))
        with nogil:
            for i in range(h):
                if used[i] and not skip[i]:
                    counts[(<uint64_t>last[i] - <uint64_t>lo) >> shift] += 1
        cum = 0
        b = 0
        while cum + counts[b] < count:
            cum += counts[b]
            b += 1
        m = cum + counts[b]
        top = <int64_t>(<uint64_t>lo + ((<uint64_t>b << shift) + ((<uint64_t>1 << shift) - 1)))
        if top > hi or top < lo:
            top = hi
    else:
        m = n
    rows_arr = np.empty(m, np.int64)
    vals_arr = np.empty(m, np.int64)
    cdef int64_t[::1] rows = rows_arr
    cdef int64_t[::1] vals = vals_arr
    with nogil:
        k = 0
        for i in range(h):
            if used[i] and not skip[i] and last[i] <= top and k < m:
                rows[k] = i
                vals[k] = last[i]
                k += 1
        m = k
        hi = top
        while lo < hi:
            width = <uint64_t>hi - <uint64_t>lo
            shift = 0
            while (width >> shift) >= 4096:
                shift += 1
            memset(counts, 0, sizeof(counts))
            for k in range(m):
                v = vals[k]
                if lo <= v <= hi:
                    counts[(<uint64_t>v - <uint64_t>lo) >> shift] += 1
            cum = below
            b = 0
            while cum + counts[b] < count:
                cum += counts[b]
                b += 1
            below = cum
            lo = <int64_t>(<uint64_t>lo + (<uint64_t>b << shift))
            if (width >> shift) > <uint64_t>b:  # the bucket's top is inside the range
                hi = <int64_t>(<uint64_t>lo + ((<uint64_t>1 << shift) - 1))
        cut = lo  # `below` candidates are older than cut; the rest are those last seen at cut, lowest row first
        need = count - below
        for k in range(m):
            if vals[k] == cut:
                need -= 1
                if need == 0:
                    cut_k = k
                    break
        n = 0
        for k in range(m):
            v = vals[k]
            if v < cut or (v == cut and k <= cut_k):
                out[n] = rows[k]
                n += 1
    return out_arr


cdef extern from *:
    """
    #include <emmintrin.h>
    #include <string.h>
    /* One frame into a 16-byte-aligned slot of the pool with non-temporal stores, whole 16-byte units:
       up to 15 bytes past the frame are read from the source (the caller checks they exist) and land in the
       slot's padding. */
    static void rt_stream_frame(unsigned char *d, const unsigned char *s, size_t n) {
        size_t i = 0;
        for (; i + 64 <= n; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(s + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(s + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32));
            __m128i e = _mm_loadu_si128((const __m128i *)(s + i + 48));
            _mm_stream_si128((__m128i *)(d + i), a);
            _mm_stream_si128((__m128i *)(d + i + 16), b);
            _mm_stream_si128((__m128i *)(d + i + 32), c);
            _mm_stream_si128((__m128i *)(d + i + 48), e);
        }
        for (; i < n; i += 16)
            _mm_stream_si128((__m128i *)(d + i), _mm_loadu_si128((const __m128i *)(s + i)));
    }
    static void rt_fence(void) { _mm_sfence(); }
    """
    void _stream_frame "rt_stream_frame"(uint8_t* d, const uint8_t* s, size_t n) noexcept nogil
    void _fence "rt_fence"() noexcept nogil


def slot_spans(const int64_t[::1] caplen, int64_t limit):
    """Cut a run of frames into the spans pack_frames copies: each frame takes caplen rounded up to 16 bytes,
    a span takes frames while its bytes stay within `limit` (at least one frame). Returns (each span's end
    index, its bytes, the largest frame's bytes)."""
    cdef Py_ssize_t n = caplen.shape[0], i, k = 0, first = 0
    cdef int64_t slot, run = 0, biggest = 0
    ends_arr = np.empty(max(n, 1), np.int64)
    bytes_arr = np.empty(max(n, 1), np.int64)
    cdef int64_t[::1] ends = ends_arr
    cdef int64_t[::1] nbytes = bytes_arr
    with nogil:
        for i in range(n):
            slot = (caplen[i] + 15) & ~15
            if slot > biggest:
                biggest = slot
            if i > first and run + slot > limit:
                ends[k] = i
                nbytes[k] = run
                k += 1
                run = 0
                first = i
            run += slot
        if n:
            ends[k] = n
            nbytes[k] = run
            k += 1
    return ends_arr[:k], bytes_arr[:k], biggest


def pack_frames(uint8_t[::1] pool, Py_ssize_t at, const uint8_t[::1] data, const int64_t[::1] start,
                const int64_t[::1] caplen, uint32_t[::1] offset) -> int:
    """Copy every frame data[start[i]:start[i] + caplen[i]] into the pool from `at` on, each in a slot of
    caplen rounded up to 16 bytes (non-temporal stores: the pool is read back rarely), without the GIL;
    offset[i] is where frame i starts, from `at`. Returns the bytes taken. `at` must be 16-byte aligned
    in memory; every frame and the whole run are checked to lie inside their buffers first."""
    cdef Py_ssize_t n = start.shape[0], i, size = data.shape[0]
    cdef int64_t off = 0, c, s, total = 0
    cdef uint8_t* dst
    cdef const uint8_t* src
    cdef bint bad = False
    if caplen.shape[0] != n or offset.shape[0] != n:
        raise ValueError("pack_frames: columns of different lengths")
    if at < 0 or at > pool.shape[0]:
        raise ValueError("pack_frames: a position outside the pool")
    if pool.shape[0] and (<size_t>&pool[0] + at) & 15:
        raise ValueError("pack_frames: the pool position must be 16-byte aligned")
    with nogil:
        for i in range(n):
            c = caplen[i]
            if c < 0 or start[i] < 0 or start[i] + c > size:
                bad = True
                break
            total += (c + 15) & ~15
    if bad:
        raise ValueError(f"pack_frames: frame {i} lies outside the data")
    if total >= 1 << 32 or at + total > pool.shape[0]:
        raise ValueError("pack_frames: the frames do not fit in the pool")
    if total == 0:
        offset[:] = 0
        return 0
    dst = &pool[at]
    with nogil:
        for i in range(n):
            c = caplen[i]
            s = start[i]
            offset[i] = <uint32_t>off
            if c == 0:
                continue
            src = &data[s]
            if s + ((c + 15) & ~15) <= size:
                _stream_frame(dst + off, src, <size_t>c)
            else:  # the data ends before the frame's last 16-byte unit: the tail byte by byte
                memcpy(dst + off, src, c)
            off += (c + 15) & ~15
        _fence()
    return off


def copy_runs(uint8_t[::1] dst8, const int64_t[::1] dst, const uint8_t[::1] src8, const int64_t[::1] src,
              const int64_t[::1] length) -> None:
    """dst8[dst[i]:dst[i] + length[i]] = src8[src[i]:src[i] + length[i]] for every i (a pcap record's frame,
    a tag's halves). Every run is checked to lie inside both buffers before anything is copied."""
    cdef Py_ssize_t n = dst.shape[0], i
    cdef int64_t nd = dst8.shape[0], ns = src8.shape[0], k
    if src.shape[0] != n or length.shape[0] != n:
        raise ValueError("copy_runs: columns of different lengths")
    for i in range(n):
        k = length[i]
        if k < 0 or dst[i] < 0 or src[i] < 0 or dst[i] + k > nd or src[i] + k > ns:
            raise ValueError(f"copy_runs: run {i} ({src[i]} -> {dst[i]}, {k} bytes) outside the buffers")
    with nogil:
        for i in range(n):
            if length[i] > 0:
                memcpy(&dst8[dst[i]], &src8[src[i]], length[i])


def batch_totals(const int64_t[::1] wire, const uint8_t[::1] malformed, const int64_t[::1] ts,
                 const int32_t[::1] ethertype, const int32_t[::1] vlan, const uint8_t[::1] ip,
                 const int32_t[::1] proto, int64_t[:, ::1] by_proto):
    """A decoded batch's totals in one pass: (bytes, malformed frames, earliest and latest time, the ethertype
    of every frame or -1 when they differ, VLAN-tagged frames, IP frames, their bytes, the IP protocol of every
    IP frame or -1 when they differ). When they differ, by_proto[p] (256 rows, zeroed by the caller) gets the
    packets and bytes of IP protocol p."""
    cdef Py_ssize_t n = wire.shape[0], i
    cdef int64_t nbytes = 0, bad = 0, lo = INT64_MAX, hi = INT64_MIN, tagged = 0, nip = 0, ip_bytes = 0
    cdef int64_t et0 = -1, p0 = -1
    cdef bint one_et = True, one_p = True
    if not (malformed.shape[0] == ts.shape[0] == ethertype.shape[0] == vlan.shape[0] == ip.shape[0]
            == proto.shape[0] == n):
        raise ValueError("batch_totals: columns of different lengths")
    if by_proto.shape[0] != 256 or by_proto.shape[1] != 2:
        raise ValueError("batch_totals: by_proto must be (256, 2)")
    if n:
        et0 = ethertype[0]
    with nogil:
        for i in range(n):
            nbytes += wire[i]
            bad += malformed[i] != 0
            if ts[i] < lo:
                lo = ts[i]
            if ts[i] > hi:
                hi = ts[i]
            one_et &= ethertype[i] == et0
            tagged += vlan[i] >= 0
            if ip[i]:
                nip += 1
                ip_bytes += wire[i]
                if p0 < 0:
                    p0 = proto[i]
                one_p &= proto[i] == p0
        if not one_p:  # a second pass, over the IP frames, only for a batch of several protocols
            for i in range(n):
                if ip[i] and 0 <= proto[i] < 256:
                    by_proto[proto[i], 0] += 1
                    by_proto[proto[i], 1] += wire[i]
    return (nbytes, bad, lo, hi, et0 if one_et else -1, tagged, nip, ip_bytes, p0 if one_p else -1)


def add_traffic(int64_t[:, ::1] packets, int64_t[:, ::1] nbytes, int64_t[::1] first, int64_t[::1] last,
                const int64_t[::1] ids, const int64_t[::1] direction, const int64_t[::1] p,
                const int64_t[::1] b, const int64_t[::1] f, const int64_t[::1] l) -> None:
    """Fold groups into table rows: packets and bytes added per direction, first/last time widened.
    Rows below 0 (over capacity) are skipped; a row may repeat."""
    cdef Py_ssize_t n = ids.shape[0], size = first.shape[0]
    cdef Py_ssize_t i
    cdef int64_t r, d
    if not (direction.shape[0] == p.shape[0] == b.shape[0] == f.shape[0] == l.shape[0] == n):
        raise ValueError("add_traffic: columns of different lengths")
    if packets.shape[0] != size or nbytes.shape[0] != size or last.shape[0] != size:
        raise ValueError("add_traffic: table columns of different lengths")
    if packets.shape[1] != 2 or nbytes.shape[1] != 2:
        raise ValueError("add_traffic: packets and bytes need two directions")
    with nogil:
        for i in range(n):
            if i + AHEAD < n:
                r = ids[i + AHEAD]
                if 0 <= r < size:
                    _prefetch_w(&packets[r, 0])
                    _prefetch_w(&nbytes[r, 0])
                    _prefetch_w(&first[r])
                    _prefetch_w(&last[r])
            r = ids[i]
            if r < 0 or r >= size:
                continue
            d = direction[i] & 1
            packets[r, d] += p[i]
            nbytes[r, d] += b[i]
            if f[i] < first[r]:
                first[r] = f[i]
            if l[i] > last[r]:
                last[r] = l[i]


def add_directed(int64_t[:, ::1] target, const int64_t[::1] ids, const int64_t[::1] direction,
                 const int64_t[::1] values) -> None:
    """target[ids[i], direction[i]] += values[i] (rows out of range skipped; a row may repeat)."""
    cdef Py_ssize_t n = ids.shape[0], size = target.shape[0]
    cdef Py_ssize_t i
    cdef int64_t r
    if direction.shape[0] != n or values.shape[0] != n:
        raise ValueError("add_directed: columns of different lengths")
    if target.shape[1] != 2:
        raise ValueError("add_directed: the target needs two directions")
    with nogil:
        for i in range(n):
            if i + AHEAD < n and 0 <= ids[i + AHEAD] < size:
                _prefetch_w(&target[ids[i + AHEAD], 0])
            r = ids[i]
            if 0 <= r < size:
                target[r, direction[i] & 1] += values[i]


cdef Py_ssize_t _group_slots(Py_ssize_t n) noexcept nogil:
    """Slots of a group-by table for n keys: a power of two, at least twice n (load at most 0.5)."""
    cdef Py_ssize_t size = 16
    while size < 2 * n:
        size *= 2
    return size


cdef inline int64_t _group_of(int32_t* slots, uint64_t mask, const uint8_t* key, Py_ssize_t nbytes,
                              uint8_t* store, int64_t g) noexcept nogil:
    """The group of `key` in a group-by table (linear probing); a key not seen yet gets group `g`, its bytes
    copied to store[g]. The caller tells a new group by the answer being `g`."""
    cdef uint64_t h = _hash(key, nbytes)
    cdef int64_t s
    while True:
        s = slots[h & mask]
        if s < 0:
            slots[h & mask] = <int32_t>g
            memcpy(store + g * nbytes, key, nbytes)
            return g
        if memcmp(key, store + s * nbytes, nbytes) == 0:
            return s
        h += 1


def group_rows(const uint64_t[:, ::1] k, int64_t[::1] inv):
    """Group equal rows of k: inv[i] is row i's group, groups numbered in order of first appearance.
    Returns the first row of each group (int64)."""
    cdef Py_ssize_t n = k.shape[0], nbytes = k.shape[1] * 8, i
    cdef int64_t g = 0, s
    cdef uint64_t mask
    cdef uint8_t* store
    if inv.shape[0] != n:
        raise ValueError("group_rows: inv must have one entry per row")
    first_arr = np.empty(n, np.int64)
    if n == 0:
        return first_arr
    if n >= 0x7FFFFFFF:
        raise ValueError("group_rows: too many rows")
    cdef Py_ssize_t nslots = _group_slots(n)
    mask = <uint64_t>(nslots - 1)
    cdef int64_t[::1] first = first_arr
    store = <uint8_t*>PyMem_RawMalloc(n * nbytes + nslots * sizeof(int32_t))  # keys, then slots (-1: empty)
    if store == NULL:
        raise MemoryError()
    cdef int32_t* slots = <int32_t*>(store + n * nbytes)
    memset(slots, 0xFF, nslots * sizeof(int32_t))
    with nogil:
        for i in range(n):
            if i > 0 and memcmp(&k[i, 0], &k[i - 1, 0], nbytes) == 0:  # packets of a flow come in runs
                inv[i] = inv[i - 1]
                continue
            s = _group_of(slots, mask, <const uint8_t*>&k[i, 0], nbytes, store, g)
            if s == g:
                first[g] = i
                g += 1
            inv[i] = s
    PyMem_RawFree(store)
    return first_arr[:g].copy()


def group_packets(const uint64_t[:, ::1] src, const uint64_t[:, ::1] dst, const int32_t[::1] sport,
                  const int32_t[::1] dport, const int32_t[::1] proto, const int64_t[::1] ts,
                  const int64_t[::1] wire, const uint8_t[::1] flags, int64_t[::1] inv):
    """Group IP packets by (source, destination, protocol, ports, second), groups numbered in order of
    first appearance, and sum each group in the same pass: inv[i] is packet i's group. Returns the first
    packet of each group and per group its packets, bytes, first and last time and OR of TCP flags."""
    cdef Py_ssize_t n = ts.shape[0], i
    cdef int64_t g = 0
    cdef uint64_t mask
    cdef uint64_t key[6]
    cdef int64_t s, t, sec = 0, sec_lo = INT64_MAX
    cdef uint64_t h
    cdef uint64_t* gk
    if not (src.shape[0] == dst.shape[0] == sport.shape[0] == dport.shape[0] == proto.shape[0] == n
            and wire.shape[0] == flags.shape[0] == inv.shape[0] == n):
        raise ValueError("group_packets: columns of different lengths")
    if src.shape[1] != 2 or dst.shape[1] != 2:
        raise ValueError("group_packets: addresses must be two words")
    if n >= 0x7FFFFFFF:
        raise ValueError("group_packets: too many packets")
    cdef Py_ssize_t nslots = _group_slots(n)
    mask = <uint64_t>(nslots - 1)
    first_arr = np.empty(n, np.int64)
    packets_arr = np.zeros(n, np.int64)
    bytes_arr = np.zeros(n, np.int64)
    tfirst_arr = np.empty(n, np.int64)
    tlast_arr = np.empty(n, np.int64)
    gflags_arr = np.zeros(n, np.uint8)
    cdef int64_t[::1] first = first_arr
    cdef int64_t[::1] packets = packets_arr
    cdef int64_t[::1] nbytes = bytes_arr
    cdef int64_t[::1] tfirst = tfirst_arr
    cdef int64_t[::1] tlast = tlast_arr
    cdef uint8_t[::1] gflags = gflags_arr
    # Scratch from the C heap: the group keys, then the slots (int32, -1: empty; fewer cache lines).
    gk = <uint64_t*>PyMem_RawMalloc(max(n, 1) * 6 * sizeof(uint64_t) + nslots * sizeof(int32_t))
    if gk == NULL:
        raise MemoryError()
    cdef int32_t* slots = <int32_t*>(gk + max(n, 1) * 6)
    memset(slots, 0xFF, nslots * sizeof(int32_t))
    with nogil:
        for i in range(n):
            t = ts[i]
            key[0] = src[i, 0]
            key[1] = src[i, 1]
            key[2] = dst[i, 0]
            key[3] = dst[i, 1]
            key[4] = <uint64_t>proto[i] | (<uint64_t>sport[i] << 8) | (<uint64_t>dport[i] << 24)
            if t < sec_lo or t >= sec_lo + 1000000000:  # a new second: one division per second, not per packet
                sec = t // 1000000000 if t >= 0 else -((-t - 1) // 1000000000) - 1  # floor
                sec_lo = sec * 1000000000
            key[5] = <uint64_t>sec
            if i > 0 and _same6(key, &gk[inv[i - 1] * 6]):  # packets of a flow come in runs
                s = inv[i - 1]
            else:
                h = _hash6(key)
                while True:
                    s = slots[h & mask]
                    if s < 0:
                        s = g
                        slots[h & mask] = <int32_t>g
                        memcpy(&gk[g * 6], key, 48)
                        break
                    if _same6(key, &gk[s * 6]):
                        break
                    h += 1
                if s == g:
                    first[s] = i
                    tfirst[s] = t
                    tlast[s] = t
                    g += 1
            inv[i] = s
            packets[s] += 1
            nbytes[s] += wire[i]
            if t < tfirst[s]:
                tfirst[s] = t
            if t > tlast[s]:
                tlast[s] = t
            gflags[s] |= flags[i]
    PyMem_RawFree(gk)
    return (first_arr[:g].copy(), packets_arr[:g].copy(), bytes_arr[:g].copy(), tfirst_arr[:g].copy(),
            tlast_arr[:g].copy(), gflags_arr[:g].copy())


cdef inline void _put_be64(uint8_t* p, uint64_t w) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(w >> (56 - 8 * i))


cdef inline void _put_addr(uint8_t* p, const uint64_t* words) noexcept nogil:
    _put_be64(p, words[0])
    _put_be64(p + 8, words[1])


cdef inline void _put_be16(uint8_t* p, int32_t v) noexcept nogil:
    p[0] = <uint8_t>((v >> 8) & 0xFF)
    p[1] = <uint8_t>(v & 0xFF)


def group_keys(const int64_t[::1] rep, const uint64_t[:, ::1] src, const uint64_t[:, ::1] dst,
               const int32_t[::1] sport, const int32_t[::1] dport, const int32_t[::1] proto,
               const uint8_t[::1] known, const uint8_t[::1] has_ports, const int64_t[::1] at,
               uint8_t[:, ::1] flow, uint8_t[:, ::1] pair, uint8_t[:, ::1] host, uint8_t[:, ::1] port,
               int64_t[::1] direction, int64_t[::1] port_dir) -> None:
    """The keys of each group (its first packet: block row rep[j]) in every table, in one pass.

    flow[j]: the flow's ends in canonical order, the smaller (address, port) first as `a`, and
    direction[j] 1 when b sent the group; pair[j] the two addresses in that order; host[j] the
    sender and host[g + j] the receiver; port[j] the service port (the known one of the two, else
    the lower) and port_dir[j] 0 towards it, -1 when the group has no ports (a later fragment, a
    header cut short, a protocol without ports). `at`: byte offsets of the key fields, from the
    contract's dtypes: flow a, b, aport, bport, proto; pair a, b; port proto, port."""
    cdef Py_ssize_t g = rep.shape[0], j, fw = flow.shape[1], pw = pair.shape[1], tw = port.shape[1]
    cdef int64_t r
    cdef bint swap, ka, kb
    cdef int32_t ap, bp, svc, pr
    cdef const uint64_t* a
    cdef const uint64_t* b
    if (flow.shape[0] < g or pair.shape[0] < g or host.shape[0] < 2 * g or port.shape[0] < g
            or direction.shape[0] < g or port_dir.shape[0] < g or host.shape[1] != 16 or at.shape[0] != 9):
        raise ValueError("group_keys: outputs too short, or the field offsets are not 9")
    if known.shape[0] != 65536 or has_ports.shape[0] != 256 or src.shape[1] != 2 or dst.shape[1] != 2:
        raise ValueError("group_keys: known must cover 65536 ports, has_ports 256 protocols")
    if (min(at[0], at[1], at[2], at[3], at[4], at[5], at[6], at[7], at[8]) < 0
            or max(at[0] + 16, at[1] + 16, at[2] + 2, at[3] + 2, at[4] + 1) > fw
            or max(at[5] + 16, at[6] + 16) > pw or max(at[7] + 1, at[8] + 2) > tw):
        raise ValueError("group_keys: a field offset outside its key")
    for j in range(g):
        if rep[j] < 0 or rep[j] >= src.shape[0] or rep[j] >= dst.shape[0] or rep[j] >= sport.shape[0] \
                or rep[j] >= dport.shape[0] or rep[j] >= proto.shape[0]:
            raise IndexError("group_keys: a group's row is outside the block")
    with nogil:
        for j in range(g):
            r = rep[j]
            swap = (src[r, 0] > dst[r, 0]) or (src[r, 0] == dst[r, 0] and (
                src[r, 1] > dst[r, 1] or (src[r, 1] == dst[r, 1] and sport[r] > dport[r])))
            if swap:
                a, b, ap, bp = &dst[r, 0], &src[r, 0], dport[r], sport[r]
            else:
                a, b, ap, bp = &src[r, 0], &dst[r, 0], sport[r], dport[r]
            pr = proto[r] & 0xFF
            direction[j] = swap
            memset(&flow[j, 0], 0, fw)
            _put_addr(&flow[j, at[0]], a)
            _put_addr(&flow[j, at[1]], b)
            _put_be16(&flow[j, at[2]], ap)
            _put_be16(&flow[j, at[3]], bp)
            flow[j, at[4]] = <uint8_t>pr
            memset(&pair[j, 0], 0, pw)
            _put_addr(&pair[j, at[5]], a)
            _put_addr(&pair[j, at[6]], b)
            _put_addr(&host[j, 0], &src[r, 0])
            _put_addr(&host[g + j, 0], &dst[r, 0])
            memset(&port[j, 0], 0, tw)
            if not has_ports[pr] or (ap == 0 and bp == 0):
                port_dir[j] = -1
                continue
            ka, kb = known[ap & 0xFFFF], known[bp & 0xFFFF]
            svc = ap if ka and not kb else bp if kb and not ka else min(ap, bp)
            port[j, at[7]] = <uint8_t>pr
            _put_be16(&port[j, at[8]], svc)
            port_dir[j] = 1 - ((bp == svc) if not swap else (ap == svc))


def match_keys(const uint8_t[:, ::1] keys, const uint8_t[:, ::1] before, const int64_t[::1] cand,
               int64_t[::1] out) -> None:
    """out[i]: the row of `before` whose key equals keys[i], else -1 (keys unique within each table).
    cand[i] is tried first (the row that had keys[i]'s slot, -1: none); the keys it does not explain are
    looked up in a hash table of the rows of `before` no candidate matched."""
    cdef Py_ssize_t n = keys.shape[0], m = before.shape[0], w = keys.shape[1], i, rest = 0, nslots
    cdef int64_t c, s
    cdef uint64_t h, mask
    if cand.shape[0] != n or out.shape[0] != n or (m and before.shape[1] != w):
        raise ValueError("match_keys: keys, cand and out must be as long, both key arrays as wide")
    if n >= 0x7FFFFFFF or m >= 0x7FFFFFFF:
        raise ValueError("match_keys: too many rows")
    if n == 0:
        return
    if m == 0 or w == 0:
        out[:] = -1
        return
    cdef uint8_t* taken = <uint8_t*>PyMem_RawCalloc(m, 1)
    if taken == NULL:
        raise MemoryError()
    cdef int32_t* slots = NULL
    with nogil:
        for i in range(n):
            c = cand[i]
            if 0 <= c < m and not taken[c] and memcmp(&keys[i, 0], &before[c, 0], w) == 0:
                out[i] = c
                taken[c] = 1
            else:
                out[i] = -1
                rest += 1
    if rest:
        nslots = _group_slots(m)
        slots = <int32_t*>PyMem_RawMalloc(nslots * sizeof(int32_t))
        if slots == NULL:
            PyMem_RawFree(taken)
            raise MemoryError()
        mask = <uint64_t>(nslots - 1)
        with nogil:
            memset(slots, 0xFF, nslots * sizeof(int32_t))
            for i in range(m):
                if not taken[i]:
                    h = _hash(&before[i, 0], w)
                    while slots[h & mask] >= 0:
                        h += 1
                    slots[h & mask] = <int32_t>i
            for i in range(n):
                if out[i] >= 0:
                    continue
                h = _hash(&keys[i, 0], w)
                while True:
                    s = slots[h & mask]
                    if s < 0:
                        break
                    if memcmp(&keys[i, 0], &before[s, 0], w) == 0:
                        out[i] = s
                        break
                    h += 1
        PyMem_RawFree(slots)
    PyMem_RawFree(taken)


def window_sums(const uint64_t[:, :, ::1] hist, const int64_t[::1] slot_sec, const int64_t[::1] hist_from,
                const int64_t[::1] rows, int64_t now_sec, const int64_t[::1] windows, double[:, :, ::1] out) -> None:
    """Per row of `rows`, the mean bytes a second per direction over each window of the last completed
    seconds (out[w, j]: the `windows[w]` seconds before now_sec, windows ascending). hist: per-second
    buckets (bucket, row, direction), slot_sec: the second each bucket holds; a row's bucket counts only
    from its hist_from second on (an evicted row's new owner does not inherit its history)."""
    cdef Py_ssize_t nb = hist.shape[0], m = rows.shape[0], nw = windows.shape[0], j, w = 0
    cdef int64_t a, k, sec, r, last = windows[nw - 1] if nw else 0
    if slot_sec.shape[0] != nb or out.shape[0] != nw or out.shape[1] != m or out.shape[2] != 2 or hist.shape[2] != 2:
        raise ValueError("window_sums: shapes do not agree")
    for j in range(m):
        if rows[j] < 0 or rows[j] >= hist.shape[1] or rows[j] >= hist_from.shape[0]:
            raise IndexError("window_sums: a row outside the history")
    if m == 0 or nw == 0:
        return
    if last > nb or windows[0] < 1:
        raise ValueError("window_sums: windows must lie within the buckets kept")
    cdef uint64_t* total = <uint64_t*>PyMem_RawCalloc(m * 2, sizeof(uint64_t))
    if total == NULL:
        raise MemoryError()
    with nogil:
        for a in range(1, last + 1):
            sec = now_sec - a
            k = ((sec % nb) + nb) % nb
            if slot_sec[k] == sec:
                for j in range(m):
                    r = rows[j]
                    if hist_from[r] <= sec:
                        total[2 * j] += hist[k, r, 0]
                        total[2 * j + 1] += hist[k, r, 1]
            while w < nw and windows[w] == a:
                for j in range(m):
                    out[w, j, 0] = <double>total[2 * j] / <double>a
                    out[w, j, 1] = <double>total[2 * j + 1] / <double>a
                w += 1
    PyMem_RawFree(total)


# -- pcap file walk --------------------------------------------------------------------------------

cdef inline uint64_t _u32_order(const uint8_t* q, bint big_endian) noexcept nogil:
    if big_endian:
        return (<uint64_t>q[0] << 24) | (<uint64_t>q[1] << 16) | (<uint64_t>q[2] << 8) | q[3]
    return (<uint64_t>q[3] << 24) | (<uint64_t>q[2] << 16) | (<uint64_t>q[1] << 8) | q[0]


def walk_pcap(const uint8_t[::1] buf, Py_ssize_t end, bint big_endian, int64_t max_incl, int64_t frac_ns,
              int64_t[::1] out, int64_t[::1] caplen, int64_t[::1] wirelen, int64_t[::1] ts_ns):
    """The whole classic-pcap records in buf[:end] (each a 16-byte header, then incl_len bytes), in order:
    each one's offset into `out`, its incl_len, orig_len and time (ts_sec * 1e9 + ts_frac * frac_ns) into the
    others. The walk stops at the first record that does not fit or claims more than max_incl bytes.
    Returns (records, where the walk stopped)."""
    cdef Py_ssize_t p = 0, n = 0, cap = out.shape[0]
    cdef uint64_t incl
    cdef const uint8_t* q
    if end > buf.shape[0]:
        raise ValueError("walk_pcap: end beyond the buffer")
    if caplen.shape[0] < cap or wirelen.shape[0] < cap or ts_ns.shape[0] < cap:
        raise ValueError("walk_pcap: an output shorter than `out`")
    with nogil:
        while p + 16 <= end and n < cap:
            q = &buf[p]
            incl = _u32_order(q + 8, big_endian)
            if <int64_t>incl > max_incl or p + 16 + <Py_ssize_t>incl > end:
                break
            out[n] = p
            caplen[n] = <int64_t>incl
            wirelen[n] = <int64_t>_u32_order(q + 12, big_endian)
            ts_ns[n] = (<int64_t>_u32_order(q, big_endian) * 1000000000
                        + <int64_t>_u32_order(q + 4, big_endian) * frac_ns)
            n += 1
            p += 16 + <Py_ssize_t>incl
    return n, p


# -- Application latency ---------------------------------------------------------------------------
# analysis/latency.py's per-packet loops; the constants mirror it and contract.KIND_*.

cdef int LAT_UDP = 17
cdef int LAT_TCP = 6
cdef int LAT_DNS_PORT = 53
cdef int LAT_MYSQL_PORT = 3306
cdef int64_t LAT_KIND_DNS = 1
cdef int64_t LAT_KIND_HTTP = 2
cdef int64_t LAT_KIND_MYSQL = 3
cdef int64_t LAT_DNS_RETRANSMIT_NS = 5 * 1000000000
cdef uint64_t LAT_HTTP_RESPONSE = 0x48545450  # b"HTTP"


cdef inline uint64_t _l7_head(const uint8_t* buf, Py_ssize_t size, int64_t start, int64_t cap,
                              int64_t skip) noexcept nogil:
    """Payload bytes skip..skip+3 big-endian, 0 past what was captured or past the buffer."""
    cdef uint64_t w = 0
    cdef int64_t i, p
    if skip + 4 <= cap and start + skip >= 0 and start + skip + 4 <= size:  # the usual case: one load
        return _be32(buf + start + skip)
    for i in range(4):
        w <<= 8
        p = start + skip + i
        if skip + i < cap and 0 <= p < size:
            w |= buf[p]
    return w


cdef inline uint64_t _head_at(const uint8_t* buf, Py_ssize_t size, int64_t start, int64_t cap, int64_t skip,
                              const uint64_t* head8) noexcept nogil:
    """Payload bytes skip..skip+3 big-endian: from the decoded first 8 bytes when given, else the buffer."""
    if head8 != NULL:
        return (head8[0] >> (32 - 8 * skip)) & 0xFFFFFFFFULL
    return _l7_head(buf, size, start, cap, skip)


cdef inline int _classify(const uint8_t* b, Py_ssize_t size, int64_t start, int64_t cap, int32_t proto,
                          int32_t sport, int32_t dport, const uint64_t* heads, Py_ssize_t nh,
                          bint* is_req, int64_t* dns_id, const uint64_t* head8) noexcept nogil:
    """The kind of exchange a packet is a request or response of (0: neither), is_req and the DNS id.
    head8: the payload's first 8 bytes (decode_frames' l7_head), or NULL to read them from the buffer."""
    cdef int64_t skip
    cdef uint64_t head, word
    cdef bint qr, to_server
    cdef Py_ssize_t h
    if proto != LAT_UDP and proto != LAT_TCP:
        return 0
    if sport == LAT_DNS_PORT or dport == LAT_DNS_PORT:
        skip = 0 if proto == LAT_UDP else 2  # DNS over TCP: after a 2-byte length
        if cap < skip + 12:
            return 0
        head = _head_at(b, size, start, cap, skip, head8)
        qr = (head & 0x8000) != 0
        if not qr and dport == LAT_DNS_PORT:
            is_req[0] = True
        elif qr and sport == LAT_DNS_PORT:
            is_req[0] = False
        else:
            return 0
        dns_id[0] = <int64_t>(head >> 16)
        return <int>LAT_KIND_DNS
    if proto != LAT_TCP or cap < 4:
        return 0
    dns_id[0] = 0
    if sport == LAT_MYSQL_PORT or dport == LAT_MYSQL_PORT:
        if cap < 5:
            return 0
        # 3-byte length, sequence id, command: a query is sequence 0 + COM_QUERY (3), the response's first
        # packet sequence 1.
        word = _head_at(b, size, start, cap, 2, head8)
        to_server = dport == LAT_MYSQL_PORT
        is_req[0] = to_server and ((word >> 16) & 0xFF) == 0 and ((word >> 8) & 0xFF) == 3
        if is_req[0] or (not to_server and ((word >> 16) & 0xFF) == 1):
            return <int>LAT_KIND_MYSQL
        return 0
    head = _head_at(b, size, start, cap, 0, head8)
    is_req[0] = False
    for h in range(nh):
        if head == heads[h]:
            is_req[0] = True
    if is_req[0] or head == LAT_HTTP_RESPONSE:
        return <int>LAT_KIND_HTTP
    return 0


cdef inline uint64_t _mix64(uint64_t x) noexcept nogil:
    x ^= x >> 33
    x *= 0xFF51AFD7ED558CCDULL
    x ^= x >> 33
    x *= 0xC4CEB9FE1A85EC53ULL
    x ^= x >> 33
    return x


cdef class PendingRequests:
    """Unanswered requests, at most one per key (flow row << 24 | kind << 16 | DNS id): the request's
    time and first `width` bytes, found through an open-addressing index (linear probing,
    backward-shift deletion, load factor at most 0.5). Entries grow on demand; the caller bounds
    them (analysis.latency). Only the capture thread uses it."""

    cdef uint64_t* slots  # key hash's high 32 bits << 32 | entry + 1 (0: empty)
    cdef uint64_t mask
    cdef uint64_t* ekey
    cdef int64_t* ets
    cdef int64_t* estamp  # the match() call that last touched the entry; -1: free
    cdef uint8_t* etext
    cdef int64_t* free_stack
    cdef Py_ssize_t nfree
    cdef Py_ssize_t entries
    cdef readonly Py_ssize_t width
    cdef readonly Py_ssize_t count
    cdef readonly int64_t stamp

    def __cinit__(self, Py_ssize_t width):
        self.width = width
        self.slots = NULL
        self.ekey = NULL
        self.ets = NULL
        self.estamp = NULL
        self.etext = NULL
        self.free_stack = NULL
        self.entries = self.nfree = self.count = 0
        self.stamp = 0
        self._grow(64)

    def __dealloc__(self):
        PyMem_RawFree(self.slots)
        PyMem_RawFree(self.ekey)
        PyMem_RawFree(self.ets)
        PyMem_RawFree(self.estamp)
        PyMem_RawFree(self.etext)
        PyMem_RawFree(self.free_stack)

    cdef int _grow(self, Py_ssize_t want) except -1:
        """At least `want` entries (a quarter more when growing, in whole KiB of entries), the new ones free
        (pushed so that the lowest is used first)."""
        cdef Py_ssize_t size = max(self.entries, 64), i
        cdef uint64_t nslots
        cdef uint64_t* new
        if want <= size:
            if self.entries:
                return 0
        else:
            size = max(want, size + size // 4)
            size = (size + 1023) // 1024 * 1024
        cdef void* p
        p = PyMem_RawRealloc(self.ekey, size * sizeof(uint64_t))
        if p == NULL:
            raise MemoryError()
        self.ekey = <uint64_t*>p
        p = PyMem_RawRealloc(self.ets, size * sizeof(int64_t))
        if p == NULL:
            raise MemoryError()
        self.ets = <int64_t*>p
        p = PyMem_RawRealloc(self.estamp, size * sizeof(int64_t))
        if p == NULL:
            raise MemoryError()
        self.estamp = <int64_t*>p
        p = PyMem_RawRealloc(self.etext, size * self.width + 1)
        if p == NULL:
            raise MemoryError()
        self.etext = <uint8_t*>p
        p = PyMem_RawRealloc(self.free_stack, size * sizeof(int64_t))
        if p == NULL:
            raise MemoryError()
        self.free_stack = <int64_t*>p
        for i in range(size - 1, self.entries - 1, -1):
            self.estamp[i] = -1
            self.free_stack[self.nfree] = i
            self.nfree += 1
        self.entries = size
        nslots = 16
        while nslots < <uint64_t>(2 * size):
            nslots <<= 1
        if self.slots == NULL or nslots > self.mask + 1:
            new = _slots_grown(self.slots, self.mask, nslots)
            if new == NULL:
                raise MemoryError()
            self.slots = new
            self.mask = nslots - 1
        return 0

    cdef inline int64_t _find(self, uint64_t key, uint64_t h) noexcept nogil:
        cdef uint64_t i = (h >> 32) & self.mask
        cdef uint64_t s
        cdef int64_t e
        while True:
            s = self.slots[i]
            if s == EMPTY:
                return -1
            if (s >> 32) == (h >> 32):
                e = <int64_t>(s & LOW32) - 1
                if self.ekey[e] == key:
                    return e
            i = (i + 1) & self.mask

    cdef inline int64_t _add(self, uint64_t key, uint64_t h) noexcept nogil:
        """A free entry for `key` (not in the index), placed in the index."""
        cdef uint64_t i = (h >> 32) & self.mask
        self.nfree -= 1
        cdef int64_t e = self.free_stack[self.nfree]
        while self.slots[i] != EMPTY:
            i = (i + 1) & self.mask
        self.slots[i] = (h & ~LOW32) | <uint64_t>(e + 1)
        self.ekey[e] = key
        self.count += 1
        return e

    cdef void _delete(self, int64_t e) noexcept nogil:
        cdef uint64_t h = _mix64(self.ekey[e])
        cdef uint64_t want = (h & ~LOW32) | <uint64_t>(e + 1)
        cdef uint64_t i = (h >> 32) & self.mask
        while self.slots[i] != want:
            i = (i + 1) & self.mask
        _vacate(self.slots, self.mask, i)
        self.estamp[e] = -1
        self.free_stack[self.nfree] = e
        self.nfree += 1
        self.count -= 1

    cdef bint _event(self, uint64_t kk, bint is_req, int64_t t, const uint8_t* src, int64_t take, int64_t stamp,
                     int64_t* asked_t, uint8_t* asked_text) noexcept nogil:
        """One request or response of key kk at time t (a request's first `take` bytes at src, the rest of
        its text zero); True when it is a response that answered: its request's time and text go out."""
        cdef uint64_t h = _mix64(kk)
        cdef int64_t e = self._find(kk, h)
        cdef Py_ssize_t w = self.width
        if is_req:
            if e >= 0:
                self.estamp[e] = stamp
                if <int64_t>((kk >> 16) & 0xFF) == LAT_KIND_DNS and t - self.ets[e] < LAT_DNS_RETRANSMIT_NS:
                    return False
            else:
                e = self._add(kk, h)
            self.ets[e] = t
            self.estamp[e] = stamp
            take = max(0, min(take, <int64_t>w))
            if take:
                memcpy(self.etext + e * w, src, take)
            if take < w:
                memset(self.etext + e * w + take, 0, w - take)
            return False
        if e < 0:
            return False
        asked_t[0] = self.ets[e]
        memcpy(asked_text, self.etext + e * w, w)
        self._delete(e)
        return True

    def match(self, const uint64_t[::1] key, const uint8_t[::1] request, const int64_t[::1] ts,
              const uint8_t[:, ::1] text, int64_t[::1] answered, int64_t[::1] asked_ts,
              uint8_t[:, ::1] asked_text) -> int:
        """Match one batch's events, in arrival order (`text`: a row per request, in order).

        A response answers its key's pending request (none: unsolicited) and takes it out; a request
        stands for its key, replacing the pending one (tshark's http.time times a response from the
        newest request) except for DNS, where a query less than DNS_RETRANSMIT_NS after the
        standing one is a repeat (dns.time counts from the first query). Answered responses go to
        answered[:m], their request's time and text to asked_ts and asked_text; returns m. Every
        entry touched is stamped with this call (touched())."""
        cdef Py_ssize_t n = key.shape[0], i, r = 0, m = 0, w = self.width, nreq = 0
        if request.shape[0] != n or ts.shape[0] != n or answered.shape[0] < n or asked_ts.shape[0] < n:
            raise ValueError("key, request and ts must be as long; the outputs at least as long")
        if text.shape[1] != w or asked_text.shape[1] != w or asked_text.shape[0] < n:
            raise ValueError("text rows must be `width` bytes")
        for i in range(n):
            nreq += request[i] != 0
        if text.shape[0] < nreq:
            raise ValueError("text needs a row per request")
        if self.nfree < nreq:
            self._grow(self.count + nreq)
        self.stamp += 1
        cdef int64_t stamp = self.stamp
        with nogil:
            for i in range(n):
                if request[i]:
                    r += 1
                    self._event(key[i], True, ts[i], &text[r - 1, 0], w, stamp, NULL, NULL)
                elif self._event(key[i], False, ts[i], NULL, 0, stamp, &asked_ts[m], &asked_text[m, 0]):
                    answered[m] = i
                    m += 1
        return m

    def add_batch(self, const uint8_t[::1] buf, const int64_t[::1] l7_start, const int64_t[::1] l7_cap,
                  const uint64_t[::1] l7_head, const int32_t[::1] proto, const int32_t[::1] sport,
                  const int32_t[::1] dport,
                  const uint64_t[::1] http_heads, const int64_t[::1] flow, const int64_t[::1] ts,
                  Py_ssize_t lo, Py_ssize_t hi, int64_t[::1] answered, int64_t[::1] kind, uint64_t[::1] key,
                  int64_t[::1] asked_ts, uint8_t[:, ::1] asked_text):
        """Classify packets lo..hi of a batch and match their requests and responses, in one pass (match()
        on the events of flow rows >= 0, the request text read straight from the packet). Answered
        responses go to answered[:m] (their row), with their kind, key, and their request's time and text.
        Returns (m, events, newest event time). Without `flow` (None) nothing is matched: (0, 1, 0) when a
        packet of lo..hi is a request or response (call again with the flows), else (0, 0, 0) (most
        batches: no flow rows needed). l7_head (decode_frames' column, or None: read from the buffer) gives each
        payload's first bytes."""
        cdef Py_ssize_t n = l7_cap.shape[0], size = buf.shape[0], nh = http_heads.shape[0], w = self.width
        cdef Py_ssize_t i, m = 0, events = 0
        cdef const uint8_t* b = &buf[0] if size else NULL
        cdef const uint64_t* heads = &http_heads[0] if nh else NULL
        cdef int k
        cdef bint is_req = False
        cdef int64_t qid = 0, f, newest = INT64_MIN, stamp, p, take
        cdef uint64_t kk
        if not (l7_start.shape[0] == proto.shape[0] == sport.shape[0] == dport.shape[0] == ts.shape[0] == n) \
                or lo < 0 or hi > n or lo > hi or (l7_head is not None and l7_head.shape[0] != n):
            raise ValueError("add_batch: columns of different lengths, or lo..hi outside them")
        cdef const uint64_t* h8 = &l7_head[0] if l7_head is not None and n else NULL
        if flow is None:
            with nogil:
                for i in range(lo, hi):
                    if _classify(b, size, l7_start[i], l7_cap[i], proto[i], sport[i], dport[i], heads, nh,
                                 &is_req, &qid, h8 + i if h8 != NULL else NULL):
                        events = 1
                        break
            return 0, events, 0
        if flow.shape[0] != n:
            raise ValueError("add_batch: a flow row per packet")
        if min(answered.shape[0], kind.shape[0], key.shape[0], asked_ts.shape[0], asked_text.shape[0]) < hi - lo \
                or asked_text.shape[1] != w:
            raise ValueError("add_batch: outputs too short")
        if self.nfree < hi - lo:
            self._grow(self.count + hi - lo)
        self.stamp += 1
        stamp = self.stamp
        with nogil:
            for i in range(lo, hi):
                k = _classify(b, size, l7_start[i], l7_cap[i], proto[i], sport[i], dport[i], heads, nh, &is_req, &qid,
                              h8 + i if h8 != NULL else NULL)
                if not k:
                    continue
                f = flow[i]
                if f < 0:  # a flow over the table's capacity: nothing to time it by
                    continue
                events += 1
                if ts[i] > newest:
                    newest = ts[i]
                kk = (<uint64_t>f << 24) | (<uint64_t>k << 16) | <uint64_t>qid
                if is_req:
                    # The request's first bytes past its framing (MySQL header, DNS-over-TCP length).
                    p = 5 if k == LAT_KIND_MYSQL else 2 if k == LAT_KIND_DNS and proto[i] == LAT_TCP else 0
                    take = min(<int64_t>w, l7_cap[i] - p)
                    p += l7_start[i]
                    take = min(take, <int64_t>size - p)
                    if p < 0 or take < 0:
                        take = 0
                    self._event(kk, True, ts[i], b + p if take else NULL, take, stamp, NULL, NULL)
                elif self._event(kk, False, ts[i], NULL, 0, stamp, &asked_ts[m], &asked_text[m, 0]):
                    answered[m] = i
                    kind[m] = k
                    key[m] = kk
                    m += 1
        return m, events, newest

    def live(self):
        """The pending requests: (entry, key, time, touched by the last match()) arrays, by entry."""
        cdef Py_ssize_t e, j = 0
        out = np.empty(self.count, np.int64)
        keys = np.empty(self.count, np.uint64)
        times = np.empty(self.count, np.int64)
        touched = np.empty(self.count, np.bool_)
        cdef int64_t[::1] o = out, t = times
        cdef uint64_t[::1] k = keys
        cdef uint8_t[::1] u = touched.view(np.uint8)
        for e in range(self.entries):
            if self.estamp[e] >= 0:
                o[j], k[j], t[j], u[j] = e, self.ekey[e], self.ets[e], self.estamp[e] == self.stamp
                j += 1
        return out, keys, times, touched

    def text(self, const int64_t[::1] entries):
        """The kept bytes of entries, (len(entries), width) uint8."""
        out = np.empty((entries.shape[0], self.width), np.uint8)
        cdef uint8_t[:, ::1] o = out
        cdef Py_ssize_t j
        for j in range(entries.shape[0]):
            if entries[j] < 0 or entries[j] >= self.entries or self.estamp[entries[j]] < 0:
                raise KeyError(f"entry {entries[j]} is not pending")
            memcpy(&o[j, 0], self.etext + entries[j] * self.width, self.width)
        return out

    def drop(self, const int64_t[::1] entries) -> None:
        """Take pending entries out."""
        cdef Py_ssize_t j
        for j in range(entries.shape[0]):
            if entries[j] < 0 or entries[j] >= self.entries or self.estamp[entries[j]] < 0:
                raise KeyError(f"entry {entries[j]} is not pending")
            self._delete(entries[j])

    def __len__(self) -> int:
        return self.count


def latency_tables(int64_t[::1] count, int64_t[::1] total, int64_t[::1] top, int64_t[::1] first,
                   int64_t[::1] last, const int64_t[::1] ids, const int64_t[::1] lat,
                   const int64_t[::1] ts) -> None:
    """Count each exchange in its table row (ids < 0: none): count, sum, max, first and last time."""
    cdef Py_ssize_t j
    cdef int64_t r
    add_exchanges(count, total, top, ids, lat)
    with nogil:
        for j in range(ids.shape[0]):
            r = ids[j]
            if r < 0:
                continue
            if ts[j] < first[r]:
                first[r] = ts[j]
            if ts[j] > last[r]:
                last[r] = ts[j]


def add_exchanges(int64_t[::1] count, int64_t[::1] total, int64_t[::1] top, const int64_t[::1] ids,
                  const int64_t[::1] lat) -> None:
    """Count each exchange in its row (ids < 0: none): count, sum and max of the latencies."""
    cdef Py_ssize_t j
    cdef int64_t r
    if lat.shape[0] < ids.shape[0]:
        raise ValueError("a latency per id")
    with nogil:
        for j in range(ids.shape[0]):
            r = ids[j]
            if r < 0:
                continue
            count[r] += 1
            total[r] += lat[j]
            if lat[j] > top[r]:
                top[r] = lat[j]


# -- Ring walk ---------------------------------------------------------------------------------------

cdef inline uint32_t _le32(const uint8_t* p) noexcept nogil:
    cdef uint32_t w
    memcpy(&w, p, 4)
    return w


cdef inline uint16_t _le16(const uint8_t* p) noexcept nogil:
    cdef uint16_t w
    memcpy(&w, p, 2)
    return w


def walk_frames(const uint8_t[::1] buf, Py_ssize_t base, Py_ssize_t block_size, Py_ssize_t num_pkts,
                Py_ssize_t first_rel, Py_ssize_t used, Py_ssize_t min_first, Py_ssize_t min_hdr,
                const int64_t[::1] at, uint32_t vlan_valid_bit, Py_ssize_t row, int64_t[::1] hdr,
                int64_t[::1] start, int64_t[::1] caplen, int64_t[::1] wirelen, int64_t[::1] ts,
                uint16_t[::1] tci, uint16_t[::1] tpid, uint8_t[::1] valid, uint8_t[::1] pkttype):
    """Follow tp_next_offset frame by frame through the ring block at byte `base` of `buf` (the block
    descriptor's num_pkts, offset_to_first_pkt and blk_len given), every offset checked against the block's
    bounds before it is read, and read each frame's tpacket3_hdr in the same step (one pass over the headers,
    each still in cache): its offset goes to hdr[row + k], its columns to the other outputs' row + k. `at`
    holds the header's field offsets: tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac, tp_vlan_tci,
    tp_vlan_tpid, sockaddr_ll's sll_pkttype and tp_next_offset, each inside `min_hdr` bytes. A frame never
    reaches past the block's used length, whatever its header claims. Returns (count, first, end, lost) as
    ring.walk_block."""
    cdef Py_ssize_t end = base + min(max(used, 0), block_size)
    cdef Py_ssize_t first = base + first_rel
    cdef Py_ssize_t last_hdr = end - min_hdr
    cdef Py_ssize_t off, step, i, k, count = 0
    cdef Py_ssize_t room = hdr.shape[0] - row
    cdef Py_ssize_t todo = min(num_pkts, room)
    cdef const uint8_t* h
    cdef int64_t s, c
    cdef uint32_t status
    if at.shape[0] != 10:
        raise ValueError("walk_frames: ten field offsets")
    for i in range(10):
        if at[i] < 0 or at[i] + 4 > min_hdr:
            raise ValueError("walk_frames: a field outside the header")
    if min_hdr < 4 or base < 0 or end > buf.shape[0] or row < 0 or room < 0:
        raise ValueError("the block must lie inside the ring")
    if not (start.shape[0] == caplen.shape[0] == wirelen.shape[0] == ts.shape[0] == tci.shape[0]
            == tpid.shape[0] == valid.shape[0] == pkttype.shape[0] == hdr.shape[0]):
        raise ValueError("walk_frames: columns of different lengths")
    if num_pkts <= 0 or first_rel < min_first or first & 3 or first > last_hdr:
        return 0, min(first, end), end, max(num_pkts, 0)
    off = first
    with nogil:
        for i in range(todo):
            k = row + i
            h = &buf[off]
            hdr[k] = off
            s = off + _le16(h + at[5])
            c = _le32(h + at[2])
            if c > end - s:
                c = end - s
            start[k] = s if s < end else end
            caplen[k] = c if c > 0 else 0
            wirelen[k] = _le32(h + at[3])
            ts[k] = <int64_t>_le32(h + at[0]) * 1000000000 + _le32(h + at[1])
            status = _le32(h + at[4])
            tci[k] = <uint16_t>(_le32(h + at[6]) & 0xFFFF)
            tpid[k] = _le16(h + at[7])
            valid[k] = 1 if status & vlan_valid_bit else 0
            pkttype[k] = h[at[8]]
            count = i + 1
            if i == num_pkts - 1:
                break
            step = _le32(h + at[9])
            off += step
            if step < min_hdr or step & 3 or off > last_hdr:
                break
    return count, first, end, num_pkts - count


# -- Decode ------------------------------------------------------------------------------------------

cdef int LT_NULL = 0
cdef int LT_ETHERNET = 1
cdef int LT_RAW = 101
cdef int LT_LOOP = 108
cdef int LT_SLL = 113
cdef int LT_IPV4 = 228
cdef int LT_IPV6 = 229
cdef int LT_SLL2 = 276
cdef uint64_t V4_MAPPED = 0xFFFF00000000ULL

# By protocol / extension header code (0..255): smallest L4 header read, ports, IPv6 extension
# header length = byte 1 * mult + add (0 when the code is not an extension header).
cdef int L4_NEED[256]
cdef bint HAS_PORTS[256]
cdef int EXT_MULT[256]
cdef int EXT_ADD[256]
cdef int NULL_FAMILY[64]


def _init_tables(l4_need, has_ports, ext_mult, ext_add, null_family) -> None:
    """Fill the lookup tables from decode.py's (one definition of each protocol constant)."""
    cdef int i
    for i in range(256):
        L4_NEED[i] = l4_need[i]
        HAS_PORTS[i] = has_ports[i]
        EXT_MULT[i] = ext_mult[i]
        EXT_ADD[i] = ext_add[i]
    for i in range(64):
        NULL_FAMILY[i] = null_family[i]


cdef inline uint64_t _be(const uint8_t* buf, Py_ssize_t size, Py_ssize_t pos, int nbytes) noexcept nogil:
    """`nbytes` (<= 8) big-endian bytes at `pos`; bytes past the buffer read as 0."""
    cdef uint64_t v = 0
    cdef int k
    if pos >= 0 and pos + nbytes <= size:
        if nbytes == 4:  # one load each (the addresses), not a loop of byte loads
            return _be32(buf + pos)
        if nbytes == 8:
            return _be64(buf + pos)
        for k in range(nbytes):
            v = (v << 8) | buf[pos + k]
        return v
    for k in range(nbytes):
        v = v << 8
        if 0 <= pos + k < size:
            v |= buf[pos + k]
    return v


cdef inline int _u16(const uint8_t* p) noexcept nogil:
    return (p[0] << 8) | p[1]


def decode_frames(const uint8_t[::1] buf, const int64_t[::1] start, const int64_t[::1] caplen,
                  const int64_t[::1] wirelen, int linktype,
                  int32_t[::1] ethertype, int32_t[::1] vlan, uint8_t[::1] ip, uint64_t[:, ::1] src,
                  uint64_t[:, ::1] dst, int32_t[::1] proto, int32_t[::1] sport, int32_t[::1] dport,
                  uint8_t[::1] tcp_flags, uint8_t[::1] malformed, int64_t[::1] tcp_seq, int64_t[::1] tcp_ack,
                  int32_t[::1] tcp_window, int32_t[::1] tcp_len, int64_t[::1] l7_start,
                  int64_t[::1] l7_cap, uint64_t[::1] l7_head) -> None:
    """decode.decode()'s columns for every frame, in one pass without the GIL. Every column of every frame
    is written (the outputs may come uninitialised): what a frame does not have is vlan -1, proto -1,
    tcp_window -1, tcp_len -1, l7_start -1, the others 0; l7_head is the payload's first 8 bytes big-endian,
    zero past what was captured (the latency matcher classifies by it without reading the frame again).
    Reads are bounds-checked against each frame's
    caplen; as in the NumPy decoder, the addresses of an IP header cut short are read from the buffer (0
    past its end)."""
    cdef Py_ssize_t n = start.shape[0]
    cdef Py_ssize_t size = buf.shape[0]
    cdef Py_ssize_t i
    cdef int _k
    cdef const uint8_t* b
    cdef const uint8_t* f
    cdef int64_t s, c, l3, l4, off, ip_end, hdr, doff, l7len, end
    cdef int et, ihl, vihl, nh, p, need, family
    cdef bint ok, good, later, whole
    cdef int32_t be32, le32
    if (caplen.shape[0] != n or wirelen.shape[0] != n or ethertype.shape[0] != n or vlan.shape[0] != n
            or ip.shape[0] != n or src.shape[0] != n or dst.shape[0] != n or proto.shape[0] != n
            or sport.shape[0] != n or dport.shape[0] != n or tcp_flags.shape[0] != n or malformed.shape[0] != n
            or tcp_seq.shape[0] != n or tcp_ack.shape[0] != n or tcp_window.shape[0] != n
            or tcp_len.shape[0] != n or l7_start.shape[0] != n or l7_cap.shape[0] != n or l7_head.shape[0] != n
            or src.shape[1] != 2 or dst.shape[1] != 2):
        raise ValueError("every column must have one row per frame")
    if n == 0:
        return
    b = &buf[0] if size else NULL
    with nogil:
        for i in range(n):
            s = start[i]
            c = caplen[i]
            # Reads of the frame are of bytes [s, s + c) only, each checked first against c; a frame
            # that claims to reach past the buffer is cut at its end.
            if s < 0 or c < 0 or s >= size:
                c = 0
            elif c > size - s:
                c = size - s
            f = b + s if c > 0 else b
            ethertype[i] = 0
            vlan[i] = -1
            ip[i] = 0
            src[i, 0] = src[i, 1] = dst[i, 0] = dst[i, 1] = 0
            proto[i] = -1
            sport[i] = dport[i] = 0
            tcp_flags[i] = malformed[i] = 0
            tcp_seq[i] = tcp_ack[i] = 0
            tcp_window[i] = tcp_len[i] = -1
            l7_start[i] = -1
            l7_cap[i] = 0
            l7_head[i] = 0
            # Link layer: ok (header readable), l3 offset, ethertype, outer VLAN id.
            et = 0
            l3 = 0
            ok = False
            if linktype == LT_ETHERNET:
                ok = c >= 14
                l3 = 14
                if ok:
                    et = _u16(f + 12)
                    for _k in range(2):
                        if et != 0x8100 and et != 0x88A8 and et != 0x9100:
                            break
                        if l3 + 4 > c:
                            ok = False
                            break
                        if vlan[i] < 0:
                            vlan[i] = _u16(f + l3) & 0xFFF
                        et = _u16(f + l3 + 2)
                        l3 += 4
            elif linktype == LT_RAW or linktype == LT_IPV4 or linktype == LT_IPV6:
                ok = c >= 1
                if ok:
                    et = 0x0800 if (f[0] >> 4) == 4 else (0x86DD if (f[0] >> 4) == 6 else 0)
            elif linktype == LT_SLL:
                ok = c >= 16
                l3 = 16
                if ok:
                    et = _u16(f + 14)
            elif linktype == LT_SLL2:
                ok = c >= 20
                l3 = 20
                if ok:
                    et = _u16(f)
            elif linktype == LT_NULL or linktype == LT_LOOP:
                ok = c >= 4
                l3 = 4
                if ok:
                    be32 = <int32_t>((<uint32_t>f[0] << 24) | (<uint32_t>f[1] << 16) | (<uint32_t>f[2] << 8) | f[3])
                    le32 = <int32_t>((<uint32_t>f[3] << 24) | (<uint32_t>f[2] << 16) | (<uint32_t>f[1] << 8) | f[0])
                    # LINKTYPE_NULL is in the writer's byte order: a family fits in the low 16 bits of the right one.
                    family = be32 if linktype == LT_LOOP or le32 > 0xFFFF else le32
                    et = NULL_FAMILY[family] if 0 <= family < 64 else 0
            if not ok:
                et = 0
            ethertype[i] = et
            malformed[i] = not ok
            if not ok or (et != 0x0800 and et != 0x86DD):
                continue
            # Network layer.
            ip_end = 0
            if et == 0x0800:
                good = l3 + 20 <= c
                if good:
                    vihl = f[l3]
                    ihl = (vihl & 0xF) * 4
                    good = (vihl >> 4) == 4 and ihl >= 20 and l3 + ihl <= c
                src[i, 1] = (_be(b, size, s + l3 + 12, 4)) | V4_MAPPED
                dst[i, 1] = (_be(b, size, s + l3 + 16, 4)) | V4_MAPPED
                if not good:
                    malformed[i] = 1
                    continue
                later = (_u16(f + l3 + 6) & 0x1FFF) != 0
                p = f[l3 + 9]
                l4 = -1 if later else l3 + ihl
                ip_end = l3 + _u16(f + l3 + 2)
            else:
                good = l3 + 40 <= c
                if good:
                    good = (f[l3] >> 4) == 6
                src[i, 0] = _be(b, size, s + l3 + 8, 8)
                src[i, 1] = _be(b, size, s + l3 + 16, 8)
                dst[i, 0] = _be(b, size, s + l3 + 24, 8)
                dst[i, 1] = _be(b, size, s + l3 + 32, 8)
                if not good:
                    malformed[i] = 1
                    continue
                nh = f[l3 + 6]
                off = l3 + 40
                later = False
                for _k in range(8):
                    if EXT_ADD[nh] == 0:
                        break
                    if off + 8 > c:
                        good = False
                        break
                    if nh == 44 and (_u16(f + off + 2) >> 3) != 0:
                        later = True
                    hdr = f[off + 1] * EXT_MULT[nh] + EXT_ADD[nh]
                    nh = f[off]
                    off += hdr
                if not good:
                    malformed[i] = 1
                    continue
                p = nh
                l4 = -1 if later else off
                ip_end = l3 + 40 + _u16(f + l3 + 4)
            ip[i] = 1
            proto[i] = p
            if l4 < 0:
                continue
            # Transport layer. The IP length never counts bytes the frame did not carry on the wire.
            if ip_end > wirelen[i]:
                ip_end = wirelen[i]
            need = L4_NEED[p]
            whole = l4 + 1 <= c and l4 + need <= c
            if not whole:
                if need > 0:
                    malformed[i] = 1
                continue
            if HAS_PORTS[p]:
                sport[i] = _u16(f + l4)
                dport[i] = _u16(f + l4 + 2)
            l7len = -1
            if p == 6:
                tcp_flags[i] = f[l4 + 13]
                tcp_seq[i] = (<int64_t>_u16(f + l4 + 4) << 16) | _u16(f + l4 + 6)
                tcp_ack[i] = (<int64_t>_u16(f + l4 + 8) << 16) | _u16(f + l4 + 10)
                tcp_window[i] = _u16(f + l4 + 14)
                doff = (f[l4 + 12] >> 4) * 4
                l7len = max(ip_end - l4 - doff, 0)
                tcp_len[i] = <int32_t>l7len
                l7_start[i] = s + l4 + doff
            elif p == 17:
                l7len = max(ip_end - l4 - 8, 0)
                l7_start[i] = s + l4 + 8
            if l7len >= 0:
                end = s + c - l7_start[i]
                l7_cap[i] = 0 if end < 0 else min(end, l7len)
                if l7_cap[i] >= 8:
                    l7_head[i] = _be64(b + l7_start[i])
                elif l7_cap[i] > 0:
                    l7_head[i] = _be(b, size, l7_start[i], <int>l7_cap[i]) << (8 * (8 - l7_cap[i]))


# -- TCP sequence analysis ---------------------------------------------------------------------------

cdef enum:
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_ACK = 0x10

cdef int64_t SEQ_SPAN = 1LL << 32
cdef int64_t SEQ_HALF = 1LL << 31
cdef uint64_t SEQ_MASK = 0xFFFFFFFFULL
cdef int64_t OUT_OF_ORDER_NS = 3000000  # tshark's out-of-order window without a handshake RTT
cdef int64_t FAST_RETRANSMIT_NS = 20000000  # tshark: within 20 ms of the duplicate ACK

# Per direction in one batch: known to the table before it, seen in it.
cdef enum:
    DIR_KNOWN = 1
    DIR_SEEN = 2

# Handshake state of a flow for one batch (held by its first key).
cdef enum:
    HS_MEASURED = 0  # the RTT was known when the batch began: nothing to do
    HS_PENDING = 1
    HS_DONE = 2  # measured by this batch; later SYNs still move tcp_syn


cdef inline int64_t _sub(int64_t a, int64_t b) noexcept nogil:
    """a - b wrapping like NumPy's int64 (no undefined overflow)."""
    return <int64_t>(<uint64_t>a - <uint64_t>b)


def tcp_sequence(const int64_t[::1] keys, const int64_t[::1] rank, const int64_t[::1] ts,
                 const uint8_t[::1] flags, const int64_t[::1] seq, const int64_t[::1] ack,
                 const int32_t[::1] window, const int32_t[::1] length,
                 int64_t[:, ::1] nxt, int64_t[:, ::1] nxt_t, int64_t[:, ::1] lastack, int64_t[:, ::1] last_t,
                 int64_t[:, ::1] win, int64_t[:, ::1] dupacks, uint8_t[:, ::1] ka, int64_t[::1] syn_t,
                 int64_t[::1] irtt, int64_t[::1] retrans, int64_t[::1] ooo, int64_t[::1] dupack,
                 int64_t[::1] zero_win, int64_t[::1] resets) -> None:
    """TCP health of one batch's TCP packets (analysis/tcp.py Sequence): packet i belongs to flow row
    keys[rank[i]] >> 1, direction keys[rank[i]] & 1; packets are taken in batch (capture) order.
    Each direction's state lives in the two-direction columns and is updated packet by packet."""
    cdef Py_ssize_t m = rank.shape[0], nk = keys.shape[0], rows = irtt.shape[0]
    cdef Py_ssize_t i, k
    cdef int64_t fid, d, o, t, s, a, w, ln, rel, x, prior, dn, rev_ack, end, threshold
    cdef uint8_t f
    cdef bint synfin, prior_known, grew, no_sfr, keepalive, probe, behind, spurious, fast, out_of_order
    cdef int64_t* ref
    cdef int64_t* ref_low
    cdef int64_t* run
    cdef int64_t* lead
    cdef uint8_t* state
    cdef uint8_t* hs
    if not (ts.shape[0] == flags.shape[0] == seq.shape[0] == ack.shape[0] == window.shape[0]
            == length.shape[0] == m):
        raise ValueError("tcp_sequence: packet columns of different lengths")
    if not (nxt.shape[0] == nxt_t.shape[0] == lastack.shape[0] == last_t.shape[0] == win.shape[0]
            == dupacks.shape[0] == ka.shape[0] == rows):
        raise ValueError("tcp_sequence: per-direction columns must be (rows, 2)")
    if not (nxt.shape[1] == nxt_t.shape[1] == lastack.shape[1] == last_t.shape[1] == win.shape[1]
            == dupacks.shape[1] == ka.shape[1] == 2):
        raise ValueError("tcp_sequence: per-direction columns must be (rows, 2)")
    if not (syn_t.shape[0] == retrans.shape[0] == ooo.shape[0] == dupack.shape[0] == zero_win.shape[0]
            == resets.shape[0] == rows):
        raise ValueError("tcp_sequence: flow columns of different lengths")
    for k in range(nk):
        if keys[k] < 0 or keys[k] >> 1 >= rows:
            raise ValueError("tcp_sequence: a key outside the flow table")
    for i in range(m):
        if rank[i] < 0 or rank[i] >= nk:
            raise ValueError("tcp_sequence: a rank outside the keys")
    if m == 0:
        return
    ref = <int64_t*>PyMem_RawCalloc(4 * nk, sizeof(int64_t))
    state = <uint8_t*>PyMem_RawCalloc(2 * nk, 1)
    if ref == NULL or state == NULL:
        PyMem_RawFree(ref)
        PyMem_RawFree(state)
        raise MemoryError()
    ref_low, run, lead, hs = ref + nk, ref + 2 * nk, ref + 3 * nk, state + nk
    with nogil:
        # Per direction: the unwrap reference is the table's highest sequence, else the batch's last seq.
        for k in range(nk):
            fid, d = keys[k] >> 1, keys[k] & 1
            ref[k] = nxt[fid, d]
            if ref[k] >= 0:
                state[k] = DIR_KNOWN
                run[k] = SEQ_SPAN
            lead[k] = lead[k - 1] if k > 0 and keys[k - 1] >> 1 == fid else k
            if lead[k] == k:
                hs[k] = HS_PENDING if irtt[fid] == -1 else HS_MEASURED
        # Resets, and the last seq of directions new to the table.
        for i in range(m):
            k = rank[i]
            if not state[k] & DIR_KNOWN:
                ref[k] = seq[i]
            if flags[i] & TCP_RST:
                resets[keys[k] >> 1] += 1
        for k in range(nk):
            ref_low[k] = (<int64_t>(<uint64_t>ref[k] & SEQ_MASK) if state[k] & DIR_KNOWN else ref[k]) - SEQ_HALF
        # tshark's tcp_analyze_sequence_number(), packet by packet. Sequence numbers are unwrapped
        # relative to ref_low (ref[k] is SEQ_SPAN there); run[k] is the highest seq + len so far.
        # Time gaps are compared as tshark's unsigned ones: a frame stamped before the reference is
        # never within a window.
        for i in range(m):
            k = rank[i]
            fid, d = keys[k] >> 1, keys[k] & 1
            o = 1 - d
            f, t, s, a, w, ln = flags[i], ts[i], seq[i], ack[i], window[i], length[i]
            rel = <int64_t>((<uint64_t>s - <uint64_t>ref_low[k]) & SEQ_MASK) + SEQ_HALF
            synfin = (f & (TCP_SYN | TCP_FIN)) != 0
            x = rel + ln + synfin
            prior = run[k]
            prior_known = state[k] != 0
            grew = x > prior or not prior_known
            no_sfr = (f & (TCP_SYN | TCP_FIN | TCP_RST)) == 0
            keepalive = ln <= 1 and prior_known and rel == prior - 1 and no_sfr
            # A zero-window probe (one byte at the highest seq, the other side's last window 0; -1 when
            # unseen) neither counts as a zero window nor moves the highest seq or its time.
            probe = ln == 1 and prior_known and rel == prior and win[fid, o] == 0
            if w == 0 and no_sfr and not probe:
                zero_win[fid] += 1
            # Duplicate ACKs in a row since the ack last changed (tshark's dupacknum).
            dn = dupacks[fid, d] if a == lastack[fid, d] else 0
            if (ln == 0 and w != 0 and w == win[fid, d] and prior_known and rel == prior and a == lastack[fid, d]
                    and no_sfr and not ka[fid, o]):
                dn += 1
                dupack[fid] += 1
            # The other direction's latest segment: its columns, updated by it earlier in this batch.
            rev_ack = lastack[fid, o]
            behind = ((ln > 0 or synfin) and not keepalive and prior_known and rel < prior
                      and not (ln > 1 and rel == prior - 1))
            end = <int64_t>((<uint64_t>s + <uint64_t>ln) & SEQ_MASK)
            spurious = (ln > 0 and not keepalive and rev_ack != 0
                        and <int64_t>((<uint64_t>rev_ack - <uint64_t>end) & SEQ_MASK) < SEQ_HALF)
            fast = (not spurious and behind and dupacks[fid, o] >= 2 and rev_ack == s
                    and <uint64_t>_sub(t, last_t[fid, o]) < <uint64_t>FAST_RETRANSMIT_NS)
            # The handshake RTT as known before this packet (tshark's ts_first_rtt; 0 and -1: none).
            threshold = OUT_OF_ORDER_NS if irtt[fid] == 0 or irtt[fid] == -1 else irtt[fid]
            out_of_order = (not spurious and not fast and behind
                            and <uint64_t>_sub(t, nxt_t[fid, d]) < <uint64_t>threshold and prior != x)
            if spurious or fast or behind and not out_of_order:
                retrans[fid] += 1
            if out_of_order:
                ooo[fid] += 1
            if grew and not probe:
                nxt_t[fid, d] = t
            if x > prior and not probe:
                run[k] = x
            state[k] |= DIR_SEEN
            lastack[fid, d] = a
            last_t[fid, d] = t
            win[fid, d] = w
            dupacks[fid, d] = dn
            ka[fid, d] = keepalive
            # The handshake RTT, after the packet's own analysis: the latest SYN without ACK to the
            # first ACK without SYN, either direction.
            if hs[lead[k]] != HS_MEASURED:
                if f & (TCP_SYN | TCP_ACK) == TCP_SYN:
                    syn_t[fid] = t
                elif f & (TCP_SYN | TCP_ACK) == TCP_ACK and hs[lead[k]] == HS_PENDING and syn_t[fid] > 0:
                    irtt[fid] = _sub(t, syn_t[fid])
                    hs[lead[k]] = HS_DONE
        for k in range(nk):
            if state[k] & DIR_SEEN:
                nxt[keys[k] >> 1, keys[k] & 1] = run[k] + ref[k] - SEQ_SPAN
    PyMem_RawFree(ref)
    PyMem_RawFree(state)
