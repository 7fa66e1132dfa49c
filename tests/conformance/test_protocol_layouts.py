"""Declared layouts and partial backward interfaces of the conformance protocol (issue 15 items 1 and 3):

- item 1: one kernel over the concatenated input [x; h] or [h; x] (``"params": "combined"``, ``"concat"``,
  either orientation with ``"transposed"``), one or two biases, biases as rows (``"bias_shape": "row"``),
  x/y axes in any order (``"axes"``), and a target without a batch dimension (``"batch": False``: the
  harness calls it once per batch element and the report says so);
- item 3: a backward without cotangents on the final states (``"d_final": False``) and a loss on the
  last output only (``"loss": "last"``): the reference uses the same zero cotangents and the summary
  lists what was not tested.

Every declaration has a correct target that conforms and a negative control that does not. The targets
here are written for this file, in a style unlike the project's NumpyLSTM: row vectors (z = v K + b with
K (D+H, 4H)), one concatenated kernel, a loop over the batch elements, gate blocks i, g, f, o (Haiku's).
"""
import numpy as np
import pytest

from lstm_spec.checks.cases import CONFORM_SHAPES
from lstm_spec.cli import main as lstm_spec_main
from lstm_spec.conformance.runner import conform, default_cases, format_report, header, report_dict
from lstm_spec.conformance.targets import ProtocolTarget, TargetError

CASES = default_cases(dtypes=("float64", "float32"))  # T = 1, B = 1, D < H, D > H, D = H among them
F64 = [c for c in CASES if c.dtype == "float64" and c.direction == "forward" and c.lengths is None and c.layers == 1]
SIZES = {(c.shape[0], c.shape[1], c.shape[2] != c.shape[3]) for c in F64}
assert (1, 1, True) in SIZES and any(b == 1 for _, b, _ in SIZES), "the default cases lost T = 1, B = 1 or D != H"


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def _step_back(K, cache, dy, dh, dc, hx, D):
    """Backward through one sequence: (dK, db, dx, dh0, dc0); ``cache`` of the forward, ``dy`` (T, H)."""
    H = dh.shape[0]
    dK, db, dx = np.zeros_like(K), np.zeros(K.shape[1], K.dtype), np.zeros((len(cache), D), K.dtype)
    for t in reversed(range(len(cache))):
        v, i, g, f, o, c_prev, c = cache[t]
        dh = dh + dy[t]
        tc = np.tanh(c)
        dc = dc + dh * o * (1 - tc * tc)
        dz = np.concatenate([dc * g * i * (1 - i), dc * i * (1 - g * g), dc * c_prev * f * (1 - f),
                             dh * tc * o * (1 - o)])
        dK += np.outer(v, dz)
        db += dz
        dv = K @ dz
        dc = dc * f
        (dh, dx[t]) = (dv[:H], dv[H:]) if hx else (dv[D:], dv[:D])
    return dK, db, dx, dh, dc


class RowLSTM:
    """An LSTM on row vectors with one kernel K (D+H, 4H) over v = [x, h] (or [h, x]), gate blocks i, g,
    f, o, run one sequence at a time. It reads every layout the protocol declares (its own conversion
    code, not lstm_spec.layouts). ``bug`` makes it wrong in one way (the negative controls)."""

    def __init__(self, params="combined", concat="xh", transposed=True, biases=1, bias_shape="vector",
                 axes="TBF", batch=True, d_final=True, loss="sequence", bug=None, declare=None):
        self.cfg = dict(params=params, concat=concat, transposed=transposed, biases=biases, bias_shape=bias_shape,
                        axes=axes if batch else axes.replace("B", ""), batch=batch, d_final=d_final, loss=loss)
        self.bug = bug
        decl = {"cell": "lstm", "params": params, "gate_order": "igfo", "transposed": transposed, "biases": biases,
                "bias_shape": bias_shape, "axes": self.cfg["axes"], "batch": batch, "d_final": d_final, "loss": loss}
        if params == "combined":
            decl["concat"] = concat
        self.conformance = {**decl, **(declare or {})}

    # ------------------------------------------------------------------ the target's own layout reading
    def _kernel(self, p):
        """(K (D+H, 4H) over [x; h] or [h; x] as this target computes, b (4H,)); gate blocks i, g, f, o."""
        c = self.cfg
        if c["biases"] == 1:
            b = np.asarray(p["b"] if c["params"] != "per_gate" else np.concatenate([p[f"b_{g}"] for g in "icfo"]))
        elif c["params"] != "per_gate":
            b = np.asarray(p["b_ih"]) + np.asarray(p["b_hh"])
        else:
            b = np.concatenate([np.asarray(p[f"b_{g}_ih"]) + np.asarray(p[f"b_{g}_hh"]) for g in "icfo"])
        b = b.reshape(-1)
        if c["params"] == "combined":
            W = np.asarray(p["W"])
            if self.bug == "reshape":  # reads (nH, D+H) as if it were (D+H, nH)
                return W.reshape(W.shape[1], W.shape[0]), b
            return (W if c["transposed"] else W.T), b
        if c["params"] == "stacked":
            Wx, Wh = np.asarray(p["W"]), np.asarray(p["U"])
        else:
            Wx = np.concatenate([np.asarray(p[f"W_{g}"]) for g in "icfo"], axis=1 if c["transposed"] else 0)
            Wh = np.concatenate([np.asarray(p[f"U_{g}"]) for g in "icfo"], axis=1 if c["transposed"] else 0)
        if not c["transposed"]:
            Wx, Wh = Wx.T, Wh.T
        return np.concatenate([Wx, Wh] if c["concat"] == "xh" else [Wh, Wx]), b

    def _hx(self):
        return (self.cfg["concat"] == "hx") != (self.bug == "swap_concat")

    def _seqs(self, a):
        """The target's x (or dy) -> a list of (T, F) sequences."""
        axes = self.cfg["axes"]
        if not self.cfg["batch"]:
            return [np.transpose(a, [axes.index(k) for k in "TF"])]
        tbf = np.transpose(a, [axes.index(k) for k in "TBF"])
        return [tbf[:, b] for b in range(tbf.shape[1])]

    def _out(self, seqs):
        """(T, F) sequences -> the target's axes."""
        axes = self.cfg["axes"]
        if not self.cfg["batch"]:
            return np.transpose(seqs[0], ["TF".index(k) for k in axes])
        return np.transpose(np.stack(seqs, axis=1), ["TBF".index(k) for k in axes])

    def _rows(self, a, n):
        """States (B, H) -> a list of B rows; (H,) -> one."""
        a = np.asarray(a)
        return [a[b] for b in range(n)] if self.cfg["batch"] else [a]

    def _pack(self, rows):
        return np.stack(rows) if self.cfg["batch"] else rows[0]

    # ------------------------------------------------------------------ the computation
    def _run(self, K, b, x, h, c):
        H, cache, ys = h.shape[0], [], []
        if self.bug == "stateful" and getattr(self, "_carry", None) is not None:
            h, c = self._carry  # a state kept from the previous call (a classic per-sequence bug)
        for t in range(len(x)):
            v = np.concatenate([h, x[t]] if self._hx() else [x[t], h])
            i, g, f, o = np.split(v @ K + b, 4)
            i, g, f, o = _sig(i), np.tanh(g), _sig(f), _sig(o)
            cache.append((v, i, g, f, o, c, f * c + i * g))
            c = cache[-1][-1]
            h = o * np.tanh(c)
            ys.append(h)
        self._carry = (h, c)
        return np.array(ys).reshape(len(x), H), h, c, cache

    def forward(self, params, x, h0, c0):
        K, b = self._kernel(params)
        xs = self._seqs(x)
        runs = [self._run(K, b, xb, hb, cb) for xb, hb, cb in zip(xs, self._rows(h0, len(xs)),
                                                                   self._rows(c0, len(xs)), strict=True)]
        return self._out([r[0] for r in runs]), (self._pack([r[1] for r in runs]), self._pack([r[2] for r in runs]))

    def backward(self, params, x, dy, d_final=None, h0=None, c0=None):
        K, b = self._kernel(params)
        xs = self._seqs(x)
        T, n, D = len(xs[0]), len(xs), xs[0].shape[1]
        H = K.shape[1] // 4
        dys = self._dys(dy, n, T, H)
        zero = np.zeros((n, H), K.dtype) if self.cfg["batch"] else np.zeros(H, K.dtype)
        dhT = d_final["h"] if d_final is not None else zero
        dcT = d_final["c"] if d_final is not None else zero + (1.0 if self.bug == "sum_c" else 0.0)
        if self.bug == "no_d_final":
            dhT, dcT = zero, zero
        out = [_step_back(K, self._run(K, b, xb, hb, cb)[3], dyb, dhb, dcb, self._hx(), D)
               for xb, hb, cb, dyb, dhb, dcb in zip(xs, self._rows(h0, n), self._rows(c0, n), dys,
                                                    self._rows(dhT, n), self._rows(dcT, n), strict=True)]
        return self._grads(sum(o[0] for o in out), sum(o[1] for o in out), [o[2] for o in out],
                           [o[3] for o in out], [o[4] for o in out], D)

    def _dys(self, dy, n, T, H):
        """The cotangents of the outputs as (T, H) sequences (with a loss on the last output: (B, H) or (H,))."""
        if self.cfg["loss"] != "last":
            return self._seqs(dy)
        seqs = [np.zeros((T, H), np.asarray(dy).dtype) for _ in range(n)]
        for s, row in zip(seqs, self._rows(dy, n), strict=True):
            s[0 if self.bug == "first_step" else T - 1] = row
        return seqs

    def _grads(self, dK, db, dx, dh0, dc0, D):
        """The gradients in the declared layout (inverse of _kernel)."""
        c = self.cfg
        dxh, dhh = (dK[:D], dK[D:]) if c["concat"] == "xh" else (dK[-D:], dK[:-D])
        g = {"x": self._out(dx), "h0": self._pack(dh0), "c0": self._pack(dc0)}
        if c["params"] == "combined":
            g["W"] = dK if c["transposed"] else dK.T
        elif c["params"] == "stacked":
            g["W"], g["U"] = (dxh, dhh) if c["transposed"] else (dxh.T, dhh.T)
        else:
            for k, gate in enumerate("icfo"):
                for name, a in (("W", dxh), ("U", dhh)):
                    blk = a[:, k * (a.shape[1] // 4):(k + 1) * (a.shape[1] // 4)]
                    g[f"{name}_{gate}"] = blk if c["transposed"] else blk.T
        row = (lambda a: a.reshape(1, -1)) if c["bias_shape"] == "row" else (lambda a: a)
        names = ["b"] if c["params"] != "per_gate" else [f"b_{gate}" for gate in "icfo"]
        parts = [db] if c["params"] != "per_gate" else np.split(db, 4)
        for name, part in zip(names, parts, strict=True):
            for suffix in (("",) if c["biases"] == 1 else ("_ih", "_hh")):
                g[name + suffix] = row(part.copy())
        return g


def run(target, cases=CASES, diagnose=True):
    return conform(ProtocolTarget(target, "t"), cases, diagnose_failures=diagnose)


# ------------------------------------------------------------------ item 1: correct targets conform
LAYOUTS = [
    dict(params="combined", concat="xh", transposed=True, biases=1),                      # TF1, Haiku
    dict(params="combined", concat="hx", transposed=False, biases=2, bias_shape="row"),
    dict(params="combined", concat="xh", transposed=False, biases=1, bias_shape="row", axes="BFT"),
    dict(params="combined", concat="hx", transposed=True, biases=2, axes="FBT"),
    dict(params="combined", concat="xh", transposed=True, batch=False),                   # one sequence per call
    dict(params="combined", concat="hx", transposed=False, batch=False, axes="FT", bias_shape="row"),
    dict(params="stacked", transposed=True, biases=1, bias_shape="row", axes="BTF"),
    dict(params="per_gate", transposed=False, biases=2, bias_shape="row"),                # per-gate (1, H)
    dict(params="per_gate", transposed=True, biases=1, batch=False),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_a_correct_target_in_a_declared_layout_conforms(layout):
    report = run(RowLSTM(**layout))
    assert report.passed and report.exit_code == 0, format_report(report, verbose=False)
    ran = [r for r in report.results if r.status == "pass"]
    assert len(ran) == 2 * len(CONFORM_SHAPES) and any(r.case.shape[:2] == (1, 1) for r in ran)  # T = 1, B = 1 too
    assert not report.not_tested()


# ------------------------------------------------------------------ item 1: negative controls
@pytest.mark.parametrize(("layout", "bug", "declare"), [
    (dict(concat="xh"), "swap_concat", None),          # reads [h; x] where it declares [x; h]
    (dict(concat="hx"), "swap_concat", None),          # and the other way round
    (dict(concat="hx"), None, {"concat": "xh"}),       # [h; x] declared as [x; h]
    (dict(transposed=False), "reshape", None),         # (nH, D+H) read as (D+H, nH): a reshape, no transpose
    (dict(transposed=True), None, {"transposed": False}),  # the orientation declared wrong
    (dict(biases=2), None, {"biases": 1, "bias_shape": "row"}),  # row biases declared with one bias: b missing
    (dict(axes="BFT"), None, {"axes": "BTF"}),         # the axes declared wrong
    (dict(batch=False), "stateful", None),             # keeps the state between sequences
    (dict(params="stacked", transposed=True), None, {"gate_order": "ifgo"}),  # the gate order declared wrong
])
def test_a_target_whose_layout_is_not_the_declared_one_does_not_conform(layout, bug, declare):
    report = run(RowLSTM(**layout, bug=bug, declare=declare), F64, diagnose=False)
    assert not report.passed and report.exit_code == 1, format_report(report, verbose=False)


def test_a_bias_row_declared_as_a_vector_fails_on_the_shape():
    target = RowLSTM(bias_shape="row", declare={"bias_shape": "vector"})
    report = run(target, F64[:1], diagnose=False)
    assert not report.passed
    assert all(r.status == "error" or any("shape" in x.detail for x in r.failing) for r in report.results)


def test_the_header_says_the_target_is_called_once_per_batch_element():
    target = ProtocolTarget(RowLSTM(batch=False), "t")
    text = "\n".join(header(target))
    assert "once per batch element" in text and "combined kernel over [x; h]" in text, text
    calls = []

    class Counting(RowLSTM):
        def forward(self, params, x, h0, c0):
            calls.append((x.shape, h0.shape))
            return super().forward(params, x, h0, c0)

    case = next(c for c in F64 if c.shape[1] == 3)
    assert run(Counting(batch=False), [case]).passed
    T, B, D, H = case.shape
    assert calls[:B] == [((T, D), (H,))] * B  # then the backward's forward


# ------------------------------------------------------------------ item 3: partial backward interfaces
class NoFinalCotangents(RowLSTM):
    """backward(params, x, dy, h0, c0): no cotangents on the final states (most hand-written BPTT)."""

    def __init__(self, bug=None, declare=True):
        super().__init__(d_final=False, bug=bug, declare=None if declare else {"d_final": True})

    def backward(self, params, x, dy, h0, c0):
        return super().backward(params, x, dy, h0=h0, c0=c0)


def test_a_backward_without_final_cotangents_conforms_and_says_what_was_not_tested():
    report = run(NoFinalCotangents())
    assert report.passed and report.exit_code == 0, format_report(report, verbose=False)
    text = format_report(report, verbose=False)
    assert "not tested: cotangents on the final states" in text, text
    assert "cotangents on the final states: zero in every case" in text
    assert report_dict(report)["not_tested"] == report.not_tested()


@pytest.mark.parametrize(("bug", "declare"), [("sum_c", True), (None, False)])
def test_final_cotangents_negative_controls(bug, declare):
    """Declared, but the backward assumes a cotangent 1 on c_T; undeclared, it cannot take d_final."""
    report = run(NoFinalCotangents(bug, declare), F64[:3], diagnose=False)
    assert not report.passed and report.exit_code == 1


def test_a_backward_that_ignores_the_final_cotangents_does_not_conform_undeclared():
    report = run(RowLSTM(bug="no_d_final"), F64[:2], diagnose=False)
    assert {"d W_i", "d x", "d h0"} <= {x.quantity for r in report.results for x in r.failing}


@pytest.mark.parametrize("layout", [dict(), dict(batch=False, d_final=False), dict(axes="BTF", bias_shape="row")])
def test_a_loss_on_the_last_output_only_conforms_and_says_what_was_not_tested(layout):
    report = run(RowLSTM(loss="last", **layout))
    assert report.passed and report.exit_code == 0, format_report(report, verbose=False)
    text = format_report(report, verbose=False)
    assert "not tested: cotangents on the outputs before the last step" in text, text
    assert ("not tested: cotangents on the final states" in text) == (layout.get("d_final") is False)


def test_a_loss_on_the_last_output_negative_control():
    """The cotangent of the last output applied at the first step: wrong as soon as T > 1."""
    report = run(RowLSTM(loss="last", bug="first_step"), F64, diagnose=False)
    failing = [r for r in report.results if r.status != "pass"]
    assert failing and all(r.case.shape[0] > 1 for r in failing) and report.exit_code == 1


def test_the_reference_of_a_last_output_loss_has_dy_only_at_the_last_valid_step():
    from dataclasses import replace

    from lstm_spec.conformance.problem import make_problem

    case = replace(next(c for c in CASES if c.lengths is not None), last_output_loss=True, zero_d_final=True)
    p = make_problem(case)
    T = case.shape[0]
    nonzero = [sorted(set(np.nonzero(p.dy[:, b])[0])) for b in range(case.shape[1])]
    assert nonzero == [[L - 1] for L in case.lengths] and T in case.lengths
    assert all(not v.any() for v in p.d_final[0].values())


# ------------------------------------------------------------------ bad declarations: at load, exit 2
@pytest.mark.parametrize(("changes", "says"), [
    ({"params": "combo"}, ["params", "'combined'"]),
    ({"concat": "yx"}, ["concat", "'xh' or 'hx'"]),
    ({"params": "stacked", "concat": "xh"}, ["concat", "combined"]),
    ({"bias_shape": "column"}, ["bias_shape", "'vector' or 'row'"]),
    ({"bias_shape": (1, 16)}, ["bias_shape", "'row'"]),
    ({"axes": "TBX"}, ["axes", "T, B, F"]),
    ({"axes": "TB"}, ["axes", "'TBF'"]),
    ({"axes": 3}, ["axes", "permutation"]),
    ({"axes": "BTF", "batch_major": False}, ["batch_major", "axes", "one of them"]),
    ({"batch": False, "axes": "TBF"}, ["axes", "T, F", "no batch dimension"]),
    ({"batch": False, "axes": "TF", "batch_major": True}, ["batch_major", "batch"]),
    ({"batch": "no"}, ["batch", "True or False"]),
    ({"batch": False, "axes": "TF", "features": ["lengths"]}, ["lengths", "batch"]),
    ({"d_final": "no"}, ["d_final", "True or False"]),
    ({"loss": "first"}, ["loss", "'sequence' or 'last'"]),
])
def test_a_layout_declaration_mistake_is_one_line_at_load(changes, says):
    with pytest.raises(TargetError) as info:
        ProtocolTarget(RowLSTM(declare=changes), "t")
    message = str(info.value)
    assert "\n" not in message
    for text in says:
        assert text in message, message


@pytest.mark.parametrize("key", ["d_final", "loss"])
def test_a_backward_declaration_without_a_backward_is_refused(key):
    class ForwardOnly:
        conformance = {"params": "combined", key: False if key == "d_final" else "last"}

        def forward(self, params, x, h0, c0):
            raise NotImplementedError

    with pytest.raises(TargetError, match="no `backward`"):
        ProtocolTarget(ForwardOnly(), "t")


def test_a_layout_declaration_mistake_is_exit_2_from_the_cli(tmp_path, capfd):
    path = tmp_path / "combined_p15.py"
    path.write_text("class T:\n    conformance = {'params': 'combined', 'concat': 'x;h'}\n"
                    "    def forward(self, params, x, h0, c0):\n        raise NotImplementedError\n")
    code = lstm_spec_main(["conform", f"{path}:T", "--timeout", "0", "--quiet"])
    out, err = capfd.readouterr()
    assert code == 2 and not out and len(err.strip().splitlines()) == 1
    assert "concat" in err and "'xh' or 'hx'" in err and "Traceback" not in err
