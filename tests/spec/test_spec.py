"""The spec loader: the grammar it accepts, and the clear errors for everything else."""

import pytest

from lstm_spec.derivations import derive
from lstm_spec.spec import SpecError, builtin_cells, load
from lstm_spec.spec.language import BinOp, Call, Name, parse_equation

from ..conftest import write_spec

MINIMAL = """
name = "mini"
output = "h"
equations = '''
z = W @ x + U @ h[t-1] + b
h = tanh(z)
'''
[dimensions]
D = "in"
H = "hidden"
[inputs]
x = "D"
[states]
h = "H"
[parameters]
W = "H x D"
U = "H x H"
b = "H"
[functions]
tanh = "tanh"
"""


def spec_with(tmp_path, equations=None, extra="", replace=None):
    body = MINIMAL
    if equations is not None:
        body = body.replace("z = W @ x + U @ h[t-1] + b\nh = tanh(z)", equations)
    if replace:
        body = body.replace(*replace)
    return write_spec(tmp_path, body + extra)


def test_builtin_lstm_loads_with_roles_and_shapes(lstm_cell):
    assert "lstm" in builtin_cells()
    assert list(lstm_cell.inputs) == ["x"]
    assert list(lstm_cell.states) == ["h", "c"]
    assert lstm_cell.parameters["W_f"].shape == ("H", "D")
    assert lstm_cell.parameters["U_o"].shape == ("H", "H")
    assert lstm_cell.parameters["b_c"].shape == ("H",)
    assert lstm_cell.shapes["c_tilde"] == ("H",)
    assert lstm_cell.functions == {"sigma": "logistic", "tanh": "tanh"}


def test_minimal_spec_loads_and_derives(tmp_path):
    cell = load(spec_with(tmp_path))
    d = derive(cell)
    assert [fe.lhs for fe in d.forward] == ["z", "h"]


def test_parser_builds_tree_without_python():
    eq = parse_equation("f = sigma(W_f @ x + U_f @ h[t-1] + b_f)", "here")
    assert eq.lhs == "f" and isinstance(eq.rhs, Call)
    inner = eq.rhs.arg
    assert isinstance(inner, BinOp) and inner.op == "+"
    assert Name("h", prev=True) in (inner.left.right.right,)


def test_elementwise_product_symbol_is_star():
    a = parse_equation("c = f ⊙ c[t-1]", "here")
    b = parse_equation("c = f * c[t-1]", "here")
    assert a.rhs == b.rhs


@pytest.mark.parametrize("equations, message", [
    ("z = W @ x + U @ h[t-1] + b\nh = tanh(z).real", "unexpected character '.'"),
    ("z = W @ x + U @ h[t-1] + b\nh = __import__(z)", "unexpected character '_'"),
    ("z = W @ x + U @ h[t-1] + b\nh = exp(z)", "undeclared function 'exp'"),
    ("z = W @ x + U @ h[t-1] + b\nh = tanh(z) ** 2", "use '^'"),
    ("z = W @ x + U @ h[t-1] + b\nh = tanh(z) ^ 99", "larger than the allowed"),
    ("z = W @ x + U @ h[t-1] + b\nh = tanh(z) + q", "'q' is not declared"),
    ("z = W @ x + U @ h[t-1] + b\nh = tanh(z) + W", "matrix parameter"),
    ("z = W @ h[t-1] + U @ h[t-1] + b\nh = tanh(z)", "W is H x D but the vector"),
    ("z = W @ x + U @ h + b\nh = tanh(z)", "used before its equation"),
    ("z = W @ x + U @ h[t-1] + b\nh = tanh(z[t-1])", "not a declared state"),
    ("z = W @ x + U @ h[t-1] + b\nz = tanh(z)\nh = z", "defined twice"),
    ("z = W @ x + U @ h[t-1] + b\nh = tanh(z)\nq = h", "computed but never used"),
    ("z = W @ x + U @ h[t-1]\nh = tanh(z)", "'b' is declared but never used"),
    ("z = W @ x + U @ h[t-1] + b\nh = tanh(z) + x", "elementwise sum (+) of a vector of H and a vector of D"),
    ("z = W @ x + U @ (h[t-1]) + b\nh = tanh(z)", None),  # parenthesised name is fine
    ("z = W @ x + U @ (h[t-1] * b) + b\nh = tanh(z)", "right operand of @ must be a name"),
    ("z = W @ x + U @ h[t-2] + b\nh = tanh(z)", "only NAME[t-1]"),
    ("x = W @ x\nh = tanh(x)", "declared as a input"),
])
def test_bad_equations_are_rejected_with_file_and_line(tmp_path, equations, message):
    path = spec_with(tmp_path, equations)
    if message is None:
        load(path)
        return
    with pytest.raises(SpecError) as err:
        load(path)
    text = str(err.value)
    assert message in text
    assert str(path) in text


def test_error_names_the_line_of_the_equation(tmp_path):
    path = spec_with(tmp_path, "z = W @ x + U @ h[t-1] + b\nh = tanh(z) + nope")
    with pytest.raises(SpecError, match=r"line 6, equation 'h = tanh\(z\) \+ nope'"):
        load(path)


def test_deep_nesting_is_rejected(tmp_path):
    deep = "(" * 200 + "z" + ")" * 200
    path = spec_with(tmp_path, f"z = W @ x + U @ h[t-1] + b\nh = tanh({deep})")
    with pytest.raises(SpecError, match="nested deeper"):
        load(path)


@pytest.mark.parametrize("replace, message", [
    (('tanh = "tanh"', 'tanh = "os.system"'), "unknown function kind"),
    (('U = "H x H"', 'U = "H x H x H"'), "bad shape"),
    (('x = "D"', 'x = "Q"'), "dimension 'Q' is not declared"),
    (('name = "mini"', 'name = "Mini Cell"'), "cell name"),
    (('output = "h"', 'output = "nothing"'), "output 'nothing' is not defined"),
    (('name = "mini"', 'name = "mini"\nevil = 1'), "unknown key"),
    (('W = "H x D"', 'W = "H x D"\nh0 = "H"'), "initial value"),
])
def test_bad_declarations_are_rejected(tmp_path, replace, message):
    with pytest.raises(SpecError, match=message):
        load(spec_with(tmp_path, replace=replace))


def test_state_that_does_not_recur_is_rejected(tmp_path):
    path = spec_with(tmp_path, "z = W @ x + b\nh = tanh(z)", replace=('U = "H x H"\n', ""))
    with pytest.raises(SpecError, match="never read as h\\[t-1\\]"):
        load(path)


def test_not_toml_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="not a valid TOML"):
        load(write_spec(tmp_path, "name = [unclosed"))


def test_unknown_cell_name_is_reported():
    with pytest.raises(SpecError, match="unknown cell 'no_such_cell'"):
        load("no_such_cell")


def test_spec_text_is_never_evaluated(tmp_path, monkeypatch):
    """Neither eval nor sympify is called while a spec is loaded and derived."""
    import builtins

    import sympy.physics.units  # SymPy's simplify imports it lazily, and that import calls eval itself

    calls = []
    real_eval = builtins.eval
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: calls.append(a) or real_eval(*a, **k))
    monkeypatch.setattr(sympy, "sympify", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    derive(load(spec_with(tmp_path)))
    derive(load("lstm"))
    assert calls == []
