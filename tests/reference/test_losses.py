"""The network's output layer and losses: reductions over units, sum vs mean over time, stability."""

import warnings

import numpy as np
import pytest

from lstm_spec.checks.cases import random_instance
from lstm_spec.reference import lstm_mse, lstm_softmax_ce
from lstm_spec.reference._runtime import logsumexp
from lstm_spec.reference.losses import sequence_loss, time_weights
from lstm_spec.spec import SpecError, load

from ..conftest import write_spec


@pytest.mark.parametrize("module", [lstm_mse, lstm_softmax_ce])
def test_mean_over_time_is_sum_divided_by_T(module):
    inst = random_instance(module, (4, 2, 3, 5), 3)
    args = dict(**inst.seq, **{f"{s}0": v for s, v in inst.init.items()})
    y, _, cache = module.forward(inst.params, **args)
    assert y.shape == (4, 2, 1)
    g_sum = module.backward(cache, time_weights(y, "sum"))
    g_mean = module.backward(cache, time_weights(y, "mean"))
    for k in g_sum:
        np.testing.assert_allclose(g_mean[k], g_sum[k] / 4, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(sequence_loss(y, "mean"), y.sum(axis=(0, 2)) / 4)


def test_reduction_is_never_implicit():
    with pytest.raises(ValueError, match="never implicit"):
        time_weights(np.zeros((3, 1, 1)), "average")
    with pytest.raises(TypeError):
        time_weights(np.zeros((3, 1, 1)))  # the argument is required


def test_cross_entropy_gradient_is_softmax_minus_onehot():
    """For one-hot targets and dy = 1 at the last step only, d loss / d b_y = p - target (by the spec)."""
    inst = random_instance(lstm_softmax_ce, (1, 1, 3, 4), 5)
    K = inst.params["b_y"].shape[0]
    target = np.zeros((1, 1, K))
    target[0, 0, 1] = 1.0
    y, _, cache = lstm_softmax_ce.forward(inst.params, inst.seq["x"], target)
    g = lstm_softmax_ce.backward(cache, np.ones_like(y))
    logits = cache["a"][0, 0]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    np.testing.assert_allclose(g["b_y"], p - target[0, 0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(y[0, 0, 0], -np.log(p[1]), rtol=1e-12)


def test_logsumexp_is_stable_for_huge_logits():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4 - 1.0, -1e4 - 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = logsumexp(z)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, 0], 1e4)
    np.testing.assert_allclose(out[1, 0], -1e4 + np.log(1 + np.exp(-1) + np.exp(-2)))
    assert logsumexp(z.astype(np.float32)).dtype == np.float32


def test_reductions_in_the_spec_are_shape_checked(tmp_path):
    base = load("lstm_mse").path.read_text()
    with pytest.raises(SpecError, match="reduces a vector"):
        load(write_spec(tmp_path, base.replace("loss    = (1/2) * sum(e ⊙ e)", "loss    = sum(sum(e ⊙ e))")))
