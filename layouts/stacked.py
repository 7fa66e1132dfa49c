"""Per-gate <-> stacked 4H layouts. Pure data movement: no gradient formula lives here."""

from __future__ import annotations

import numpy as np

from .gates import TORCH_LSTM_ORDER

GATES = TORCH_LSTM_ORDER  # the default stacked order: PyTorch, Keras and cuDNN (PyTorch calls the candidate g)
KINDS = ("W", "U", "b")


class LayoutError(ValueError):
    """A converter got arrays it cannot convert; the message names the array, what it got and expected."""


def require(mapping, names, label="params"):
    """The arrays ``mapping[name]`` for each name, as NumPy arrays of one shared dtype (nothing is cast):
    a missing name, a non-dict or mixed dtypes raise LayoutError naming them."""
    if not isinstance(mapping, dict):
        raise LayoutError(f"{label}: expected a dict of arrays, got {type(mapping).__name__}")
    names = list(names)
    missing = [n for n in names if n not in mapping]
    if missing:
        raise LayoutError(f"{label}: missing {missing}; expected {names}")
    arrays = {n: np.asarray(mapping[n]) for n in names}
    return _same_dtype(arrays, label)


def _same_dtype(arrays: dict, label: str):
    dtypes = {str(a.dtype) for a in arrays.values()}
    if len(dtypes) > 1:
        got = ", ".join(f"{n}: {a.dtype}" for n, a in arrays.items())
        raise LayoutError(f"{label}: mixed dtypes ({got}); expected one dtype (a converter never casts)")
    return arrays


def _check_gate_shapes(arrays: dict, order, label="params"):
    """Per-gate W_g (H, D), U_g (H, H), b_g (H,) with one H and one D across the gates."""
    W, U, b = (arrays[f"{k}_{order[0]}"] for k in KINDS)
    if W.ndim != 2:
        raise LayoutError(f"{label}['W_{order[0]}']: got shape {W.shape}, expected (H, D)")
    H, D = W.shape
    want = {"W": (H, D), "U": (H, H), "b": (H,)}
    for k in KINDS:
        for g in order:
            a = arrays[f"{k}_{g}"]
            if a.shape != want[k]:
                raise LayoutError(f"{label}['{k}_{g}']: got shape {a.shape}, expected {want[k]} "
                                  f"(H = {H}, D = {D} from W_{order[0]})")


def _check_order(order):
    order = tuple(order)
    if sorted(order) != sorted(GATES):
        raise LayoutError(f"order: expected a permutation of {GATES}, got {order}")
    return order


def to_stacked(params: dict, order=GATES) -> dict:
    """{W_f, U_f, b_f, ...} -> {"W": (4H, D), "U": (4H, H), "b": (4H,)}, blocks in ``order``."""
    order = _check_order(order)
    arrays = require(params, [f"{k}_{g}" for k in KINDS for g in order])
    _check_gate_shapes(arrays, order)
    return {k: np.concatenate([arrays[f"{k}_{g}"] for g in order], axis=0) for k in KINDS}


def from_stacked(stacked: dict, order=GATES) -> dict:
    """{"W": (4H, D), "U": (4H, H), "b": (4H,)} -> {W_f, U_f, b_f, ...}; inverse of to_stacked."""
    order = _check_order(order)
    arrays = require(stacked, KINDS, "stacked")
    for k, a in arrays.items():
        if a.ndim < 1 or a.shape[0] % 4:
            raise LayoutError(f"stacked[{k!r}]: got shape {a.shape}, expected a first dimension of 4H")
    W, U, b = (arrays[k] for k in KINDS)
    H = U.shape[0] // 4
    want = {"W": (4 * H, W.shape[-1]) if W.ndim == 2 else "(4H, D)", "U": (4 * H, H), "b": (4 * H,)}
    for k, a in arrays.items():
        if a.shape != want[k]:
            raise LayoutError(f"stacked[{k!r}]: got shape {a.shape}, expected {want[k]} (H = {H} from U)")
    out = {}
    for k in KINDS:
        for g, block in zip(order, np.split(arrays[k], 4, axis=0), strict=True):
            out[f"{k}_{g}"] = block.copy()
    return out


def to_torch_lstm(params: dict, bias_ih=None, order=GATES) -> dict:
    """Canonical parameters -> PyTorch nn.LSTM layer-0 tensors as NumPy arrays (gate order i, f, g, o).
    PyTorch adds two biases; ``bias_ih`` (4H,) chooses the split (default: all of b in bias_ih).
    ``order`` exists to build deliberately wrong conversions for negative controls."""
    s = to_stacked(params, order)
    if bias_ih is not None:
        bias_ih = np.asarray(bias_ih)
        if bias_ih.shape != s["b"].shape or bias_ih.dtype != s["b"].dtype:
            raise LayoutError(f"bias_ih: got shape {bias_ih.shape} and dtype {bias_ih.dtype}, expected shape "
                              f"{s['b'].shape} and dtype {s['b'].dtype} (4H, like the stacked b; never broadcast)")
    b_ih = (s["b"] if bias_ih is None else bias_ih).copy()
    return {"weight_ih_l0": s["W"], "weight_hh_l0": s["U"], "bias_ih_l0": b_ih, "bias_hh_l0": s["b"] - b_ih}


def from_torch_lstm(state: dict, suffix: str = "_l0") -> dict:
    """PyTorch nn.LSTM tensors (as arrays) -> canonical parameters; the two biases are summed."""
    a = require(state, [f"{k}{suffix}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")], "state")
    b_ih, b_hh = a[f"bias_ih{suffix}"], a[f"bias_hh{suffix}"]
    if b_ih.shape != b_hh.shape:
        raise LayoutError(f"state['bias_hh{suffix}']: got shape {b_hh.shape}, "
                          f"expected {b_ih.shape} like bias_ih{suffix}")
    return from_stacked({"W": a[f"weight_ih{suffix}"], "U": a[f"weight_hh{suffix}"], "b": b_ih + b_hh}, GATES)
