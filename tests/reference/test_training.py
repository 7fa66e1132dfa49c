import numpy as np
import pytest

from lstm_spec.checks.cases import random_instance, run
from lstm_spec.reference import lstm
from lstm_spec.reference.training import clip_by_global_norm, global_norm, init_forget_bias


def test_clip_by_global_norm_scales_to_the_bound_and_keeps_directions():
    inst = random_instance(lstm, (4, 2, 3, 4), 1)
    _, _, g = run(lstm, inst)
    keys = list(inst.params)
    norm = global_norm(g, keys)
    clipped, before = clip_by_global_norm(g, norm / 4, keys)
    assert before == pytest.approx(norm)
    assert global_norm(clipped, keys) == pytest.approx(norm / 4, rel=1e-12)
    for k in keys:
        np.testing.assert_allclose(clipped[k], g[k] / 4, rtol=1e-12)
    np.testing.assert_array_equal(clipped["x"], g["x"])  # not in keys: untouched
    same, _ = clip_by_global_norm(g, norm * 2, keys)
    for k in keys:
        np.testing.assert_array_equal(same[k], g[k])


def test_clip_refuses_bad_bounds_and_non_finite_gradients():
    with pytest.raises(ValueError, match="positive finite"):
        clip_by_global_norm({"a": np.ones(2)}, 0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        clip_by_global_norm({"a": np.array([np.nan, 1.0])}, 1.0)


def test_forget_bias_init_set_and_add():
    inst = random_instance(lstm, (1, 1, 2, 3), 0)
    p = init_forget_bias(inst.params, 1.0)
    np.testing.assert_array_equal(p["b_f"], np.ones(3))
    assert p["b_i"] is inst.params["b_i"] and inst.params["b_f"] is not p["b_f"]
    q = init_forget_bias(inst.params, 1.0, mode="add")
    np.testing.assert_allclose(q["b_f"], inst.params["b_f"] + 1)
    with pytest.raises(KeyError, match="no forget-gate bias"):
        init_forget_bias({"b": np.zeros(2)})
