"""Hand-written BPTT for a PyTorch-layout LSTM, to check our training code.

Parameters exactly as ``nn.LSTM`` stores them for one layer: weight_ih (4H, D),
weight_hh (4H, H), bias_ih and bias_hh, gate order i, f, g, o. Inputs are
time-major (seq_len, batch, features). The forward keeps a list of per-step
tuples; the backward walks it in reverse and returns gradients under the
protocol's names.
"""
import numpy as np


def sigmoid(x):
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


class TorchLayoutLSTM:
    conformance = {
        "cell": "lstm",
        "params": "stacked",
        "gate_order": ("i", "f", "c", "o"),
        "transposed": False,
        "biases": 2,
        "batch_major": False,
        "name": "PyTorch-layout LSTM with hand-written BPTT",
    }

    def forward(self, params, x, h0, c0):
        out, (h, c), _ = self._fwd(params, x, h0, c0)
        return out, (h, c)

    def _fwd(self, params, x, h0, c0):
        w_ih, w_hh = params["W"], params["U"]
        b = params["b_ih"] + params["b_hh"]
        h, c = h0, c0
        ctx, out = [], []
        for x_t in x:
            gates = x_t @ w_ih.T + h @ w_hh.T + b
            i, f, g, o = np.split(gates, 4, axis=1)
            i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
            c_next = f * c + i * g
            h_next = o * np.tanh(c_next)
            ctx.append((x_t, h, c, i, f, g, o, c_next))
            h, c = h_next, c_next
            out.append(h)
        return np.stack(out), (h, c), ctx

    def backward(self, params, x, dy, d_final, h0, c0):
        w_ih, w_hh = params["W"], params["U"]
        _, _, ctx = self._fwd(params, x, h0, c0)
        grad_w_ih = np.zeros_like(w_ih)
        grad_w_hh = np.zeros_like(w_hh)
        grad_b = np.zeros_like(params["b_ih"])
        grad_x = np.empty_like(x)
        dh, dc = d_final["h"], d_final["c"]
        for t in reversed(range(len(ctx))):
            x_t, h_prev, c_prev, i, f, g, o, c_t = ctx[t]
            dh = dh + dy[t]
            tanh_c = np.tanh(c_t)
            dc = dc + dh * o * (1 - tanh_c ** 2)
            d_gates = np.concatenate([
                dc * g * i * (1 - i),
                dc * c_prev * f * (1 - f),
                dc * i * (1 - g ** 2),
                dh * tanh_c * o * (1 - o),
            ], axis=1)
            grad_w_ih += d_gates.T @ x_t
            grad_w_hh += d_gates.T @ h_prev
            grad_b += d_gates.sum(axis=0)
            grad_x[t] = d_gates @ w_ih
            dh = d_gates @ w_hh
            dc = dc * f
        return {"W": grad_w_ih, "U": grad_w_hh, "b_ih": grad_b, "b_hh": grad_b.copy(),
                "x": grad_x, "h0": dh, "c0": dc}
