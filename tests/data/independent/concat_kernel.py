"""LSTM with one fused kernel over the concatenation [x; h].

Column-vector convention with the batch along the columns: at each step we stack
x_t (D, B) on top of h (H, B) and multiply once by K = [W | U], a (4H, D+H)
matrix whose row blocks follow TensorFlow's order i, j (candidate), f, o.
Sequences are time-major.
"""
import numpy as np


def _sig(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))


class ConcatKernelLSTM:
    conformance = {
        "cell": "lstm",
        "params": "stacked",
        "gate_order": ("i", "c", "f", "o"),
        "transposed": False,
        "biases": 1,
        "batch_major": False,
        "name": "fused [x; h] kernel LSTM (i j f o)",
    }

    @staticmethod
    def _kernel(params):
        K = np.concatenate([params["W"], params["U"]], axis=1)
        return K, params["b"][:, None]

    def _forward(self, params, x, h0, c0):
        K, b = self._kernel(params)
        T = x.shape[0]
        H = h0.shape[1]
        h, c = h0.T, c0.T
        ys, mem = [], []
        for t in range(T):
            xh = np.concatenate([x[t].T, h], axis=0)
            z = K @ xh + b
            i = _sig(z[:H])
            j = np.tanh(z[H:2 * H])
            f = _sig(z[2 * H:3 * H])
            o = _sig(z[3 * H:])
            c_prev = c
            c = f * c_prev + i * j
            tc = np.tanh(c)
            h = o * tc
            ys.append(h.T)
            mem.append((xh, c_prev, i, j, f, o, tc))
        return np.stack(ys), (h.T, c.T), mem

    def forward(self, params, x, h0, c0):
        y, final, _ = self._forward(params, x, h0, c0)
        return y, final

    def backward(self, params, x, dy, d_final, h0, c0):
        K, _ = self._kernel(params)
        D = x.shape[2]
        _, _, mem = self._forward(params, x, h0, c0)
        dK = np.zeros_like(K)
        db = np.zeros_like(params["b"])
        dx = np.zeros_like(x)
        dh = d_final["h"].T.copy()
        dc = d_final["c"].T.copy()
        for t in range(len(mem) - 1, -1, -1):
            xh, c_prev, i, j, f, o, tc = mem[t]
            dh = dh + dy[t].T
            dc = dc + dh * o * (1.0 - tc * tc)
            dz = np.concatenate([
                dc * j * i * (1.0 - i),
                dc * i * (1.0 - j * j),
                dc * c_prev * f * (1.0 - f),
                dh * tc * o * (1.0 - o),
            ])
            dK += dz @ xh.T
            db += dz.sum(axis=1)
            dxh = K.T @ dz
            dx[t] = dxh[:D].T
            dh = dxh[D:]
            dc = dc * f
        return {"W": dK[:, :D], "U": dK[:, D:], "b": db,
                "x": dx, "h0": dh.T, "c0": dc.T}
