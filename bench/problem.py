"""One benchmark point: its shapes, the data every implementation is given, its operation count and the
memory BPTT needs at least.

Every worker process rebuilds the problem of a point from the same seed with NumPy's PCG64, so all
implementations see bit-identical inputs without shipping arrays between processes; the gradient check
(runner.py) would catch it if they did not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from lstm_spec.layouts.gates import LSTM_GATES

DTYPES = ("float32", "float64")
GATE_NAMES = LSTM_GATES  # the canonical cell's parameter suffixes (spec/lstm.toml)


@dataclass(frozen=True)
class Point:
    T: int
    B: int
    D: int
    H: int
    dtype: str

    def __post_init__(self):
        for name in ("T", "B", "D", "H"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Point.{name}: got {v!r}, expected a positive integer")
        if self.dtype not in DTYPES:
            raise ValueError(f"Point.dtype: got {self.dtype!r}, expected one of {DTYPES}")

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    def label(self) -> str:
        return f"T={self.T} B={self.B} D=H={self.H} {self.dtype}" if self.D == self.H else \
            f"T={self.T} B={self.B} D={self.D} H={self.H} {self.dtype}"

    def as_dict(self) -> dict:
        return asdict(self)


def flops(p: Point) -> int:
    """Floating-point operations of forward + full BPTT backward, counting the matrix products only:
    the forward's products are 2*T*B*4H*(D+H); the backward has twice as many (the gradient with respect
    to the inputs/states and the one with respect to the weights)."""
    return 3 * 2 * p.T * p.B * 4 * p.H * (p.D + p.H)


def min_cache_values(p: Point) -> int:
    """The fewest values a backward pass that re-does no matrix product must keep from the forward:
    per step and batch row the four gate activations i, f, g, o and the cell state c_t, 5H values
    (h_t = o_t * tanh(c_t) and tanh(c_t) are recomputed elementwise; h_0 and c_0 are the caller's)."""
    return 5 * p.T * p.B * p.H


def gemm_shape(p: Point) -> tuple[int, int, int]:
    """The GEMM whose rate the point is measured against: (B*T, D+H) x (D+H, 4H). Its rows are capped for
    time, at 2e9 FLOPs but never below 1024 rows: beyond that the rate no longer changes with more rows,
    while a cap in FLOPs alone left 119 rows at H = 1024, a thin product that runs below the rate of the
    reference's own large products (the fraction of the GEMM rate came out above 1)."""
    k, n = p.D + p.H, 4 * p.H
    rows = max(1, min(p.B * p.T, max(1024, int(2e9 // (2 * k * n)))))
    return rows, k, n


def min_cache_bytes(p: Point) -> int:
    return min_cache_values(p) * p.itemsize


def estimated_bytes_per_process(p: Point) -> int:
    """A generous estimate of what one implementation holds for a point (inputs, cotangents, its cache,
    the stored gate adjoints and the gradients): used only to skip points that would not fit."""
    return p.itemsize * p.T * p.B * (3 * p.D + 24 * p.H)


def make_problem(p: Point, seed: int = 0) -> dict:
    """Canonical per-gate parameters (PyTorch's default scale, uniform in +-1/sqrt(H)), a time-major
    input (T, B, D), non-zero initial states and random cotangents of y and of both final states."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(p.dtype)
    k = 1.0 / np.sqrt(p.H)
    params = {}
    for g in GATE_NAMES:
        params[f"W_{g}"] = rng.uniform(-k, k, (p.H, p.D)).astype(dt)
        params[f"U_{g}"] = rng.uniform(-k, k, (p.H, p.H)).astype(dt)
        params[f"b_{g}"] = rng.uniform(-k, k, (p.H,)).astype(dt)
    return {
        "params": params,
        "x": rng.standard_normal((p.T, p.B, p.D)).astype(dt),
        "h0": (0.5 * rng.standard_normal((p.B, p.H))).astype(dt),
        "c0": (0.5 * rng.standard_normal((p.B, p.H))).astype(dt),
        "dy": rng.standard_normal((p.T, p.B, p.H)).astype(dt),
        "dh": rng.standard_normal((p.B, p.H)).astype(dt),
        "dc": rng.standard_normal((p.B, p.H)).astype(dt),
    }


def grid(T=(1, 16, 128, 512), B=(1, 32, 128), H=(32, 256, 1024), dtypes=DTYPES) -> list[Point]:
    """The issue's grid, D = H, ordered cheapest first within each dtype."""
    pts = [Point(t, b, h, h, dt) for dt in dtypes for h in H for b in B for t in T]
    return sorted(pts, key=lambda q: (DTYPES.index(q.dtype), flops(q), q.T))


QUICK = dict(T=(16,), B=(1, 32), H=(32,))
