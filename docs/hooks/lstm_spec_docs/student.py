"""The numbers and displays of the pages for students (exploding gradients and clipping, multi-layer BPTT,
the concatenated input's adjoint), computed at build time by the generated reference. Like numbers.py,
nothing here re-implements a gradient: every gradient is the reference's ``backward``."""

from __future__ import annotations

import functools
import hashlib
import html
import importlib.util
from pathlib import Path

import numpy as np

from lstm_spec.reference import lstm, lstm_stacked2
from lstm_spec.reference.training import clip_by_global_norm, global_norm

from . import figures
from .numbers import _svg, table

ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
SCALES = (1.0, 4.0, 8.0)  # the recurrent matrices U_g are scale x (a random matrix with entries of variance 1/H)
LENGTHS = (1, 2, 4, 8, 16, 32, 64)
SEEDS = range(5)
H, D = 16, 8


# ------------------------------------------------------------------------------------------ exploding
def random_lstm(seed: int, scale: float) -> dict:
    rng = np.random.default_rng(seed)
    dims = {"H": H, "D": D}
    p = {}
    for n, ds in lstm.SIGNATURE.parameters.items():
        if len(ds) == 2:
            scaled = scale if n[0] == "U" else 1.0
            p[n] = rng.standard_normal([dims[d] for d in ds]) / np.sqrt(dims[ds[-1]]) * scaled
        else:
            p[n] = np.zeros(dims[ds[0]])
    return p


def run(seed: int, scale: float, T: int):
    """The gradients of L = <w, h_T> (w a random unit vector, x standard normal), by the reference."""
    rng = np.random.default_rng(1000 + seed)
    x = rng.standard_normal((T, 1, D))
    params = random_lstm(seed, scale)
    y, _, cache = lstm.forward(params, x)
    dy = np.zeros_like(y)
    w = rng.standard_normal(H)
    dy[-1, 0] = w / np.linalg.norm(w)
    return params, lstm.backward(cache, dy)


@functools.cache
def explode_measurements() -> dict:
    """{scale: array (seeds, lengths) of the global norm of the parameter gradients}."""
    return {s: np.array([[global_norm(run(seed, s, T)[1], list(lstm.SIGNATURE.parameters)) for T in LENGTHS]
                         for seed in SEEDS]) for s in SCALES}


def explode_table() -> str:
    rows = []
    for s, norms in explode_measurements().items():
        cells = (f"{np.median(norms[:, k]):.3g} / {norms[:, k].max():.3g}" for k in range(len(LENGTHS)))
        rows.append((f"{s:g}", *cells))
    return table(["scale of U", *(f"T = {T}" for T in LENGTHS)], rows)


def plot_explode() -> bytes:
    """The plot, from the figure cache when nothing it depends on has changed (this module, the reference's
    lstm and training modules, matplotlib's version): measuring and drawing cost a second per build."""
    from importlib.metadata import version

    from lstm_spec.reference import training

    h = hashlib.sha256(version("matplotlib").encode())
    for module in (lstm, training):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    path = figures._cache_path(h.hexdigest())
    if path is not None and path.exists():
        return path.read_bytes()
    svg = draw_explode()
    figures.store(path, svg.decode())
    return svg


def draw_explode() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "lstm-spec"
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for (s, norms), colour in zip(explode_measurements().items(), ("#1f77b4", "#ff7f0e", "#d62728"), strict=True):
        for row in norms:
            ax.semilogy(LENGTHS, row, "-", color=colour, alpha=0.3, lw=1)
        ax.semilogy(LENGTHS, np.median(norms, axis=0), "o-", color=colour, lw=2,
                    label=f"U scaled by {s:g} (median of {len(SEEDS)} seeds)")
    ax.set_xlabel("sequence length T (loss on the last step only)")
    ax.set_ylabel("‖∇θ L‖ (global norm, reference backward)")
    ax.set_title(f"Gradient norm against T, canonical LSTM, H = {H}, D = {D}; thin lines: single seeds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


def worst_case():
    """(seed, T, gradients) of the largest gradient measured (largest scale)."""
    norms = explode_measurements()[SCALES[-1]]
    seed, k = np.unravel_index(np.argmax(norms), norms.shape)
    return int(seed), LENGTHS[k], run(int(seed), SCALES[-1], LENGTHS[k])[1]


def clip_table(max_norm: float = 1.0, value: float = 0.01) -> str:
    seed, T, grads = worst_case()
    keys = list(lstm.SIGNATURE.parameters)
    flat = np.concatenate([grads[k].ravel() for k in keys])

    def cosine(g):
        v = np.concatenate([g[k].ravel() for k in keys])
        return float(v @ flat / np.linalg.norm(v) / np.linalg.norm(flat))

    by_norm, before = clip_by_global_norm({k: grads[k] for k in keys}, max_norm)
    by_value = {k: np.clip(grads[k], -value, value) for k in keys}
    rows = [("none", f"{before:.4g}", "1"),
            (f"global norm to {max_norm:g} (`clip_by_global_norm`)", f"{global_norm(by_norm):.4g}",
             f"{cosine(by_norm):.6f}"),
            (f"each entry to ±{value:g} (`np.clip`)", f"{global_norm(by_value):.4g}", f"{cosine(by_value):.6f}")]
    return (f"The largest gradient measured above (U scaled by {SCALES[-1]:g}, seed {seed}, T = {T}):\n\n"
            + table(["clipping", "norm after", "cosine with the true gradient"], rows))


# ------------------------------------------------------------------------------------------ multi-layer
def example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def multilayer_problem(T=5, B=2, K=3, seed=0):
    rng = np.random.default_rng(seed)
    dims = {"D": 3, "H": 4}
    p2 = {n: 0.5 * rng.standard_normal([dims[d] for d in ds]) for n, ds in lstm_stacked2.SIGNATURE.parameters.items()}
    layers = [{k[:1] + k[2:]: v for k, v in p2.items() if k[1] == str(layer)} for layer in (1, 2)]  # W1_f -> W_f
    Wy, by = rng.standard_normal((K, dims["H"])), rng.standard_normal(K)
    x = rng.standard_normal((T, B, dims["D"]))
    target = np.eye(K)[rng.integers(0, K, (T, B))]
    return p2, layers, Wy, by, x, target


def multilayer_differences() -> list[tuple[str, float]]:
    """The corrected loops (docs/examples/multilayer_bptt.py) against the two-layer cell lstm_stacked2, whose
    backward the derivation gives for both layers at once; the output layer's dy is the same for both."""
    p2, layers, Wy, by, x, target = multilayer_problem()
    grads, _, _, dx = example("multilayer_bptt").multilayer_bptt(layers, Wy, by, x, target)
    y, _, cache = lstm_stacked2.forward(p2, x)
    soft = example("multilayer_bptt").softmax(y @ Wy.T + by)
    ref = lstm_stacked2.backward(cache, (soft - target) @ Wy)
    rows = [(f"layer {n + 1} parameters", max(float(np.abs(grads[n][k[:1] + k[2:]] - ref[k]).max())
                                             for k in p2 if k[1] == str(n + 1))) for n in range(2)]
    return rows + [("input gradient δx", float(np.abs(dx - ref["x"]).max()))]


def multilayer_md() -> str:
    return table(["loops above vs lstm_stacked2", "max abs difference"],
                 [(n, f"{e:.1e}") for n, e in multilayer_differences()])


# ------------------------------------------------------------------------------------------ concatenated input
def concat_adjoint_md(cell: str = "lstm") -> str:
    """The adjoint of the concatenated input [x_t; h_{t-1}]: formulas.concat_formulas' statement (shown only where
    the derivation's δx_t and δh_{t-1} are exactly the gate sums), then its two halves."""
    from lstm_spec.derivations.render import latex_name

    from .formulas import concat_formulas, derivation

    d = derivation(cell)
    shown = [tex for tex in concat_formulas(d)
             if tex.startswith(r"\delta \begin{bmatrix}") and "x_" in tex.split("=")[0]]
    if not shown:
        raise ValueError(f"concat-adjoint {cell}: the derivation's δx and δh_(t-1) are not the gate sums of the "
                         "concatenated form, so there is nothing true to display")
    def n(name, time=None):
        return latex_name(d, name, time)
    halves = rf"\begin{{bmatrix}} \delta {n('x', 't')} \\ \delta {n('h', 't-1')}^{{(t)}} \end{{bmatrix}}"
    tex = rf"{shown[0]} = {halves}"
    return (f'<div class="arithmatex lstm-concat-adjoint" data-cell="{cell}">'
            f'\\[ {html.escape(tex, quote=False)} \\]</div>')
