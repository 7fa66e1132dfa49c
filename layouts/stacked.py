"""Per-gate <-> stacked 4H layouts. Pure data movement: no gradient formula lives here."""

from __future__ import annotations

import numpy as np

GATES = ("i", "f", "c", "o")  # PyTorch, Keras and cuDNN order (PyTorch calls the candidate g)
KINDS = ("W", "U", "b")


class LayoutError(ValueError):
    pass


def _check_order(order):
    order = tuple(order)
    if sorted(order) != sorted(GATES):
        raise LayoutError(f"order: expected a permutation of {GATES}, got {order}")
    return order


def to_stacked(params: dict, order=GATES) -> dict:
    """{W_f, U_f, b_f, ...} -> {"W": (4H, D), "U": (4H, H), "b": (4H,)}, blocks in ``order``."""
    order = _check_order(order)
    missing = [f"{k}_{g}" for k in KINDS for g in order if f"{k}_{g}" not in params]
    if missing:
        raise LayoutError(f"params: missing {missing}; expected per-gate arrays named W_g, U_g, b_g for g in {order}")
    out = {}
    for k in KINDS:
        blocks = [np.asarray(params[f"{k}_{g}"]) for g in order]
        first = blocks[0].shape
        for g, b in zip(order, blocks):
            if b.shape != first:
                raise LayoutError(f"params['{k}_{g}']: got shape {b.shape}, expected {first} like {k}_{order[0]}")
        out[k] = np.concatenate(blocks, axis=0)
    return out


def from_stacked(stacked: dict, order=GATES) -> dict:
    """{"W": (4H, D), "U": (4H, H), "b": (4H,)} -> {W_f, U_f, b_f, ...}; inverse of to_stacked."""
    order = _check_order(order)
    out = {}
    for k in KINDS:
        if k not in stacked:
            raise LayoutError(f"stacked: missing {k!r}; expected keys {KINDS}")
        a = np.asarray(stacked[k])
        if a.ndim < 1 or a.shape[0] % 4:
            raise LayoutError(f"stacked[{k!r}]: got shape {a.shape}, expected a first dimension of 4H")
        for g, block in zip(order, np.split(a, 4, axis=0)):
            out[f"{k}_{g}"] = block.copy()
    return out


def to_torch_lstm(params: dict, bias_ih=None, order=GATES) -> dict:
    """Canonical parameters -> PyTorch nn.LSTM layer-0 tensors as NumPy arrays (gate order i, f, g, o).
    PyTorch adds two biases; ``bias_ih`` (4H,) chooses the split (default: all of b in bias_ih).
    ``order`` exists to build deliberately wrong conversions for negative controls."""
    s = to_stacked(params, order)
    b_ih = np.zeros_like(s["b"]) + (s["b"] if bias_ih is None else np.asarray(bias_ih))
    return {"weight_ih_l0": s["W"], "weight_hh_l0": s["U"], "bias_ih_l0": b_ih, "bias_hh_l0": s["b"] - b_ih}


def from_torch_lstm(state: dict, suffix: str = "_l0") -> dict:
    """PyTorch nn.LSTM tensors (as arrays) -> canonical parameters; the two biases are summed."""
    get = lambda k: np.asarray(state[f"{k}{suffix}"])  # noqa: E731
    return from_stacked({"W": get("weight_ih"), "U": get("weight_hh"), "b": get("bias_ih") + get("bias_hh")}, GATES)
