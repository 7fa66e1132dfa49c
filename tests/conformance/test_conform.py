"""Conformance: the catalogue of broken implementations is caught on the right quantity with the right
diagnosis; correct implementations (the reference through the protocol, a hand-written NumPy LSTM in
several layouts, PyTorch, Keras, Flax, ONNX Runtime) pass; each adapter's comparison can fail."""

from __future__ import annotations

import collections
import importlib.util
import re

import numpy as np
import pytest

from lstm_spec.cli import main
from lstm_spec.conformance import (
    Case,
    ProtocolTarget,
    Target,
    TargetError,
    Unavailable,
    conform,
    default_cases,
    expected,
    format_report,
    load_target,
    make_problem,
)
from lstm_spec.conformance.compare import compare
from lstm_spec.conformance.examples import BUGS, NumpyLSTM, reference_lstm

QUICK = [c for c in default_cases() if c.direction == "forward" and c.lengths is None and c.layers == 1]


def _summary(report):
    return collections.Counter(d.key for r in report.results for d in r.diagnoses)


# ----------------------------------------------------------------------------------------- the catalogue
@pytest.mark.parametrize("bug", sorted(BUGS))
def test_broken_implementation_is_caught_and_diagnosed(bug):
    what, quantity, key = BUGS[bug]
    report = conform(ProtocolTarget(NumpyLSTM(bug=bug), bug))
    assert not report.passed, f"{bug} ({what}) was not caught"
    failing = {row.quantity for r in report.results for row in r.failing}
    assert quantity in failing, f"{bug}: expected a failure on {quantity}, failing: {sorted(failing)}"
    counts = _summary(report)
    assert counts, f"{bug}: no diagnosis"
    top, _ = counts.most_common(1)[0]
    assert top == key, f"{bug}: diagnosed as {counts}, expected {key}"
    # every failing single-layer, single-direction, full-length forward case names the bug
    for r in report.results:
        if r.status == "FAIL" and r.case.single and r.case.lengths is None and r.case.direction == "forward":
            assert key in {d.key for d in r.diagnoses}, (r.case.name, r.diagnoses)
    assert len(BUGS) >= 12


def _cell_exists(cell):
    return importlib.util.find_spec(f"lstm_spec.reference.{cell}") is not None


@pytest.mark.skipif(not _cell_exists("peephole"), reason="the peephole cell is not in the spec yet")
def test_output_peephole_on_old_cell_is_diagnosed():
    from lstm_spec.conformance.examples import NumpyPeephole

    assert conform(ProtocolTarget(NumpyPeephole())).passed
    report = conform(ProtocolTarget(NumpyPeephole(bug="output_peephole_old_cell")))
    assert not report.passed
    assert set(_summary(report)) == {"output_peephole_old_cell"}
    assert all(r.diagnoses for r in report.results if r.status == "FAIL")


def test_catalogue_diagnoses_are_specific():
    """A bug is not also explained by an unrelated signature (on the quick cases)."""
    for bug, (_, _, key) in BUGS.items():
        report = conform(ProtocolTarget(NumpyLSTM(bug=bug), bug), QUICK)
        assert set(_summary(report)) == {key}, (bug, _summary(report))


@pytest.mark.parametrize("target", [
    reference_lstm, NumpyLSTM(), NumpyLSTM(transposed=True), NumpyLSTM(biases=2, batch_major=True),
    NumpyLSTM(gate_order="iofc"), NumpyLSTM(per_gate=True, biases=2, transposed=True),
], ids=["reference", "stacked", "transposed", "two-bias-batch-major", "onnx-order", "per-gate-two-bias"])
def test_correct_implementations_pass(target):
    report = conform(ProtocolTarget(target))
    assert report.passed, format_report(report, verbose=False)
    assert any(r.status == "pass" for r in report.results)


def test_every_cell_through_the_protocol():
    """The protocol is not LSTM-specific: every cell's reference passes through it, and a stacked,
    transposed, batch-major wrapper of it too (parameters that are no gate's W/U/b pass through)."""
    from lstm_spec.conformance.examples import ReferenceCell
    from lstm_spec.layouts.frameworks import Layout, gate_names, grads_from_layout
    from lstm_spec.spec import builtin_cells

    class Stacked(ReferenceCell):
        def __init__(self, cell):
            super().__init__(cell)
            self.conformance.update(params="stacked", transposed=True, batch_major=True)
            self.layout = Layout("stacked", (), True, 1, True)
            self.gates = gate_names(self.module.SIGNATURE.parameters)

        def _canon(self, params):
            return grads_from_layout(params, self.layout, self.gates)  # a linear map: works for values too

        def forward(self, params, x, **init):
            y, final = super().forward(self._canon(params), np.swapaxes(x, 0, 1), **init)
            return np.swapaxes(y, 0, 1), final

        def backward(self, params, x, dy, d_final, **init):
            from lstm_spec.layouts.frameworks import to_layout

            g = super().backward(self._canon(params), np.swapaxes(x, 0, 1), np.swapaxes(dy, 0, 1), d_final, **init)
            out = to_layout({k: v for k, v in g.items() if k in self.module.SIGNATURE.parameters}, self.layout)
            out.update({k: v for k, v in g.items() if k not in self.module.SIGNATURE.parameters})
            out["x"] = np.swapaxes(g["x"], 0, 1)
            return out

    import importlib

    cells = [c for c in builtin_cells() if _cell_exists(c)
             and list(importlib.import_module(f"lstm_spec.reference.{c}").SIGNATURE.inputs) == ["x"]]
    assert "lstm" in cells and "rnn_tanh" in cells
    for cell in cells:
        cases = [c for c in default_cases([cell]) if c.single and c.direction == "forward" and c.lengths is None]
        impls = [ReferenceCell(cell)]
        if gate_names(impls[0].module.SIGNATURE.parameters):
            impls.append(Stacked(cell))
        for impl in impls:
            report = conform(ProtocolTarget(impl), cases)
            assert report.passed, format_report(report, verbose=False)


def test_declared_layout_must_match():
    """A correct implementation declaring the wrong gate order fails as a permutation."""
    impl = NumpyLSTM(gate_order="iofc")
    impl.conformance["gate_order"] = tuple("ifco")
    report = conform(ProtocolTarget(impl), QUICK)
    assert not report.passed and set(_summary(report)) == {"gate_order"}


def test_noise_gets_no_diagnosis():
    """Negative control of the diagnosis: a perturbation that is no known bug is not named as one."""
    class Noisy(Target):
        name = "noisy"
        features = frozenset({"gradients"})

        def run(self, problem):
            res = expected(problem, with_grads=True)
            rng = np.random.default_rng(1)
            res["y"] = res["y"] + 1e-3 * rng.standard_normal(res["y"].shape)
            return res

    report = conform(Noisy(), QUICK)
    assert not report.passed
    assert not _summary(report)
    assert "no known bug signature reproduces" in format_report(report)


def test_compare_reports_position_and_shape():
    case = Case("lstm", (3, 2, 4, 5), "float64", 0)
    p = make_problem(case)
    want = expected(p)
    got = {k: v.copy() for k, v in want.items()}
    got["y"][2, 1, 3] += 1.0
    got["d W_o"][4, 1] += 1.0
    got["d x"] = got["d x"][:2]
    rows = {r.quantity: r for r in compare(p, got, want, 1e-10)}
    assert rows["y"].worst == "t=2 b=1 unit=3" and not rows["y"].passed
    assert rows["d W_o"].worst == "gate=o unit=4 in=1"
    assert "shape" in rows["d x"].detail and not rows["d x"].passed
    assert rows["h_T"].passed and rows["h_T"].max_abs == 0


def test_padded_outputs_are_not_compared():
    case = Case("lstm", (5, 3, 4, 3), "float64", 3, lengths=(5, 2, 1))
    p = make_problem(case)
    want = expected(p)
    got = dict(want)
    got["y"] = want["y"].copy()
    got["y"][3:, 1] = 123.0  # padding: any convention is fine
    assert all(r.passed for r in compare(p, got, want, 1e-12))
    got["y"][1, 1] += 1.0  # a valid step
    assert not all(r.passed for r in compare(p, got, want, 1e-12))


# ----------------------------------------------------------------------------------------- protocol errors
def test_protocol_errors_say_what_to_fix(tmp_path):
    with pytest.raises(TargetError, match="conformance"):
        ProtocolTarget(object(), "x")
    bad = type("Bad", (), {"conformance": {"cell": "lstm", "colour": 1}, "forward": lambda self, *a: None})()
    with pytest.raises(TargetError, match="unknown conformance key"):
        ProtocolTarget(bad, "bad")
    with pytest.raises(TargetError, match="no such file"):
        load_target(str(tmp_path / "missing.py") + ":obj")
    with pytest.raises(TargetError, match="expected a built-in adapter name"):
        load_target("nonsense")


def test_target_raising_is_an_error_not_a_crash():
    class Raises:
        conformance = {"cell": "lstm"}

        def forward(self, params, x, h0, c0):
            raise RuntimeError("boom")

    report = conform(ProtocolTarget(Raises()), QUICK[:1])
    assert report.results[0].status == "error" and "boom" in report.results[0].detail
    assert not report.passed


# ----------------------------------------------------------------------------------------- CLI
def test_cli_failing_target(capsys):
    rc = main(["conform", "lstm_spec.conformance.examples:broken_forget_bias", "--quick", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL" in out and "diagnosis: forget bias added at run time" in out
    assert "DOES NOT CONFORM" in out


def test_cli_passing_file_target(tmp_path, capsys):
    f = tmp_path / "my_lstm.py"
    f.write_text("from lstm_spec.conformance.examples import NumpyLSTM\nimpl = NumpyLSTM(transposed=True)\n")
    rc = main(["conform", f"{f}:impl", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "CONFORMS" in out and "summary" in out and "worst element" not in out  # passing rows: --verbose
    assert main(["conform", f"{f}:impl", "--quiet", "--verbose"]) == 0
    assert "worst element" in capsys.readouterr().out


def test_cli_missing_framework_is_skipped(monkeypatch, capsys):
    from lstm_spec.conformance import adapters

    monkeypatch.setitem(adapters.ADAPTERS, "torch", ("no_such_adapter_module", "X", "torch"))
    assert main(["conform", "torch"]) == 3
    out = capsys.readouterr().out
    assert "skipped" in out and 'pip install "lstm-spec[torch]"' in out and "Traceback" not in out
    assert main(["conform", "torch", "--allow-missing"]) == 0
    with pytest.raises(Unavailable):
        load_target("torch")


# ----------------------------------------------------------------------------------------- framework adapters
class Permuted(Target):
    """Negative control for an adapter: the same framework given the gate blocks in a wrong order."""

    def __init__(self, inner):
        self.inner = inner
        for k in ("name", "cells", "dtypes", "features", "biases", "tolerance_key", "variants"):
            setattr(self, k, getattr(inner, k, ()))

    def supports(self, case):
        return self.inner.supports(case)

    def run(self, problem):
        swap = {"c": "o", "o": "c"}
        bad = [{(k[:2] + swap[k[2:]] if k[2:] in swap and k[:2] in ("W_", "U_", "b_") else k): v
                for k, v in p.items()} for p in problem.params]
        ih = [{(k[:2] + swap[k[2:]] if k[2:] in swap else k): v for k, v in b.items()} for b in problem.bias_ih]
        res = self.inner.run(problem.with_(params=bad, bias_ih=ih))
        # the same wrong conversion maps the gradients back
        def ren(k):
            return re.sub(r"^d ([WUb])_([co])", lambda m: f"d {m.group(1)}_{swap[m.group(2)]}", k)
        return {ren(k): v for k, v in res.items()}


def _framework(name, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed: pip install \"lstm-spec[{name}]\"")
    return load_target(name)


@pytest.mark.parametrize("name,module", [("torch", "torch"), ("keras", "keras"), ("flax", "flax"),
                                         ("onnxruntime", "onnxruntime")])
def test_framework_adapter_conforms(name, module):
    target = _framework(name, module)
    report = conform(target)
    assert report.passed, format_report(report, verbose=False)
    assert sum(r.status == "pass" for r in report.results) >= 9
    for dt, (err, _) in report.max_errors().items():
        assert err <= (1e-10 if dt == "float64" else 5e-4)


@pytest.mark.parametrize("name,module", [("torch", "torch"), ("keras", "keras"), ("flax", "flax"),
                                         ("onnxruntime", "onnxruntime")])
def test_framework_adapter_negative_control(name, module):
    target = _framework(name, module)
    cells = [c for c in QUICK if c.dtype in target.dtypes][:2]
    report = conform(Permuted(target), cells)
    assert not report.passed
    assert set(_summary(report)) == {"gate_order"}, _summary(report)


def test_only_gate_biases_are_split_between_two_bias_sides():
    """b = b_ih + b_hh holds for gate biases only: the layer norm's b_n and the output layer's b_y are not
    split (splitting b_n made the stacked protocol target raise), nor the reset-after GRU's b_n / b_hn."""
    import importlib

    from lstm_spec.conformance.problem import bias_names

    def names(cell):
        return bias_names(importlib.import_module(f"lstm_spec.reference.{cell}"))

    assert names("lstm_layer_norm") == ["b_f", "b_i", "b_c", "b_o"]
    assert names("lstm_mse") == ["b_f", "b_i", "b_c", "b_o"]
    assert names("gru_reset_after") == ["b_r", "b_z"]
    assert names("lstm") == ["b_f", "b_i", "b_c", "b_o"]
