"""Example implementations for the conformance protocol (conformance/PROTOCOL.md).

- ``reference_lstm``: the generated reference itself, through the protocol (per-gate layout).
- ``NumpyLSTM``: an independent, hand-written NumPy LSTM with its own BPTT, the kind of code a user
  brings: stacked 4H weights in any gate order, optionally transposed, one or two biases, time- or
  batch-major, reverse direction and sequence lengths. ``NumpyLSTM(bug=...)`` plants one of the known
  bugs (``BUGS``): the catalogue of broken implementations that the tests and
  ``lstm-spec conform lstm_spec.conformance.examples:broken_gate_order`` use.

Nothing here is used by the reference or the checks; the bugs are deliberate.
"""

from __future__ import annotations

import numpy as np

from lstm_spec.reference import lstm as _ref

# bug -> (what it does, the quantity it must fail on, the diagnosis key it must get)
BUGS = {
    "gate_order": ("reads the c and o blocks swapped", "y", "gate_order"),
    "forget_bias": ("adds forget_bias = 1 to z_f at every step", "y", "forget_bias_runtime"),
    "bias_twice": ("adds the bias twice", "y", "bias_twice"),
    "bias_dropped": ("never adds the bias", "y", "bias_dropped"),
    "dropped_bias_hh": ("two biases declared, b_hh ignored", "y", "bias_dropped"),
    "reversed_outputs": ("returns y in reversed time order", "y", "reversed_time"),
    "wrong_direction": ("reads the sequence backwards", "y", "reversed_time"),
    "final_off_by_one": ("returns the states after step T-1", "h_T", "final_state_off_by_one"),
    "no_recurrent_grad": ("drops d h_{t-1}", "d U_f", "no_recurrent_gradient"),
    "no_cell_carry_grad": ("drops d c_{t-1}", "d W_f", "no_cell_carry_gradient"),
    "t0_recurrent_term": ("leaves the t = 0 term out of d U", "d U_f", "t0_terms_missing"),
    "grad_averaged": ("divides parameter gradients by B", "d W_f", "grad_averaged"),
    "grad_clipped": ("clips parameter gradients to [-1, 1]", "d W_f", "grad_clipped"),
    "float32_inside": ("computes in float32 behind a float64 interface", "y", "reduced_precision"),
}

ORDER = "ifco"


def _sig(z):
    return 0.5 + 0.5 * np.tanh(0.5 * z)


class NumpyLSTM:
    """A hand-written LSTM following the protocol. Layout options as in PROTOCOL.md."""

    def __init__(self, bug: str | None = None, gate_order: str = ORDER, transposed: bool = False, biases: int = 1,
                 batch_major: bool = False, per_gate: bool = False):
        if bug is not None and bug not in BUGS:
            raise ValueError(f"bug: expected one of {sorted(BUGS)}, got {bug!r}")
        if bug == "dropped_bias_hh":
            biases = 2
        self.bug = bug
        self.order = gate_order
        self.per_gate = per_gate
        self.conformance = {
            "cell": "lstm", "params": "per_gate" if per_gate else "stacked", "gate_order": tuple(gate_order),
            "transposed": transposed, "biases": biases, "batch_major": batch_major,
            "dtypes": ["float32", "float64"], "features": ["reverse", "lengths"],
            "name": f"NumpyLSTM({'bug=' + repr(bug) if bug else 'correct'})",
        }
        if bug:
            self.conformance["description"] = f"hand-written NumPy LSTM with a planted bug: {BUGS[bug][0]}"

    # ------------------------------------------------------------------ layout
    def _unpack(self, params):
        m = self.conformance
        get = (lambda a: np.asarray(a).T) if m["transposed"] else np.asarray
        if self.per_gate:
            W = np.concatenate([get(params[f"W_{g}"]) for g in self.order])
            U = np.concatenate([get(params[f"U_{g}"]) for g in self.order])
            if m["biases"] == 1:
                b = np.concatenate([params[f"b_{g}"] for g in self.order])
            else:
                b = np.concatenate([params[f"b_{g}_ih"] + params[f"b_{g}_hh"] for g in self.order])
            return W, U, b
        W, U = get(params["W"]), get(params["U"])
        if m["biases"] == 1:
            b = np.asarray(params["b"])
        elif self.bug == "dropped_bias_hh":
            b = np.asarray(params["b_ih"])
        else:
            b = np.asarray(params["b_ih"]) + np.asarray(params["b_hh"])
        return W, U, b

    def _pack(self, params, dW, dU, db):
        m = self.conformance
        put = (lambda a: a.T.copy()) if m["transposed"] else (lambda a: a)
        if self.per_gate:
            H = dU.shape[1]
            out = {}
            for k, g in enumerate(self.order):
                out[f"W_{g}"], out[f"U_{g}"] = put(dW[k * H:(k + 1) * H]), put(dU[k * H:(k + 1) * H])
                if m["biases"] == 1:
                    out[f"b_{g}"] = db[k * H:(k + 1) * H]
                else:
                    out[f"b_{g}_ih"] = out[f"b_{g}_hh"] = db[k * H:(k + 1) * H]
            return out
        out = {"W": put(dW), "U": put(dU)}
        if m["biases"] == 1:
            out["b"] = db
        else:
            out["b_ih"], out["b_hh"] = db, db.copy()
        return out

    def _blocks(self):
        """Positions of the gates in the stacked blocks as this code *uses* them."""
        order = self.order
        if self.bug == "gate_order":
            order = order.translate(str.maketrans("co", "oc"))
        return {g: k for k, g in enumerate(order)}

    # ------------------------------------------------------------------ one sequence (T, B, D)
    def _forward_seq(self, W, U, b, x, h0, c0):
        H = U.shape[1]
        pos = self._blocks()
        def blk(a, g):
            return a[..., pos[g] * H:(pos[g] + 1) * H]
        bias = {"bias_twice": 2 * b, "bias_dropped": 0 * b}.get(self.bug, b)
        T = x.shape[0]
        hs, cs, gates = [h0], [c0], []
        h, c = h0, c0
        for t in range(T):
            z = x[t] @ W.T + h @ U.T + bias
            zf = blk(z, "f") + (1.0 if self.bug == "forget_bias" else 0.0)
            i, f, g, o = _sig(blk(z, "i")), _sig(zf), np.tanh(blk(z, "c")), _sig(blk(z, "o"))
            c = f * c + i * g
            h = o * np.tanh(c)
            hs.append(h)
            cs.append(c)
            gates.append((i, f, g, o))
        return {"x": x, "h": hs, "c": cs, "gates": gates, "W": W, "U": U, "pos": pos}

    def _backward_seq(self, cache, dy, dh, dc):
        W, U, pos, x = cache["W"], cache["U"], cache["pos"], cache["x"]
        H = U.shape[1]
        T = x.shape[0]
        dW, dU, db = np.zeros_like(W), np.zeros_like(U), np.zeros(4 * H, W.dtype)
        dx = np.zeros_like(x)
        for t in reversed(range(T)):
            i, f, g, o = cache["gates"][t]
            c, c_prev, h_prev = cache["c"][t + 1], cache["c"][t], cache["h"][t]
            dh = dh + dy[t]
            tc = np.tanh(c)
            dc = dc + dh * o * (1 - tc ** 2)
            dz = np.empty((x.shape[1], 4 * H), W.dtype)
            for gate, val in (("i", dc * g * i * (1 - i)), ("f", dc * c_prev * f * (1 - f)),
                              ("c", dc * i * (1 - g ** 2)), ("o", dh * tc * o * (1 - o))):
                dz[:, pos[gate] * H:(pos[gate] + 1) * H] = val
            dW += dz.T @ x[t]
            if not (self.bug == "t0_recurrent_term" and t == 0):
                dU += dz.T @ h_prev
            db += dz.sum(0)
            dx[t] = dz @ W
            dh = dz @ U if self.bug != "no_recurrent_grad" else 0 * h_prev
            dc = dc * f if self.bug != "no_cell_carry_grad" else 0 * c_prev
        if self.bug == "bias_twice":
            db = 2 * db
        return dW, dU, db, dx, dh, dc

    # ------------------------------------------------------------------ the protocol
    def _io(self, x, params, h0, c0):
        bm = self.conformance["batch_major"]
        x = np.swapaxes(x, 0, 1) if bm else x
        dtype = x.dtype
        W, U, b = self._unpack(params)
        if self.bug == "float32_inside":
            W, U, b, x, h0, c0 = (np.asarray(a, np.float32) for a in (W, U, b, x, h0, c0))
        return x, W, U, b, h0, c0, dtype

    def _spans(self, T, B, lengths, reverse):
        lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
        for bb in range(B):
            L = int(lengths[bb])
            steps = np.arange(L)
            if reverse != (self.bug == "wrong_direction"):
                steps = steps[::-1]
            yield bb, steps

    def forward(self, params, x, h0, c0, lengths=None, reverse=False):
        x, W, U, b, h0, c0, dtype = self._io(x, params, h0, c0)
        T, B = x.shape[:2]
        H = U.shape[1]
        y = np.zeros((T, B, H), W.dtype)
        hT, cT = np.empty((B, H), W.dtype), np.empty((B, H), W.dtype)
        for bb, steps in self._spans(T, B, lengths, reverse):
            cache = self._forward_seq(W, U, b, x[steps, bb:bb + 1], h0[bb:bb + 1], c0[bb:bb + 1])
            y[steps, bb:bb + 1] = np.stack(cache["h"][1:]) if len(steps) else y[steps, bb:bb + 1]
            last = -2 if (self.bug == "final_off_by_one" and len(steps)) else -1
            hT[bb], cT[bb] = cache["h"][last][0], cache["c"][last][0]
        if self.bug == "reversed_outputs":
            y = y[::-1]
        if self.conformance["batch_major"]:
            y = np.swapaxes(y, 0, 1)
        return y.astype(dtype), (hT.astype(dtype), cT.astype(dtype))

    def backward(self, params, x, dy, d_final, h0, c0, lengths=None, reverse=False):
        x, W, U, b, h0, c0, dtype = self._io(x, params, h0, c0)
        dy = np.swapaxes(dy, 0, 1) if self.conformance["batch_major"] else dy
        if self.bug == "reversed_outputs":
            dy = dy[::-1]
        dy = dy.astype(W.dtype)
        T, B = x.shape[:2]
        dW, dU, db = np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)
        dx, dh0, dc0 = np.zeros_like(x), np.zeros_like(h0), np.zeros_like(c0)
        for bb, steps in self._spans(T, B, lengths, reverse):
            cache = self._forward_seq(W, U, b, x[steps, bb:bb + 1], h0[bb:bb + 1], c0[bb:bb + 1])
            dh = np.asarray(d_final["h"][bb:bb + 1], W.dtype)
            dc = np.asarray(d_final["c"][bb:bb + 1], W.dtype)
            dyb = dy[steps, bb:bb + 1]
            if self.bug == "final_off_by_one" and len(steps):
                # the returned state is the one after step T-1: its cotangent enters there
                gW, gU, gb, gx, dhb, dcb = self._backward_seq(cache, dyb, 0 * dh, 0 * dc)
                cache2 = self._forward_seq(W, U, b, x[steps[:-1], bb:bb + 1], h0[bb:bb + 1], c0[bb:bb + 1])
                aW, aU, ab, ax, dhb2, dcb2 = self._backward_seq(cache2, 0 * dyb[:-1], dh, dc)
                gW, gU, gb, dhb, dcb = gW + aW, gU + aU, gb + ab, dhb + dhb2, dcb + dcb2
                gx[:-1] += ax
            else:
                gW, gU, gb, gx, dhb, dcb = self._backward_seq(cache, dyb, dh, dc)
            dW, dU, db = dW + gW, dU + gU, db + gb
            dx[steps, bb:bb + 1] = gx
            dh0[bb:bb + 1], dc0[bb:bb + 1] = dhb, dcb
        if self.bug == "grad_averaged":
            dW, dU, db = dW / B, dU / B, db / B
        if self.bug == "grad_clipped":
            dW, dU, db = np.clip(dW, -1, 1), np.clip(dU, -1, 1), np.clip(db, -1, 1)
        grads = self._pack(params, dW.astype(dtype), dU.astype(dtype), db.astype(dtype))
        if self.conformance["batch_major"]:
            dx = np.swapaxes(dx, 0, 1)
        grads.update({"x": dx.astype(dtype), "h0": dh0.astype(dtype), "c0": dc0.astype(dtype)})
        return grads


class ReferenceLSTM:
    """The generated reference through the protocol: per-gate parameters, one bias, time-major."""

    conformance = {"cell": "lstm", "params": "per_gate", "dtypes": ["float32", "float64"],
                   "name": "reference (lstm_spec.reference.lstm) via the protocol"}

    def forward(self, params, x, h0, c0):
        y, final, _ = _ref.forward(params, x, h0, c0)
        return y, (final["h"], final["c"])

    def backward(self, params, x, dy, d_final, h0, c0):
        _, _, cache = _ref.forward(params, x, h0, c0)
        return _ref.backward(cache, dy, d_final)


class ReferenceCell:
    """Any cell's generated reference through the protocol (per-gate layout, one bias, time-major):
    ``ReferenceCell("gru_reset_after")``. The states arrive as keyword arguments h0=, c0=, ..."""

    def __init__(self, cell: str):
        import importlib

        self.module = importlib.import_module(f"lstm_spec.reference.{cell}")
        self.conformance = {"cell": cell, "params": "per_gate", "dtypes": ["float32", "float64"],
                            "name": f"reference {cell} via the protocol"}

    def forward(self, params, x, **init):
        y, final, _ = self.module.forward(params, x, **init)
        return y, final

    def backward(self, params, x, dy, d_final, **init):
        _, _, cache = self.module.forward(params, x, **init)
        return self.module.backward(cache, dy, d_final)


class NumpyPeephole:
    """A hand-written, forward-only peephole LSTM (cell ``peephole``: i and f look at c_{t-1}, o at c_t),
    per-gate layout. ``bug="output_peephole_old_cell"`` lets o look at c_{t-1}."""

    def __init__(self, bug: str | None = None):
        self.bug = bug
        self.conformance = {"cell": "peephole", "params": "per_gate", "dtypes": ["float32", "float64"],
                            "name": f"NumpyPeephole({'bug=' + repr(bug) if bug else 'correct'})"}

    def forward(self, params, x, h0, c0):
        P = params
        h, c, ys = h0, c0, []
        for t in range(x.shape[0]):
            lin = {g: x[t] @ P[f"W_{g}"].T + h @ P[f"U_{g}"].T + P[f"b_{g}"] for g in "fico"}
            f = _sig(lin["f"] + P["p_f"] * c)
            i = _sig(lin["i"] + P["p_i"] * c)
            c_new = f * c + i * np.tanh(lin["c"])
            o = _sig(lin["o"] + P["p_o"] * (c if self.bug == "output_peephole_old_cell" else c_new))
            c = c_new
            h = o * np.tanh(c)
            ys.append(h)
        return np.stack(ys), (h, c)


reference_lstm = ReferenceLSTM()
correct_peephole = NumpyPeephole()
broken_output_peephole = NumpyPeephole(bug="output_peephole_old_cell")
correct = NumpyLSTM()
correct_keras_like = NumpyLSTM(transposed=True, gate_order="ifco")
correct_torch_like = NumpyLSTM(biases=2, batch_major=True)
correct_onnx_order = NumpyLSTM(gate_order="iofc", per_gate=False)
correct_per_gate = NumpyLSTM(per_gate=True, biases=2, transposed=True)
for _bug in BUGS:
    globals()[f"broken_{_bug}"] = NumpyLSTM(bug=_bug)
