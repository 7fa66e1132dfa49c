"""Every built-in cell passes every check, and each check catches a broken version of every cell."""

import importlib

import pytest

from lstm_spec.checks import mutants
from lstm_spec.checks.numeric import check_derivatives, check_float32
from lstm_spec.checks.symbolic import check_step, check_unrolled
from lstm_spec.checks.tolerances import TOLERANCES
from lstm_spec.derivations import derive
from lstm_spec.derivations.codegen import generate_module
from lstm_spec.spec import builtin_cells, load

CELLS = builtin_cells()
CS = TOLERANCES[("complex_step", "complex128")].value
FD = TOLERANCES[("finite_difference", "float64")].value
F32 = TOLERANCES[("float32", "float32")].value


@pytest.fixture(scope="module", params=CELLS)
def cell(request):
    c = load(request.param)
    d = derive(c)
    return c, d, importlib.import_module(f"lstm_spec.reference.{c.name}"), generate_module(d)


def test_a_symbolic_step_and_its_control(cell):
    _, d, _, _ = cell
    assert check_step(d)["error"] == 0
    bad, target = mutants.planted_derivation(d)
    assert check_step(bad, exact="points", only={target})["error"] > 0, f"planted error in {target} not caught"


def test_b_unrolled_with_two_hidden_units_and_its_control(cell):
    """T = 2 with 2 units per non-input dimension (verify uses 1); the two largest cells (fgr,
    lstm_stacked2: more than 16 parameter arrays) keep 1 unit so that sympy.diff stays affordable."""
    c, d, module, text = cell
    units = 2 if len(c.parameters) <= 16 else 1
    sizes = {dim: units for dim in c.dimensions}
    for q in c.inputs.values():
        sizes[q.shape[-1]] = 1
    sizes["1"] = 1
    res = check_unrolled(d, module, T=2, sizes=sizes)
    assert res["error"] == 0, res["failures"]
    bad = mutants.load_module(mutants.mutate_code(text, mutants.recursion_line(text), "delete"))
    assert check_unrolled(d, bad, T=2, sizes=sizes, stop_after=1)["error"] > 0


def test_c_numeric(cell):
    _, _, module, _ = cell
    assert check_derivatives(module, "complex_step")["error"] <= CS
    fd = check_derivatives(module, "finite_difference")
    if getattr(module, "STOP_GRADIENT", False):
        assert "not applicable" in fd["skipped"]
    else:
        assert fd["error"] <= FD
    assert check_float32(module)["error"] <= F32


def test_c_every_backward_line_matters(cell):
    """Negating any derived line of the generated backward is caught by complex step (lines that are
    identically zero by the derivation excepted)."""
    _, _, _, text = cell
    lines = text.splitlines()
    missed = []
    for index in mutants.backward_lines(text):
        if "np.zeros_like(" in lines[index]:
            continue  # an adjoint that is 0 by the derivation (a stop_gradient): negating it changes nothing
        bad = mutants.load_module(mutants.mutate_code(text, index, "negate"))
        if not check_derivatives(bad, "complex_step")["error"] > CS:
            missed.append(lines[index].strip())
    assert missed == []
