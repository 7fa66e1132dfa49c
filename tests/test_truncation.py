"""Truncated BPTT: each truncation is verified against the exact gradient of the truncated objective it
claims to compute (complex step through a stop-gradient), and its difference from full BPTT is measured."""

import numpy as np
import pytest

from lstm_spec.checks.cases import random_instance, rel_error, run
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
