"""Every number, table and plot of the site, computed at build time by the generated NumPy reference
(``lstm_spec.reference``). Nothing here re-implements a gradient: adjoints at intermediate steps are
read off the reference by running it on a suffix of the sequence (the gradient with respect to the
initial state of the suffix that starts at step t+1 is what BPTT carries from step t+1 back to step t),
and per-step contributions to a parameter gradient by running it on one step with the cotangents the
later steps send back.
"""

from __future__ import annotations

import functools
import io
import re

import numpy as np

from lstm_spec.layouts.gates import LSTM_GATES
from lstm_spec.reference import lstm, rnn_tanh

from .text import spec_html


# ------------------------------------------------------------------------------------------ helpers
def fmt(v, digits=4) -> str:
    v = np.asarray(v, dtype=float).ravel()
    if v.size == 1:
        return f"{v[0]:.{digits}g}"
    return "[" + ", ".join(f"{a:.{digits}g}" for a in v) + "]"


def mat(v, digits=3) -> str:
    v = np.asarray(v, dtype=float)
    if v.ndim == 1:
        return fmt(v, digits)
    return "[" + "; ".join(", ".join(f"{a:.{digits}g}" for a in row) for row in v) + "]"


def cell_md(value) -> str:
    """One table cell: a "|" outside a code span would end the cell, so it is written as an entity."""
    parts = re.split(r"(`[^`]*`)", str(value).replace("\n", " "))
    return "".join(p if p.startswith("`") else p.replace("|", "&#124;") for p in parts)


def labels(*texts: str) -> list[str]:
    """Row or column labels written in the spec's notation (``c~_t``, ``δh_{t-1}``), as HTML."""
    return [spec_html(t) for t in texts]


def table(header, rows) -> str:
    out = ["| " + " | ".join(cell_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell_md(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def states_of(module):
    return list(module.SIGNATURE.states)


def run_from(module, params, x, cache, t, dy, d_final=None):
    """Forward and backward of the steps t, t+1, ... (0-based) started from the states the full run had
    before step t. Returns (y, final, grads)."""
    init = {f"{s}0": cache[s][t] for s in states_of(module)}
    y, final, c = module.forward(params, x[t:], **init)
    g = module.backward(c, dy[t:], d_final or {})
    return y, final, g


def carried(module, params, x, cache, dy, t):
    """What BPTT carries back into step t (1-based, t = 0..T): dL/ds_t through the later steps only,
    for every state s; at t = T it is the final-state cotangent (zero here)."""
    T = x.shape[0]
    if t == T:
        return {s: np.zeros_like(cache[s][T]) for s in states_of(module)}
    _, _, g = run_from(module, params, x, cache, t, dy)
    return {s: g[f"{s}0"] for s in states_of(module)}


# ------------------------------------------------------------------------------------------ worked example
@functools.cache
def worked_example():
    """The two-step worked example: D = 2, H = 2, B = 1, zero initial state, L = <v_1, h_1> + <v_2, h_2>."""
    rng = np.random.default_rng(6180)
    dims = {"D": 2, "H": 2}
    params = {n: np.round(0.5 * rng.standard_normal([dims[d] for d in ds]), 1) + 0.0  # + 0.0: no "-0"
              for n, ds in lstm.SIGNATURE.parameters.items()}
    x = np.round(rng.standard_normal((2, 1, 2)), 1) + 0.0
    dy = np.array([[[0.5, -0.5]], [[1.0, 0.25]]])
    y, final, cache = lstm.forward(params, x)
    grads = lstm.backward(cache, dy, {})
    L = float((dy * y).sum())
    # per step: one-step runs with what the later steps send back
    steps = {}
    for t in (2, 1):
        back = carried(lstm, params, x, cache, dy, t)
        init = {"h0": cache["h"][t - 1], "c0": cache["c"][t - 1]}
        _, _, c1 = lstm.forward(params, x[t - 1:t], **init)
        g1 = lstm.backward(c1, dy[t - 1:t], {"h": back["h"], "c": back["c"]})
        steps[t] = {"next": back, "grads": g1}
    # complex-step cross-check of one entry of dL/dW_f
    pc = {k: v.astype(complex) for k, v in params.items()}
    pc["W_f"] = pc["W_f"].copy()
    pc["W_f"][0, 0] += 1e-30j
    yc, _, _ = lstm.forward(pc, x.astype(complex))
    cs = float(np.imag((dy * yc).sum()) / 1e-30)
    return dict(params=params, x=x, dy=dy, y=y, cache=cache, grads=grads, L=L, steps=steps, cs=cs)


def worked_example_md(part: str) -> str:
    w = worked_example()
    p, cache, steps = w["params"], w["cache"], w["steps"]
    if part == "parameters":
        rows = [(g, mat(p[f"W_{g}"]), mat(p[f"U_{g}"]), mat(p[f"b_{g}"])) for g in LSTM_GATES]
        x_t, v_t = labels("x_t", "v_t (= dL/dy_t)")
        return (table(["gate", "W (2 x 2)", "U (2 x 2)", "b"], rows) + "\n\n"
                + table(["", "t = 1", "t = 2"], [(x_t, fmt(w["x"][0]), fmt(w["x"][1])),
                                                 (v_t, fmt(w["dy"][0]), fmt(w["dy"][1]))]))
    if part == "forward":
        names = [("f_t", "f"), ("i_t", "i"), ("c~_t", "c_tilde"), ("o_t", "o")]
        rows = [(spec_html(lbl), fmt(cache[k][0]), fmt(cache[k][1])) for lbl, k in names]
        rows += [(spec_html("c_t"), fmt(cache["c"][1]), fmt(cache["c"][2])),
                 (spec_html("h_t"), fmt(cache["h"][1]), fmt(cache["h"][2]))]
        return (table(["quantity", "t = 1", "t = 2"], rows)
                + f"\n\nThe loss is L = {spec_html('⟨v_1, h_1⟩ + ⟨v_2, h_2⟩')} = **{w['L']:.6f}**.")
    if part == "backward":
        rows = []
        for t in (2, 1):
            s = steps[t]
            g = s["grads"]
            rows.append((f"t = {t}", fmt(s["next"]["h"]), fmt(s["next"]["c"]),
                         fmt(g["b_f"]), fmt(g["b_i"]), fmt(g["b_c"]), fmt(g["b_o"]),
                         fmt(g["h0"]), fmt(g["c0"])))
        return table(["step", *labels("δh_t^{(t+1)} (carried in)", "δc_t^{(t+1)} (carried in)", "δz_{f,t}",
                                      "δz_{i,t}", "δz_{c,t}", "δz_{o,t}", "δh_{t-1} (sent back)",
                                      "δc_{t-1} (sent back)")], rows)
    if part == "params":
        rows = []
        for name in ("W_f", "U_f", "b_f"):
            c1, c2 = steps[1]["grads"][name], steps[2]["grads"][name]
            rows.append((spec_html(name), mat(c1, 4), mat(c2, 4), mat(c1 + c2, 4), mat(w["grads"][name], 4),
                         f"{np.max(np.abs(c1 + c2 - w['grads'][name])):.1e}"))
        return table(["parameter", "step 1 contribution", "step 2 contribution", "sum over t",
                      "full backward()", "max difference"], rows)
    if part == "check":
        g = w["grads"]["W_f"][0, 0]
        return table([spec_html("dL/dW_f[0,0]"), "value"],
                     [("reference `backward()`", f"{g:.15f}"), ("complex step, h = 1e-30", f"{w['cs']:.15f}"),
                      ("difference", f"{abs(g - w['cs']):.1e}")])
    raise KeyError(part)


# ------------------------------------------------------------------------------------------ gradient flow
def logit(p):
    return float(np.log(p / (1 - p)))


@functools.cache
def ten_step(forget: float = 0.95):
    """The notes' example: information written at step 2, read at step 10 (H = D = 1). Input only at step 2
    (x_2 = 1) opens the input gate there; the forget gate is the constant sigma(b_f) = ``forget``; the
    recurrent matrices are 0, so the only path from step 2 to step 10 is the cell state. L = h_10."""
    T = 10
    def z():
        return np.zeros((1, 1))
    params = {"W_f": z(), "U_f": z(), "b_f": np.array([logit(forget)]),
              "W_i": np.array([[40.0]]), "U_i": z(), "b_i": np.array([-20.0]),
              "W_c": np.array([[1.0]]), "U_c": z(), "b_c": np.array([0.0]),
              "W_o": z(), "U_o": z(), "b_o": np.array([0.0])}
    x = np.zeros((T, 1, 1))
    x[1] = 1.0
    dy = np.zeros((T, 1, 1))
    dy[-1] = 1.0
    y, final, cache = lstm.forward(params, x)
    d_c2 = carried(lstm, params, x, cache, dy, 2)["c"]  # dL_10/dc_2
    local = cache["o"][-1] * (1 - cache["tanh_c"][-1] ** 2)  # dh_10/dc_10, read from the reference's cache
    return dict(cache=cache, d_c2=float(d_c2.ravel()[0]), local=float(local.ravel()[0]),
                ratio=float((d_c2 / local).ravel()[0]), f=cache["f"][:, 0, 0], i=cache["i"][:, 0, 0],
                c=cache["c"][1:, 0, 0])


def rnn_ten_step(u: float):
    """The same distance for the vanilla tanh RNN with scalar recurrent weight u: dL_10/dh_2, L = h_10."""
    T = 10
    params = {"W": np.array([[1.0]]), "U": np.array([[u]]), "b": np.array([0.0])}
    x = np.zeros((T, 1, 1))
    x[1] = 1.0
    dy = np.zeros((T, 1, 1))
    dy[-1] = 1.0
    _, _, cache = rnn_tanh.forward(params, x)
    return float(carried(rnn_tanh, params, x, cache, dy, 2)["h"].ravel()[0])


def ten_step_md(part: str) -> str:
    e = ten_step(0.95)
    if part == "trace":
        rows = [(t + 1, f"{e['f'][t]:.4f}", f"{e['i'][t]:.2e}" if e["i"][t] < 0.5 else f"{e['i'][t]:.6f}",
                 f"{e['c'][t]:.4f}") for t in range(10)]
        return table(["t", *labels("f_t", "i_t", "c_t")], rows)
    if part == "table":
        e1 = ten_step(1.0 - 1e-12)
        rows = [
            (*labels("LSTM, f_t = 0.95 (arithmetic)", "0.95^8"), f"{0.95 ** 8:.4g}"),
            (*labels("LSTM, f_t = 0.95 (measured: reference dL/dc_2 over the local factor at t = 10)",
                     "∏ f_t, t = 3..10"), f"{e['ratio']:.4g}"),
            (*labels("LSTM, f_t = 1 (measured)", "∏ f_t"), f"{e1['ratio']:.4g}"),
            (*labels("sigmoid RNN, best case σ'(z) = 0.25 with unit weight (arithmetic)", "0.25^8"),
             f"{0.25 ** 8:.3g}"),
        ]
        for u in (0.5, 0.9, 1.0):
            rows.append((*labels(f"tanh RNN, U = {u} (measured: reference dL_10/dh_2)", "∏ U (1 - h_t^2)"),
                         f"{rnn_ten_step(u):.3g}"))
        return table(["cell", "factor from step 10 back to step 2", "value"], rows)
    raise KeyError(part)


def _random_lstm(H, D, seed, forget_bias):
    rng = np.random.default_rng(seed)
    dims = {"H": H, "D": D}
    p = {n: rng.standard_normal([dims[d] for d in ds]) / np.sqrt(dims[ds[-1]]) if len(ds) == 2 else
         np.zeros(dims[ds[0]]) for n, ds in lstm.SIGNATURE.parameters.items()}
    p["b_f"] = np.full(H, forget_bias)
    return p


def _random_rnn(H, D, seed, radius):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((H, H))
    U *= radius / np.max(np.abs(np.linalg.eigvals(U)))
    return {"W": rng.standard_normal((H, D)) / np.sqrt(D), "U": U, "b": np.zeros(H)}


def norms_vs_distance(module, params, T, D, seed):
    """||dL_T/ds_t|| for every state s against the distance T - t, L_T = <w, h_T> (w random, unit norm)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, 1, D))
    _, _, cache = module.forward(params, x)
    H = cache["h"].shape[-1]
    dy = np.zeros((T, 1, H))
    w = rng.standard_normal(H)
    dy[-1, 0] = w / np.linalg.norm(w)
    out = {s: [] for s in states_of(module)}
    for t in range(T - 1, 0, -1):  # carried into step t+1 from the later steps: dL_T/ds_t
        g = carried(module, params, x, cache, dy, t)
        for s in out:
            out[s].append(float(np.linalg.norm(g[s])))
    dist = T - np.arange(T - 1, 0, -1)
    return dist, {s: np.array(v) for s, v in out.items()}


@functools.cache
def flow_measurements(T=60, H=16, D=8):
    res = {}
    for fb in (0.0, 2.0):
        res[f"LSTM, forget bias {fb:g}"] = norms_vs_distance(lstm, _random_lstm(H, D, 1, fb), T, D, 2)
    for r in (0.9, 1.5):
        res[f"tanh RNN, spectral radius of U = {r:g}"] = norms_vs_distance(rnn_tanh, _random_rnn(H, D, 3, r), T, D, 2)
    return res


def _svg(fig) -> bytes:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    # matplotlib stamps a creation date into the SVG; drop it so the build is reproducible
    text = re.sub(r"<dc:date>.*?</dc:date>", "", text)
    return text.encode()


def plot_flow() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "lstm-spec"
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, (dist, norms) in flow_measurements().items():
        if "c" in norms:
            ax.semilogy(dist, norms["c"], "-", label=f"{label}: ‖∂L_T/∂c_t‖")
            ax.semilogy(dist, norms["h"], "--", label=f"{label}: ‖∂L_T/∂h_t‖")
        else:
            ax.semilogy(dist, norms["h"], ":", lw=2, label=f"{label}: ‖∂L_T/∂h_t‖")
    ax.set_xlabel("distance T - t (steps)")
    ax.set_ylabel("gradient norm (reference backward)")
    ax.set_title("How far back does the gradient of L_T = <w, h_T> reach? (T = 60, H = 16)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _svg(fig)


def flow_table() -> str:
    rows = []
    for label, (dist, norms) in flow_measurements().items():
        for s in norms:
            v = norms[s]
            rows.append((label, spec_html(f"∂L_T/∂{s}_t"),
                         *(f"{v[list(dist).index(k)]:.2e}" for k in (1, 5, 10, 20, 40))))
    return table(["cell", "gradient", "T - t = 1", "5", "10", "20", "40"], rows)


@functools.cache
def eigen_measurements(T=40, H=16, D=8):
    res = {}
    for r in (0.5, 0.9, 1.1, 1.5):
        p = _random_rnn(H, D, 7, r)
        res[r] = (p["U"], norms_vs_distance(rnn_tanh, p, T, D, 8))
    return res


def linear_response(U, steps=40):
    h = np.ones(U.shape[0]) / np.sqrt(U.shape[0])
    out = [1.0]
    for _ in range(steps):
        h = U @ h
        out.append(float(np.linalg.norm(h)))
    return np.array(out)


def plot_eigen() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "lstm-spec"
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    th = np.linspace(0, 2 * np.pi, 200)
    axes[0].plot(np.cos(th), np.sin(th), "k-", lw=0.8, label="|λ| = 1")
    for r, (U, _) in eigen_measurements().items():
        ev = np.linalg.eigvals(U)
        axes[0].plot(ev.real, ev.imag, ".", label=f"ρ(U) = {r:g}")
    axes[0].set_aspect("equal")
    axes[0].set_title("eigenvalues of U")
    axes[0].legend(fontsize=7)
    for r, (U, _) in eigen_measurements().items():
        axes[1].semilogy(linear_response(U), label=f"ρ(U) = {r:g}")
    axes[1].set_title("linear recursion h_t = U h_{t-1}: ‖h_t‖")
    axes[1].set_xlabel("t")
    axes[1].legend(fontsize=7)
    for r, (_, (dist, norms)) in eigen_measurements().items():
        axes[2].semilogy(dist, norms["h"], label=f"ρ(U) = {r:g}")
    axes[2].set_title("tanh RNN (reference): ‖∂L_T/∂h_t‖")
    axes[2].set_xlabel("distance T - t")
    axes[2].legend(fontsize=7)
    for a in axes:
        a.grid(True, alpha=0.3)
    return _svg(fig)


def eigen_table() -> str:
    rows = []
    for r, (U, (dist, norms)) in eigen_measurements().items():
        ev = np.linalg.eigvals(U)
        lin = linear_response(U)
        rows.append((f"{r:g}", f"{np.max(np.abs(ev)):.3f}", f"{np.sum(np.abs(ev.imag) > 1e-12)}",
                     f"{lin[20]:.2e}", f"{norms['h'][list(dist).index(20)]:.2e}"))
    return table(["target ρ(U)", "measured ρ(U)", "complex eigenvalues",
                  *labels("linear ‖h_20‖ (‖h_0‖ = 1)", "tanh RNN ‖∂L_T/∂h_{T-20}‖")], rows)


# ------------------------------------------------------------------------------------------ truncation
@functools.cache
def truncation(T=40, H=8, D=4, seed=11):
    """Full BPTT against chunked truncated BPTT (k steps per chunk, state carried, gradient cut between
    chunks) and against the original cell-only truncation (the gradient into h_{t-1} is dropped at every
    step, only the cell state carries error back). Loss: sum over t of <v_t, h_t>. All by the reference."""
    rng = np.random.default_rng(seed)
    params = _random_lstm(H, D, seed, 1.0)
    x = rng.standard_normal((T, 1, D))
    dy = rng.standard_normal((T, 1, H))
    _, _, cache = lstm.forward(params, x)
    full = lstm.backward(cache, dy, {})
    names = list(params)

    def vec(g):
        return np.concatenate([np.ravel(g[n]) for n in names])

    def compare(g):
        a, b = vec(g), vec(full)
        return float(np.linalg.norm(a - b) / np.linalg.norm(b)), float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    out = []
    for k in (1, 2, 5, 10, 20, T):
        acc = {n: np.zeros_like(v) for n, v in params.items()}
        for s in range(0, T, k):
            init = {"h0": cache["h"][s], "c0": cache["c"][s]}
            _, _, c = lstm.forward(params, x[s:s + k], **init)
            g = lstm.backward(c, dy[s:s + k], {})
            for n in acc:
                acc[n] += g[n]
        out.append((f"chunked, k = {k} steps per chunk" + (" (one chunk: full BPTT)" if k == T else ""),
                    *compare(acc)))
    # cell-only truncation: step by step, the h path cut
    acc = {n: np.zeros_like(v) for n, v in params.items()}
    dc = np.zeros((1, H))
    for t in range(T, 0, -1):
        _, _, c = lstm.forward(params, x[t - 1:t], h0=cache["h"][t - 1], c0=cache["c"][t - 1])
        g = lstm.backward(c, dy[t - 1:t], {"h": np.zeros((1, H)), "c": dc})
        dc = g["c0"]
        for n in acc:
            acc[n] += g[n]
    out.append((spec_html("cell-only truncation (gradient through h_{t-1} dropped at every step)"), *compare(acc)))
    return out


def truncation_md() -> str:
    rows = [(name, f"{err:.3f}", f"{cos:.4f}") for name, err, cos in truncation()]
    return table(["gradient", "relative error vs full BPTT", "cosine with full BPTT"], rows)
