"""Helpers over sorted key columns shared by the analysis passes."""

from __future__ import annotations

import numpy as np


def segments(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heads (bool), segment number per row and first row per segment of a sorted key."""
    head = np.empty(key.size, bool)
    head[:1] = True
    np.not_equal(key[1:], key[:-1], out=head[1:])
    return head, np.cumsum(head) - 1, np.flatnonzero(head)
