import tensorflow as tf
from tensorflow.python.keras.layers.legacy_rnn.rnn_cell_impl import LSTMCell  # = tf.compat.v1.nn.rnn_cell.LSTMCell


class TF1LSTMCell:  # kernel (D+P, 4H) over [x; h], gate blocks i, j (our c), f, o; TF1 adds forget_bias=1.0 to z_f
    def __init__(self, cell="peephole_cell_clip", **options):  # LSTMCell's options (the default: peepholes, clip 1)
        self.options = options or dict(use_peepholes=True, cell_clip=1.0)
        clips = {k: v for k, v in self.options.items() if k.endswith("_clip")}  # TF1's bounds are ours by name
        self.conformance = {"cell": cell, "params": "combined", "transposed": True, "gate_order": "icfo",
                            "constants": {"forget_bias": 1.0, **clips}}

    def forward(self, w, x, h0, c0, dy=None, d_final=None):  # the backward too, given dy and d_final
        p = {k: w[k].T if k == "W_hr" else w[k] for k in ("W", "b", "p_f", "p_i", "p_o", "W_hr") if k in w}
        cell = LSTMCell(c0.shape[1], num_proj=h0.shape[1] if "W_hr" in p else None, dtype=x.dtype, **self.options)
        cell.build((None, x.shape[2]))
        cell.set_weights(list(p.values()))  # kernel, bias, w_f_diag, w_i_diag, w_o_diag, projection/kernel
        x, s = tf.Variable(x), (c := tf.Variable(c0), h := tf.Variable(h0))  # TF1's state is (c, h)
        with tf.GradientTape() as tape:
            y = tf.stack([(s := cell(xt, s)[1]).h for xt in tf.unstack(x)])
        if dy is None:
            return y, (s.h, s.c)
        g = tape.gradient([y, s.h, s.c], [*cell.weights, x, h, c], [dy, d_final["h"], d_final["c"]])
        return {k: tf.transpose(a) if k == "W_hr" else a for k, a in zip([*p, "x", "h0", "c0"], g, strict=True)}
    backward = forward
