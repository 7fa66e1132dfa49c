"""The protocol's declaration, checked when the target loads, and what it declares (issue 15 items 3, 4, 6):

- item 6: a declaration mistake (unknown key, wrong type, unknown cell, a gate order that is no
  permutation) is exit 2 at load with the accepted values; PyTorch's "ifgo" (g: the candidate) is our
  "ifco"; a gradient returned under an unknown name (``dW``) is a protocol error (exit 2) naming the
  expected names, never dropped; a ``path/to/file.py:object`` target imports the modules beside it;
- item 4: a backward that raises keeps the forward's comparison;
- item 3: ``"gradients"`` (which gradients the backward returns) and ``"initial_states": False``: what
  is not provided is not compared, not diagnosed, and listed as not tested.
"""
import importlib.util
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lstm_spec.cli import main as lstm_spec_main
from lstm_spec.conformance.examples import NumpyLSTM
from lstm_spec.conformance.runner import conform, default_cases, format_report, report_dict
from lstm_spec.conformance.targets import ProtocolTarget, TargetError, load_target

INDEPENDENT = Path(__file__).resolve().parents[1] / "data" / "independent"
QUICK = [c for c in default_cases(dtypes=("float64",)) if c.direction == "forward" and c.layers == 1
         and c.lengths is None][:3]


def declared(**changes):
    """A correct NumpyLSTM (stacked, gate order ifco) with its declaration changed."""
    target = NumpyLSTM()
    target.conformance.update(changes)
    return target


def cli(capfd, *args):
    """(exit code, stdout, stderr) of `lstm-spec conform ARGS --timeout 0 --quiet` in this process."""
    code = lstm_spec_main(["conform", *map(str, args), "--timeout", "0", "--quiet"])
    out, err = capfd.readouterr()
    return code, out, err


def target_file(folder: Path, body: str, name: str = "my_lstm.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


# ------------------------------------------------------------------ item 6: the declaration, at load
@pytest.mark.parametrize("order", ["ifgo", ("i", "f", "g", "o")])
def test_pytorch_ifgo_is_accepted_as_our_ifco_and_said_so(order):
    target = ProtocolTarget(declared(gate_order=order), "t")
    assert target.layout.gate_order == ("i", "f", "c", "o")
    assert "ifgo" in target.description and "g: the candidate" in target.description
    report = conform(target, QUICK)
    assert report.passed, format_report(report)


@pytest.mark.parametrize(("changes", "says"), [
    ({"gate_order": "ifxo"}, ["'ifco'", "PyTorch's 'ifgo'"]),
    ({"gate_order": ("i", "f", "c")}, ["permutation", "'ifco'"]),
    ({"gate_order": 4}, ["gate_order", "'ifco'"]),
    ({"gate-order": "ifco"}, ["unknown conformance key", "'gate_order'"]),
    ({"transposed": "yes"}, ["transposed", "True or False"]),
    ({"batch_major": 1}, ["batch_major", "True or False"]),
    ({"biases": "2"}, ["biases", "1 or 2"]),
    ({"biases": True}, ["biases", "1 or 2"]),
    ({"params": "stack"}, ["params", "'per_gate' or 'stacked'"]),
    ({"cell": "lstmm"}, ["unknown cell 'lstmm'", "did you mean 'lstm'", "peephole"]),
    ({"cell": 3}, ["cell", "a cell name"]),
    ({"dtypes": ["float16"]}, ["dtypes", "float32", "float64"]),
    ({"dtypes": "float32"}, ["dtypes", "a list"]),
    ({"features": ["bidirectional"]}, ["features", "lengths", "reverse"]),
    ({"name": 7}, ["name", "a string"]),
    ({"gradients": ["dW"]}, ["gradients", "'dW'", "'W'", "'parameters'"]),
    ({"gradients": "W"}, ["gradients", "a list"]),
    ({"initial_states": "no"}, ["initial_states", "True or False"]),
    ({"initial_states": False, "gradients": ["parameters", "h0"]}, ["'h0'", "initial_states"]),
])
def test_a_declaration_mistake_is_one_line_at_load_with_the_accepted_values(changes, says):
    with pytest.raises(TargetError) as info:
        ProtocolTarget(declared(**changes), "t")
    message = str(info.value)
    assert "\n" not in message
    for text in says:
        assert text in message, message


def test_gradients_declared_without_a_backward_is_refused():
    class ForwardOnly:
        conformance = {"cell": "lstm", "params": "stacked", "gradients": ["parameters"]}

        def forward(self, params, x, h0, c0):
            raise NotImplementedError

    with pytest.raises(TargetError, match="no `backward`"):
        ProtocolTarget(ForwardOnly(), "t")


def test_a_declaration_mistake_is_exit_2_from_the_cli(tmp_path, capfd):
    path = target_file(tmp_path, """
        from lstm_spec.conformance.examples import NumpyLSTM
        class T(NumpyLSTM):
            def __init__(self):
                super().__init__()
                self.conformance["gate_order"] = "ifxo"
    """)
    code, out, err = cli(capfd, f"{path}:T")
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and "gate_order" in err and "Traceback" not in err


# ------------------------------------------------------------------ item 6: results under unknown names
class RenamedGradients(NumpyLSTM):
    """Returns the gradient of W as 'dW': a protocol mistake, not a missing gradient."""

    def backward(self, params, x, dy, d_final, **kw):
        g = super().backward(params, x, dy, d_final, **kw)
        g["dW"] = g.pop("W")
        return g


def test_a_gradient_under_an_unknown_name_is_a_protocol_error_naming_the_expected_ones():
    report = conform(ProtocolTarget(RenamedGradients(), "t"), QUICK[:1])
    r = report.results[0]
    assert r.status == "error" and r.protocol
    assert "'dW'" in r.detail and "'W'" in r.detail and "'h0'" in r.detail
    assert report.exit_code == 2 and not report.passed
    assert [x.quantity for x in r.rows] == ["y", "h_T", "c_T"] and all(x.passed for x in r.rows)  # forward compared
    assert not r.diagnoses
    assert "breaks the protocol" in format_report(report)


def test_a_final_state_under_an_unknown_name_is_a_protocol_error():
    class ExtraState(NumpyLSTM):
        def forward(self, params, x, **kw):
            y, (h, c) = super().forward(params, x, **kw)
            return y, {"h": h, "c": c, "n": c}

    report = conform(ProtocolTarget(ExtraState(), "t"), QUICK[:1])
    assert report.exit_code == 2 and "'n'" in report.results[0].detail, report.results[0].detail


# ------------------------------------------------------------------ item 6: a file target's folder
@pytest.mark.parametrize("timeout", ["0", "60"])
def test_a_file_target_imports_a_module_beside_it(tmp_path, monkeypatch, capfd, timeout):
    folder = tmp_path / "impl"
    folder.mkdir()
    target_file(folder, "from lstm_spec.conformance.examples import NumpyLSTM as Base\n", "my_helpers_p15.py")
    path = target_file(folder, """
        from my_helpers_p15 import Base
        class T(Base):
            pass
    """)
    monkeypatch.chdir(tmp_path)  # not the target's folder
    code = lstm_spec_main(["conform", f"{path}:T", "--quick", "--dtype", "float64", "--timeout", timeout, "--quiet"])
    out, err = capfd.readouterr()
    assert code == 0, out + err


def test_a_file_target_whose_import_fails_is_exit_2_in_one_line(tmp_path, capfd):
    path = target_file(tmp_path, "import no_such_module_beside_it_p15\nclass T: pass\n")
    code, out, err = cli(capfd, f"{path}:T")
    assert code == 2 and "Traceback" not in err
    assert "ModuleNotFoundError: No module named 'no_such_module_beside_it_p15'" in err


# ------------------------------------------------------------------ item 4: forward kept when the backward raises
@pytest.mark.parametrize("bug", [None, "forget_bias"])
def test_a_raising_backward_keeps_the_forward_comparison(bug):
    class Raising(NumpyLSTM):
        def backward(self, *args, **kw):
            raise RuntimeError("backward not implemented for this shape")

    report = conform(ProtocolTarget(Raising(bug), "t"), QUICK[2:3])
    r = report.results[0]
    assert r.status == "error" and not r.protocol and report.exit_code == 1
    assert "RuntimeError: backward not implemented for this shape" in r.detail and "backward" in r.detail
    assert [x.quantity for x in r.rows] == ["y", "h_T", "c_T"]
    assert all(x.passed for x in r.rows) == (bug is None)
    text = format_report(report)
    assert "c_T" in text and "RuntimeError" in text
    if bug:
        assert r.diagnoses and "forget" in r.diagnoses[0].title.lower(), r.diagnoses


def test_a_raising_backward_keeps_the_forward_comparison_in_a_worker_process(tmp_path):
    path = target_file(tmp_path, """
        from lstm_spec.conformance.examples import NumpyLSTM
        class Raising(NumpyLSTM):
            def backward(self, *args, **kw):
                raise RuntimeError("no backward")
    """)
    report = conform(load_target(f"{path}:Raising"), QUICK[:1], timeout=60)
    r = report.results[0]
    assert r.status == "error" and "no backward" in r.detail, r.detail
    assert [x.quantity for x in r.rows] == ["y", "h_T", "c_T"] and all(x.passed for x in r.rows)


# ------------------------------------------------------------------ item 3: partial interfaces, declared
class ParamsOnly(NumpyLSTM):
    """A correct LSTM whose backward returns the parameter gradients only."""

    def __init__(self, gradients=("parameters",)):
        super().__init__()
        if gradients is not None:
            self.conformance["gradients"] = list(gradients)

    def backward(self, params, x, dy, d_final, **kw):
        g = super().backward(params, x, dy, d_final, **kw)
        return {k: v for k, v in g.items() if k in ("W", "U", "b")}


@pytest.mark.parametrize("gradients", [("parameters",), ("W", "U", "b")])
def test_declared_gradients_are_compared_and_the_others_listed_as_not_tested(gradients):
    report = conform(ProtocolTarget(ParamsOnly(gradients), "t"), QUICK)
    assert report.passed and report.exit_code == 0, format_report(report)
    quantities = {x.quantity for r in report.results for x in r.rows}
    assert {"d W_i", "d b_o", "y"} <= quantities and not quantities & {"d x", "d h0", "d c0"}
    text = format_report(report, verbose=False)
    assert "not tested: d x, d h0, d c0" in text, text
    assert report_dict(report)["not_tested"]


def test_undeclared_missing_gradients_still_fail():
    report = conform(ProtocolTarget(ParamsOnly(None), "t"), QUICK[:1])
    assert report.exit_code == 1
    assert {x.quantity for x in report.results[0].failing} == {"d x", "d h0", "d c0"}


def test_a_gradient_returned_but_not_declared_is_a_protocol_error():
    report = conform(ProtocolTarget(declared(gradients=["W", "U", "b"]), "t"), QUICK[:1])
    assert report.exit_code == 2 and "'x'" in report.results[0].detail, report.results[0].detail


def test_a_declared_parameter_gradient_is_not_diagnosed_from_the_undeclared_ones():
    """A forward bug on a params-only target: the diagnosis sees only what was returned."""
    target = ParamsOnly()
    target.bug = "forget_bias"
    report = conform(ProtocolTarget(target, "t"), QUICK[2:3])
    r = report.results[0]
    assert r.status == "FAIL" and not {x.quantity for x in r.rows} & {"d x", "d h0", "d c0"}
    assert r.diagnoses and "forget" in r.diagnoses[0].title.lower(), r.diagnoses


class NoInitialStates(NumpyLSTM):
    """Takes no initial states: forward(params, x) from zero states."""

    def __init__(self, shift=0.0):
        super().__init__()
        self.conformance.update(initial_states=False, gradients=["parameters", "x"])
        self.shift = shift

    def _zeros(self, x):
        B, H = x.shape[1], self._H
        return {"h0": np.zeros((B, H), x.dtype) + self.shift, "c0": np.zeros((B, H), x.dtype)}

    def forward(self, params, x, **kw):
        assert not kw, kw
        self._H = np.asarray(params["U"]).shape[1]
        return super().forward(params, x, **self._zeros(x))

    def backward(self, params, x, dy, d_final, **kw):
        assert not kw, kw
        self._H = np.asarray(params["U"]).shape[1]
        g = super().backward(params, x, dy, d_final, **self._zeros(x))
        return {k: v for k, v in g.items() if k not in ("h0", "c0")}


def test_a_target_without_initial_states_runs_from_zero_states_and_says_what_was_not_tested():
    report = conform(ProtocolTarget(NoInitialStates(), "t"), QUICK)
    assert report.passed and report.exit_code == 0, format_report(report)
    text = format_report(report, verbose=False)
    assert "t = 0 terms with non-zero initial states" in text and "d h0, d c0" in text, text
    assert "initial states: zero" in text


def test_a_target_without_initial_states_is_still_held_to_zero_states():
    report = conform(ProtocolTarget(NoInitialStates(shift=0.3), "t"), QUICK[:1])
    assert report.exit_code == 1 and "y" in {x.quantity for x in report.results[0].failing}


def _independent(file, obj):
    spec = importlib.util.spec_from_file_location(f"p15_{file[:-3]}", INDEPENDENT / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    target = getattr(module, obj)()
    target.conformance = dict(target.conformance, gradients=["parameters"])
    return target


@pytest.mark.parametrize(("file", "obj"), [("keras_params_only.py", "KerasStyleLSTM"),
                                           ("onnx_params_only.py", "OnnxStyleLSTM")])
def test_the_independent_params_only_targets_conform_once_declared(file, obj):
    target = ProtocolTarget(_independent(file, obj), file)
    cases = default_cases(target.cells, [d for d in ("float64", "float32") if d in target.dtypes])
    report = conform(target, cases)
    assert report.passed and report.exit_code == 0, format_report(report, verbose=False)
    assert "not tested: d x, d h0, d c0" in format_report(report, verbose=False)



def test_the_command_exits_2_for_a_result_under_an_unknown_name(tmp_path, capsys):
    """A gradient returned as `dW` breaks the protocol: the command's exit status is 2, naming the expected."""
    from lstm_spec.cli import main

    f = tmp_path / "renamed.py"
    f.write_text(
        "from lstm_spec.conformance.examples import NumpyLSTM\n"
        "class Renamed(NumpyLSTM):\n"
        "    def backward(self, *a, **k):\n"
        "        g = super().backward(*a, **k)\n"
        "        g['dW'] = g.pop('W')\n"
        "        return g\n"
        "impl = Renamed()\n")
    assert main(["conform", f"{f}:impl", "--quiet", "--timeout", "0", "--quick", "--dtype", "float64"]) == 2
    assert "'W'" in capsys.readouterr().out
