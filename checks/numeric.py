"""Numeric checks of a generated module (c): complex-step and central finite-difference derivatives of
the scalar loss L = <dy, y> + sum_s <d_final[s], s_T>, against the gradients backward() returns; and
float32 against float64.

Two kinds of comparison, both reported as normwise relative errors:
- per entry, on the smallest shape: every entry of every gradient by its own perturbation;
- per argument, on every shape: one random direction v per argument, <grad, v> against the
  directional derivative, error |cs - <g, v>| / (|g|_2 |v|_2) (scale-aware: no division by a
  directional derivative that happens to be near 0).

Finite differences carry their own error, which depends on the function, not only on the step: the
truncation error grows with the curvature (a chain of squares has huge higher derivatives), the rounding
error with |L| / step (a gradient 10^-14 times smaller than L is below what a difference of two L's can
see). Each finite-difference derivative is therefore Richardson-extrapolated from the steps h and 2h and
comes with an estimate of its error: |D(h) - D(2h)| / 3 (truncation, and the noise the two differences
show) plus the rounding error of L over the step (FD_ROUNDING in checks/tolerances.py, times L's absolute
scale, over h). What is compared with the tolerance is the error beyond that estimate, relative; a
comparison whose estimate alone exceeds the tolerance is below the resolution of finite differences and is
counted in the row's detail (complex step, which has neither error, checks it).

Complex step and float32 have no error of their own to estimate, but the backward they are compared with
has rounding error, and where it cancels it is not small relative to the result: at a saturated tanh,
1 - h^2 is computed from h = 1 - 1e-17 rounded to 1, so a gradient of 1e-17 comes back with an absolute
error at rounding level, 100 % of itself. The floor below which a difference is rounding is measured, not
assumed: the spread of the backward's gradients when every input and every elementary function's result
(the runtime's functions the module calls) is perturbed by a few units in the last place, as stochastic
rounding would (ROUNDING_NOISE in checks/tolerances.py). Where nothing cancels, that spread is ~1e-15 of
the gradient and hides nothing; where the gradient is cancelled down to rounding, it covers the rounding.
"""

from __future__ import annotations

import contextlib
import inspect

import numpy as np

from lstm_spec.spec.functions import KINDS

from .cases import SHAPES, Instance, loss, random_instance, run
from .tolerances import error_scale, rel_error, tolerance

CS_STEP = 1e-30
FD_STEP = 1e-6


# the runtime's numeric functions a generated module calls whose results carry rounding error (the exact ones,
# a copy, a clip, a 0/1 mask or a count, have none), and its matrix product
_EXACT = ("identity", "stop_gradient", "clip", "clip_mask", "unit_count")
_ROUNDED = frozenset({k.runtime_name for k in KINDS.values() if k.name not in _EXACT} | {"seq_matmul"})


@contextlib.contextmanager
def _noisy_functions(module, rel: float, rng):
    """Within the block, every rounded runtime function the module's forward and backward call returns its
    result times (1 + rel * r), r uniform in [-1, 1] per entry."""
    spaces = {id(ns): ns for ns in (inspect.unwrap(f).__globals__ for f in (module.forward, module.backward))}
    saved = []
    for ns in spaces.values():
        for name in _ROUNDED & ns.keys():
            saved.append((ns, name, ns[name]))
            ns[name] = _jittering(ns[name], rel, rng)
    try:
        yield
    finally:
        for ns, name, fn in reversed(saved):
            ns[name] = fn


def _jittering(fn, rel, rng):
    def jittered(*args, **kwargs):
        out = fn(*args, **kwargs)
        if not isinstance(out, np.ndarray) or out.dtype.kind != "f":
            return out
        factor = 1 + rel * rng.uniform(-1.0, 1.0, out.shape)
        if out.flags.writeable and out.ndim:
            np.multiply(out, factor, out=out)  # in place: the result may be a view into the module's buffers
            return out
        return out * factor
    return jittered


def rounding_noise(module, inst: Instance, rel: float, runs: int = 3, seed: int = 0) -> dict:
    """Per gradient, entrywise: ROUNDING_NOISE's factor times the largest change of the backward's gradient
    over `runs` evaluations whose inputs and rounded functions are perturbed by rel (relative, uniform)."""
    _, _, base = run(module, inst)
    rng = np.random.default_rng(seed)
    spread = {k: np.zeros(np.shape(v)) for k, v in base.items()}
    for _ in range(runs):
        jittered = inst.astype(inst.dy.dtype)
        for _, holder, key in jittered.arguments():
            if np.asarray(holder[key]).dtype.kind == "f":
                holder[key] = holder[key] * (1 + rel * rng.uniform(-1.0, 1.0, np.shape(holder[key])))
        with _noisy_functions(module, rel, rng):
            _, _, grads = run(module, jittered)
        for k in spread:
            spread[k] = np.maximum(spread[k], np.abs(np.asarray(grads[k], float) - np.asarray(base[k], float)))
    factor = tolerance("rounding_noise_factor", "any")
    # a perturbed run that overflows or turns NaN: the gradient is not determined at this precision at all
    return {k: np.where(np.isnan(v), np.inf, factor * v) for k, v in spread.items()}


def _perturbed(inst: Instance, holder: dict, key: str, delta) -> Instance:
    new = Instance(dict(inst.params), dict(inst.seq), dict(inst.init), inst.dy, inst.d_final, inst.dims)
    target = {id(inst.params): new.params, id(inst.seq): new.seq, id(inst.init): new.init}[id(holder)]
    target[key] = holder[key] + delta
    return new


def _loss_scale(module, inst: Instance) -> float:
    """The absolute scale of L: <|dy|, |y|> + sum_s <|d_final[s]|, |s_T|> (what its rounding error is relative to)."""
    y, final, _ = module.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()})
    total = float(np.sum(np.abs(inst.dy * y)))
    return total + sum(float(np.sum(np.abs(v * final[s]))) for s, v in inst.d_final.items())


def _derivative(module, inst: Instance, holder, key, direction, method: str) -> tuple[float, float]:
    """(directional derivative of L, estimate of its own error): 0 for complex step; for finite differences
    the Richardson extrapolation of the central differences D(h), D(2h) and its estimated error."""
    if method == "complex_step":
        c = inst.astype(np.complex128)
        holder_c = {id(inst.params): c.params, id(inst.seq): c.seq, id(inst.init): c.init}[id(holder)]
        p = _perturbed(c, holder_c, key, 1j * CS_STEP * direction)
        return float(np.imag(loss(module, p)) / CS_STEP), 0.0
    h = FD_STEP * max(1.0, float(np.max(np.abs(holder[key]), initial=0.0)))
    d1, d2 = (float(loss(module, _perturbed(inst, holder, key, s * direction))
                    - loss(module, _perturbed(inst, holder, key, -s * direction))) / (2 * s) for s in (h, 2 * h))
    rounding = tolerance("finite_difference_rounding", "float64") * _loss_scale(module, inst) / h
    return (4 * d1 - d2) / 3, abs(d1 - d2) / 3 + rounding


def _excess(got, want, est) -> tuple[float, float]:
    """(normwise error of got against want beyond the estimate est, the normwise scale): max(|got - want| - est,
    0) / max |want| (checks.tolerances.rel_error with est as the allowance), and est's share of that scale."""
    got, want, est = np.asarray(got, float), np.asarray(want, float), np.asarray(est, float)
    err = rel_error(got, want, allowance=est)
    return err, (float(np.max(est, initial=0.0)) / error_scale(want) if got.shape == want.shape else 0.0)


def check_derivatives(module, method: str, shapes=None, seed: int = 0) -> dict:
    """method: "complex_step" or "finite_difference". Returns {"error": max error, "worst": where}."""
    shapes = shapes or SHAPES
    if method == "finite_difference" and getattr(module, "STOP_GRADIENT", False):
        return {"skipped": "not applicable: the cell's gradient is that of a truncated objective "
                           "(stop_gradient), which finite differences cannot see; complex step checks it"}
    tol = tolerance(*_METHOD_TOLERANCE[method])
    worst, where, unresolved, compared = 0.0, "", 0, 0
    try:
        for err, share, label in _comparisons(module, method, shapes, seed):
            compared += 1
            unresolved += share > tol
            if err > worst:
                worst, where = err, label
    except Exception as exc:  # a broken module fails the check with the reason, it does not crash it
        return {"error": float("inf"), "worst": f"{type(exc).__name__}: {exc}"}
    if unresolved:
        where = "; ".join(filter(None, [where, f"{unresolved} of {compared} comparisons " + _UNRESOLVED[method]
                                        .format(tol=tol)]))
    return {"error": worst, "worst": where}


_METHOD_TOLERANCE = {"complex_step": ("complex_step", "complex128"),
                     "finite_difference": ("finite_difference", "float64")}
_UNRESOLVED = {
    "finite_difference": "below the resolution of finite differences (their estimated error exceeds {tol:g} of the "
                         "derivative's scale): complex step checks those",
    "complex_step": "below the resolution of float64 (the backward's own rounding spread exceeds {tol:g} of the "
                    "gradient's scale: the gradient is not determined at this precision)",
}


def _comparisons(module, method, shapes, seed):
    """(error beyond the estimate, the estimate's share of the scale, where) for every comparison."""
    # per entry on the smallest shape
    rel = tolerance("rounding_noise", "float64")
    inst = random_instance(module, shapes[0], seed)
    _, _, grads = run(module, inst)
    noise = rounding_noise(module, inst, rel, seed=seed)
    for gkey, holder, key in inst.arguments():
        g = np.asarray(grads[gkey])
        numeric, est = np.empty(holder[key].shape), np.empty(holder[key].shape)
        for idx in np.ndindex(holder[key].shape):
            e = np.zeros(holder[key].shape)
            e[idx] = 1.0
            numeric[idx], est[idx] = _derivative(module, inst, holder, key, e, method)
        yield (*_excess(g, numeric, est + _shaped(noise.get(gkey), g)), f"{gkey} (every entry, shape {shapes[0]})")
    # one random direction per argument on every shape
    rng = np.random.default_rng(seed + 1)
    for k, shape in enumerate(shapes):
        inst = random_instance(module, shape, seed + 10 + k)
        _, _, grads = run(module, inst)
        noise = rounding_noise(module, inst, rel, seed=seed + 10 + k)
        for gkey, holder, key in inst.arguments():
            v = rng.standard_normal(holder[key].shape)
            g = np.asarray(grads[gkey])
            if g.shape != v.shape:
                yield float("inf"), 0.0, f"{gkey}: gradient shape {g.shape} != {v.shape}"
                continue
            numeric, est = _derivative(module, inst, holder, key, v, method)
            est += float(np.sum(_shaped(noise.get(gkey), g) * np.abs(v)))
            denom = float(np.linalg.norm(g) * np.linalg.norm(v)) or 1.0
            err = max(abs(numeric - float(np.sum(g * v))) - est, 0.0) / denom
            yield (err if np.isfinite(err) else float("inf")), est / denom, f"{gkey} (random direction, shape {shape})"


def _shaped(noise, g):
    """The noise estimate of gradient g (0 where there is none of its shape: a missing or misshapen gradient
    fails on its own)."""
    if noise is None or np.shape(noise) != np.shape(g):
        return np.zeros(np.shape(g))
    return noise


def check_float32(module, shapes=None, seed: int = 0) -> dict:
    """float32 forward and backward against float64 on the same instances; dtypes must stay float32."""
    shapes = shapes or SHAPES
    worst, where = 0.0, ""
    try:
        for k, shape in enumerate(shapes):
            inst = random_instance(module, shape, seed + 20 + k)
            y64, f64, g64 = run(module, inst)
            y32, f32, g32 = run(module, inst.astype(np.float32))
            noise = rounding_noise(module, inst, tolerance("rounding_noise", "float32"), seed=seed + 20 + k)
            # (label, float32, float64, the float64 run's rounding spread: outputs have none to allow for)
            pairs = [("y", y32, y64, 0.0)] + [(f"{s}_T", f32[s], f64[s], 0.0) for s in f64] + [
                (f"grad {k_}", g32[k_], g64[k_], _shaped(noise.get(k_), g64[k_])) for k_ in g64]
            for label, a, b, est in pairs:
                if a.dtype != np.float32:
                    return {"error": float("inf"), "worst": f"{label} came back as {a.dtype}, not float32"}
                err, _ = _excess(a, b, est)
                if err > worst:
                    worst, where = err, f"{label} (shape {shape})"
    except Exception as exc:
        return {"error": float("inf"), "worst": f"{type(exc).__name__}: {exc}"}
    return {"error": worst, "worst": where}
