"""retrotap's capture engine: sources, decode, counters and snapshots (never imports textual)."""

import os

# NumPy's OpenBLAS starts a thread per core that spins for a while after start-up: retrotap does no linear
# algebra, so one thread (none spinning) is enough. Set before NumPy is first imported; a user's value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
