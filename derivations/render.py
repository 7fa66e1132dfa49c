"""Every derived equation of a cell as plain text and as LaTeX (``lstm-spec derive CELL [--latex]``,
the generated code's header, and the docs all print from here)."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from lstm_spec.spec.language import Call, Name
from lstm_spec.spec.language import children as _children

from .functions import FUNCTIONS, Exp, LogSumExp, UnitSum
from .printing import MathPrinter, PlainPrinter, Softmax, print_ast, reorder
from .reverse import Derivation, Statement

_KIND_TITLE = {
    "value": "adjoint", "term": "adjoint of a matrix product", "prev": "sent back to step t-1",
    "input": "input gradient", "param_vector": "parameter gradient", "param_matrix": "parameter gradient",
    "cse": "common subexpression",
}


@dataclass
class Rendered:
    target: str
    expression: str
    kind: str

    def __str__(self):
        return f"{self.target} = {self.expression}"


# ----------------------------------------------------------------------------------------- names
def latex_name(derivation: Derivation, name: str, time: str | None) -> str:
    """LaTeX for a quantity; ``time`` is "t", "t-1" or None (parameters)."""
    cell = derivation.cell
    aux = {fe.lhs: fe for fe in derivation.forward if fe.aux}
    if name in aux:  # an auxiliary is shown as what it is: tanh(c_t); a sum in parentheses, (f c + i c~)
        text = forward_latex(derivation, aux[name].ast, time or "t")
        return text if isinstance(aux[name].ast, (Call, Name)) else r"\left(%s\right)" % text
    if name in cell.latex:
        base, sub = cell.latex[name], None
    elif "_" in name:
        base, sub = name.split("_", 1)
        sub = sub.replace("_", r"\_")
    else:
        base, sub = name, None
    if len(base) > 1 and not base.startswith("\\") and name not in cell.latex:
        base = r"\mathrm{%s}" % base
    subs = [s for s in (sub, time) if s]
    return base + (("_{%s}" % ",".join(subs)) if subs else "")


def constant_latex(d: Derivation, name: str) -> str:
    """LaTeX for a constant of the spec's [constants]: its [latex] entry, else its name upright (no time index)."""
    return d.cell.latex.get(name) or r"\mathrm{%s}" % name.replace("_", r"\_")


def plain_names(d: Derivation) -> dict:
    """Plain-text names: adjoints as the generated code names them (d_c, d_h_prev, d_h_next), products as
    ``W @ x``, the rest as in the spec."""
    names = {}
    for sym, info in d.symbols.info.items():
        if info.kind in ("adj", "next"):
            names[sym] = d.code_names.get(sym) or _plain_adjoint(d, info)
        else:
            names[sym] = {"value": info.name, "param": info.name, "const": info.name, "prev": f"{info.name}[t-1]",
                          "term": info.name.replace("@", " @ "), "cot": "dy", "cse": info.name}[info.kind]
    return names


def _plain_adjoint(d, info):
    """For a derivation without code names (one built by hand)."""
    if info.kind == "next":
        return f"d_{info.name}_next"
    of = d.symbols.info[info.of]
    if of.kind == "prev":
        return f"d_{of.name}_prev"
    if of.kind == "term":
        return "d_" + of.name.replace("@", "_").replace("[t-1]", "_prev")
    return f"d_{of.name}"


def latex_names(d: Derivation) -> dict:
    names = {}
    for sym, info in d.symbols.info.items():
        if info.kind == "value":
            names[sym] = latex_name(d, info.name, "t")
        elif info.kind == "param":
            names[sym] = latex_name(d, info.name, None)
        elif info.kind == "const":
            names[sym] = constant_latex(d, info.name)
        elif info.kind == "prev":
            names[sym] = latex_name(d, info.name, "t-1")
        elif info.kind == "term":
            names[sym] = latex_name(d, info.matrix, None) + " " + latex_name(
                d, info.operand, "t-1" if info.prev else "t")
        elif info.kind == "next":
            names[sym] = r"\delta %s^{(t+1)}" % latex_name(d, info.name, "t")
        elif info.kind == "cot":  # a loss read by nothing else: its cotangent is its adjoint, δloss_t
            names[sym] = r"\delta " + latex_name(d, d.cell.output, "t") if _output_is_a_loss(d) else r"\delta y_{t}"
        elif info.kind == "cse":
            names[sym] = r"\tau_{%s}" % info.name[3:]  # a common subexpression (not to be read as a gate)
        else:
            of = d.symbols.info[info.of]
            inner = latex_name(d, of.name, None) if of.kind == "param" else names.get(info.of) or ""
            if not inner:
                inner = (latex_name(d, of.name, "t-1" if of.kind == "prev" else "t") if of.kind != "term" else
                         latex_name(d, of.matrix, None) + " " + latex_name(d, of.operand, "t-1" if of.prev else "t"))
            names[sym] = r"\delta %s" % inner if of.kind != "term" else r"\delta\left(%s\right)" % inner
    return names


def forward_latex(d: Derivation, ast, time="t") -> str:
    cell = d.cell

    def name(n):
        if n.name in cell.constants:
            return constant_latex(d, n.name)
        if n.prev:
            return latex_name(d, n.name, "t-1")
        return latex_name(d, n.name, None if n.name in cell.parameters else time)

    def call(func, arg):
        kind = cell.functions[func]
        head = {"logistic": r"\sigma", "tanh": r"\tanh"}.get(kind, r"\operatorname{%s}" % func)
        args = cell.function_args.get(func, ())
        if args:
            head += "_{%s}" % ",".join(constant_latex(d, a) if isinstance(a, str) else str(a) for a in args)
        return r"%s\left(%s\right)" % (head, arg)

    return print_ast(ast, "latex", name, call)


# ----------------------------------------------------------------------------------------- render
def forward_equations(d: Derivation, latex: bool = False) -> list[Rendered]:
    out = []
    for fe in d.forward:
        if latex and fe.aux:
            continue  # in LaTeX an auxiliary is printed as what it is, tanh(c_t), wherever it is used
        if latex:
            out.append(Rendered(latex_name(d, fe.lhs, "t") if not fe.aux else fe.lhs, forward_latex(d, fe.ast),
                                "aux" if fe.aux else "forward"))
        else:
            text = fe.text.split("=", 1)[1].strip() if not fe.aux else print_ast(
                fe.ast, "code", lambda n: n.name + ("[t-1]" if n.prev else ""), lambda f, a: f"{f}({a})")
            out.append(Rendered(fe.lhs, text, "aux" if fe.aux else "forward"))
    return out


def backward_equations(d: Derivation, latex: bool = False, textbook: bool | None = None) -> list[Rendered]:
    """Every backward statement, printed. ``textbook`` (default: as ``latex``): the form people read,
    :func:`textbook_statements`; otherwise the statements of the generated code, temporaries included
    (the generated module's header prints those)."""
    textbook = latex if textbook is None else textbook
    names = latex_names(d) if latex else plain_names(d)
    fn_names = {FUNCTIONS[k].sympy_function: n for n, k in d.cell.functions.items()}
    printer = MathPrinter(names, d.shape) if latex else PlainPrinter(names, fn_names, d.shape)
    statements = textbook_statements(d) if textbook else d.statements
    return [Rendered(names[st.target], _statement(st, d, printer, names, latex, textbook), st.kind)
            for st in statements]


def _statement(st: Statement, d: Derivation, printer, names, latex: bool, textbook: bool = False) -> str:
    parts = []
    if st.elementwise != 0 or not (st.matvec or st.outer):
        text = printer.doprint(reorder(st.elementwise, d.symbols, textbook))
        if st.kind == "param_vector":
            text = (r"\sum_{t} %s" if latex else "sum_t %s") % (
                r"\left(%s\right)" % text if latex and isinstance(st.elementwise, sympy.Add) else
                f"({text})" if isinstance(st.elementwise, sympy.Add) else text)
        parts.append(text)
    for matrix, dl in st.matvec:
        m = latex_name(d, matrix, None) if latex else matrix
        parts.append(f"{m}^\\top {names[dl]}" if latex else f"{m}^T {names[dl]}")
    for dl, v in st.outer:
        parts.append(r"\sum_{t} %s\, {%s}^\top" % (names[dl], names[v]) if latex else f"sum_t {names[dl]} {names[v]}^T")
    return " + ".join(parts)


# ----------------------------------------------------------------------------------------- textbook form
def textbook_statements(d: Derivation) -> list[Statement]:
    """The backward statements as a textbook writes them (the docs and ``lstm-spec derive`` print these; the
    generated code keeps the derivation's own): every temporary of common-subexpression elimination and every
    adjoint that is only a multiple of another (``δm = δv / 4``) or that depends on the output's cotangent
    alone (a loss layer's, down to the adjoint a matrix product reads) is written into the statements that
    read it; per-sample factors are taken out of sums over units; the derivative of logsumexp is named the
    softmax; no gradient is listed for a data input (:func:`data_inputs`). Check (a) proves each of these
    equal to the derived statement it replaces (checks.symbolic.check_step)."""
    info = d.symbols.info
    named = {dl for st in d.statements for _, dl in st.matvec} | {dl for st in d.statements for dl, _ in st.outer}
    data = data_inputs(d)
    inlined: dict = {}
    out = []
    for st in d.statements:
        el = st.elementwise.xreplace(inlined) if inlined else st.elementwise
        if el != st.elementwise or el.has(UnitSum, Exp):
            el = _textbook_expression(el, d)
        if st.kind == "cse" or (st.kind in ("value", "term") and not st.matvec and st.target not in named
                                and _written_in_place(el, info)):
            inlined[st.target] = el
        elif not (st.kind == "input" and info[info[st.target].of].name in data):
            out.append(Statement(st.target, st.kind, el, st.matvec, st.outer))
    return out


def _written_in_place(expr, info) -> bool:
    """An adjoint that reads as well in the statements using it: a multiple of one quantity (an alias), or
    an expression of the output's cotangent and forward values alone (a loss layer's adjoints)."""
    coeff, rest = expr.as_coeff_Mul()
    if isinstance(rest, sympy.Symbol) and coeff.is_Rational:
        return True
    kinds = {info[s].kind for s in expr.free_symbols}
    return "cot" in kinds and not kinds & {"adj", "next", "cse"}


def _textbook_expression(expr, d: Derivation):
    """Per-sample factors out of unit sums (Σ_k δy target_k = δy Σ_k target_k), exp(v - logsumexp(v)) as
    softmax(v), common factors out of sums when that is shorter."""
    lse = {d.symbols.value(fe.lhs): fe.expr.args[0] for fe in d.forward if isinstance(fe.expr, LogSumExp)}

    def softmax(e):
        for s, v in lse.items():
            if sympy.expand(e.args[0] - (v - s)) == 0:
                return Softmax(v, s)
        return e

    expr = expr.replace(lambda e: isinstance(e, UnitSum), lambda e: _out_of_sum(e.args[0], d))
    expr = expr.replace(lambda e: isinstance(e, Exp), softmax)
    return min([expr, sympy.factor_terms(expr)], key=sympy.count_ops)


def _out_of_sum(arg, d: Derivation):
    """UnitSum(arg) with the factors that are one value per sample (numbers, the loss's cotangent) in front."""
    outside, inside = [], []
    for f in sympy.Mul.make_args(arg):
        (outside if f.is_Number or _per_sample(f, d) else inside).append(f)
    if not inside:
        return UnitSum(arg)  # a sum of a per-sample value: H copies of it, kept as written
    return sympy.Mul(*outside) * UnitSum(sympy.Mul(*inside))


def _per_sample(expr, d: Derivation) -> bool:
    """Whether an expression is one value per sample: every quantity it reads outside a reduction is."""
    if isinstance(expr, tuple(fk.sympy_function for fk in FUNCTIONS.values() if fk.reduction)):
        return True
    if isinstance(expr, sympy.Symbol):
        return d.shape(expr) == ("1",)
    return all(_per_sample(a, d) for a in expr.args)


def data_inputs(d: Derivation) -> set[str]:
    """The inputs nobody trains on: the declared [masks] (dropout and zoneout masks, drawn, not learned), and
    those only a loss reads (a target, a label: the cell's output is read by no equation and is not a state,
    and no state depends on the input). Their gradients are computed (and checked); the textbook form lists
    none."""
    masks = set(getattr(d.cell, "masks", {}))
    if not _output_is_a_loss(d):
        return masks
    reads = {eq.lhs: _names_in(eq.rhs) for eq in d.cell.equations}
    feeds_a_state = set()
    for s in d.cell.states:
        todo = [s]
        while todo:
            n = todo.pop()
            if n not in feeds_a_state:
                feeds_a_state.add(n)
                todo += reads.get(n, ())
    return masks | (set(d.cell.inputs) - feeds_a_state)


def _output_is_a_loss(d: Derivation) -> bool:
    """The output is not a state and no equation reads it (the adjoint of it is its cotangent)."""
    cell = d.cell
    return cell.output not in cell.states and not any(cell.output in _names_in(eq.rhs) for eq in cell.equations)


def _names_in(node) -> set[str]:
    out, todo = set(), [node]
    while todo:
        n = todo.pop()
        if isinstance(n, Name):
            out.add(n.name)
        todo += _children(n)
    return out


def describe_latex(d: Derivation) -> str:
    """The derivation as a LaTeX fragment to paste into a document (needs amsmath): the prose as comments,
    the forward and backward steps each an ``align*`` environment, in the docs' notation (delta q = dL/dq,
    the elementwise product as odot)."""
    cell = d.cell

    def align(rows):
        body = [f"  {r.target} &= {r.expression}" + (r" \\" if k < len(rows) - 1 else "") for k, r in enumerate(rows)]
        return [r"\begin{align*}", *body, r"\end{align*}"]

    return "\n".join([
        f"% {cell.title} ({cell.name}): {cell.summary}",
        "% generated by `lstm-spec derive --latex`; needs \\usepackage{amsmath}",
        "% Forward, one time step:",
        *align(forward_equations(d, latex=True)),
        r"% Backward, one time step (\delta q = \partial L / \partial q; \odot: elementwise product; "
        r"sums over the batch):",
        *align(backward_equations(d, latex=True)),
        f"% Recursion: the step runs for t = T, ..., 1; the delta of a state at t-1 is what the step at t sends back "
        f"(states: {', '.join(cell.states)}); at t = T it is the cotangent of the final state.",
    ]) + "\n"


def describe(d: Derivation, latex: bool = False) -> str:
    """The whole derivation as text: forward, backward step, recursion and boundary conditions. ``latex``:
    a LaTeX fragment instead (:func:`describe_latex`)."""
    if latex:
        return describe_latex(d)
    cell = d.cell
    lines = [f"{cell.title} ({cell.name}): {cell.summary}", "", "Forward, one time step:"]
    for r in forward_equations(d, latex):
        lines.append(f"  {r}" + ("    (auxiliary, named by the derivation)" if r.kind == "aux" else ""))
    lines += ["", "Backward, one time step (d_q = dL/dq, elementwise products; sums over the batch):"]
    for r in backward_equations(d, latex, textbook=True):
        lines.append(f"  {r}")
    states = ", ".join(cell.states)
    lines += [
        "",
        "Recursion over time: run the step for t = T, ..., 1. What a step computes as d_s_prev for a state s",
        f"is d_s_next of the step before it (states: {states}). Boundary conditions at t = T: d_s_next is the",
        f"cotangent of the final state s_T (zero if none); dy is the cotangent of the output y_t = {cell.output}_t.",
        "The gradients of the initial states are the d_s_prev of step t = 1; input gradients are per step;",
        "parameter gradients are sums over all steps (and the batch).",
    ]
    return "\n".join(lines)
