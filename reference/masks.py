"""Masks for variable-length sequences (the masked cells lstm_masked_zeros and lstm_masked_carry).

Hand-written and free of gradient formulas.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._runtime import NUMERIC_DTYPES, InputError, unreadable


def mask_from_lengths(lengths, T: int, dtype=np.float64):
    """(T, B, 1) mask with m[t, b] = 1 for t < lengths[b], else 0. Lengths must be integers in [0, T]
    (an array or a list of them); dtype is that of the cell's other arrays (float32, float64 or complex128)."""
    _check_count("T", T)
    dtype = _check_dtype(dtype)
    try:
        lengths = np.asarray(lengths)
    except Exception as exc:  # a ragged list, a torch tensor that requires grad, ...
        raise unreadable("lengths", exc) from exc
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise InputError(f"lengths: expected a 1-D array of integers, "
                         f"got shape {lengths.shape} and dtype {lengths.dtype}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > T):
        raise InputError(f"lengths: every length must be in [0, T={T}], "
                         f"got min {lengths.min()} and max {lengths.max()}")
    return (np.arange(T)[:, None] < lengths[None, :]).astype(dtype)[:, :, None]


def dropout_mask(rng, T: int, B: int, n: int, p: float, values: str = "inverted", time: str = "per_step",
                 dtype=np.float64):
    """A (T, B, n) dropout or zoneout mask given explicitly to a cell with mask inputs (spec [masks]).

    Each entry is 0 with probability p (dropped), else 1/(1-p) for values="inverted" (inverted dropout:
    the kept units are scaled so the expectation is unchanged, as PyTorch and Keras do at training time)
    or 1 for values="binary" (zoneout: 1 keeps the previous value). time="per_step" draws a new mask at
    every step (PyTorch's dropout between layers, Semeniuta et al.); time="fixed" repeats one mask per
    sequence at every step (variational dropout, Gal & Ghahramani; Keras recurrent_dropout)."""
    for name, value in (("T", T), ("B", B), ("n", n)):
        _check_count(name, value)
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0 < p < 1:
        raise InputError(f"p: expected a drop probability in (0, 1), got {p!r}")
    if not callable(getattr(rng, "random", None)):
        raise InputError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), got "
                         f"{type(rng).__name__}")
    dtype = _check_dtype(dtype)
    if values not in ("inverted", "binary"):
        raise InputError(f"values: expected 'inverted' or 'binary', got {values!r}")
    if time not in ("per_step", "fixed"):
        raise InputError(f"time: expected 'per_step' or 'fixed', got {time!r}")
    keep = 1.0 / (1.0 - p) if values == "inverted" else 1.0
    draws = 1 if time == "fixed" else T
    m = np.where(rng.random((draws, B, n)) < p, 0.0, keep)
    return np.broadcast_to(m, (T, B, n)).astype(dtype)


def _check_count(name, value):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise InputError(f"{name}: expected an integer >= 0, got {value!r}")


def _check_dtype(dtype):
    """The mask's dtype: that of the cell's other arrays (float32, float64 or complex128), nothing else."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved not in NUMERIC_DTYPES:
        got = repr(dtype) if resolved is None else resolved
        raise InputError(f"dtype: got {got}, expected float32, float64 or complex128 (the dtype of x)")
    return resolved
