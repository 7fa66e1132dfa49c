"""PyTorch adapter: ``nn.LSTM`` (bidirectional, several layers, sequence lengths through
``pack_padded_sequence``) and ``nn.LSTMCell`` stepped in a Python loop (forward and reverse), in
float32 and float64, with autograd gradients of every parameter, the input and the initial states.

PyTorch's layout: weight_ih (4H, D), weight_hh (4H, H), bias_ih and bias_hh (4H,) each, gates i, f, g, o;
h_0 / c_0 are (layers * directions, B, H) with index layer * directions + direction. The two biases
get a random split of our single bias (a bug that drops or doubles one of them shows). PyTorch has no
reverse-only nn.LSTM: the reverse case runs on nn.LSTMCell only.
"""

from __future__ import annotations

import numpy as np
import torch

from lstm_spec.layouts import GATES, from_stacked, to_torch_lstm

from ..problem import Case, Problem, slot_key
from ..targets import Target


def _ih(problem: Problem, k: int) -> np.ndarray:
    return np.concatenate([problem.bias_ih[k][f"b_{g}"] for g in GATES])


class TorchLSTM(Target):
    name = "torch"
    cells = ("lstm",)
    dtypes = ("float32", "float64")
    features = frozenset({"gradients", "reverse", "lengths", "bidirectional", "layers"})
    biases = 2
    variants = ("nn.LSTM", "nn.LSTMCell")

    def __init__(self):
        torch.set_num_threads(1)
        self.description = ("PyTorch nn.LSTM (bidirectional, 2 layers, packed sequences) and nn.LSTMCell "
                            "(stepped in a loop), CPU, autograd gradients")

    def versions(self) -> str:
        return f"torch {torch.__version__}"

    def supports(self, case: Case) -> str | None:
        why = super().supports(case)
        if why:
            return why
        if case.variant == "nn.LSTMCell" and (case.ndir != 1 or case.layers != 1 or case.lengths is not None):
            return "nn.LSTMCell: one layer, one direction, full length"
        if case.variant != "nn.LSTMCell" and case.direction == "reverse":
            return "nn.LSTM has no reverse-only direction (tested on nn.LSTMCell)"
        return None

    def run(self, problem: Problem) -> dict:
        if problem.case.variant == "nn.LSTMCell":
            return self._run_cell(problem)
        return self._run_lstm(problem)

    def _tensor(self, a, dtype):
        return torch.tensor(np.asarray(a), dtype=dtype, requires_grad=True)

    def _run_lstm(self, problem: Problem) -> dict:
        case = problem.case
        dt = torch.float64 if case.dtype == "float64" else torch.float32
        T, B, D, H = case.shape
        ndir = case.ndir
        net = torch.nn.LSTM(D, H, num_layers=case.layers, bidirectional=ndir == 2).to(dt)
        for k, slot in enumerate(case.slots):
            layer, d = divmod(k, ndir)
            sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
            tp = to_torch_lstm(problem.params[k], bias_ih=_ih(problem, k))
            with torch.no_grad():
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(net, kind + sfx).copy_(torch.tensor(tp[kind + "_l0"], dtype=dt))
        x = self._tensor(problem.x, dt)
        h0 = self._tensor(np.stack([problem.init[k]["h"] for k in range(len(case.slots))]), dt)
        c0 = self._tensor(np.stack([problem.init[k]["c"] for k in range(len(case.slots))]), dt)
        if problem.lengths is not None:
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(problem.lengths), enforce_sorted=False)
            out, (hn, cn) = net(packed, (h0, c0))
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
        else:
            y, (hn, cn) = net(x, (h0, c0))
        dh = np.stack([problem.d_final[k]["h"] for k in range(len(case.slots))])
        dc = np.stack([problem.d_final[k]["c"] for k in range(len(case.slots))])
        loss = (y * torch.tensor(problem.dy, dtype=dt)).sum() + (hn * torch.tensor(dh, dtype=dt)).sum() + (
            cn * torch.tensor(dc, dtype=dt)).sum()
        loss.backward()
        res = {"y": y.detach().numpy(), "d x": x.grad.numpy()}
        for k, slot in enumerate(case.slots):
            layer, d = divmod(k, ndir)
            sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
            res[slot_key("h_T", slot)] = hn[k].detach().numpy()
            res[slot_key("c_T", slot)] = cn[k].detach().numpy()
            res[slot_key("d h0", slot)] = h0.grad[k].numpy()
            res[slot_key("d c0", slot)] = c0.grad[k].numpy()
            g = {kind: getattr(net, kind + sfx).grad.numpy() for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            for side in ("ih", "hh"):
                canon = from_stacked({"W": g["weight_ih"], "U": g["weight_hh"], "b": g[f"bias_{side}"]}, GATES)
                for name, v in canon.items():
                    if name.startswith("b_"):
                        res[slot_key(f"d {name}({side})", slot)] = v
                    elif side == "ih":
                        res[slot_key(f"d {name}", slot)] = v
        return res

    def _run_cell(self, problem: Problem) -> dict:
        case = problem.case
        dt = torch.float64 if case.dtype == "float64" else torch.float32
        T, B, D, H = case.shape
        net = torch.nn.LSTMCell(D, H).to(dt)
        tp = to_torch_lstm(problem.params[0], bias_ih=_ih(problem, 0))
        with torch.no_grad():
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(net, kind).copy_(torch.tensor(tp[kind + "_l0"], dtype=dt))
        x = self._tensor(problem.x, dt)
        h0, c0 = self._tensor(problem.init[0]["h"], dt), self._tensor(problem.init[0]["c"], dt)
        h, c = h0, c0
        ys = [None] * T
        steps = range(T - 1, -1, -1) if case.direction == "reverse" else range(T)
        for t in steps:
            h, c = net(x[t], (h, c))
            ys[t] = h
        y = torch.stack(ys) if T else torch.zeros((0, B, H), dtype=dt)
        loss = (y * torch.tensor(problem.dy, dtype=dt)).sum() + (h * torch.tensor(problem.d_final[0]["h"], dtype=dt)).sum() + (
            c * torch.tensor(problem.d_final[0]["c"], dtype=dt)).sum()
        loss.backward()
        res = {"y": y.detach().numpy(), "h_T": h.detach().numpy(), "c_T": c.detach().numpy(), "d x": x.grad.numpy(),
               "d h0": h0.grad.numpy(), "d c0": c0.grad.numpy()}
        g = {kind: getattr(net, kind).grad.numpy() for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        for side in ("ih", "hh"):
            canon = from_stacked({"W": g["weight_ih"], "U": g["weight_hh"], "b": g[f"bias_{side}"]}, GATES)
            for name, v in canon.items():
                if name.startswith("b_"):
                    res[f"d {name}({side})"] = v
                elif side == "ih":
                    res[f"d {name}"] = v
        return res
