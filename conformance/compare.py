"""Comparing a target's quantities with the reference's: errors, the worst element and where it is."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .problem import Problem, valid_mask


@dataclass
class Row:
    """One quantity of one case."""

    quantity: str
    max_abs: float
    rel: float  # normwise: max |got - want| / max |want|
    worst: str  # where the largest difference is
    tolerance: float
    detail: str = ""  # e.g. a shape mismatch

    @property
    def passed(self) -> bool:
        return self.rel <= self.tolerance


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


def compare(problem: Problem, got: dict, want: dict, tolerance: float, quantities=None) -> list[Row]:
    """Rows for every quantity of ``want`` (or of ``quantities``); a quantity missing from ``got`` or
    of the wrong shape fails with an explanation."""
    mask = valid_mask(problem)
    rows = []
    for q in quantities or want:
        w = np.asarray(want[q])
        if q not in got or got[q] is None:
            rows.append(Row(q, math.inf, math.inf, "-", tolerance, "missing from the target's results"))
            continue
        g = np.asarray(got[q])
        if g.shape != w.shape:
            rows.append(Row(q, math.inf, math.inf, "-", tolerance, f"shape {g.shape}, expected {w.shape}"))
            continue
        g = g.astype(np.float64)
        w = w.astype(np.float64)
        if _base(q) == "y" and mask is not None:  # padded steps are not compared
            g = np.where(mask[:, :, None], g, 0.0)
            w = np.where(mask[:, :, None], w, 0.0)
        if w.size == 0:
            rows.append(Row(q, 0.0, 0.0, "-", tolerance))
            continue
        diff = np.abs(g - w)
        if not np.all(np.isfinite(g)):
            bad = np.unravel_index(int(np.argmax(~np.isfinite(g))), g.shape)
            rows.append(Row(q, math.inf, math.inf, position(problem, q, tuple(map(int, bad))), tolerance,
                            "non-finite values"))
            continue
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
        mx = float(diff[idx])
        scale = float(np.max(np.abs(w)))
        rel = mx / scale if scale > 0 else mx
        rows.append(Row(q, mx, rel, position(problem, q, idx) if mx > 0 else "-", tolerance,
                        f"got {g[idx]:.6g}, expected {w[idx]:.6g}" if rel > tolerance else ""))
    return rows


def matches(problem: Problem, got: dict, want: dict, tolerance: float) -> bool:
    """True when every quantity of ``want`` that ``got`` has is within tolerance."""
    keys = [q for q in want if q in got]
    return bool(keys) and all(r.passed for r in compare(problem, got, want, tolerance, keys))
