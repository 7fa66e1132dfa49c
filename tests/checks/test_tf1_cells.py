"""TF1's LSTMCell(use_peepholes, cell_clip, num_proj, proj_clip) against the cells for its combinations
(peephole_cell_clip, peephole_projection, projection_clip, and peephole / projection / lstm_cell_clip),
forward and gradients (tf.GradientTape) in float64, with negative controls: dropping one option on the
TensorFlow side (a clip bound, the peepholes) is caught.

TF1's cell (rnn_cell_impl.LSTMCell): one kernel (D + P, 4H) over [x; m_prev], gate blocks i, j
(candidate), f, o; peepholes w_i_diag * c_prev, w_f_diag * c_prev, w_o_diag * c (the new, clipped cell);
c clipped to cell_clip; m = o * tanh(c) projected by a (H, P) kernel, then clipped to proj_clip; its state
is (c, m) and its output m. Its forget_bias (default 1.0) is set to 0 here: our cells have none.
"""

import importlib

import numpy as np
import pytest

from lstm_spec.checks.cases import random_instance
from lstm_spec.checks.tolerances import TOLERANCES, rel_error

tf = pytest.importorskip("tensorflow", reason='TensorFlow missing: pip install "lstm-spec[test]"')

TOL = TOLERANCES[("conform", "float64")].value
GATES = ("i", "c", "f", "o")  # TF1's block order: i, j (our candidate c), f, o
# cell -> TF1 LSTMCell options (bounds are the specs' own: 1.0)
CELLS = {
    "peephole_cell_clip": {"use_peepholes": True, "cell_clip": 1.0},
    "peephole_projection": {"use_peepholes": True, "num_proj": True},
    "projection_clip": {"cell_clip": 1.0, "num_proj": True, "proj_clip": 1.0},
    "peephole": {"use_peepholes": True},
    "projection": {"num_proj": True},
    "lstm_cell_clip": {"cell_clip": 1.0},
}
# (T, B, D, H): T = 1, and longer sequences; D != H in each (P = H + 1 for a projection)
SHAPES = [(1, 2, 5, 3), (7, 3, 4, 3), (16, 2, 3, 4)]
SCALE = 1.0  # weights' scale: large enough that every clip is reached in each instance


def lstm_cell_class():
    """TF1's LSTMCell: tf.compat.v1's, or (under Keras 3, which has none) TensorFlow's own legacy copy."""
    try:
        return tf.compat.v1.nn.rnn_cell.LSTMCell
    except AttributeError:
        from tensorflow.python.keras.layers.legacy_rnn import rnn_cell_impl
        return rnn_cell_impl.LSTMCell


def tf_cell(options: dict, dims: dict, params: dict):
    """A built TF1 LSTMCell with our parameters loaded (its kernel is [W; U]^T per gate block)."""
    H, D = dims["H"], params["W_f"].shape[1]
    opts = dict(options)
    if opts.get("num_proj"):
        opts["num_proj"] = params["W_hr"].shape[0]
    cell = lstm_cell_class()(H, dtype=tf.float64, **{"forget_bias": 0.0, **opts})
    P = opts.get("num_proj") or H
    cell.build(tf.TensorShape([None, D]))
    values = {"kernel": np.concatenate([np.concatenate([params[f"W_{g}"].T, params[f"U_{g}"].T], axis=0)
                                        for g in GATES], axis=1),
              "bias": np.concatenate([params[f"b_{g}"] for g in GATES])}
    if opts.get("use_peepholes"):
        values.update({f"w_{g}_diag": params[f"p_{g}"] for g in ("f", "i", "o")})
    if opts.get("num_proj"):
        values["projection/kernel"] = params["W_hr"].T
    for w in cell.weights:
        key = w.name.split("/", 1)[1].rsplit(":", 1)[0]
        assert w.shape == values[key].shape, (key, w.shape, values[key].shape)
        w.assign(values.pop(key))
    assert not values and cell.weights[0].shape == (D + P, 4 * H)
    return cell


def tf_run(options: dict, inst) -> dict:
    """TF1's forward over the sequence and the gradient of <dy, y> + <dh, h_T> + <dc, c_T>, in our names."""
    p, D = inst.params, inst.params["W_f"].shape[1]
    cell = tf_cell(options, inst.dims, p)
    x = tf.constant(inst.seq["x"])
    h0, c0 = tf.constant(inst.init["h"]), tf.constant(inst.init["c"])
    with tf.GradientTape() as tape:
        tape.watch([x, h0, c0])
        state, ys = (c0, h0), []
        for t in range(x.shape[0]):
            m, state = cell(x[t], state)
            ys.append(m)
        y = tf.stack(ys)
        loss = (tf.reduce_sum(inst.dy * y) + tf.reduce_sum(inst.d_final["h"] * state[1])
                + tf.reduce_sum(inst.d_final["c"] * state[0]))
    names = [w.name.split("/", 1)[1].rsplit(":", 1)[0] for w in cell.weights]
    grads = dict(zip(names + ["x", "h0", "c0"], tape.gradient(loss, cell.weights + [x, h0, c0]), strict=True))
    grads = {k: v.numpy() for k, v in grads.items()}
    out = {"y": y.numpy(), "h_T": state[1].numpy(), "c_T": state[0].numpy(),
           "d x": grads["x"], "d h0": grads["h0"], "d c0": grads["c0"]}
    H = inst.dims["H"]
    for k, g in enumerate(GATES):
        block = grads["kernel"][:, k * H:(k + 1) * H].T
        out[f"d W_{g}"], out[f"d U_{g}"] = block[:, :D], block[:, D:]
        out[f"d b_{g}"] = grads["bias"][k * H:(k + 1) * H]
    for g in ("f", "i", "o"):
        if f"w_{g}_diag" in grads:
            out[f"d p_{g}"] = grads[f"w_{g}_diag"]
    if "projection/kernel" in grads:
        out["d W_hr"] = grads["projection/kernel"].T
    return out


def reference_run(module, inst, constants=None) -> dict:
    y, final, cache = module.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()},
                                     constants=constants)
    g = module.backward(cache, inst.dy, inst.d_final)
    out = {"y": y, "h_T": final["h"], "c_T": final["c"], "d x": g["x"], "d h0": g["h0"], "d c0": g["c0"]}
    out.update({f"d {k}": g[k] for k in inst.params})
    return out


def errors(cell: str, options: dict, shape, seed: int, constants=None) -> dict:
    """Relative error of TF1 (``options``) against the reference (at ``constants``: TF1's options of the
    same names) on every quantity."""
    module = importlib.import_module(f"lstm_spec.reference.{cell}")
    inst = random_instance(module, shape, seed, scale=SCALE)
    want, got = reference_run(module, inst, constants), tf_run({**options, **(constants or {})}, inst)
    assert set(got) == set(want), set(got) ^ set(want)  # every quantity of the cell is compared
    return {k: rel_error(got[k], want[k]) for k in want}


def clip_pieces(module, inst, constants=None) -> dict:
    """For each clip of the cell: (values clipped, values inside) over the instance."""
    _, _, cache = module.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()},
                                 constants=constants)
    values = {**(getattr(module.SIGNATURE, "constants", None) or {}), **(constants or {})}  # a bound may be one
    bounds = [(key, float(values[b] if isinstance(b, str) else b)) for key, b in getattr(module, "KINKS", [])]
    return {key: (int((np.abs(cache[key]) > b).sum()), int((np.abs(cache[key]) < b).sum())) for key, b in bounds}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T={}".format(s[0]))
@pytest.mark.parametrize("cell", list(CELLS))
def test_tf1_lstm_cell_agrees_with_the_reference(cell, shape):
    err = errors(cell, CELLS[cell], shape, seed=3)
    assert max(err.values()) <= TOL, err


@pytest.mark.parametrize("cell", [c for c in CELLS if "clip" in c])
def test_the_cross_check_instances_reach_both_pieces_of_every_clip(cell):
    module = importlib.import_module(f"lstm_spec.reference.{cell}")
    for shape in SHAPES[1:]:
        pieces = clip_pieces(module, random_instance(module, shape, 3, scale=SCALE))
        assert all(clipped > 0 and inside > 0 for clipped, inside in pieces.values()), (shape, pieces)


# (cell, an option dropped on the TensorFlow side)
DROPPED = [("peephole_cell_clip", "cell_clip"), ("peephole_cell_clip", "use_peepholes"),
           ("peephole_projection", "use_peepholes"), ("projection_clip", "cell_clip"),
           ("projection_clip", "proj_clip"), ("peephole", "use_peepholes"), ("lstm_cell_clip", "cell_clip")]


@pytest.mark.parametrize("cell,dropped", DROPPED)
def test_negative_control_a_dropped_option_is_caught(cell, dropped):
    options = {k: v for k, v in CELLS[cell].items() if k != dropped}
    if dropped == "use_peepholes":  # the reference's peephole weights have no TF variable: compare the rest
        module = importlib.import_module(f"lstm_spec.reference.{cell}")
        inst = random_instance(module, SHAPES[1], 3, scale=SCALE)
        want, got = reference_run(module, inst), tf_run(options, inst)
        err = {k: rel_error(got[k], want[k]) for k in got}
    else:
        err = errors(cell, options, SHAPES[1], seed=3)
    assert max(err["y"], err["h_T"], err["c_T"]) > 1e3 * TOL, err  # the forward already differs
    assert max(err.values()) > 1e3 * TOL


# TF1's own default forget_bias (1.0) and other clip bounds, declared as the cells' constants
CONSTANTS = {"peephole_cell_clip": {"forget_bias": 1.0, "cell_clip": 2.0},
             "peephole_projection": {"forget_bias": 1.0},
             "projection_clip": {"forget_bias": 1.0, "cell_clip": 2.0, "proj_clip": 0.5}}


@pytest.mark.parametrize("cell", list(CONSTANTS))
def test_tf1_with_its_forget_bias_and_other_bounds_agrees_at_those_constants(cell):
    constants = CONSTANTS[cell]
    module = importlib.import_module(f"lstm_spec.reference.{cell}")
    assert set(constants) == set(module.SIGNATURE.constants)
    pieces = clip_pieces(module, random_instance(module, SHAPES[2], 3, scale=SCALE), constants)
    assert all(clipped > 0 and inside > 0 for clipped, inside in pieces.values()), pieces
    for shape in SHAPES:
        err = errors(cell, CELLS[cell], shape, seed=3, constants=constants)
        assert max(err.values()) <= TOL, (shape, err)
    # negative control: the reference at its defaults (forget bias 0, bounds 1) is not TF1 with these
    err = errors(cell, {**CELLS[cell], **constants}, SHAPES[1], seed=3)
    assert max(err["y"], err["c_T"]) > 1e3 * TOL, err
