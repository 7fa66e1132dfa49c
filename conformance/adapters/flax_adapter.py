"""Flax linen adapter: ``LSTMCell`` and ``OptimizedLSTMCell`` run by ``nn.RNN`` (``reverse`` with
``keep_order=True``, ``seq_lengths``), in float32 and float64 (this enables ``jax_enable_x64`` for the
process), gradients from ``jax.vjp`` for every parameter, the input and the initial carry.

Flax's layout: per-gate Dense layers ii/if/ig/io (kernel (D, H), no bias) and hi/hf/hg/ho (kernel
(H, H) and bias): one bias, on the recurrent side; the carry is ``(c, h)``, in that order. Inputs are
batch-major. With ``seq_lengths`` the returned carry is the one after each sequence's last valid step
and a reverse pass reads the valid part backwards.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import flax  # noqa: E402
from flax import linen as nn  # noqa: E402
from lstm_spec.layouts.frameworks import from_flax_lstm, to_flax_lstm  # noqa: E402

from ..problem import Case, Problem  # noqa: E402
from ..targets import Target  # noqa: E402


class FlaxLSTM(Target):
    name = "flax"
    cells = ("lstm",)
    dtypes = ("float32", "float64")
    features = frozenset({"gradients", "reverse", "lengths"})
    biases = 1
    variants = ("LSTMCell", "OptimizedLSTMCell")

    def __init__(self):
        self.description = "Flax linen LSTMCell and OptimizedLSTMCell under nn.RNN, JAX on CPU, jax.vjp gradients"

    def versions(self) -> str:
        return f"flax {flax.__version__}, jax {jax.__version__}"

    def supports(self, case: Case) -> str | None:
        return super().supports(case)

    def run(self, problem: Problem) -> dict:
        case = problem.case
        T, B, D, H = case.shape
        dt = jnp.float64 if case.dtype == "float64" else jnp.float32
        cls = nn.OptimizedLSTMCell if case.variant == "OptimizedLSTMCell" else nn.LSTMCell
        cell = cls(features=H, param_dtype=dt, dtype=dt)
        rnn = nn.RNN(cell, return_carry=True, reverse=case.direction == "reverse", keep_order=True)
        tree = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dt), to_flax_lstm(problem.params[0]))
        lengths = None if problem.lengths is None else jnp.asarray(problem.lengths)

        def f(params, x, h0, c0):
            (cT, hT), y = rnn.apply({"params": {"cell": params}}, x, initial_carry=(c0, h0), seq_lengths=lengths)
            return y, hT, cT

        x = jnp.asarray(np.swapaxes(problem.x, 0, 1))
        h0, c0 = jnp.asarray(problem.init[0]["h"]), jnp.asarray(problem.init[0]["c"])
        (y, hT, cT), vjp = jax.vjp(f, tree, x, h0, c0)
        dy = jnp.asarray(np.swapaxes(problem.dy, 0, 1))
        gp, gx, gh0, gc0 = vjp((dy, jnp.asarray(problem.d_final[0]["h"]), jnp.asarray(problem.d_final[0]["c"])))
        res = {"y": np.swapaxes(np.asarray(y), 0, 1), "h_T": np.asarray(hT), "c_T": np.asarray(cT),
               "d x": np.swapaxes(np.asarray(gx), 0, 1), "d h0": np.asarray(gh0), "d c0": np.asarray(gc0)}
        for k, v in from_flax_lstm(jax.tree_util.tree_map(np.asarray, gp)).items():
            res[f"d {k}"] = v
        return res
