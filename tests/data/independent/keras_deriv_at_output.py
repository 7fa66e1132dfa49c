"""Keras-flavoured LSTM: one (in, out) kernel per gate, batch-major sequences.

Parameters are kept per gate the way one reads them off a Keras layer after
splitting its kernel: W_g is (D, H), U_g is (H, H), b_g is (H,), and the layer
works on row vectors over the whole batch at once. The backward pass keeps its
intermediate values in dicts keyed by name.
"""
import numpy as np

GATES = ("i", "f", "c", "o")


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def dsigmoid(a):
    s = sigmoid(a)
    return s * (1 - s)


class KerasGateLSTM:
    conformance = {
        "cell": "lstm",
        "params": "per_gate",
        "transposed": True,
        "biases": 1,
        "batch_major": True,
        "dtypes": ["float32", "float64"],
        "name": "Keras-style LSTM with derivative helpers",
    }

    def _cell(self, p, x_t, h_prev, c_prev):
        pre = {g: x_t @ p["W_" + g] + h_prev @ p["U_" + g] + p["b_" + g] for g in GATES}
        act = {g: np.tanh(pre[g]) if g == "c" else sigmoid(pre[g]) for g in GATES}
        c = act["f"] * c_prev + act["i"] * act["c"]
        h = act["o"] * np.tanh(c)
        return h, c, {"x": x_t, "h_prev": h_prev, "c_prev": c_prev, "act": act, "c": c}

    def _unroll(self, params, x, h0, c0):
        h, c = h0, c0
        outputs, records = [], []
        for t in range(x.shape[1]):
            h, c, rec = self._cell(params, x[:, t, :], h, c)
            outputs.append(h)
            records.append(rec)
        return np.stack(outputs, axis=1), h, c, records

    def forward(self, params, x, h0, c0):
        y, h, c, _ = self._unroll(params, x, h0, c0)
        return y, {"h": h, "c": c}

    def backward(self, params, x, dy, d_final, h0, c0):
        _, _, _, records = self._unroll(params, x, h0, c0)
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        grads["x"] = np.zeros_like(x)
        dh_next, dc_next = d_final["h"], d_final["c"]
        for t in reversed(range(len(records))):
            r = records[t]
            a = r["act"]
            dh = dy[:, t, :] + dh_next
            tanh_c = np.tanh(r["c"])
            dc = dc_next + dh * a["o"] * (1 - tanh_c ** 2)
            dpre = {
                "i": dc * a["c"] * a["i"] * (1 - a["i"]),
                "f": dc * r["c_prev"] * a["f"] * (1 - a["f"]),
                "c": dc * a["i"] * (1 - a["c"] ** 2),
                "o": dh * tanh_c * dsigmoid(a["o"]),
            }
            dh_next = np.zeros_like(dh)
            dx_t = np.zeros_like(r["x"])
            for g in GATES:
                grads["W_" + g] += r["x"].T @ dpre[g]
                grads["U_" + g] += r["h_prev"].T @ dpre[g]
                grads["b_" + g] += dpre[g].sum(axis=0)
                dh_next = dh_next + dpre[g] @ params["U_" + g].T
                dx_t = dx_t + dpre[g] @ params["W_" + g].T
            grads["x"][:, t, :] = dx_t
            dc_next = dc * a["f"]
        grads["h0"], grads["c0"] = dh_next, dc_next
        return grads
