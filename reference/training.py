"""Training helpers around the generated reference: gradient clipping by global norm and forget-gate bias
initialisation. Hand-written and free of gradient formulas."""

from __future__ import annotations

import numbers

import numpy as np

from ._runtime import InputError


def _check_grads(grads):
    if not isinstance(grads, dict):
        raise InputError("grads: expected a dict of gradient arrays (what backward returns), "
                         f"got {type(grads).__name__}")


def _check_number(name, value):
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise InputError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")


def global_norm(grads: dict, keys=None) -> float:
    """sqrt(sum of squares) over the chosen gradients (default: all of them)."""
    _check_grads(grads)
    keys = list(grads) if keys is None else list(keys)
    missing = [k for k in keys if k not in grads]
    if missing:
        raise KeyError(f"grads: no entries {missing}")
    return float(np.sqrt(sum(float(np.sum(np.abs(grads[k]) ** 2)) for k in keys)))


def clip_by_global_norm(grads: dict, max_norm: float, keys=None):
    """Scale the chosen gradients by min(1, max_norm / global_norm) (Pascanu et al.; PyTorch's
    clip_grad_norm_, TF's clip_by_global_norm). Returns (new dict, norm before clipping); entries not in
    ``keys`` are returned unchanged. A non-finite norm is an error, not a silent NaN update."""
    _check_number("max_norm", max_norm)
    if not np.isfinite(max_norm) or max_norm <= 0:
        raise InputError(f"max_norm: expected a positive finite number, got {max_norm!r}")
    keys = list(grads) if keys is None else list(keys)
    norm = global_norm(grads, keys)
    if not np.isfinite(norm):
        raise FloatingPointError(f"global norm of the gradients is {norm}: refusing to clip non-finite gradients")
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: (v * scale if k in keys else v) for k, v in grads.items()}, norm


def init_forget_bias(params: dict, value: float = 1.0, name: str = "b_f", mode: str = "set") -> dict:
    """A copy of params with the forget-gate bias set to ``value`` (mode "set": Keras unit_forget_bias,
    Jozefowicz et al.) or increased by it (mode "add": what TF1's forget_bias, added at every step, amounts
    to when folded into a stored bias)."""
    if not isinstance(params, dict):
        raise InputError(f"params: expected a dict of arrays keyed by parameter name, got {type(params).__name__}")
    _check_number("value", value)
    if name not in params:
        raise KeyError(f"params: no forget-gate bias {name!r}; the parameters are {list(params)}")
    if mode not in ("set", "add"):
        raise InputError(f"mode: expected 'set' or 'add', got {mode!r}")
    out = dict(params)
    b = np.asarray(params[name])
    out[name] = np.full_like(b, value) if mode == "set" else b + np.asarray(value, dtype=b.dtype)
    return out
