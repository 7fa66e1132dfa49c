"""Sequence losses from per-step losses: the choice between summing and averaging over time.

The loss cells (lstm_mse, lstm_softmax_ce) output the per-step loss loss_t (shape (T, B, 1)). The loss of
a sequence is sum_t w_t loss_t, and its gradient is backward(cache, dy=w): the weights are the cotangent.
There is no default: summing and averaging differ by a factor T in every gradient, a classic silent bug.
Hand-written and free of gradient formulas.
"""

from __future__ import annotations

import numpy as np

from ._runtime import NUMERIC_DTYPES, InputError, _as_array

REDUCTIONS = ("sum", "mean")


def _per_step_losses(y):
    y = _as_array("y", y)
    if y.ndim != 3 or y.shape[-1] != 1 or y.dtype not in NUMERIC_DTYPES:
        raise InputError(f"y: got shape {y.shape} and dtype {y.dtype}, expected the per-step losses of a loss cell: "
                         "shape (T, B, 1) and dtype float32, float64 or complex128")
    return y


def time_weights(y, reduction: str):
    """Cotangent for the per-step losses y (T, B, 1): 1 per step for "sum", 1/T for "mean" (the batch is
    always summed; divide by B yourself for a batch mean)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}; summing and averaging "
                         "over time differ by a factor T, so the choice is never implicit")
    y = _per_step_losses(y)
    T = y.shape[0]
    w = np.ones_like(y)
    return w if reduction == "sum" or T == 0 else w / T


def sequence_loss(y, reduction: str):
    """sum_t w_t loss_t per sample, shape (B,), with the same weights as time_weights."""
    y = _per_step_losses(y)
    return np.sum(time_weights(y, reduction) * y, axis=(0, 2))
