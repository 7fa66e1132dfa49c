import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)  # float64 cases run in float64


@jax.jit
def run(p, x, h0, c0):  # one sequence: x (T, D), h0 and c0 (H,)
    cell = eqx.nn.LSTMCell(x.shape[1], h0.shape[0], key=jax.random.PRNGKey(0))
    cell = eqx.tree_at(lambda m: (m.weight_ih, m.weight_hh, m.bias), cell, (p["W"], p["U"], p["b"]))
    (h, c), y = jax.lax.scan(lambda s, xt: ((s1 := cell(xt, s)), s1[0]), (h0, c0), x)
    return y, (h, c)


class EquinoxLSTMCell:  # eqx.nn.LSTMCell: weight_ih (4H, D), weight_hh (4H, H), bias (4H,), gates i, f, g, o; unbatched
    conformance = {"cell": "lstm", "params": "stacked", "gate_order": "ifgo", "batch": False}  # called per sequence

    def forward(self, p, x, h0, c0):
        return run(p, x, h0, c0)

    def backward(self, p, x, dy, d_final, h0, c0):
        _, vjp = jax.vjp(run, p, x, h0, c0)
        g, gx, gh, gc = vjp((dy, (d_final["h"], d_final["c"])))
        return {**g, "x": gx, "h0": gh, "c0": gc}
