"""Flax linen adapter: ``LSTMCell`` and ``OptimizedLSTMCell`` (variants "cell" and "optimized"), and
``GRUCell`` for the ``gru_reset_after`` cell, run by ``nn.RNN`` (``reverse`` with
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

import flax  # noqa: E402 - after float64 is enabled in JAX
import jax.numpy as jnp  # noqa: E402 - after float64 is enabled in JAX
import numpy as np  # noqa: E402 - after float64 is enabled in JAX
from flax import linen as nn  # noqa: E402 - after float64 is enabled in JAX

from lstm_spec.layouts.frameworks import from_flax_lstm, to_flax_gru, to_flax_lstm  # noqa: E402 - after float64 is enabled in JAX
from lstm_spec.layouts.gates import GRU_GATES  # noqa: E402 - after float64 is enabled in JAX

from ..problem import Case, Problem  # noqa: E402 - after float64 is enabled in JAX
from ..targets import Target  # noqa: E402 - after float64 is enabled in JAX
from . import available_cells  # noqa: E402 - after float64 is enabled in JAX


class FlaxLSTM(Target):
    name = "flax"
    dtypes = ("float32", "float64")
    features = frozenset({"gradients", "reverse", "lengths"})
    biases = 1
    variants = ("cell", "optimized")

    def __init__(self):
        self.cells = available_cells(("lstm", "gru_reset_after"))
        self.description = ("Flax linen LSTMCell (variant cell), OptimizedLSTMCell (variant optimized) and GRUCell "
                            "under nn.RNN, JAX on CPU, jax.vjp gradients; cells " + ", ".join(self.cells))

    def versions(self) -> str:
        return f"flax {flax.__version__}, jax {jax.__version__}"

    def supports(self, case: Case) -> str | None:
        if case.variant == "optimized" and case.cell != "lstm":
            return "OptimizedLSTMCell is an LSTM"
        return super().supports(case)

    def _compiled(self, case: Case, with_lengths: bool):
        """The forward and its VJP for one configuration, jitted once and reused by every call with the same
        shapes (the cases, and the localiser's many probes of a failing case: one XLA compilation each, not
        one per call)."""
        key = (case.cell, case.shape, case.dtype, case.variant, case.direction, with_lengths)
        cache = self.__dict__.setdefault("_jitted", {})
        if key not in cache:
            T, B, D, H = case.shape
            dt = jnp.float64 if case.dtype == "float64" else jnp.float32
            gru = case.cell == "gru_reset_after"
            if gru:
                cell = nn.GRUCell(features=H, param_dtype=dt, dtype=dt)
            else:
                cls = nn.OptimizedLSTMCell if case.variant == "optimized" else nn.LSTMCell
                cell = cls(features=H, param_dtype=dt, dtype=dt)
            rnn = nn.RNN(cell, return_carry=True, reverse=case.direction == "reverse", keep_order=True)

            def step(params, x, h0, c0, lengths, dy, dh, dc):
                def f(params, x, h0, c0):
                    carry = h0 if gru else (c0, h0)
                    carry, y = rnn.apply({"params": {"cell": params}}, x, initial_carry=carry, seq_lengths=lengths)
                    return (y, carry, 0 * carry) if gru else (y, carry[1], carry[0])

                out, vjp = jax.vjp(f, params, x, h0, c0)
                return out, vjp((dy, dh, dc))

            cache[key] = jax.jit(step)
        return cache[key]

    def run(self, problem: Problem) -> dict:
        case = problem.case
        dt = jnp.float64 if case.dtype == "float64" else jnp.float32
        gru = case.cell == "gru_reset_after"
        tree = to_flax_gru(problem.params[0]) if gru else to_flax_lstm(problem.params[0])
        tree = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dt), tree)
        lengths = None if problem.lengths is None else jnp.asarray(problem.lengths)
        x = jnp.asarray(np.swapaxes(problem.x, 0, 1))
        h0 = jnp.asarray(problem.init[0]["h"])
        c0 = jnp.zeros_like(h0) if gru else jnp.asarray(problem.init[0]["c"])
        dy = jnp.asarray(np.swapaxes(problem.dy, 0, 1))
        dc = jnp.zeros_like(h0) if gru else jnp.asarray(problem.d_final[0]["c"])
        (y, hT, cT), (gp, gx, gh0, gc0) = self._compiled(case, lengths is not None)(
            tree, x, h0, c0, lengths, dy, jnp.asarray(problem.d_final[0]["h"]), dc)
        res = {"y": np.swapaxes(np.asarray(y), 0, 1), "h_T": np.asarray(hT),
               "d x": np.swapaxes(np.asarray(gx), 0, 1), "d h0": np.asarray(gh0)}
        gp = jax.tree_util.tree_map(np.asarray, gp)
        if gru:
            for g in GRU_GATES:
                res[f"d W_{g}"], res[f"d b_{g}"] = gp[f"i{g}"]["kernel"].T, gp[f"i{g}"]["bias"]
                res[f"d U_{g}"] = gp[f"h{g}"]["kernel"].T
            res["d b_hn"] = gp["hn"]["bias"]
            return res
        res.update({"c_T": np.asarray(cT), "d c0": np.asarray(gc0)})
        for k, v in from_flax_lstm(gp).items():
            res[f"d {k}"] = v
        return res
