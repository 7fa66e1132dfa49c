"""A spec's [constants] (issue 15 item 2): named numbers (a forget bias added at run time, clip bounds, the
layer-norm epsilon) declared in the spec, symbols without gradients in the derivation, names in the generated
code, overridable with forward(..., constants=...) without regenerating, in `lstm-spec verify --constants` and in
a conformance target's declaration."""

import re

import numpy as np
import pytest

from lstm_spec.checks import mutants
from lstm_spec.checks.cases import SHAPES, alternative_constants, random_instance, run, with_constants
from lstm_spec.checks.numeric import check_derivatives
from lstm_spec.checks.runner import unrolled_sizes, verify_cell
from lstm_spec.checks.symbolic import check_step, check_unrolled
from lstm_spec.derivations import derive
from lstm_spec.derivations.codegen import generate_module
from lstm_spec.reference import lstm, lstm_cell_clip, lstm_layer_norm, peephole, rnn_tanh
from lstm_spec.reference._runtime import InputError
from lstm_spec.spec import SpecError, load

from ..conftest import write_spec

FORGET_BIAS_CELLS = ["lstm", "lstm_cell_clip", "lstm_layer_norm", "lstm_stacked2", "lstm_two_bias", "peephole",
                     "peephole_cell_clip", "peephole_projection", "projection", "projection_clip"]


def _module(text_or_cell, name="lstm_spec_constants_test"):
    cell = load(text_or_cell) if not hasattr(text_or_cell, "equations") else text_or_cell
    return mutants.load_module(generate_module(derive(cell)), name)


def _spec(tmp_path, cell: str, *edits):
    text = load(cell).path.read_text()
    for a, b in edits:
        assert a in text, a
        text = text.replace(a, b)
    return write_spec(tmp_path, text, f"{cell}_edited.toml")


# ----------------------------------------------------------------------------------------- the spec
def test_the_built_in_cells_declare_their_constants():
    assert {n: load(n).constants["forget_bias"].value for n in FORGET_BIAS_CELLS} == dict.fromkeys(FORGET_BIAS_CELLS,
                                                                                                    0.0)
    assert load("lstm_cell_clip").constants["cell_clip"].positive
    assert load("lstm_clip").constants["gate_clip"].value == 1.0
    assert load("lstm_layer_norm").constants["eps"].value == 1e-5
    assert set(load("projection_clip").constants) == {"forget_bias", "cell_clip", "proj_clip"}
    assert "0.00001" not in "".join(eq.text for eq in load("lstm_layer_norm").equations)


def test_a_constant_is_a_number_or_a_table_with_value_and_doc(tmp_path):
    text = load("lstm").path.read_text()
    line = next(t for t in text.splitlines() if t.startswith("forget_bias ="))
    assert line.startswith('forget_bias = { value = 0.0, doc = "')
    cell = load(write_spec(tmp_path, text.replace(line, "forget_bias = 0.5")))
    assert cell.constants["forget_bias"].value == 0.5 and cell.constants["forget_bias"].doc == ""


@pytest.mark.parametrize("edit, message", [
    (("forget_bias = {", "forget_bias = { unit = 1, "), r"\[constants\] forget_bias: expected forget_bias = 0.5"),
    (('value = 0.0, doc = "added', 'value = "zero", doc = "added'), "the value of a constant is a number"),
    (('value = 0.0, doc = "added', 'value = true, doc = "added'), "the value of a constant is a number"),
    (('value = 0.0, doc = "added', 'value = 1e9, doc = "added'), "the value of a constant is a number below 1e"),
    (("forget_bias = {", "b_f = {"), r"'b_f' is already declared as a parameter"),
    (("forget_bias = {", "constants = {"), "reserved word"),
    (("+ b_f + forget_bias", "+ b_f + forget_bias[t-1]"), r"forget_bias\[t-1\] refers to a previous value"),
    (("+ b_f + forget_bias", "+ b_f"), "constant 'forget_bias' is declared but never used"),
    (("f       = sigma(z_f)", "forget_bias = sigma(z_f)"), "'forget_bias' is declared as a constant and cannot be "
                                                          "defined"),
])
def test_constant_declaration_errors_are_one_line(tmp_path, edit, message):
    with pytest.raises(SpecError, match=message) as exc:
        load(_spec(tmp_path, "lstm", edit))
    assert "\n" not in str(exc.value) and ", line " in str(exc.value)


@pytest.mark.parametrize("edit, message", [
    (('bound = "cell_clip"', 'bound = "cell_clp"'), r"bound 'cell_clp' is not a constant declared in \[constants\] "
                                                      r"\(forget_bias, cell_clip\)"),
    (("cell_clip = { value = 1.0", "cell_clip = { value = -1.0"), "whose value -1 must be a positive number"),
])
def test_a_clip_bound_names_a_positive_constant(tmp_path, edit, message):
    with pytest.raises(SpecError, match=message):
        load(_spec(tmp_path, "lstm_cell_clip", edit))


# ----------------------------------------------------------------------------------------- derivation and code
def test_the_derivation_treats_constants_as_symbols_without_gradients():
    d = derive(load("lstm_cell_clip"))
    consts = {s for s, i in d.symbols.info.items() if i.kind == "const"}
    assert {s.name for s in consts} == {"forget_bias", "cell_clip"}
    assert not consts & set(d.adjoint_of) and all(d.symbols.info[a].of not in consts for a in d.adjoint_of.values()
                                                  if d.symbols.info[a].kind == "adj")
    assert "d_clip_arg_c = d_c * clip_mask(clip_arg_c, cell_clip)" in lstm_cell_clip.__doc__


def test_generated_code_renders_constants_as_names_with_their_defaults():
    import inspect

    src = inspect.getsource(lstm)
    assert "z_f = W_f_x[t] + U_f_h_prev + b_f + forget_bias" in src
    assert lstm.SIGNATURE.constants == {"forget_bias": 0.0}
    assert lstm_cell_clip.KINKS == [("clip_arg_c", "cell_clip")]
    assert "c[t + 1] = clip(clip_arg_c[t], cell_clip)" in inspect.getsource(lstm_cell_clip)
    assert inspect.getsource(lstm_layer_norm.forward).count("+ eps)") == 3  # rsqrt(v + eps), three times
    assert "forget_bias = 0.0: added to the forget gate" in lstm.__doc__


def _literal_twin(cell: str, edits, constant_lines: list[str], name: str):
    """The cell's module generated from a spec where the constants are written as the numbers they default to."""
    text = load(cell).path.read_text()
    for line in constant_lines:  # the constant's declaration and its [latex] name, if any
        text = "".join(t for t in text.splitlines(keepends=True) if not t.startswith(line + " ="))
    for a, b in edits:
        assert a in text, a
        text = text.replace(a, b)
    return mutants.load_module(generate_module(derive(load_text(text, cell))), name)


def load_text(text, cell):
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    return load(write_spec(folder, text, f"{cell}_literal.toml"))


@pytest.mark.parametrize("cell, edits, lines, overrides", [
    ("lstm_cell_clip", [(" + forget_bias", ""), ('bound = "cell_clip"', "bound = 1.0")], ["forget_bias", "cell_clip"],
     {}),
    ("lstm_layer_norm", [(" + forget_bias", ""), ("+ eps)", "+ 0.00001)")], ["forget_bias", "eps"], {}),
    ("lstm_cell_clip", [(" + forget_bias", " + 0.5"), ('bound = "cell_clip"', "bound = 3")], ["forget_bias",
                                                                                            "cell_clip"],
     {"forget_bias": 0.5, "cell_clip": 3.0}),
    ("lstm_layer_norm", [(" + forget_bias", " + 1"), ("+ eps)", "+ 0.25)")], ["forget_bias", "eps"],
     {"forget_bias": 1.0, "eps": 0.25}),
])
def test_an_override_is_the_cell_regenerated_with_that_number(cell, edits, lines, overrides):
    """At the defaults the numbers are those of the spec with the literal numbers (no cell's numbers changed);
    an override gives what regenerating with the new number gives."""
    import importlib

    module = importlib.import_module(f"lstm_spec.reference.{cell}")
    twin = _literal_twin(cell, edits, lines, f"lstm_spec_literal_{cell}_{len(overrides)}")
    inst = random_instance(module, SHAPES[2], 5)
    y1, f1, g1 = run(with_constants(module, overrides), inst)
    y2, f2, g2 = run(twin, inst)
    np.testing.assert_allclose(y1, y2, rtol=1e-13, atol=1e-15)
    for k in g2:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_forget_bias_is_the_run_time_convention():
    """lstm with forget_bias = 1 is lstm with b_f + 1 (TF1's forget_bias): outputs and every gradient."""
    inst = random_instance(lstm, SHAPES[3], 1)
    shifted = {**inst.params, "b_f": inst.params["b_f"] + 1.0}
    y1, final1, cache = lstm.forward(inst.params, **inst.seq, h0=inst.init["h"], c0=inst.init["c"],
                                     constants={"forget_bias": 1.0})
    y2, final2, cache2 = lstm.forward(shifted, **inst.seq, h0=inst.init["h"], c0=inst.init["c"])
    np.testing.assert_allclose(y1, y2, rtol=1e-14)
    g1, g2 = lstm.backward(cache, inst.dy, inst.d_final), lstm.backward(cache2, inst.dy, inst.d_final)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-12, atol=1e-14)
    assert not np.allclose(y1, lstm.forward(inst.params, **inst.seq, h0=inst.init["h"], c0=inst.init["c"])[0])


# ----------------------------------------------------------------------------------------- the runtime
@pytest.mark.parametrize("module, constants, message", [
    (lstm, {"forgot_bias": 1.0}, r"unknown name\(s\) \['forgot_bias'\]; the constants of 'lstm' are \['forget_bias'\]"),
    (rnn_tanh, {"forget_bias": 1.0}, "cell 'rnn_tanh' has no constants"),
    (lstm, {"forget_bias": "1"}, "expected a finite real number"),
    (lstm, {"forget_bias": True}, "expected a finite real number"),
    (lstm, {"forget_bias": float("nan")}, "expected a finite real number"),
    (lstm_cell_clip, {"cell_clip": 0.0}, "a clip bound must be positive"),
    (lstm, [("forget_bias", 1.0)], "expected a dict"),
])
def test_bad_constants_are_an_input_error_naming_the_cells_constants(module, constants, message):
    inst = random_instance(module, SHAPES[0], 0)
    with pytest.raises(InputError, match=message) as exc:
        module.forward(inst.params, **inst.seq, constants=constants)
    assert "\n" not in str(exc.value)


def test_backward_uses_the_forwards_constants():
    inst = random_instance(peephole, SHAPES[2], 2)
    init = {f"{s}0": v for s, v in inst.init.items()}
    _, _, cache = peephole.forward(inst.params, **inst.seq, **init, constants={"forget_bias": 0.5})
    g = peephole.backward(cache, inst.dy, inst.d_final)
    same = peephole.backward(cache, inst.dy, inst.d_final, constants={"forget_bias": 0.5})
    assert all(np.array_equal(g[k], same[k]) for k in g)
    with pytest.raises(InputError, match=r"backward got forget_bias = 1.0 but the forward that made this cache ran "
                                         r"with forget_bias = 0.5"):
        peephole.backward(cache, inst.dy, inst.d_final, constants={"forget_bias": 1.0})


def test_a_constant_keeps_float32_in_float32():
    inst = random_instance(lstm_cell_clip, SHAPES[1], 3).astype(np.float32)
    y, _, grads = run(with_constants(lstm_cell_clip, {"forget_bias": np.float64(1.0), "cell_clip": np.float64(2)}),
                      inst)
    assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())


# ----------------------------------------------------------------------------------------- the checks
def _planted(module_text: str, old: str, new: str, name: str):
    assert old in module_text
    return mutants.load_module(module_text.replace(old, new), name)


@pytest.fixture(scope="module")
def clip_text():
    return generate_module(derive(load("lstm_cell_clip")))


def test_the_symbolic_checks_hold_for_symbolic_constants_and_catch_a_forward_that_ignores_an_override(clip_text):
    cell = load("lstm_cell_clip")
    d = derive(cell)
    assert check_step(d, exact="expand", derivative="sympy")["error"] == 0  # a proof, cell_clip a symbol
    sizes = unrolled_sizes(cell)
    assert check_unrolled(d, lstm_cell_clip, sizes=sizes, derivative="reverse")["error"] == 0
    ignores = _planted(clip_text, "constants = prepare_constants(SIGNATURE, constants)",
                       "constants = prepare_constants(SIGNATURE, None)", "lstm_spec_ignores_constants")
    assert check_unrolled(d, ignores, sizes=sizes, derivative="reverse")["error"] > 0
    assert check_unrolled(d, ignores, sizes=sizes, derivative="sympy", exact="points")["error"] > 0


def test_the_numeric_checks_run_at_non_default_constants_and_catch_a_backward_at_the_defaults(clip_text):
    """A backward that reads the spec's defaults instead of the forward's constants agrees with its forward
    at the defaults (every numeric check passes there) and is caught at the alternative constants."""
    planted = _planted(clip_text, "constants = cached_constants(SIGNATURE, cache, constants)",
                       "constants = dict(SIGNATURE.constants)", "lstm_spec_backward_at_defaults")
    assert check_derivatives(planted, "complex_step", shapes=SHAPES[:2])["error"] < 1e-12
    other = alternative_constants(planted)
    assert other == {"forget_bias": 1.0, "cell_clip": 0.5}
    assert check_derivatives(with_constants(planted, other), "complex_step", shapes=SHAPES[:2])["error"] > 1e-6
    assert check_derivatives(with_constants(lstm_cell_clip, other), "complex_step", shapes=SHAPES[:2])["error"] < 1e-12


def test_verify_covers_non_default_constants_in_every_check(monkeypatch, clip_text):
    """verify_cell at its default variants fails the planted module of the previous test (the numeric checks
    run at the alternative constants too), and passes the real one with --constants values."""
    import lstm_spec.checks.runner as runner

    planted = _planted(clip_text, "constants = cached_constants(SIGNATURE, cache, constants)",
                       "constants = dict(SIGNATURE.constants)", "lstm_spec_backward_at_defaults2")
    monkeypatch.setattr(runner, "_module_for", lambda cell, gen: planted)
    rows = {r.check: r for r in verify_cell(load("lstm_cell_clip"), torch=False)}
    assert rows["(c) complex step"].status == "FAIL" and "at forget_bias = 1, cell_clip = 0.5" in \
        rows["(c) complex step"].detail
    monkeypatch.undo()
    rows = verify_cell(load("lstm_cell_clip"), torch=False, constants={"forget_bias": 1.0, "cell_clip": 3.0})
    assert all(r.status == "pass" for r in rows), [(r.check, r.detail) for r in rows if r.status != "pass"]
    assert "(c) and (d) at forget_bias = 1, cell_clip = 3" in next(r for r in rows if r.check ==
                                                                    "(c) complex step").detail


def test_verify_constants_on_the_command_line(capsys):
    from lstm_spec.cli import main

    assert main(["verify", "rnn_tanh", "--no-torch", "--quiet", "--jobs", "1", "--constants", "forget_bias=1"]) == 2
    assert "not a constant of cell 'rnn_tanh' (its constants: none)" in capsys.readouterr().err
    assert main(["verify", "lstm", "--no-torch", "--quiet", "--constants", "forget_bias"]) == 2
    assert "expected NAME=NUMBER" in capsys.readouterr().err
    assert main(["verify", "lstm_cell_clip", "--no-torch", "--quiet", "--constants", "cell_clip=-1"]) == 2
    assert "above 0 (a clip bound)" in capsys.readouterr().err
    assert main(["verify", "lstm", "--no-torch", "--quiet", "--jobs", "1", "--constants", "forget_bias=1.0"]) == 0
    out = capsys.readouterr().out
    assert "Constants: (c) and (d) ran at forget_bias = 1" in out and re.search(r"all checks passed", out)


# ----------------------------------------------------------------------------------------- conformance
def _quick_cases():
    from lstm_spec.conformance.runner import default_cases

    return [c for c in default_cases(dtypes=("float64",)) if c.direction == "forward" and c.layers == 1
            and c.lengths is None][:3]


def _numpy_lstm(bug=None, shift=0.0, **declaration):
    """The hand-written NumPy LSTM of conformance.examples (bug "forget_bias": 1 added to z_f at every step),
    adding ``shift`` more to its forget gate's bias, with its declaration changed."""
    from lstm_spec.conformance.examples import NumpyLSTM

    class Shifted(NumpyLSTM):
        def _forward_seq(self, W, U, b, x, h0, c0):
            H, k = U.shape[1], self._blocks()["f"]
            b = np.array(b, copy=True)
            b[..., k * H:(k + 1) * H] += shift
            return super()._forward_seq(W, U, b, x, h0, c0)

    target = Shifted(bug=bug)
    target.conformance.pop("description", None)  # the header then says what is declared
    target.conformance.update(declaration)
    return target


def test_a_target_declaring_its_forget_bias_conforms_and_the_report_says_so():
    from lstm_spec.conformance.runner import conform, format_report, report_dict
    from lstm_spec.conformance.targets import ProtocolTarget

    target = ProtocolTarget(_numpy_lstm("forget_bias", constants={"forget_bias": 1.0}), "t")
    assert "forget_bias = 1.0 (declared)" in target.description
    report = conform(target, _quick_cases())
    text = format_report(report)
    assert report.passed, text
    assert "constants: forget_bias = 1.0 (declared): the reference runs with them" in text
    assert "conforms to lstm with forget_bias = 1.0 (declared)" in text and text.endswith("CONFORMS")
    assert report_dict(report)["constants"] == {"forget_bias": 1.0}


def test_an_undeclared_or_wrongly_declared_forget_bias_fails():
    """The negative controls: the run-time forget bias undeclared (the diagnosis still names the convention),
    and 1.0 declared by a target that adds 0.5."""
    from lstm_spec.conformance.runner import conform, format_report
    from lstm_spec.conformance.targets import ProtocolTarget

    report = conform(ProtocolTarget(_numpy_lstm("forget_bias"), "t"), _quick_cases())
    text = format_report(report)
    assert not report.passed and "forget bias added at run time" in text, text
    assert 'declare it: "constants": {"forget_bias": 1}' in text, text  # the diagnosis says how to declare it
    report = conform(ProtocolTarget(_numpy_lstm(shift=0.5, constants={"forget_bias": 1.0}), "t"), _quick_cases())
    text = format_report(report)
    assert not report.passed and "does not conform to lstm with forget_bias = 1.0 (declared)" in text
    assert text.endswith("DOES NOT CONFORM")


@pytest.mark.parametrize("constants, says", [
    ({"forgot_bias": 1.0}, r"conformance\['constants'\]: unknown name\(s\) \['forgot_bias'\]; the constants of "
                           r"'lstm' are \['forget_bias'\]"),
    ({"forget_bias": "1"}, r"expected a finite real number"),
    ([1.0], r"expected a dict"),
])
def test_a_bad_constants_declaration_is_refused_at_load(constants, says):
    from lstm_spec.conformance.targets import ProtocolTarget, TargetError

    with pytest.raises(TargetError, match=says):
        ProtocolTarget(_numpy_lstm(constants=constants), "t")


def test_an_unknown_constant_is_exit_2_naming_the_cells_constants(tmp_path, capfd):
    from lstm_spec.cli import main

    path = write_spec(tmp_path, "from lstm_spec.conformance.examples import NumpyLSTM\n"
                                "T = NumpyLSTM()\nT.conformance['constants'] = {'cell_clip': 3.0}\n", "my_target.py")
    code = main(["conform", f"{path}:T", "--quick", "--quiet", "--timeout", "0"])
    err = capfd.readouterr().err
    assert code == 2 and "unknown name(s) ['cell_clip']; the constants of 'lstm' are ['forget_bias']" in err, err
