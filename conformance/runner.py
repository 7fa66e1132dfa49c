"""`lstm-spec conform`: run the cases on a target and on the reference, compare, diagnose, report."""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import platform
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np

from lstm_spec.checks.cases import CONFORM_SHAPES, LAYERS_SHAPE, LENGTHS_SHAPE
from lstm_spec.checks.tolerances import TOLERANCES

from .compare import Row, compare
from .localise import localise
from .problem import Case, Problem, expected, make_problem, reference_module
from .signatures import diagnose
from .targets import (
    FORWARD,
    ProtocolError,
    Target,
    TargetError,
    constants_words,
    describe,
    users_interrupt,
    watching_interrupts,
)


def default_cases(cells=("lstm",), dtypes=("float64", "float32"), seed: int = 0) -> list[Case]:
    """The cases `conform` runs: every shape of checks.cases.CONFORM_SHAPES in each dtype, then the reverse
    direction, sequence lengths shorter than T (forward and reverse), bidirectional and two layers."""
    cases = []
    for cell in cells:
        for dt in dtypes:
            for k, shape in enumerate(CONFORM_SHAPES):
                cases.append(Case(cell, shape, dt, seed + 10 * k + (1 if dt == "float32" else 0)))
            cases.append(Case(cell, LENGTHS_SHAPE, dt, seed + 101, direction="reverse"))
            cases.append(Case(cell, LENGTHS_SHAPE, dt, seed + 102, lengths=(5, 3, 1)))
            cases.append(Case(cell, LENGTHS_SHAPE, dt, seed + 103, direction="reverse", lengths=(2, 5, 4)))
            cases.append(Case(cell, LAYERS_SHAPE, dt, seed + 104, direction="bidirectional"))
            cases.append(Case(cell, LAYERS_SHAPE, dt, seed + 105, layers=2))
    return cases


def tolerance_for(target: Target, dtype: str) -> tuple[float, str]:
    key = (target.tolerance_key, dtype)
    tol = TOLERANCES.get(key) or TOLERANCES[("conform", dtype)]
    return tol.value, tol.reason


class CaseStatus(StrEnum):
    """A case's outcome (``str(CaseStatus.PASS) == "pass"``; the JSON report writes the value)."""

    PASS = "pass"
    FAIL = "FAIL"
    ERROR = "error"  # the target raised, hung or broke the protocol
    SKIP = "skip"  # the target does not support the case


@dataclass
class CaseResult:
    case: Case
    status: CaseStatus  # a string of its vocabulary is taken too ("pass"); any other raises ValueError
    rows: list = field(default_factory=list)
    diagnoses: list = field(default_factory=list)
    localisation: object = None  # a failing case's localise.Localisation
    detail: str = ""
    tolerance: float = 0.0
    seconds: float = 0.0
    output: str = ""  # a failing case: the tail of what the target printed (stdout and stderr)
    protocol: bool = False  # the error breaks the protocol (a result under an unknown name): exit 2
    untested: list = field(default_factory=list)  # quantities the target does not provide (declared)

    def __post_init__(self):
        self.status = CaseStatus(self.status)

    @property
    def failing(self) -> list[Row]:
        return [r for r in self.rows if not r.passed]


@dataclass
class Outcome:
    """What one call of a target gave: its results, or why there are none; the inputs it modified."""

    got: dict | None
    error: str = ""
    mutations: list = field(default_factory=list)
    output: str = ""  # the tail of what the target printed during the call (see output_tail)
    protocol: bool = False  # the error is a ProtocolError (conform exits with 2)


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
    goes on with the next case), whatever it is (``sys.exit``, KeyboardInterrupt: only the user's Ctrl-C
    stops the run); inputs the target modified are listed (a ``ProtocolTarget`` names the argument of
    ``forward``/``backward``; any other target is checked on the problem's own arrays)."""
    kept = [(name, a, a.copy()) for name, a in _problem_arrays(problem)]
    got, error, protocol = None, "", False
    try:
        with watching_interrupts():
            got = target.run(problem)
        if not isinstance(got, dict):
            error = f"{type(target).__name__}.run returned {type(got).__name__}, expected a dict of quantities"
            got = None
    except TargetError as exc:
        error, protocol = str(exc), isinstance(exc, ProtocolError)
    except BaseException as exc:  # SystemExit, KeyboardInterrupt, ... of the target: the case's result
        if users_interrupt(exc):
            raise
        error = f"the target raised {describe(exc)}"
    where, forward = problem.extra.pop(FORWARD, ("", None))
    if error and forward is not None:  # the backward failed: the forward's results are still compared
        got = forward
        error += ("" if where in error else f" in {where}") + " (the forward's results are compared)"
    mutations = list(problem.extra.get("mutations", []))
    for name, now, before in kept:
        if now.shape != before.shape or not np.array_equal(now, before):
            mutations.append(f"the target modified the problem's {name}")
    return Outcome(got, error, mutations, protocol=protocol)


def run_case(target: Target, case: Case, diagnose_failures: bool = True, worker=None) -> CaseResult:
    """One case: the target's results (in this process, or in ``worker``, a :class:`CaseWorker`, which
    enforces its timeout) against the reference. Whatever the target does (raise, hang, return
    something else, modify its inputs) becomes this case's result: the caller goes on to the next.
    Quantities the target does not provide (declared) are neither compared nor diagnosed; when its
    backward fails after its forward gave results, those are compared and the case errs."""
    t0 = time.perf_counter()
    case = target.adapt(case)
    why = target.supports(case)
    if why:
        return CaseResult(case, CaseStatus.SKIP, detail=why)
    tol, _ = tolerance_for(target, case.dtype)
    biases = target.biases_for(case)
    problem = make_problem(case)
    problem.extra["biases"] = biases
    want = expected(problem, biases=biases, with_grads=target.has_gradients)
    untested = target.untested(list(want))
    want = {q: v for q, v in want.items() if q not in untested}
    outcome = worker.run(case, biases) if worker is not None else invoke_here(target, problem)
    if outcome.mutations and worker is None:  # the problem may have been changed: a fresh one to diagnose on
        problem = make_problem(case)
        problem.extra["biases"] = biases
    mutated = "; ".join(outcome.mutations)
    done = {"tolerance": tol, "output": outcome.output, "protocol": outcome.protocol, "untested": untested}
    if outcome.error and not outcome.got:
        return CaseResult(case, CaseStatus.ERROR, detail="; ".join(x for x in (outcome.error, mutated) if x),
                          seconds=time.perf_counter() - t0, **done)
    got = {q: v for q, v in outcome.got.items() if q not in untested}
    if outcome.error:  # the backward failed: the forward's quantities
        want = {q: v for q, v in want.items() if not q.startswith("d ")}
    try:
        rows = compare(problem, got, want, tol, dtype=case.dtype)
    except Exception as exc:  # results nobody can compare are reported, not raised
        return CaseResult(case, CaseStatus.ERROR, detail=f"the target's results cannot be compared: {describe(exc)}",
                          seconds=time.perf_counter() - t0, **done)
    ok = all(r.passed for r in rows) and not mutated and not outcome.error
    detail = "; ".join(x for x in (outcome.error, mutated) if x)
    status = CaseStatus.ERROR if outcome.error else CaseStatus.PASS if ok else CaseStatus.FAIL
    res = CaseResult(case, status, rows, detail=detail, **done)
    if ok:
        res.output = ""
    if diagnose_failures and not res.protocol and any(not r.within for r in rows):
        if not outcome.error:  # the localiser's probes call the backward
            res.localisation = _localise(target, problem, got, tol, worker, biases)
        try:
            res.diagnoses = diagnose(problem, target, got, [r.quantity for r in res.failing], tol)
        except Exception:  # no diagnosis is still a report
            res.diagnoses = []
    res.seconds = time.perf_counter() - t0
    return res


def _localise(target: Target, problem: Problem, got: dict, tol: float, worker, biases: int):
    """A failing case's localisation (conformance/localise.py), or None. With a worker, the localiser's
    probes run in it (under its timeout), like the case itself."""
    run = None
    if worker is not None:
        def run(p: Problem) -> dict:
            out = worker.run(p.case, biases, p)
            if out.error:
                raise TargetError(out.error)
            return out.got
    try:
        return localise(problem, target, tol, got=got, run=run)
    except Exception:  # no localisation is still a report
        return None


# ------------------------------------------------------------------------------ what a target prints
TAIL_BYTES, TAIL_LINES, LINE_CHARS = 4096, 20, 200  # the most of a target's output a report shows, per case


def _flush_output() -> None:
    """Flush Python's and C's buffered stdout and stderr (a C extension's printf too)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or replaced stream
            stream.flush()
    with contextlib.suppress(Exception):  # no C library to flush
        import ctypes

        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def redirect_output(fd: int):
    """While active, file descriptors 1 and 2, ``sys.stdout`` and ``sys.stderr`` write to ``fd``: what a
    target prints (from Python or C, or a child process) stays out of conform's report."""
    _flush_output()
    saved = (os.dup(1), os.dup(2))
    streams = (sys.stdout, sys.stderr)
    text = open(fd, "w", closefd=False, encoding="utf-8", errors="backslashreplace")
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = text
        yield
    finally:
        _flush_output()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in saved:
            os.close(f)
        text.close()


def output_tail(fd: int) -> str:
    """The end of what was written to ``fd`` (a regular file): at most TAIL_LINES lines of TAIL_BYTES,
    non-printable characters as '?', under a heading that gives the whole size; '' when nothing was."""
    size = os.fstat(fd).st_size
    if not size:
        return ""
    data = os.pread(fd, TAIL_BYTES, max(0, size - TAIL_BYTES))
    lines = data.decode("utf-8", "replace").splitlines()[-TAIL_LINES:]
    lines = ["".join(c if c.isprintable() else "?" for c in x[:LINE_CHARS]) + ("..." if len(x) > LINE_CHARS else "")
             for x in lines]
    return "\n".join([f"the target's output ({size} bytes, the last {len(lines)} lines):", *lines])


def invoke_here(target: Target, problem: Problem) -> Outcome:
    """:func:`invoke` in this process, what the target prints going to a temporary file (the outcome
    keeps its tail for the report)."""
    with tempfile.TemporaryFile() as fh:
        with redirect_output(fh.fileno()):
            out = invoke(target, problem)
        out.output = output_tail(fh.fileno())
    return out


# ------------------------------------------------------------------------------ results as plain data
class _Opaque:
    """Stands, in conform's process, for a returned value that is not a plain array (see _plain_value)."""

    kind = None  # the dtype it had in the worker, None: it did not convert to an array

    def __array__(self, dtype=None, copy=None):
        if self.kind is None:
            raise TypeError(f"{type(self).__name__} is not an array")
        return np.empty((), dtype=object)


def _plain_value(value) -> tuple:
    """A returned value as plain data (no class of the target's is ever unpickled by conform): an array
    of a numeric, boolean or string dtype as (dtype, shape, bytes); anything else by its type's name."""
    try:
        a = np.asarray(value)
    except BaseException:  # what does not convert is reported by the comparison
        return ("opaque", type(value).__name__, None)
    if a.dtype.kind in "biufcSUmM" and a.dtype.fields is None:
        return ("array", a.dtype.str, a.shape, a.tobytes())
    return ("opaque", type(value).__name__, a.dtype.str)


def _from_plain(item) -> object:
    if item[0] == "array":
        _, dt, shape, data = item
        if np.dtype(dt).kind not in "biufcSUmM":
            raise ValueError(f"unexpected dtype {dt}")
        return np.frombuffer(data, dtype=np.dtype(dt)).reshape(shape).copy()
    _, name, dt = item
    return type(str(name), (_Opaque,), {"kind": dt})()


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name}: only plain data comes back from the worker process")


def _plain(out: Outcome) -> tuple:
    got = None if out.got is None else [(str(k), _plain_value(v)) for k, v in out.got.items()]
    return ("done", got, str(out.error), [str(m) for m in out.mutations], bool(out.protocol))


def _outcome(message: tuple) -> Outcome:
    _, got, error, mutations, protocol = message
    return Outcome(None if got is None else {k: _from_plain(v) for k, v in got}, error, list(mutations),
                   protocol=bool(protocol))


def _send(conn, message: tuple) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _receive(conn) -> tuple:
    """A message of the worker, read as plain data (restricted unpickling)."""
    import io

    return _PlainUnpickler(io.BytesIO(conn.recv_bytes())).load()


# ------------------------------------------------------------------------------ a target in a worker process
def _worker_setup(output: str) -> None:
    """The worker's own session (killed as a group with the children it starts; Ctrl-C in the terminal
    reaches conform only), killed with its parent (Linux), its stdout and stderr appended to ``output``."""
    with contextlib.suppress(OSError):
        os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # best effort
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    fd = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _worker_target(ref) -> Target:
    from .targets import guarded, load_target

    if isinstance(ref, bytes):
        return guarded("(pickled)", "unpickling the target", pickle.loads, ref)
    return load_target(ref)


def _worker_main(conn, ref, output: str) -> None:
    """Entry point of a worker process: load the target (``ref``: a name for ``load_target`` or a
    pickled Target), say ready, then run one case per message until the pipe closes. Every message
    back is plain data (:func:`_plain`)."""
    _worker_setup(output)
    try:
        target = _worker_target(ref)
    except BaseException as exc:  # reported to the parent
        _send(conn, ("error", f"cannot load the target in the worker process: {describe(exc)}"))
        return
    _send(conn, ("ready", ""))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        case, biases = message[:2]
        if len(message) > 2:  # a problem derived from the case (the localiser's probes), sent without its module
            problem = message[2].with_(module=reference_module(case.cell))
        else:
            problem = make_problem(case)
        problem.extra["biases"] = biases
        out = invoke(target, problem)
        _flush_output()
        try:
            message = _plain(out)
        except BaseException as exc:  # e.g. a key whose str() raises
            message = _plain(Outcome(None, f"the target's results cannot be sent back: {describe(exc)}",
                                     out.mutations))
        _send(conn, message)


def _exit_reason(code) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _kill(proc) -> None:
    """Kill a worker process and every process of its session (children it started included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, TypeError):
        pass
    if proc.is_alive():
        proc.kill()


EXIT_GRACE = 2.0  # seconds a worker that closed its pipe has to exit by itself (its exit code is reported)


class CaseWorker:
    """Runs a target in a child process, one case at a time, and kills the process when a case gives
    no result within ``timeout`` seconds (a thread cannot stop a target stuck in a Python loop or in C
    code; a process can be killed). The next case starts a fresh process. The process is started with
    ``spawn`` (a fork of a process that runs PyTorch, TensorFlow or JAX threads can deadlock), is not
    daemonic (a target may start processes), runs in its own session (killed with every process it
    started) with its stdout and stderr in a file (a failing case's report shows the tail), and loads
    the target by the name it was loaded by (``target.spec``), or receives it pickled."""

    def __init__(self, target: Target, timeout: float, startup_timeout: float | None = None):
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r} (finite, > 0)")
        self.target = target
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout or max(120.0, self.timeout))
        self.proc = None
        self.conn = None
        self.output = ""  # the file the process's stdout and stderr go to
        self._finalizer = None
        self.broken = ""  # why the worker cannot start: every later case gets this error

    def _ref(self):
        return self.target.spec or pickle.dumps(self.target)

    def _start(self) -> None:
        import multiprocessing
        import multiprocessing.util

        ctx = multiprocessing.get_context("spawn")
        fd, self.output = tempfile.mkstemp(prefix="lstm-spec-conform-", suffix=".out")
        os.close(fd)
        self.conn, child = ctx.Pipe()
        try:
            with watching_interrupts():  # pickling a target runs its code
                self.proc = ctx.Process(target=_worker_main, args=(child, self._ref(), self.output), daemon=False,
                                        name="lstm-spec-conform-worker")
                self.proc.start()
        except BaseException as exc:  # e.g. a target that cannot be pickled (its __reduce__ is target code)
            self.stop()
            if users_interrupt(exc):
                raise
            self.broken = f"cannot start the worker process: {describe(exc)}"
            return
        finally:
            child.close()
        # killed before multiprocessing joins its children at exit (a forgotten CaseWorker must not hang it)
        self._finalizer = multiprocessing.util.Finalize(self, _kill, args=(self.proc,), exitpriority=10)
        self.broken = self._ready()

    def _ready(self) -> str:
        """'' once the worker has loaded the target, else why it cannot (the worker is then stopped)."""
        why = ""
        try:
            if not self.conn.poll(self.startup_timeout):
                why = f"the worker process did not load the target within {self.startup_timeout:g} s"
            else:
                kind, text = _receive(self.conn)
                why = "" if kind == "ready" else text
        except (EOFError, OSError):
            why = f"the worker process died while loading the target ({self._ended()})"
        except Exception as exc:  # not a message of ours
            why = f"the worker process sent an unreadable message: {describe(exc)}"
        if why:
            self.stop()
        return why

    def run(self, case: Case, biases: int, problem: Problem | None = None) -> Outcome:
        if self.proc is None and not self.broken:
            self._start()
        if self.broken:
            return Outcome(None, self.broken)
        with contextlib.suppress(OSError):
            os.truncate(self.output, 0)  # the worker appends: this case's output only
        ended = True  # the process cannot go on: timed out, died, or sent what conform cannot read
        try:
            self.conn.send((case, biases) if problem is None else (case, biases, problem.with_(module=None)))
            if not self.conn.poll(self.timeout):
                out = Outcome(None, f"timed out: no result within {self.timeout:g} s (--timeout); the target's "
                                    "process was killed")
            else:
                out, ended = _outcome(_receive(self.conn)), False
        except (EOFError, OSError):
            out = Outcome(None, f"the target's process died during the case ({self._ended()})")
        except Exception as exc:  # not plain data: the worker's messages are not trusted
            out = Outcome(None, f"the target's results cannot be read back: {describe(exc)}")
        out.output = self._tail()
        if ended:
            self.stop()  # the next case starts a fresh process
        return out

    def _tail(self) -> str:
        try:
            with open(self.output, "rb") as fh:
                return output_tail(fh.fileno())
        except OSError:
            return ""

    def _ended(self) -> str:
        """Why the worker's pipe closed: its exit code or signal once it has exited by itself (it has
        EXIT_GRACE seconds), not the SIGKILL of the clean-up."""
        self.proc.join(EXIT_GRACE)
        code = self.proc.exitcode
        return _exit_reason(code) if code is not None else "it closed its pipe without exiting, and was killed"

    def stop(self):
        """Kill the process (if any) and every process it started; its exit code."""
        code = None
        if self.proc is not None and self.proc.pid is not None:  # started
            _kill(self.proc)
            self.proc.join()
            code = self.proc.exitcode
        self.proc = None
        if self._finalizer is not None:
            self._finalizer.cancel()
            self._finalizer = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.output:
            with contextlib.suppress(OSError):
                os.remove(self.output)
            self.output = ""
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
        ran = [r for r in self.results if r.status != CaseStatus.SKIP]
        return bool(ran) and all(r.status == CaseStatus.PASS for r in ran)

    @property
    def protocol_errors(self) -> list[str]:
        """The distinct errors of cases whose results break the protocol (exit 2), in order."""
        return list(dict.fromkeys(r.detail for r in self.results if r.protocol))

    @property
    def exit_code(self) -> int:
        """`lstm-spec conform`'s exit status for this report: 2 when a result breaks the protocol (e.g. a
        gradient under an unknown name), else 0 when every case that ran passes, else 1."""
        return 2 if self.protocol_errors else 0 if self.passed else 1

    def not_tested(self) -> list[str]:
        """What this run did not test because the target does not provide it (declared or forward only)."""
        t = self.target
        out = []
        if not t.has_gradients:
            out.append("every gradient (the target has no backward: forward only)")
        missing = sorted(dict.fromkeys(q for r in self.results for q in r.untested),  # parameters, x, states
                         key=lambda q: (q == "d x" or q.endswith("0"), q.endswith("0")))
        if missing:
            out.append(f"{', '.join(missing)} (not returned by the backward: declared conformance['gradients'])")
        if not t.initial_states:
            out.append("the t = 0 terms with non-zero initial states (declared conformance['initial_states'] "
                       "False: every case starts from zero states)")
        if t.has_gradients and not getattr(t, "d_final", True):
            out.append("cotangents on the final states (declared conformance['d_final'] False: the backward "
                       "takes none; every case's are zero)")
        if t.has_gradients and getattr(t, "loss", "sequence") == "last":
            out.append("cotangents on the outputs before the last step (declared conformance['loss'] 'last': "
                       "dy is zero there in every case)")
        return out

    def counts(self) -> dict:
        out = {s.value: 0 for s in CaseStatus}
        for r in self.results:
            out[r.status.value] += 1
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
    cases = [target.adapt(c) for c in cases]
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
    (:class:`CaseWorker`); without, in this process."""
    if cases is None:
        cases = default_cases(target.cells, [d for d in ("float64", "float32") if d in target.dtypes])
    cases = expand_variants(target, cases)
    results = []
    worker = CaseWorker(target, timeout) if timeout else None
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
    declared = getattr(target, "declared", None)
    lines.append("  gradients: " + ("not compared (forward only)" if not target.has_gradients else
                                    "compared (parameters, x, initial states)" if declared is None else
                                    f"compared: {', '.join(declared)} (declared); the others not provided"))
    if getattr(target, "constants", None):
        lines.append(f"  constants: {constants_words(target.constants)} (declared): the reference runs with them")
    if not target.initial_states:
        lines.append("  initial states: zero in every case (declared: the target takes none); the t = 0 terms "
                     "with non-zero initial states are not tested")
    if not getattr(target, "batch", True):
        lines.append("  batch: none (declared): the target is called once per batch element, its results "
                     "joined (parameter gradients summed)")
    if target.has_gradients and not getattr(target, "d_final", True):
        lines.append("  cotangents on the final states: zero in every case (declared: the backward takes none)")
    if target.has_gradients and getattr(target, "loss", "sequence") == "last":
        lines.append("  loss on the last output only (declared): the backward gets dy of the last valid step, "
                     "(B, H); dy is zero before it")
    return lines


# quantity classes of the summary table: what a target returns, grouped as a reader thinks of them
_CLASSES = (("outputs", "y, final states"), ("params", "parameter gradients"), ("inputs", "d x, d initial states"))


def _table(head: tuple, body: list, indent: str) -> list[str]:
    """Rows of text as left-aligned columns, the head first."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    return [indent + "  ".join(str(c).ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()
            for cols in [head, *body]]


def _quantity_class(quantity: str) -> str:
    base = quantity.split("[")[0].split("@")[0]
    if not base.startswith("d "):
        return "outputs"
    name = base[2:]
    return "inputs" if name == "x" or name.endswith("0") else "params"


def _family(case: Case) -> str:
    """A case's family for the summary: dtype, direction, and what else it exercises (not its shape)."""
    parts = [case.dtype, case.direction]
    if case.lengths is not None:
        parts.append("lengths")
    if case.layers > 1:
        parts.append(f"{case.layers} layers")
    if case.variant:
        parts.append(case.variant)
    return " ".join(parts)


def summary_table(report: Report) -> list[str]:
    """One line per case family and quantity class: pass, FAIL k/n (largest relative error), or - when not
    run; skipped and erring cases counted on their own."""
    families: dict = {}
    for r in report.results:
        families.setdefault(_family(r.case), []).append(r)
    head = ("cases", "ran") + tuple(title for _, title in _CLASSES)
    body = []
    for fam, results in families.items():
        ran = [r for r in results if r.status in (CaseStatus.PASS, CaseStatus.FAIL)]
        cells = []
        for key, _ in _CLASSES:  # an erring case's rows too (a backward that raised: its forward's rows)
            rows = [(r, x) for r in results for x in r.rows if _quantity_class(x.quantity) == key]
            bad = {id(r) for r, x in rows if not x.passed}
            with_rows = {id(r) for r, _ in rows}
            worst = max((x.rel for _, x in rows if not x.passed), default=0.0)
            cells.append("-" if not rows else "pass" if not bad else
                         f"FAIL {len(bad)}/{len(with_rows)} (rel {_fmt(worst)})")
        skipped = sum(r.status == CaseStatus.SKIP for r in results)
        extra = ([f"{skipped} skipped"] if skipped else []) + (
            [f"{n} errors"] if (n := sum(r.status == CaseStatus.ERROR for r in results)) else [])
        body.append((fam, f"{len(ran)}/{len(results)}" + (f" ({', '.join(extra)})" if extra else "")) + tuple(cells))
    reasons: dict = {}  # why cases were skipped, once each under the table (the table stays narrow)
    for r in report.results:
        if r.status == CaseStatus.SKIP:
            reasons[r.detail] = reasons.get(r.detail, 0) + 1
    notes = [f"  skipped: {why} ({n} case{'s' if n > 1 else ''})" for why, n in reasons.items()]
    return _table(head, body, "  ") + notes


def _case_block(r: CaseResult, title: str, verbose: bool) -> list[str]:
    """A case in full: its error or output tail, localisation, the rows (failing ones unless verbose) and
    the diagnosis."""
    out = [title]
    if r.status == CaseStatus.ERROR or r.detail:
        out.append(f"    {r.detail}")
    if r.output:
        head, *lines = r.output.splitlines()
        out += [f"    {head}"] + [f"      | {x}" for x in lines]
    if r.status == CaseStatus.ERROR and not r.rows:
        return out
    if r.localisation is not None:
        out += [f"    {x}" for x in r.localisation.lines()]
    rows = r.rows if verbose else [x for x in r.rows if not x.passed]
    if rows:
        head = ("quantity", "max abs", "rel", "worst element", "tolerance", "result")
        body = [(x.quantity, _fmt(x.max_abs), _fmt(x.rel), x.worst, f"{x.tolerance:g}",
                 "pass" if x.passed else "FAIL") for x in rows]
        out += _table(head, body, "    ")
        out += [f"    {x.quantity}: {x.detail}" for x in rows if x.detail and not x.passed]
    if r.status != CaseStatus.PASS and not r.protocol and any(not x.within for x in r.rows):
        if r.diagnoses:
            out += [f"    diagnosis: {d.title}: {d.detail}"
                    + ("" if d.title.startswith("partly explained") else " (reproduces the target's numbers)")
                    for d in r.diagnoses]
        elif r.case.single:
            out.append("    diagnosis: no known bug signature reproduces these numbers")
        else:
            out.append("    diagnosis: signatures are tried on single-layer, single-direction cases")
    return out


def format_report(report: Report, verbose: bool = True, timings: bool = False) -> str:
    """The report as text. It depends only on the target and the cases (the same seed gives the same
    text, byte for byte); ``timings`` adds each case's seconds, which vary from run to run. ``verbose``:
    every case with every row; otherwise a summary table (one line per case family and quantity class)
    and the failing cases in full."""
    out = header(report.target) + [""]
    if not verbose:
        out += ["summary (cases ran/listed per family; largest relative error of a failing class):"]
        out += summary_table(report)
    shown: set = set()
    for k, r in enumerate(report.results, 1):
        title = f"[{k}/{len(report.results)}] {r.case.name}: {r.status}"
        if r.status == CaseStatus.SKIP:
            if verbose:
                out.append(f"{title} ({r.detail})")
            continue
        if r.status == CaseStatus.PASS and not verbose:
            continue
        title = f"{title} ({r.seconds:.2f} s)" if timings else title
        if verbose or r.case.dtype not in shown:
            shown.add(r.case.dtype)
            out += ([""] if not verbose else []) + _case_block(r, title, verbose)
        else:  # a dtype's first failure is shown in full; the others in a line (--verbose: all in full)
            bad = ", ".join(x.quantity for x in r.rows if not x.passed)
            why = f"; diagnosis: {r.diagnoses[0].title}" if r.diagnoses else ""
            out.append(f"{title} ({r.detail if r.status == CaseStatus.ERROR else 'failing: ' + bad}{why})")
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
    out += [f"not tested: {x}" for x in report.not_tested()]
    out += [f"the target breaks the protocol (exit 2): {x}" for x in report.protocol_errors]
    if getattr(report.target, "constants", None):
        out.append(f"{'conforms' if report.passed else 'does not conform'} to {', '.join(report.target.cells)} with "
                   f"{constants_words(report.target.constants)} (declared)")
    out.append("CONFORMS" if report.passed else "DOES NOT CONFORM")
    return "\n".join(out)


def _finite(v):
    """JSON has no inf or nan: they are written as strings."""
    return v if isinstance(v, (int, float)) and math.isfinite(v) else str(v)


def report_dict(report: Report) -> dict:
    """The report as plain data for tools (``lstm-spec conform --json``): the same content as the text,
    deterministic for a given target and seed (no timings)."""
    import lstm_spec

    cases = []
    for r in report.results:
        entry = {"name": r.case.name, "family": _family(r.case), "status": r.status.value, "detail": r.detail,
                 "protocol": r.protocol, "not_provided": list(r.untested),
                 "rows": [{"quantity": x.quantity, "class": _quantity_class(x.quantity), "max_abs": _finite(x.max_abs),
                           "rel": _finite(x.rel), "worst": x.worst, "tolerance": x.tolerance, "passed": x.passed,
                           "detail": x.detail or x.defect} for x in r.rows],
                 "diagnoses": [{"key": d.key, "title": d.title, "detail": d.detail} for d in r.diagnoses]}
        if r.localisation is not None:
            entry["localisation"] = r.localisation.as_dict()
        cases.append(entry)
    return {"lstm_spec": lstm_spec.__version__, "target": report.target.name, "conforms": report.passed,
            "constants": dict(getattr(report.target, "constants", None) or {}),
            "counts": report.counts(), "exit_code": report.exit_code, "not_tested": report.not_tested(),
            "protocol_errors": report.protocol_errors,
            "diagnosis_summary": [{"title": t, "detail": d, "cases": n} for t, d, n in report.diagnosis_summary()],
            "cases": cases}


def progress_text(r: CaseResult) -> str:
    """A finished case, for the progress line or bar."""
    return f"{r.case.name}: {r.status}" + (f" ({r.detail})" if r.status == CaseStatus.SKIP else f" ({r.seconds:.2f} s)")

