"""One implementation under measurement, in a process of its own (``python -m lstm_spec.bench.worker IMPL``).

The runner starts one worker per implementation with the same environment: the same CPU affinity and
the same thread variables (OMP/MKL/OpenBLAS, XLA's flags), set before NumPy, PyTorch or JAX is
imported, which is the only moment all of them read them. Workers idle while another one is timed, so
the implementations never compete with each other for the cores.

Protocol: one JSON object per line on stdin, one JSON answer per line on the file descriptor given as
the second argument (stdout and stderr stay free for whatever the libraries print).

- ``{"op": "setup", "point": {...}, "seed": s}``: build the problem, run forward + backward twice
  (warm-up: JIT compilation, allocator, caches), answer ``{"first_seconds": ..., "seconds": second run}``.
- ``{"op": "run"}``: time one forward + full backward, answer ``{"seconds": t}``.
- ``{"op": "check", "path": p}``: run once, write the canonical gradients (per-gate W, U, b; h0; c0; and
  the gradient of x at t = 1, which is reached only through the whole recursion) to ``p`` (.npz).
- ``{"op": "memory"}`` (reference only): tracemalloc peak of one forward + backward, and the bytes of the
  arrays the forward keeps in its cache for backward.
- ``{"op": "gemm", "rows": M, "k": K, "n": N}`` (reference only): time one NumPy (M, K) x (K, N) product.
- ``{"op": "free"}``, ``{"op": "info"}``, ``{"op": "quit"}``.
"""

from __future__ import annotations

import json
import os
import sys
import time

IMPLEMENTATIONS = ("reference", "torch", "jax")


def thread_env(threads: int, ncpu: int) -> dict:
    """Environment variables that fix the thread count of every library involved, set before import."""
    env = {var: str(threads) for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                          "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}
    # XLA:CPU runs its own thread pool sized by the visible cores; one thread is asked for explicitly, and
    # the CPU affinity (set by every worker) bounds it in any case.
    flags = ["--xla_force_host_platform_device_count=1"]
    if threads == 1:
        flags += ["--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"]
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_ENABLE_X64"] = "1"  # float64 in JAX; float32 arrays stay float32
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


# ------------------------------------------------------------------------------------------ implementations
class Reference:
    """lstm_spec.reference.lstm: the generated NumPy code."""

    name = "reference"

    def __init__(self, problem):
        from lstm_spec.reference import lstm

        self.lstm, self.pb = lstm, problem

    def step(self):
        pb = self.pb
        y, final, cache = self.lstm.forward(pb["params"], pb["x"], pb["h0"], pb["c0"])
        return self.lstm.backward(cache, pb["dy"], {"h": pb["dh"], "c": pb["dc"]})

    def canonical_grads(self):
        g = self.step()
        return {**{k: g[k] for k in self.pb["params"]}, "h0": g["h0"], "c0": g["c0"], "x0": g["x"][0]}

    def memory(self):
        import tracemalloc

        import numpy as np

        pb = self.pb
        inputs = [pb["x"], *pb["params"].values()]
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            y, final, cache = self.lstm.forward(pb["params"], pb["x"], pb["h0"], pb["c0"])
            after_forward = tracemalloc.get_traced_memory()[0] - base
            grads = self.lstm.backward(cache, pb["dy"], {"h": pb["dh"], "c": pb["dc"]})
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        T, B = pb["x"].shape[:2]
        seen, cache_bytes, per_step_bytes = set(), 0, 0
        for v in cache.values():  # arrays the forward allocated and keeps (not views of the inputs)
            if isinstance(v, np.ndarray) and id(v) not in seen and not any(np.may_share_memory(v, a) for a in inputs):
                seen.add(id(v))
                cache_bytes += v.nbytes
                if v.ndim == 3 and v.shape[:2] in ((T, B), (T + 1, B)):  # per step and batch row, not weights
                    per_step_bytes += v.nbytes
        grad_bytes = sum(v.nbytes for v in grads.values())
        return {"peak_bytes": int(peak), "after_forward_bytes": int(after_forward), "cache_bytes": int(cache_bytes),
                "per_step_cache_bytes": int(per_step_bytes), "gradient_bytes": int(grad_bytes)}


class Torch:
    """PyTorch nn.LSTM on the CPU, forward and autograd backward."""

    name = "torch"

    def __init__(self, problem):
        import numpy as np
        import torch

        from lstm_spec.layouts import to_torch_lstm

        self.torch, self.np = torch, np
        pb = problem
        D, H = pb["params"]["W_f"].shape[1], pb["params"]["W_f"].shape[0]
        dtype = {"float32": torch.float32, "float64": torch.float64}[str(pb["x"].dtype)]
        self.net = torch.nn.LSTM(D, H, dtype=dtype)
        with torch.no_grad():
            for k, v in to_torch_lstm(pb["params"]).items():
                getattr(self.net, k).copy_(torch.from_numpy(v))
        def t(a):
            return torch.from_numpy(a.copy())
        self.x = t(pb["x"]).requires_grad_(True)
        self.h0 = t(pb["h0"])[None].requires_grad_(True)
        self.c0 = t(pb["c0"])[None].requires_grad_(True)
        self.dy, self.dh, self.dc = t(pb["dy"]), t(pb["dh"]), t(pb["dc"])
        self.weights = [self.net.weight_ih_l0, self.net.weight_hh_l0, self.net.bias_ih_l0, self.net.bias_hh_l0]

    def step(self):
        y, (hT, cT) = self.net(self.x, (self.h0, self.c0))
        loss = (y * self.dy).sum() + (hT[0] * self.dh).sum() + (cT[0] * self.dc).sum()
        return self.torch.autograd.grad(loss, [*self.weights, self.x, self.h0, self.c0])

    def canonical_grads(self):
        from lstm_spec.layouts import from_stacked

        gw, gu, gb_ih, gb_hh, gx, gh0, gc0 = (g.detach().numpy() for g in self.step())
        # PyTorch adds two biases: the gradient of each is the gradient of our single bias (not their sum);
        # the runner compares bias_ih's with the reference and bias_hh's (keys "hh:b_*") too
        out = from_stacked({"W": gw, "U": gu, "b": gb_ih})
        out.update({f"hh:{k}": v for k, v in from_stacked({"W": gw, "U": gu, "b": gb_hh}).items() if k[0] == "b"})
        return {**out, "h0": gh0[0], "c0": gc0[0], "x0": gx[0]}


class Jax:
    """JAX: ``jax.jit(jax.grad(loss))`` of an LSTM written with ``lax.scan`` (stacked gates i, f, c, o)."""

    name = "jax"

    def __init__(self, problem):
        import jax
        import jax.numpy as jnp
        import numpy as np

        from lstm_spec.layouts import to_stacked

        self.jax, self.np = jax, np
        pb = problem
        s = to_stacked(pb["params"])  # W (4H, D), U (4H, H), b (4H,), blocks i, f, c, o

        def lstm(W, U, b, x, h0, c0):
            xw = jnp.einsum("tbd,gd->tbg", x, W) + b  # the input products of all steps at once

            def step(carry, xw_t):
                h, c = carry
                z = xw_t + h @ U.T
                zi, zf, zc, zo = jnp.split(z, 4, axis=-1)
                c = jax.nn.sigmoid(zf) * c + jax.nn.sigmoid(zi) * jnp.tanh(zc)
                h = jax.nn.sigmoid(zo) * jnp.tanh(c)
                return (h, c), h

            (hT, cT), y = jax.lax.scan(step, (h0, c0), xw)
            return y, hT, cT

        def loss(W, U, b, x, h0, c0, dy, dh, dc):
            y, hT, cT = lstm(W, U, b, x, h0, c0)
            return jnp.sum(y * dy) + jnp.sum(hT * dh) + jnp.sum(cT * dc)

        self.fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5)))
        def dev(a):
            return jax.device_put(np.asarray(a))
        self.args = [dev(s["W"]), dev(s["U"]), dev(s["b"])] + [dev(pb[k]) for k in ("x", "h0", "c0", "dy", "dh", "dc")]
        for a, want in zip(self.args, [s["W"], s["U"], s["b"], pb["x"]], strict=False):
            if a.dtype != want.dtype:
                raise TypeError(f"jax: got {a.dtype} on the device for a {want.dtype} array (JAX_ENABLE_X64 unset?)")

    def step(self):
        return self.jax.block_until_ready(self.fn(*self.args))

    def canonical_grads(self):
        from lstm_spec.layouts import from_stacked

        gw, gu, gb, gx, gh0, gc0 = (self.np.asarray(g) for g in self.step())
        return {**from_stacked({"W": gw, "U": gu, "b": gb}), "h0": gh0, "c0": gc0, "x0": gx[0]}


CLASSES = {"reference": Reference, "torch": Torch, "jax": Jax}


def library_info(name: str, threads: int) -> dict:
    import numpy as np

    info = {"numpy": np.__version__, "affinity": sorted(os.sched_getaffinity(0)), "threads": threads,
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")}}
    if name == "torch":
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    torch_interop_threads=torch.get_num_interop_threads())
    if name == "jax":
        import jax

        info.update(jax=jax.__version__, jax_devices=[str(d) for d in jax.devices()])
    return info


# ------------------------------------------------------------------------------------------ main loop
def serve(name: str, out) -> None:
    import numpy as np

    from .problem import Point, make_problem

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    if name == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
    impl = None
    gemm: dict = {}

    def answer(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    answer({"ready": name, "info": library_info(name, threads)})
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg["op"]
        try:
            if op == "quit":
                answer({"ok": True})
                return
            if op == "info":
                answer({"info": library_info(name, threads)})
            elif op == "setup":
                impl = None  # the previous problem freed before the next one is made
                impl = CLASSES[name](make_problem(Point(**msg["point"]), msg.get("seed", 0)))
                answer(_first_steps(impl))
            elif op == "run":
                answer(_timed_step(impl))
            elif op == "check":
                np.savez(msg["path"], **impl.canonical_grads())
                answer({"path": msg["path"]})
            elif op == "memory":
                answer(impl.memory())
            elif op == "gemm":
                answer(_timed_gemm(msg, gemm))
            elif op == "free":
                impl = None
                gemm.clear()
                answer({"ok": True})
            else:
                answer({"error": f"unknown op {op!r}"})
        except Exception as exc:  # reported to the runner, which names the implementation and the point
            answer({"error": f"{type(exc).__name__}: {exc}"})


def _first_steps(impl) -> dict:
    """The first step (compilation, caches) and the second one, timed."""
    t0 = time.perf_counter()
    impl.step()
    t1 = time.perf_counter()
    impl.step()
    return {"first_seconds": t1 - t0, "seconds": time.perf_counter() - t1}


def _timed_step(impl) -> dict:
    c0, t0 = time.process_time(), time.perf_counter()
    result = impl.step()
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0  # CPU time of all threads: cpu / seconds shows the threads used
    del result
    return {"seconds": seconds, "cpu_seconds": cpu}


def _timed_gemm(msg: dict, gemm: dict) -> dict:
    """One (rows x k) @ (k x n) product of msg's dtype, timed; gemm keeps the operands between messages."""
    import numpy as np

    key = (msg["rows"], msg["k"], msg["n"], msg["dtype"])
    if gemm.get("key") != key:  # operands made (and the product warmed up) once per shape
        rng = np.random.default_rng(1)
        dt = np.dtype(msg["dtype"])
        a = rng.standard_normal((msg["rows"], msg["k"])).astype(dt)
        b = rng.standard_normal((msg["k"], msg["n"])).astype(dt)
        gemm.update(key=key, a=a, b=b, out=a @ b)
    c0, t0 = time.process_time(), time.perf_counter()
    np.matmul(gemm["a"], gemm["b"], out=gemm["out"])
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


def pin_cpus() -> None:
    """Keep this process on the CPUs the runner chose (LSTM_SPEC_BENCH_CPUS): called before NumPy, PyTorch
    or JAX is imported, so every thread they start inherits it."""
    cpus = os.environ.get("LSTM_SPEC_BENCH_CPUS")
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in CLASSES:
        raise SystemExit(f"usage: python -m lstm_spec.bench.worker {{{','.join(CLASSES)}}} FD; got {argv}")
    pin_cpus()
    out = os.fdopen(int(argv[1]), "w")
    try:
        serve(argv[0], out)
    except Exception as exc:  # an import that fails: the runner reports the implementation as unavailable
        out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
