"""The C allocator's handling of large freed blocks, tuned for a capture run.

Every batch makes megabytes of short-lived column arrays (a flood's 32,768 packets: ≈ 11 MB), and every
snapshot a copy of the tables. glibc's defaults hand blocks from 128 KiB up back to the kernel when freed
(and trim the heap above 2x its adaptive threshold), so the next batch faults the same pages in again,
each one cleared by the kernel: ≈ 2,800 page faults per flood batch, a quarter of its cost. Fixed
thresholds keep freed blocks in the heap for the next batch to reuse.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # <malloc.h>: free memory kept at the top of the heap
M_MMAP_THRESHOLD = -3  # blocks from this size up get a mapping of their own, unmapped when freed
TRIM_THRESHOLD = 128 << 20
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its adaptive threshold


def reuse_freed_memory() -> bool:
    """Keep freed blocks below MMAP_THRESHOLD, and up to TRIM_THRESHOLD of free heap, for reuse; False where
    the C library has no mallopt (not glibc), which changes nothing but speed."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
