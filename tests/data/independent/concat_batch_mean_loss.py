"""A fused-kernel LSTM whose training loss is the mean over the batch.

One kernel K (4H, D + H) over the concatenation [x; h], gate blocks in TensorFlow's order i, c (j), f, o, column
vectors (H, B), time-major. The loss is averaged over the batch, so every gradient the backward returns (the
kernel, the bias, the inputs and the initial states) carries a factor 1 / B.
"""
import numpy as np


def sigm(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))


class BatchMeanLSTM:
    conformance = {
        "cell": "lstm",
        "params": "stacked",
        "gate_order": ("i", "c", "f", "o"),
        "transposed": False,
        "biases": 1,
        "batch_major": False,
        "name": "fused [x; h] kernel LSTM, loss averaged over the batch",
    }

    def _go(self, params, x, h0, c0):
        K = np.concatenate([params["W"], params["U"]], axis=1)
        bias = params["b"][:, None]
        n = params["U"].shape[1]
        h, c = h0.T, c0.T
        hist = []
        for x_t in x:
            v = np.concatenate([x_t.T, h], axis=0)
            a = K @ v + bias
            i, j, f, o = sigm(a[:n]), np.tanh(a[n:2 * n]), sigm(a[2 * n:3 * n]), sigm(a[3 * n:])
            c_new = f * c + i * j
            hist.append((v, c, i, j, f, o, np.tanh(c_new)))
            h, c = o * np.tanh(c_new), c_new
        return K, hist, h, c

    def forward(self, params, x, h0, c0):
        _, hist, h, c = self._go(params, x, h0, c0)
        return np.stack([(r[5] * r[6]).T for r in hist]), {"h": h.T, "c": c.T}

    def backward(self, params, x, dy, d_final, h0, c0):
        K, hist, _, _ = self._go(params, x, h0, c0)
        D, batch = x.shape[2], x.shape[1]
        dK, db = np.zeros_like(K), np.zeros(K.shape[0])
        dx = np.zeros_like(x)
        dh, dc = d_final["h"].T, d_final["c"].T
        for t in range(len(hist) - 1, -1, -1):
            v, c_prev, i, j, f, o, tc = hist[t]
            dh = dh + dy[t].T
            dc = dc + dh * o * (1 - tc * tc)
            da = np.concatenate([dc * j * i * (1 - i), dc * i * (1 - j * j), dc * c_prev * f * (1 - f),
                                 dh * tc * o * (1 - o)], axis=0)
            dK += da @ v.T
            db += da.sum(axis=1)
            dv = K.T @ da
            dx[t] = dv[:D].T
            dh, dc = dv[D:], dc * f
        scale = 1.0 / batch  # loss.mean() over the batch
        return {"W": scale * dK[:, :D], "U": scale * dK[:, D:], "b": scale * db, "x": scale * dx,
                "h0": scale * dh.T, "c0": scale * dc.T}
