"""`lstm-spec verify`: every check of every cell, each next to its negative control, as a table."""

from __future__ import annotations

import importlib
import math
import sys
import time
from dataclasses import dataclass
from enum import StrEnum

from lstm_spec.derivations import derive
from lstm_spec.derivations import functions as function_rules
from lstm_spec.derivations import rules as matrix_rules
from lstm_spec.derivations.build import GenerateError, generate, is_builtin, recorded_cell
from lstm_spec.spec import Cell

from . import mutants
from .cases import alternative_constants, format_constants, with_constants
from .numeric import check_derivatives, check_float32
from .symbolic import check_step, check_unrolled
from .tolerances import TOLERANCES
from .torch_check import check_torch


class Status(StrEnum):
    """A check row's result (the table's "result" column; ``str(Status.PASS) == "pass"``)."""

    PASS = "pass"
    FAIL = "FAIL"
    SKIP = "skip"  # a tool is missing: counts against verify
    NA = "n/a"  # nothing to compare with (PyTorch has no such cell): does not count against verify


class Control(StrEnum):
    """What a row's negative control did: the planted bug was caught, was not, or there is none."""

    CAUGHT = "caught"
    NOT_CAUGHT = "NOT CAUGHT"
    NONE = "-"

    @classmethod
    def of(cls, caught: bool) -> Control:
        return cls.CAUGHT if caught else cls.NOT_CAUGHT


OK = (Status.PASS, Status.NA)  # the statuses that do not fail verify


@dataclass
class CheckRow:
    cell: str
    check: str
    error: float | None  # None when skipped
    tolerance: float | None
    passed: bool | None  # None when skipped
    control: Control  # a string of its vocabulary is taken too ("caught"); any other raises ValueError
    seconds: float
    detail: str = ""

    def __post_init__(self):
        self.control = Control(self.control)

    @property
    def status(self) -> Status:
        if self.passed is None:
            return Status.NA if self.detail.startswith(("PyTorch has no", "not applicable")) else Status.SKIP
        return Status.PASS if self.passed and self.control != Control.NOT_CAUGHT else Status.FAIL


def _fmt_err(e):
    if e is None:
        return "-"
    if e == 0:
        return "0"
    if math.isinf(e):
        return "inf"
    return f"{e:.1e}" if isinstance(e, float) and not float(e).is_integer() else str(int(e))


def format_table(rows: list[CheckRow]) -> str:
    head = ("cell", "check", "max error", "tolerance", "result", "negative control", "seconds")
    body = [(r.cell, r.check, _fmt_err(r.error), _fmt_err(r.tolerance) if r.tolerance is not None else "-",
             r.status, r.control, f"{r.seconds:.1f}") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    def line(cols):
        return "  ".join(str(c).ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()
    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    details = [f"  {r.cell} / {r.check}: {r.detail}" for r in rows
               if r.detail and (r.status != Status.PASS or r.detail.startswith("not a proof"))]
    if details:
        out += ["", "details:"] + details
    return "\n".join(out)


class Progress:
    """Progress lines on stderr (picklable, so worker processes can report too)."""

    def __init__(self, enabled=True):
        self.enabled = enabled

    def __call__(self, text):
        if self.enabled:
            print(f"  ... {text}", file=sys.stderr, flush=True)


def _module_for(cell: Cell, gen):
    """The module to verify: the committed one for a built-in cell; for a user's spec file, the code the
    spec generates now (in memory). The file beside a user's spec is compared with that text (the "up to
    date" row) and never executed: it may be anything."""
    if is_builtin(cell):
        return importlib.import_module(f"lstm_spec.reference.{cell.name}")
    return mutants.load_module(gen.text, f"lstm_spec_generated_{cell.name}")


def _up_to_date_row(cell: Cell, gen, seconds: float) -> CheckRow | None:
    """Whether the module `lstm-spec generate` writes for this cell holds the text the spec generates now;
    None for a user's spec file with no module yet (the checks run on the text in memory)."""
    try:
        current = gen.current()
    except GenerateError:
        current = ""  # unreadable (a directory, no permission): not the generated text
    if current is None and not is_builtin(cell):
        return None
    stale = current != gen.text
    detail = ""
    if stale:
        if current is None:
            what, todo = "is missing", ""
        elif recorded_cell(current) is None:
            what, todo = "is not a generated file", "move it away, then "
        else:
            what, todo = "is stale", ""
        ran = "" if is_builtin(cell) else " (not executed: the checks ran on the code the spec generates)"
        detail = f"{gen.path} {what}{ran}: {todo}run `{gen.command}`"
    return CheckRow(cell.name, "generated code up to date", int(stale), 0, not stale, Control.NONE, seconds, detail)


def _load_guarded(cell: Cell, gen):
    """(module, None), or (None, a failing row) when loading it raised or exited: SystemExit included, so
    that verify never ends with exit 0 before its checks ran."""
    try:
        return _module_for(cell, gen), None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit from a module must fail verify, not end it
        return None, CheckRow(cell.name, "generated module loads", 1, 0, False, Control.NONE, 0.0,
                         f"loading the module raised {type(exc).__name__}: {str(exc)[:200]}")


def verify_rules(progress=None) -> list[CheckRow]:
    progress = progress or Progress(enabled=False)
    progress("derivative rules of the activation functions and matrix products")
    t0 = time.perf_counter()
    bad = [k for k, diff in function_rules.confirm_rules() if diff != 0]
    bad += [name for name, n in matrix_rules.confirm_rules() if n]
    # negative control: a wrong rule (sigma' = sigma (1 + sigma)) must be told apart
    import sympy

    x = sympy.Symbol("x", real=True)
    s = function_rules.Sigmoid(x)
    wrong = (s * (1 + s)).subs(s, 1 / (1 + sympy.exp(-x))) - sympy.diff(1 / (1 + sympy.exp(-x)), x)
    control = Control.of(sympy.simplify(wrong) != 0)
    return [CheckRow("(all)", "rules confirmed by SymPy", len(bad), 0, not bad, control, time.perf_counter() - t0,
                f"differ: {bad}" if bad else "")]


def unrolled_sizes(cell: Cell) -> dict:
    """Sizes for the unrolled symbolic check in `verify`: inputs 2 wide, every other dimension 1, so that
    `sympy.diff` of the unrolled loss stays fast for every cell (the test suite also runs it with
    2 hidden units). The one-step check (a) uses D = 3, H = 2."""
    sizes = {d: 1 for d in cell.dimensions}
    for name, q in cell.inputs.items():
        if name not in cell.masks:  # a mask input (dropout) does not widen the hidden units
            sizes[q.shape[-1]] = 2
    sizes["1"] = 1
    return sizes


def _cell_done(counter, cell: Cell, rows: list[CheckRow], seconds: float) -> None:
    if counter is not None:
        bad = [r.check for r in rows if r.status not in OK]
        counter.step(f"{cell.name}: {'FAIL ' + ', '.join(bad) if bad else 'pass'} ({seconds:.1f} s)")


def verify_cells(cells: list[Cell], progress=None, torch: bool = True, jobs: int = 1, proof: bool = False,
                 counter=None, constants: dict | None = None) -> list[CheckRow]:
    """verify_cell for each cell, in ``jobs`` worker processes; rows come back in the cells' order.
    ``counter`` (checks.progress.Counter) is advanced as each cell finishes."""
    if jobs <= 1 or len(cells) <= 1:
        out = []
        for cell in cells:
            t0 = time.perf_counter()
            out += (rows := verify_cell(cell, progress, torch, proof, constants))
            _cell_done(counter, cell, rows, time.perf_counter() - t0)
        return out
    import concurrent.futures as cf
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {pool.submit(verify_cell, cell, progress, torch, proof, constants): cell for cell in cells}
        for f in cf.as_completed(futures):
            rows = f.result()
            _cell_done(counter, futures[f], rows, sum(r.seconds for r in rows))
        return [row for f in futures for row in f.result()]


def _with_note(res: dict, detail: str) -> str:
    """A symbolic check's detail, led by its note ('not a proof: ...' when --proof fell back to points)."""
    return f"{res['note']}; {detail}" if res.get("note") else detail


SYMBOLIC_METHODS = {
    False: "(a), (b): the expected derivatives by reverse accumulation over the explicit forward (sympy.diff's "
           "chain rule, evaluated), compared exactly at 2 random points mod 2^61 - 1",
    True: "(a): sympy.diff of the explicit forward, the difference expanded to 0 (a proof); (b): sympy.diff of "
          "the unrolled loss, compared exactly at 2 random points mod 2^61 - 1; where the expansion is unbounded "
          "(more than 20000 monomials or degree above 16) (a) and (b) check at random points instead, and the row "
          "says 'not a proof'",
}


def constant_variants(module, constants: dict | None = None) -> list[dict]:
    """The values of the spec's constants that the numeric checks (c) and PyTorch (d) run at: the given ones
    (`verify --constants`); else the defaults and one non-default value of each (cases.alternative_constants),
    for a cell with constants. (a) and (b) take the constants as symbols: they hold for every value."""
    if constants:
        return [dict(constants)]
    alternative = alternative_constants(module)
    return [{}, alternative] if alternative else [{}]


def _at_variants(check, module, variants: list[dict]) -> dict:
    """check(module at each variant of the constants): the largest error, its "worst" led by the constants it ran
    at; a skipped check is skipped."""
    out = None
    for values in variants:
        res = check(with_constants(module, values))
        if "skipped" in res:
            return res
        if out is None or res["error"] > out["error"]:
            out = {**res, "worst": (f"at {format_constants(values)}: " if values else "") + res.get("worst", "")}
    return out


def _variants_note(variants: list[dict]) -> str:
    shown = [format_constants(v) or "the defaults" for v in variants]
    return f"constants: (c) and (d) at {' and at '.join(shown)}; (a) and (b) for symbolic constants"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@dataclass
class _Subject:
    """What the checks of one cell share: its derivation, the module to verify, the negative control's module
    (the recursion line deleted), the constants' variants and their note, and how (a), (b) derive."""

    cell: Cell
    derivation: object
    module: object
    mutant: object
    variants: list
    note: str
    proof: bool
    progress: Progress

    @property
    def name(self) -> str:
        return self.cell.name

    @property
    def derivative(self) -> str:
        return "sympy" if self.proof else "reverse"


def _symbolic_rows(s: _Subject) -> list[CheckRow]:
    """(a) the derivation, one step, against the expected derivatives; (b) the generated code on SymPy symbols,
    unrolled over T = 2; each beside a planted bug (a sign flipped; the recursion line deleted)."""
    s.progress(f"{s.name}: (a) symbolic equality of every adjoint of one step")
    res, secs = _timed(lambda: check_step(s.derivation, exact="expand" if s.proof else "points",
                                          derivative=s.derivative))
    bad_d, target = mutants.planted_derivation(s.derivation)
    ctl = check_step(bad_d, exact="points", only={target}, derivative=s.derivative)
    rows = [CheckRow(s.name, "(a) symbolic, one step", res["error"], TOLERANCES[("symbolic", "sympy")].value,
                     res["error"] == 0, Control.of(bool(ctl["error"])), secs,
                     _with_note(res, f"{res['checked']} entries; differ: {res['failures']}"))]
    sizes = unrolled_sizes(s.cell)
    s.progress(f"{s.name}: (b) generated code on SymPy symbols, unrolled over T = 2")
    res, secs = _timed(lambda: check_unrolled(s.derivation, s.module, T=2, sizes=sizes, derivative=s.derivative))
    ctl = check_unrolled(s.derivation, s.mutant, T=2, sizes=sizes, stop_after=1, derivative=s.derivative)
    rows.append(CheckRow(s.name, "(b) symbolic, unrolled T=2", res["error"], TOLERANCES[("unrolled", "sympy")].value,
                         res["error"] == 0, Control.of(bool(ctl["error"])), secs,
                         _with_note(res, f"{res['checked']} entries; differ: {res['failures'][:5]}")))
    return rows


def _numeric_rows(s: _Subject) -> list[CheckRow]:
    """(c) complex step and finite differences (each beside the recursion line deleted), float32 vs float64."""
    rows = []
    for method, dtype, label in (("complex_step", "complex128", "(c) complex step"),
                                 ("finite_difference", "float64", "(c) finite differences")):
        s.progress(f"{s.name}: {label}")
        tol = TOLERANCES[(method, dtype)].value
        res, secs = _timed(lambda: _at_variants(lambda m: check_derivatives(m, method),  # noqa: B023 - called
                                                s.module, s.variants))  # within the iteration
        if "skipped" in res:
            rows.append(CheckRow(s.name, label, None, None, None, Control.NONE, secs, res["skipped"]))
            continue
        ctl = check_derivatives(with_constants(s.mutant, s.variants[-1]), method)
        rows.append(CheckRow(s.name, label, res["error"], tol, res["error"] <= tol,
                             Control.of(not ctl["error"] <= tol), secs,
                             "; ".join(filter(None, [res["worst"], s.note]))))
    s.progress(f"{s.name}: (c) float32 against float64")
    tol = TOLERANCES[("float32", "float32")].value
    res, secs = _timed(lambda: _at_variants(check_float32, s.module, s.variants))
    rows.append(CheckRow(s.name, "(c) float32 vs float64", res["error"], tol, res["error"] <= tol, Control.NONE,
                         secs, "; ".join(filter(None, [res["worst"], s.note]))))
    return rows


def _torch_row(s: _Subject) -> CheckRow:
    """(d) PyTorch float64 at the constants' variants it can express, beside the recursion line deleted."""
    s.progress(f"{s.name}: (d) PyTorch float64")
    tol = TOLERANCES[("torch", "float64")].value
    res, secs = _timed(lambda: _torch_at_variants(s.cell, s.module, s.variants))
    if "skipped" in res:
        return CheckRow(s.name, "(d) PyTorch", None, None, None, Control.NONE, secs, res["skipped"])
    ctl = check_torch(s.mutant, s.name)
    return CheckRow(s.name, "(d) PyTorch", res["error"], tol, res["error"] <= tol,
                    Control.of(not ctl.get("error", 0) <= tol), secs,
                    "; ".join(filter(None, [res["worst"], res.get("note", "")])))


def verify_cell(cell: Cell, progress=None, torch: bool = True, proof: bool = False,
                constants: dict | None = None) -> list[CheckRow]:
    """Every check of one cell. proof=False: (a) and (b) take their expected derivatives from reverse
    accumulation at random points (seconds); proof=True: from sympy.diff, (a) expanded (minutes per cell).
    constants: values of the spec's constants for (c) and (d) (default: the defaults and a non-default value
    of each; constant_variants); (a) and (b) check the derivation for symbolic constants."""
    progress = progress or Progress(enabled=False)
    progress(f"{cell.name}: derive and generate")
    (d, gen), secs = _timed(lambda: (derive(cell), generate([cell])[0]))
    rows = [r for r in [_up_to_date_row(cell, gen, secs)] if r]
    module, failed = _load_guarded(cell, gen)
    if failed:
        return rows + [failed]
    mutant = mutants.load_module(mutants.mutate_code(gen.text, mutants.recursion_line(gen.text), "delete"),
                                 f"lstm_spec_control_{cell.name}")
    variants = constant_variants(module, constants)
    subject = _Subject(cell, d, module, mutant, variants, _variants_note(variants) if cell.constants else "",
                       proof, progress)
    rows += _symbolic_rows(subject) + _numeric_rows(subject)
    return rows + ([_torch_row(subject)] if torch else [])


def _torch_at_variants(cell: Cell, module, variants: list[dict]) -> dict:
    """check_torch at each variant PyTorch can express (torch_constants); the others are named in "note"."""
    out, left = None, []
    for values in variants:
        kwargs = torch_constants(cell, values)
        if kwargs is None:
            left.append(format_constants(values))
            continue
        res = check_torch(with_constants(module, values), cell.name, **kwargs)
        if "skipped" in res:
            return res
        if out is None or res["error"] > out["error"]:
            out = {**res, "worst": (f"at {format_constants(values)}: " if values else "") + res["worst"]}
    if out is None:
        return {"skipped": f"PyTorch has no counterpart of {', '.join(left)}"}
    return {**out, "note": f"not compared with PyTorch at {', '.join(left)} (no counterpart)" if left else ""}


def _bias_of(cell: Cell, name: str) -> list[str]:
    """The vector parameters a constant is added beside (z_f = ... + b_f + forget_bias: b_f), one per equation
    that adds it as a term of its sum; [] when some use of it is not such a term."""
    from lstm_spec.spec.language import BinOp, Name, walk

    out, uses = [], 0
    for eq in cell.equations:
        uses += sum(1 for n in walk(eq.rhs) if isinstance(n, Name) and n.name == name)
        terms, stack = [], [eq.rhs]
        while stack:
            node = stack.pop()
            if isinstance(node, BinOp) and node.op == "+":
                stack += [node.right, node.left]
            else:
                terms.append(node)
        names = [t.name for t in terms if isinstance(t, Name) and not t.prev]
        bias = [n for n in names if n in cell.parameters and len(cell.parameters[n].shape) == 1]
        if name in names and bias:
            out.append(bias[0])
    return out if len(out) == uses else []


def torch_constants(cell: Cell, values: dict) -> dict | None:
    """check_torch's keyword arguments that give PyTorch the same constants: a constant added beside a bias is
    that bias shifted (the weights, or the program's parameters); the layer-normalised LSTM's eps goes to
    layer_norm. {} at the defaults; None when some value has no PyTorch counterpart (a clip bound)."""
    if not values:
        return {}
    from .torch_check import TORCH_EQUIVALENTS, TORCH_PROGRAMS, TorchProgram, _run_layer_norm

    if cell.name not in TORCH_EQUIVALENTS and cell.name not in TORCH_PROGRAMS:
        return {}  # check_torch says that PyTorch has no such cell
    shift, eps = {}, None
    for name, value in values.items():
        if name == "eps" and cell.name == "lstm_layer_norm" and is_builtin(cell):
            eps = value
            continue
        biases = _bias_of(cell, name)
        if not biases:
            return None
        for b in biases:
            shift[b] = shift.get(b, 0.0) + value

    def shifted(p):
        return {**p, **{b: p[b] + v for b, v in shift.items()}}

    if cell.name in TORCH_PROGRAMS:
        base = TORCH_PROGRAMS[cell.name]
        run = (lambda torch, p, seq, init, dims: _run_layer_norm(torch, shifted(p), seq, init, dims, eps=eps)) \
            if eps is not None else (lambda torch, p, seq, init, dims: base.run(torch, shifted(p), seq, init, dims))
        return {"program": TorchProgram(run, base.what)}
    if cell.name in TORCH_EQUIVALENTS and eps is None:
        weights = TORCH_EQUIVALENTS[cell.name].weights
        return {"weights": lambda torch, p, dims, seed: weights(torch, shifted(p), dims, seed)}
    return None


def all_passed(rows: list[CheckRow]) -> bool:
    """True when every row passed; "n/a" (no equivalent to compare with) does not count against it,
    a check skipped for a missing tool does."""
    return all(r.status in OK for r in rows)
