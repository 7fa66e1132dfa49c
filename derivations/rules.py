"""The matrix-calculus rules of the derivation, as the code templates the generator writes, each one
confirmed by SymPy on explicit small matrices (:func:`confirm_rules`).

Arrays are batch-major: a vector quantity over a sequence has shape (T, B, n); one step's slice is
(B, n). For a linear term L = M v (M of shape (m, n)) with adjoint dL:

- forward, all samples at once:            L = v @ M.T
- adjoint of the operand (per sample M^T dL):  dv = dL @ M
- adjoint of the matrix (sum of dL v^T over time and batch): dM = tensordot(dL, v, axes=([0, 1], [0, 1]))
- a vector parameter p used elementwise:   dp = sum over time and batch of its per-unit adjoint
"""

from __future__ import annotations

import numpy as np
import sympy

MATVEC = "{v} @ {M}.T"
MATVEC_VJP_OPERAND = "{dL} @ {M}"
MATVEC_VJP_MATRIX = "np.tensordot({dL}, {v}, axes=([0, 1], [0, 1]))"
SUM_VJP = "{e}.sum(axis=(0, 1))"


def _run(template: str, **arrays):
    """Evaluate one of the templates above on the given arrays (our own constant strings only)."""
    return eval(template.format(**{k: k for k in arrays}), {"np": np}, arrays)  # noqa: S307


def symbol_array(prefix, shape):
    """An object array of real SymPy symbols named prefix_i_j..., one per entry."""
    out = np.empty(shape, dtype=object)
    for idx in np.ndindex(shape):
        out[idx] = sympy.Symbol(f"{prefix}_{'_'.join(map(str, idx))}", real=True)
    return out


def confirm_rules(T: int = 2, B: int = 2, m: int = 2, n: int = 3) -> list[tuple[str, int]]:
    """For each rule: (name, number of entries where the template differs from sympy.diff). All must be 0."""
    M, v = symbol_array("M", (m, n)), symbol_array("v", (T, B, n))
    dL, p = symbol_array("dL", (T, B, m)), symbol_array("p", (m,))
    L = _run(MATVEC, v=v, M=M)
    s = sum((dL * L).ravel())  # the scalar <dL, M v> summed over time and batch
    out = []

    # forward template: each entry is the matrix-vector product of the math
    bad = sum(1 for t, b, i in np.ndindex(T, B, m)
              if sympy.expand(L[t, b, i] - sum(M[i, j] * v[t, b, j] for j in range(n))) != 0)
    out.append(("L = M v  as  v @ M.T", bad))

    dv = _run(MATVEC_VJP_OPERAND, dL=dL, M=M)
    bad = sum(1 for idx in np.ndindex(v.shape) if sympy.expand(sympy.diff(s, v[idx]) - dv[idx]) != 0)
    out.append(("dv = M^T dL  as  dL @ M", bad))

    dM = _run(MATVEC_VJP_MATRIX, dL=dL, v=v)
    bad = sum(1 for idx in np.ndindex(M.shape) if sympy.expand(sympy.diff(s, M[idx]) - dM[idx]) != 0)
    out.append(("dM = sum_t,b dL v^T  as  tensordot", bad))

    e = dL  # per-unit adjoint of p where p is added elementwise: sum of <dL, p> over time and batch
    sp = sum((dL * p).ravel())
    dp = _run(SUM_VJP, e=e)
    bad = sum(1 for k in range(m) if sympy.expand(sympy.diff(sp, p[k]) - dp[k]) != 0)
    out.append(("dp = sum_t,b dL  (vector parameter)", bad))
    return out
