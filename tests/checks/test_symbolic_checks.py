"""(a) and (b): symbolic equality, each with its negative control."""

import pytest

from lstm_spec.checks import mutants
from lstm_spec.checks.symbolic import check_step, check_unrolled
from lstm_spec.reference import lstm


def test_a_every_adjoint_equals_sympy_diff_of_the_expanded_step(lstm_derivation):
    res = check_step(lstm_derivation)
    assert res["error"] == 0, res["failures"]
    assert res["checked"] > 80


def test_a_negative_control_every_planted_sign_error_is_caught(lstm_derivation):
    d = lstm_derivation
    for k, st in enumerate(d.loop):
        if st.elementwise == 0:
            continue
        bad, target = mutants.planted_derivation(d, k)
        assert check_step(bad, only={target})["error"] > 0, f"sign flip in {target} not caught"


def test_b_generated_code_equals_sympy_diff_of_unrolled_loss_exactly(lstm_derivation):
    """T = 2, B = 1, D = 3, H = 2: the difference expands to 0 (a proof, not a sample)."""
    res = check_unrolled(lstm_derivation, lstm, T=2, exact="expand")
    assert res["error"] == 0, res["failures"]
    assert res["checked"] == 4 * (2 * 3 + 2 * 2 + 2) + 2 * 3 + 2 + 2


def test_b_longer_sequence_and_batch_at_random_points(lstm_derivation):
    res = check_unrolled(lstm_derivation, lstm, T=3, B=2, sizes={"D": 2, "H": 1})
    assert res["error"] == 0, res["failures"]


@pytest.mark.parametrize("how", ["delete", "negate"])
def test_b_negative_control_mutated_generated_code_is_caught(lstm_derivation, lstm_text, how):
    index = mutants.recursion_line(lstm_text)
    bad = mutants.load_module(mutants.mutate_code(lstm_text, index, how))
    res = check_unrolled(lstm_derivation, bad, T=2, stop_after=1)
    assert res["error"] > 0


def test_b_negative_control_a_wrong_gate_line_is_caught(lstm_derivation, lstm_text):
    lines = lstm_text.splitlines()
    index = next(i for i in mutants.backward_lines(lstm_text) if lines[i].strip().startswith("d_z_o[t] ="))
    bad = mutants.load_module(mutants.mutate_code(lstm_text, index, "negate"))
    assert check_unrolled(lstm_derivation, bad, T=2, stop_after=1)["error"] > 0


def test_b_negative_control_a_tiny_constant_change_is_caught(lstm_derivation, lstm_text):
    """Float constants are read back as small fractions only when that is exact: a line scaled by
    1.0000001 is not mistaken for the original."""
    line = "        d_c_prev = d_c * f[t]\n"
    assert line in lstm_text
    bad = mutants.load_module(lstm_text.replace(line, "        d_c_prev = d_c * f[t] * 1.0000001\n"))
    assert check_unrolled(lstm_derivation, bad, T=2, stop_after=1)["error"] > 0


# ------------------------------------------------------------------ reverse accumulation at points (verify's default)
def _tape_gradient(e, xs, seed):
    """dE/dx for x in xs by one reverse accumulation over a PointTape holding e at a random point, and a
    ModularPoint at the same point (same residues for xs, same function values)."""
    from lstm_spec.checks.symbolic import ModularPoint, PointTape

    tape = PointTape(seed)
    nodes = [tape.symbol() for _ in xs]
    L = tape.from_sympy(e.xreplace({x: n._sympy_() for x, n in zip(xs, nodes, strict=True)}))
    adj = tape.adjoints(L)
    point = ModularPoint(seed, {x: n.value for x, n in zip(xs, nodes, strict=True)}, tape.salt)
    return [adj[n.index] for n in nodes], point


def test_tape_reverse_accumulation_equals_sympy_diff_on_every_function_kind():
    """The PointTape's reverse accumulation is sympy.diff's chain rule evaluated at a point: the same residues
    as sympy.diff evaluated there, for sums, products, integer powers (negative too), constants and every
    function the explicit forwards contain."""
    import sympy

    from lstm_spec.derivations.functions import (
        Clip,
        ClipMask,
        Exp,
        LogSumExpN,
        Rsqrt,
        Sigmoid,
        StopGradient,
    )

    x, y, z = sympy.symbols("x y z")
    exprs = [
        Sigmoid(x * y + z) * sympy.tanh(x + Sigmoid(z * x)) ** 2 / (1 + x * y),
        Rsqrt(x**2 + 3 * y) * Exp(z - x) * x - sympy.Rational(1, 3) * y**-2,
        LogSumExpN(x, y * z, x * x) * y + StopGradient(x * y) * z,
        Clip(x * y, 3) * ClipMask(x * y, 3) + 0.5 * z * Clip(z, 3),
        (x * y * z) ** 3 - 2 * x * (x + y) * (x + y),
        sympy.tanh(-x * y) + sympy.tanh(x - y) * Sigmoid(x - x),  # SymPy's own rewrites: tanh odd, sigma(0)
    ]
    for seed in (1, 2):
        for e in exprs:
            got, pt = _tape_gradient(e, [x, y, z], seed)
            assert got == [pt(sympy.diff(e, v)) for v in (x, y, z)], e


def test_tape_negative_control_a_changed_expression_differs():
    import sympy

    from lstm_spec.derivations.functions import Sigmoid

    x, y = sympy.symbols("x y")
    e = Sigmoid(x * y) * sympy.tanh(x)
    _, pt = _tape_gradient(e, [x, y], 1)
    want = [pt(sympy.diff(e, v)) for v in (x, y)]
    assert _tape_gradient(e + x * y * 10**-6, [x, y], 1)[0] != want
    assert _tape_gradient(Sigmoid(x * y) * sympy.tanh(y), [x, y], 1)[0] != want


def test_a_by_reverse_accumulation_agrees_and_catches_every_planted_sign_error(lstm_derivation):
    d = lstm_derivation
    res = check_step(d, exact="points", derivative="reverse")
    assert res["error"] == 0, res["failures"]
    assert res["checked"] > 80
    for k, st in enumerate(d.loop):
        if st.elementwise == 0:
            continue
        bad, target = mutants.planted_derivation(d, k)
        assert check_step(bad, exact="points", only={target}, derivative="reverse")["error"] > 0, target


def test_b_by_reverse_accumulation_agrees_and_catches_mutated_lines(lstm_derivation, lstm_text):
    res = check_unrolled(lstm_derivation, lstm, T=3, B=2, sizes={"D": 3, "H": 2}, derivative="reverse")
    assert res["error"] == 0, res["failures"]
    assert res["checked"] == 4 * (2 * 3 + 2 * 2 + 2) + 3 * 2 * 3 + 2 * 2 + 2 * 2
    lines = lstm_text.splitlines(keepends=True)
    gate = next(i for i in mutants.backward_lines(lstm_text) if lines[i].strip().startswith("d_z_o[t] ="))
    mutated = [mutants.mutate_code(lstm_text, mutants.recursion_line(lstm_text), how) for how in ("delete", "negate")]
    mutated.append(mutants.mutate_code(lstm_text, gate, "negate"))
    mutated.append(lstm_text.replace("        d_c_prev = d_c * f[t]\n", "        d_c_prev = d_c * f[t] * 1.0000001\n"))
    for text in mutated:
        assert text != lstm_text
        bad = mutants.load_module(text)
        assert check_unrolled(lstm_derivation, bad, T=2, stop_after=1, derivative="reverse")["error"] > 0


def test_a_b_derivative_argument_is_checked(lstm_derivation):
    with pytest.raises(ValueError, match="derivative"):
        check_step(lstm_derivation, derivative="numeric")
    with pytest.raises(ValueError, match="derivative"):
        check_unrolled(lstm_derivation, lstm, derivative="numeric")
