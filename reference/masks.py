"""Masks for variable-length sequences (the masked cells lstm_masked_zeros and lstm_masked_carry).

Hand-written and free of gradient formulas.
"""

from __future__ import annotations

import numpy as np


def mask_from_lengths(lengths, T: int, dtype=np.float64):
    """(T, B, 1) mask with m[t, b] = 1 for t < lengths[b], else 0. Lengths must be integers in [0, T]."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths: expected a 1-D array of integers, got shape {lengths.shape} and dtype {lengths.dtype}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"lengths: every length must be in [0, T={T}], got min {lengths.min()} and max {lengths.max()}")
    return (np.arange(T)[:, None] < lengths[None, :]).astype(dtype)[:, :, None]
