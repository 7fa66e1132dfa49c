"""(c) complex step and finite differences, float32; negative controls on every backward line."""

import numpy as np
import pytest

from lstm_spec.checks import mutants
from lstm_spec.checks.numeric import check_derivatives, check_float32
from lstm_spec.checks.tolerances import TOLERANCES
from lstm_spec.reference import lstm

CS = TOLERANCES[("complex_step", "complex128")].value
FD = TOLERANCES[("finite_difference", "float64")].value


def test_complex_step_agrees_to_rounding():
    res = check_derivatives(lstm, "complex_step")
    assert res["error"] <= CS, res


def test_finite_differences_agree():
    res = check_derivatives(lstm, "finite_difference")
    assert res["error"] <= FD, res


def test_float32_stays_float32_and_agrees_with_float64():
    res = check_float32(lstm)
    assert res["error"] <= TOLERANCES[("float32", "float32")].value, res


def _mutants(text):
    for index in mutants.backward_lines(text):
        for how in ("negate", "zero", "delete"):
            yield index, how


def test_negative_control_every_line_of_the_generated_backward_matters(lstm_text):
    """Negating, zeroing or deleting any derived line of backward() is caught by complex step."""
    lines = lstm_text.splitlines()
    assert len(mutants.backward_lines(lstm_text)) >= 20  # 11 loop lines + input and parameter gradients
    missed = []
    for index, how in _mutants(lstm_text):
        bad = mutants.load_module(mutants.mutate_code(lstm_text, index, how))
        res = check_derivatives(bad, "complex_step")
        if not res["error"] > CS:
            missed.append((how, lines[index].strip()))
    assert missed == []


def test_negative_control_finite_differences_catch_a_dropped_recursion(lstm_text):
    bad = mutants.load_module(mutants.mutate_code(lstm_text, mutants.recursion_line(lstm_text), "delete"))
    assert check_derivatives(bad, "finite_difference")["error"] > FD


def test_negative_control_forward_mutation_is_caught(lstm_text):
    """A wrong forward line (the cell update) breaks the agreement of backward with the derivative."""
    text = lstm_text.replace("c[t + 1] = f[t] * c[t] + i[t] * c_tilde[t]", "c[t + 1] = f[t] * c[t] - i[t] * c_tilde[t]")
    assert text != lstm_text
    bad = mutants.load_module(text)
    assert check_derivatives(bad, "complex_step")["error"] > CS


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
def test_dtypes_are_preserved(dtype):
    from lstm_spec.checks.cases import random_instance, run

    inst = random_instance(lstm, (3, 2, 4, 3), 0).astype(dtype)
    y, final, grads = run(lstm, inst)
    assert y.dtype == dtype and final["c"].dtype == dtype
    assert all(g.dtype == dtype for g in grads.values())
