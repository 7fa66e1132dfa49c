"""Explanation by mutating the derivation (conformance/explain.py, issue 14 deliverable 2): every generated
mutation, applied to the reference and used as a target, is named by the diagnosis (or by its group of
mutations indistinguishable on the case); correct targets, and correct targets that leave gradients out,
get no diagnosis."""

import numpy as np
import pytest
from lstm_spec.conformance import explain
from lstm_spec.conformance.compare import compare
from lstm_spec.conformance.problem import Case, expected, make_problem
from lstm_spec.conformance.signatures import diagnose

TOL = 1e-10


class _Target:
    has_gradients = True
    biases = 1


def _named(problem, m) -> tuple[bool, list]:
    """Whether the diagnosis of the mutant ``m`` used as a target names it (in a full explanation)."""
    base = expected(problem)
    got = explain.predict(problem, m, 1, True, base)
    if got is None:
        return True, []  # it cannot run on this case (reads a value never computed): no target
    rows = compare(problem, got, base, TOL)
    failing = [r.quantity for r in rows if not r.within]
    if not failing:
        return True, []  # invisible on this case
    passing = [r.quantity for r in rows if r.within]
    groups = explain.explain(problem, got, failing, passing, TOL, 1, True)
    full = [g for g in groups if g[0].full(failing)]
    return any(m.key == x.name for g in full for x in g), [g[0].name for g in groups]


def _round_trip(cell, shape, every=1):
    problem = make_problem(Case(cell, shape, "float64", 7))
    muts = explain.mutations(problem.module)
    assert len(muts) > 100
    muts = muts[::every]
    missed = []
    for m in muts:
        ok, names = _named(problem, m)
        if not ok:
            missed.append((m.key, names[:2]))
    return muts, missed


@pytest.mark.parametrize("cell", ["lstm", "gru_reset_after", "peephole"])
def test_round_trip_sample(cell):
    """Every 40th generated mutation of the cell (a fast subset of the full round trip)."""
    _muts, missed = _round_trip(cell, (3, 2, 3, 2), every=40)
    assert not missed, missed


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru_reset_after"])
def test_round_trip_every_mutation(cell):
    _muts, missed = _round_trip(cell, (3, 2, 3, 2))
    assert not missed, missed


def test_mutations_are_named_by_the_derived_statement():
    problem = make_problem(Case("lstm", (2, 1, 2, 2), "float64", 3))
    muts = explain.mutations(problem.module)
    kinds = {m.kind for m in muts}
    for kind in ("drop a summand", "drop a factor", "activation derivative replaced by 1",
                 "activation derivative at the output", "state one step off", "another gate's quantity",
                 "every parameter gradient from the first step only (the last the backward visits)",
                 "carry d_h_next not passed on (kept at the final-state cotangent)", "activation removed"):
        assert kind in kinds, kind
    one = next(m for m in muts if m.kind == "activation derivative replaced by 1" and "d_z_o" in m.old)
    assert one.statement == "d_z_o = d_o * o * (1 - o)"
    assert "reference/lstm.py:" in one.text(explain.source(problem.module).path)
    assert one.new.strip() == "d_z_o[t] = d_o"


def test_missing_output_gate_derivative_is_named():
    problem = make_problem(Case("lstm", (4, 3, 5, 3), "float64", 20))
    m = next(m for m in explain.mutations(problem.module)
             if m.kind == "activation derivative replaced by 1" and "d_z_o" in m.old)
    got = explain.predict(problem, m, 1, True)
    failing = [r.quantity for r in compare(problem, got, expected(problem), TOL) if not r.within]
    ds = diagnose(problem, _Target(), got, failing, TOL)
    assert ds and "d_z_o = d_o * o * (1 - o)" in ds[0].detail and "partly" not in ds[0].title, ds


def test_correct_target_gets_no_diagnosis():
    problem = make_problem(Case("lstm", (4, 3, 5, 3), "float64", 20))
    got = expected(problem)
    assert diagnose(problem, _Target(), got, [], TOL) == []
    assert diagnose(problem, _Target(), got, ["d W_f"], TOL) == []  # the numbers pass: nothing to explain


def test_missing_gradients_get_no_diagnosis():
    """A correct target that returns the parameter gradients only: d x, d h0, d c0 are not provided."""
    problem = make_problem(Case("lstm", (4, 3, 5, 3), "float64", 20))
    got = expected(problem)
    for q in ("d x", "d h0", "d c0"):
        got.pop(q)
    assert diagnose(problem, _Target(), got, ["d x", "d h0", "d c0"], TOL) == []


def test_not_provided_quantities_do_not_feed_the_diagnosis():
    """A real bug with some gradients left out: the diagnosis uses only what is returned."""
    problem = make_problem(Case("lstm", (4, 3, 5, 3), "float64", 20))
    m = next(m for m in explain.mutations(problem.module)
             if m.kind == "activation derivative replaced by 1" and "d_z_o" in m.old)
    got = explain.predict(problem, m, 1, True)
    got.pop("d x")
    got["d h0"] = None
    failing = [r.quantity for r in compare(problem, {**got, "d x": 0 * expected(problem)["d x"]}, expected(problem), TOL)
               if not r.within]
    ds = diagnose(problem, _Target(), got, failing, TOL)
    assert ds and "d_z_o" in ds[0].detail and "d x" not in ds[0].detail, ds


def test_noise_is_not_explained():
    problem = make_problem(Case("lstm", (4, 3, 5, 3), "float64", 20))
    got = expected(problem)
    got["d W_f"] = got["d W_f"] + 1e-3 * np.random.default_rng(0).standard_normal(got["d W_f"].shape)
    assert diagnose(problem, _Target(), got, ["d W_f"], TOL) == []
