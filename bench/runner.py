"""The measurement: workers, interleaved repetitions, the gradient check, statistics, skips and the JSON.

For each point every implementation builds the same problem and warms up; then their gradients are
compared with the reference's (a benchmark that times a wrong computation is worse than none); then the
repetitions run interleaved: repetition r times each implementation once, and the NumPy GEMM of the same
shape, in an order rotated by r, so that a slow spell of the machine (other people's tests share the two
cores) falls on all of them alike. Median, quartiles and extremes are kept; a point whose spread is too
large is measured again.
"""

from __future__ import annotations

import json
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lstm_spec.checks.tolerances import rel_error, tolerance

from . import problem as pr
from .worker import IMPLEMENTATIONS, thread_env

SCHEMA = 1
PEERS = ("torch", "jax")


class BenchError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------ workers
class Worker:
    """A running ``python -m lstm_spec.bench.worker NAME``; ask() sends one request and waits."""

    def __init__(self, name: str, env: dict, logdir: Path):
        self.name = name
        read_fd, write_fd = os.pipe()
        self.log_path = logdir / f"{name}.log"
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "lstm_spec.bench.worker", name, str(write_fd)],
                                     stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True,
                                     env=env, pass_fds=(write_fd,))
        log.close()
        os.close(write_fd)
        self.reader = os.fdopen(read_fd, "r")
        self.info = None

    def log_tail(self, n=600) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def receive(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.reader], [], [], timeout)
        if not ready:
            raise BenchError(f"{self.name}: no answer within {timeout:.0f} s (worker log: {self.log_tail()!r})")
        line = self.reader.readline()
        if not line:
            raise BenchError(f"{self.name}: the worker exited (code {self.proc.poll()}); log: {self.log_tail()!r}")
        msg = json.loads(line)
        if "error" in msg:
            raise BenchError(f"{self.name}: {msg['error']}")
        return msg

    def ask(self, timeout: float, **msg) -> dict:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise BenchError(f"{self.name}: the worker is gone; log: {self.log_tail()!r}") from exc
        return self.receive(timeout)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.ask(10, op="quit")
            except (BenchError, OSError, ValueError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.close()


def worker_env(threads: int, cpus: list[int]) -> dict:
    env = dict(os.environ)
    env.update(thread_env(threads, len(cpus)))
    env["LSTM_SPEC_BENCH_CPUS"] = ",".join(map(str, cpus))
    return env


def choose_cpus(threads: int) -> list[int]:
    avail = sorted(os.sched_getaffinity(0))
    if threads < 1 or threads > len(avail):
        raise BenchError(f"--threads: got {threads}, expected 1 .. {len(avail)} (the CPUs this process may use)")
    return avail[:threads]


# ------------------------------------------------------------------------------------------ statistics
def summary(times) -> dict:
    t = np.asarray(times, dtype=float)
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "min": float(t.min()), "max": float(t.max()),
            "times": [float(v) for v in t]}


def relative_spread(s: dict) -> float:
    return (s["q3"] - s["q1"]) / s["median"] if s["median"] > 0 else 0.0


def compare_grads(got: dict, want: dict) -> tuple[float, str]:
    """Largest normwise relative error (checks.tolerances.rel_error) over the arrays, and its array."""
    missing = sorted(set(want) - set(got))
    if missing:
        return float("inf"), f"missing {missing}"
    worst, where = 0.0, ""
    pairs = [(k, k) for k in want] + [(k, k.split(":", 1)[1]) for k in got
             if k.split(":", 1)[-1] in want and ":" in k]  # "hh:b_f" (a second bias) is a b_f too
    for k, wk in pairs:
        g, w = got[k], want[wk]
        if g.shape != w.shape:
            return float("inf"), f"{k}: shape {g.shape}, expected {w.shape}"
        err = rel_error(g, w)
        if err > worst:
            worst, where = err, k
    return worst, where


def check_tolerance(dtype: str) -> float:
    return tolerance("bench", dtype)


# ------------------------------------------------------------------------------------------ the run
class Bench:
    def __init__(self, peers=PEERS, threads=1, reps=5, max_seconds=60.0, max_memory_gb=4.0, noise=0.25,
                 retries=1, seed=0, timeout=900.0, log=print):
        self.peers = [p for p in peers]
        for p in self.peers:
            if p not in PEERS:
                raise BenchError(f"--peers: got {p!r}, expected some of {PEERS}")
        if reps < 1:
            raise BenchError(f"--reps: got {reps}, expected at least 1")
        self.threads, self.reps, self.max_seconds = threads, reps, max_seconds
        self.max_bytes = max_memory_gb * 2**30
        self.noise, self.retries, self.seed, self.timeout = noise, retries, seed, timeout
        self.log = log
        self.cpus = choose_cpus(threads)
        self.tmp = Path(tempfile.mkdtemp(prefix="lstm-spec-bench-"))
        self.workers: dict[str, Worker] = {}
        self.unavailable: dict[str, str] = {}
        self.gemm_peak: dict[str, float] = {}

    # -- lifecycle
    def start(self):
        env = worker_env(self.threads, self.cpus)
        started = {n: Worker(n, env, self.tmp) for n in ("reference", *self.peers)}
        for name, w in started.items():
            try:
                w.info = w.receive(180)["info"]
                self.workers[name] = w
            except BenchError as exc:
                if name == "reference":
                    raise
                self.unavailable[name] = str(exc)
                self.log(f"  {name}: unavailable ({exc})")
                w.close()
        for dt in pr.DTYPES:  # the machine's GEMM rate per dtype, for the time estimates of the skips
            n = 1024
            t = min(self.workers["reference"].ask(self.timeout, op="gemm", rows=n, k=n, n=n, dtype=dt)["seconds"]
                    for _ in range(3))
            self.gemm_peak[dt] = 2 * n**3 / t

    def close(self):
        for w in self.workers.values():
            w.close()
        self.workers.clear()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def impls(self) -> list[str]:
        return [n for n in IMPLEMENTATIONS if n in self.workers]

    # -- estimates and skips
    def estimate_seconds(self, p: pr.Point) -> float:
        """Seconds one point would take: every implementation runs reps + 4 times (two warm-ups, the
        check, the memory run), each at half the square GEMM rate plus Python's per-step overhead."""
        run = pr.flops(p) / (0.5 * self.gemm_peak[p.dtype]) + p.T * 2e-4
        return len(self.impls) * (self.reps + 4) * run

    def skip_reason(self, p: pr.Point) -> str | None:
        mem = len(self.impls) * pr.estimated_bytes_per_process(p)
        if mem > self.max_bytes:
            return f"needs about {mem / 2**30:.1f} GiB > --max-memory-gb {self.max_bytes / 2**30:g}"
        est = self.estimate_seconds(p)
        if est > self.max_seconds:
            return f"estimated {est:.0f} s > --max-seconds {self.max_seconds:g}"
        return None

    # -- one point
    def measure(self, p: pr.Point) -> dict:
        rec = {"point": p.as_dict(), "label": p.label(), "flops": pr.flops(p),
               "min_cache_bytes": pr.min_cache_bytes(p), "load_before": list(os.getloadavg())}
        reason = self.skip_reason(p)
        if reason:
            rec.update(status="skipped", reason=reason)
            return rec
        try:
            attempts = []
            for k in range(1 + self.retries):
                attempts.append(self._measure_once(p))
                if attempts[-1].get("status") != "ok" or attempts[-1]["spread"] <= self.noise:
                    break
                if k < self.retries:
                    self.log(f"  {p.label()}: spread {attempts[-1]['spread']:.0%} > {self.noise:.0%}, measuring again")
            best = min(attempts, key=lambda a: (a.get("status") != "ok", a.get("spread", 0)))
            rec.update(best)
            rec["attempts"] = len(attempts)
        except BenchError as exc:
            rec.update(status="error", reason=str(exc))
        finally:
            for w in self.workers.values():
                try:
                    w.ask(self.timeout, op="free")
                except BenchError:
                    pass
        rec["load_after"] = list(os.getloadavg())
        return rec

    def _measure_once(self, p: pr.Point) -> dict:
        out: dict = {"impls": {}, "check": {}}
        setup, warm = {}, {}
        for name in self.impls:
            msg = self.workers[name].ask(self.timeout, op="setup", point=p.as_dict(), seed=self.seed)
            setup[name], warm[name] = msg["first_seconds"], msg["seconds"]  # first: with JAX's compilation
        projected = sum(warm.values()) * (self.reps + 2)
        if projected > 2 * self.max_seconds:
            return {"status": "skipped", "reason": f"the warm-up runs took {sum(warm.values()):.1f} s: {self.reps} "
                    f"repetitions would take about {projected:.0f} s > 2 x --max-seconds {self.max_seconds:g}"}
        ok = self._check_gradients(p, out["check"])
        out["memory"] = self.workers["reference"].ask(self.timeout, op="memory")
        out["memory"]["peak_over_min_cache"] = out["memory"]["peak_bytes"] / pr.min_cache_bytes(p)
        out["memory"]["cache_over_min_cache"] = out["memory"]["cache_bytes"] / pr.min_cache_bytes(p)
        out["memory"]["per_step_cache_over_min_cache"] = out["memory"]["per_step_cache_bytes"] / pr.min_cache_bytes(p)
        times, cpu = self._repetitions(p)
        out["gemm"] = gemm = self._gemm_summary(p, times.pop("gemm"), cpu.pop("gemm"))
        ref = None
        for name in self.impls:
            s = self._impl_summary(p, times[name], cpu[name], setup[name], gemm)
            if name == "reference":
                ref = s
            else:
                s["ratio"] = s["median"] / ref["median"]  # > 1: the reference is faster
                s["cpu_ratio"] = s["cpu"]["median"] / max(ref["cpu"]["median"], 1e-9)
            out["impls"][name] = s
        out["spread"] = max(relative_spread(s) for s in out["impls"].values())
        out["status"] = "ok" if ok else "mismatch"
        if not ok:
            out["reason"] = "gradients disagree with the reference: " + ", ".join(
                f"{n} {c['max_rel_err']:.1e} at {c['worst']} (tol {c['tol']:g})"
                for n, c in out["check"].items() if not c["ok"])
        return out

    def _check_gradients(self, p: pr.Point, check: dict) -> bool:
        """The gradient check: every implementation against the reference, on this very problem (a row per
        implementation into check); whether all agree."""
        tol = check_tolerance(p.dtype)
        files = {n: self.workers[n].ask(self.timeout, op="check", path=str(self.tmp / f"{n}.npz"))["path"]
                 for n in self.impls}
        with np.load(files["reference"]) as f:
            want = dict(f)
        ok = True
        for name in self.impls:
            if name == "reference":
                continue
            with np.load(files[name]) as f:
                err, where = compare_grads(dict(f), want)
            check[name] = {"max_rel_err": err, "worst": where, "tol": tol, "ok": bool(err <= tol)}
            ok &= err <= tol
        return ok

    def _repetitions(self, p: pr.Point) -> tuple[dict, dict]:
        """Interleaved repetitions of every implementation and the GEMM: (wall seconds, CPU seconds) by name."""
        rows, k, n = pr.gemm_shape(p)
        order = [*self.impls, "gemm"]
        times = {name: [] for name in order}
        cpu = {name: [] for name in order}  # CPU time of the process: less sensitive to a loaded machine
        for r in range(self.reps):
            for name in order[r % len(order):] + order[:r % len(order)]:
                if name == "gemm":
                    msg = self.workers["reference"].ask(self.timeout, op="gemm", rows=rows, k=k, n=n, dtype=p.dtype)
                else:
                    msg = self.workers[name].ask(self.timeout, op="run")
                times[name].append(msg["seconds"])
                cpu[name].append(msg["cpu_seconds"])
        return times, cpu

    @staticmethod
    def _gemm_summary(p: pr.Point, times: list, cpu: list) -> dict:
        rows, k, n = pr.gemm_shape(p)
        gemm = summary(times)
        gemm["cpu"] = summary(cpu)
        gemm.update(rows=rows, k=k, n=n, gflops=2 * rows * k * n / gemm["median"] / 1e9,
                    gflops_cpu=2 * rows * k * n / max(gemm["cpu"]["median"], 1e-9) / 1e9)
        return gemm

    @staticmethod
    def _impl_summary(p: pr.Point, times: list, cpu: list, first_run: float, gemm: dict) -> dict:
        s = summary(times)
        s["first_run_seconds"] = first_run
        s["cpu"] = summary(cpu)
        s["cpu_over_wall"] = sum(cpu) / sum(times)  # about the number of busy threads
        s["gflops"] = pr.flops(p) / s["median"] / 1e9
        s["fraction_of_gemm"] = s["gflops"] / gemm["gflops"]
        s["fraction_of_gemm_cpu"] = pr.flops(p) / max(s["cpu"]["median"], 1e-9) / 1e9 / gemm["gflops_cpu"]
        return s


# ------------------------------------------------------------------------------------------ machine, tools
def git_commit() -> str | None:
    import lstm_spec.reference as measured  # the code under measurement: its checkout, wherever that is

    root = Path(measured.__file__).resolve().parents[1]
    try:
        r = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%H %s"], capture_output=True, text=True,
                           timeout=30)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "reference", "derivations"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode:
        return None
    return r.stdout.strip() + (" (+ uncommitted changes in reference/ or derivations/)" if dirty else "")


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def time_command(argv: list[str], timeout: float) -> dict:
    """Run one command once and time it (wall clock), with a timeout that guards against a hang."""
    load = list(os.getloadavg())
    t0 = time.perf_counter()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        code, tail = r.returncode, (r.stdout + r.stderr)[-400:]
    except subprocess.TimeoutExpired:
        code, tail = None, f"timed out after {timeout:g} s"
    return {"command": " ".join(argv), "seconds": time.perf_counter() - t0, "exit_code": code,
            "load_before": load, "load_after": list(os.getloadavg()), "tail": tail}


TOOL_COMMANDS = {
    "generate": ["-m", "lstm_spec", "generate", "--check"],
    "verify": ["-m", "lstm_spec", "verify", "--quiet"],
}


def run_tools(names, timeout: float, log=print) -> dict:
    out = {}
    for name in names:
        log(f"timing lstm-spec {' '.join(TOOL_COMMANDS[name][2:])} ...")
        out[name] = time_command([sys.executable, *TOOL_COMMANDS[name]], timeout)
        log(f"  {out[name]['seconds']:.1f} s, exit code {out[name]['exit_code']}")
    return out


def run_grid(points, bench: Bench, log=print) -> dict:
    results = []
    for i, p in enumerate(points, 1):
        rec = bench.measure(p)
        results.append(rec)
        log(f"[{i}/{len(points)}] {status_line(rec)}")
    return {"points": results}


def status_line(rec: dict) -> str:
    if rec["status"] != "ok":
        return f"{rec['label']}: {rec['status'].upper()} ({rec.get('reason', '')})"
    parts = [f"reference {rec['impls']['reference']['median'] * 1e3:.2f} ms"]
    for n, s in rec["impls"].items():
        if n != "reference":
            parts.append(f"{n} {s['median'] * 1e3:.2f} ms (x{s['ratio']:.2f})")
    return f"{rec['label']}: " + ", ".join(parts)


def header(bench: Bench | None, argv=None) -> dict:
    meta = {"schema": SCHEMA, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git_commit(),
            "machine": machine(), "command": "lstm-spec bench " + " ".join(argv or []),
            "loadavg_start": list(os.getloadavg())}
    if bench is not None:
        meta.update(threads=bench.threads, cpus=bench.cpus, reps=bench.reps, max_seconds=bench.max_seconds,
                    noise=bench.noise, seed=bench.seed,
                    gemm_peak_gflops={k: v / 1e9 for k, v in bench.gemm_peak.items()},
                    workers={n: w.info for n, w in bench.workers.items()}, unavailable=bench.unavailable,
                    check_tolerance={dt: check_tolerance(dt) for dt in pr.DTYPES})
    return meta
