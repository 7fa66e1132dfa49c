"""What the generated reference modules share: elementwise functions and input validation.

Hand-written, and deliberately free of any gradient formula: every derivative lives in the generated
modules next to this file, derived from the spec.

Dtypes: float32, float64 and complex128 (complex128 is for complex-step derivative checks); all
arrays of one call share one dtype, nothing is cast or broadcast silently. Object arrays of SymPy
expressions are accepted only inside ``with symbolic():`` (the unrolled symbolic check).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

NUMERIC_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.complex128))
_SYMBOLIC = [False]


@contextlib.contextmanager
def symbolic():
    """Allow object arrays of SymPy expressions (used by the unrolled symbolic check)."""
    _SYMBOLIC.append(True)
    try:
        yield
    finally:
        _SYMBOLIC.pop()


# ----------------------------------------------------------------------------------------- functions
def sigmoid(z):
    """The logistic function, as 0.5 + 0.5 tanh(z/2): no overflow for any real z, analytic (so
    complex-step derivatives work), and it keeps float32 in float32."""
    if z.dtype == object:
        from lstm_spec.derivations.functions import Sigmoid

        return _elementwise(Sigmoid, z)
    return 0.5 + 0.5 * np.tanh(0.5 * z)


def tanh(z):
    if z.dtype == object:
        import sympy

        return _elementwise(sympy.tanh, z)
    return np.tanh(z)


def identity(z):
    return z


def stop_gradient(z):
    """The value of z, with no derivative: for complex z (complex-step checks) the imaginary part, which
    carries the derivative, is dropped."""
    if z.dtype == object:
        from lstm_spec.derivations.functions import StopGradient

        return _elementwise(StopGradient, z)
    if np.iscomplexobj(z):
        return z.real.astype(z.dtype)
    return z.copy()


def exp(z):
    if z.dtype == object:
        from lstm_spec.derivations.functions import Exp

        return _elementwise(Exp, z)
    return np.exp(z)


def unit_sum(z):
    """Sum over the units (last axis), kept as a length-1 axis so it broadcasts against vectors."""
    return np.sum(z, axis=-1, keepdims=True)


def logsumexp(z):
    """log sum_k exp(z_k) over the last axis, shifted by the largest real part: no overflow, and
    analytic in z (the shift is a constant), so complex-step derivatives work."""
    if z.dtype == object:
        from lstm_spec.derivations.functions import LogSumExpN

        out = np.empty(z.shape[:-1] + (1,), dtype=object)
        for idx in np.ndindex(z.shape[:-1]):
            out[idx + (0,)] = LogSumExpN(*z[idx])
        return out
    if z.shape[-1] == 0:
        return np.full(z.shape[:-1] + (1,), -np.inf, dtype=z.dtype)
    shift = np.max(z.real, axis=-1, keepdims=True)
    shift = np.where(np.isfinite(shift), shift, 0)
    return (shift + np.log(np.sum(np.exp(z - shift), axis=-1, keepdims=True))).astype(z.dtype, copy=False)


def clip(z, bound):
    """min(max(z, -bound), bound). For complex z (complex-step checks) the real part decides the piece,
    so the imaginary part carries the derivative: 1 inside, 0 where clipped."""
    if z.dtype == object:
        import sympy

        from lstm_spec.derivations.functions import Clip

        b = sympy.Rational(repr(float(bound)))
        return _elementwise(lambda v: Clip(v, b), z)
    inside = np.abs(z.real) <= bound
    return np.where(inside, z, np.sign(z.real) * bound).astype(z.dtype, copy=False)


def clip_mask(z, bound):
    """The derivative of clip: 1 where |z| <= bound (kinks included), else 0."""
    if z.dtype == object:
        import sympy

        from lstm_spec.derivations.functions import ClipMask

        b = sympy.Rational(repr(float(bound)))
        return _elementwise(lambda v: ClipMask(v, b), z)
    return (np.abs(z.real) <= bound).astype(z.dtype)


def _elementwise(fn, z):
    out = np.empty(z.shape, dtype=object)
    for idx in np.ndindex(z.shape):
        out[idx] = fn(z[idx])
    return out


# ----------------------------------------------------------------------------------------- validation
class InputError(ValueError):
    """Bad input to a reference function; the message names the array, what it got and what it expected."""


@dataclass
class Signature:
    """What a generated cell module declares about its arrays (from the spec)."""

    cell: str
    inputs: dict  # name -> dims, e.g. {"x": ("D",)}
    states: dict  # name -> dims
    parameters: dict  # name -> dims
    output: str
    output_dims: tuple


def _describe(a):
    return f"shape {tuple(a.shape)} and dtype {a.dtype}"


def _dtype_ok(dtype):
    return dtype in NUMERIC_DTYPES or (dtype == object and _SYMBOLIC[-1])


def _as_array(name, value):
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__array__") and not isinstance(value, (list, tuple)):
        return np.asarray(value)
    raise InputError(f"{name}: expected a NumPy array, got {type(value).__name__}")


def prepare(sig: Signature, params, sequence: dict, initial: dict):
    """Validate a forward call. Returns (params, sequences, initial states, dims) with every shape
    checked against the spec and dims bound (T, B and each dimension of the spec)."""
    if not isinstance(params, dict):
        raise InputError(f"params: expected a dict of arrays keyed by parameter name, got {type(params).__name__}")
    missing = [k for k in sig.parameters if k not in params]
    unknown = [k for k in params if k not in sig.parameters]
    if missing or unknown:
        msg = []
        if missing:
            msg.append(f"missing parameter(s) {missing}")
        if unknown:
            msg.append(f"unknown parameter(s) {unknown}")
        raise InputError(f"params for cell {sig.cell!r}: {'; '.join(msg)}; expected exactly {list(sig.parameters)}")

    arrays = {}
    for name, value in sequence.items():
        arrays[name] = _as_array(name, value)
    first = next(iter(arrays))
    dtype = arrays[first].dtype
    if not _dtype_ok(dtype):
        raise InputError(f"{first}: dtype {dtype} is not supported; use float32, float64 or complex128")

    dims: dict[str, int] = {}

    dims["1"] = 1  # the shape of one value per sample

    def bind(label, a, expected):
        """expected: tuple of dim names or ints; binds names on first sight."""
        if a.dtype != dtype:
            raise InputError(f"{label}: dtype {a.dtype} differs from {first}'s {dtype}; all arrays of a call "
                             "must share one dtype (nothing is cast silently)")
        want = tuple(dims.get(e, e) if isinstance(e, str) else e for e in expected)
        if a.ndim != len(expected):
            raise InputError(f"{label}: got {_describe(a)}, expected shape {_shape_text(expected, dims)}")
        for size, e in zip(a.shape, expected):
            if isinstance(e, str):
                if e in dims and dims[e] != size:
                    raise InputError(f"{label}: got {_describe(a)}, expected shape {_shape_text(expected, dims)} "
                                     f"({e} = {dims[e]} from earlier arrays)")
                dims.setdefault(e, size)
            elif e != size:
                raise InputError(f"{label}: got {_describe(a)}, expected shape {want}")

    for name, a in arrays.items():
        bind(name, a, ("T", "B") + tuple(sig.inputs[name]))
    p = {}
    for name, dims_ in sig.parameters.items():
        a = _as_array(f"params[{name!r}]", params[name])
        bind(f"params[{name!r}]", a, tuple(dims_))
        p[name] = a
    init = {}
    for name, value in initial.items():
        shape = ("B",) + tuple(sig.states[name])
        if value is None:
            missing_dims = [d for d in shape if d not in dims]
            if missing_dims:  # pragma: no cover - every state dimension appears in some parameter
                raise InputError(f"{name}0: cannot infer dimension(s) {missing_dims}; pass {name}0 explicitly")
            init[name] = np.zeros(tuple(dims[d] for d in shape), dtype=dtype)
        else:
            a = _as_array(f"{name}0", value)
            bind(f"{name}0", a, shape)
            init[name] = a
    return p, arrays, init, dims


def prepare_cotangents(sig: Signature, cache: dict, dy, d_final):
    """Validate the cotangents given to backward: dy (T, B, output dims) and d_final {state: (B, dims)}.
    Missing cotangents are zeros."""
    dims, dtype = cache["dims"], cache["dtype"]
    T, B = dims["T"], dims["B"]
    out_shape = (T, B) + tuple(dims[d] for d in sig.output_dims)
    if dy is None:
        dy = np.zeros(out_shape, dtype=dtype)
    else:
        dy = _as_array("dy", dy)
        if dy.shape != out_shape or dy.dtype != dtype:
            raise InputError(f"dy: got {_describe(dy)}, expected shape {out_shape} and dtype {dtype}")
    d_final = dict(d_final or {})
    unknown = [k for k in d_final if k not in sig.states]
    if unknown:
        raise InputError(f"d_final: unknown state(s) {unknown}; the states of {sig.cell!r} are {list(sig.states)}")
    out = {}
    for name, dims_ in sig.states.items():
        shape = (B,) + tuple(dims[d] for d in dims_)
        value = d_final.get(name)
        if value is None:
            out[name] = np.zeros(shape, dtype=dtype)
        else:
            a = _as_array(f"d_final[{name!r}]", value)
            if a.shape != shape or a.dtype != dtype:
                raise InputError(f"d_final[{name!r}]: got {_describe(a)}, expected shape {shape} and dtype {dtype}")
            out[name] = a.copy()
    return dy, out


def _shape_text(expected, dims):
    return "(" + ", ".join(f"{e}={dims[e]}" if isinstance(e, str) and e in dims else str(e) for e in expected) + ")"


# ----------------------------------------------------------------------------------------- non-finite values
NONFINITE_POLICIES = ("propagate", "raise")


class NonFiniteError(FloatingPointError):
    """A NaN or Inf appeared and the caller asked for nonfinite='raise'; the message says where first."""


def _check_policy(nonfinite):
    if nonfinite not in NONFINITE_POLICIES:
        raise InputError(f"nonfinite: got {nonfinite!r}, expected one of {list(NONFINITE_POLICIES)}")


def _first_nonfinite(a):
    if a.dtype == object or a.size == 0:
        return None
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    return tuple(int(i) for i in np.argwhere(bad)[0])


def finish_forward(sig: Signature, cache: dict, nonfinite):
    """Apply the non-finite policy after a forward pass. With 'raise', the arrays are scanned in the
    order they were computed (inputs and parameters first, then step by step in equation order), so the
    error names the first place a NaN or Inf appeared."""
    _check_policy(nonfinite)
    if nonfinite == "propagate":
        return
    T = cache["dims"]["T"]
    for name in sig.inputs:
        where = _first_nonfinite(cache[name])
        if where is not None:
            raise NonFiniteError(f"{sig.cell}: input {name} is non-finite at index {where} (t, b, ...)")
    for name in sig.parameters:
        where = _first_nonfinite(cache[name])
        if where is not None:
            raise NonFiniteError(f"{sig.cell}: parameter {name} is non-finite at index {where}")
    for name in sig.states:
        where = _first_nonfinite(cache[name][0])
        if where is not None:
            raise NonFiniteError(f"{sig.cell}: initial state {name}0 is non-finite at index {where} (b, ...)")
    skip = {"dims", "dtype"} | set(sig.inputs) | set(sig.parameters)
    per_step = [(k, v, 1 if k in sig.states else 0) for k, v in cache.items()
                if k not in skip and isinstance(v, np.ndarray) and v.ndim >= 2]
    for t in range(T):
        for name, arr, offset in per_step:
            where = _first_nonfinite(arr[t + offset])
            if where is not None:
                raise NonFiniteError(f"{sig.cell}: first non-finite value in the forward pass: {name} at step "
                                     f"t={t} (0-based), index {where} (b, ...)")


def finish_backward(sig: Signature, cache: dict, grads: dict, nonfinite):
    """Apply the non-finite policy to the gradients returned by backward."""
    _check_policy(nonfinite)
    if nonfinite == "propagate":
        return
    for name, g in grads.items():
        where = _first_nonfinite(np.asarray(g))
        if where is not None:
            raise NonFiniteError(f"{sig.cell}: gradient {name!r} is non-finite at index {where}")
