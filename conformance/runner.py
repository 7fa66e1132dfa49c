"""`lstm-spec conform`: run the cases on a target and on the reference, compare, diagnose, report."""

from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from lstm_spec.checks.tolerances import TOLERANCES

from .compare import Row, compare
from .problem import Case, Problem, expected, make_problem
from .signatures import Diagnosis, diagnose
from .targets import Target, TargetError

# (T, B, D, H): T = 1 and B = 1 together, B = 1, D != H (both ways), D = H, a longer sequence
SHAPES = [(1, 1, 3, 2), (2, 1, 2, 3), (4, 3, 5, 3), (6, 2, 4, 4)]


def default_cases(cells=("lstm",), dtypes=("float64", "float32"), seed: int = 0) -> list[Case]:
    """The cases `conform` runs: every shape in each dtype, then the reverse direction, sequence
    lengths shorter than T (forward and reverse), bidirectional and two layers."""
    cases = []
    for cell in cells:
        for dt in dtypes:
            for k, shape in enumerate(SHAPES):
                cases.append(Case(cell, shape, dt, seed + 10 * k + (1 if dt == "float32" else 0)))
            cases.append(Case(cell, (5, 3, 4, 3), dt, seed + 101, direction="reverse"))
            cases.append(Case(cell, (5, 3, 4, 3), dt, seed + 102, lengths=(5, 3, 1)))
            cases.append(Case(cell, (5, 3, 4, 3), dt, seed + 103, direction="reverse", lengths=(2, 5, 4)))
            cases.append(Case(cell, (4, 2, 3, 3), dt, seed + 104, direction="bidirectional"))
            cases.append(Case(cell, (4, 2, 3, 3), dt, seed + 105, layers=2))
    return cases


def tolerance_for(target: Target, dtype: str) -> tuple[float, str]:
    key = (target.tolerance_key, dtype)
    tol = TOLERANCES.get(key) or TOLERANCES[("conform", dtype)]
    return tol.value, tol.reason


@dataclass
class CaseResult:
    case: Case
    status: str  # "pass", "FAIL", "skip", "error"
    rows: list = field(default_factory=list)
    diagnoses: list = field(default_factory=list)
    detail: str = ""
    tolerance: float = 0.0
    seconds: float = 0.0

    @property
    def failing(self) -> list[Row]:
        return [r for r in self.rows if not r.passed]


@dataclass
class Outcome:
    """What one call of a target gave: its results, or why there are none; the inputs it modified."""

    got: dict | None
    error: str = ""
    mutations: list = field(default_factory=list)


def _problem_arrays(problem: Problem) -> list[tuple[str, np.ndarray]]:
    """Every input array of a problem, named, as references (for the check that a target left them alone)."""
    out = [("x", problem.x), ("dy", problem.dy)]
    if problem.lengths is not None:
        out.append(("lengths", problem.lengths))
    for k, slot in enumerate(problem.case.slots):
        at = f"[{slot}]" if slot else ""
        out += [(f"params{at}[{n!r}]", v) for n, v in problem.params[k].items()]
        out += [(f"{s}0{at}", v) for s, v in problem.init[k].items()]
        out += [(f"d_final{at}[{s!r}]", v) for s, v in problem.d_final[k].items()]
        out += [(f"bias_ih{at}[{n!r}]", v) for n, v in problem.bias_ih[k].items()]
    return out


def invoke(target: Target, problem: Problem) -> Outcome:
    """Run ``target`` on ``problem`` in this process. An exception becomes the outcome's error (the run
    goes on with the next case); inputs the target modified are listed (a ``ProtocolTarget`` names the
    argument of ``forward``/``backward``; any other target is checked on the problem's own arrays)."""
    kept = [(name, a, a.copy()) for name, a in _problem_arrays(problem)]
    got, error = None, ""
    try:
        got = target.run(problem)
        if not isinstance(got, dict):
            error = f"{type(target).__name__}.run returned {type(got).__name__}, expected a dict of quantities"
            got = None
    except TargetError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - the target's own exception is part of the report
        error = f"the target raised {type(exc).__name__}: {exc}"
    mutations = list(problem.extra.get("mutations", []))
    for name, now, before in kept:
        if now.shape != before.shape or not np.array_equal(now, before):
            mutations.append(f"the target modified the problem's {name}")
    return Outcome(got, error, mutations)


def run_case(target: Target, case: Case, diagnose_failures: bool = True, worker=None) -> CaseResult:
    """One case: the target's results (in this process, or in ``worker``, a :class:`Worker`, which
    enforces its timeout) against the reference. Whatever the target does (raise, hang, return
    something else, modify its inputs) becomes this case's result: the caller goes on to the next."""
    t0 = time.perf_counter()
    why = target.supports(case)
    if why:
        return CaseResult(case, "skip", detail=why)
    tol, _ = tolerance_for(target, case.dtype)
    biases = target.biases_for(case)
    problem = make_problem(case)
    problem.extra["biases"] = biases
    want = expected(problem, biases=biases, with_grads=target.has_gradients)
    outcome = worker.run(case, biases) if worker is not None else invoke(target, problem)
    if outcome.mutations and worker is None:  # the problem may have been changed: a fresh one to diagnose on
        problem = make_problem(case)
        problem.extra["biases"] = biases
    mutated = "; ".join(outcome.mutations)
    if outcome.error:
        return CaseResult(case, "error", detail="; ".join(x for x in (outcome.error, mutated) if x), tolerance=tol,
                          seconds=time.perf_counter() - t0)
    try:
        rows = compare(problem, outcome.got, want, tol, dtype=case.dtype)
    except Exception as exc:  # noqa: BLE001 - results nobody can compare are reported, not raised
        return CaseResult(case, "error", detail=f"the target's results cannot be compared: {type(exc).__name__}: "
                          f"{exc}", tolerance=tol, seconds=time.perf_counter() - t0)
    ok = all(r.passed for r in rows) and not mutated
    res = CaseResult(case, "pass" if ok else "FAIL", rows, detail=mutated, tolerance=tol)
    if res.status == "FAIL" and diagnose_failures and any(not r.within for r in rows):
        try:
            res.diagnoses = diagnose(problem, target, outcome.got, [r.quantity for r in res.failing], tol)
        except Exception:  # noqa: BLE001 - no diagnosis is still a report
            res.diagnoses = []
    res.seconds = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------------------ a target in a worker process
def _worker_main(conn, ref) -> None:
    """Entry point of a worker process: load the target (``ref``: a name for ``load_target`` or a
    picklable Target), say ready, then run one case per message until the pipe closes."""
    from .targets import load_target

    try:
        target = ref if isinstance(ref, Target) else load_target(ref)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"cannot load the target in the worker process: {type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", ""))
    while True:
        try:
            case, biases = conn.recv()
        except (EOFError, OSError):
            return
        problem = make_problem(case)
        problem.extra["biases"] = biases
        out = invoke(target, problem)
        try:
            conn.send(("done", out))
        except Exception as exc:  # noqa: BLE001 - e.g. results that cannot be pickled
            conn.send(("done", Outcome(None, f"the target's results cannot be sent back: {type(exc).__name__}: {exc}",
                                       out.mutations)))


def _exit_reason(code) -> str:
    if code is None:
        return "still running"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Worker:
    """Runs a target in a child process, one case at a time, and kills the process when a case gives
    no result within ``timeout`` seconds (a thread cannot stop a target stuck in a Python loop or in C
    code; a process can be killed). The next case starts a fresh process. The process is started with
    ``spawn`` (a fork of a process that runs PyTorch, TensorFlow or JAX threads can deadlock) and loads
    the target by the name it was loaded by (``target.spec``), or receives it pickled."""

    def __init__(self, target: Target, timeout: float, startup_timeout: float | None = None):
        if not timeout or timeout <= 0:
            raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
        self.ref = target.spec or target
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout or max(120.0, self.timeout))
        self.proc = None
        self.conn = None
        self.broken = ""  # why the worker cannot start: every later case gets this error

    def _start(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, self.ref), daemon=True,
                                name="lstm-spec-conform-worker")
        try:
            self.proc.start()
        except Exception as exc:  # noqa: BLE001 - e.g. a target that cannot be pickled
            self.proc = None
            self.broken = f"cannot start the worker process: {type(exc).__name__}: {exc}"
            return
        finally:
            child.close()
        if not self.conn.poll(self.startup_timeout):
            self.stop()
            self.broken = f"the worker process did not load the target within {self.startup_timeout:g} s"
            return
        try:
            kind, text = self.conn.recv()
        except EOFError:
            code = self.stop()
            self.broken = f"the worker process died while loading the target ({_exit_reason(code)})"
            return
        if kind != "ready":
            self.stop()
            self.broken = text

    def run(self, case: Case, biases: int) -> Outcome:
        if self.proc is None and not self.broken:
            self._start()
        if self.broken:
            return Outcome(None, self.broken)
        try:
            self.conn.send((case, biases))
            if not self.conn.poll(self.timeout):
                self.stop()
                return Outcome(None, f"timed out: no result within {self.timeout:g} s (--timeout); the target's "
                                     "process was killed")
            _, out = self.conn.recv()
            return out
        except (EOFError, OSError, BrokenPipeError):
            code = self.stop()
            return Outcome(None, f"the target's process died during the case ({_exit_reason(code)})")

    def stop(self):
        """Kill the process (if any); its exit code."""
        code = None
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join()
            code = self.proc.exitcode
            self.proc = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        return code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@dataclass
class Report:
    target: Target
    results: list

    @property
    def passed(self) -> bool:
        ran = [r for r in self.results if r.status != "skip"]
        return bool(ran) and all(r.status == "pass" for r in ran)

    def counts(self) -> dict:
        out = {"pass": 0, "FAIL": 0, "error": 0, "skip": 0}
        for r in self.results:
            out[r.status] += 1
        return out

    def max_errors(self) -> dict:
        """dtype -> (largest relative error over passing and failing cases, where)."""
        out: dict = {}
        for r in self.results:
            for row in r.rows:
                if row.rel > out.get(r.case.dtype, (-1.0, ""))[0]:
                    out[r.case.dtype] = (row.rel, f"{row.quantity}, {r.case.name}")
        return out

    def diagnosis_summary(self) -> list[tuple[str, str, int]]:
        """(title, detail, number of failing cases it explains), most frequent first."""
        seen: dict = {}
        for r in self.results:
            for d in r.diagnoses:
                k = (d.title, d.detail)
                seen[k] = seen.get(k, 0) + 1
        return sorted(((t, d, n) for (t, d), n in seen.items()), key=lambda x: -x[2])


def expand_variants(target: Target, cases) -> list[Case]:
    """Each case on the target's main API, then on each further API (``target.variants``) where that
    API supports it (a further API's unsupported cases are left out, not listed as skipped)."""
    variants = list(getattr(target, "variants", ()) or [""])
    done = [c for c in cases if c.variant]  # already expanded
    cases = [c for c in cases if not c.variant]
    out = done + [replace(c, variant=variants[0]) for c in cases]
    for v in variants[1:]:
        out += [replace(c, variant=v) for c in cases if target.supports(replace(c, variant=v)) is None]
    return out


def conform(target: Target, cases=None, progress=None, diagnose_failures: bool = True,
            timeout: float | None = None) -> Report:
    """Run ``cases`` (default: :func:`default_cases` for the target) and compare. With ``timeout``
    (seconds per case), the target runs in a worker process that is killed when a case takes longer
    (:class:`Worker`); without, in this process."""
    if cases is None:
        cases = default_cases(target.cells, [d for d in ("float64", "float32") if d in target.dtypes])
    cases = expand_variants(target, cases)
    results = []
    worker = Worker(target, timeout) if timeout else None
    try:
        for k, case in enumerate(cases, 1):
            r = run_case(target, case, diagnose_failures, worker)
            results.append(r)
            if progress:
                progress(k, len(cases), r)
    finally:
        if worker is not None:
            worker.stop()
    return Report(target, results)


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "inf"
    return "0" if v == 0 else f"{v:.1e}"


def header(target: Target) -> list[str]:
    import lstm_spec

    lines = [f"lstm-spec conform {lstm_spec.__version__}: target {target.name}"]
    if target.description:
        lines.append(f"  {target.description}")
    v = target.versions()
    lines.append(f"  python {platform.python_version()}, numpy {np.__version__}" + (f", {v}" if v else ""))
    tols = []
    for dt in target.dtypes:
        try:
            val, reason = tolerance_for(target, dt)
            tols.append(f"{dt} {val:g} ({reason})")
        except KeyError:
            pass
    lines.append("  tolerances (normwise relative error, lstm_spec.checks.tolerances): " + "; ".join(tols))
    lines.append("  gradients: " + ("compared (parameters, x, initial states)" if target.has_gradients
                                    else "not compared (forward only)"))
    return lines


def format_report(report: Report, verbose: bool = True, timings: bool = False) -> str:
    """The report as text. It depends only on the target and the cases (the same seed gives the same
    text, byte for byte); ``timings`` adds each case's seconds, which vary from run to run."""
    out = header(report.target) + [""]
    for k, r in enumerate(report.results, 1):
        title = f"[{k}/{len(report.results)}] {r.case.name}: {r.status}"
        if r.status == "skip":
            out.append(f"{title} ({r.detail})")
            continue
        out.append(f"{title} ({r.seconds:.2f} s)" if timings else title)
        if r.status == "error" or r.detail:
            out.append(f"    {r.detail}")
        if r.status == "error":
            continue
        rows = r.rows if (verbose or r.status != "pass") else []
        if rows:
            head = ("quantity", "max abs", "rel", "worst element", "tolerance", "result")
            body = [(x.quantity, _fmt(x.max_abs), _fmt(x.rel), x.worst, f"{x.tolerance:g}",
                     "pass" if x.passed else "FAIL") for x in rows]
            widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
            fmt = lambda cols: "    " + "  ".join(str(c).ljust(w) for c, w in zip(cols, widths)).rstrip()  # noqa: E731
            out.append(fmt(head))
            out += [fmt(b) for b in body]
            for x in rows:
                if x.detail and not x.passed:
                    out.append(f"    {x.quantity}: {x.detail}")
        if r.status == "FAIL" and any(not x.within for x in r.rows):
            if r.diagnoses:
                for d in r.diagnoses:
                    out.append(f"    diagnosis: {d.title}: {d.detail} (reproduces the target's numbers)")
            elif r.case.single:
                out.append("    diagnosis: no known bug signature reproduces these numbers")
            else:
                out.append("    diagnosis: signatures are tried on single-layer, single-direction cases")
    c = report.counts()
    out.append("")
    for dt, (err, where) in sorted(report.max_errors().items()):
        out.append(f"largest relative error in {dt}: {_fmt(err)} ({where})")
    out.append(f"{c['pass']} passed, {c['FAIL']} failed, {c['error']} errors, {c['skip']} skipped "
               f"(target {report.target.name})")
    summary = report.diagnosis_summary()
    if summary:
        out.append("diagnosis over all failing cases:")
        for title, detail, n in summary:
            out.append(f"  {title}: {detail} ({n} case{'s' if n > 1 else ''})")
    elif c["FAIL"]:
        out.append("diagnosis: no known bug signature reproduces the failures")
    out.append("CONFORMS" if report.passed else "DOES NOT CONFORM")
    return "\n".join(out)


def stderr_progress(k, n, r: CaseResult):
    print(f"  [{k}/{n}] {r.case.name}: {r.status}"
          + (f" ({r.detail})" if r.status == "skip" else f" ({r.seconds:.2f} s)"), file=sys.stderr, flush=True)
