"""A per-sample loop LSTM trained on a loss averaged over the time steps.

Column vectors, one sample at a time, per-gate matrices W_g (H, D), U_g (H, H); time-major sequences. The
training loss is the mean over the T steps of a per-step loss, so the backward scales each step's incoming
output gradient by 1 / T before it enters the recurrence; the final-state gradients (from a loss on the last
state) are used as given.
"""
import numpy as np


def logistic(v):
    return np.exp(-np.logaddexp(0.0, -v))


class MeanOverTimeLSTM:
    conformance = {
        "cell": "lstm",
        "params": "per_gate",
        "transposed": False,
        "biases": 1,
        "batch_major": False,
        "name": "per-sample LSTM, loss averaged over time",
    }

    @staticmethod
    def _sample(p, xs, h, c):
        tape = []
        for x in xs:
            pre = {g: p[f"W_{g}"] @ x + p[f"U_{g}"] @ h + p[f"b_{g}"] for g in "fico"}
            f, i, o = logistic(pre["f"]), logistic(pre["i"]), logistic(pre["o"])
            g = np.tanh(pre["c"])
            c_next = f * c + i * g
            tape.append((x, h, c, f, i, g, o, np.tanh(c_next)))
            h, c = o * np.tanh(c_next), c_next
        return tape, h, c

    def forward(self, params, x, h0, c0):
        T, B, _ = x.shape
        y = np.zeros((T, B, h0.shape[1]), dtype=x.dtype)
        hT, cT = np.zeros_like(h0), np.zeros_like(c0)
        for b in range(B):
            tape, hT[b], cT[b] = self._sample(params, x[:, b], h0[b], c0[b])
            for t, rec in enumerate(tape):
                y[t, b] = rec[6] * rec[7]
        return y, (hT, cT)

    def backward(self, params, x, dy, d_final, h0, c0):
        T, B, _ = x.shape
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        gx, gh0, gc0 = np.zeros_like(x), np.zeros_like(h0), np.zeros_like(c0)
        for b in range(B):
            tape, _, _ = self._sample(params, x[:, b], h0[b], c0[b])
            dh, dc = d_final["h"][b].copy(), d_final["c"][b].copy()
            for t in reversed(range(T)):
                xt, hp, cp, f, i, g, o, tc = tape[t]
                dh = dh + dy[t, b] / T  # the mean over the steps
                dc = dc + dh * o * (1 - tc ** 2)
                dpre = {"f": dc * cp * f * (1 - f), "i": dc * g * i * (1 - i), "c": dc * i * (1 - g ** 2),
                        "o": dh * tc * o * (1 - o)}
                dh = np.zeros_like(dh)
                for k, d in dpre.items():
                    grads[f"W_{k}"] += np.outer(d, xt)
                    grads[f"U_{k}"] += np.outer(d, hp)
                    grads[f"b_{k}"] += d
                    gx[t, b] += params[f"W_{k}"].T @ d
                    dh += params[f"U_{k}"].T @ d
                dc = dc * f
            gh0[b], gc0[b] = dh, dc
        grads.update(x=gx, h0=gh0, c0=gc0)
        return grads
