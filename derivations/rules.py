"""The matrix-calculus rules of the derivation, as the code templates the generator writes, each one
confirmed by SymPy on explicit small matrices (:func:`confirm_rules`).

Arrays are batch-major: a vector quantity over a sequence has shape (T, B, n); one step's slice is
(B, n). For a linear term L = M v (M of shape (m, n)) with adjoint dL:

- forward, all samples at once:            L = v @ M.T
- adjoint of the operand (per sample M^T dL):  dv = dL @ M
- adjoint of the matrix (sum of dL v^T over time and batch): dM = tensordot(dL, v, axes=([0, 1], [0, 1]))
- a vector parameter p used elementwise:   dp = sum over time and batch of its per-unit adjoint

Stacked products (one GEMM for several terms): matrices M_1, ..., M_k that multiply the same vector v are
stacked by rows, S = [M_1; ...; M_k]; then v @ S.T holds M_1 v, ..., M_k v side by side (split_last);
with the adjoints dL_1, ..., dL_k side by side in one array dL, the operand's adjoint sum_j M_j^T dL_j is
dL @ S, and tensordot(dL, v) stacks the matrices' adjoints by rows (split_first).
"""

from __future__ import annotations

import numpy as np
import sympy

MATVEC = "{v} @ {M}.T"
MATVEC_VJP_OPERAND = "{dL} @ {M}"
# the same two products over whole sequences (T, B, n): one GEMM over all time steps and samples
MATVEC_SEQ = "seq_matmul({v}, {M}.T)"
MATVEC_VJP_OPERAND_SEQ = "seq_matmul({dL}, {M})"
MATVEC_VJP_MATRIX = "np.tensordot({dL}, {v}, axes=([0, 1], [0, 1]))"
SUM_VJP = "{e}.sum(axis=(0, 1))"
STACK = "stack_rows({Ms})"
SPLIT_COLUMNS = "split_last({a}, ({sizes}))"
SPLIT_ROWS = "split_first({a}, ({sizes}))"


def _run(template: str, **arrays):
    """Evaluate one of the templates above on the given arrays (our own constant strings only)."""
    from lstm_spec.reference._runtime import seq_matmul, split_first, split_last, stack_rows

    names = {"np": np, "stack_rows": stack_rows, "split_last": split_last, "split_first": split_first,
             "seq_matmul": seq_matmul}
    return eval(template.format(**{k: k for k in arrays}), names, arrays)  # our own templates above, never spec text


def symbol_array(prefix, shape):
    """An object array of SymPy symbols named prefix_i_j..., one per entry. No assumptions (not even real):
    every equality the checks decide holds as polynomials in the symbols and function values, and an
    assumption makes SymPy ask, at every product it builds, whether huge subexpressions are zero or
    positive (the layer-norm backward on real symbols took 100 s instead of 0.3 s)."""
    out = np.empty(shape, dtype=object)
    for idx in np.ndindex(shape):
        out[idx] = sympy.Symbol(f"{prefix}_{'_'.join(map(str, idx))}")
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

    seq = [(MATVEC_SEQ, L, dict(v=v, M=M)), (MATVEC_VJP_OPERAND_SEQ, dv, dict(dL=dL, M=M))]
    bad = sum(1 for template, ref, arrays in seq
              for got in [_run(template, **arrays)] for idx in np.ndindex(ref.shape)
              if got.shape != ref.shape or sympy.expand(got[idx] - ref[idx]) != 0)
    out.append(("the same two over whole sequences  as  seq_matmul (one GEMM)", bad))

    dM = _run(MATVEC_VJP_MATRIX, dL=dL, v=v)
    bad = sum(1 for idx in np.ndindex(M.shape) if sympy.expand(sympy.diff(s, M[idx]) - dM[idx]) != 0)
    out.append(("dM = sum_t,b dL v^T  as  tensordot", bad))

    e = dL  # per-unit adjoint of p where p is added elementwise: sum of <dL, p> over time and batch
    sp = sum((dL * p).ravel())
    dp = _run(SUM_VJP, e=e)
    bad = sum(1 for k in range(m) if sympy.expand(sympy.diff(sp, p[k]) - dp[k]) != 0)
    out.append(("dp = sum_t,b dL  (vector parameter)", bad))
    out += _confirm_stacked(T, B, n)
    return out


def _confirm_stacked(T, B, n, rows=(2, 1)):
    """The stacked forms against the one-term rules' meaning, by sympy.diff, for two matrices of
    different heights."""
    Ms = [symbol_array(f"M{j}", (r, n)) for j, r in enumerate(rows)]
    v = symbol_array("v", (T, B, n))
    dLs = [symbol_array(f"dL{j}", (T, B, r)) for j, r in enumerate(rows)]
    sizes = ", ".join(map(str, rows))
    arrays = {f"M{j}": M for j, M in enumerate(Ms)}
    S = _run(STACK.format(Ms=", ".join(arrays), sizes=sizes), **arrays)
    parts = _run(SPLIT_COLUMNS.format(a="P", sizes=sizes), P=_run(MATVEC, v=v, M=S))
    s = sum(sum((dL * L).ravel()) for dL, L in zip(dLs, parts, strict=False))
    out = []
    # a wrong split: all bad
    bad = sum(L.size for M, L in zip(Ms, parts, strict=False) if L.shape != (T, B, M.shape[0]))
    bad += sum(1 for M, L in zip(Ms, parts, strict=False) if L.shape == (T, B, M.shape[0])
               for t, b, i in np.ndindex(L.shape)
               if sympy.expand(L[t, b, i] - sum(M[i, j] * v[t, b, j] for j in range(n))) != 0)
    out.append(("[L_1 L_2] = v @ [M_1; M_2].T, split by columns", bad))
    dL = np.concatenate(dLs, axis=-1)
    dv = _run(MATVEC_VJP_OPERAND, dL=dL, M=S)
    bad = sum(1 for idx in np.ndindex(v.shape) if sympy.expand(sympy.diff(s, v[idx]) - dv[idx]) != 0)
    out.append(("dv = sum_j M_j^T dL_j  as  [dL_1 dL_2] @ [M_1; M_2]", bad))
    dMs = _run(SPLIT_ROWS.format(a="G", sizes=sizes), G=_run(MATVEC_VJP_MATRIX, dL=dL, v=v))
    bad = sum(M.size for M, dM in zip(Ms, dMs, strict=False) if dM.shape != M.shape)
    bad += sum(1 for M, dM in zip(Ms, dMs, strict=False) if dM.shape == M.shape for idx in np.ndindex(M.shape)
               if sympy.expand(sympy.diff(s, M[idx]) - dM[idx]) != 0)
    out.append(("dM_j = sum_t,b dL_j v^T  as  tensordot([dL_1 dL_2], v), split by rows", bad))
    return out
