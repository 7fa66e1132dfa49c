"""The derivation: textbook forms, the rules behind it, rendering."""

import pytest
import sympy

from lstm_spec.derivations import functions, rules
from lstm_spec.derivations.render import backward_equations, describe, forward_equations
from lstm_spec.derivations.reverse import expand_adjoint


def _stmt(d, name):
    return next(st for st in d.statements if st.target.name == name)


def test_activation_rules_agree_with_closed_forms():
    for kind, diff in functions.confirm_rules():
        assert diff == 0, kind


def test_matrix_rules_agree_with_sympy_diff():
    for name, bad in rules.confirm_rules():
        assert bad == 0, name


@pytest.mark.parametrize("name, wrong", [
    ("MATVEC_VJP_OPERAND", "-({dL} @ {M})"),
    ("MATVEC_VJP_OPERAND_SEQ", "seq_matmul({dL}, {M}) * 2"),
    ("SPLIT_ROWS", "split_first({a}, tuple(reversed(({sizes}))))"),  # the stacked gradient split wrongly
    ("SPLIT_COLUMNS", "split_last({a}, tuple(reversed(({sizes}))))"),
])
def test_negative_control_a_wrong_matrix_rule_is_detected(monkeypatch, name, wrong):
    monkeypatch.setattr(rules, name, wrong)
    results = rules.confirm_rules()
    assert any(bad != 0 for _, bad in results), name


def test_negative_control_a_wrong_activation_rule_is_detected():
    x = sympy.Symbol("x", real=True)
    s = functions.Sigmoid(x)
    closed = 1 / (1 + sympy.exp(-x))
    wrong = (s * (1 + s)).subs(s, closed) - sympy.diff(closed, x)
    assert sympy.simplify(wrong) != 0


def test_gate_adjoints_read_like_the_textbook(lstm_derivation):
    d = lstm_derivation
    S = d.symbols
    v = S.value
    def adj(n):
        return S.adj(S.value(n))
    assert _stmt(d, "δz_o").elementwise == adj("o") * v("o") * (1 - v("o"))
    assert _stmt(d, "δz_f").elementwise == adj("f") * v("f") * (1 - v("f"))
    assert _stmt(d, "δz_c").elementwise == adj("c_tilde") * (1 - v("c_tilde") ** 2)
    assert _stmt(d, "δc[t-1]").elementwise == adj("c") * v("f")
    # substituted back: dz_o = dh * tanh(c) * o * (1 - o), with dh = dh_next + dy
    full = expand_adjoint(d, S.adj(v("z_o")))
    dh = S.next("h") + S.cot()
    assert sympy.expand(full - dh * v("tanh_c") * v("o") * (1 - v("o"))) == 0


def test_recurrent_adjoint_collects_all_four_gates(lstm_derivation):
    st = _stmt(lstm_derivation, "δh[t-1]")
    assert st.elementwise == 0
    assert [m for m, _ in st.matvec] == ["U_f", "U_i", "U_c", "U_o"]


def test_parameter_gradients_are_sums_over_time(lstm_derivation):
    st = _stmt(lstm_derivation, "δW_f")
    assert st.kind == "param_matrix" and [(dl.name, v.name) for dl, v in st.outer] == [("δz_f", "x")]
    assert _stmt(lstm_derivation, "δU_o").outer[0][1].name == "h[t-1]"


def test_rendering_plain_and_latex(lstm_derivation):
    plain = [str(r) for r in backward_equations(lstm_derivation)]
    assert "d_z_o = d_o * o * (1 - o)" in plain
    assert "d_c = d_c_next + d_tanh_c * (1 - tanh_c**2)" in plain
    latex = [str(r) for r in backward_equations(lstm_derivation, latex=True)]
    assert r"\delta z_{o,t} = \delta o_{t} \odot o_{t} \odot \left(1 - o_{t}\right)" in latex
    fwd = [str(r) for r in forward_equations(lstm_derivation, latex=True)]
    assert r"c_{t} = f_{t} \odot c_{t-1} + i_{t} \odot \tilde{c}_{t}" in fwd
    text = describe(lstm_derivation)
    assert "Boundary conditions at t = T" in text
