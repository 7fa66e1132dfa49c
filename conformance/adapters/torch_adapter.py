"""PyTorch adapter: ``nn.LSTM`` (bidirectional, several layers, sequence lengths through
``pack_padded_sequence``, ``proj_size`` for the ``projection`` cell), ``nn.LSTMCell`` stepped in a
Python loop (forward and reverse), and ``nn.GRU`` / ``nn.GRUCell`` for the ``gru_reset_after`` cell, in
float32 and float64, with autograd gradients of every parameter, the input and the initial states.

PyTorch's layout: weight_ih (4H, D), weight_hh (4H, H), bias_ih and bias_hh (4H,) each, gates i, f, g, o
(GRU: 3H, gates r, z, n; bias_ih's n block is our b_n, bias_hh's n block our b_hn, which sits inside
r * (W_hn h + b_hn)); with proj_size P: weight_hr (P, H) and weight_hh (4H, P). h_0 / c_0 are
(layers * directions, B, H) with index layer * directions + direction. The two biases get a random
split of our single bias, so a bug that drops or doubles one of them shows. PyTorch has no
reverse-only nn.LSTM: the reverse cases run on the cell APIs only.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from lstm_spec.layouts.gates import TORCH_GRU_ORDER, TORCH_LSTM_ORDER

from ..problem import Case, Problem, slot_key
from ..targets import Target
from . import available_cells

KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
ORDERS = {"lstm": TORCH_LSTM_ORDER, "projection": TORCH_LSTM_ORDER, "gru_reset_after": TORCH_GRU_ORDER}
MODULES = {"lstm": ("nn.LSTM", "nn.LSTMCell"), "projection": ("nn.LSTM",), "gru_reset_after": ("nn.GRU", "nn.GRUCell")}




def to_torch(cell: str, params: dict, bias_ih: dict) -> dict:
    """Canonical parameters of a cell -> PyTorch's weight_ih, weight_hh, bias_ih, bias_hh (and weight_hr)."""
    order = ORDERS[cell]
    def cat(kind):
        return np.concatenate([np.asarray(params[f"{kind}_{g}"]) for g in order])
    b = cat("b")
    ih = np.concatenate([np.asarray(bias_ih.get(f"b_{g}", params[f"b_{g}"])) for g in order])
    hh = b - ih
    if cell == "gru_reset_after":
        hh[2 * len(hh) // 3:] = params["b_hn"]
    out = {"weight_ih": cat("W"), "weight_hh": cat("U"), "bias_ih": ih, "bias_hh": hh}
    if "W_hr" in params:
        out["weight_hr"] = np.asarray(params["W_hr"])
    return out


def from_torch_grads(cell: str, g: dict, slot: str = "") -> dict:
    """PyTorch gradients -> our quantity names (two-sided biases as 'd b_g(ih)' / 'd b_g(hh)')."""
    order = ORDERS[cell]
    n = len(order)
    res = {}
    for kind, ours in (("weight_ih", "W"), ("weight_hh", "U")):
        for gate, blk in zip(order, np.split(g[kind], n), strict=True):
            res[slot_key(f"d {ours}_{gate}", slot)] = blk
    for side in ("ih", "hh"):
        for gate, blk in zip(order, np.split(g[f"bias_{side}"], n), strict=True):
            if cell == "gru_reset_after" and gate == "n":
                res[slot_key("d b_n" if side == "ih" else "d b_hn", slot)] = blk
            else:
                res[slot_key(f"d b_{gate}({side})", slot)] = blk
    if "weight_hr" in g:
        res[slot_key("d W_hr", slot)] = g["weight_hr"]
    return res


class TorchLSTM(Target):
    name = "torch"
    dtypes = ("float32", "float64")
    features = frozenset({"gradients", "reverse", "lengths", "bidirectional", "layers"})
    biases = 2

    def __init__(self):
        torch.set_num_threads(1)
        warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
        self.cells = available_cells(ORDERS)
        self.variants = ("module", "cell")
        self.description = ("PyTorch nn.LSTM (bidirectional, 2 layers, packed sequences, proj_size), nn.LSTMCell "
                            "stepped in a loop, nn.GRU and nn.GRUCell; CPU, autograd gradients; cells "
                            + ", ".join(self.cells))

    def versions(self) -> str:
        return f"torch {torch.__version__}"

    def api(self, case: Case) -> str:
        mods = MODULES[case.cell]
        return mods[1] if case.variant == "cell" and len(mods) > 1 else mods[0]

    def supports(self, case: Case) -> str | None:
        why = super().supports(case)
        if why:
            return why
        if case.variant == "cell":
            if len(MODULES[case.cell]) < 2:
                return f"no cell API for {case.cell}"
            if case.ndir != 1 or case.layers != 1 or case.lengths is not None:
                return "cell API: one layer, one direction, full length"
        elif case.direction == "reverse":
            return f"{self.api(case)} has no reverse-only direction (tested on the cell API)"
        return None

    def run(self, problem: Problem) -> dict:
        if problem.case.variant == "cell":
            return self._run_cell(problem)
        return self._run_module(problem)

    @staticmethod
    def _t(a, dtype, grad=True):
        return torch.tensor(np.asarray(a), dtype=dtype, requires_grad=grad)

    def _run_module(self, problem: Problem) -> dict:
        case = problem.case
        dt = torch.float64 if case.dtype == "float64" else torch.float32
        T, B, D, _ = case.shape
        ndir, states = case.ndir, problem.states
        cell = case.cell
        H = problem.params[0][f"U_{ORDERS[cell][0]}"].shape[0]
        if cell == "gru_reset_after":
            net = torch.nn.GRU(D, H, num_layers=case.layers, bidirectional=ndir == 2)
        else:
            P = problem.output_size if cell == "projection" else 0
            net = torch.nn.LSTM(D, H, num_layers=case.layers, bidirectional=ndir == 2, proj_size=P)
        net = net.to(dt)
        def sfx(k):
            return f"_l{k // ndir}" + ("_reverse" if k % ndir else "")
        for k in range(len(case.slots)):
            for kind, a in to_torch(cell, problem.params[k], problem.bias_ih[k]).items():
                with torch.no_grad():
                    getattr(net, kind + sfx(k)).copy_(torch.tensor(a, dtype=dt))
        x = self._t(problem.x, dt)
        init = {s: self._t(np.stack([problem.init[k][s] for k in range(len(case.slots))]), dt) for s in states}
        hx = init["h"] if cell == "gru_reset_after" else (init["h"], init["c"])
        inp = x
        if problem.lengths is not None:
            inp = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(problem.lengths), enforce_sorted=False)
        out, fin = net(inp, hx)
        if problem.lengths is not None:
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
        final = {"h": fin} if cell == "gru_reset_after" else {"h": fin[0], "c": fin[1]}
        loss = (out * torch.tensor(problem.dy, dtype=dt)).sum()
        for s in states:
            ds = np.stack([problem.d_final[k][s] for k in range(len(case.slots))])
            loss = loss + (final[s] * torch.tensor(ds, dtype=dt)).sum()
        loss.backward()
        res = {"y": out.detach().numpy(), "d x": x.grad.numpy()}
        for k, slot in enumerate(case.slots):
            for s in states:
                res[slot_key(f"{s}_T", slot)] = final[s][k].detach().numpy()
                res[slot_key(f"d {s}0", slot)] = init[s].grad[k].numpy()
            kinds = KINDS + (("weight_hr",) if cell == "projection" else ())
            res.update(from_torch_grads(cell, {kd: getattr(net, kd + sfx(k)).grad.numpy() for kd in kinds}, slot))
        return res

    def _run_cell(self, problem: Problem) -> dict:
        case = problem.case
        dt = torch.float64 if case.dtype == "float64" else torch.float32
        T, B, D, _ = case.shape
        cell = case.cell
        H = problem.params[0][f"U_{ORDERS[cell][0]}"].shape[0]
        net = (torch.nn.GRUCell(D, H) if cell == "gru_reset_after" else torch.nn.LSTMCell(D, H)).to(dt)
        for kind, a in to_torch(cell, problem.params[0], problem.bias_ih[0]).items():
            with torch.no_grad():
                getattr(net, kind).copy_(torch.tensor(a, dtype=dt))
        x = self._t(problem.x, dt)
        init = {s: self._t(problem.init[0][s], dt) for s in problem.states}
        state = init["h"] if cell == "gru_reset_after" else (init["h"], init["c"])
        ys = [None] * T
        for t in (range(T - 1, -1, -1) if case.direction == "reverse" else range(T)):
            state = net(x[t], state)
            ys[t] = state if cell == "gru_reset_after" else state[0]
        final = {"h": state} if cell == "gru_reset_after" else {"h": state[0], "c": state[1]}
        y = torch.stack(ys)
        loss = (y * torch.tensor(problem.dy, dtype=dt)).sum()
        for s in problem.states:
            loss = loss + (final[s] * torch.tensor(problem.d_final[0][s], dtype=dt)).sum()
        loss.backward()
        res = {"y": y.detach().numpy(), "d x": x.grad.numpy()}
        for s in problem.states:
            res[f"{s}_T"] = final[s].detach().numpy()
            res[f"d {s}0"] = init[s].grad.numpy()
        res.update(from_torch_grads(cell, {kd: getattr(net, kd).grad.numpy() for kd in KINDS}))
        return res
