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
