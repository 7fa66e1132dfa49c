"""Numeric checks of a generated module (c): complex-step and central finite-difference derivatives of
the scalar loss L = <dy, y> + sum_s <d_final[s], s_T>, against the gradients backward() returns; and
float32 against float64.

Two kinds of comparison, both reported as normwise relative errors:
- per entry, on the smallest shape: every entry of every gradient by its own perturbation;
- per argument, on every shape: one random direction v per argument, <grad, v> against the
  directional derivative, error |cs - <g, v>| / (|g|_2 |v|_2) (scale-aware: no division by a
  directional derivative that happens to be near 0).
"""

from __future__ import annotations

import numpy as np

from .cases import SHAPES, Instance, loss, random_instance, rel_error, run

CS_STEP = 1e-30
FD_STEP = 1e-6


def _perturbed(inst: Instance, holder: dict, key: str, delta) -> Instance:
    new = Instance(dict(inst.params), dict(inst.seq), dict(inst.init), inst.dy, inst.d_final, inst.dims)
    target = {id(inst.params): new.params, id(inst.seq): new.seq, id(inst.init): new.init}[id(holder)]
    target[key] = holder[key] + delta
    return new


def _derivative(module, inst: Instance, holder, key, direction, method: str) -> float:
    if method == "complex_step":
        c = inst.astype(np.complex128)
        holder_c = {id(inst.params): c.params, id(inst.seq): c.seq, id(inst.init): c.init}[id(holder)]
        p = _perturbed(c, holder_c, key, 1j * CS_STEP * direction)
        return float(np.imag(loss(module, p)) / CS_STEP)
    scale = FD_STEP * max(1.0, float(np.max(np.abs(holder[key]))))
    plus = loss(module, _perturbed(inst, holder, key, scale * direction))
    minus = loss(module, _perturbed(inst, holder, key, -scale * direction))
    return float((plus - minus) / (2 * scale))


def check_derivatives(module, method: str, shapes=None, seed: int = 0) -> dict:
    """method: "complex_step" or "finite_difference". Returns {"error": max error, "worst": where}."""
    shapes = shapes or SHAPES
    if method == "finite_difference" and getattr(module, "STOP_GRADIENT", False):
        return {"skipped": "not applicable: the cell's gradient is that of a truncated objective "
                           "(stop_gradient), which finite differences cannot see; complex step checks it"}
    worst, where = 0.0, ""
    try:
        # per entry on the smallest shape
        inst = random_instance(module, shapes[0], seed)
        _, _, grads = run(module, inst)
        for gkey, holder, key in inst.arguments():
            g = np.asarray(grads[gkey])
            numeric = np.empty(holder[key].shape)
            for idx in np.ndindex(holder[key].shape):
                e = np.zeros(holder[key].shape)
                e[idx] = 1.0
                numeric[idx] = _derivative(module, inst, holder, key, e, method)
            err = rel_error(g, numeric)
            if err > worst:
                worst, where = err, f"{gkey} (every entry, shape {shapes[0]})"
        # one random direction per argument on every shape
        rng = np.random.default_rng(seed + 1)
        for k, shape in enumerate(shapes):
            inst = random_instance(module, shape, seed + 10 + k)
            _, _, grads = run(module, inst)
            for gkey, holder, key in inst.arguments():
                v = rng.standard_normal(holder[key].shape)
                g = np.asarray(grads[gkey])
                if g.shape != v.shape:
                    return {"error": float("inf"), "worst": f"{gkey}: gradient shape {g.shape} != {v.shape}"}
                analytic = float(np.sum(g * v))
                numeric = _derivative(module, inst, holder, key, v, method)
                denom = float(np.linalg.norm(g) * np.linalg.norm(v)) or 1.0
                err = abs(numeric - analytic) / denom
                if not np.isfinite(err):
                    err = float("inf")
                if err > worst:
                    worst, where = err, f"{gkey} (random direction, shape {shape})"
    except Exception as exc:  # a broken module fails the check with the reason, it does not crash it
        return {"error": float("inf"), "worst": f"{type(exc).__name__}: {exc}"}
    return {"error": worst, "worst": where}


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
