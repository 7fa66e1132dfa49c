"""Issue 8: dropout, zoneout and layer normalisation as spec cells.

What is tested here, next to a control that would fail without each protection:
- the new function rules (mean, rsqrt, unit count) are confirmed by SymPy, and a wrong rule is told apart;
- [masks] in a spec is validated, and the checks draw masks as masks (0 or 1/(1-p), 0 or 1, fixed over
  time where declared);
- the masks do what the descriptions say (all-ones masks give the plain cells, zoneout keeps states);
- the layer-normalised cell agrees with an independent float64 PyTorch autograd computation written with
  torch.nn.functional.layer_norm, and a wrong program (another eps, the unbiased variance) is caught;
- a user's spec with a mean reduction goes through the same derivation and checks (nothing is special
  to the built-in layer-norm cell).
"""

import importlib
import re

import numpy as np
import pytest
import sympy

from lstm_spec.checks import mutants
from lstm_spec.checks.cases import random_instance, run
from lstm_spec.checks.symbolic import check_step, check_unrolled
from lstm_spec.checks.tolerances import TOLERANCES
from lstm_spec.derivations import derive
from lstm_spec.derivations import functions as fn
from lstm_spec.derivations.codegen import generate_module
from lstm_spec.reference.masks import dropout_mask
from lstm_spec.spec import SpecError, load

NEW_CELLS = ["lstm_stacked2_dropout", "lstm_variational_dropout", "lstm_semeniuta", "lstm_zoneout",
             "lstm_layer_norm"]
MASK_CELLS = NEW_CELLS[:4]
TORCH_TOL = TOLERANCES[("torch", "float64")].value


def ref(name):
    return importlib.import_module(f"lstm_spec.reference.{name}")


# ----------------------------------------------------------------------------------------- rules
def test_new_function_rules_are_confirmed_by_sympy():
    results = dict(fn.confirm_rules())
    assert results["mean"] == 0 and results["rsqrt"] == 0 and results["unit_count"] == 0


def test_a_wrong_mean_rule_is_caught(monkeypatch):
    """d mean / d x_j taken as 1 (the sum's rule) instead of 1/N."""
    monkeypatch.setattr(fn.UnitMean, "fdiff", lambda self, argindex=1: sympy.S.One)
    assert dict(fn.confirm_rules())["mean"] > 0


def test_a_wrong_rsqrt_rule_is_caught(monkeypatch):
    """rsqrt' = -rsqrt^3 (the factor 1/2 forgotten)."""
    monkeypatch.setattr(fn.Rsqrt, "fdiff", lambda self, argindex=1: -self**3)
    assert dict(fn.confirm_rules())["rsqrt"] != 0


def test_a_unit_count_with_a_derivative_is_caught(monkeypatch):
    monkeypatch.setattr(fn.UnitCount, "fdiff", lambda self, argindex=1: sympy.S.One)
    assert dict(fn.confirm_rules())["unit_count"] > 0


def test_runtime_reductions():
    from lstm_spec.reference._runtime import rsqrt, unit_count, unit_mean

    z = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(unit_mean(z), [[1.0], [4.0]])
    assert unit_count(z, np.ones((2, 1))) == 3 and unit_count(np.ones((2, 1))) == 1
    assert rsqrt(np.float32([4.0])).dtype == np.float32 and rsqrt(np.array([4.0]))[0] == 0.5


# ----------------------------------------------------------------------------------------- masks in a spec
SPEC = """
name = "masked_rnn"
output = "h"
equations = '''
h = tanh(W @ x + U @ h[t-1]) ⊙ m
'''
[dimensions]
D = "inputs"
H = "units"
[inputs]
x = "D"
m = "H"
[states]
h = "H"
[parameters]
W = "H x D"
U = "H x H"
[functions]
tanh = "tanh"
"""


@pytest.mark.parametrize("decl, message", [
    ('[masks]\nq = { p = 0.5, values = "inverted", time = "fixed" }', "not declared there"),
    ('[masks]\nm = { p = 1.5, values = "inverted", time = "fixed" }', "must be in (0, 1)"),
    ('[masks]\nm = { p = 0.5, values = "scaled", time = "fixed" }', "values must be one of"),
    ('[masks]\nm = { p = 0.5, values = "binary", time = "always" }', "time must be one of"),
    ('[masks]\nm = { p = 0.5 }', "expected { p = ..."),
])
def test_bad_mask_declarations_are_rejected(tmp_path, decl, message):
    path = tmp_path / "masked_rnn.toml"
    path.write_text(SPEC + decl + "\n", encoding="utf-8")
    with pytest.raises(SpecError, match="masks") as err:
        load(path)
    assert message in str(err.value)


def test_a_good_mask_declaration_reaches_the_generated_module(tmp_path):
    path = tmp_path / "masked_rnn.toml"
    path.write_text(SPEC + '[masks]\nm = { p = 0.5, values = "inverted", time = "fixed" }\n', encoding="utf-8")
    text = generate_module(derive(load(path)))
    assert "MASKS = {'m': {'p': 0.5, 'values': 'inverted', 'time': 'fixed'}}" in text
    assert "MASKS" not in generate_module(derive(load("lstm")))  # cells without masks: no change


@pytest.mark.parametrize("cell", MASK_CELLS)
def test_checks_draw_masks_as_declared(cell):
    module = ref(cell)
    assert set(module.MASKS) == set(load(cell).masks)
    inst = random_instance(module, (6, 3, 4, 5), seed=3)
    for name, spec in module.MASKS.items():
        m = inst.seq[name]
        keep = 1 / (1 - spec["p"]) if spec["values"] == "inverted" else 1.0
        assert set(np.unique(m)) <= {0.0, keep}, (name, np.unique(m))
        assert (m == 0).any() and (m == keep).any(), name  # both kinds of entry occur
        if spec["time"] == "fixed":
            assert (m == m[:1]).all(), f"{name} should repeat one mask at every step"
        else:
            assert not (m == m[:1]).all(), f"{name} should draw a new mask at every step"


def test_dropout_mask_values_and_errors():
    rng = np.random.default_rng(0)
    m = dropout_mask(rng, 4, 2, 1000, 0.25)
    assert set(np.unique(m)) == {0.0, 4 / 3} and abs((m == 0).mean() - 0.25) < 0.03
    assert abs(m.mean() - 1) < 0.05  # inverted dropout keeps the expectation
    f = dropout_mask(rng, 3, 2, 5, 0.5, values="binary", time="fixed", dtype=np.float32)
    assert f.dtype == np.float32 and (f == f[:1]).all() and f.flags.writeable
    for kwargs, what in (({"p": 0.0}, "p:"), ({"p": 0.5, "values": "x"}, "values:"),
                         ({"p": 0.5, "time": "x"}, "time:")):
        with pytest.raises(ValueError, match=what):
            dropout_mask(rng, 2, 1, 3, **kwargs)


# ----------------------------------------------------------------------------------------- semantics
def _plain(module, inst, **masks):
    seq = {**inst.seq, **masks}
    y, final, cache = module.forward(inst.params, **seq, **{f"{s}0": v for s, v in inst.init.items()})
    return y, final, module.backward(cache, inst.dy, inst.d_final)


@pytest.mark.parametrize("cell, plain", [("lstm_variational_dropout", "lstm"), ("lstm_semeniuta", "lstm"),
                                         ("lstm_zoneout", "lstm"), ("lstm_stacked2_dropout", "lstm_stacked2")])
def test_all_ones_masks_give_the_plain_cell(cell, plain):
    module, base = ref(cell), ref(plain)
    inst = random_instance(module, (4, 3, 5, 3), seed=1)
    ones = {n: np.ones_like(inst.seq[n]) for n in module.MASKS}
    y, final, grads = _plain(module, inst, **ones)
    y0, final0, grads0 = base.forward(inst.params, inst.seq["x"], **{f"{s}0": v for s, v in inst.init.items()})
    grads0 = base.backward(grads0, inst.dy, inst.d_final)
    assert np.allclose(y, y0, rtol=0, atol=1e-14)
    for k, g in grads0.items():
        assert np.allclose(grads[k], g, rtol=0, atol=1e-13), k
    # and a mask with zeros changes the result (the masks are used)
    y1, _, _ = run(module, inst)
    assert not np.allclose(y1, y0)


def test_zoneout_zero_masks_keep_the_states_and_pass_gradients_straight_back():
    module = ref("lstm_zoneout")
    inst = random_instance(module, (3, 2, 4, 3), seed=2)
    zeros = {n: np.zeros_like(inst.seq[n]) for n in module.MASKS}
    y, final, grads = _plain(module, inst, **zeros)
    assert np.array_equal(final["h"], inst.init["h"]) and np.array_equal(final["c"], inst.init["c"])
    assert np.allclose(grads["h0"], inst.dy.sum(0) + inst.d_final["h"])
    assert np.allclose(grads["c0"], inst.d_final["c"])
    assert not np.any(grads["W_f"])


def test_variational_dropout_drops_the_recurrent_gradient_of_dropped_units():
    """A unit of h_{t-1} dropped at every step (fixed mask) sends no gradient back through the gates: with
    T = 1 and no cotangent on c, d h0 is 0 exactly where m_h is 0."""
    module = ref("lstm_variational_dropout")
    inst = random_instance(module, (1, 2, 3, 4), seed=5)
    inst.d_final["c"][:] = 0
    m_h = inst.seq["m_h"][0]
    _, _, grads = run(module, inst)
    assert (m_h == 0).any() and np.all(grads["h0"][m_h == 0] == 0) and np.all(grads["h0"][m_h != 0] != 0)


# ----------------------------------------------------------------------------------------- layer norm
def test_layer_norm_cell_normalises_what_the_spec_says():
    """The cached centred values and scales: mean 0 and variance 1/(var + eps) * var over the units."""
    module = ref("lstm_layer_norm")
    inst = random_instance(module, (3, 2, 4, 5), seed=4)
    _, _, cache = module.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()})
    ex = np.concatenate([cache[f"ex_{g}"] for g in "fico"], axis=-1)
    assert np.allclose(ex.mean(-1), 0, atol=1e-14)
    var = (ex ** 2).mean(-1, keepdims=True)
    assert np.allclose(cache["sx"], 1 / np.sqrt(var + 1e-5))
    assert np.allclose(cache["ec"].mean(-1), 0, atol=1e-14)


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason='PyTorch missing: pip install "lstm-spec[test]"')


@pytest.mark.parametrize("cell", NEW_CELLS)
def test_agrees_with_pytorch_autograd_in_float64(cell, torch):
    from lstm_spec.checks.torch_check import check_torch

    res = check_torch(ref(cell), cell)
    assert res["error"] <= TORCH_TOL, res


def test_layer_norm_pytorch_program_catches_wrong_programs_and_a_broken_backward(torch):
    from lstm_spec.checks.torch_check import TORCH_PROGRAMS, TorchProgram, _run_layer_norm, check_torch

    module = ref("lstm_layer_norm")
    other_eps = TorchProgram(lambda *a: _run_layer_norm(*a, eps=1e-3), "eps 1e-3")
    assert check_torch(module, "lstm_layer_norm", program=other_eps)["error"] > TORCH_TOL

    def unbiased(torch, p, seq, init, dims):  # torch: the PyTorch module, passed by check_torch
        real = torch.nn.functional.layer_norm

        def layer_norm(v, shape, weight=None, bias=None, eps=1e-5):
            mu = v.mean(-1, keepdim=True)
            out = (v - mu) / torch.sqrt(v.var(-1, unbiased=True, keepdim=True) + eps) * weight
            return out if bias is None else out + bias

        torch.nn.functional.layer_norm = layer_norm
        try:
            return _run_layer_norm(torch, p, seq, init, dims)
        finally:
            torch.nn.functional.layer_norm = real

    assert check_torch(module, "lstm_layer_norm", program=TorchProgram(unbiased, "unbiased"))["error"] > TORCH_TOL
    text = generate_module(derive(load("lstm_layer_norm")))
    lines = text.splitlines()
    reduction_line = next(i for i in mutants.backward_lines(text) if re.search(r"/ H\b", lines[i]))  # 1/N of a mean
    bad = mutants.load_module(mutants.mutate_code(text, reduction_line, "delete"))
    assert check_torch(bad, "lstm_layer_norm")["error"] > TORCH_TOL
    assert "lstm_layer_norm" in TORCH_PROGRAMS


@pytest.mark.parametrize("cell", MASK_CELLS)
def test_pytorch_program_catches_a_missing_mask(cell, torch):
    """The same PyTorch program fed all-ones masks (the masks ignored) disagrees with the reference."""
    from lstm_spec.checks.torch_check import TORCH_PROGRAMS, TorchProgram, check_torch

    real = TORCH_PROGRAMS[cell]

    def ignore_masks(torch, p, seq, init, dims):
        seq = {k: (torch.ones_like(v) if k in ref(cell).MASKS else v) for k, v in seq.items()}
        return real.run(torch, p, seq, init, dims)

    assert check_torch(ref(cell), cell, program=TorchProgram(ignore_masks, "masks ignored"))["error"] > TORCH_TOL


# ----------------------------------------------------------------------------------------- a user's cell
USER_LN = """
name = "rnn_ln"
output = "h"
equations = '''
a = W @ x + U @ h[t-1]
e = a - mean(a)
h = tanh(g ⊙ e ⊙ rsqrt(mean(e^2) + 0.001) + b)
'''
[dimensions]
D = "inputs"
H = "units"
[inputs]
x = "D"
[states]
h = "H"
[parameters]
W = "H x D"
U = "H x H"
g = "H"
b = "H"
[functions]
tanh = "tanh"
mean = "mean"
rsqrt = "rsqrt"
"""


def test_a_users_layer_normalised_rnn_goes_through_the_same_checks(tmp_path):
    from lstm_spec.checks.numeric import check_derivatives

    path = tmp_path / "rnn_ln.toml"
    path.write_text(USER_LN, encoding="utf-8")
    d = derive(load(path))
    # a proof (the difference expands to 0) with N = 2 units, where 1/N is not the sum's 1; with H = 3 the
    # expansion takes minutes, so N = 3 is checked at exact random points
    assert check_step(d, sizes={"D": 1, "H": 2})["error"] == 0
    assert check_step(d, sizes={"D": 2, "H": 3}, exact="points")["error"] == 0
    text = generate_module(d)
    module = mutants.load_module(text, "rnn_ln")
    sizes = {"D": 1, "H": 2, "1": 1}
    assert check_unrolled(d, module, T=2, sizes=sizes)["error"] == 0
    assert check_derivatives(module, "complex_step")["error"] <= TOLERANCES[("complex_step", "complex128")].value
    bad = mutants.load_module(mutants.mutate_code(text, mutants.recursion_line(text), "delete"))
    assert check_unrolled(d, bad, T=2, sizes=sizes, stop_after=1)["error"] > 0
    planted, target = mutants.planted_derivation(d)
    assert check_step(planted, sizes={"D": 2, "H": 3}, exact="points", only={target})["error"] > 0


def test_mask_inputs_do_not_widen_the_units_of_the_unrolled_check():
    from lstm_spec.checks.runner import unrolled_sizes

    assert unrolled_sizes(load("lstm_zoneout")) == {"D": 2, "H": 1, "1": 1}
    assert unrolled_sizes(load("lstm_variational_dropout")) == {"D": 2, "H": 1, "1": 1}  # m_x is D: stays 2


def test_mask_inputs_keep_d_and_h_apart_in_the_one_step_check():
    """A mask on the hidden units (m_h: H) is an input, but must not make H the inputs' size: D = H
    would hide a transposed matrix in check (a)."""
    from lstm_spec.checks.symbolic import _default_sizes

    for cell in ("lstm_zoneout", "lstm_variational_dropout", "lstm_semeniuta", "lstm_stacked2_dropout"):
        sizes = _default_sizes(load(cell))
        assert sizes["D"] == 3 and sizes["H"] == 2, (cell, sizes)
