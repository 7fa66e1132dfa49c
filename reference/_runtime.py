"""What the generated reference modules share: elementwise functions and input validation.

Hand-written, and deliberately free of any gradient formula: every derivative lives in the generated
modules next to this file, derived from the spec.

Dtypes: float32, float64 and complex128 (complex128 is for complex-step derivative checks); all
arrays of one call share one dtype, nothing is cast or broadcast silently. Object arrays of SymPy
expressions are accepted only inside ``with symbolic():`` (the unrolled symbolic check).
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import functools
import linecache
import math as _math  # private aliases: the runtime's public names are reserved in specs (spec.cells)
import numbers as _numbers
from dataclasses import dataclass
from dataclasses import field as _field

import numpy as np

NUMERIC_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.complex128))
_SYMBOLIC = [False]


# The SymPy function behind each runtime function, for object arrays of SymPy expressions: registered by
# lstm_spec.derivations.functions when it is imported (the runtime sits below the derivation: it never
# imports it; see tests/house/test_layering.py).
_SYMPY_FUNCTIONS: dict = {}


def _sympy_function(name: str):
    try:
        return _SYMPY_FUNCTIONS[name]
    except KeyError:
        raise TypeError(f"{name} of an object array (SymPy expressions) needs lstm_spec.derivations imported: it "
                        "registers the runtime's symbolic functions") from None


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
        Sigmoid = _sympy_function("Sigmoid")

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
        StopGradient = _sympy_function("StopGradient")

        return _elementwise(StopGradient, z)
    if np.iscomplexobj(z):
        return z.real.astype(z.dtype)
    return z.copy()


def exp(z):
    if z.dtype == object:
        Exp = _sympy_function("Exp")

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
        Rsqrt = _sympy_function("Rsqrt")

        return _elementwise(Rsqrt, z)
    return 1 / np.sqrt(z)


def logsumexp(z):
    """log sum_k exp(z_k) over the last axis, shifted by the largest real part: no overflow, and
    analytic in z (the shift is a constant), so complex-step derivatives work."""
    if z.dtype == object:
        LogSumExpN = _sympy_function("LogSumExpN")

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

        Clip = _sympy_function("Clip")

        b = sympy.Rational(repr(float(bound))) if isinstance(bound, _numbers.Real) else bound  # or a constant's symbol
        return _elementwise(lambda v: Clip(v, b), z)
    inside = np.abs(z.real) <= bound
    return np.where(inside, z, np.sign(z.real) * bound).astype(z.dtype, copy=False)


def clip_mask(z, bound):
    """The derivative of clip: 1 where |z| <= bound (kinks included), else 0."""
    if z.dtype == object:
        import sympy

        ClipMask = _sympy_function("ClipMask")

        b = sympy.Rational(repr(float(bound))) if isinstance(bound, _numbers.Real) else bound
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
    constants: dict = _field(default_factory=dict)  # the spec's [constants]: name -> default value
    positive_constants: tuple = ()  # the constants used as clip bounds: every value given must be > 0


def _describe(a):
    return f"shape {tuple(a.shape)} and dtype {a.dtype}"


def _dtype_ok(dtype):
    return dtype in NUMERIC_DTYPES or (dtype == np.dtype(object) and _SYMBOLIC[-1])


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
    ``*`` is a matrix product) or masked arrays (whose mask would be dropped). An object whose conversion
    fails (a torch tensor that requires grad or lives on the meta device, a broken ``__array__``) is an
    InputError naming the argument, with the library's reason."""
    if isinstance(value, (np.matrix, np.ma.MaskedArray)):
        raise InputError(f"{name}: got {type(value).__module__}.{type(value).__name__}, expected a plain "
                         "numpy.ndarray (np.asarray(...) if you mean the raw values)")
    if isinstance(value, np.ndarray):
        return value
    try:
        convertible = hasattr(value, "__array__") and not isinstance(value, (list, tuple, np.generic))
        if convertible:
            return np.asarray(value)
    except Exception as exc:  # the library's own refusal: one line naming the argument instead
        raise unreadable(name, exc) from exc
    raise InputError(f"{name}: expected a NumPy array, got {type(value).__name__} "
                     "(lists, tuples and scalars are not converted)")


def unreadable(name, exc):
    """The InputError for an argument whose conversion to a NumPy array failed (exc: the library's error)."""
    reason = (str(exc).strip().splitlines() or [""])[0]
    return InputError(f"{name}: could not be read as a NumPy array ({type(exc).__name__}: {reason}); pass a NumPy "
                      "array (a torch tensor: t.detach().cpu().numpy())")


def _check_param_names(sig: Signature, params):
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


@dataclass
class _Given:
    """One array given to forward: what it is (an input, a parameter or an initial state), how the errors
    name it, the array and the dimension names of its shape."""

    kind: str  # "seq", "param" or "init"
    name: str
    label: str
    a: np.ndarray
    expected: tuple


_PRIORITY = {"param": 0, "seq": 1, "init": 2}  # who decides a dimension the arrays disagree on, on a tie


def prepare(sig: Signature, params, sequence: dict, initial: dict):
    """Validate a forward call. Returns (params, sequences, initial states, dims) with every shape checked
    against the spec and dims bound (T, B and each dimension of the spec); the arrays returned are copies
    (C-ordered, same dtype), so nothing forward keeps aliases the caller's arrays.

    Policy: T = 0 and B = 0 are allowed (empty outputs; the final states are the initial ones); every
    dimension of the spec (D, H, ...) must be at least 1. Sequences are time-major (T, B, ...): the first
    sequence fixes T and B. Every other dimension is what most of the arrays that carry it say (a tie goes
    to the parameters), so the array that disagrees is the one named. A batch-major (B, T, ...) sequence is
    caught, with a hint, when an initial state or a second sequence (a mask, a target) pins B or T; with
    every initial state omitted, or with T = B, it cannot be told from a valid call (the parameters fix only
    the feature sizes)."""
    _check_param_names(sig, params)
    given = [_Given("seq", n, n, _as_array(n, v), ("T", "B") + tuple(sig.inputs[n])) for n, v in sequence.items()]
    first, dtype = given[0].label, given[0].a.dtype
    if not _dtype_ok(dtype):
        raise InputError(f"{first}: got dtype {dtype}, {_DTYPE_HELP}")
    given += [_Given("param", n, f"params[{n!r}]", _as_array(f"params[{n!r}]", params[n]), tuple(d))
              for n, d in sig.parameters.items()]
    given += [_Given("init", n, f"{n}0", _as_array(f"{n}0", v), ("B",) + tuple(sig.states[n]))
              for n, v in initial.items() if v is not None]
    for g in given:
        a = g.a
        if a.dtype != dtype or a.ndim != len(g.expected) or 0 in a.shape:
            _check_form(g, dtype, first)
    dims = _first_sight(sig.cell, given)  # the arrays agree (the usual case): no vote needed
    if any(g.a.shape != tuple(dims[e] if isinstance(e, str) else e for e in g.expected) for g in given):
        dims = _bind_dims(sig.cell, given)
        for g in given:
            _check_sizes(g, dims, given)
    out = {"seq": {}, "param": {}, "init": {}}
    for g in given:
        out[g.kind][g.name] = g.a.copy()  # C order, same dtype: the one copy of what the caller gave
    for name, value in initial.items():
        if value is None:
            shape = ("B",) + tuple(sig.states[name])
            if any(d not in dims for d in shape):  # pragma: no cover - every state dimension is in some parameter
                raise InputError(f"{name}0: cannot infer dimension(s) {[d for d in shape if d not in dims]}; "
                                 f"pass {name}0 explicitly")
            out["init"][name] = np.zeros(tuple(dims[d] for d in shape), dtype=dtype)
    _note(sig, given=(out["seq"], out["param"], out["init"]))
    return out["param"], out["seq"], {n: out["init"][n] for n in initial}, dims


def _check_form(g: _Given, dtype, first):
    """dtype (one for the whole call), number of axes, and no spec dimension of size 0."""
    a = g.a
    if a.dtype != dtype:
        if not _dtype_ok(a.dtype):
            raise InputError(f"{g.label}: got dtype {a.dtype}, {_DTYPE_HELP}")
        raise InputError(f"{g.label}: dtype {a.dtype} differs from {first}'s {dtype}; all arrays of a call "
                         "must share one dtype (nothing is cast silently)")
    if a.ndim != len(g.expected):
        raise InputError(f"{g.label}: got {_describe(a)}, expected shape {_shape_text(g.expected, {})}")
    for size, e in zip(a.shape, g.expected, strict=True):
        if isinstance(e, str) and size == 0 and e not in ("T", "B"):
            raise InputError(f"{g.label}: got {_describe(a)}, expected shape {_shape_text(g.expected, {})} "
                             f"with {e} >= 1 (only T and B may be 0)")


def _first_sight(cell, given):
    """Every dimension bound to the first size seen for it (T and B from the first sequence)."""
    x = given[0].a
    dims = _make_dims(cell, {"1": 1, "T": x.shape[0], "B": x.shape[1]})
    for g in given:
        for size, e in zip(g.a.shape, g.expected, strict=True):
            if e not in dims and isinstance(e, str):
                dims[e] = size
    return dims


def _bind_dims(cell, given):
    """T and B from the first sequence; every other dimension by a vote of the arrays that carry it (one
    vote per array), a tie going to the parameters, then the sequences. Keys in order of first sight."""
    x = given[0].a
    bound = {"1": 1, "T": x.shape[0], "B": x.shape[1]}
    votes = {}
    for g in sorted(given, key=lambda g: _PRIORITY[g.kind]):
        for e in dict.fromkeys(e for e in g.expected if isinstance(e, str) and e not in bound):
            size = g.a.shape[g.expected.index(e)]
            votes.setdefault(e, {}).setdefault(size, 0)
            votes[e][size] += 1
    bound.update({e: max(counts, key=counts.get) for e, counts in votes.items()})
    order = ["1", "T", "B"] + [e for g in given for e in g.expected if isinstance(e, str)]
    return _make_dims(cell, {e: bound[e] for e in dict.fromkeys(order)})


def _check_sizes(g: _Given, dims, given):
    """Every axis of g against the bound dimensions; a mismatch names g, the size decided and who decided it."""
    for size, e in zip(g.a.shape, g.expected, strict=True):
        want = dims[e] if isinstance(e, str) else e
        if size == want:
            continue
        text = f"{g.label}: got {_describe(g.a)}, expected shape {_shape_text(g.expected, dims)}"
        if isinstance(e, str):
            text += f" {_decided_by(e, dims[e], given)}{_batch_major_hint(e, size, dims, given[0])}"
        raise InputError(text)


def _decided_by(e, size, given):
    """'(D = 3 from params['W_f'] of shape (4, 3) and 3 other arrays)': who fixed dimension e."""
    if e in ("T", "B"):
        agree = [given[0]]
    else:
        agree = [g for g in sorted(given, key=lambda g: _PRIORITY[g.kind])
                 if e in g.expected and g.a.shape[g.expected.index(e)] == size]
    if not agree:
        return f"({e} = {size}, fixed by the spec)"
    others = len(agree) - 1
    more = f" and {others} other array{'s' if others > 1 else ''}" if others else ""
    return f"({e} = {size} from {agree[0].label} of shape {tuple(agree[0].a.shape)}{more})"


def _batch_major_hint(e, size, dims, first: _Given):
    """A T or B mismatch that swapping T and B would resolve: say that a sequence may be batch-major."""
    x = first.a
    if e in ("T", "B") and x.shape[0] != x.shape[1] and size == dims["B" if e == "T" else "T"]:
        return (f"; {first.label} has shape {tuple(x.shape)}: is it batch-major (B, T, ...)? The reference expects "
                "time-major (T, B, ...): pass np.swapaxes(seq, 0, 1)")
    return ""


def prepare_constants(sig: Signature, constants):
    """The constants of a forward call: the spec's defaults (sig.constants), overridden by ``constants`` (a dict
    name -> number, or None). An unknown name, a value that is not a real finite number or a clip bound that
    is not positive is an InputError naming the cell's constants. Values become Python floats (they never change
    an array's dtype). Inside ``with symbolic():`` a value may also be a symbol (the symbolic checks)."""
    out = dict(sig.constants)
    if constants is None:
        return out
    known = f"the constants of {sig.cell!r} are {sorted(sig.constants)}" if sig.constants else \
        f"cell {sig.cell!r} has no constants"
    if not isinstance(constants, dict):
        raise InputError(f"constants: expected a dict {{name: number}} or None, got {type(constants).__name__}; "
                         f"{known}")
    unknown = [k for k in constants if k not in sig.constants]
    if unknown:
        raise InputError(f"constants: unknown name(s) {unknown}; {known}")
    for name, value in constants.items():
        out[name] = _constant_value(sig, name, value)
    return out


def _constant_value(sig: Signature, name, value):
    if _SYMBOLIC[-1] and not isinstance(value, (_numbers.Number, np.generic)):
        return value  # a symbol of the symbolic checks
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (_numbers.Real, np.integer, np.floating)) \
            or not _math.isfinite(value):
        raise InputError(f"constants[{name!r}]: expected a finite real number, got {value!r:.60}")
    if name in sig.positive_constants and not value > 0:
        raise InputError(f"constants[{name!r}]: a clip bound must be positive, got {value!r}")
    return float(value)


def cached_constants(sig: Signature, cache: dict, constants=None) -> dict:
    """backward's constants: those its forward ran with (kept in the cache). Constants given to backward as well
    must be the same: the gradient is that of the forward that made the cache."""
    used = cache.get("constants")
    used = dict(sig.constants) if used is None else used
    if constants is not None:
        given = prepare_constants(sig, constants)
        differ = sorted(k for k in given if given[k] is not used[k] and given[k] != used[k])
        if differ:
            raise InputError(f"constants: backward got {', '.join(f'{k} = {given[k]!r}' for k in differ)} but the "
                             f"forward that made this cache ran with {', '.join(f'{k} = {used[k]!r}' for k in differ)}"
                             "; pass the forward's constants (or none: backward uses them)")
    return used


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
    _note(sig, backward=(cache, dy, out))
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


def _given_report(sig: Signature, seq: dict, params: dict, init: dict):
    """Which array given to forward holds the first NaN or Inf (inputs, parameters, initial states), or None."""
    for name in sig.inputs:
        where = _first_nonfinite(seq[name])
        if where is not None:
            return f"input {name} is non-finite at index {where} (t, b, ...)"
    for name in sig.parameters:
        where = _first_nonfinite(params[name])
        if where is not None:
            return f"parameter {name} is non-finite at index {where}"
    for name in sig.states:
        where = _first_nonfinite(init[name])
        if where is not None:
            return f"initial state {name}0 is non-finite at index {where} (b, ...)"
    return None


def _forward_report(sig: Signature, cache: dict):
    """Where the first non-finite value of a forward pass is (inputs, parameters, initial states, then
    step by step in equation order), or None."""
    dims = cache["dims"]
    report = _given_report(sig, cache, cache, {s: cache[s][0] for s in sig.states})
    if report is not None:
        return report
    per_step = [item for item in _per_step(sig, cache, dims["T"], dims["B"])
                if _first_nonfinite(item[1]) is not None]  # whole arrays first: cheap when all is finite
    for t in range(dims["T"]):
        for name, arr, offset in per_step:
            where = _first_nonfinite(arr[t + offset])
            if where is not None:
                return (f"first non-finite value in the forward pass: {name} at step t={t} (0-based), "
                        f"index {where} (b, ...)")
    return None


def _cotangent_report(dy, d_final):
    """Which cotangent given to backward holds a NaN or Inf (dy, then d_final by state), or None."""
    if dy is not None:
        where = _first_nonfinite(dy)
        if where is not None:
            return f"cotangent dy is non-finite at index {where} (t, b, ...)"
    for name, a in (d_final or {}).items():
        where = _first_nonfinite(a)
        if where is not None:
            return f"cotangent d_final[{name!r}] is non-finite at index {where} (b, ...)"
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
    report = _cotangent_report(dy, d_final)
    if report is not None:
        raise NonFiniteError(f"{sig.cell}: {report}")
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


# ----------------------------------------------------------------------------------------- the guard
_CALL = contextvars.ContextVar("lstm_spec_reference_call", default=None)
_STATEMENT_CHARS = 120


def guarded(fn):
    """The decorator of every generated ``forward`` and ``backward``: the call runs in ``guard(nonfinite)``."""

    @functools.wraps(fn)
    def call(*args, nonfinite="propagate", **kwargs):
        with guard(nonfinite):
            return fn(*args, nonfinite=nonfinite, **kwargs)

    return call


def guard(nonfinite):
    """The context every generated forward and backward body runs in (``with guard(nonfinite):``). It checks
    the policy first. With 'propagate' it changes nothing (NumPy's error state is the caller's). With 'raise'
    the body runs under ``np.errstate(over, invalid, divide = 'raise')`` (underflow to 0 is correct rounding
    and ignored), so a NaN or Inf born in an intermediate that no cache keeps is caught where it is made;
    the FloatingPointError becomes a NonFiniteError that names, in this order: a non-finite input, parameter
    or initial state (forward) or cotangent (backward), else the pass, the step t and the statement where it
    appeared (and, in backward, the first non-finite value of the forward pass, if any)."""
    _check_policy(nonfinite)
    return _Guard(nonfinite == "raise")


class _Guard:
    """One generated call: what prepare / prepare_cotangents validated (to name a cause) and the error state."""

    __slots__ = ("_errstate", "_token", "backward", "given", "raising", "sig")

    def __init__(self, raising):
        self.raising, self.sig, self.given, self.backward = raising, None, None, None

    def __enter__(self):
        self._token = _CALL.set(self if self.raising else None)  # a call nested in a raising one notes nothing there
        if self.raising:
            self._errstate = np.errstate(over="raise", invalid="raise", divide="raise", under="ignore")
            self._errstate.__enter__()
        return self

    def __exit__(self, kind, exc, tb):
        if self.raising:
            self._errstate.__exit__(None, None, None)
        _CALL.reset(self._token)
        if self.raising and isinstance(exc, FloatingPointError) and not isinstance(exc, NonFiniteError):
            raise NonFiniteError(self._report(exc, tb)) from exc
        return False

    def _report(self, exc, tb):
        frame, lineno = _generated_frame(tb)
        sig = self.sig if self.sig is not None else getattr(frame, "f_globals", {}).get("SIGNATURE")
        cell = getattr(sig, "cell", "reference")
        if self.backward is None:
            cause = _given_report(sig, *self.given) if self.given is not None else None
            if cause is not None:
                return f"{cell}: {cause}"
            return f"{cell}: {_site(exc, frame, lineno, 'forward')}"
        cache, dy, d_final = self.backward
        cause = _cotangent_report(dy, d_final)
        if cause is not None:
            return f"{cell}: {cause}"
        text = f"{cell}: {_site(exc, frame, lineno, 'backward')}"
        report = _forward_report(sig, cache)
        return text + (f"; the forward pass already was: {report}" if report is not None else "")


def _note(sig, given=None, backward=None):
    """prepare / prepare_cotangents: tell the guard of the call (if 'raise') what the call was given."""
    g = _CALL.get()
    if g is not None:
        g.sig, g.given, g.backward = sig, given, backward


def _generated_frame(tb):
    """The innermost frame of a generated forward/backward in a traceback, and its line, or (None, 0)."""
    found = (None, 0)
    while tb is not None:
        f = tb.tb_frame
        if isinstance(f.f_globals.get("SIGNATURE"), Signature) and f.f_code.co_name in ("forward", "backward"):
            found = (f, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _site(exc, frame, lineno, phase):
    """Where a FloatingPointError of a generated pass happened: the value the failing statement makes, the
    step, the index of its first NaN or Inf, then NumPy's reason and the statement, as far as they are known:
    'first non-finite value in the forward pass: sum_loss at step t=2 (0-based), index (1, 0) (overflow
    encountered in multiply in `sum_loss = unit_sum(e[t] * e[t])`)'."""
    head = f"first non-finite value in the {phase} pass: "
    if frame is None:
        return head + str(exc)
    stmt, step = _statement(frame, lineno)
    at = f" at step t={step} (0-based)" if step is not None else ""
    shown = stmt if len(stmt) <= _STATEMENT_CHARS else stmt[:_STATEMENT_CHARS - 3] + "..."
    target, where = _result_of(stmt, frame)
    if where is not None:
        return head + f"{target}{at}, index {where} ({exc} in `{shown}`)"
    return head + f"{exc}{at} in `{shown}`"


def _statement(frame, lineno):
    """The source line at lineno of a generated function, and the step t when the line is inside the loop
    over t (read from the frame), else None."""
    lines = linecache.getlines(frame.f_code.co_filename, frame.f_globals)
    if not 0 < lineno <= len(lines):
        return "", None
    line = lines[lineno - 1]
    indent = len(line) - len(line.lstrip())
    for k in range(lineno - 2, frame.f_code.co_firstlineno - 1, -1):  # outwards through the enclosing blocks
        above = lines[k]
        level = len(above) - len(above.lstrip())
        if above.strip() and level < indent:
            if above.lstrip().startswith("for t in "):
                t = frame.f_locals.get("t")
                return line.strip(), (int(t) if isinstance(t, (int, np.integer)) else None)
            indent = level
    return line.strip(), None


def _result_of(stmt, frame):
    """The name a generated statement assigns (``name = ...``, ``name[t] = ...`` or ``f(..., out=name[t])``)
    and the index of the first NaN or Inf of its value, evaluated again in the failing frame with NumPy's
    errors ignored; (None, None) when the statement is not of these forms or its value is finite."""
    try:
        node = ast.parse(stmt).body[0]
    except (SyntaxError, IndexError):
        return None, None
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target, expr = node.targets[0], node.value
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        outs = [k.value for k in node.value.keywords if k.arg == "out"]
        if not outs:
            return None, None
        target, expr = outs[0], node.value
    else:
        return None, None
    while isinstance(target, ast.Subscript):
        target = target.value
    if not isinstance(target, ast.Name):
        return None, None
    try:
        with np.errstate(all="ignore"):
            value = eval(compile(ast.Expression(expr), "<generated statement>", "eval"),
                         frame.f_globals, dict(frame.f_locals))
    except Exception:  # a statement that cannot be evaluated again: its name and reason are still given
        return None, None
    if not isinstance(value, np.ndarray):
        return None, None
    return target.id, _first_nonfinite(value)
