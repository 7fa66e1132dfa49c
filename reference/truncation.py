"""Truncated backpropagation through time, driven by a cell's generated forward and backward.

TBPTT(k1, k2): the sequence is processed in chunks of k1 steps; after each chunk, the error of that
chunk's outputs is propagated back k2 >= k1 steps, and not further: the state at the start of that
window is treated as a constant. The gradient returned is the exact gradient of that truncated
objective,

    L_trunc = sum over chunks u of <dy[chunk u], y[chunk u]>  (+ <d_final, s_T> in the last chunk),

where in chunk u everything before step end_u - k2 is held fixed. k1 = k2 is the usual "chunked" BPTT
with the state carried across chunks; k2 >= T gives full BPTT. Hand-written, free of gradient formulas:
every derivative comes from the cell's generated backward(); this only runs it over windows and sums.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._runtime import InputError, _as_array


def check_driver_arguments(module, seq, inits: dict):
    """What the drivers around a generated module (TBPTT, bidirectional) check before calling it: seq is
    a dict holding exactly the cell's inputs, and each initial-state dict names only the cell's states (the
    arrays themselves are checked by the module's forward)."""
    sig = module.SIGNATURE
    if not isinstance(seq, dict) or set(seq) != set(sig.inputs):
        got = sorted(seq) if isinstance(seq, dict) else type(seq).__name__
        raise InputError(f"seq: got {got}, expected a dict with exactly the inputs of {sig.cell!r}: {list(sig.inputs)}")
    for label, init in inits.items():
        if init is None:
            continue
        if not isinstance(init, dict):
            raise InputError(f"{label}: expected a dict {{state: array}} or None, got {type(init).__name__}")
        unknown = [k for k in init if k not in sig.states]
        if unknown:
            raise InputError(f"{label}: unknown state(s) {unknown}; the states of {sig.cell!r} are {list(sig.states)} "
                             "(keys without the 0 suffix)")


def _windows(T: int, k1: int, k2: int):
    for start in range(0, T, k1):
        end = min(start + k1, T)
        yield start, end, max(0, end - k2)


def truncated_bptt(module, params: dict, seq: dict, k1: int, k2: int, init: dict | None = None,
                   dy=None, d_final: dict | None = None):
    """Returns (y, final, grads) where grads is the gradient of the truncated objective: one entry per
    parameter, per input (per step) and per initial state (only the first window reaches it)."""
    integers = all(isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in (k1, k2))
    if not integers or k1 < 1 or k2 < k1:
        raise InputError(f"k1, k2: expected integers with 1 <= k1 <= k2, got k1={k1!r}, k2={k2!r}")
    check_driver_arguments(module, seq, {"init": init, "d_final": d_final})
    init = dict(init or {})
    sig = module.SIGNATURE
    y, final, cache = module.forward(params, **seq, **{f"{s}0": v for s, v in init.items()})
    T = y.shape[0]
    if dy is None:
        dy = np.zeros_like(y)
    else:  # checked whole here: the windows would otherwise report a slice of it
        dy = _as_array("dy", dy)
        if dy.shape != y.shape or dy.dtype != y.dtype:
            raise InputError(f"dy: got shape {dy.shape} and dtype {dy.dtype}, expected shape {y.shape} and dtype "
                             f"{y.dtype} (like y)")
    grads = {k: np.zeros_like(v) for k, v in cache.items() if k in sig.parameters}
    grads.update({n: np.zeros_like(seq[n]) for n in sig.inputs})
    grads.update({f"{s}0": np.zeros_like(cache[s][0]) for s in sig.states})
    for start, end, begin in _windows(T, k1, k2):
        window_init = {f"{s}0": cache[s][begin] for s in sig.states}  # a constant of this window
        _, _, wcache = module.forward(params, **{n: seq[n][begin:end] for n in sig.inputs}, **window_init)
        wdy = np.zeros_like(dy[begin:end])
        wdy[start - begin:] = dy[start:end]
        g = module.backward(wcache, wdy, d_final if end == T else None)
        for k in sig.parameters:
            grads[k] += g[k]
        for n in sig.inputs:
            grads[n][begin:end] += g[n]
        if begin == 0:
            for s in sig.states:
                grads[f"{s}0"] += g[f"{s}0"]
    if T == 0 and d_final:
        for s in sig.states:
            grads[f"{s}0"] += d_final.get(s, 0)
    return y, final, grads


def truncated_objective(module, params: dict, seq: dict, k1: int, k2: int, init: dict, dy, d_final: dict,
                        frozen: dict | None = None):
    """The truncated objective's value, computed from the forward pass alone: each window's initial state
    is a constant, except the first window's, which is the true initial state. The constant is the
    full forward's state there, with its derivative removed: for complex arrays its real part (so a
    complex-step derivative of this function is the truncated gradient), or, when ``frozen`` is given
    ({state: (T + 1, B, ...) array of the states at the unperturbed point}), those fixed values (so finite
    differences of this function are the truncated gradient too). Used by the tests as the independent
    reference for truncated_bptt."""
    sig = module.SIGNATURE
    y, final, cache = module.forward(params, **seq, **{f"{s}0": v for s, v in init.items()})
    T = y.shape[0]
    total = 0.0
    for start, end, begin in _windows(T, k1, k2):
        window_init = {f"{s}0": (cache[s][begin] if begin > 0 else init[s]) for s in sig.states}
        if begin > 0 and frozen is not None:
            window_init = {f"{s}0": frozen[s][begin] for s in sig.states}
        elif begin > 0:
            window_init = {k: v.real.astype(v.dtype) for k, v in window_init.items()}
        wy, wfin, _ = module.forward(params, **{n: seq[n][begin:end] for n in sig.inputs}, **window_init)
        total = total + np.sum(dy[start:end] * wy[start - begin:])
        if end == T:
            total = total + sum(np.sum(d_final[s] * wfin[s]) for s in d_final)
    return total
