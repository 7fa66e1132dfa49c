"""An LSTM that follows the ONNX operator's conventions, in NumPy.

Weights as in the ONNX LSTM operator: W is (4H, D) and R is (4H, H) with the
gate blocks in the order i, o, f, c, and two bias vectors Wb and Rb that are
both added. Sequences are time-major, and an optional ``sequence_lens`` style
``lengths`` argument stops each batch row at its own length: padded outputs are
zero and the returned states are those after the last valid step.
"""
import numpy as np


def logistic(v):
    return 1.0 / (1.0 + np.exp(-v))


def split4(a):
    return np.split(a, 4, axis=-1)


class OnnxStyleLSTM:
    conformance = {
        "cell": "lstm",
        "params": "stacked",
        "gate_order": ("i", "o", "f", "c"),
        "transposed": False,
        "biases": 2,
        "batch_major": False,
        "features": ["lengths"],
        "name": "ONNX-convention LSTM (i o f c, Wb + Rb)",
    }

    def _scan(self, params, x, h0, c0, lengths):
        W, R = params["W"], params["U"]
        bias = params["b_ih"] + params["b_hh"]
        T, B, _ = x.shape
        if lengths is None:
            lengths = np.full(B, T)
        Y = np.zeros((T, B, h0.shape[1]), dtype=x.dtype)
        h, c = h0, c0
        saved = []
        for t in range(T):
            m = (t < np.asarray(lengths))[:, None].astype(x.dtype)
            i, o, f, z = split4(x[t] @ W.T + h @ R.T + bias)
            i, o, f, z = logistic(i), logistic(o), logistic(f), np.tanh(z)
            c_new = f * c + i * z
            h_new = o * np.tanh(c_new)
            saved.append((m, h, c, i, o, f, z, c_new))
            Y[t] = m * h_new
            h = m * h_new + (1 - m) * h
            c = m * c_new + (1 - m) * c
        return Y, h, c, saved

    def forward(self, params, x, h0, c0, lengths=None):
        Y, h, c, _ = self._scan(params, x, h0, c0, lengths)
        return Y, (h, c)

    def backward(self, params, x, dy, d_final, h0, c0, lengths=None):
        W, R = params["W"], params["U"]
        _, _, _, saved = self._scan(params, x, h0, c0, lengths)
        dW, dR = np.zeros_like(W), np.zeros_like(R)
        dbias = np.zeros_like(params["b_ih"])
        dX = np.zeros_like(x)
        dh, dc = d_final["h"], d_final["c"]
        for t in reversed(range(x.shape[0])):
            m, h_prev, c_prev, i, o, f, z, c = saved[t]
            dh_cell = m * (dh + dy[t])
            dc_cell = m * dc
            tc = np.tanh(c)
            dc_cell = dc_cell + dh_cell * o * (1 - tc ** 2)
            dg = np.concatenate([
                dc_cell * z * i * (1 - i),
                dh_cell * tc * o * (1 - o),
                dc_cell * c_prev * f * (1 - f),
                dc_cell * i * (1 - z ** 2),
            ], axis=-1)
            dW += dg.T @ x[t]
            dR += dg.T @ h_prev
            dbias += dg.sum(axis=0)
            dX[t] = dg @ W
            dh = (1 - m) * dh + dg @ R
            dc = (1 - m) * dc + dc_cell * f
        return {"W": dW, "U": dR, "b_ih": dbias, "b_hh": dbias.copy(),
                "x": dX, "h0": dh, "c0": dc}
