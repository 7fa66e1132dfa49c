"""A sequence regressor's LSTM, trained on a squared error it computes itself.

The model keeps its states as column vectors (H, B), one matrix per gate
(W_f is (H, D), U_f is (H, H)), and saves memory in training by storing only
x_t, h_{t-1} and c_{t-1} per step: the gates are recomputed in the backward
pass. ``loss_and_grads`` is what the training loop calls; ``backward`` wraps it
for callers that hand in an output cotangent instead of targets (a target of
y - dy makes the squared error's gradient with respect to y exactly dy).
"""
import numpy as np


def sigm(a):
    return 1.0 / (1.0 + np.exp(-a))


class SeqRegressorLSTM:
    conformance = {
        "cell": "lstm",
        "params": "per_gate",
        "transposed": False,
        "biases": 1,
        "batch_major": False,
        "name": "regressor LSTM with an internal squared-error loss",
    }

    @staticmethod
    def gates(p, x_t, h_prev):
        f = sigm(p["W_f"] @ x_t + p["U_f"] @ h_prev + p["b_f"][:, None])
        i = sigm(p["W_i"] @ x_t + p["U_i"] @ h_prev + p["b_i"][:, None])
        g = np.tanh(p["W_c"] @ x_t + p["U_c"] @ h_prev + p["b_c"][:, None])
        o = sigm(p["W_o"] @ x_t + p["U_o"] @ h_prev + p["b_o"][:, None])
        return f, i, g, o

    def predict(self, p, x, h0, c0):
        h, c = h0.T, c0.T
        outs, stash = [], []
        for t in range(x.shape[0]):
            x_t = x[t].T
            stash.append((x_t, h, c))
            f, i, g, o = self.gates(p, x_t, h)
            c = f * c + i * g
            h = o * np.tanh(c)
            outs.append(h.T)
        return np.stack(outs), h, c, stash

    def forward(self, params, x, h0, c0):
        y, h, c, _ = self.predict(params, x, h0, c0)
        return y, (h.T, c.T)

    def loss_and_grads(self, p, x, targets, h0, c0, dh_last=None, dc_last=None):
        y, h, c, stash = self.predict(p, x, h0, c0)
        err = y - targets
        loss = 0.5 * np.sum(err ** 2)
        grads = {k: np.zeros_like(v) for k, v in p.items()}
        dx = np.zeros_like(x)
        dh_next = np.zeros_like(h) if dh_last is None else dh_last.T
        dc_next = np.zeros_like(c) if dc_last is None else dc_last.T
        for t in range(x.shape[0] - 1, -1, -1):
            x_t, h_prev, c_prev = stash[t]
            f, i, g, o = self.gates(p, x_t, h_prev)
            c_t = f * c_prev + i * g
            dh = err[t].T + dh_next
            dc = dc_next + dh * o * (1 - np.tanh(c_t) ** 2)
            dz = {"f": dc * c_prev * f * (1 - f), "i": dc * g * i * (1 - i),
                  "c": dc * i * (1 - g ** 2), "o": dh * np.tanh(c_t) * o * (1 - o)}
            dh_next = np.zeros_like(dh)
            for k, d in dz.items():
                grads["W_" + k] += d @ x_t.T
                grads["U_" + k] += d @ h_prev.T
                grads["b_" + k] += d.sum(axis=1)
                dh_next += p["U_" + k].T @ d
                dx[t] += (p["W_" + k].T @ d).T
            dc_next = dc * f
        grads.update(x=dx, h0=dh_next.T, c0=dc_next.T)
        return loss, grads

    def backward(self, params, x, dy, d_final, h0, c0):
        y, _ = self.forward(params, x, h0, c0)
        _, grads = self.loss_and_grads(params, x, y - dy, h0, c0,
                                       dh_last=d_final["h"], dc_last=d_final["c"])
        return grads
