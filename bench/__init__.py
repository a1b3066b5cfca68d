"""Benchmarks (see bench/README.md)."""

import os

# As capture_backend does for retrotap itself: without this, a bench that imports NumPy before
# capture_backend gets OpenBLAS's spinning worker threads, which take CPU from the code being timed.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
