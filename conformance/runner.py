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
from .problem import Case, expected, make_problem
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


def run_case(target: Target, case: Case, diagnose_failures: bool = True) -> CaseResult:
    t0 = time.perf_counter()
    why = target.supports(case)
    if why:
        return CaseResult(case, "skip", detail=why)
    tol, _ = tolerance_for(target, case.dtype)
    problem = make_problem(case)
    problem.extra["biases"] = target.biases_for(case)
    want = expected(problem, biases=problem.extra["biases"], with_grads=target.has_gradients)
    try:
        got = target.run(problem)
    except TargetError as exc:
        return CaseResult(case, "error", detail=str(exc), tolerance=tol, seconds=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - the target's own exception is part of the report
        return CaseResult(case, "error", detail=f"the target raised {type(exc).__name__}: {exc}", tolerance=tol,
                          seconds=time.perf_counter() - t0)
    rows = compare(problem, got, want, tol)
    res = CaseResult(case, "pass" if all(r.passed for r in rows) else "FAIL", rows, tolerance=tol)
    if res.status == "FAIL" and diagnose_failures:
        res.diagnoses = diagnose(problem, target, got, [r.quantity for r in res.failing], tol)
    res.seconds = time.perf_counter() - t0
    return res


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


def conform(target: Target, cases=None, progress=None, diagnose_failures: bool = True) -> Report:
    if cases is None:
        cases = default_cases(target.cells, [d for d in ("float64", "float32") if d in target.dtypes])
    cases = expand_variants(target, cases)
    results = []
    for k, case in enumerate(cases, 1):
        r = run_case(target, case, diagnose_failures)
        results.append(r)
        if progress:
            progress(k, len(cases), r)
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


def format_report(report: Report, verbose: bool = True) -> str:
    out = header(report.target) + [""]
    for k, r in enumerate(report.results, 1):
        title = f"[{k}/{len(report.results)}] {r.case.name}: {r.status}"
        if r.status == "skip":
            out.append(f"{title} ({r.detail})")
            continue
        out.append(f"{title} ({r.seconds:.2f} s)")
        if r.status == "error":
            out.append(f"    {r.detail}")
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
        if r.status == "FAIL":
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
