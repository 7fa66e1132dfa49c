import numpy as np


class NumpyCombinedLSTM:  # hand-written: one kernel K (D+H, 4H) over [x, h], row vectors, gate blocks i, f, g, o
    conformance = {"cell": "lstm", "params": "combined", "concat": "xh", "transposed": True, "gate_order": "ifgo",
                   "bias_shape": "row", "name": "NumPy LSTM, combined kernel"}  # K: (D+H, 4H), b: (1, 4H)
    def forward(self, params, x, h0, c0):  # x (T, B, D), h0 and c0 (B, H)
        K, b, h, c, y, self.steps = params["W"], params["b"], h0, c0, [], []
        for xt in x:
            i, f, g, o = np.split((v := np.hstack([xt, h])) @ K + b, 4, axis=1)
            (i, f, o), g, cp = [1 / (1 + np.exp(-z)) for z in (i, f, o)], np.tanh(g), c
            y.append(h := o * (tc := np.tanh(c := f * c + i * g)))
            self.steps.append((v, i, f, g, o, cp, tc))
        return np.stack(y), (h, c)

    def backward(self, params, x, dy, d_final, h0, c0):
        K, D, dh, dc, _ = params["W"], x.shape[2], d_final["h"], d_final["c"], self.forward(params, x, h0, c0)
        dK, db, dx = np.zeros_like(K), np.zeros_like(params["b"]), np.zeros_like(x)
        for t, (v, i, f, g, o, cp, tc) in reversed(list(enumerate(self.steps))):
            dc = dc + (dh := dh + dy[t]) * o * (1 - tc * tc)
            dz = np.hstack([dc * g * i * (1 - i), dc * cp * f * (1 - f), dc * i * (1 - g * g), dh * tc * o * (1 - o)])
            dK, db, dv = dK + v.T @ dz, db + dz.sum(0, keepdims=True), dz @ K.T
            dx[t], dh, dc = dv[:, :D], dv[:, D:], dc * f
        return {"W": dK, "b": db, "x": dx, "h0": dh, "c0": dc}
