"""Keras-layout LSTM that computes in single precision.

kernel (D, 4H), recurrent_kernel (H, 4H) and bias (4H,) with Keras' gate order
i, f, c, o; batch-major inputs. Everything is cast to float32 on the way in:
the model is trained in float32 and only that precision is supported.
"""
import numpy as np

F32 = np.float32


def _sigmoid(a):
    return F32(1) / (F32(1) + np.exp(-a))


class SinglePrecisionLSTM:
    conformance = {
        "cell": "lstm",
        "params": "stacked",
        "gate_order": ("i", "f", "c", "o"),
        "transposed": True,
        "biases": 1,
        "batch_major": True,
        "dtypes": ["float32"],
        "name": "single-precision LSTM",
    }

    def _weights(self, params):
        return (params["W"].astype(F32), params["U"].astype(F32), params["b"].astype(F32))

    def _loop(self, params, x, h0, c0):
        kernel, recurrent, bias = self._weights(params)
        x = x.astype(F32)
        h, c = h0.astype(F32), c0.astype(F32)
        units = h.shape[1]
        outs, trace = [], []
        for t in range(x.shape[1]):
            z = x[:, t] @ kernel + h @ recurrent + bias
            i = _sigmoid(z[:, :units])
            f = _sigmoid(z[:, units:2 * units])
            cc = np.tanh(z[:, 2 * units:3 * units])
            o = _sigmoid(z[:, 3 * units:])
            trace.append((h, c, i, f, cc, o))
            c = f * c + i * cc
            h = o * np.tanh(c)
            outs.append(h)
        return np.stack(outs, axis=1), (h, c), trace

    def forward(self, params, x, h0, c0):
        y, final, _ = self._loop(params, x, h0, c0)
        return y, final

    def backward(self, params, x, dy, d_final, h0, c0):
        kernel, recurrent, _ = self._weights(params)
        _, _, trace = self._loop(params, x, h0, c0)
        x, dy = x.astype(F32), dy.astype(F32)
        dk, dr = np.zeros_like(kernel), np.zeros_like(recurrent)
        dbias = np.zeros(kernel.shape[1], F32)
        dx = np.zeros_like(x)
        dh_n, dc_n = d_final["h"].astype(F32), d_final["c"].astype(F32)
        one = F32(1)
        for t in range(x.shape[1] - 1, -1, -1):
            h_p, c_p, i, f, cc, o = trace[t]
            c = f * c_p + i * cc
            tc = np.tanh(c)
            dh = dy[:, t] + dh_n
            dc = dc_n + dh * o * (one - tc * tc)
            dz = np.hstack([dc * cc * i * (one - i), dc * c_p * f * (one + f),
                            dc * i * (one - cc * cc), dh * tc * o * (one - o)])
            dk += x[:, t].T @ dz
            dr += h_p.T @ dz
            dbias += dz.sum(0)
            dx[:, t] = dz @ kernel.T
            dh_n = dz @ recurrent.T
            dc_n = dc * f
        return {"W": dk, "U": dr, "b": dbias, "x": dx, "h0": dh_n, "c0": dc_n}
