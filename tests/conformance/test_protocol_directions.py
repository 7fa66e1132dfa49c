"""Layers and directions for a protocol target (issue 15 item 5; conformance/PROTOCOL.md section 11).

``TorchStyleRNN`` below is a PyTorch-style bidirectional, multi-layer LSTM written for this test in NumPy,
one sample at a time (no code of lstm-spec's): parameters named as in PyTorch's state dict (W_l0,
W_l0_reverse, ... over gates i, f, g, o, two biases), states (layers * directions, B, H), y (T, B, 2H)
with the reverse pass aligned to the input's time. It declares ``bidirectional`` and ``layers`` and
runs every default case (10 of the 18 were skipped for a protocol target before: reverse, lengths,
bidirectional and 2 layers, in each dtype). Negative controls:
the reverse pass's outputs in processing order while declaring input-time order, layer parameters mixed
up, declaration mistakes (exit 2 at load). Wrappers in the layouts of Paddle (``direction="bidirect"``,
``num_layers=2``), TF ``bidirectional_dynamic_rnn`` and ONNX show which declaration matches each.
"""
import textwrap

import numpy as np
import pytest

from lstm_spec.cli import main as lstm_spec_main
from lstm_spec.conformance.problem import Case
from lstm_spec.conformance.runner import conform, default_cases, format_report
from lstm_spec.conformance.targets import ProtocolTarget, TargetError

H_GATES = 4  # i, f, g, o


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def _step(W, U, b, x, h, c):
    """One LSTM step of one sample, PyTorch's gate order i, f, g, o."""
    H = h.shape[0]
    z = W @ x + U @ h + b
    i, f, g, o = _sig(z[:H]), _sig(z[H:2 * H]), np.tanh(z[2 * H:3 * H]), _sig(z[3 * H:])
    c2 = f * c + i * g
    return o * np.tanh(c2), c2, (x, h, c, i, f, g, o, c2)


def _step_back(W, U, saved, dh, dc, acc):
    """Gradients of one step; ``acc`` [dW, dU, db] accumulates; returns (dx, dh_prev, dc_prev)."""
    x, h, c, i, f, g, o, c2 = saved
    tc = np.tanh(c2)
    dc = dc + dh * o * (1 - tc * tc)
    dz = np.concatenate([dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g * g), dh * tc * o * (1 - o)])
    acc[0] += np.outer(dz, x)
    acc[1] += np.outer(dz, h)
    acc[2] += dz
    return W.T @ dz, U.T @ dz, dc * f


class TorchStyleRNN:
    """nn.LSTM(bidirectional=True, num_layers=2) in NumPy, per sample. ``bug``: 'processing_order' returns
    the reverse pass's outputs in the order it produced them; 'layer_swap' runs layer 0 with layer 1's
    recurrent weights and the other way round."""

    def __init__(self, bug=None):
        self.bug = bug
        self.conformance = {
            "cell": "lstm", "params": "stacked", "gate_order": "ifgo", "biases": 2,
            "features": ["reverse", "lengths"],
            "bidirectional": {"output": "concat", "order": "original", "params": "suffix", "states": "stacked"},
            "layers": 2, "name": f"TorchStyleRNN({bug or 'correct'})",
        }

    # ------------------------------------------------------------------ parameters of one (layer, direction)
    def _weights(self, params, layer, d, multi):
        key = "" if not multi else f"_l{layer}" + ("_reverse" if d else "")
        if self.bug == "layer_swap" and multi:
            other = f"_l{1 - layer}" + ("_reverse" if d else "") if f"U_l{1 - layer}" in params else key
            U = params[f"U{other}"]
        else:
            U = params[f"U{key}"]
        return params[f"W{key}"], U, params[f"b_ih{key}"] + params[f"b_hh{key}"], key

    def _shape(self, params, x, kw):
        """(multi, layers, directions, directions to run per layer: [(slot, reverse)])."""
        multi = "layers" in kw or "bidirectional" in kw
        L, ndir = kw.get("layers", 1), 2 if kw.get("bidirectional") else 1
        dirs = [(0, bool(kw.get("reverse")))] if ndir == 1 else [(0, False), (1, True)]
        return multi, L, ndir, dirs

    def _run(self, params, x, h0, c0, kw, dy=None, d_final=None):
        """Forward (and, with dy, backward) of the whole network, one sample at a time."""
        multi, L, ndir, dirs = self._shape(params, x, kw)
        T, B = x.shape[:2]
        lengths = kw.get("lengths", np.full(B, T))
        S = L * ndir
        st = (lambda a, k: a[k]) if multi else (lambda a, k: a)
        H = (h0[0] if multi else h0).shape[-1]
        y = np.zeros((T, B, ndir * H), x.dtype)
        hT, cT = np.zeros((S, B, H), x.dtype), np.zeros((S, B, H), x.dtype)
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        gx, gh0, gc0 = np.zeros_like(x), np.zeros((S, B, H), x.dtype), np.zeros((S, B, H), x.dtype)
        for b in range(B):
            n = int(lengths[b])
            inp, saved = x[:n, b], []
            for layer in range(L):
                outs = []
                for d, rev in dirs:
                    k = layer * ndir + d
                    W, U, bias, _ = self._weights(params, layer, d, multi)
                    h, c, ys, steps = st(h0, k)[b], st(c0, k)[b], [], []
                    for t in (range(n - 1, -1, -1) if rev else range(n)):
                        h, c, s = _step(W, U, bias, inp[t], h, c)
                        ys.append(h)
                        steps.append((t, s))
                    ys = np.array(ys).reshape(n, H)
                    outs.append(ys[::-1] if rev else ys)
                    hT[k, b], cT[k, b] = h, c
                    saved.append((layer, d, inp, steps))
                inp = np.concatenate(outs, axis=1)
            y[:n, b] = self._processing(inp, ndir)
            if dy is not None:
                self._back(params, multi, ndir, n, b, saved, dy, d_final, grads, gx, gh0, gc0, H)
        final = {"h": hT, "c": cT} if multi else {"h": hT[0], "c": cT[0]}
        if dy is None:
            return y, final
        return grads, gx, (gh0, gc0) if multi else (gh0[0], gc0[0])

    def _processing(self, y, ndir):
        """The planted bug: the reverse pass's outputs (one sample) in the order they were produced."""
        if self.bug != "processing_order" or ndir == 1:
            return y
        H = y.shape[1] // 2
        return np.concatenate([y[:, :H], y[::-1, H:]], axis=1)

    def _back(self, params, multi, ndir, n, b, saved, dy, d_final, grads, gx, gh0, gc0, H):
        d_out = self._processing(dy[:n, b], ndir)  # the cotangent of y as this target returns y
        st = (lambda a, k: a[k]) if multi else (lambda a, k: a)
        for layer in sorted({s[0] for s in saved}, reverse=True):
            d_in = None
            for _layer, d, inp, steps in [s for s in saved if s[0] == layer]:
                k = layer * ndir + d
                W, U, _, key = self._weights(params, layer, d, multi)
                acc = [np.zeros_like(W), np.zeros_like(U), np.zeros(W.shape[0], W.dtype)]
                dh, dc = st(d_final["h"], k)[b].copy(), st(d_final["c"], k)[b].copy()
                dxs = np.zeros_like(inp)
                for t, s in reversed(steps):
                    dx, dh, dc = _step_back(W, U, s, dh + d_out[t, d * H:(d + 1) * H], dc, acc)
                    dxs[t] = dx
                for name, g in zip(("W", "U", "b_ih"), acc, strict=True):
                    grads[f"{name}{key}"] += g
                grads[f"b_hh{key}"] += acc[2]
                gh0[k, b], gc0[k, b] = dh, dc
                d_in = dxs if d_in is None else d_in + dxs
            d_out = d_in
        gx[:n, b] = d_out

    # ------------------------------------------------------------------ the protocol
    def forward(self, params, x, h0, c0, **kw):
        return self._run(params, x, h0, c0, kw)

    def backward(self, params, x, dy, d_final, h0, c0, **kw):
        grads, gx, (gh0, gc0) = self._run(params, x, h0, c0, kw, dy, d_final)
        return {**grads, "x": gx, "h0": gh0, "c0": gc0}


QUICK_MULTI = [c for c in default_cases(dtypes=("float64",)) if not c.single]


# ------------------------------------------------------------------ the target conforms, every case runs
def test_a_bidirectional_two_layer_numpy_target_runs_every_default_case_and_conforms():
    report = conform(ProtocolTarget(TorchStyleRNN(), "torch-style"))
    assert report.passed, format_report(report)
    assert [r for r in report.results if r.status == "skip"] == []
    ran = [r.case for r in report.results if r.status == "pass"]
    assert len(ran) == len(default_cases()) and sum(c.direction == "bidirectional" for c in ran) == 2
    assert sum(c.layers == 2 for c in ran) == 2


def test_without_the_declarations_those_cases_are_skipped():
    target = TorchStyleRNN()
    del target.conformance["bidirectional"], target.conformance["layers"]
    report = conform(ProtocolTarget(target, "t"), QUICK_MULTI)
    assert {r.status for r in report.results} == {"skip"}
    assert {r.detail for r in report.results} == {"not bidirectional", "single layer only"}


def test_bidirectional_two_layers_with_lengths_and_the_declaration_in_the_header():
    cases = [Case("lstm", (5, 3, 4, 3), dt, 7, direction="bidirectional", lengths=(5, 2, 4), layers=2)
             for dt in ("float64", "float32")]
    target = ProtocolTarget(TorchStyleRNN(), "t")
    assert "bidirectional (y concat, the reverse pass in original order)" in target.description
    assert "up to 2 layers" in target.description
    report = conform(target, cases)
    assert report.passed, format_report(report)


def test_more_layers_than_declared_are_skipped_with_the_reason():
    report = conform(ProtocolTarget(TorchStyleRNN(), "t"), [Case("lstm", (3, 2, 3, 3), "float64", 1, layers=3)])
    assert report.results[0].status == "skip" and "at most 2 layer(s)" in report.results[0].detail


# ------------------------------------------------------------------ negative controls
def test_the_reverse_pass_in_processing_order_declared_as_input_time_fails():
    report = conform(ProtocolTarget(TorchStyleRNN(bug="processing_order"), "t"), QUICK_MULTI)
    status = {r.case.direction: r.status for r in report.results}
    assert status["bidirectional"] == "FAIL" and not report.passed
    bad = next(r for r in report.results if r.case.direction == "bidirectional")
    assert "y" in [row.quantity for row in bad.failing]


def test_the_same_target_declaring_processing_order_conforms():
    target = TorchStyleRNN(bug="processing_order")
    target.conformance["bidirectional"]["order"] = "processing"
    cases = QUICK_MULTI + [Case("lstm", (5, 3, 4, 3), "float64", 7, direction="bidirectional", lengths=(5, 2, 4))]
    report = conform(ProtocolTarget(target, "t"), cases)
    assert report.passed, format_report(report)


def test_layer_parameters_mixed_up_fail():
    report = conform(ProtocolTarget(TorchStyleRNN(bug="layer_swap"), "t"), QUICK_MULTI)
    layered = [r for r in report.results if r.case.layers == 2]
    assert layered and all(r.status == "FAIL" for r in layered) and not report.passed
    assert any(row.quantity == "y" for row in layered[0].failing)


@pytest.mark.parametrize(("changes", "says"), [
    ({"bidirectional": "yes"}, ["True, False or a dict", "'output'"]),
    ({"bidirectional": {"output": "interleaved"}}, ["'concat' (T, B, 2H)", "'onnx' (T, 2, B, H)", "'separate'"]),
    ({"bidirectional": {"order": "reversed"}}, ["'original', 'processing'"]),
    ({"bidirectional": {"outputs": "concat"}}, ["unknown key(s) ['outputs']", "'order'"]),
    ({"bidirectional": {"params": "tuple"}}, ["'list', 'suffix'"]),
    ({"layers": 0}, ["integer >= 1"]),
    ({"layers": True}, ["integer >= 1"]),
    ({"layers": "2"}, ["integer >= 1"]),
    ({"layers": {"count": 2, "states": "tuple"}}, ["'stacked', 'list'"]),
    ({"layers": {"count": 2, "params": "list"}}, ["differ", "declare it once"]),
    ({"batch": False, "features": []}, ["need a batch dimension"]),
    ({"loss": "last"}, ["['loss'] 'last' is for a single layer and direction"]),
])
def test_a_wrong_declaration_is_one_line_at_load_with_the_accepted_values(changes, says):
    target = TorchStyleRNN()
    target.conformance.update(changes)
    with pytest.raises(TargetError) as err:
        ProtocolTarget(target, "t")
    msg = str(err.value)
    assert "\n" not in msg and all(s in msg for s in says), msg


def test_a_wrong_declaration_is_exit_2_from_the_cli(tmp_path, capfd):
    path = tmp_path / "bad_rnn.py"
    path.write_text(textwrap.dedent("""
        class Bad:
            conformance = {"cell": "lstm", "bidirectional": {"output": "interleaved"}}
            def forward(self, params, x, h0, c0, **kw):
                raise AssertionError("never called")
    """))
    code = lstm_spec_main(["conform", f"{path}:Bad", "--timeout", "0", "--quiet"])
    out, err = capfd.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "conformance['bidirectional']['output']" in err and "'concat'" in err


# ------------------------------------------------------------------ other frameworks' layouts, declared
class _Relayout(TorchStyleRNN):
    """The torch-style network behind another framework's interface: ``declare`` replaces the declaration,
    ``to_y``/``from_dy`` map PyTorch's (T, B, 2H) to that framework's y, ``params``/``states`` its forms."""

    bidirectional: dict = {}
    batch_major = False

    def __init__(self):
        super().__init__()
        self.conformance.update(bidirectional=dict(self.bidirectional), batch_major=self.batch_major,
                                features=[], name=type(self).__name__)

    def _multi(self, kw):
        return "layers" in kw or "bidirectional" in kw

    def _in(self, params, x, kw, *states):
        if self._multi(kw) and self.bidirectional.get("params") == "list":
            n = 2 if kw.get("bidirectional") else 1
            params = {f"{k}_l{j // n}" + ("_reverse" if j % n else ""): v for j, p in enumerate(params)
                      for k, v in p.items()}
        if self._multi(kw) and self.bidirectional.get("states") == "list":
            states = [np.stack(s) for s in states]
        x = np.swapaxes(x, 0, 1) if self.batch_major else x
        return params, x, states

    def _out_y(self, y, kw):
        y = self.to_y(y, kw) if kw.get("bidirectional") else y
        if isinstance(y, tuple):
            return tuple(np.swapaxes(a, 0, 1) if self.batch_major else a for a in y)
        return np.swapaxes(y, 0, 1) if self.batch_major and y.ndim == 3 else y

    def _out_states(self, d, kw):
        if self._multi(kw) and self.bidirectional.get("states") == "list":
            return {k: list(v) for k, v in d.items()}
        return d

    def forward(self, params, x, h0, c0, **kw):
        params, x, (h0, c0) = self._in(params, x, kw, h0, c0)
        y, final = super().forward(params, x, h0, c0, **kw)
        return self._out_y(y, kw), self._out_states(final, kw)

    def backward(self, params, x, dy, d_final, h0, c0, **kw):
        names = list(params[0]) if isinstance(params, list) else None
        params, x, (h0, c0, dh, dc) = self._in(params, x, kw, h0, c0, d_final["h"], d_final["c"])
        dy = self.from_dy(dy, kw) if kw.get("bidirectional") else (np.swapaxes(dy, 0, 1) if self.batch_major else dy)
        g = super().backward(params, x, dy, {"h": dh, "c": dc}, h0, c0, **kw)
        if self.batch_major:
            g["x"] = np.swapaxes(g["x"], 0, 1)
        rest = self._out_states({"h0": g.pop("h0"), "c0": g.pop("c0")}, kw)
        if names is not None and self._multi(kw):
            n = 2 if kw.get("bidirectional") else 1
            slots = [{k: g.pop(f"{k}_l{j // n}" + ("_reverse" if j % n else "")) for k in names}
                     for j in range(len(params) // len(names))]
            g = {"params": slots, **g}
        return {**g, **rest}


class PaddleStyle(_Relayout):
    """paddle.nn.LSTM(direction="bidirect", num_layers=2, time_major=False): outputs (B, T, 2H), the
    reverse pass aligned to input time; final states (num_layers * 2, B, H); weights weight_ih_l0,
    weight_ih_l0_reverse, ... (PyTorch's names)."""

    bidirectional = {"output": "concat", "order": "original", "params": "suffix", "states": "stacked"}
    batch_major = True

    def to_y(self, y, kw):
        return y

    def from_dy(self, dy, kw):
        return np.swapaxes(dy, 0, 1)


class TFBidirectionalDynamicRNN(_Relayout):
    """tf.compat.v1.nn.bidirectional_dynamic_rnn(cell_fw, cell_bw, x, initial_state_fw, initial_state_bw):
    outputs (output_fw, output_bw), each (B, T, H), output_bw aligned to input time; output_states
    (state_fw, state_bw); two cells, so one parameter dict each."""

    bidirectional = {"output": "separate", "order": "original", "params": "list", "states": "list"}
    batch_major = True

    def to_y(self, y, kw):
        H = y.shape[-1] // 2
        return (y[..., :H], y[..., H:])

    def from_dy(self, dy, kw):
        return np.swapaxes(np.concatenate(dy, axis=-1), 0, 1)


class OnnxStyle(_Relayout):
    """The ONNX LSTM operator with direction="bidirectional", layout 0: Y (T, 2, B, H); Y_h, Y_c (2, B, H);
    W, R, B stacked over directions (one dict per direction here)."""

    bidirectional = {"output": "onnx", "order": "original", "params": "list", "states": "stacked"}

    def to_y(self, y, kw):
        T, B, H2 = y.shape
        return np.transpose(y.reshape(T, B, 2, H2 // 2), (0, 2, 1, 3))

    def from_dy(self, dy, kw):
        T, _, B, H = dy.shape
        return np.transpose(dy, (0, 2, 1, 3)).reshape(T, B, 2 * H)


class OnnxLayout1(_Relayout):
    """The ONNX LSTM operator with layout=1 (batch-major): Y (B, T, 2, H), the direction axis after time."""

    bidirectional = {"output": "onnx", "order": "original", "params": "list", "states": "stacked"}
    batch_major = True

    def to_y(self, y, kw):
        T, B, H2 = y.shape
        return np.transpose(y.reshape(T, B, 2, H2 // 2), (1, 0, 2, 3))

    def from_dy(self, dy, kw):
        B, T, _, H = dy.shape
        return np.transpose(dy, (1, 0, 2, 3)).reshape(T, B, 2 * H)


class StackedStyle(_Relayout):
    """y as np.stack([y_fwd, y_bwd]): (2, T, B, H)."""

    bidirectional = {"output": "stacked", "order": "original", "params": "list", "states": "list"}

    def to_y(self, y, kw):
        H = y.shape[-1] // 2
        return np.stack([y[..., :H], y[..., H:]])

    def from_dy(self, dy, kw):
        return np.concatenate([dy[0], dy[1]], axis=-1)


@pytest.mark.parametrize("cls", [PaddleStyle, TFBidirectionalDynamicRNN, OnnxStyle, OnnxLayout1, StackedStyle])
def test_other_frameworks_layouts_are_expressible(cls):
    cases = QUICK_MULTI + [Case("lstm", (3, 2, 2, 3), "float64", 5, direction="bidirectional", layers=2)]
    report = conform(ProtocolTarget(cls(), cls.__name__), cases)
    assert report.passed, format_report(report)
    assert all(r.status == "pass" for r in report.results)


# ------------------------------------------------------------------ the Target contract's example (PROTOCOL.md)
def test_the_target_subclass_example_of_protocol_md_runs_the_bidirectional_cases(tmp_path, capfd):
    from pathlib import Path

    import lstm_spec.conformance as pkg

    text = (Path(pkg.__file__).parent / "PROTOCOL.md").read_text()
    section = text[text.index("## 12. Anything else: subclassing `Target`"):]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "mymod.py"
    path.write_text(code)
    code = lstm_spec_main(["conform", f"{path}:ReferenceBidirectional", "--timeout", "0"])
    out, _ = capfd.readouterr()
    assert code == 0, out
    assert f"2 passed, 0 failed, 0 errors, {len(default_cases()) - 2} skipped" in out, out


def test_a_backward_without_final_cotangents_runs_the_multi_slot_cases():
    class NoFinalCotangents(TorchStyleRNN):
        def backward(self, params, x, dy, h0, c0, **kw):
            zero = {s: np.zeros_like(h0) for s in ("h", "c")}
            return super().backward(params, x, dy, zero, h0, c0, **kw)

    target = NoFinalCotangents()
    target.conformance["d_final"] = False
    report = conform(ProtocolTarget(target, "t"), QUICK_MULTI)
    assert report.passed, format_report(report)
