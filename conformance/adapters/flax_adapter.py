"""Flax linen adapter: ``LSTMCell`` and ``OptimizedLSTMCell`` (variants "cell" and "optimized"), and
``GRUCell`` for the ``gru_reset_after`` cell, run by ``nn.RNN`` (``reverse`` with
``keep_order=True``, ``seq_lengths``), in float32 and float64 (this enables ``jax_enable_x64`` for the
process), gradients from ``jax.vjp`` for every parameter, the input and the initial carry.

Flax's layout: per-gate Dense layers ii/if/ig/io (kernel (D, H), no bias) and hi/hf/hg/ho (kernel
(H, H) and bias): one bias, on the recurrent side; the carry is ``(c, h)``, in that order. Inputs are
batch-major. With ``seq_lengths`` the returned carry is the one after each sequence's last valid step
and a reverse pass reads the valid part backwards.

Speed: every case is zero-padded to one bucket shape (:func:`bucket`: each of T, B, D, H rounded up to a
power of two, at least ``LEAST``), so one XLA program per (cell, variant, dtype, direction) runs every
default case. The padding is exact: padded hidden units have zero weights, biases and initial states, so
each gate sees 0, an LSTM's c = 0.5 c_prev + 0.5 tanh(0) and a GRU's h = 0.5 n(0) + 0.5 h_prev stay 0 and,
through zero weights, never reach a real unit; padded input features are zero in x and in W; padded batch
rows have zero inputs, states and cotangents; padded time steps lie after every sequence's ``seq_lengths``
(always passed), so flax selects the carry after the last valid step and reverses only the valid part.
Every result is sliced back to the case's shape. Compiled programs are also kept on disk (JAX's
persistent compilation cache) in ``~/.cache/lstm-spec/jax``; ``LSTM_SPEC_JAX_CACHE`` names another folder,
or ``off`` turns it off; a cache folder the process already set in JAX is left as it is.
"""

from __future__ import annotations

import os

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

LEAST = {"T": 16, "B": 4}  # the smallest bucket of a dimension (features: 8); the default cases fit in one
CACHE_ENV = "LSTM_SPEC_JAX_CACHE"
CACHE_OFF = ("", "0", "off", "no", "false", "none")


def persistent_cache() -> str | None:
    """Turns on JAX's persistent compilation cache in ``$LSTM_SPEC_JAX_CACHE`` (default
    ~/.cache/lstm-spec/jax; ``off`` turns it off) unless the process already set a cache folder; returns the
    folder in use (None: off)."""
    where = os.environ.get(CACHE_ENV, "~/.cache/lstm-spec/jax")
    if jax.config.jax_compilation_cache_dir or where.strip().lower() in CACHE_OFF:
        return jax.config.jax_compilation_cache_dir or None
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # ours take ~0.5 s each
    return jax.config.jax_compilation_cache_dir


persistent_cache()


def bucket(dims: dict) -> dict:
    """Each dimension rounded up to a power of two, at least ``LEAST`` (8 for a feature size)."""
    return {k: max(LEAST.get(k, 8), 1 << max(int(n) - 1, 0).bit_length()) for k, n in dims.items()}


def _pad(a, shape, dtype) -> np.ndarray:
    """``a`` in ``dtype`` with zeros appended on each axis up to ``shape``."""
    a = np.asarray(a, dtype)
    return np.pad(a, [(0, s - n) for n, s in zip(a.shape, shape, strict=True)])


def _cut(a, shape) -> np.ndarray:
    """The leading ``shape`` block of ``a`` (a padded result sliced back to the case)."""
    return np.asarray(a)[tuple(slice(0, n) for n in shape)]


def _seq_lengths(problem: Problem, B: int) -> np.ndarray:
    """Every sequence's valid length (T without lengths) for the B padded batch rows: padded time steps
    are masked, padded rows (zero everywhere) run the case's T steps."""
    T = problem.case.shape[0]
    lengths = np.full(B, T, dtype=np.int64)
    if problem.lengths is not None:
        lengths[: len(problem.lengths)] = problem.lengths
    return lengths


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

    def _compiled(self, case: Case, shape: tuple):
        """The forward and its VJP for one configuration (cell, variant, dtype, direction) at one bucket
        shape (T, B, D, H), jitted once and reused by every case padded to it and the localiser's probes:
        one XLA compilation each, not one per case."""
        key = (case.cell, case.variant, case.dtype, case.direction, shape)
        cache = self.__dict__.setdefault("_jitted", {})
        if key not in cache:
            cache[key] = jax.jit(_step(case, shape[-1]))
        return cache[key]

    def run(self, problem: Problem) -> dict:
        case = problem.case
        pad = bucket(problem.dims)
        (y, hT, cT), (gp, gx, gh0, gc0) = self._compiled(case, tuple(pad[k] for k in "TBDH"))(
            *_inputs(problem, pad))
        T, B, D, H = case.shape
        res = {"y": np.swapaxes(_cut(y, (B, T, H)), 0, 1), "h_T": _cut(hT, (B, H)),
               "d x": np.swapaxes(_cut(gx, (B, T, D)), 0, 1), "d h0": _cut(gh0, (B, H))}
        shapes = problem.module.SIGNATURE.parameters
        res.update({f"d {n}": _cut(g, [problem.dims[d] for d in shapes[n]]) for n, g in _param_grads(case, gp).items()})
        if case.cell != "gru_reset_after":
            res.update({"c_T": _cut(cT, (B, H)), "d c0": _cut(gc0, (B, H))})
        return res


def _step(case: Case, H: int):
    """forward + VJP of nn.RNN over the cell of ``case`` with H (padded) units, to be jitted."""
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

    return step


def _inputs(problem: Problem, pad: dict) -> tuple:
    """The arguments of :func:`_step` for ``problem`` zero-padded to the bucket ``pad`` (NumPy arrays in the
    case's dtype: no per-shape JAX operation runs outside the compiled program)."""
    dt, gru = problem.dtype, problem.case.cell == "gru_reset_after"
    shapes = problem.module.SIGNATURE.parameters
    params = {n: _pad(v, [pad[d] for d in shapes[n]], dt) for n, v in problem.params[0].items()}
    B, H = pad["B"], pad["H"]

    def seq(a, F):  # time-major (T, B, F) -> batch-major, padded
        return _pad(np.swapaxes(np.asarray(a), 0, 1), (B, pad["T"], F), dt)

    def state(d, s):
        return _pad(d[s], (B, H), dt) if s in d else np.zeros((B, H), dt)

    return ((to_flax_gru if gru else to_flax_lstm)(params), seq(problem.x, pad["D"]), state(problem.init[0], "h"),
            state(problem.init[0], "c"), _seq_lengths(problem, B), seq(problem.dy, H),
            state(problem.d_final[0], "h"), state(problem.d_final[0], "c"))


def _param_grads(case: Case, gp) -> dict:
    """Flax's parameter gradients (padded) under the spec's names."""
    gp = jax.tree_util.tree_map(np.asarray, gp)
    if case.cell != "gru_reset_after":
        return from_flax_lstm(gp)
    out = {"b_hn": gp["hn"]["bias"]}
    for g in GRU_GATES:
        out[f"W_{g}"], out[f"b_{g}"] = gp[f"i{g}"]["kernel"].T, gp[f"i{g}"]["bias"]
        out[f"U_{g}"] = gp[f"h{g}"]["kernel"].T
    return out
