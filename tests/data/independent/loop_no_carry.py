"""A small, readable LSTM in plain NumPy, one sample at a time.

Written for teaching: no vectorisation over the batch, row vectors everywhere
(``a = x_t @ W + h @ U + b``), and the four gate blocks laid out the way PyTorch
does it: input, forget, cell candidate ("g"), output. Arrays are batch-major,
W is (D, 4H) and U is (H, 4H).
"""
import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


class StepwiseLSTM:
    conformance = {
        "cell": "lstm",
        "params": "stacked",
        "gate_order": ("i", "f", "c", "o"),
        "transposed": True,
        "biases": 1,
        "batch_major": True,
        "dtypes": ["float32", "float64"],
        "name": "per-sample LSTM, step-local backward",
    }

    def step(self, W, U, b, x_t, h, c):
        H = h.shape[0]
        a = x_t @ W + h @ U + b
        i = sigmoid(a[0:H])
        f = sigmoid(a[H:2 * H])
        g = np.tanh(a[2 * H:3 * H])
        o = sigmoid(a[3 * H:4 * H])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        return h_new, c_new, (x_t, h, c, i, f, g, o, c_new)

    def run(self, params, x, h0, c0):
        W, U, b = params["W"], params["U"], params["b"]
        B, T, _ = x.shape
        H = h0.shape[1]
        y = np.zeros((B, T, H), dtype=x.dtype)
        hT = np.zeros((B, H), dtype=x.dtype)
        cT = np.zeros((B, H), dtype=x.dtype)
        tape = []
        for n in range(B):
            h, c = h0[n], c0[n]
            steps = []
            for t in range(T):
                h, c, saved = self.step(W, U, b, x[n, t], h, c)
                y[n, t] = h
                steps.append(saved)
            hT[n], cT[n] = h, c
            tape.append(steps)
        return y, (hT, cT), tape

    def forward(self, params, x, h0, c0):
        y, final, _ = self.run(params, x, h0, c0)
        return y, final

    def backward(self, params, x, dy, d_final, h0, c0):
        W, U = params["W"], params["U"]
        _, _, tape = self.run(params, x, h0, c0)
        B, T, _ = x.shape
        dW, dU = np.zeros_like(W), np.zeros_like(U)
        db = np.zeros_like(params["b"])
        dx = np.zeros_like(x)
        dh0, dc0 = np.zeros_like(h0), np.zeros_like(c0)
        for n in range(B):
            dh_next = d_final["h"][n].copy()
            dc_next = d_final["c"][n].copy()
            for t in reversed(range(T)):
                x_t, h_prev, c_prev, i, f, g, o, c = tape[n][t]
                dh = dy[n, t] + dh_next
                tc = np.tanh(c)
                do = dh * tc
                dc = dc_next + dh * o * (1 - tc ** 2)
                di = dc * g
                dg = dc * i
                df = dc * c_prev
                da = np.concatenate([di * i * (1 - i), df * f * (1 - f),
                                     dg * (1 - g ** 2), do * o * (1 - o)])
                dW += np.outer(x_t, da)
                dU += np.outer(h_prev, da)
                db += da
                dx[n, t] = da @ W.T
                dh_prev = da @ U.T
                dc_prev = dc * f
            dh0[n], dc0[n] = dh_prev, dc_prev
        return {"W": dW, "U": dU, "b": db, "x": dx, "h0": dh0, "c0": dc0}
