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
"""

from __future__ import annotations

import numpy as np

from .cases import SHAPES, Instance, loss, random_instance, rel_error, run
from .tolerances import tolerance

CS_STEP = 1e-30
FD_STEP = 1e-6


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
    0) / max |want| (absolute when want is all zero), and est's share of that scale."""
    got, want, est = np.asarray(got, float), np.asarray(want, float), np.asarray(est, float)
    if got.shape != want.shape:
        return float("inf"), 0.0
    if want.size == 0:
        return 0.0, 0.0
    scale = float(np.max(np.abs(want))) or 1.0
    err = float(np.max(np.maximum(np.abs(got - want) - est, 0.0))) / scale
    return (err if np.isfinite(err) else float("inf")), float(np.max(est)) / scale


def check_derivatives(module, method: str, shapes=None, seed: int = 0) -> dict:
    """method: "complex_step" or "finite_difference". Returns {"error": max error, "worst": where}."""
    shapes = shapes or SHAPES
    if method == "finite_difference" and getattr(module, "STOP_GRADIENT", False):
        return {"skipped": "not applicable: the cell's gradient is that of a truncated objective "
                           "(stop_gradient), which finite differences cannot see; complex step checks it"}
    tol = tolerance("finite_difference", "float64")
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
        where = "; ".join(filter(None, [where, (
            f"{unresolved} of {compared} comparisons below the resolution of finite differences (their estimated "
            f"error exceeds {tol:g} of the derivative's scale): complex step checks those")]))
    return {"error": worst, "worst": where}


def _comparisons(module, method, shapes, seed):
    """(error beyond the estimate, the estimate's share of the scale, where) for every comparison."""
    # per entry on the smallest shape
    inst = random_instance(module, shapes[0], seed)
    _, _, grads = run(module, inst)
    for gkey, holder, key in inst.arguments():
        g = np.asarray(grads[gkey])
        numeric, est = np.empty(holder[key].shape), np.empty(holder[key].shape)
        for idx in np.ndindex(holder[key].shape):
            e = np.zeros(holder[key].shape)
            e[idx] = 1.0
            numeric[idx], est[idx] = _derivative(module, inst, holder, key, e, method)
        yield (*_excess(g, numeric, est), f"{gkey} (every entry, shape {shapes[0]})")
    # one random direction per argument on every shape
    rng = np.random.default_rng(seed + 1)
    for k, shape in enumerate(shapes):
        inst = random_instance(module, shape, seed + 10 + k)
        _, _, grads = run(module, inst)
        for gkey, holder, key in inst.arguments():
            v = rng.standard_normal(holder[key].shape)
            g = np.asarray(grads[gkey])
            if g.shape != v.shape:
                yield float("inf"), 0.0, f"{gkey}: gradient shape {g.shape} != {v.shape}"
                continue
            numeric, est = _derivative(module, inst, holder, key, v, method)
            denom = float(np.linalg.norm(g) * np.linalg.norm(v)) or 1.0
            err = max(abs(numeric - float(np.sum(g * v))) - est, 0.0) / denom
            yield (err if np.isfinite(err) else float("inf")), est / denom, f"{gkey} (random direction, shape {shape})"


def check_float32(module, shapes=None, seed: int = 0) -> dict:
    """float32 forward and backward against float64 on the same instances; dtypes must stay float32."""
    shapes = shapes or SHAPES
    worst, where = 0.0, ""
    try:
        for k, shape in enumerate(shapes):
            inst = random_instance(module, shape, seed + 20 + k)
            y64, f64, g64 = run(module, inst)
            y32, f32, g32 = run(module, inst.astype(np.float32))
            pairs = [("y", y32, y64)] + [(f"{s}_T", f32[s], f64[s]) for s in f64] + [
                (f"grad {k_}", g32[k_], g64[k_]) for k_ in g64]
            for label, a, b in pairs:
                if a.dtype != np.float32:
                    return {"error": float("inf"), "worst": f"{label} came back as {a.dtype}, not float32"}
                err = rel_error(a, b)
                if err > worst:
                    worst, where = err, f"{label} (shape {shape})"
    except Exception as exc:
        return {"error": float("inf"), "worst": f"{type(exc).__name__}: {exc}"}
    return {"error": worst, "worst": where}
