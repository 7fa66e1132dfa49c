"""Textbook-readable derived formulas (issue 17, item 3 and the docs check): no printer artefacts in any cell's
displayed derivation (the LaTeX the docs and ``lstm-spec derive --latex`` print), and check (a) proves every
displayed statement equal to the derived one.

An artefact is what a printer leaves and a textbook would not: a product with -1 or a power -1, a temporary
tau_k, an alias line (``δq = δp``, or a multiple of one quantity), a bare number for a spec constant, a sum that
starts with its negative term (``-c_{t-1} + c_new``), a gradient listed for a data input (a loss's target).
``artefacts(d)`` lists them per kind; every test on it has a negative control (a planted artefact is found).
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import pytest

from lstm_spec.derivations import derive
from lstm_spec.derivations.render import backward_equations, forward_equations, latex_names
from lstm_spec.spec import builtin_cells, load
from lstm_spec.spec.language import Call, Name, Num
from lstm_spec.spec.language import children as _children

MINUS_ONE = re.compile(r"(?<![\w{}])-\s*1\s*\\odot|\\odot\s*-\s*1(?![\d.])|\\left\(-1\\right\)|\{-1\}|\(-1\)")
NEGATIVE_POWER = re.compile(r"\^\{-")
TEMPORARY = re.compile(r"\\tau_\{")
# a literal of the spec that is a constant rather than structure (an epsilon, a bound): not a small integer
# nor a fraction of small integers (the 4 of a mean over four gates, the 1/2 of a squared error)
SMALL = 10


@pytest.fixture(scope="module")
def derivations():
    return {name: derive(load(name)) for name in builtin_cells()}


# ----------------------------------------------------------------------------------------- the detector
def displayed(d) -> list[tuple[str, str, str]]:
    """(section, plain target, LaTeX row) of every formula a cell's page shows."""
    rows = [("forward", r.target, str(r)) for r in forward_equations(d, latex=True)]
    plain = [r.target for r in backward_equations(d, latex=False, textbook=True)]
    tex = backward_equations(d, latex=True)
    return rows + [("backward", p, str(r)) for p, r in zip(plain, tex, strict=True)]


def artefacts(d, rows=None) -> dict[str, list[str]]:
    """Every printer artefact in the displayed formulas ``rows`` (default: the cell's), by kind."""
    rows = displayed(d) if rows is None else rows
    found: dict[str, list[str]] = {}

    def add(kind, row):
        found.setdefault(kind, []).append(row)

    names = set(latex_names(d).values())
    constants = spec_constants(d.cell)
    data = loss_only_inputs(d.cell)
    for section, target, row in rows:
        rhs = row.split(" = ", 1)[1]
        if MINUS_ONE.search(row):
            add("product with -1", row)
        if NEGATIVE_POWER.search(row):
            add("power -1", row)
        if TEMPORARY.search(row):
            add("temporary", row)
        if section == "backward" and _is_alias(rhs, names):
            add("alias line", row)
        if any(c in row for c in constants):
            add("bare number for a spec constant", row)
        if section == "backward" and any(_leads_with_minus(g) for g in _groups(rhs)):
            add("sum led by its negative term", row)
        if section == "backward" and target in {f"d_{x}" for x in data}:
            add("gradient of a data input", row)
    return found


def _is_alias(rhs: str, names: set[str]) -> bool:
    """δq = δp, = -δp, = (1/4) δp, = δp / 4: one quantity, at most a number times it."""
    bare = re.sub(r"^-?\s*(\\frac\{\d+\}\{\d+\}|\d+)?\s*", "", rhs)
    m = re.fullmatch(r"\\frac\{(.*)\}\{\d+\}", rhs.lstrip("- "))
    return bare in names or (m is not None and m.group(1) in names)


def _groups(tex: str) -> list[str]:
    """The text of ``tex`` and of every \\left( ... \\right) in it, each with its inner groups and braces
    blanked out (so that a + or - seen is a term of that group)."""
    out, stack, spans = [], [], []
    for m in re.finditer(r"\\left\(|\\right\)", tex):
        if m.group() == r"\left(":
            stack.append(m.end())
        elif stack:
            spans.append((stack.pop(), m.start()))
    for start, end in [(0, len(tex))] + spans:
        text, depth, kept = tex[start:end], 0, []
        for ch in re.sub(r"\\left\(.*?\\right\)", "()", text):
            depth += ch == "{"
            kept.append(ch if depth == 0 else " ")
            depth -= ch == "}"
        out.append("".join(kept).strip())
    return out


def _leads_with_minus(group: str) -> bool:
    return group.startswith("-") and " + " in group


def spec_constants(cell) -> set[str]:
    """How the spec's numeric constants would print in LaTeX (\\frac{1}{100000}, clip_{1}): literals that are
    not small integers or fractions of them, and every number given to a function (a clip's bound)."""
    values, todo = set(), [eq.rhs for eq in cell.equations]
    while todo:
        n = todo.pop()
        if isinstance(n, Num) and not (abs(n.value.numerator) <= SMALL and n.value.denominator <= SMALL):
            values.add(n.value)
        todo += _children(n)
    out = {r"\frac{%d}{%d}" % (abs(v.numerator), v.denominator) if v.denominator != 1 else
           str(v.numerator) for v in values}
    for func, args in cell.function_args.items():
        for a in args:
            if isinstance(a, Fraction):
                out.add(r"\operatorname{%s}_{%s" % (func, a))
                out.add(r"\le %s\right]" % a)
    return out


def loss_only_inputs(cell) -> set[str]:
    """Inputs no state depends on, when the output is a loss (read by nothing, not a state): a target."""
    reads = {eq.lhs: {n.name for n in _walk(eq.rhs) if isinstance(n, Name)} for eq in cell.equations}
    if cell.output in cell.states or any(cell.output in r for r in reads.values()):
        return set()
    seen, todo = set(), list(cell.states)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += reads.get(n, ())
    return set(cell.inputs) - seen


def _walk(node):
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        todo += _children(n)


def _table(counts: dict) -> str:
    kinds = sorted({k for c in counts.values() for k in c})
    lines = [f"{name}: " + ", ".join(f"{k} {len(c[k])}" for k in kinds if k in c) for name, c in counts.items() if c]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- the tests
def test_no_printer_artefacts_in_any_cells_displayed_derivation(derivations):
    """Every cell's page: no product with -1, no temporary, no alias line, no sum led by its negative term,
    no gradient of a data input (the counts per cell before this change are in the report of issue 17)."""
    counts = {name: {k: v for k, v in artefacts(d).items() if k != "bare number for a spec constant"}
              for name, d in derivations.items()}
    if any(counts.values()):
        pytest.fail("printer artefacts per cell:\n" + _table(counts))


def test_spec_constants_print_by_name(derivations):
    """A spec constant (the layer-norm epsilon, a clip bound) prints by its name, not as 1/100000 (the
    [constants] table gives them names)."""
    counts = {name: {k: v for k, v in artefacts(d).items() if k == "bare number for a spec constant"}
              for name, d in derivations.items()}
    if any(counts.values()):
        pytest.fail("spec constants printed as numbers:\n" + _table(counts))


@pytest.mark.parametrize(("row", "kind"), [
    (r"\delta z_{t} = -1 \odot \delta h_{t}", "product with -1"),
    (r"\delta z_{t} = \delta h_{t} \odot N^{-1}", "power -1"),
    (r"\delta z_{t} = \delta h_{t} \odot \tau_{0}", "temporary"),
    (r"\delta o_{t} = \delta h_{t}", "alias line"),
    (r"\delta o_{t} = \frac{1}{4} \delta h_{t}", "alias line"),
    (r"\delta z_{t} = \delta h_{t} \odot \left(-h_{t-1} + n_{t}\right)", "sum led by its negative term"),
    (r"\delta z_{t} = -h_{t-1} \odot \delta h_{t} + n_{t}", "sum led by its negative term"),
])
def test_a_planted_artefact_is_found(derivations, row, kind):
    d = derivations["gru_reset_after"]
    assert kind in artefacts(d, [("backward", "d_z", row)])
    clean = r"\delta z_{t} = \delta h_{t} \odot \left(h_{t-1} - n_{t}\right) \odot \frac{\delta o_{t}}{4 H}"
    assert artefacts(d, [("backward", "d_z", clean)]) == {}


def test_a_planted_constant_and_data_gradient_are_found(derivations, tmp_path):
    d = derivations["lstm_softmax_ce"]
    assert "gradient of a data input" in artefacts(d, [("backward", "d_target", r"\delta t = \delta y")])
    assert "gradient of a data input" not in artefacts(d, [("backward", "d_x", r"\delta x = W^\top \delta z")])
    assert loss_only_inputs(d.cell) == {"target"}
    # a user's cell that writes its epsilon as a number: the number is reported (a [constants] name is not)
    spec = (Path(__file__).parents[2] / "spec" / "rnn_tanh.toml").read_text(encoding="utf-8")
    path = tmp_path / "rnn_eps.toml"
    spec = spec.replace('name = "rnn_tanh"', 'name = "rnn_eps"').replace("h = tanh(z)", "h = tanh(z + 0.00001)")
    path.write_text(spec, encoding="utf-8")
    found = artefacts(derive(load(str(path))))
    assert [r for r in found["bare number for a spec constant"] if r"\frac{1}{100000}" in r], found


def test_activation_derivatives_read_as_textbook(derivations):
    """σ' = σ(1 - σ) and tanh' = 1 - tanh² written out: the GRU's update gate showed δa_z = δz ⊙ τ0 ⊙ z."""
    rows = {p: tex for _, p, tex in displayed(derivations["gru_reset_after"])}
    assert rows["d_a_z"] == r"\delta a_{z,t} = \delta z_{t} \odot z_{t} \odot \left(1 - z_{t}\right)"
    assert rows["d_n"] == r"\delta n_{t} = \delta h_{t} \odot \left(1 - z_{t}\right)"
    for name, d in derivations.items():
        forward = {fe.lhs: fe.ast for fe in d.forward if not fe.aux}
        rows = {p: tex for sec, p, tex in displayed(d) if sec == "backward"}
        for lhs, ast in forward.items():
            if isinstance(ast, Call) and isinstance(ast.arg, Name) and f"d_{ast.arg.name}" in rows:
                v = re.escape(latex_names(d)[d.symbols.value(lhs)])
                kind = d.cell.functions[ast.func]
                want = {"logistic": rf"{v} \\odot \\left\(1 - {v}\\right\)",
                        "tanh": rf"\\left\(1 - (\{{|\\left\()?{v}(\}}|\\right\))?\^\{{2\}}\\right\)"}.get(kind)
                if want:
                    assert re.search(want, rows[f"d_{ast.arg.name}"]), (name, rows[f"d_{ast.arg.name}"])


def test_loss_layers_in_closed_form(derivations):
    """Softmax cross-entropy: δa = δloss (softmax(a) Σ_k target_k - target), i.e. p - target for a target that
    sums to 1, not δlog p + δlogsumexp ⊙ exp(a - logsumexp a); squared error: δe = δloss e. No gradient of the
    target is listed."""
    ce = {p: tex for _, p, tex in displayed(derivations["lstm_softmax_ce"])}
    assert ce["d_a"] == (r"\delta a_{t} = \delta \mathrm{loss}_{t} \odot \left(\operatorname{softmax}\left(a_{t}\right)"
                         r" \odot \sum_{k} \mathrm{target}_{t} - \mathrm{target}_{t}\right)")
    assert "d_target" not in ce and not any("logsumexp" in k or "log_p" in k for k in ce)
    mse = {p: tex for _, p, tex in displayed(derivations["lstm_mse"])}
    assert mse["d_e"] == r"\delta e_{t} = \delta \mathrm{loss}_{t} \odot e_{t}" and "d_target" not in mse


def test_division_prints_as_a_fraction(derivations):
    """Layer norm: the adjoint of a mean over H units and over the four gates divides by 4H; the rsqrt's
    derivative halves (-δs s³ / 2), no 'N ⊙ -1' and no '2 \\frac{...}{H}'."""
    rows = {p: tex for _, p, tex in displayed(derivations["lstm_layer_norm"])}
    assert rows["d_U_o_h_prev"] == (r"\delta\left(U_{o} h_{t-1}\right) = \delta \mathrm{eh}_{o,t} + "
                                    r"\frac{\delta \mathrm{mh}_{t}}{4 H}")
    assert rows["d_vh"] == r"\delta \mathrm{vh}_{t} = -\frac{\delta \mathrm{sh}_{t} \odot \mathrm{sh}_{t}^{3}}{2}"
    assert not any(re.search(r"\d \\frac", tex) for tex in rows.values())


def test_code_keeps_the_derivations_statements(derivations):
    """The generated module's header (backward_equations in plain text, the default) keeps the statements of
    the code, temporaries included: only the display is rewritten."""
    d = derivations["lstm_layer_norm"]
    plain = [r.target for r in backward_equations(d)]
    assert "tmp0" in plain and len(plain) == len(d.statements)


# ----------------------------------------------------------------------------------------- check (a)
def _planted(honest, quantity):
    """textbook_statements with the statement of δ<quantity> doubled: a wrong display, a right derivation."""
    def planted(d):
        out = honest(d)
        k = next(i for i, st in enumerate(out) if d.symbols.info[d.symbols.info[st.target].of].name == quantity)
        out[k] = type(out[k])(out[k].target, out[k].kind, out[k].elementwise * 2, out[k].matvec, out[k].outer)
        return out
    return planted


@pytest.mark.parametrize(("cell", "quantity", "derivative"), [("lstm_softmax_ce", "a", "reverse"),
                                                              ("rnn_tanh", "z", "sympy")])
def test_check_a_proves_the_displayed_statements_and_catches_a_wrong_one(derivations, monkeypatch, cell, quantity,
                                                                         derivative):
    """(a) evaluates each displayed statement on the explicit step and compares it with the derived one; a
    planted error in the display (not in the derivation) is reported as 'shown <name>', on both of (a)'s paths
    (sympy.diff: `verify --proof`; the tape: `verify`)."""
    from lstm_spec.checks import symbolic
    from lstm_spec.derivations import render

    d = derivations[cell]
    assert symbolic.check_step(d, exact="points", derivative=derivative)["error"] == 0
    monkeypatch.setattr(render, "textbook_statements", _planted(render.textbook_statements, quantity))
    res = symbolic.check_step(d, exact="points", derivative=derivative)
    assert res["error"] == 1 and res["failures"] == [f"shown {quantity}"], res


def test_the_displayed_loss_layer_is_proved_by_expansion(derivations, monkeypatch):
    """The proof path (exact="expand", what `verify --proof` uses) on the statements the display rewrites most:
    softmax cross-entropy's closed form and the GRU's inlined temporary; a planted error is not proved."""
    from lstm_spec.checks import symbolic
    from lstm_spec.derivations import render

    for cell, quantity in (("lstm_softmax_ce", "a"), ("gru_reset_after", "a_z"), ("lstm_layer_norm", "mh")):
        d = derivations[cell]
        sizes = symbolic._default_sizes(d.cell)
        inputs, prev, seeds = symbolic._step_leaves(d, sizes, symbolic.SYMPY)
        base = symbolic.ExplicitStep(d, sizes).run(inputs, prev)
        derived = symbolic._derived_step(d, base, seeds, symbolic.SYMPY)
        same = symbolic.comparator("expand")
        assert symbolic.displayed_differ(d, derived, same) == [], cell
        with monkeypatch.context() as m:
            m.setattr(render, "textbook_statements", _planted(render.textbook_statements, quantity))
            assert symbolic.displayed_differ(d, derived, same) == [f"shown {quantity}"], cell


def test_check_a_proves_every_cells_display(derivations):
    """Every cell: the displayed statements equal the derived ones (on the tape at two points; the proof by
    expansion runs in `lstm-spec verify --proof` and tests/checks/test_cells.py)."""
    from lstm_spec.checks.symbolic import check_step

    failing = {}
    for name, d in derivations.items():
        res = check_step(d, exact="points", derivative="reverse")
        shown = [f for f in res["failures"] if f.startswith("shown ")]
        if shown:
            failing[name] = shown
    assert not failing, failing


@pytest.mark.parametrize("cell", ["lstm_zoneout", "lstm_variational_dropout", "lstm_stacked2_dropout"])
def test_no_gradient_of_a_mask_is_displayed(cell):
    """A dropout or zoneout mask is drawn, not learned: its gradient is computed and checked, not shown."""
    d = derive(load(cell))
    masks = set(d.cell.masks)
    assert masks, cell
    shown = {r.target for r in backward_equations(d, latex=False, textbook=True)}
    computed = {r.target for r in backward_equations(d, latex=False)}
    assert {f"d_{m}" for m in masks} & computed, "the derivation computes the masks' gradients"  # the control
    assert not {f"d_{m}" for m in masks} & shown
