"""Truncated BPTT: each truncation is verified against the exact gradient of the truncated objective it
claims to compute (complex step through a stop-gradient), and its difference from full BPTT is measured."""

import numpy as np
import pytest

from lstm_spec.checks.cases import random_instance, run
from lstm_spec.checks.tolerances import rel_error
from lstm_spec.reference import lstm, lstm_cell_only_bptt
from lstm_spec.reference.truncation import truncated_bptt, truncated_objective

H_CS = 1e-30


def _complex_step(inst, k1, k2):
    """<grad, v> for one random direction per argument, by complex step on the truncated objective."""
    rng = np.random.default_rng(5)
    out = {}
    c = inst.astype(np.complex128)
    for key, holder, name in c.arguments():
        v = rng.standard_normal(holder[name].shape)
        pert = {"params": dict(c.params), "seq": dict(c.seq), "init": dict(c.init)}
        which = "params" if holder is c.params else "seq" if holder is c.seq else "init"
        pert[which][name] = holder[name] + 1j * H_CS * v
        val = truncated_objective(lstm, pert["params"], pert["seq"], k1, k2, pert["init"], inst.dy, inst.d_final)
        out[key] = (v, np.imag(val) / H_CS)
    return out


@pytest.mark.parametrize("k1, k2", [(2, 2), (3, 3), (2, 4), (1, 3), (7, 7)])
def test_tbptt_is_the_gradient_of_the_truncated_objective(k1, k2):
    inst = random_instance(lstm, (7, 2, 3, 4), 2)
    _, _, grads = truncated_bptt(lstm, inst.params, inst.seq, k1, k2, inst.init, inst.dy, inst.d_final)
    for key, (v, cs) in _complex_step(inst, k1, k2).items():
        g = grads[key]
        assert abs(np.sum(g * v) - cs) <= 1e-12 * np.linalg.norm(g) * np.linalg.norm(v) + 1e-300, key


def test_tbptt_with_a_window_covering_everything_is_full_bptt():
    inst = random_instance(lstm, (5, 2, 3, 4), 4)
    _, _, full = run(lstm, inst)
    _, _, tb = truncated_bptt(lstm, inst.params, inst.seq, 5, 5, inst.init, inst.dy, inst.d_final)
    for k in full:
        np.testing.assert_allclose(tb[k], full[k], rtol=1e-13, atol=1e-15)


def test_tbptt_differs_from_full_bptt_and_the_difference_shrinks_with_k2():
    inst = random_instance(lstm, (12, 2, 3, 4), 6)
    _, _, full = run(lstm, inst)
    diffs = []
    for k2 in (2, 4, 8, 12):
        _, _, tb = truncated_bptt(lstm, inst.params, inst.seq, 2, k2, inst.init, inst.dy, inst.d_final)
        diffs.append(max(rel_error(tb[k], full[k]) for k in ("U_f", "U_i", "U_c", "U_o")))
    assert diffs[0] > 1e-3 and diffs[-1] < 1e-12
    assert diffs == sorted(diffs, reverse=True)


def test_tbptt_arguments_are_checked():
    inst = random_instance(lstm, (3, 1, 2, 2), 0)
    with pytest.raises(ValueError, match="1 <= k1 <= k2"):
        truncated_bptt(lstm, inst.params, inst.seq, 3, 2, inst.init)


def test_cell_only_truncation_has_the_same_forward_and_a_different_gradient():
    inst = random_instance(lstm, (6, 2, 3, 4), 8)
    y, final, full = run(lstm, inst)
    y2, final2, trunc = run(lstm_cell_only_bptt, inst)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(final["c"], final2["c"])
    assert not trunc["h0"].any()  # no error reaches h0: the gates' recurrent inputs are cut
    assert trunc["c0"].any()  # the cell state still carries error back to c0
    diff = max(rel_error(trunc[k], full[k]) for k in full)
    assert diff > 1e-2  # the truncation is a different gradient, not a rounding effect


def test_tbptt_by_finite_differences_with_frozen_window_states():
    inst = random_instance(lstm, (6, 2, 3, 4), 12)
    k1, k2 = 2, 3
    _, _, grads = truncated_bptt(lstm, inst.params, inst.seq, k1, k2, inst.init, inst.dy, inst.d_final)
    _, _, cache = lstm.forward(inst.params, inst.seq["x"], inst.init["h"], inst.init["c"])
    frozen = {s: cache[s] for s in ("h", "c")}
    rng = np.random.default_rng(2)
    for k in inst.params:
        v = rng.standard_normal(inst.params[k].shape)
        vals = [truncated_objective(lstm, dict(inst.params, **{k: inst.params[k] + sgn * 1e-6 * v}), inst.seq, k1,
                                    k2, inst.init, inst.dy, inst.d_final, frozen=frozen) for sgn in (1, -1)]
        fd = (vals[0] - vals[1]) / 2e-6
        assert abs(fd - np.sum(grads[k] * v)) <= 1e-6 * np.linalg.norm(grads[k]) * np.linalg.norm(v), k


def test_tbptt_equals_sympy_diff_of_the_truncated_unrolled_loss():
    """truncated_bptt run on SymPy symbols (T = 3, k1 = 1, k2 = 2, H = 1, D = 2) against sympy.diff of the
    truncated loss built from the spec's equations, with each later window's initial state wrapped in
    stop_gradient (derivative 0), then read as its value."""
    import sympy

    from lstm_spec.checks.symbolic import ExplicitStep, ModularPoint, equal_at_points
    from lstm_spec.derivations import derive
    from lstm_spec.derivations.functions import StopGradient
    from lstm_spec.derivations.rules import symbol_array
    from lstm_spec.reference._runtime import symbolic
    from lstm_spec.spec import load

    d = derive(load("lstm"))
    S = d.symbols
    T, D, H, k1, k2 = 3, 2, 1, 1, 2
    sizes = {"D": D, "H": H}


    params = {n: symbol_array(n, tuple(sizes[x] for x in ds)) for n, ds in lstm.SIGNATURE.parameters.items()}
    x, dy = symbol_array("x", (T, 1, D)), symbol_array("dy", (T, 1, H))
    h0, c0 = symbol_array("h0", (1, H)), symbol_array("c0", (1, H))
    ex = ExplicitStep(d, sizes)
    ex.leaf = {S.param(n): (sympy.Matrix(v) if v.ndim == 2 else list(v)) for n, v in params.items()}

    def run_steps(state, t0, t1):
        ys = []
        for t in range(t0, t1):
            env = ex.run({"x": list(x[t, 0])}, state)
            ys.append(env[S.value("h")])
            state = {s: env[S.value(s)] for s in ("h", "c")}
        return ys, state

    states = [{"h": list(h0[0]), "c": list(c0[0])}]
    for t in range(T):  # the full forward, for the windows' (constant) initial states
        states.append(run_steps(states[-1], t, t + 1)[1])
    L = 0
    for start in range(0, T, k1):
        end, begin = min(start + k1, T), max(0, min(start + k1, T) - k2)
        init = states[begin] if begin == 0 else {s: [StopGradient(v) for v in vals]
                                                 for s, vals in states[begin].items()}
        ys, _ = run_steps(init, begin, end)
        L += sum(dy[t, 0, k] * ys[t - begin][k] for t in range(start, end) for k in range(H))

    with symbolic():
        _, _, grads = truncated_bptt(lstm, params, {"x": x}, k1, k2, {"h": h0, "c": c0}, dy)
    points = [ModularPoint(s) for s in (1, 2)]
    def value(e):  # read a stop_gradient as its value
        return e.replace(StopGradient, lambda a: a)
    leaves = [(grads[n], params[n]) for n in params] + [(grads["x"], x), (grads["h0"], h0), (grads["c0"], c0)]
    for got, sym in leaves:
        for idx in np.ndindex(sym.shape):
            assert equal_at_points(got[idx], value(sympy.diff(L, sym[idx])), points), sym[idx]

    # negative control: a driver that truncated one step too early (k2 = k1) disagrees somewhere
    with symbolic():
        _, _, short = truncated_bptt(lstm, params, {"x": x}, k1, k1, {"h": h0, "c": c0}, dy)
    assert not all(equal_at_points(short["U_f"][idx], value(sympy.diff(L, params["U_f"][idx])), points)
                   for idx in np.ndindex(params["U_f"].shape))
