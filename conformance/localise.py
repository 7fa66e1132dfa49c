"""Localisation of a conformance failure, in the derivation's own names (issue 14, deliverable 1).

:func:`localise` treats the target as a black box: it only calls ``target.run`` (or ``run``) on
problems derived from the failing one, and the reference (:func:`problem.expected`). It says

- **forward or backward**: whether the target's gradients are the gradient of its *own* forward,
  checked against directional derivatives of L = <dy, y> + sum_s <d_final[s], s_T> computed from the
  target's outputs (central differences, Richardson-extrapolated over three step sizes, in float64
  when the target offers it; two random directions per returned gradient);
- **where in time**: the first step where the target's per-step output y[t] departs from the
  reference (forward order), and the first step, counting from the last, where its per-step input
  gradient d x[t] does (reverse order: the order of the backward; without d x, not localised in time);
- **which adjoint**: in a one-step B = 1 probe, a gate's bias gradient is its pre-activation adjoint
  (d_z_f ...), its W and U gradients are outer products of it with x and h0, d h0 is d_h_prev, d c0
  is d_c_prev: each is named right or wrong, and the single derived statements (the module's
  docstring, as the docs print it) whose error would make exactly the wrong ones wrong;
- **which quantities** fail, pass, or are not provided (never used).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from lstm_spec.checks.tolerances import error_scale, rel_error, step_errors, tolerance

from .compare import compare
from .problem import Problem, expected, make_problem

FD_FLOOR = {dt: tolerance("localise", dt) for dt in ("float64", "float32")}  # smallest "not the gradient"
FD_STEP = {"float64": 2e-3, "float32": 5e-2}  # largest of the three central-difference steps (rms(v) = 1)
DIRECTIONS = 2  # random directions per returned gradient
SHOWN = 5  # gradients named in the verdict line (largest discrepancy first)


@dataclass
class Check:
    """One returned gradient against directional derivatives of the target's own forward."""

    quantity: str
    rel: float  # rel_error(<g, v>, D_v L) over the directions: max |<g, v> - D_v L| / max |D_v L|
    noise: float  # the finite differences' own error estimate, same scale
    consistent: bool


@dataclass
class Localisation:
    case: str
    verdict: str  # "forward", "backward", "both", "neither", "forward only", "not localised"
    checks: list = field(default_factory=list)
    fd_dtype: str = ""
    fd_note: str = ""  # e.g. why the check is weaker, or skipped
    forward_step: int | None = None  # first step (forward order) where y departs
    final_wrong: list = field(default_factory=list)  # final states that depart
    backward_step: int | None = None  # first step (counting from the last) where the backward departs
    backward_how: str = ""  # "d x", or why the backward is not localised in time ("not provided", ...)
    T: int = 0
    adjoints: dict = field(default_factory=dict)  # derived name -> "right" / "wrong" / "not provided"
    probe: str = ""  # which one-step probe the adjoints come from
    probe_note: str = ""  # e.g. the one-step B = 1 probe agrees and the gradients depart only with B > 1
    statements: list = field(default_factory=list)  # single derived statements that explain the wrong ones
    failing: list = field(default_factory=list)
    passing: list = field(default_factory=list)
    not_provided: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f"localisation: {_verdict_text(self)}"]
        out += [f"  {n}" for n in self.notes]
        when = _time_text(self)
        if when:
            out.append(f"  where in time: {when}")
        if self.adjoints:
            out.append(f"  which adjoint ({self.probe}): {_adjoint_text(self.adjoints)}")
            wrong = "wrong" in self.adjoints.values()
            if self.probe_note:
                out.append(f"  {self.probe_note}")
            if self.verdict == "forward" and wrong:
                out.append("  (they differ because your forward does: they are the adjoints of your forward)")
            elif self.verdict == "both" and wrong:
                out.append("  (they differ at least in part because your forward does)")
            elif self.statements:
                out.append("  one wrong derived statement would explain it: " + " | ".join(self.statements))
            elif wrong and self.verdict in ("backward", "both"):
                out.append("  no single derived statement explains the wrong ones")
        out.append(f"  quantities: {_quantities_text(self)}")
        return out


class ProbeError(Exception):
    """A probe the target could not run (it raised, or returned no results)."""


# ------------------------------------------------------------------------------------------------ API
def localise(problem: Problem, target, tolerance: float, got: dict | None = None, run=None) -> Localisation:
    """Localise ``target``'s failure on ``problem``. ``got``: the target's results on ``problem``
    (run again when None); ``run``: how to run the target on a derived problem (default
    ``target.run``; e.g. a worker process). Never raises for the target's faults: a probe the
    target cannot run becomes a note."""
    runner = _Runner(target, problem, run)
    loc = Localisation(problem.case.name, "not localised")
    try:
        got = got if got is not None else runner.full(problem)
        want = runner.expected(problem)
        _quantities(loc, problem, got, want, tolerance)
        work, wgot, wwant = _plain(loc, runner, problem, got, want, tolerance)
        if work is None:
            return loc
        loc.T = work.case.shape[0]
        _where_forward(loc, wgot, wwant, tolerance)
        if not target.has_gradients:
            loc.verdict = "forward only"
            return loc
        _consistency(loc, runner, work, wgot)
        _where_backward(loc, wgot, wwant, tolerance)
        _which_adjoint(loc, runner, work, tolerance)
        loc.verdict = _verdict(loc)
        if loc.verdict in ("forward", "both"):
            loc.statements = []  # the backward is that of the forward: no backward statement is to blame
    except ProbeError as exc:
        loc.notes.append(f"localisation stopped: {exc}")
    return loc


# ----------------------------------------------------------------------------------- running the target
class _Runner:
    def __init__(self, target, problem: Problem, run=None):
        self.target = target
        self.biases = problem.extra.get("biases", target.biases_for(problem.case))
        self._run = run or target.run
        fwd = target
        if run is None and target.has_gradients:  # forward-only view: the finite differences need no backward
            fwd = copy.copy(target)
            fwd.features = frozenset(target.features - {"gradients"})
        self._fwd = run or fwd.run

    def fresh(self, problem: Problem, **kw) -> Problem:
        """A derived problem with its own arrays and its own ``extra`` (the target may write to it)."""
        p = problem.with_(**kw)
        return p.with_(extra={"biases": self.biases})

    def _call(self, fn, problem):
        try:
            out = fn(problem)
        except Exception as exc:  # the target's fault is reported, not raised
            raise ProbeError(f"the target raised {type(exc).__name__} on a probe ({problem.case.name}): {exc}") from exc
        if not isinstance(out, dict):
            raise ProbeError(f"the target returned {type(out).__name__} on a probe, expected a dict")
        return out

    def full(self, problem):
        return self._call(self._run, problem)

    def forward(self, problem):
        return self._call(self._fwd, problem)

    def expected(self, problem):
        return expected(problem, biases=self.biases, with_grads=self.target.has_gradients)


def _retype(problem: Problem, dtype: str) -> Problem:
    """The same values in another dtype (values are exactly those of ``problem``)."""
    dt = np.dtype(dtype)

    def cv(d):
        return {k: np.asarray(v, dt).copy() for k, v in d.items()}

    return problem.with_(case=replace(problem.case, dtype=dtype), params=[cv(p) for p in problem.params],
                         x=problem.x.astype(dt), init=[cv(s) for s in problem.init], dy=problem.dy.astype(dt),
                         d_final=[cv(s) for s in problem.d_final], bias_ih=[cv(b) for b in problem.bias_ih],
                         extra=dict(problem.extra))


def _slice(problem: Problem, T: int, B: int) -> Problem:
    """The first T steps of batch rows 0..B of a single-slot problem (same parameters and initial states)."""
    D, H = problem.case.shape[2:]

    def rows(d):
        return {k: np.ascontiguousarray(v[:B]) for k, v in d.items()}

    return problem.with_(case=replace(problem.case, shape=(T, B, D, H)), x=np.ascontiguousarray(problem.x[:T, :B]),
                         dy=np.ascontiguousarray(problem.dy[:T, :B]), init=[rows(problem.init[0])],
                         d_final=[rows(problem.d_final[0])], params=[dict(problem.params[0])],
                         bias_ih=[dict(problem.bias_ih[0])], extra=dict(problem.extra))


# -------------------------------------------------------------------------------------- which quantities
def _quantities(loc, problem, got, want, tol):
    for r in compare(problem, got, want, tol, dtype=problem.case.dtype):
        if r.quantity not in got or got[r.quantity] is None:
            loc.not_provided.append(r.quantity)
        else:
            (loc.passing if r.passed else loc.failing).append(r.quantity)


def _fails(problem, got, want, tol, grads_only=False) -> list[str]:
    """Provided quantities (``grads_only``: gradients) that are not within tolerance."""
    keys = [q for q in want if got.get(q) is not None and (q.startswith("d ") or not grads_only)]
    return [r.quantity for r in compare(problem, got, want, tol, keys) if not r.within]


def _plain(loc, runner, problem, got, want, tol):
    """The problem to localise on: the failing one when it is one forward sequence in one layer; else
    the same shape read forward in one layer without lengths, when the target fails that too."""
    case = problem.case
    if case.single and case.direction == "forward" and case.lengths is None:
        return problem, got, want
    plain = replace(case, direction="forward", lengths=None, layers=1)
    what = ", ".join(w for w, on in (("the reverse direction", case.direction != "forward"),
                                     ("sequence lengths", case.lengths is not None),
                                     ("more than one layer", case.layers > 1)) if on)
    if runner.target.supports(plain) is not None:
        loc.notes.append(f"not localised: the target does not run {plain.name} to compare with")
        return None, None, None
    p = runner.fresh(make_problem(plain))
    g, w = runner.full(p), runner.expected(p)
    if not _fails(p, g, w, tol):
        loc.verdict = "neither"
        loc.notes.append(f"the same case read forward in one layer without lengths passes: the difference is in "
                         f"the handling of {what}")
        return None, None, None
    loc.notes.append(f"localised on {plain.name} (it fails too; the failing case adds {what})")
    return p, g, w


# -------------------------------------------------------------------------------------- where in time
def _per_step(got, want) -> np.ndarray | None:
    """Per leading index t: max |got[t] - want[t]| / max |want| (checks.tolerances.step_errors; None when
    not comparable)."""
    g = np.asarray(got) if got is not None else None
    w = np.asarray(want, np.float64)
    if g is None or g.shape != w.shape or g.dtype.kind not in "iuf":
        return None
    return step_errors(g, w)


def _where_forward(loc, got, want, tol):
    rel = _per_step(got.get("y"), want["y"])
    if rel is not None:
        bad = np.nonzero(rel > tol)[0]
        loc.forward_step = int(bad[0]) if bad.size else None
    loc.final_wrong = [q for q in want if q.endswith("_T") and q not in _pass_keys(got, want, q, tol)]


def _pass_keys(got, want, q, tol):
    rel = _per_step(got.get(q), want[q])
    return [q] if rel is not None and rel.max() <= tol else []


def _where_backward(loc, got, want, tol):
    """The first step, counting from the last, where the per-step input gradient d x departs."""
    rel = _per_step(got.get("d x"), want["d x"]) if "d x" in want else None
    if rel is None:
        loc.backward_how = "not provided" if got.get("d x") is None else "not comparable"
        return
    loc.backward_how = "d x"
    bad = [t for t in reversed(range(len(rel))) if rel[t] > tol]
    loc.backward_step = bad[0] if bad else None


# --------------------------------------------------------------------------------- forward or backward
def _fd_problem(loc, runner, problem, got):
    """The problem the finite differences run on (float64 when the target offers it) and the target's
    gradients on it."""
    case = problem.case
    loc.fd_dtype = "float64"
    if case.dtype == "float64":
        return problem, got
    if runner.target.supports(replace(case, dtype="float64")) is None:
        p = runner.fresh(_retype(problem, "float64"))
        return p, runner.full(p)
    loc.fd_dtype = case.dtype
    loc.fd_note = (f"the target offers {case.dtype} only: a weaker check (steps up to {FD_STEP[case.dtype]:g}, "
                   f"discrepancies below {FD_FLOOR[case.dtype]:g} are not resolved)")
    return problem, got


def _input_of(q: str, problem: Problem):
    """(kind, name) of the input a gradient quantity is the gradient of, or None."""
    base = q[2:]
    m = re.fullmatch(r"(\w+)\((ih|hh)\)", base)
    if m:
        return ("ih" if m.group(2) == "ih" else "param", m.group(1))
    if base == "x":
        return ("x", None)
    if base in problem.params[0]:
        return ("param", base)
    return next((("init", s) for s in problem.states if base == f"{s}0"), None)


def _input_array(problem: Problem, kind: str, name):
    return {"x": lambda: problem.x, "init": lambda: problem.init[0][name]}.get(kind, lambda: problem.params[0][name])()


def _moved(runner, problem: Problem, kind: str, name, v, step: float) -> Problem:
    """``problem`` with the input of (kind, name) moved by step * v (rounded to the problem's dtype).
    Moving the input-side part of a split bias keeps the recurrent-side part: b and b_ih move together."""

    def add(a):
        return (np.asarray(a, np.float64) + step * v).astype(problem.dtype)

    if kind == "x":
        return runner.fresh(problem, x=add(problem.x))
    if kind == "init":
        return runner.fresh(problem, init=[{**problem.init[0], name: add(problem.init[0][name])}])
    kw = {"params": [{**problem.params[0], name: add(problem.params[0][name])}]}
    if kind == "ih":
        kw["bias_ih"] = [{**problem.bias_ih[0], name: add(problem.bias_ih[0][name])}]
    return runner.fresh(problem, **kw)


def _scalar(problem: Problem, out: dict) -> float:
    """L = <dy, y> + sum_s <d_final[s], s_T> of the target's outputs, in float64."""
    try:
        total = float(np.sum(np.asarray(out["y"], np.float64) * problem.dy.astype(np.float64)))
        for s in problem.states:
            total += float(np.sum(np.asarray(out[f"{s}_T"], np.float64) * problem.d_final[0][s].astype(np.float64)))
    except Exception as exc:  # outputs of the wrong shape or kind
        raise ProbeError(f"the target's outputs cannot be contracted with the cotangents: {exc}") from exc
    return total


def _directional(F, h: float, levels: int = 3) -> tuple[float, float]:
    """dF/ds at 0 from central differences at h, h/2, h/4, Richardson-extrapolated; and an error
    estimate: the spread of the last but one extrapolations (their truncation error where F is smooth,
    the rounding noise of F amplified by the small steps where F is computed in lower precision)."""
    D = [(F(h / 2 ** k) - F(-h / 2 ** k)) / (2 * h / 2 ** k) for k in range(levels)]
    prev = D
    for j in range(1, levels):
        prev, D = D, [(4 ** j * D[k + 1] - D[k]) / (4 ** j - 1) for k in range(len(D) - 1)]
    return D[0], abs(prev[-1] - prev[0])


def _check(runner, problem: Problem, q: str, g: np.ndarray, rng, dtype: str) -> Check:
    kind, name = _input_of(q, problem)
    gv, dv, noise = [], [], []
    for _ in range(DIRECTIONS):
        v = rng.standard_normal(g.shape)
        v /= math.sqrt(float(np.mean(v * v)))

        def F(s, v=v):
            return _scalar(problem, runner.forward(_moved(runner, problem, kind, name, v, s)))

        d, err = _directional(F, FD_STEP[dtype])
        gv.append(float(np.sum(g.astype(np.float64) * v)))
        dv.append(d)
        noise.append(err)
    rel = rel_error(gv, dv)
    nrel = max(noise) / error_scale(dv) if math.isfinite(rel) else 0.0
    return Check(q, rel, nrel, rel <= max(FD_FLOOR[dtype], 10 * nrel))


def _consistency(loc, runner, problem, got):
    """Each returned, usable gradient against directional derivatives of the target's own forward."""
    p, g = _fd_problem(loc, runner, problem, got)
    rng = np.random.default_rng([int(problem.case.seed), 14])
    for q in runner.expected(p):
        if not q.startswith("d ") or g.get(q) is None or _input_of(q, p) is None:
            continue
        arr = np.asarray(g[q])
        want_shape = np.shape(_input_array(p, *_input_of(q, p)))
        if arr.dtype.kind not in "iuf" or arr.shape != want_shape or not np.isfinite(arr).all():
            loc.notes.append(f"{q} is not a finite array of shape {want_shape}: left out of the gradient check")
            continue
        loc.checks.append(_check(runner, p, q, arr, rng, loc.fd_dtype))
    noise = max((c.noise for c in loc.checks), default=0.0)
    if noise > FD_FLOOR[loc.fd_dtype]:
        rough = (f"your forward is smooth to about {noise:.0e} only (e.g. computed in lower precision): the check "
                 "resolves no finer")
        loc.fd_note = "; ".join(x for x in (loc.fd_note, rough) if x)


def _verdict(loc) -> str:
    fwd_wrong = loc.forward_step is not None or bool(loc.final_wrong)
    if not loc.checks:
        return "forward" if fwd_wrong else "not localised"
    bwd = any(not c.consistent for c in loc.checks)
    if bwd:
        return "both" if fwd_wrong else "backward"
    if fwd_wrong:
        return "forward"
    if any(q.startswith("d ") for q in loc.failing):
        loc.notes.append("the outputs agree with the reference here and the gradients are those of your forward, "
                         "yet they differ from the reference's: your forward differs near this point")
        return "forward"
    return "neither"


# ------------------------------------------------------------------------------------- which adjoint
def derived_statements(module) -> dict:
    """The derived backward statements of a generated reference module, as its docstring (and the docs)
    print them: {lhs: rhs} in the derivation's order."""
    doc = module.__doc__ or ""
    if "Derived backward step" not in doc:
        return {}
    block = doc.split("Derived backward step", 1)[1].split("\n\n", 1)[0]
    out = {}
    for line in block.splitlines():
        m = re.match(r"\s{4}(d_\w+) = (.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _downstream(stmts: dict) -> dict:
    """Statement -> the statements computed from it (itself included), transitively."""
    users = {k: [s for s, rhs in stmts.items() if re.search(rf"\b{k}\b", rhs)] for k in stmts}
    out = {}
    for k in stmts:
        seen, todo = {k}, [k]
        while todo:
            for u in users[todo.pop()]:
                if u not in seen:
                    seen.add(u)
                    todo.append(u)
        out[k] = seen
    return out


def _statement_of(q: str, problem: Problem) -> str:
    """The derived statement a gradient quantity returns at T = 1: d W_f -> d_W_f, d h0 -> d_h_prev."""
    base = re.sub(r"\((ih|hh)\)$", "", q[2:])
    if base in {f"{s}0" for s in problem.states}:
        return f"d_{base[:-1]}_prev"
    return f"d_{base}"


def _observed(problem: Problem, got: dict, want: dict, tol: float) -> dict:
    """Derived statement -> 'wrong' / 'right' / 'not provided' (a split bias is wrong if either part is)."""
    rank = {"not provided": 0, "right": 1, "wrong": 2}
    out: dict = {}
    grads = [q for q in want if q.startswith("d ")]
    rows = {r.quantity: r for r in compare(problem, got, want, tol, grads)}
    for q in grads:
        status = "not provided" if got.get(q) is None else ("right" if rows[q].within else "wrong")
        s = _statement_of(q, problem)
        out[s] = max(out.get(s, "not provided"), status, key=rank.get)
    return out


def _adjoint_names(observed: dict, stmts: dict) -> dict:
    """Derived names to show: a bias statement d_b_g = sum_t d_z_g shows as d_z_g; a W or U statement
    only when it says something its gate's adjoint does not; d_x and the carries as they are."""

    def adj(s):
        return (re.match(r"sum_t (d_\w+)", stmts.get(s, "")) or [None, None])[1]

    out = {}
    for s, st in observed.items():
        if s.startswith("d_b_") and adj(s) and re.fullmatch(r"sum_t d_\w+", stmts[s]) and st != "not provided":
            out[adj(s)] = st
    for s, st in observed.items():
        a = adj(s)
        if a in out and out[a] == st:
            continue
        if a and a not in out and st != "not provided" and re.match(r"d_[WU]_", s):
            out[a] = st  # no bias gradient: the gate's adjoint as its W (or U) gradient shows it
            continue
        if not (s.startswith("d_b_") and a in out):
            out[s] = st
    order = list(stmts)
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _explaining(observed: dict, stmts: dict) -> list[str]:
    """Single derived statements whose error would make exactly the wrong observed ones wrong."""
    wrong = {s for s, st in observed.items() if st == "wrong"}
    seen = {s for s, st in observed.items() if st != "not provided"}
    if not wrong or not stmts:
        return []
    down = _downstream(stmts)
    return [f"{s} = {rhs}" for s, rhs in stmts.items() if down[s] & seen == wrong]


def _which_adjoint(loc, runner, problem: Problem, tol: float):
    T, B = problem.case.shape[:2]
    stmts = derived_statements(problem.module)
    p = runner.fresh(_slice(problem, T=1, B=1))
    observed = _observed(p, runner.full(p), runner.expected(p), tol)
    loc.probe = "one-step B = 1 probe"
    loc.adjoints = _adjoint_names(observed, stmts)
    loc.statements = _explaining(observed, stmts)
    if "wrong" in observed.values():
        return
    for t, b, what in ((1, B, f"B = {B}"), (T, 1, f"T = {T}")):
        if (t, b) != (1, 1) and (t, b) != (T, B):
            q = runner.fresh(_slice(problem, T=t, B=b))
            if _fails(q, runner.full(q), runner.expected(q), tol, grads_only=True):
                loc.probe_note = f"the one-step B = 1 probe agrees with the reference; the gradients depart with {what}"
                return
    if any(q.startswith("d ") for q in loc.failing):
        loc.probe_note = "the one-step B = 1 probe agrees with the reference; the gradients depart with T > 1 and B > 1"


# --------------------------------------------------------------------------------------------- text
def _verdict_text(loc) -> str:
    checks = _checks_text(loc)
    return {
        "forward": "your backward is the gradient of your forward: the difference is in the forward" + checks,
        "backward": "your backward is not the gradient of your own forward" + checks,
        "both": "your forward differs from the reference and your backward is not the gradient of your own "
                "forward" + checks,
        "forward only": "forward only (no gradients returned): the difference is in the forward",
        "neither": "no difference in this case's forward or backward" if not loc.failing
                   else "no difference on the probes",
    }.get(loc.verdict, "not localised")


def _checks_text(loc) -> str:
    if not loc.checks:
        return ""
    bad = sorted((c for c in loc.checks if not c.consistent), key=lambda c: -c.rel)
    good = [c for c in loc.checks if c.consistent]
    parts = []
    if bad:
        shown = ", ".join(f"{c.quantity} rel {c.rel:.1e}" for c in bad[:SHOWN])
        parts.append(f"not the gradient: {shown}" + (f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""))
    if good:  # a bound, not the number: rounding-level numbers may differ between machines
        bound = max(max(FD_FLOOR[loc.fd_dtype], 10 * c.noise) for c in good)
        parts.append(f"the gradient: {len(good)} of {len(loc.checks)} returned, within {_ceil10(bound):.0e}")
    how = (f" [directional derivatives of your forward: central differences, Richardson-extrapolated, in "
           f"{loc.fd_dtype}, {DIRECTIONS} random directions per gradient"
           + (f"; {loc.fd_note}" if loc.fd_note else "") + "]")
    return " (" + "; ".join(parts) + ")" + how


def _ceil10(v: float) -> float:
    """The power of ten at or above ``v``."""
    return 10.0 ** math.ceil(math.log10(v)) if v > 0 else 0.0


def _time_text(loc) -> str:
    if not loc.T:
        return ""
    T = loc.T
    if loc.forward_step is not None:
        parts = [f"the forward departs first at step t={loc.forward_step} of 0..{T - 1} (forward order)"]
    elif loc.final_wrong:
        parts = [f"y is right at every step, the final state is wrong ({', '.join(loc.final_wrong)})"]
    else:
        parts = ["the forward is right at every step"]
    if loc.backward_how in ("not provided", "not comparable"):
        parts.append(f"the backward is not localised in time (d x {loc.backward_how})")
    elif loc.backward_how:
        if loc.backward_step is None:
            parts.append("d x is right at every step (so, generically, are the per-step adjoints it is made of)")
        else:
            k = T - 1 - loc.backward_step
            ago = "the last step" if k == 0 else f"{k} step{'s' if k > 1 else ''} before the last"
            after = ", after the forward" if loc.forward_step is not None or loc.final_wrong else ""
            parts.append(f"the backward departs first at step t={loc.backward_step}, {ago} "
                         f"(reverse order, {loc.backward_how}{after})")
    return "; ".join(parts)


def _adjoint_text(adjoints: dict) -> str:
    groups = [(st, [k for k, v in adjoints.items() if v == st]) for st in ("wrong", "right", "not provided")]
    return "; ".join(f"{st}: {', '.join(ks)}" for st, ks in groups if ks)


def _quantities_text(loc) -> str:
    parts = [("FAIL", loc.failing), ("pass", loc.passing), ("not provided (not used)", loc.not_provided)]
    return "; ".join(f"{k} {', '.join(v)}" for k, v in parts if v)
