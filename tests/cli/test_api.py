"""The public API of the generated reference: bad input gives errors naming the array, its shape
and the expected shape; edge cases have defined results; layout converters round-trip."""

import numpy as np
import pytest

from lstm_spec.checks.cases import random_instance, run
from lstm_spec.layouts import from_stacked, from_torch_lstm, to_stacked, to_torch_lstm
from lstm_spec.layouts.stacked import LayoutError
from lstm_spec.reference import lstm
from lstm_spec.reference._runtime import InputError


@pytest.fixture
def inst():
    return random_instance(lstm, (3, 2, 4, 3), 1)


def fwd(inst, **kw):
    args = dict(params=inst.params, x=inst.seq["x"], h0=inst.init["h"], c0=inst.init["c"])
    args.update(kw)
    return lstm.forward(**args)


def test_wrong_input_shape_names_array_and_expected_shape(inst):
    with pytest.raises(InputError, match=r"x: got shape \(3, 4\) .* expected shape \(T, B, D\)"):
        fwd(inst, x=inst.seq["x"][:, 0])


def test_wrong_parameter_shape_names_parameter(inst):
    params = dict(inst.params, U_f=inst.params["U_f"][:, :2])
    with pytest.raises(InputError, match=r"params\['U_f'\]: got shape \(3, 2\).*expected shape \(H=3, H=3\)"):
        fwd(inst, params=params)


def test_transposed_weight_is_rejected(inst):
    params = dict(inst.params, W_o=inst.params["W_o"].T)
    with pytest.raises(InputError, match=r"params\['W_o'\]: got shape \(4, 3\)"):
        fwd(inst, params=params)


def test_missing_and_unknown_parameters_are_named(inst):
    params = dict(inst.params)
    del params["b_i"]
    params["b_x"] = inst.params["b_f"]
    with pytest.raises(InputError, match=r"missing parameter\(s\) \['b_i'\]; unknown parameter\(s\) \['b_x'\]"):
        fwd(inst, params=params)


def test_initial_state_shape_is_checked(inst):
    with pytest.raises(InputError, match=r"h0: got shape \(3, 3\).*expected shape \(B=2, H=3\)"):
        fwd(inst, h0=np.zeros((3, 3)))


@pytest.mark.parametrize("bad", [np.int64, np.float16, object])
def test_unsupported_dtypes_are_rejected(inst, bad):
    with pytest.raises(InputError, match="dtype"):
        fwd(inst, x=inst.seq["x"].astype(bad))


def test_mixed_precision_is_rejected_not_cast(inst):
    params = dict(inst.params, W_f=inst.params["W_f"].astype(np.float32))
    with pytest.raises(InputError, match=r"params\['W_f'\]: dtype float32 differs from x's float64"):
        fwd(inst, params=params)


def test_lists_are_rejected(inst):
    with pytest.raises(InputError, match="expected a NumPy array"):
        fwd(inst, x=inst.seq["x"].tolist())


def test_backward_cotangent_shapes_are_checked(inst):
    _, _, cache = fwd(inst)
    with pytest.raises(InputError, match=r"dy: got shape \(2, 2, 3\)"):
        lstm.backward(cache, dy=np.zeros((2, 2, 3)))
    with pytest.raises(InputError, match=r"unknown state\(s\) \['q'\]"):
        lstm.backward(cache, d_final={"q": np.zeros((2, 3))})


def test_omitted_initial_states_are_zeros(inst):
    y1, f1, _ = fwd(inst, h0=None, c0=None)
    y2, f2, _ = fwd(inst, h0=np.zeros((2, 3)), c0=np.zeros((2, 3)))
    np.testing.assert_array_equal(y1, y2)


def test_t_zero_returns_empty_output_and_initial_states(inst):
    y, final, cache = fwd(inst, x=inst.seq["x"][:0])
    assert y.shape == (0, 2, 3)
    np.testing.assert_array_equal(final["h"], inst.init["h"])
    g = lstm.backward(cache, d_final={"h": np.ones((2, 3)), "c": 2 * np.ones((2, 3))})
    np.testing.assert_array_equal(g["h0"], np.ones((2, 3)))
    np.testing.assert_array_equal(g["c0"], 2 * np.ones((2, 3)))
    assert g["W_f"].shape == (3, 4) and not g["W_f"].any()
    assert g["x"].shape == (0, 2, 4)


def test_b_zero_works(inst):
    y, final, cache = fwd(inst, x=inst.seq["x"][:, :0], h0=None, c0=None)
    assert y.shape == (3, 0, 3)
    g = lstm.backward(cache)
    assert g["U_c"].shape == (3, 3) and not g["U_c"].any()


def test_inputs_are_not_modified(inst):
    before = {k: v.copy() for k, v in inst.params.items()}
    x = inst.seq["x"].copy()
    run(lstm, inst)
    assert all(np.array_equal(before[k], inst.params[k]) for k in before)
    assert np.array_equal(x, inst.seq["x"])


def test_read_only_and_non_contiguous_inputs_work(inst):
    x = np.asfortranarray(inst.seq["x"])
    x.setflags(write=False)
    y, _, _ = fwd(inst, x=x)
    np.testing.assert_allclose(y, fwd(inst)[0], rtol=0, atol=1e-15)


def test_stacked_layout_round_trip_and_order(inst):
    s = to_stacked(inst.params)
    H = 3
    assert s["W"].shape == (4 * H, 4) and s["U"].shape == (4 * H, H) and s["b"].shape == (4 * H,)
    np.testing.assert_array_equal(s["W"][H:2 * H], inst.params["W_f"])  # i, f, c, o
    back = from_stacked(s)
    assert all(np.array_equal(back[k], inst.params[k]) for k in inst.params)
    other = to_stacked(inst.params, order=("f", "i", "c", "o"))
    np.testing.assert_array_equal(other["W"][:H], inst.params["W_f"])


def test_layout_errors_are_clear(inst):
    with pytest.raises(LayoutError, match="missing"):
        to_stacked({"W_f": inst.params["W_f"]})
    with pytest.raises(LayoutError, match="permutation"):
        to_stacked(inst.params, order=("i", "i", "c", "o"))
    with pytest.raises(LayoutError, match="first dimension of 4H"):
        from_stacked({"W": np.zeros((5, 2)), "U": np.zeros((4, 1)), "b": np.zeros(4)})


def test_torch_layout_round_trip_sums_two_biases(inst):
    split = np.arange(12.0)
    t = to_torch_lstm(inst.params, bias_ih=split)
    np.testing.assert_array_equal(t["bias_ih_l0"], split)
    back = from_torch_lstm(t)
    for k in inst.params:
        np.testing.assert_allclose(back[k], inst.params[k], rtol=0, atol=1e-15)
