"""A Keras-2-style LSTM with recurrent_activation='hard_sigmoid' (Keras 2's default before 2.3).

One stacked kernel (D, 4H) and recurrent kernel (H, 4H) in Keras' gate order i, f, c, o; row vectors over the
batch; batch-major sequences. The three gates use Keras 2's hard sigmoid, clip(0.2 a + 0.5, 0, 1), and the
backward pass uses its derivative (0.2 inside the linear piece, 0 where it saturates), so the gradients are
those of this forward. The candidate and the cell output use tanh.
"""
import numpy as np


def hard_sigmoid(a):
    return np.clip(0.2 * a + 0.5, 0.0, 1.0)


def hard_sigmoid_grad(a):
    return np.where((a > -2.5) & (a < 2.5), 0.2, 0.0)


class HardSigmoidLSTM:
    conformance = {
        "cell": "lstm",
        "params": "stacked",
        "gate_order": ("i", "f", "c", "o"),
        "transposed": True,
        "biases": 1,
        "batch_major": True,
        "name": "Keras 2 LSTM, recurrent_activation='hard_sigmoid'",
    }

    def _run(self, params, x, h0, c0):
        kernel, recurrent, bias = params["W"], params["U"], params["b"]
        units = recurrent.shape[0]
        h, c = h0, c0
        seq, steps = [], []
        for t in range(x.shape[1]):
            z = x[:, t] @ kernel + h @ recurrent + bias
            zi, zf, zc, zo = (z[:, k * units:(k + 1) * units] for k in range(4))
            i, f, o = hard_sigmoid(zi), hard_sigmoid(zf), hard_sigmoid(zo)
            cand = np.tanh(zc)
            c_new = f * c + i * cand
            h_new = o * np.tanh(c_new)
            steps.append(dict(x=x[:, t], h=h, c=c, zi=zi, zf=zf, zo=zo, i=i, f=f, o=o, cand=cand, c_new=c_new))
            seq.append(h_new)
            h, c = h_new, c_new
        return np.stack(seq, axis=1), h, c, steps

    def forward(self, params, x, h0, c0):
        y, h, c, _ = self._run(params, x, h0, c0)
        return y, {"h": h, "c": c}

    def backward(self, params, x, dy, d_final, h0, c0):
        kernel, recurrent = params["W"], params["U"]
        _, _, _, steps = self._run(params, x, h0, c0)
        g_kernel, g_recurrent = np.zeros_like(kernel), np.zeros_like(recurrent)
        g_bias = np.zeros_like(params["b"])
        g_x = np.zeros_like(x)
        dh, dc = d_final["h"], d_final["c"]
        for t in range(len(steps) - 1, -1, -1):
            s = steps[t]
            dh = dh + dy[:, t]
            th = np.tanh(s["c_new"])
            dc = dc + dh * s["o"] * (1.0 - th * th)
            dz = np.concatenate([
                dc * s["cand"] * hard_sigmoid_grad(s["zi"]),
                dc * s["c"] * hard_sigmoid_grad(s["zf"]),
                dc * s["i"] * (1.0 - s["cand"] ** 2),
                dh * th * hard_sigmoid_grad(s["zo"]),
            ], axis=1)
            g_kernel += s["x"].T @ dz
            g_recurrent += s["h"].T @ dz
            g_bias += dz.sum(axis=0)
            g_x[:, t] = dz @ kernel.T
            dh = dz @ recurrent.T
            dc = dc * s["f"]
        return {"W": g_kernel, "U": g_recurrent, "b": g_bias, "x": g_x, "h0": dh, "c0": dc}
