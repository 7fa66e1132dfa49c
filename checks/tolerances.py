"""Every tolerance of lstm-spec, in one table keyed by (method, dtype), with the reason for each.

Errors are normwise relative: max |got - want| / max |want| over one array (a gradient, an output),
so a tiny entry next to large ones is not held to an impossible relative standard.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    ("float32", "float32"): Tolerance(
        1e-4, "float32 forward and backward against float64 on the same instance (eps 6e-8, T <= 6 steps)"),
    ("torch", "float64"): Tolerance(
        1e-10, "PyTorch CPU nn.LSTM / nn.LSTMCell in float64: same math, different summation order"),
    ("conform", "float64"): Tolerance(
        1e-10, "conformance, a float64 implementation against the float64 reference: summation order only"),
    ("conform", "float32"): Tolerance(
        1e-4, "conformance, a float32 implementation against the float64 reference on the same float32 "
              "inputs: eps 6e-8 amplified through T <= 6 steps and sums over T * B (measured <= 6e-7)"),
    ("bench", "float64"): Tolerance(
        1e-8, "lstm-spec bench: PyTorch / JAX against the reference on the benchmarked point (T <= 512, "
              "H <= 1024, sums over T * B <= 65536 in another order); loose, it only guards against timing "
              "the wrong computation (gate order, doubled bias, a missing path are O(1) errors)"),
    ("bench", "float32"): Tolerance(
        1e-3, "lstm-spec bench in float32: as for float64, with float32 rounding over up to 512 steps"),
    ("conform:onnxruntime", "float32"): Tolerance(
        5e-4, "ONNX Runtime's CPU LSTM approximates the logistic and tanh functions in float32 "
              "(measured <= 3e-7 with onnxruntime 1.31 on these cases)"),
}


def tolerance(method: str, dtype: str) -> float:
    return TOLERANCES[(method, dtype)].value
