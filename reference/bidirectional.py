"""Bidirectional layers from a cell's generated forward and backward: one pass over the sequence as
given and one over the sequence reversed in time, outputs concatenated along the units.

Conventions for the reverse pass's outputs (``order``):
- "original": re-aligned with the input's time order, so y[t] = [forward_t, backward_t] for the same
  input step (ONNX, PyTorch bidirectional, Keras Bidirectional, Flax keep_order=True);
- "processing": left in the order the reverse pass produced them (what Keras go_backwards=True and
  Flax reverse=True without keep_order return for the reverse layer).
The reverse pass's final states are those after it has read x[0] (PyTorch's h_n for that direction).

Hand-written and free of gradient formulas: the backward only routes cotangents (split, reverse in
time) to each direction's generated backward and adds the two input gradients.
"""

from __future__ import annotations

import numpy as np

from ._runtime import InputError, _as_array
from .truncation import check_driver_arguments

ORDERS = ("original", "processing")


def forward(module, params_fwd: dict, params_bwd: dict, seq: dict, init_fwd: dict | None = None,
            init_bwd: dict | None = None, order: str = "original"):
    """Returns (y, final, cache): y (T, B, 2 x output units), final {"fwd": {...}, "bwd": {...}}."""
    if order not in ORDERS:
        raise InputError(f"order: expected one of {ORDERS}, got {order!r}")
    check_driver_arguments(module, seq, {"init_fwd": init_fwd, "init_bwd": init_bwd})
    sig = module.SIGNATURE
    init_fwd, init_bwd = dict(init_fwd or {}), dict(init_bwd or {})
    reversed_seq = {n: seq[n][::-1] for n in sig.inputs}
    y_f, fin_f, cache_f = module.forward(params_fwd, **seq, **{f"{s}0": v for s, v in init_fwd.items()})
    y_b, fin_b, cache_b = module.forward(params_bwd, **reversed_seq, **{f"{s}0": v for s, v in init_bwd.items()})
    y_b_out = y_b[::-1] if order == "original" else y_b
    y = np.concatenate([y_f, y_b_out], axis=-1)
    cache = {"module": module, "fwd": cache_f, "bwd": cache_b, "order": order, "split": y_f.shape[-1],
             "y_shape": y.shape, "dtype": y.dtype}
    return y, {"fwd": fin_f, "bwd": fin_b}, cache


def backward(cache: dict, dy=None, d_final: dict | None = None) -> dict:
    """Gradients {"fwd": {param: ...}, "bwd": {param: ...}, input: ..., "fwd_<s>0": ..., "bwd_<s>0": ...}."""
    if not isinstance(cache, dict) or "module" not in cache or "split" not in cache:
        raise InputError("cache: expected the cache returned by bidirectional.forward()")
    module, split = cache["module"], cache["split"]
    sig = module.SIGNATURE
    if d_final is not None and (not isinstance(d_final, dict) or set(d_final) - {"fwd", "bwd"}):
        got = sorted(d_final) if isinstance(d_final, dict) else type(d_final).__name__
        raise InputError(f"d_final: got {got}, expected a dict with keys 'fwd' and/or 'bwd', each {{state: array}}")
    d_final = d_final or {}
    if dy is not None:
        dy = _as_array("dy", dy)
        want = cache.get("y_shape", dy.shape)
        if dy.shape != want or dy.dtype != cache.get("dtype", dy.dtype):
            raise InputError(f"dy: got shape {dy.shape} and dtype {dy.dtype}, expected shape {want} and dtype "
                             f"{cache.get('dtype')} (like y: both directions' outputs side by side)")
    if dy is None:
        dy_f = dy_b = None
    else:
        dy_f, dy_b = dy[..., :split], dy[..., split:]
        if cache["order"] == "original":
            dy_b = dy_b[::-1]
        dy_b = np.ascontiguousarray(dy_b)
        dy_f = np.ascontiguousarray(dy_f)
    g_f = module.backward(cache["fwd"], dy_f, d_final.get("fwd"))
    g_b = module.backward(cache["bwd"], dy_b, d_final.get("bwd"))
    out = {"fwd": {k: g_f[k] for k in sig.parameters}, "bwd": {k: g_b[k] for k in sig.parameters}}
    for n in sig.inputs:
        out[n] = g_f[n] + g_b[n][::-1]
    for s in sig.states:
        out[f"fwd_{s}0"], out[f"bwd_{s}0"] = g_f[f"{s}0"], g_b[f"{s}0"]
    return out
