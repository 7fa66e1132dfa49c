"""Keras 3 adapter (TensorFlow backend): ``keras.layers.LSTM`` and ``keras.layers.GRU`` (cells
``gru_reset_after``: reset_after=True, bias (2, 3H); ``gru_reset_before``: reset_after=False) with
``return_sequences`` and ``return_state``, in float32 and float64, forward and ``go_backwards``, sequence lengths
as a mask, gradients from ``tf.GradientTape`` for the kernels, the bias, the input and the initial states.

Keras' layout: kernel (D, 4H) and recurrent_kernel (H, 4H), transposed, gates i, f, c, o; one bias
(4H,). Inputs are batch-major. Conventions translated here: ``go_backwards`` returns its outputs in
reversed order (flipped back to original order); masked (padded) steps carry the previous output
forward (not compared).

TensorFlow takes seconds to import: it is imported at the first case (in conform's worker process), not
when the adapter loads (conform's main process only reads the cells, the cases and the versions).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from lstm_spec.layouts.frameworks import KERAS_GRU_ORDER, from_keras_lstm, to_keras_gru, to_keras_lstm

from ..problem import Case, Problem
from ..targets import Target, TargetError
from . import available_cells
from ._lazy import require, version

require("keras", "tensorflow")  # missing: load_adapter reports the install command (exit 3)


def _frameworks():
    """keras and tensorflow, imported when the first case runs."""
    import keras
    import tensorflow as tf

    return keras, tf


def _gru_grads(gk, grk, gb, H):
    res = {}
    for k, g in enumerate(KERAS_GRU_ORDER):
        res[f"d W_{g}"] = gk[:, k * H:(k + 1) * H].T
        res[f"d U_{g}"] = grk[:, k * H:(k + 1) * H].T
        if gb.ndim == 2:  # reset_after: input row and recurrent row
            if g == "n":
                res["d b_n"], res["d b_hn"] = gb[0, k * H:(k + 1) * H], gb[1, k * H:(k + 1) * H]
            else:
                res[f"d b_{g}(ih)"], res[f"d b_{g}(hh)"] = gb[0, k * H:(k + 1) * H], gb[1, k * H:(k + 1) * H]
        else:
            res[f"d b_{g}"] = gb[k * H:(k + 1) * H]
    return res


class KerasLSTM(Target):
    name = "keras"
    dtypes = ("float32", "float64")
    features = frozenset({"gradients", "reverse", "lengths"})
    biases = 1

    def __init__(self):
        if os.environ["KERAS_BACKEND"] != "tensorflow":  # the variable decides keras' backend
            raise TargetError(f"the keras adapter needs KERAS_BACKEND=tensorflow, got {os.environ['KERAS_BACKEND']}")
        self.cells = available_cells(("lstm", "gru_reset_after", "gru_reset_before"))
        self.description = ("Keras 3 keras.layers.LSTM and GRU on the TensorFlow backend (go_backwards, masking), "
                            "CPU; cells " + ", ".join(self.cells))

    def versions(self) -> str:
        return f"keras {version('keras')}, tensorflow {version('tensorflow')}"

    def biases_for(self, case: Case) -> int:
        return 2 if case.cell == "gru_reset_after" else 1

    def run(self, problem: Problem) -> dict:
        keras, tf = _frameworks()
        case = problem.case
        T, B, D, H = case.shape
        dt = case.dtype
        reverse = case.direction == "reverse"
        gru = case.cell.startswith("gru")
        if gru:
            layer = keras.layers.GRU(H, return_sequences=True, return_state=True, go_backwards=reverse, dtype=dt,
                                     reset_after=case.cell == "gru_reset_after")
            w = to_keras_gru(problem.params[0], problem.bias_ih[0])
        else:
            layer = keras.layers.LSTM(H, return_sequences=True, return_state=True, go_backwards=reverse, dtype=dt)
            w = to_keras_lstm(problem.params[0])
        layer.build((B, T, D))
        layer.set_weights([w["kernel"], w["recurrent_kernel"], w["bias"]])
        x = tf.constant(np.swapaxes(problem.x, 0, 1))
        h0 = tf.constant(problem.init[0]["h"])
        c0 = tf.constant(problem.init[0]["c"]) if not gru else tf.zeros_like(h0)
        mask = None
        if problem.lengths is not None:
            mask = tf.constant(np.arange(T)[None, :] < problem.lengths[:, None])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, h0, c0])
            if gru:
                y, hT = layer(x, initial_state=[h0], mask=mask)
                cT = tf.zeros_like(hT)
            else:
                y, hT, cT = layer(x, initial_state=[h0, c0], mask=mask)
            y_tm = tf.transpose(y, [1, 0, 2])
            if reverse:
                y_tm = y_tm[::-1]  # go_backwards returns the outputs reversed: back to original order
            loss = tf.reduce_sum(y_tm * problem.dy) + tf.reduce_sum(hT * problem.d_final[0]["h"])
            if not gru:
                loss = loss + tf.reduce_sum(cT * problem.d_final[0]["c"])
        cell = layer.cell
        variables = [cell.kernel, cell.recurrent_kernel, cell.bias]
        gk, grk, gb, gx, gh0, gc0 = tape.gradient(loss, [v.value if hasattr(v, "value") else v for v in variables]
                                                  + [x, h0, c0])
        res = {"y": y_tm.numpy(), "h_T": hT.numpy(), "d x": np.swapaxes(gx.numpy(), 0, 1), "d h0": gh0.numpy()}
        if gru:
            res.update(_gru_grads(gk.numpy(), grk.numpy(), gb.numpy(), H))
            return res
        res.update({"c_T": cT.numpy(), "d c0": gc0.numpy()})
        grads = from_keras_lstm({"kernel": gk.numpy(), "recurrent_kernel": grk.numpy(), "bias": gb.numpy()})
        for k, v in grads.items():
            res[f"d {k}"] = v
        return res
