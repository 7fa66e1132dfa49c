"""The conformance cases exercise each cell's regimes (issue 15 item 7): every piecewise function (a clip:
below -bound, inside, above bound) meets each of its pieces in at least half of a cell's default cases,
counted by evaluating the reference on each case; an implementation that omits a clip fails at least half
of them; every cell's default cases include a long sequence (T >= 16) in each dtype."""

import importlib
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from lstm_spec.checks.tolerances import TOLERANCES, rel_error
from lstm_spec.conformance.problem import expected, in_regimes, make_problem
from lstm_spec.conformance.runner import default_cases
from lstm_spec.spec import builtin_cells


def _module(cell):
    return importlib.import_module(f"lstm_spec.reference.{cell}")


# the cells conform runs (only input x) that have a piecewise function
CLIP_CELLS = [c for c in builtin_cells() if getattr(_module(c), "KINKS", None)
              and list(_module(c).SIGNATURE.inputs) == ["x"]]
TOL = TOLERANCES[("conform", "float64")].value


def bounds(module) -> list[tuple[str, str | float, float]]:
    """(cache key, the bound as the module names it, its value) for each clip of the module."""
    defaults = getattr(module.SIGNATURE, "constants", None) or {}
    return [(key, b, float(defaults[b] if isinstance(b, str) else b)) for key, b in module.KINKS]


def pieces_of_case(case) -> dict:
    """{(clip, piece): met anywhere in the case} from the reference's forward on every slot of the case
    (at the case's declared constants)."""
    problem = make_problem(case)
    module, met = problem.module, {}

    def forward(*args, **kwargs):
        y, final, cache = module.forward(*args, **kwargs)
        for key, name, b in bounds(module):
            b = dict(case.constants).get(name, b)
            v = cache[key]
            for piece, hit in (("below", v < -b), ("inside", np.abs(v) < b), ("above", v > b)):
                met[key, piece] = met.get((key, piece), False) or bool(hit.any())
        return y, final, cache

    expected(problem, module=SimpleNamespace(SIGNATURE=module.SIGNATURE, forward=forward), with_grads=False)
    return met


@pytest.mark.parametrize("declared", [False, True], ids=["default bounds", "bounds 3 declared"])
@pytest.mark.parametrize("cell", CLIP_CELLS)
def test_every_piece_of_every_clip_is_met_in_at_least_half_of_the_cases(cell, declared):
    """Also when a target declares larger bounds (TF1's cell_clip = 3.0): the cases follow them."""
    cases = default_cases([cell])
    if declared:
        names = sorted({b for _, b, _ in bounds(_module(cell))})
        cases = [replace(c, constants=tuple((n, 3.0) for n in names)) for c in cases]
    per_case = [pieces_of_case(c) for c in cases]
    fractions = {k: sum(m[k] for m in per_case) / len(cases) for k in per_case[0]}
    assert len(fractions) == 3 * len(_module(cell).KINKS)
    assert min(fractions.values()) >= 0.5, fractions


def unclipped(module, name: str):
    """The module with the clip whose bound is the constant ``name`` left out (its bound set out of reach)."""
    def forward(*args, constants=None, **kwargs):
        return module.forward(*args, constants={**(constants or {}), name: 1e300}, **kwargs)

    return SimpleNamespace(SIGNATURE=module.SIGNATURE, forward=forward, backward=module.backward)


def failing_fraction(cell: str, name: str) -> float:
    cases = default_cases([cell], dtypes=("float64",))
    failed = 0
    for case in cases:
        problem = make_problem(case)
        want, got = expected(problem), expected(problem, module=unclipped(problem.module, name))
        failed += max(rel_error(got[k], want[k]) for k in want) > TOL
    return failed / len(cases)


# (cell, the constant bounding one of its clips), each once (lstm_clip's four gate clips share one bound)
CLIP_BOUNDS = [(c, b) for c in CLIP_CELLS for b in dict.fromkeys(b for _, b, _ in bounds(_module(c)))]


@pytest.mark.parametrize("cell,name", CLIP_BOUNDS)
def test_negative_control_an_implementation_without_the_clip_fails_at_least_half_the_cases(cell, name):
    assert isinstance(name, str), f"{cell}: the clip bound {name!r} is not a named constant"
    assert failing_fraction(cell, name) >= 0.5


def test_a_cell_without_a_piecewise_function_keeps_its_draw():
    case = default_cases(["lstm"])[2]
    problem = make_problem(case)
    assert in_regimes(problem) is problem


@pytest.mark.parametrize("cell", ["lstm", *CLIP_CELLS])
def test_every_cell_has_a_long_sequence_in_each_dtype(cell):
    long = {c.dtype for c in default_cases([cell]) if c.shape[0] >= 16}
    assert long == {"float64", "float32"}
