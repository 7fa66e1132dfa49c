"""Explanation by mutating the derivation (conformance/explain.py, issue 14 deliverable 2): every generated
mutation, applied to the reference and used as a target, is named by the diagnosis (or by its group of
mutations indistinguishable on the case); correct targets, and correct targets that leave gradients out,
get no diagnosis."""

import numpy as np
import pytest

from lstm_spec.conformance import explain
from lstm_spec.conformance.compare import compare
from lstm_spec.conformance.problem import Case, expected, make_problem, reference_module
from lstm_spec.conformance.signatures import diagnose
from lstm_spec.conformance.targets import Target
from lstm_spec.spec import builtin_cells

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
    assert len(muts) > 50  # rnn_tanh, the smallest cell, has 88
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


def conform_cells() -> list[str]:
    """Every cell a target may declare that conform runs (a generated reference reading one input x)."""
    return [c for c in builtin_cells() if list(reference_module(c).SIGNATURE.inputs) == ["x"]]


def test_conform_cells_are_those_a_target_may_declare():
    """The round trip's list of cells is the one a protocol target is accepted with."""
    cells = conform_cells()
    assert {"lstm", "gru_reset_after", "peephole", "rnn_tanh", "lstm_layer_norm", "lstm_stacked2"} <= set(cells)
    for cell in builtin_cells():
        t = Target()
        t.cells = (cell,)
        assert (t.supports(Case(cell, (3, 2, 3, 2), "float64", 7)) is None) == (cell in cells), cell


ROUND_TRIP_SAMPLE = 40  # mutants used as targets per cell in the slow round trip (every mutation for FULL)
FULL = ("lstm", "gru_reset_after")


@pytest.mark.slow
@pytest.mark.parametrize("cell", conform_cells())
def test_round_trip_every_cell(cell):
    """Every generated mutation of lstm and gru_reset_after, and an evenly spaced sample of every other cell
    conform supports (each run against every candidate), is named by the diagnosis."""
    n = len(explain.mutations(make_problem(Case(cell, (3, 2, 3, 2), "float64", 7)).module))
    every = 1 if cell in FULL else max(1, n // ROUND_TRIP_SAMPLE)
    _muts, missed = _round_trip(cell, (3, 2, 3, 2), every=every)
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
    want = expected(problem)
    failing = [r.quantity for r in compare(problem, {**got, "d x": 0 * want["d x"]}, want, TOL) if not r.within]
    ds = diagnose(problem, _Target(), got, failing, TOL)
    assert ds and "d_z_o" in ds[0].detail and "d x" not in ds[0].detail, ds


def test_noise_is_not_explained():
    problem = make_problem(Case("lstm", (4, 3, 5, 3), "float64", 20))
    got = expected(problem)
    got["d W_f"] = got["d W_f"] + 1e-3 * np.random.default_rng(0).standard_normal(got["d W_f"].shape)
    assert diagnose(problem, _Target(), got, ["d W_f"], TOL) == []


# ----------------------------------------------------------------- fitted conventions (issue 14, item 2)
def _clip(gs: list, how: str, c: float) -> list:
    """Written independently of the diagnosis: gradients clipped elementwise, by their global norm, or each
    by its own norm."""
    if how == "value":
        return [np.minimum(np.maximum(g, -c), c) for g in gs]
    if how == "global":
        n = np.sqrt(sum((g ** 2).sum() for g in gs))
        return [g * (c / n if n > c else 1.0) for g in gs]
    return [g * (c / np.linalg.norm(g) if np.linalg.norm(g) > c else 1.0) for g in gs]


def _row(slots: list, b: int) -> list:
    return [{k: v[b:b + 1] for k, v in s.items()} for s in slots]


@pytest.mark.parametrize("how, scope, words", [
    ("global", "sample", ("by their global norm", "per sample")),
    ("value", "sample", ("elementwise", "per sample")),
    ("each", "batch", ("each by its own norm", "after summing over the batch")),
])
def test_gradient_clipping_conventions_are_named(how, scope, words):
    """Parameter gradients clipped per sample (each batch row's, then summed) or per batch, elementwise or by a
    norm, at a bound that is not a round number: the convention and the bound are named."""
    problem = make_problem(Case("lstm", (4, 3, 5, 3), "float64", 20))
    want = expected(problem)
    keys = [k for k in want if k.startswith("d ") and k not in ("d x", "d h0", "d c0")]
    if scope == "sample":
        rows = []
        for b in range(3):
            rows.append(expected(problem.with_(x=problem.x[:, b:b + 1], dy=problem.dy[:, b:b + 1],
                                               init=_row(problem.init, b), d_final=_row(problem.d_final, b))))
        sizes = [np.sqrt(sum((r[k] ** 2).sum() for k in keys)) for r in rows]
        bound = 0.8 * float(np.median(sizes)) if how == "global" else 0.37
        parts = [_clip([r[k] for k in keys], how, bound) for r in rows]
        clipped = [sum(p[j] for p in parts) for j in range(len(keys))]
    else:
        bound = 0.7 * min(float(np.linalg.norm(want[k])) for k in keys[:3])
        clipped = _clip([want[k] for k in keys], how, bound)
    got = {**want, **dict(zip(keys, clipped, strict=True))}
    failing = [r.quantity for r in compare(problem, got, want, TOL) if not r.within]
    assert failing
    ds = diagnose(problem, _Target(), got, failing, TOL)
    assert ds and "partly" not in ds[0].title, ds
    assert all(w in ds[0].detail for w in words) and f"{bound:.4g}" in ds[0].detail, ds


def _lstm_forget_bias_forward_only(problem, k: float) -> dict:
    """A hand-written LSTM whose forward adds k to z_f, and whose backward keeps x_t, h_{t-1}, c_{t-1} and
    recomputes the gates without k (the backward is not the gradient of its own forward)."""
    p = problem.params[0]
    x, h, c = problem.x, problem.init[0]["h"], problem.init[0]["c"]

    def sig(a):
        return 1 / (1 + np.exp(-a))

    def gates(x_t, h_, kf):
        z = {g: x_t @ p[f"W_{g}"].T + h_ @ p[f"U_{g}"].T + p[f"b_{g}"] for g in "fico"}
        return sig(z["f"] + kf), sig(z["i"]), np.tanh(z["c"]), sig(z["o"])

    ys, kept = [], []
    for t in range(x.shape[0]):
        kept.append((h, c))
        f, i, g, o = gates(x[t], h, k)
        c = f * c + i * g
        h = o * np.tanh(c)
        ys.append(h)
    out = {"y": np.stack(ys), "h_T": h, "c_T": c}
    grads = {n: np.zeros_like(v) for n, v in p.items()}
    dx = np.zeros_like(x)
    dh_n, dc_n = problem.d_final[0]["h"], problem.d_final[0]["c"]
    for t in reversed(range(x.shape[0])):
        h_p, c_p = kept[t]
        f, i, g, o = gates(x[t], h_p, 0.0)
        tc = np.tanh(f * c_p + i * g)
        dh = problem.dy[t] + dh_n
        dc = dc_n + dh * o * (1 - tc ** 2)
        dz = {"f": dc * c_p * f * (1 - f), "i": dc * g * i * (1 - i), "c": dc * i * (1 - g ** 2),
              "o": dh * tc * o * (1 - o)}
        dh_n = sum(d @ p[f"U_{n}"] for n, d in dz.items())
        dx[t] = sum(d @ p[f"W_{n}"] for n, d in dz.items())
        for n, d in dz.items():
            grads[f"W_{n}"] += d.T @ x[t]
            grads[f"U_{n}"] += d.T @ h_p
            grads[f"b_{n}"] += d.sum(0)
        dc_n = dc * f
    out.update({f"d {n}": v for n, v in grads.items()})
    out.update({"d x": dx, "d h0": dh_n, "d c0": dc_n})
    return out


def test_forward_only_forget_bias_with_a_recomputing_backward_is_explained():
    """T = 4: the backward's recomputed f and c_t differ from the forward's at every step, while its stored
    h_{t-1}, c_{t-1} are the forward's: named as one convention, fully, with k fitted."""
    problem = make_problem(Case("lstm", (4, 3, 5, 3), "float64", 20))
    got = _lstm_forget_bias_forward_only(problem, 0.5)
    failing = [r.quantity for r in compare(problem, got, expected(problem), TOL) if not r.within]
    ds = diagnose(problem, _Target(), got, failing, TOL)
    assert ds and "partly" not in ds[0].title, ds
    assert "forget_bias = 0.5" in ds[0].detail and "recomputes the gates from the stored states" in ds[0].detail, ds


def test_recompute_variant_of_a_forward_mutation_is_named():
    """A forward change the backward does not know of, the backward recomputing each step from the stored
    states: a generated variant, named by the round trip."""
    problem = make_problem(Case("lstm", (3, 2, 3, 2), "float64", 7))
    m = next(m for m in explain.mutations(problem.module)
             if m.variant == "recompute" and m.kind == "activation removed" and "f[t]" in m.old)
    ok, names = _named(problem, m)
    assert ok, names


def test_an_exact_explanation_is_not_grouped_with_fitted_ones():
    """Parameter gradients divided by B: named as such, without the clip bound fitted to the same numbers
    (a fitted value in the text would make one line per case of the run summary)."""
    problem = make_problem(Case("lstm", (4, 3, 5, 3), "float64", 20))
    want = expected(problem)
    got = {k: (v / 3 if k.startswith("d ") and k not in ("d x", "d h0", "d c0") else v) for k, v in want.items()}
    failing = [r.quantity for r in compare(problem, got, want, TOL) if not r.within]
    ds = diagnose(problem, _Target(), got, failing, TOL)
    assert ds and "divided by the batch size B" in ds[0].detail, ds
    assert "clipped" not in ds[0].detail, ds
