"""(d) PyTorch: nn.LSTM and nn.LSTMCell in float64, weights converted from our layout with the
biases split at random between bias_ih and bias_hh, agree with the reference on outputs and on the
gradients of every parameter, x, h0 and c0."""

from __future__ import annotations

import numpy as np

from lstm_spec.layouts import GATES, from_stacked, to_torch_lstm

from .cases import SHAPES, random_instance, rel_error, run

INSTALL = 'pip install "lstm-spec[torch]"  (torch==2.13.0, the CPU build)'


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _compare_lstm(module, inst, torch, use_cell: bool):
    T, B = inst.dims["T"], inst.dims["B"]
    D, H = inst.dims["D"], inst.dims["H"]
    rng = np.random.default_rng(7)
    split = rng.standard_normal(4 * H)
    tp = to_torch_lstm(inst.params, bias_ih=split)
    t = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True)  # noqa: E731
    x, h0, c0 = t(inst.seq["x"]), t(inst.init["h"]), t(inst.init["c"])
    net = torch.nn.LSTMCell(D, H).double() if use_cell else torch.nn.LSTM(D, H).double()
    suffix = "" if use_cell else "_l0"
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    with torch.no_grad():
        for k in kinds:
            getattr(net, k + suffix).copy_(torch.tensor(tp[k + "_l0"]))
    if use_cell:
        h, c, ys = h0, c0, []
        for step in range(T):
            h, c = net(x[step], (h, c))
            ys.append(h)
        y = torch.stack(ys) if ys else torch.zeros((0, B, H), dtype=torch.float64)
        hT, cT = h, c
    else:
        y, (hT, cT) = net(x, (h0[None], c0[None]))
        hT, cT = hT[0], cT[0]
    loss = (y * torch.tensor(inst.dy)).sum() + (hT * torch.tensor(inst.d_final["h"])).sum() + (
        cT * torch.tensor(inst.d_final["c"])).sum()
    loss.backward()
    g = {k: getattr(net, k + suffix).grad.numpy() for k in kinds}
    ours_y, ours_final, ours_g = run(module, inst)
    pairs = [("y", ours_y, y.detach().numpy()), ("h_T", ours_final["h"], hT.detach().numpy()),
             ("c_T", ours_final["c"], cT.detach().numpy()),
             ("x", ours_g["x"], x.grad.numpy()), ("h0", ours_g["h0"], h0.grad.numpy()),
             ("c0", ours_g["c0"], c0.grad.numpy())]
    # both PyTorch biases receive the gradient of our single bias
    for bias in ("bias_ih", "bias_hh"):
        theirs = from_stacked({"W": g["weight_ih"], "U": g["weight_hh"], "b": g[bias]}, GATES)
        pairs += [(k if bias == "bias_ih" or not k.startswith("b_") else f"{k} (as {bias})", ours_g[k], theirs[k])
                  for k in theirs if bias == "bias_ih" or k.startswith("b_")]
    return pairs


def check_torch(module, cell: str, shapes=None, seed: int = 0) -> dict:
    """Returns {"error", "worst"}, or {"skipped": reason} when PyTorch has no such cell or is absent."""
    if cell not in TORCH_EQUIVALENTS:
        return {"skipped": f"PyTorch has no equivalent of cell {cell!r}"}
    if not torch_available():
        return {"skipped": f"PyTorch is not installed; {INSTALL}"}
    import torch

    shapes = shapes or SHAPES
    worst, where = 0.0, ""
    try:
        for k, shape in enumerate(shapes):
            inst = random_instance(module, shape, seed + 30 + k)
            for use_cell in (False, True):
                for label, ours, theirs in TORCH_EQUIVALENTS[cell](module, inst, torch, use_cell):
                    err = rel_error(ours, theirs)
                    if err > worst:
                        worst, where = err, f"{label} ({'nn.LSTMCell' if use_cell else 'nn.LSTM'}, shape {shape})"
    except Exception as exc:
        return {"error": float("inf"), "worst": f"{type(exc).__name__}: {exc}"}
    return {"error": worst, "worst": where}


TORCH_EQUIVALENTS = {"lstm": _compare_lstm}
