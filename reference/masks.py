"""Masks for variable-length sequences (the masked cells lstm_masked_zeros and lstm_masked_carry).

Hand-written and free of gradient formulas.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._runtime import NUMERIC_DTYPES, InputError


def mask_from_lengths(lengths, T: int, dtype=np.float64):
    """(T, B, 1) mask with m[t, b] = 1 for t < lengths[b], else 0. Lengths must be integers in [0, T]
    (an array or a list of them); dtype is that of the cell's other arrays (float32, float64 or complex128)."""
    if not isinstance(T, numbers.Integral) or isinstance(T, bool) or T < 0:
        raise InputError(f"T: expected an integer >= 0, got {T!r}")
    if np.dtype(dtype) not in NUMERIC_DTYPES:
        raise InputError(f"dtype: got {np.dtype(dtype)}, expected float32, float64 or complex128 (the dtype of x)")
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise InputError(f"lengths: expected a 1-D array of integers, got shape {lengths.shape} and dtype {lengths.dtype}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > T):
        raise InputError(f"lengths: every length must be in [0, T={T}], got min {lengths.min()} and max {lengths.max()}")
    return (np.arange(T)[:, None] < lengths[None, :]).astype(dtype)[:, :, None]
