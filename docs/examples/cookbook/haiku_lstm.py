import haiku as hk
import jax

jax.config.update("jax_enable_x64", True)  # float64 cases run in float64
unroll = hk.without_apply_rng(hk.transform(  # time-major: x (T, B, D), h and c (B, H)
    lambda x, h, c: hk.dynamic_unroll(hk.LSTM(h.shape[-1]), x, hk.LSTMState(h, c))))


class HaikuLSTM:  # hk.LSTM: one Linear over [x, h], w (D+H, 4H), gate blocks i, g, f, o; adds 1 to the forget gate
    conformance = {"cell": "lstm", "params": "combined", "concat": "xh", "transposed": True, "gate_order": "igfo",
                   "constants": {"forget_bias": 1.0}}

    def forward(self, p, x, h0, c0):
        y, state = unroll.apply({"lstm/linear": {"w": p["W"], "b": p["b"]}}, x, h0, c0)
        return y, (state.hidden, state.cell)

    def backward(self, p, x, dy, d_final, h0, c0):
        _, vjp = jax.vjp(self.forward, p, x, h0, c0)
        g, gx, gh, gc = vjp((dy, (d_final["h"], d_final["c"])))
        return {"W": g["W"], "b": g["b"], "x": gx, "h0": gh, "c0": gc}
