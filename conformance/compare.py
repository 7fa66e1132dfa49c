"""Comparing a target's quantities with the reference's: errors, the worst element and where it is."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lstm_spec.checks.tolerances import rel_error

from .problem import Problem, valid_mask


@dataclass
class Row:
    """One quantity of one case."""

    quantity: str
    max_abs: float
    rel: float  # normwise: checks.tolerances.rel_error(got, want)
    worst: str  # where the largest difference is
    tolerance: float
    detail: str = ""  # e.g. a shape mismatch
    defect: str = ""  # a fault that fails the row whatever the numbers: wrong dtype, non-finite values

    @property
    def within(self) -> bool:
        """The numbers are within tolerance (what a bug signature has to reproduce)."""
        return self.rel <= self.tolerance

    @property
    def passed(self) -> bool:
        return not self.defect and self.within


def _base(quantity: str) -> str:
    return quantity.split(" [")[0]


def position(problem: Problem, quantity: str, index: tuple) -> str:
    """Name an element of a quantity: time step, batch element, unit, gate."""
    base = _base(quantity)
    if not index:
        return "-"
    if base == "y":
        t, b, u = index
        H = problem.output_size
        if problem.case.ndir == 2:
            return f"t={t} b={b} unit={u % H} dir={'fwd' if u < H else 'bwd'}"
        return f"t={t} b={b} unit={u}"
    if base == "d x":
        t, b, k = index
        return f"t={t} b={b} feature={k}"
    if base.endswith("_T") or base.endswith("0"):
        b, u = index[:2]
        return f"b={b} unit={u}"
    if base.startswith("d "):
        name = base[2:].split("(")[0]
        kind, _, gate = name.partition("_")
        if gate:
            where = f"gate={gate} unit={index[0]}"
            if len(index) > 1:
                where += f" {'in' if kind.startswith('W') else 'col'}={index[1]}"
            return where
    return "(" + ", ".join(map(str, index)) + ")"


def _as_array(value):
    """``value`` as an ndarray, or None when it is not one (or cannot be made one)."""
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except Exception:  # whatever the target returned, it is reported, not raised
        return None


def compare(problem: Problem, got: dict, want: dict, tolerance: float, quantities=None,
            dtype: str | None = None) -> list[Row]:
    """Rows for every quantity of ``want`` (or of ``quantities``); a quantity missing from ``got``, not
    a real numeric array or of the wrong shape fails with an explanation. With ``dtype`` (the case's
    dtype; None: not checked), a quantity in another dtype fails with its numbers still computed.
    Non-finite values fail, the row naming how many and where the first one is."""
    mask = valid_mask(problem)
    rows = []
    for q in quantities or want:
        w = np.asarray(want[q])
        if q not in got or got[q] is None:
            rows.append(Row(q, math.inf, math.inf, "-", tolerance, "missing from the target's results"))
            continue
        g = _as_array(got[q])
        if g is None or g.dtype.kind not in "biuf":
            what = type(got[q]).__name__ if g is None else f"{type(got[q]).__name__} of dtype {g.dtype}"
            rows.append(Row(q, math.inf, math.inf, "-", tolerance, f"not a real numeric array: got {what}",
                            defect=f"not a real numeric array ({what})"))
            continue
        if g.shape != w.shape:
            rows.append(Row(q, math.inf, math.inf, "-", tolerance, f"shape {g.shape}, expected {w.shape}"))
            continue
        defect = ""
        if dtype is not None and g.dtype != np.dtype(dtype):
            defect = f"dtype {g.dtype}, expected {np.dtype(dtype)} (the case's dtype)"
        g = g.astype(np.float64)
        w = w.astype(np.float64)
        if _base(q) == "y" and mask is not None:  # padded steps are not compared
            g = np.where(mask[:, :, None], g, 0.0)
            w = np.where(mask[:, :, None], w, 0.0)
        if w.size == 0:
            rows.append(Row(q, 0.0, 0.0, "-", tolerance, defect=defect))
            continue
        finite = np.isfinite(g)
        if not finite.all():
            bad = tuple(int(i) for i in np.unravel_index(int(np.argmax(~finite)), g.shape))
            n_nan, n_inf = int(np.isnan(g).sum()), int(np.isinf(g).sum())
            kinds = ", ".join(f"{n} {k}" for n, k in ((n_nan, "NaN"), (n_inf, "inf")) if n)
            what = f"non-finite values: {kinds} of {g.size}, first {g[bad]} at {position(problem, q, bad)}"
            rows.append(Row(q, math.inf, math.inf, position(problem, q, bad), tolerance, what,
                            defect="; ".join(x for x in (defect, what) if x)))
            continue
        diff = np.abs(g - w)
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
        mx = float(diff[idx])
        rel = rel_error(g, w)
        detail = f"got {g[idx]:.6g}, expected {w[idx]:.6g}" if rel > tolerance else ""
        rows.append(Row(q, mx, rel, position(problem, q, idx) if mx > 0 else "-", tolerance,
                        "; ".join(x for x in (defect, detail) if x), defect=defect))
    return rows


def matches(problem: Problem, got: dict, want: dict, tolerance: float) -> bool:
    """True when every quantity of ``want`` that ``got`` has is within tolerance."""
    keys = [q for q in want if q in got]
    return bool(keys) and all(r.within for r in compare(problem, got, want, tolerance, keys))
