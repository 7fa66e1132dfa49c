"""Framework layout converters: round trips, known positions, and the protocol layout's gradient map."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_spec.layouts import (
    Layout,
    from_flax_lstm,
    from_keras_lstm,
    from_onnx_lstm,
    grads_from_layout,
    to_flax_lstm,
    to_keras_lstm,
    to_layout,
    to_onnx_lstm,
)
from lstm_spec.layouts.stacked import LayoutError

H, D = 3, 2


@pytest.fixture
def params():
    rng = np.random.default_rng(0)
    return {f"{k}_{g}": rng.standard_normal({"W": (H, D), "U": (H, H), "b": (H,)}[k]) for k in "WUb" for g in "fico"}


def _same(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_round_trips(params):
    _same(from_keras_lstm(to_keras_lstm(params)), params)
    _same(from_flax_lstm(to_flax_lstm(params)), params)
    o = to_onnx_lstm(params, bias_ih={k: 0.5 * v for k, v in params.items() if k.startswith("b_")})
    back = from_onnx_lstm(o["W"], o["R"], o["B"])
    for k in params:
        np.testing.assert_allclose(back[k], params[k], rtol=0, atol=1e-15)


def test_known_positions(params):
    k = to_keras_lstm(params)
    assert k["kernel"].shape == (D, 4 * H)
    np.testing.assert_array_equal(k["kernel"][:, 2 * H:3 * H], params["W_c"].T)  # Keras: i, f, c, o
    o = to_onnx_lstm(params)
    np.testing.assert_array_equal(o["W"][0, H:2 * H], params["W_o"])  # ONNX: i, o, f, c
    np.testing.assert_array_equal(o["B"][0, 4 * H:], 0 * o["B"][0, 4 * H:])  # default: all bias in Wb
    f = to_flax_lstm(params)
    np.testing.assert_array_equal(f["hg"]["bias"], params["b_c"])  # Flax g = our c, bias on the h side
    assert "bias" not in f["ig"]


@pytest.mark.parametrize("layout", [Layout(), Layout("stacked", tuple("iofc"), True, 2, True),
                                    Layout("per_gate", (), True, 2), Layout("stacked", tuple("fico"))])
def test_protocol_layout_gradient_map(params, layout):
    arrays = to_layout(params, layout, bias_ih={k: 0.25 * v for k, v in params.items() if k.startswith("b_")})
    # the converter is linear: mapping "gradients" that equal the arrays back gives the parameters
    back = grads_from_layout(arrays, layout, ("f", "i", "c", "o"))
    for k, v in params.items():
        if k.startswith("b_") and layout.biases == 2:
            np.testing.assert_allclose(back[f"{k}(ih)"] + back[f"{k}(hh)"], v)
        else:
            np.testing.assert_array_equal(back[k], v)


def test_layout_errors(params):
    with pytest.raises(LayoutError, match="per_gate"):
        Layout("rows")
    with pytest.raises(LayoutError, match="permutation"):
        to_layout(params, Layout("stacked", tuple("ifcz")))
