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
def sigmoid(z, out=None):
    """The logistic function, as 0.5 + 0.5 tanh(z/2): no overflow for any real z, analytic (so
    complex-step derivatives work), and it keeps float32 in float32. Computed in place (in ``out`` when
    given): one tanh and three scalar passes, as many passes as 1 / (1 + exp(-z)) and without its
    overflow for large negative z."""
    if z.dtype == object:
        from lstm_spec.derivations.functions import Sigmoid

        return _into(out, _elementwise(Sigmoid, z))
    out = np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def tanh(z, out=None):
    if z.dtype == object:
        import sympy

        return _into(out, _elementwise(sympy.tanh, z))
    return np.tanh(z, out=out)


def _into(out, value):
    if out is None:
        return value
    out[...] = value
    return out


def seq_matmul(a, m):
    """a @ m for a of shape (..., n), with the leading axes (time, batch) flattened so that it is one GEMM
    (NumPy's matmul of a 3-d array loops over the first axis), then restored."""
    return (a.reshape(-1, a.shape[-1]) @ m).reshape(a.shape[:-1] + (m.shape[-1],))


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


def unit_mean(z):
    """Mean over the units (last axis), kept as a length-1 axis so it broadcasts against vectors."""
    return np.sum(z, axis=-1, keepdims=True) / z.shape[-1]


def unit_count(*arrays):
    """The number of units of an expression of these arrays: the broadcast size of their last axes."""
    return np.broadcast_shapes(*(np.shape(a) for a in arrays))[-1]


def rsqrt(z):
    """1 / sqrt(z) (analytic for z off the negative real axis, so complex-step derivatives work)."""
    if z.dtype == object:
        from lstm_spec.derivations.functions import Rsqrt

        return _elementwise(Rsqrt, z)
    return 1 / np.sqrt(z)


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
    with np.errstate(over="ignore"):  # z - shift <= 0: an overflow is to -inf, whose exp is the exact 0
        scaled = z - shift
    return (shift + np.log(np.sum(np.exp(scaled), axis=-1, keepdims=True))).astype(z.dtype, copy=False)


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


# ----------------------------------------------------------------------------------------- stacked products
def stack_rows(*matrices):
    """[M_1; M_2; ...]: matrices that multiply the same vector, stacked by rows, so that the products
    M_1 v, M_2 v, ... come out of one GEMM side by side."""
    return np.concatenate(matrices, axis=0)


def split_last(a, sizes):
    """Views of a along its last axis, in consecutive blocks of the given sizes (plain slices: this runs
    at every time step, where np.split's overhead shows for small sizes)."""
    out, start = [], 0
    for n in sizes:
        out.append(a[..., start:start + n])
        start += n
    return out


def split_first(a, sizes):
    """Views of a along its first axis, in consecutive blocks of the given sizes."""
    out, start = [], 0
    for n in sizes:
        out.append(a[start:start + n])
        start += n
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


_DTYPE_HELP = ("expected float32, float64 or complex128 (nothing is cast: convert ints, bools, float16, "
               "complex64 and object arrays yourself)")


class _Dims(dict):
    """The dimension sizes bound by a forward call (a plain dict to its users), remembering the cell that
    bound them, so that backward can refuse a cache made by another cell's forward."""

    cell = None

    def __reduce__(self):  # pickles (and deep-copies) with the cell name
        return (_make_dims, (self.cell, dict(self)))


def _make_dims(cell, items):
    dims = _Dims(items)
    dims.cell = cell
    return dims


def _as_array(name, value):
    """The array a public entry received, never a silently converted one: NumPy arrays (and objects with
    ``__array__``, such as torch or JAX arrays, viewed as NumPy arrays); no lists, scalars, np.matrix (whose
    ``*`` is a matrix product) or masked arrays (whose mask would be dropped)."""
    if isinstance(value, (np.matrix, np.ma.MaskedArray)):
        raise InputError(f"{name}: got {type(value).__module__}.{type(value).__name__}, expected a plain "
                         "numpy.ndarray (np.asarray(...) if you mean the raw values)")
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__array__") and not isinstance(value, (list, tuple, np.generic)):
        return np.asarray(value)
    raise InputError(f"{name}: expected a NumPy array, got {type(value).__name__} "
                     "(lists, tuples and scalars are not converted)")


def prepare(sig: Signature, params, sequence: dict, initial: dict):
    """Validate a forward call. Returns (params, sequences, initial states, dims) with every shape
    checked against the spec and dims bound (T, B and each dimension of the spec).

    Policy: T = 0 and B = 0 are allowed (empty outputs; the final states are the initial ones); every
    dimension of the spec (D, H, ...) must be at least 1. Sequences are time-major (T, B, ...). A
    batch-major (B, T, ...) sequence is caught, with a hint, when an initial state or a second sequence
    (a mask, a target) pins B or T; with every initial state omitted, or with T = B, it cannot be told
    from a valid call (the parameters fix only the feature sizes)."""
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
        raise InputError(f"{first}: got dtype {dtype}, {_DTYPE_HELP}")

    dims = _make_dims(sig.cell, {"1": 1})  # "1": the shape of one value per sample

    def hint(size, e):
        """A T or B mismatch that swapping T and B would resolve: say that a sequence may be batch-major."""
        x = arrays[first]
        if e in ("T", "B") and x.shape[0] != x.shape[1] and size == dims["B" if e == "T" else "T"]:
            return (f"; {first} has shape {tuple(x.shape)}: is it batch-major (B, T, ...)? The reference expects "
                    "time-major (T, B, ...): pass np.swapaxes(seq, 0, 1)")
        return ""

    def bind(label, a, expected):
        """expected: tuple of dim names or ints; binds names on first sight."""
        if a.dtype != dtype:
            if not _dtype_ok(a.dtype):
                raise InputError(f"{label}: got dtype {a.dtype}, {_DTYPE_HELP}")
            raise InputError(f"{label}: dtype {a.dtype} differs from {first}'s {dtype}; all arrays of a call "
                             "must share one dtype (nothing is cast silently)")
        want = tuple(dims.get(e, e) if isinstance(e, str) else e for e in expected)
        if a.ndim != len(expected):
            raise InputError(f"{label}: got {_describe(a)}, expected shape {_shape_text(expected, dims)}")
        for size, e in zip(a.shape, expected):
            if isinstance(e, str):
                if e in dims and dims[e] != size:
                    raise InputError(f"{label}: got {_describe(a)}, expected shape {_shape_text(expected, dims)} "
                                     f"({e} = {dims[e]} from earlier arrays){hint(size, e)}")
                if size == 0 and e not in ("T", "B"):
                    raise InputError(f"{label}: got {_describe(a)}, expected shape {_shape_text(expected, dims)} "
                                     f"with {e} >= 1 (only T and B may be 0)")
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
    Missing cotangents are zeros. The cache must come from this cell's forward."""
    _check_cache(sig, cache)
    dims, dtype = cache["dims"], cache["dtype"]
    T, B = dims["T"], dims["B"]
    out_shape = (T, B) + tuple(dims[d] for d in sig.output_dims)
    if dy is None:
        dy = np.zeros(out_shape, dtype=dtype)
    else:
        dy = _as_array("dy", dy)
        if dy.shape != out_shape or dy.dtype != dtype:
            raise InputError(f"dy: got {_describe(dy)}, expected shape {out_shape} and dtype {dtype} "
                             f"(like y of the forward pass)")
    if d_final is not None and not isinstance(d_final, dict):
        raise InputError(f"d_final: expected a dict {{state: array}} or None, got {type(d_final).__name__}; "
                         f"the states of {sig.cell!r} are {list(sig.states)}")
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


def _check_cache(sig: Signature, cache):
    if not isinstance(cache, dict) or "dims" not in cache or "dtype" not in cache:
        raise InputError(f"cache: expected the cache returned by {sig.cell}.forward(), got {type(cache).__name__}"
                         + (f" with keys {sorted(cache)[:8]}" if isinstance(cache, dict) else ""))
    origin = getattr(cache["dims"], "cell", None)
    if origin is not None and origin != sig.cell:
        raise InputError(f"cache: made by the forward of cell {origin!r}, expected one from {sig.cell!r}.forward()")
    needed = [k for k in list(sig.parameters) + list(sig.states) + list(sig.inputs) if k not in cache]
    if needed:
        raise InputError(f"cache: missing {needed}; expected the cache returned by {sig.cell}.forward()")


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
    """Index of the first NaN or Inf of a (C order), or None. Cheap when everything is finite."""
    if a.dtype == object or a.size == 0 or np.isfinite(a).all():
        return None
    return tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])


def _per_step(sig: Signature, cache: dict, T: int, B: int):
    """The cached arrays that hold one slice per time step (T slots, or T + 1 for states), in the order
    the forward computed them; stacked parameter matrices and other per-call values are left out."""
    skip = {"dims", "dtype"} | set(sig.inputs) | set(sig.parameters)
    out = []
    for name, arr in cache.items():
        slots = T + 1 if name in sig.states else T
        if name in skip or not isinstance(arr, np.ndarray) or arr.ndim < 2 or arr.shape[:2] != (slots, B):
            continue
        out.append((name, arr, 1 if name in sig.states else 0))
    return out


def _forward_report(sig: Signature, cache: dict):
    """Where the first non-finite value of a forward pass is (inputs, parameters, initial states, then
    step by step in equation order), or None."""
    dims = cache["dims"]
    for name in sig.inputs:
        where = _first_nonfinite(cache[name])
        if where is not None:
            return f"input {name} is non-finite at index {where} (t, b, ...)"
    for name in sig.parameters:
        where = _first_nonfinite(cache[name])
        if where is not None:
            return f"parameter {name} is non-finite at index {where}"
    for name in sig.states:
        where = _first_nonfinite(cache[name][0])
        if where is not None:
            return f"initial state {name}0 is non-finite at index {where} (b, ...)"
    per_step = [item for item in _per_step(sig, cache, dims["T"], dims["B"])
                if _first_nonfinite(item[1]) is not None]  # whole arrays first: cheap when all is finite
    for t in range(dims["T"]):
        for name, arr, offset in per_step:
            where = _first_nonfinite(arr[t + offset])
            if where is not None:
                return (f"first non-finite value in the forward pass: {name} at step t={t} (0-based), "
                        f"index {where} (b, ...)")
    return None


def finish_forward(sig: Signature, cache: dict, nonfinite):
    """Apply the non-finite policy after a forward pass. 'propagate' costs nothing (no scan). With 'raise',
    the arrays are scanned in the order they were computed (inputs and parameters first, then step by
    step in equation order), so the error names the first place a NaN or Inf appeared."""
    _check_policy(nonfinite)
    if nonfinite == "propagate":
        return
    report = _forward_report(sig, cache)
    if report is not None:
        raise NonFiniteError(f"{sig.cell}: {report}")


def finish_backward(sig: Signature, cache: dict, grads: dict, nonfinite, dy=None, d_final=None):
    """Apply the non-finite policy to a backward pass. 'propagate' costs nothing (no scan). With 'raise'
    the error names a non-finite cotangent given to backward (dy at (t, b, ...), or d_final[state]);
    else, when a gradient is non-finite, that gradient and, if there is one, the first non-finite value
    of the forward pass that caused it."""
    _check_policy(nonfinite)
    if nonfinite == "propagate":
        return
    if dy is not None:
        where = _first_nonfinite(dy)
        if where is not None:
            raise NonFiniteError(f"{sig.cell}: cotangent dy is non-finite at index {where} (t, b, ...)")
    if d_final is not None:
        for name, a in d_final.items():
            where = _first_nonfinite(a)
            if where is not None:
                raise NonFiniteError(f"{sig.cell}: cotangent d_final[{name!r}] is non-finite at index {where} (b, ...)")
    bad = [(name, where) for name, where in ((n, _first_nonfinite(np.asarray(g))) for n, g in grads.items())
           if where is not None]
    if not bad:
        return
    name, where = bad[0]
    text = f"{sig.cell}: gradient {name!r} is non-finite at index {where}"
    report = _forward_report(sig, cache)
    if report is not None:
        text += f"; the forward pass already was: {report}"
    raise NonFiniteError(text)
