"""Every tolerance of lstm-spec, in one table keyed by (method, dtype), with the reason for each.

Errors are normwise relative: max |got - want| / max |want| over one array (a gradient, an output),
so a tiny entry next to large ones is not held to an impossible relative standard. :func:`rel_error` is
the one implementation of that measure; every comparison in the package calls it (or :func:`step_errors`
for one error per time step, or :func:`error_scale` for the denominator of a derived quantity).

The zero rule: when want is all zero (max |want| = 0) the denominator is 1, so the error is the absolute
max |got - want|: a zero array is matched only by values within the tolerance of 0. Arrays of different
shapes, and any non-finite difference, are an error of inf; two empty arrays agree (0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    value: float
    reason: str


TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("symbolic", "sympy"): Tolerance(0.0, "exact: the difference must simplify to 0"),
    ("unrolled", "sympy"): Tolerance(0.0, "exact: the difference must simplify to 0"),
    ("complex_step", "complex128"): Tolerance(
        1e-12, "complex step has no subtraction error (step 1e-30): agreement is at rounding level"),
    ("finite_difference", "float64"): Tolerance(
        1e-6, "central differences at steps h = 1e-6 relative and 2h, Richardson-extrapolated; the error compared "
              "is what exceeds their own estimated error (truncation |D(h) - D(2h)| / 3 plus rounding, below), "
              "so a badly conditioned loss is not a false failure"),
    ("finite_difference_rounding", "float64"): Tolerance(
        64 * 2.0**-53, "rounding error of one evaluation of L in float64, relative to its absolute scale "
                       "<|dy|, |y|> + sum <|d_final|, |s_T|>: 64 units of rounding (measured <= ~25 on the "
                       "built-in cells and the chain of squares); over the step h it bounds a difference's noise"),
    ("rounding_noise", "float64"): Tolerance(
        4 * 2.0**-53, "how far the rounding-noise estimate perturbs every input and every rounded function's "
                      "result, relative (checks/numeric.py): a few units of float64 rounding"),
    ("rounding_noise", "float32"): Tolerance(
        4 * 2.0**-24, "as above for the float32 comparison: a few units of float32 rounding, applied to the "
                      "float64 run"),
    ("rounding_noise_factor", "any"): Tolerance(
        8.0, "the safety factor on the measured spread of three perturbed runs (their largest change)"),
    ("float32", "float32"): Tolerance(
        1e-4, "float32 forward and backward against float64 on the same instance (eps 6e-8, T <= 6 steps)"),
    ("torch", "float64"): Tolerance(
        1e-10, "PyTorch CPU nn.LSTM / nn.LSTMCell in float64: same math, different summation order"),
    ("conform", "float64"): Tolerance(
        1e-10, "conformance, a float64 implementation against the float64 reference: summation order only"),
    ("conform", "float32"): Tolerance(
        1e-4, "conformance, a float32 implementation against the float64 reference on the same float32 "
              "inputs: eps 6e-8 amplified through T <= 16 steps and sums over T * B (measured <= 1.4e-6: "
              "torch, T = 16)"),
    ("bench", "float64"): Tolerance(
        1e-8, "lstm-spec bench: PyTorch / JAX against the reference on the benchmarked point (T <= 512, "
              "H <= 1024, sums over T * B <= 65536 in another order); loose, it only guards against timing "
              "the wrong computation (gate order, doubled bias, a missing path are O(1) errors)"),
    ("bench", "float32"): Tolerance(
        1e-3, "lstm-spec bench in float32: as for float64, with float32 rounding over up to 512 steps"),
    ("vectors", "float64"): Tolerance(
        1e-12, "lstm-spec vectors --check: the stored results against the reference recomputed from the stored "
               "inputs by the same code (the results are deterministic; any larger difference is a stale or "
               "modified file)"),
    ("localise", "float64"): Tolerance(
        1e-7, "conform's localisation: the smallest discrepancy between a target's gradient and directional "
              "derivatives of its own float64 forward (Richardson-extrapolated central differences, steps <= 2e-3) "
              "called 'not the gradient of its forward'; below it the differences cannot tell"),
    ("localise", "float32"): Tolerance(
        3e-3, "as for float64, the target's forward run in float32 (steps <= 5e-2): float32 rounding over the "
              "step leaves about 1e-3 of noise"),
    ("diagnosis_fit_zero", "float64"): Tolerance(
        1e-9, "conform's diagnosis: a constant fitted to the target's outputs (e.g. a forget bias added to z_f) "
              "smaller than this is no constant at all, and that signature is not tried"),
    ("diagnosis_fit_step", "float64"): Tolerance(
        1e-13, "conform's diagnosis: the Gauss-Newton fit of such a constant stops when its step is below this, "
               "relative to max(1, |k|): a few units of float64 rounding"),
    ("diagnosis_fit_same", "float64"): Tolerance(
        1e-9, "conform's diagnosis: a fitted clip bound within this of the spec's own bound (relative) is the "
              "spec's, and that signature is not reported"),
    ("diagnosis_fit_same_eps", "float64"): Tolerance(
        1e-6, "conform's diagnosis: a fitted layer-norm epsilon within this of the spec's (relative) is the spec's: "
              "epsilon moves the outputs little, so its fit is coarser than a clip bound's"),
    ("fuzz_complex_step", "complex128"): Tolerance(
        1e-7, "the spec fuzzer: complex step agrees with a right gradient to ~1e-13; a wrong one is off by far "
              "more, so a loose bound reports only real findings"),
    ("conform:onnxruntime", "float32"): Tolerance(
        5e-4, "ONNX Runtime's CPU LSTM approximates the logistic and tanh functions in float32 "
              "(measured <= 3e-7 with onnxruntime 1.31 on these cases)"),
}


def tolerance(method: str, dtype: str) -> float:
    return TOLERANCES[(method, dtype)].value


def error_scale(want) -> float:
    """The denominator of a normwise relative error against ``want``: max |want|, or 1 when want is all
    zero or empty (the zero rule above)."""
    want = np.asarray(want)
    scale = float(np.max(np.abs(want), initial=0.0)) if want.size else 0.0
    return scale if scale > 0 else 1.0


def rel_error(got, want, allowance=0.0) -> float:
    """Normwise relative error max |got - want| / max |want| (absolute when want is all zero); inf for
    different shapes or a non-finite difference, 0 for two empty arrays. With ``allowance`` (a number or
    an array like want: an estimate of want's own error), only what exceeds it counts:
    max(|got - want| - allowance, 0) / max |want|."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return float("inf")
    if want.size == 0:
        return 0.0
    diff = np.abs(got.astype(np.result_type(got, np.float64)) - want.astype(np.result_type(want, np.float64)))
    if not np.isfinite(diff).all():
        return float("inf")
    return float(np.max(np.maximum(diff - allowance, 0.0))) / error_scale(want)


def step_errors(got, want) -> np.ndarray:
    """One normwise relative error per leading index t (a time step): max |got[t] - want[t]| over the
    scale of all of want (the same zero rule), inf where the difference is not finite. Same shapes only."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or want.ndim == 0:
        raise ValueError(f"step_errors needs two arrays of one shape with a leading axis, got {got.shape} and "
                         f"{want.shape}")
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).reshape(want.shape[0], -1)
    diff = diff.max(axis=1, initial=0.0)
    return np.where(np.isfinite(diff), diff / error_scale(want), np.inf)
