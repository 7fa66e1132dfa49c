"""(d) PyTorch: the cells PyTorch has, run in float64 with weights built from ours, agree with the
reference on the outputs and on the gradients of every parameter, x and the initial states.

Our parameters become leaf tensors; PyTorch's weights are built from them with differentiable torch
operations (concatenation in PyTorch's gate order; biases split between PyTorch's two biases as
0.3 b + s and 0.7 b - s with a random s, so both of PyTorch's bias gradients are exercised), and the
module is run with ``torch.func.functional_call``. The gradients PyTorch's autograd returns for our
leaves are then directly comparable with ours. Each cell is compared with the full-sequence module
(nn.LSTM, nn.GRU, nn.RNN) and, where PyTorch has one, with its single-step cell stepped over time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from lstm_spec.layouts.gates import LSTM_GATES, TORCH_GRU_ORDER, TORCH_LSTM_ORDER

from .cases import SHAPES, random_instance, run
from .tolerances import rel_error

# The CPU-only wheel of the pin comes from PyTorch's own index; from PyPI, torch==2.13.0 on Linux x86_64 is the
# build that pulls the CUDA libraries (several GB). Either works for the checks.
INSTALL = ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu  (the CPU-only build; "
           "plain `pip install torch==2.13.0` from PyPI gets the CUDA build, several GB)")


def torch_available():
    try:
        import torch  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


@dataclass
class TorchEquivalent:
    """How one of our cells maps onto PyTorch."""

    sequence_module: Callable  # (torch, dims) -> nn.Module taking (x, state) over a sequence
    cell_module: Callable | None  # (torch, dims) -> single-step nn.Module, or None
    weights: Callable  # (torch, ours: dict of tensors, dims, seed) -> {torch parameter name: tensor}
    states: tuple  # PyTorch's state tuple, each entry the stack (over layers) of our states it holds
    head: Callable | None = None  # (torch, ours, hidden sequence (T, B, H), inst) -> the cell's output


def _split(torch, b, seed):
    s = torch.tensor(np.random.default_rng(seed).standard_normal(b.shape[0]), dtype=torch.float64)
    return 0.3 * b + s, 0.7 * b - s


def _lstm_weights(torch, p, dims, seed, gates=TORCH_LSTM_ORDER):
    def cat(k):
        return torch.cat([p[f"{k}_{g}"] for g in gates])
    if "bW_f" in p:  # two-bias layout: ours map one to one
        b_ih, b_hh = torch.cat([p[f"bW_{g}"] for g in gates]), torch.cat([p[f"bU_{g}"] for g in gates])
    else:
        b_ih, b_hh = _split(torch, cat("b"), seed)
    out = {"weight_ih": cat("W"), "weight_hh": cat("U"), "bias_ih": b_ih, "bias_hh": b_hh}
    if "W_hr" in p:
        out["weight_hr"] = p["W_hr"]
    return out


def _gru_weights(torch, p, dims, seed):
    def cat(k):
        return torch.cat([p[f"{k}_{g}"] for g in TORCH_GRU_ORDER])
    r_ih, r_hh = _split(torch, p["b_r"], seed)
    z_ih, z_hh = _split(torch, p["b_z"], seed + 1)
    return {"weight_ih": cat("W"), "weight_hh": cat("U"), "bias_ih": torch.cat([r_ih, z_ih, p["b_n"]]),
            "bias_hh": torch.cat([r_hh, z_hh, p["b_hn"]])}


def _rnn_weights(torch, p, dims, seed):
    b_ih, b_hh = _split(torch, p["b"], seed)
    return {"weight_ih": p["W"], "weight_hh": p["U"], "bias_ih": b_ih, "bias_hh": b_hh}


def _stacked_lstm_weights(torch, p, dims, seed):
    """Layer k's parameters W{k}_f, ... -> PyTorch's weight_ih_l{k-1}, ..."""
    out = {}
    for k in (1, 2):
        layer = {name.replace(str(k), "", 1): v for name, v in p.items() if name[1:2] == str(k)}
        for key, v in _lstm_weights(torch, layer, dims, seed + k).items():
            out[f"{key}_l{k - 1}"] = v
    return out


TORCH_EQUIVALENTS: dict[str, TorchEquivalent] = {
    "lstm": TorchEquivalent(lambda t, d: t.nn.LSTM(d["D"], d["H"]), lambda t, d: t.nn.LSTMCell(d["D"], d["H"]),
                            _lstm_weights, (("h",), ("c",))),
    "no_peepholes": TorchEquivalent(lambda t, d: t.nn.LSTM(d["D"], d["H"]),
                                    lambda t, d: t.nn.LSTMCell(d["D"], d["H"]), _lstm_weights, (("h",), ("c",))),
    "lstm_two_bias": TorchEquivalent(lambda t, d: t.nn.LSTM(d["D"], d["H"]),
                                     lambda t, d: t.nn.LSTMCell(d["D"], d["H"]), _lstm_weights, (("h",), ("c",))),
    "projection": TorchEquivalent(lambda t, d: t.nn.LSTM(d["D"], d["H"], proj_size=d["P"]), None,
                                  _lstm_weights, (("h",), ("c",))),
    "lstm_stacked2": TorchEquivalent(lambda t, d: t.nn.LSTM(d["D"], d["H"], num_layers=2), None,
                                     _stacked_lstm_weights, (("h1", "h2"), ("c1", "c2"))),
    "lstm_mse": TorchEquivalent(lambda t, d: t.nn.LSTM(d["D"], d["H"]), lambda t, d: t.nn.LSTMCell(d["D"], d["H"]),
                                _lstm_weights, (("h",), ("c",)), head=lambda t, p, h, inst: 0.5 * (
                                    (t.nn.functional.linear(h, p["W_hy"], p["b_y"]) - t.tensor(inst.seq["target"]))
                                    ** 2).sum(-1, keepdim=True)),
    "lstm_softmax_ce": TorchEquivalent(
        lambda t, d: t.nn.LSTM(d["D"], d["H"]), lambda t, d: t.nn.LSTMCell(d["D"], d["H"]), _lstm_weights,
        (("h",), ("c",)), head=lambda t, p, h, inst: t.nn.functional.cross_entropy(
            t.nn.functional.linear(h, p["W_hy"], p["b_y"]).reshape(-1, p["b_y"].shape[0]),
            t.tensor(inst.seq["target"]).reshape(-1, p["b_y"].shape[0]), reduction="none").reshape(
            h.shape[0], h.shape[1], 1)),
    "gru_reset_after": TorchEquivalent(lambda t, d: t.nn.GRU(d["D"], d["H"]),
                                       lambda t, d: t.nn.GRUCell(d["D"], d["H"]), _gru_weights, (("h",),)),
    "rnn_tanh": TorchEquivalent(lambda t, d: t.nn.RNN(d["D"], d["H"], nonlinearity="tanh"),
                                lambda t, d: t.nn.RNNCell(d["D"], d["H"], nonlinearity="tanh"), _rnn_weights,
                                (("h",),)),
}


@dataclass
class TorchProgram:
    """A cell written as a PyTorch program of the same math, differentiated by PyTorch's autograd: PyTorch's
    own modules with the explicit masks applied around them (nn.LSTM draws its dropout masks itself, so
    they cannot be given to it), or, where PyTorch has no such cell, the equations in torch operations
    (the layer-normalised LSTM uses torch.nn.functional.layer_norm)."""

    run: Callable  # (torch, p, seq, init, dims) -> (y of shape (T, B, ·), {state: final value}); leaf tensors
    what: str  # one line: what PyTorch computes


def _layer(p, k):
    """Layer k's parameters of a two-layer spec (W1_f -> W_f)."""
    return {name.replace(str(k), "", 1): v for name, v in p.items() if name[1:2] == str(k)}


def _lstm_net(torch, p, seed, cell: bool):
    """A float64 nn.LSTMCell (cell=True) or single-layer nn.LSTM with our parameters as its weights:
    returns a function of (input, (h, c))."""
    from torch.func import functional_call

    D, H = p["W_f"].shape[1], p["W_f"].shape[0]
    net = (torch.nn.LSTMCell(D, H) if cell else torch.nn.LSTM(D, H)).double()
    w = _lstm_weights(torch, p, None, seed)
    if not cell:
        w = {f"{k}_l0": v for k, v in w.items()}
    return lambda inp, state: functional_call(net, w, (inp, state))


def _run_stacked2_dropout(torch, p, seq, init, dims):
    layer1, layer2 = _lstm_net(torch, _layer(p, 1), 8, False), _lstm_net(torch, _layer(p, 2), 9, False)
    y1, (h1, c1) = layer1(seq["x"] * seq["m_x"], (init["h1"][None], init["c1"][None]))
    y2, (h2, c2) = layer2(y1 * seq["m_1"], (init["h2"][None], init["c2"][None]))
    return y2, {"h1": h1[0], "c1": c1[0], "h2": h2[0], "c2": c2[0]}


def _stepped(torch, dims, T, step, h, c):
    ys = []
    for t in range(T):
        h, c = step(t, h, c)
        ys.append(h)
    y = torch.stack(ys) if ys else torch.zeros((0,) + tuple(h.shape), dtype=torch.float64)
    return y, {"h": h, "c": c}


def _run_variational_dropout(torch, p, seq, init, dims):
    cell = _lstm_net(torch, p, 8, True)
    x, m_x, m_h = seq["x"], seq["m_x"], seq["m_h"]
    return _stepped(torch, dims, x.shape[0], lambda t, h, c: cell(x[t] * m_x[t], (h * m_h[t], c)),
                    init["h"], init["c"])


def _run_zoneout(torch, p, seq, init, dims):
    cell = _lstm_net(torch, p, 8, True)
    x, m_c, m_h = seq["x"], seq["m_c"], seq["m_h"]

    def step(t, h, c):
        h_new, c_new = cell(x[t], (h, c))
        return m_h[t] * h_new + (1 - m_h[t]) * h, m_c[t] * c_new + (1 - m_c[t]) * c

    return _stepped(torch, dims, x.shape[0], step, init["h"], init["c"])


def _gate_products(torch, p, v, kind):
    """The four gates' products W_g v (kind "W") or U_g v (kind "U") as one vector of 4H units (f, i, c, o)."""
    return torch.nn.functional.linear(v, torch.cat([p[f"{kind}_{g}"] for g in LSTM_GATES]))


def _run_semeniuta(torch, p, seq, init, dims):
    x, m = seq["x"], seq["m"]
    b = torch.cat([p[f"b_{g}"] for g in LSTM_GATES])

    def step(t, h, c):
        zf, zi, zc, zo = (_gate_products(torch, p, x[t], "W") + _gate_products(torch, p, h, "U") + b).chunk(4, -1)
        c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * (m[t] * torch.tanh(zc))
        return torch.sigmoid(zo) * torch.tanh(c), c

    return _stepped(torch, dims, x.shape[0], step, init["h"], init["c"])


LAYER_NORM_EPS = 1e-5  # the spec's eps (0.00001), PyTorch's layer_norm default


def _run_layer_norm(torch, p, seq, init, dims, eps=LAYER_NORM_EPS):
    ln = torch.nn.functional.layer_norm
    x = seq["x"]
    def cat(k):
        return torch.cat([p[f"{k}_{g}"] for g in LSTM_GATES])
    gx, gh, b = cat("gx"), cat("gh"), cat("b")
    H = p["b_f"].shape[0]

    def step(t, h, c):
        z = (ln(_gate_products(torch, p, x[t], "W"), (4 * H,), weight=gx, eps=eps)
             + ln(_gate_products(torch, p, h, "U"), (4 * H,), weight=gh, eps=eps) + b)
        zf, zi, zc, zo = z.chunk(4, -1)
        c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zc)
        return torch.sigmoid(zo) * torch.tanh(ln(c, (H,), weight=p["g_n"], bias=p["b_n"], eps=eps)), c

    return _stepped(torch, dims, x.shape[0], step, init["h"], init["c"])


TORCH_PROGRAMS: dict[str, TorchProgram] = {
    "lstm_stacked2_dropout": TorchProgram(_run_stacked2_dropout, "two single-layer nn.LSTM, the masks applied to "
                                          "the input and between them (nn.LSTM(num_layers=2, dropout=p)'s function)"),
    "lstm_variational_dropout": TorchProgram(_run_variational_dropout, "nn.LSTMCell stepped, fed x_t * m_x and "
                                             "(h_{t-1} * m_h, c_{t-1})"),
    "lstm_zoneout": TorchProgram(_run_zoneout, "nn.LSTMCell stepped, its new h and c mixed with the previous ones"),
    "lstm_semeniuta": TorchProgram(_run_semeniuta, "torch operations (PyTorch has no such cell)"),
    "lstm_layer_norm": TorchProgram(_run_layer_norm, "torch operations with torch.nn.functional.layer_norm over "
                                    "the 4H gate products and the H cell units (PyTorch has no such cell)"),
}


def _compare_program(module, inst, torch, program: TorchProgram):
    def leaf(a):
        return torch.tensor(a, dtype=torch.float64, requires_grad=True)
    ours = {k: leaf(v) for k, v in inst.params.items()}
    seq = {k: leaf(v) for k, v in inst.seq.items()}
    init = {k: leaf(v) for k, v in inst.init.items()}
    y, final = program.run(torch, ours, seq, init, inst.dims)
    loss = (y * torch.tensor(inst.dy)).sum()
    for s in init:
        loss = loss + (final[s] * torch.tensor(inst.d_final[s])).sum()
    loss.backward()
    def grad(t, like):
        return t.grad.numpy() if t.grad is not None else np.zeros_like(like)
    ours_y, ours_final, ours_g = run(module, inst)
    pairs = [("y", ours_y, y.detach().numpy())]
    pairs += [(f"{s}_T", ours_final[s], final[s].detach().numpy()) for s in init]
    pairs += [(k, ours_g[k], grad(seq[k], inst.seq[k])) for k in seq]
    pairs += [(f"{s}0", ours_g[f"{s}0"], grad(init[s], inst.init[s])) for s in init]
    pairs += [(k, ours_g[k], grad(ours[k], inst.params[k])) for k in inst.params]
    return pairs


def _compare(module, inst, torch, eq: TorchEquivalent, use_cell: bool, weights=None):
    from torch.func import functional_call

    dims = inst.dims
    T, B = dims["T"], dims["B"]
    def leaf(a):
        return torch.tensor(a, dtype=torch.float64, requires_grad=True)
    ours = {k: leaf(v) for k, v in inst.params.items()}
    x = leaf(inst.seq["x"])
    names = [s for group in eq.states for s in group]
    init = {s: leaf(inst.init[s]) for s in names}
    net = (eq.cell_module if use_cell else eq.sequence_module)(torch, dims).double()
    w = (weights or eq.weights)(torch, ours, dims, 7)
    if not use_cell:  # single-layer conversions name PyTorch's layer-0 weights without the suffix
        w = {k if k[-3:-1] == "_l" else f"{k}_l0": v for k, v in w.items()}
    if use_cell:
        state = tuple(init[g[0]] for g in eq.states)
        s = state if len(state) > 1 else state[0]
        ys = []
        for t in range(T):
            s = functional_call(net, w, (x[t], s))
            ys.append(s[0] if isinstance(s, tuple) else s)
        y = torch.stack(ys) if ys else torch.zeros((0, B, dims["H"]), dtype=torch.float64)
        final = dict(zip([g[0] for g in eq.states], s if isinstance(s, tuple) else (s,), strict=True))
    else:
        arg = tuple(torch.stack([init[s] for s in group]) for group in eq.states)
        y, out = functional_call(net, w, (x, arg if len(arg) > 1 else arg[0]))
        out = out if isinstance(out, tuple) else (out,)
        final = {s: out[gi][li] for gi, group in enumerate(eq.states) for li, s in enumerate(group)}
    if eq.head is not None:
        y = eq.head(torch, ours, y, inst)
    loss = (y * torch.tensor(inst.dy)).sum()
    for s in names:
        loss = loss + (final[s] * torch.tensor(inst.d_final[s])).sum()
    loss.backward()
    ours_y, ours_final, ours_g = run(module, inst)
    pairs = [("y", ours_y, y.detach().numpy())]
    pairs += [(f"{s}_T", ours_final[s], final[s].detach().numpy()) for s in names]
    pairs += [("x", ours_g["x"], x.grad.numpy())]
    pairs += [(f"{s}0", ours_g[f"{s}0"], init[s].grad.numpy()) for s in names]
    pairs += [(k, ours_g[k], ours[k].grad.numpy() if ours[k].grad is not None else np.zeros_like(inst.params[k]))
              for k in inst.params]
    return pairs


def check_torch(module, cell: str, shapes=None, seed: int = 0, weights=None, program=None) -> dict:
    """Returns {"error", "worst"}, or {"skipped": reason} when PyTorch has no such cell or is absent.
    ``weights`` replaces the conversion, ``program`` the PyTorch program of a cell in TORCH_PROGRAMS
    (negative controls build deliberately wrong ones)."""
    program = program or TORCH_PROGRAMS.get(cell)
    if program is None and cell not in TORCH_EQUIVALENTS:
        return {"skipped": f"PyTorch has no equivalent of cell {cell!r}"}
    if not torch_available():
        return {"skipped": f"PyTorch is not installed; {INSTALL}"}
    import torch

    if program is not None:
        ways = [(f"PyTorch program: {program.what}", lambda inst: _compare_program(module, inst, torch, program))]
    else:
        eq = TORCH_EQUIVALENTS[cell]
        ways = [("sequence module", lambda inst: _compare(module, inst, torch, eq, False, weights))]
        if eq.cell_module:
            ways.append(("cell stepped", lambda inst: _compare(module, inst, torch, eq, True, weights)))
    worst, where = 0.0, ""
    try:
        for k, shape in enumerate(shapes or SHAPES):
            inst = random_instance(module, shape, seed + 30 + k)
            for kind, compare in ways:
                for label, ours, theirs in compare(inst):
                    err = rel_error(ours, theirs)
                    if err > worst:
                        worst, where = err, f"{label} ({kind}; shape {shape})"
    except Exception as exc:
        return {"error": float("inf"), "worst": f"{type(exc).__name__}: {exc}"}
    return {"error": worst, "worst": where}
