"""A minimal conformance target: a NumPy LSTM, forward pass only, one array per gate as in the spec."""
import numpy as np


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


class MyLSTM:
    conformance = {"cell": "lstm", "params": "per_gate"}  # W_f, U_f, b_f, W_i, ... as in spec/lstm.toml

    def forward(self, params, x, h0, c0):  # x: (T, B, D); h0, c0: (B, H)
        h, c, ys = h0, c0, []
        for x_t in x:
            z = {g: x_t @ params[f"W_{g}"].T + h @ params[f"U_{g}"].T + params[f"b_{g}"] for g in "fico"}
            c = sigmoid(z["f"]) * c + sigmoid(z["i"]) * np.tanh(z["c"])
            h = sigmoid(z["o"]) * np.tanh(c)
            ys.append(h)
        return np.stack(ys), (h, c)  # y: (T, B, H); the final states (B, H)
