"""Numerical extremes: gate pre-activations up to |z| ~ 1e4 (every gate saturated) give finite outputs and
gradients with no overflow, invalid-value or division warnings, gradients that match complex step in
float64, and a float32 path that stays float32 (outputs, final states, every cached array, gradients).
Underflow (e.g. exp(-1e4) -> 0 inside logsumexp, tanh'(1e4) -> 0) is the correct rounding of a tiny value
and is not reported. Every cell of spec/."""

import importlib
import warnings

import numpy as np
import pytest

from lstm_spec.checks.cases import Instance, kinks, loss, random_instance, run
from lstm_spec.checks.tolerances import tolerance
from lstm_spec.reference import _runtime
from lstm_spec.spec import builtin_cells

CELLS = builtin_cells()
Z_MAX = 1e4
CS_STEP = 1e-30


def module(name):
    return importlib.import_module(f"lstm_spec.reference.{name}")


def strict():
    """Overflow, invalid values and divisions by zero raise; underflow to 0 is allowed."""
    return np.errstate(over="raise", invalid="raise", divide="raise", under="ignore")


def input_matrices(mod, inst):
    """The parameters that multiply the cell's input x: (H, D) matrices whose second size is x's."""
    D = inst.seq["x"].shape[-1]
    return [k for k, v in inst.params.items() if k.startswith("W") and v.ndim == 2 and v.shape[1] == D]


def extreme_instance(mod, seed=0):
    """A random instance with every parameter scaled by one factor, chosen so that the largest input
    product |W_g x| over the gates is Z_MAX: pre-activations reach ~1e4 with both signs, every gate
    saturates (sigma = 0 or 1, tanh = -1 or 1, exactly, in float64)."""
    inst = random_instance(mod, (3, 2, 3, 4), seed)
    x = inst.seq["x"]
    largest = max(float(np.max(np.abs(x @ inst.params[k].T))) for k in input_matrices(mod, inst))
    scale = Z_MAX / largest
    params = {k: v * scale for k, v in inst.params.items()}
    return Instance(params, dict(inst.seq), dict(inst.init), inst.dy, inst.d_final, inst.dims)


@pytest.mark.parametrize("name", CELLS)
def test_saturated_cells_are_finite_without_warnings(name):
    mod = module(name)
    inst = extreme_instance(mod)
    assert input_matrices(mod, inst), "the instance must drive some gate to |z| = 1e4"
    with strict(), warnings.catch_warnings():
        warnings.simplefilter("error")
        y, final, cache = mod.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()},
                                      nonfinite="raise")
        grads = mod.backward(cache, inst.dy, inst.d_final, nonfinite="raise")
    assert np.isfinite(y).all() and all(np.isfinite(v).all() for v in final.values())
    assert all(np.isfinite(g).all() for g in grads.values())
    saturated = [k for k, v in cache.items() if isinstance(v, np.ndarray) and k not in inst.params
                 and np.isin(v, (0.0, 1.0, -1.0)).any()]
    clipped = [k for k, bound in kinks(mod) if np.max(np.abs(cache[k])) > 100 * bound]
    assert saturated or clipped, "some cached gate must be exactly saturated (or its pre-activation clipped)"


@pytest.mark.parametrize("name", CELLS)
def test_saturated_gradients_match_complex_step(name):
    """One random direction per argument: |cs - <g, v>| / (max(|g|, 1) |v|) within the complex-step
    tolerance. The floor 1 (the scale of a gradient through unsaturated gates, for unit cotangents and
    inputs) is needed because a saturated gate's derivative is written through its output,
    sigma (1 - sigma), whose absolute error is ~eps: gradients of size ~1e-12 that flow only through
    saturated gates carry relative errors up to ~1e-5 (measured 5e-6 for fgr's b_o, 2e-10 for cifg_i's
    W_f), while their absolute error stays below 1e-17."""
    mod = module(name)
    inst = extreme_instance(mod, seed=1)
    # saturated gates put lstm_cell_clip's clip argument exactly on its kink (f c + i c_tilde = 1 + 1 - 1 ...):
    # backward and the complex step both take the derivative 1 there (|Re z| <= bound), so they still agree
    with strict():
        _, _, grads = run(mod, inst)
        c = inst.astype(np.complex128)
        rng = np.random.default_rng(5)
        worst, where = 0.0, ""
        for (gkey, holder, key), (_, holder_c, _) in zip(inst.arguments(), c.arguments(), strict=True):
            v = rng.standard_normal(holder[key].shape)
            saved = holder_c[key]
            holder_c[key] = saved + 1j * CS_STEP * v
            numeric = float(np.imag(loss(mod, c)) / CS_STEP)
            holder_c[key] = saved
            analytic = float(np.sum(grads[gkey] * v))
            err = abs(numeric - analytic) / (max(float(np.linalg.norm(grads[gkey])), 1.0) * np.linalg.norm(v))
            if err > worst:
                worst, where = err, gkey
    assert worst <= tolerance("complex_step", "complex128"), f"{name}: {where} off by {worst:.2e}"


@pytest.mark.parametrize("name", CELLS)
def test_float32_stays_float32_at_the_extremes(name):
    mod = module(name)
    inst = extreme_instance(mod, seed=2).astype(np.float32)
    with strict(), warnings.catch_warnings():
        warnings.simplefilter("error")
        y, final, cache = mod.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()})
        grads = mod.backward(cache, inst.dy, inst.d_final)
    arrays = [("y", y)] + [(f"final {k}", v) for k, v in final.items()]
    arrays += [(f"cache {k}", v) for k, v in cache.items() if isinstance(v, np.ndarray)]
    arrays += [(f"grad {k}", v) for k, v in grads.items()]
    wrong = [(label, a.dtype) for label, a in arrays if a.dtype != np.float32]
    assert not wrong, f"{name}: not float32: {wrong}"
    assert all(np.isfinite(a).all() for _, a in arrays if a.dtype != object)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
def test_elementwise_functions_at_the_extremes(dtype):
    z = np.array([-1e308 if dtype != np.float32 else -3e38, -1e4, -710.0, -89.0, 0.0, 89.0, 710.0, 1e4,
                  1e308 if dtype != np.float32 else 3e38]).astype(dtype)
    with strict(), warnings.catch_warnings():
        warnings.simplefilter("error")
        s, t = _runtime.sigmoid(z.copy()), _runtime.tanh(z.copy())
        lse = _runtime.logsumexp(np.stack([z, -z, np.zeros_like(z)], axis=-1))
    assert s.dtype == t.dtype == lse.dtype == z.dtype
    assert s[0] == 0 and s[-1] == 1 and t[0] == -1 and t[-1] == 1
    assert np.isfinite(lse).all()
    zr = z.real.astype(np.float64)
    with np.errstate(over="ignore"):  # NumPy's own logaddexp warns at 1e308 (and is right)
        expected = np.logaddexp(np.logaddexp(zr, -zr), 0.0)
    np.testing.assert_allclose(lse[:, 0].real, expected, rtol=1e-6)
