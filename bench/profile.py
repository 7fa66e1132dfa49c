"""`lstm-spec bench --profile`: where the reference's forward + backward spends its time at one point.

The profile runs in a process of its own with the same thread settings and CPU affinity as a benchmark
worker (runner.worker_env). cProfile attributes time to the runtime's functions (seq_matmul: the input
projection of all steps and the gradient of x; sigmoid and tanh) and to NumPy's tensordot (the
parameter gradients); what the generated forward and backward do inline (the per-step recurrent
products with `@`, the elementwise lines, Python) is the remainder, of which the recurrent products are
then timed alone on arrays of the same shapes. The floor is the point's FLOP count at the GEMM rate NumPy
reaches on the point's shape in the same process: no implementation whose work is these products can
be faster.

    python -m lstm_spec.bench.profile T B D H DTYPE REPS   (prints one JSON object; used by the CLI)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

CATEGORIES = (
    ("input", "input projection of all steps + gradient of x (seq_matmul, 2 GEMMs)"),
    ("params", "parameter gradients (tensordot, 2 GEMMs)"),
    ("recurrent", "recurrent products h U^T and dZ U, T steps each (timed alone)"),
    ("activations", "sigmoid and tanh (runtime functions)"),
    ("rest", "the rest: elementwise lines of the generated loop, Python, allocation"),
)


def _measure(T: int, B: int, D: int, H: int, dtype: str, reps: int) -> dict:
    import cProfile
    import pstats

    import numpy as np

    from . import problem as pr
    from .worker import Reference

    p = pr.Point(T, B, D, H, dtype)
    impl = Reference(pr.make_problem(p))
    impl.step()  # warm-up
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(reps):
        impl.step()
    prof.disable()
    total = (time.perf_counter() - t0) / reps
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, primitive calls, tottime, cumtime, callers)

    def cum(*names, file_part=""):
        return sum(v[3] for (f, _, n), v in stats.items() if n in names and file_part in f) / reps

    out = {
        "input": cum("seq_matmul", file_part="_runtime"),
        "params": cum("tensordot"),
        "activations": cum("sigmoid", "tanh", file_part="_runtime"),
    }
    # the per-step products of the generated code, on arrays of the same shapes, T steps forward + back
    rng = np.random.default_rng(0)
    S = rng.standard_normal((4 * H, H)).astype(dtype)
    h, dz = rng.standard_normal((B, H)).astype(dtype), rng.standard_normal((B, 4 * H)).astype(dtype)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(T):
            h @ S.T
            dz @ S
        best = min(best, time.perf_counter() - t0)
    out["recurrent"] = best
    out["rest"] = total - sum(out.values())
    # the GEMM rate of the point's shape (as the benchmark measures it) and the floor it implies
    rows, k, n = pr.gemm_shape(p)
    a, b = rng.standard_normal((rows, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    c = a @ b
    t_gemm = min(_timed(lambda: np.matmul(a, b, out=c)) for _ in range(3))
    rate = 2 * rows * k * n / t_gemm
    return {"point": p.as_dict(), "label": p.label(), "reps": reps, "total": total, "parts": out,
            "gemm_gflops": rate / 1e9, "floor": pr.flops(p) / rate}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def profile(T: int, B: int, D: int, H: int, dtype: str, threads: int = 1, reps: int = 3, timeout: float = 3600):
    """Run _measure in a worker-like process (threads fixed before NumPy is imported) and return its result."""
    from .runner import BenchError, choose_cpus, worker_env

    env = worker_env(threads, choose_cpus(threads))
    res = subprocess.run([sys.executable, "-m", "lstm_spec.bench.profile", str(T), str(B), str(D), str(H), dtype,
                          str(reps)],
                         env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit code {res.returncode}"
        raise BenchError(f"--profile failed: {last}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["threads"] = threads
    return out


def format_profile(r: dict) -> str:
    lines = [f"profile of lstm_spec.reference.lstm forward + backward at {r['label']}, {r['threads']} thread(s), "
             f"mean of {r['reps']} runs: {r['total'] * 1e3:.1f} ms"]
    width = max(len(text) for _, text in CATEGORIES)
    for key, text in CATEGORIES:
        v = r["parts"][key]
        lines.append(f"  {text.ljust(width)}  {v * 1e3:9.1f} ms  {100 * v / r['total']:5.1f} %")
    floor = 'floor: the FLOP count at the GEMM rate of this shape'
    lines.append(f"  {floor.ljust(width)}  {r['floor'] * 1e3:9.1f} ms  "
                 f"{100 * r['floor'] / r['total']:5.1f} %   (GEMM rate {r['gemm_gflops']:.1f} GFLOP/s)")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 6:
        raise SystemExit("usage: python -m lstm_spec.bench.profile T B D H DTYPE REPS")
    T, B, D, H = (int(v) for v in argv[:4])
    print(json.dumps(_measure(T, B, D, H, argv[4], int(argv[5]))))


if __name__ == "__main__":
    from lstm_spec.bench.worker import pin_cpus  # no NumPy imported yet: its threads inherit the affinity

    pin_cpus()
    main()
