"""The course slides' LSTM backward pseudocode (slides on RNN stability and LSTMs), implemented literally, and run
through lstm-spec's own numeric checks (``lstm_spec.checks.numeric.check_derivatives``, complex step).

This is documentation code, not reference code: it exists to show, with numbers, where the slides agree
with the derivation and where they do not. Each departure from the printed pseudocode is a named switch
(``fix_*``); with every switch off the module does what the slides print, line for line (vectors are row
vectors as in the slides: ``dzo Woh`` is ``dzo @ Woh``, ``Co dzo`` is the outer product Co dzo).
``fix_transpose`` is not a correction: in the slides' row-vector convention ``h dzo`` is the gradient laid
out as W transposed, and the switch reads it that way; off, it is taken for W's gradient as it stands.

The slides' cell has full-matrix peepholes from the old cell into f, i and the candidate (Wfc, Wic, Wcc)
and from the new cell into o (Woc). Their network puts a softmax output layer on top (their Wo, bo; named
Wy, by here, because the cell's output gate already has a bo).
"""

from __future__ import annotations

import types

import numpy as np

from lstm_spec.checks.numeric import check_derivatives
from lstm_spec.checks.tolerances import tolerance
from lstm_spec.layouts.gates import LSTM_GATES
from lstm_spec.reference import lstm
from lstm_spec.reference._runtime import Signature

GATES = LSTM_GATES
CELL_PARAMS = {}
for _g in GATES:
    CELL_PARAMS[f"W{_g}c"] = ("H", "H")
    CELL_PARAMS[f"W{_g}h"] = ("H", "H")
    CELL_PARAMS[f"W{_g}x"] = ("H", "D")
    CELL_PARAMS[f"b{_g}"] = ("H",)
OUT_PARAMS = {"Wy": ("K", "H"), "by": ("K",)}


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z):  # no max-subtraction: it would break the complex step; values here are small
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def outer(a, b):
    """Sum over the batch of the outer products a b^T (a: (B, m), b: (B, n)) -> (m, n)."""
    return np.einsum("bi,bj->ij", a, b)


# ------------------------------------------------------------------------------------------ the cell
def cell_forward(C, h, x, P):
    """LSTM_cell.forward, as printed (with its [W,h] typo read as [W,b])."""
    s = {}
    s["zf"] = C @ P["Wfc"].T + h @ P["Wfh"].T + x @ P["Wfx"].T + P["bf"]
    s["f"] = sigmoid(s["zf"])
    s["zi"] = C @ P["Wic"].T + h @ P["Wih"].T + x @ P["Wix"].T + P["bi"]
    s["i"] = sigmoid(s["zi"])
    s["zc"] = C @ P["Wcc"].T + h @ P["Wch"].T + x @ P["Wcx"].T + P["bc"]
    s["Ci"] = np.tanh(s["zc"])
    Co = s["f"] * C + s["i"] * s["Ci"]
    s["zo"] = Co @ P["Woc"].T + h @ P["Woh"].T + x @ P["Wox"].T + P["bo"]
    s["o"] = sigmoid(s["zo"])
    ho = s["o"] * np.tanh(Co)
    return Co, ho, s


def cell_backward(dCo, dho, C, h, Co, ho, x, P, s, fix_transpose: bool):
    """LSTM_cell.backward, line for line. ``fix_transpose``: the slides' weight gradients ``h dzo`` are
    (input x output), the transpose of the matrices they belong to; the fix writes dzo h^T."""
    zf, zi, zc, zo, f, i, o, Ci = (s[k] for k in ("zf", "zi", "zc", "zo", "f", "i", "o", "Ci"))
    dW = {}
    W = (lambda a, dz: outer(dz, a)) if fix_transpose else (lambda a, dz: outer(a, dz))
    # First invert ho = o . tanh(C)
    do = dho * np.tanh(Co)
    dtanhCo = dho * o
    dCo = dCo + dtanhCo * (1 - np.tanh(Co) ** 2)
    # Next invert o = sigmoid(zo)
    dzo = do * sigmoid(zo) * (1 - sigmoid(zo))
    # Next invert zo = Woc Co + Woh h + Wox x + bo
    dCo = dCo + dzo @ P["Woc"]
    dh = dzo @ P["Woh"]
    dx = dzo @ P["Wox"]
    dW["Woc"], dW["Woh"], dW["Wox"], dW["bo"] = W(Co, dzo), W(h, dzo), W(x, dzo), dzo.sum(0)
    # Next invert Co = f . C + i . Ci
    dC = dCo * f
    dCi = dCo * i
    di = dCo * Ci
    df = dCo * C
    # Next invert Ci = tanh(zc)
    dzc = dCi * (1 - np.tanh(zc) ** 2)
    dC = dC + dzc @ P["Wcc"]
    dh = dh + dzc @ P["Wch"]
    dx = dx + dzc @ P["Wcx"]
    dW["Wcc"], dW["Wch"], dW["Wcx"], dW["bc"] = W(C, dzc), W(h, dzc), W(x, dzc), dzc.sum(0)
    # Next invert i = sigmoid(zi)
    dzi = di * sigmoid(zi) * (1 - sigmoid(zi))
    dC = dC + dzi @ P["Wic"]
    dh = dh + dzi @ P["Wih"]
    dx = dx + dzi @ P["Wix"]
    dW["Wic"], dW["Wih"], dW["Wix"], dW["bi"] = W(C, dzi), W(h, dzi), W(x, dzi), dzi.sum(0)
    # Next invert f = sigmoid(zf)
    dzf = df * sigmoid(zf) * (1 - sigmoid(zf))
    dC = dC + dzf @ P["Wfc"]
    dh = dh + dzf @ P["Wfh"]
    dx = dx + dzf @ P["Wfx"]
    dW["Wfc"], dW["Wfh"], dW["Wfx"], dW["bf"] = W(C, dzf), W(h, dzf), W(x, dzf), dzf.sum(0)
    return dC, dh, dx, dW


# ------------------------------------------------------------------------------------------ the network
def make_module(name, *, output_layer: bool, fix_transpose=True, fix_softmax=True, fix_prev_state=True,
                fix_output_routing=True):
    """A module with the interface of a generated reference module (SIGNATURE, forward, backward), so that
    lstm-spec's checks can run on it. One hidden layer (the slides' L = 1)."""
    params = dict(CELL_PARAMS, **(OUT_PARAMS if output_layer else {}))
    sig = Signature(cell=name, inputs={"x": ("D",)}, states={"h": ("H",), "c": ("H",)}, parameters=params,
                    output="y" if output_layer else "h", output_dims=("K",) if output_layer else ("H",))

    def forward(P, x, h0=None, c0=None):
        T, B, _ = x.shape
        H = P["Wfh"].shape[0]
        dt = np.result_type(x, *P.values())
        h = [np.zeros((B, H), dt) if h0 is None else h0]
        C = [np.zeros((B, H), dt) if c0 is None else c0]
        steps, ys = [], []
        for t in range(T):
            Co, ho, s = cell_forward(C[-1], h[-1], x[t], P)
            C.append(Co)
            h.append(ho)
            steps.append(s)
            if output_layer:
                s["zy"] = ho @ P["Wy"].T + P["by"]
                s["Y"] = softmax(s["zy"])
                ys.append(s["Y"])
            else:
                ys.append(ho)
        y = np.stack(ys) if T else np.zeros((0, B, H), dt)
        return y, {"h": h[-1], "c": C[-1]}, {"P": P, "x": x, "h": h, "C": C, "steps": steps}

    def backward(cache, dy, d_final):
        P, x, h, C, steps = cache["P"], cache["x"], cache["h"], cache["C"], cache["steps"]
        T = x.shape[0]
        grads = {k: np.zeros_like(v) for k, v in P.items()}
        dx_all = np.zeros_like(x)
        # the slides leave dC(T), dh(T) unset; the boundary condition is the final-state cotangent (0 there)
        dC_next = d_final.get("c", np.zeros_like(C[-1]))
        dh_next = d_final.get("h", np.zeros_like(h[-1]))
        for t in range(T - 1, -1, -1):  # for t = T-1:0
            s = steps[t]
            if output_layer:
                dh_out = _output_layer_backward(s, dy[t], h[t + 1], P, grads, fix_softmax, fix_transpose)
                # as printed, the top layer's cell receives dh(t+1,L) + dx(t,L+1): there is no layer L+1, and
                # dh(t,L) is overwritten by the cell's own result, so the output's gradient never enters
                dho = dh_next + (dh_out if fix_output_routing else 0.0)
            else:
                dho = dh_next + dy[t]
            # as printed: backward(dC(t+1,l), dh(t+1,l)+..., C(t,l), h(t,l), C(t,l), h(t,l), ...)
            Cprev, hprev = (C[t], h[t]) if fix_prev_state else (C[t + 1], h[t + 1])
            dC_next, dh_next, dx, dW = cell_backward(dC_next, dho, Cprev, hprev, C[t + 1], h[t + 1], x[t], P, s,
                                                     fix_transpose)
            dx_all[t] = dx
            for k, v in dW.items():
                _add_gradient(grads, k, v)  # d[W{l} b{l}] += d[W,b]
        grads.update({"x": dx_all, "h0": dh_next, "c0": dC_next})
        return grads

    return types.SimpleNamespace(__name__=name, SIGNATURE=sig, forward=forward, backward=backward)


def _output_layer_backward(s, dy_t, h_t, P, grads, fix_softmax, fix_transpose):
    """One step back through the softmax output layer (the slides' Wo, bo: Wy, by here): its parameter
    gradients added to grads; returns dh(t,L) = dzo(t) Wo."""
    if fix_softmax:  # Y = softmax(zy): dzy = Y . (dY - <dY, Y>)
        dzy = s["Y"] * (dy_t - (dy_t * s["Y"]).sum(-1, keepdims=True))
    else:  # as printed: dzo = dY(t) . sigmoid(zo(t)) . (1 - sigmoid(zo(t)))
        dzy = dy_t * sigmoid(s["zy"]) * (1 - sigmoid(s["zy"]))
    dWy = outer(dzy, h_t) if fix_transpose else outer(h_t, dzy)  # dWo += h(t,L) dzo(t)
    if dWy.shape != grads["Wy"].shape:
        raise ValueError(f"Wy: the pseudocode's gradient has shape {dWy.shape}, "
                         f"the weight {grads['Wy'].shape}")
    grads["Wy"] = grads["Wy"] + dWy
    grads["by"] = grads["by"] + dzy.sum(0)
    return dzy @ P["Wy"]  # dh(t,L) = dzo(t) Wo


def _add_gradient(grads, k, v):
    """grads[k] += v, when the pseudocode's gradient has the weight's shape."""
    if v.shape != grads[k].shape:
        raise ValueError(f"{k}: the pseudocode's gradient has shape {v.shape}, the weight {grads[k].shape}")
    grads[k] = grads[k] + v


# ------------------------------------------------------------------------------------------ the report
VARIANTS = [  # (label, options); "as printed" marks the slides' own text, run as they print it
    ("cell backward as printed, its weight gradients h dz read in the slides' row-vector layout "
     "(transposed to the shape of W)", dict(output_layer=False)),
    ("cell backward, h dz taken for W's gradient as it stands (the row-vector layout misread)",
     dict(output_layer=False, fix_transpose=False)),
    ("the same misreading with D = H, so that every shape fits",
     dict(output_layer=False, fix_transpose=False, shapes=[(2, 1, 3, 3), (4, 2, 3, 3)])),
    ("network as printed: softmax output differentiated as a sigmoid",
     dict(output_layer=True, fix_softmax=False)),
    ("network as printed: cell called with C(t), h(t) as its previous state",
     dict(output_layer=True, fix_prev_state=False)),
    ("network as printed: output gradient dh(t,L) never reaches the top cell",
     dict(output_layer=True, fix_output_routing=False)),
    ("network with the three corrections", dict(output_layer=True)),
]


def run_checks():
    """[(label, error, worst, passed)] for every variant: complex-step check with lstm-spec's tolerance."""
    tol = tolerance("complex_step", "complex128")
    out = []
    for label, kw in VARIANTS:
        kw = dict(kw)
        shapes = kw.pop("shapes", None)
        mod = make_module("slides", **kw)
        r = check_derivatives(mod, "complex_step", shapes=shapes)
        out.append((label, r["error"], r["worst"], r["error"] <= tol))
    return out


def against_reference(seed=0, T=5, B=2, D=3, H=4):
    """The corrected cell with its peephole matrices set to 0 against lstm-spec's generated reference."""
    rng = np.random.default_rng(seed)
    P = {k: 0.5 * rng.standard_normal([{"H": H, "D": D}[d] for d in v]) for k, v in CELL_PARAMS.items()}
    for g in GATES:
        P[f"W{g}c"] = np.zeros((H, H))
    x = rng.standard_normal((T, B, D))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    dy = rng.standard_normal((T, B, H))
    dfin = {"h": rng.standard_normal((B, H)), "c": rng.standard_normal((B, H))}
    mod = make_module("slides", output_layer=False)
    y1, _, c1 = mod.forward(P, x, h0, c0)
    g1 = mod.backward(c1, dy, dfin)
    ours = {}
    for g in GATES:
        ours[f"W_{g}"], ours[f"U_{g}"], ours[f"b_{g}"] = P[f"W{g}x"], P[f"W{g}h"], P[f"b{g}"]
    y2, _, c2 = lstm.forward(ours, x, h0=h0, c0=c0)
    g2 = lstm.backward(c2, dy, dfin)
    rows = [("y (forward)", float(np.max(np.abs(y1 - y2))))]
    for g in GATES:
        for a, b in ((f"W{g}x", f"W_{g}"), (f"W{g}h", f"U_{g}"), (f"b{g}", f"b_{g}")):
            rows.append((f"{a} vs {b}", float(np.max(np.abs(g1[a] - g2[b])))))
    for k in ("x", "h0", "c0"):
        rows.append((k, float(np.max(np.abs(g1[k] - g2[k])))))
    return rows
