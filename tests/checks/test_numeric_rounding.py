"""The rounding floor of the complex-step and float32 checks (checks/numeric.py): a gradient cancelled down
to rounding level (a saturated tanh) is not a false failure, and a real error is still caught."""

import numpy as np
import pytest

from lstm_spec.checks import mutants
from lstm_spec.checks.cases import random_instance, run
from lstm_spec.checks.numeric import check_derivatives, check_float32, rounding_noise
from lstm_spec.checks.tolerances import tolerance
from lstm_spec.derivations.codegen import generate_module
from lstm_spec.derivations.reverse import derive
from lstm_spec.reference import lstm
from lstm_spec.spec.cells import load_file

CS = tolerance("complex_step", "complex128")
F32 = tolerance("float32", "float32")

# found by the spec fuzzer (seed 2026), minimised: tanh's argument is about 19, the gradients about 1e-17
SATURATED = '''
name = "saturated"
output = "h"
equations = """
a5 = 2 + sigma(h[t-1])
h = tanh(W @ x + Z0 + total(a5) * a5)
"""
[dimensions]
D = "input features"
H = "hidden units"
[inputs]
x = "D"
[states]
h = "H"
[parameters]
W = "H x D"
Z0 = "H"
[functions]
sigma = "logistic"
tanh = "tanh"
total = "sum"
'''


@pytest.fixture(scope="module")
def saturated_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "saturated.toml"
    path.write_text(SATURATED, encoding="utf-8")
    return generate_module(derive(load_file(path)))


def test_a_gradient_cancelled_to_rounding_is_not_a_failure(saturated_text):
    """Before the floor: complex step 2.5e-3 > 1e-12 and float32 1.0 > 1e-4 (false FAILs)."""
    module = mutants.load_module(saturated_text, "lstm_spec_saturated")
    inst = random_instance(module, (2, 1, 2, 3), 11)
    _, _, grads = run(module, inst)
    assert max(float(np.max(np.abs(g))) for g in grads.values()) < 1e-12  # the case really is saturated
    assert check_derivatives(module, "complex_step")["error"] <= CS
    assert check_float32(module)["error"] <= F32


def test_negative_control_a_wrong_saturated_gradient_is_still_caught(saturated_text):
    """Doubling the tanh derivative is a 100 % error of a gradient at 1e-17, far above its rounding floor."""
    text = saturated_text.replace("_tmp0 = d_h[t] * (1 - h[t + 1]**2)", "_tmp0 = 2 * d_h[t] * (1 - h[t + 1]**2)")
    assert text != saturated_text, "the backward's tanh derivative line changed form: update the mutation"
    assert check_derivatives(mutants.load_module(text, "lstm_spec_saturated_bad"), "complex_step")["error"] > CS


@pytest.mark.parametrize("scale", [1e-9, 1e-6])
def test_negative_control_a_small_relative_error_is_caught(lstm_text, scale):
    """One gradient off by one part in 10^9 on a well-conditioned cell is caught: the floor hides nothing."""
    line = "    d_U_f, d_U_i, d_U_c, d_U_o = split_first(d_S_h_prev, (H, H, H, H))\n"
    assert line in lstm_text
    text = lstm_text.replace(line, line + f"    d_U_f = d_U_f * (1 + {scale!r})\n", 1)
    assert check_derivatives(mutants.load_module(text, "lstm_spec_scaled"), "complex_step")["error"] > CS


def test_the_floor_is_far_below_the_tolerance_on_a_well_conditioned_cell():
    inst = random_instance(lstm, (4, 3, 5, 3), 1)
    _, _, grads = run(lstm, inst)
    for dtype, limit in (("float64", CS / 10), ("float32", F32 / 2)):
        noise = rounding_noise(lstm, inst, tolerance("rounding_noise", dtype))
        worst = max(float(np.max(noise[k]) / np.max(np.abs(grads[k]))) for k in grads)
        assert 0 < worst < limit, (dtype, worst)


def test_the_perturbed_functions_are_restored():
    before = {name: getattr(lstm, name) for name in ("sigmoid", "tanh", "seq_matmul") if hasattr(lstm, name)}
    rounding_noise(lstm, random_instance(lstm, (1, 1, 3, 2), 0), 1e-3)
    assert {name: getattr(lstm, name) for name in before} == before


# found by the spec fuzzer (seed 2026) once the floor existed: a softmax of values ~1e25 (exp of exp), whose
# gradient a relative perturbation of 1e-16 changes completely (or overflows): not determined in float64
CHAOTIC = '''
name = "chaotic"
output = "h"
equations = """
a0 = lse(ex((U0 @ h[t-1]) - (W1 @ S))) * (W2 @ S)
a2 = ex((W3 @ S))
h = a0 + h[t-1] + a2 + U4 @ h[t-1]
"""
[dimensions]
E = "input features"
H = "hidden units"
[inputs]
S = "E"
[states]
h = "H"
[parameters]
U0 = "H x H"
W1 = "H x E"
W2 = "H x E"
W3 = "H x E"
U4 = "H x H"
[functions]
ex = "exp"
lse = "logsumexp"
'''


def test_a_gradient_not_determined_in_float64_is_counted_unresolved_not_failed(tmp_path):
    """A perturbed run that turns NaN makes the floor infinite for that comparison: reported in the detail."""
    path = tmp_path / "chaotic.toml"
    path.write_text(CHAOTIC, encoding="utf-8")
    module = mutants.load_module(generate_module(derive(load_file(path))), "lstm_spec_chaotic")
    with np.errstate(all="ignore"):
        res = check_derivatives(module, "complex_step", shapes=[(1, 1, 3, 2), (3, 2, 2, 3)], seed=0)
    assert res["error"] <= CS, res
    assert "below the resolution of float64" in res["worst"], res
