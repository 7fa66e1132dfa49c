"""Hostile inputs to the runtime every generated module calls (reference/_runtime.py; issue 13, items 8,
18 and 19): objects whose conversion to NumPy fails, a size that disagrees with the parameters, NaN or
Inf born in an intermediate that no cache keeps, and callers that write into their arrays (or into the
outputs) between forward and backward."""

import importlib

import numpy as np
import pytest

from lstm_spec.checks.cases import random_instance, run
from lstm_spec.reference import _runtime, lstm, lstm_layer_norm
from lstm_spec.reference._runtime import InputError, NonFiniteError
from lstm_spec.spec import builtin_cells

CELLS = builtin_cells()


def module(name):
    return importlib.import_module(f"lstm_spec.reference.{name}")


@pytest.fixture
def inst():
    return random_instance(lstm, (3, 2, 3, 4), 0)  # T=3, B=2, D=3, H=4


def fwd(inst, **kw):
    args = dict(params=inst.params, x=inst.seq["x"], h0=inst.init["h"], c0=inst.init["c"])
    args.update(kw)
    return lstm.forward(**args)


# ----------------------------------------------------------------------------------------- item 18: conversion
class ArrayRaises:
    def __array__(self, dtype=None, copy=None):
        raise ValueError("no array today")


def torch_tensors():
    torch = pytest.importorskip("torch")
    return torch


def test_torch_tensor_requiring_grad_is_an_input_error_naming_it(inst):
    torch = torch_tensors()
    x = torch.tensor(inst.seq["x"], requires_grad=True)
    with pytest.raises(InputError, match=r"^x: could not be read as a NumPy array \(RuntimeError: .*requires grad"):
        fwd(inst, x=x)
    W = torch.tensor(inst.params["W_f"], requires_grad=True)
    with pytest.raises(InputError, match=r"^params\['W_f'\]: could not be read as a NumPy array"):
        fwd(inst, params=dict(inst.params, W_f=W))


def test_meta_tensor_is_an_input_error_naming_it(inst):
    torch = torch_tensors()
    h0 = torch.empty(inst.init["h"].shape, dtype=torch.float64, device="meta")
    with pytest.raises(InputError, match=r"^h0: could not be read as a NumPy array \(\w+: .*meta"):
        fwd(inst, h0=h0)


def test_object_whose_array_raises_is_an_input_error_naming_it(inst):
    with pytest.raises(InputError, match=r"^c0: could not be read as a NumPy array \(ValueError: no array today\)"):
        fwd(inst, c0=ArrayRaises())
    y, final, cache = fwd(inst)
    with pytest.raises(InputError, match=r"^dy: could not be read"):
        lstm.backward(cache, ArrayRaises())
    with pytest.raises(InputError, match=r"^d_final\['h'\]: could not be read"):
        lstm.backward(cache, None, {"h": ArrayRaises()})


def test_a_plain_torch_tensor_still_works(inst):
    torch = torch_tensors()
    y, _, _ = fwd(inst, x=torch.tensor(inst.seq["x"]))
    np.testing.assert_array_equal(y, fwd(inst)[0])


# ----------------------------------------------------------------------------------------- item 18: the culprit
def test_x_of_the_wrong_feature_size_is_blamed_on_x_naming_both_shapes(inst):
    x = np.zeros((3, 2, 5))
    with pytest.raises(InputError, match=r"^x: got shape \(3, 2, 5\) and dtype float64, expected shape "
                                         r"\(T=3, B=2, D=3\) \(D = 3 from params\['W_f'\] of shape \(4, 3\) "
                                         r"and 3 other arrays\)"):
        fwd(inst, x=x)


def test_the_one_weight_that_disagrees_is_blamed_not_its_siblings(inst):
    """W_f is the first array to carry H; it alone says H = 5, eleven parameters say 4."""
    params = dict(inst.params, W_f=np.zeros((5, 3)))
    with pytest.raises(InputError, match=r"^params\['W_f'\]: got shape \(5, 3\).*expected shape \(H=4, D=3\) "
                                         r"\(H = 4 from params\['U_f'\] of shape \(4, 4\)"):
        fwd(inst, params=params, h0=None, c0=None)


def test_a_target_of_the_wrong_size_is_blamed_on_it():
    """lstm_mse: the output size K is carried by the target and by W_hy, b_y."""
    mse = module("lstm_mse")
    m = random_instance(mse, (3, 2, 3, 4), 0)
    target = np.zeros(m.seq["target"].shape[:2] + (m.seq["target"].shape[2] + 1,))
    with pytest.raises(InputError, match=r"^target: got shape .*\(K = \d+ from params\['W_hy'\]"):
        mse.forward(m.params, m.seq["x"], target)


def test_a_tie_goes_to_the_parameters():
    sig = _runtime.Signature(cell="toy", inputs={"x": ("D",)}, states={}, parameters={"w": ("D",)}, output="x",
                             output_dims=("D",))
    with pytest.raises(InputError, match=r"^x: got shape \(2, 1, 4\).*\(D = 3 from params\['w'\] of shape \(3,\)\)$"):
        _runtime.prepare(sig, {"w": np.zeros(3)}, {"x": np.zeros((2, 1, 4))}, {})


def test_an_initial_state_of_the_wrong_size_is_blamed_on_it(inst):
    with pytest.raises(InputError, match=r"^h0: got shape \(2, 5\).*\(H = 4 from params\['W_f'\] of shape \(4, 3\)"):
        fwd(inst, h0=np.zeros((2, 5)))


# ----------------------------------------------------------------------------------------- item 19: non-finite
def huge_layer_norm_input(scale=1e160):
    """Layer norm of W x with |x| ~ 1e160: the squares in the variance overflow to Inf, rsqrt(Inf) = 0, and
    y stays finite but wrong; no cached array holds the Inf."""
    li = random_instance(lstm_layer_norm, (3, 2, 3, 4), 0)
    return li, li.seq["x"] * scale


def test_propagate_hides_the_overflow_as_the_issue_says():
    li, x = huge_layer_norm_input()
    with np.errstate(over="ignore"):
        y, _, cache = lstm_layer_norm.forward(li.params, x)
    y_ok, _, _ = lstm_layer_norm.forward(li.params, li.seq["x"] * 1e150)  # no overflow: the normalised answer
    assert np.isfinite(y).all() and all(np.isfinite(v).all() for v in cache.values() if isinstance(v, np.ndarray))
    assert np.abs(y - y_ok).max() > 0.05


UNCACHED = (r"^lstm_layer_norm: first non-finite value in the forward pass: mean_vx at step t=0 \(0-based\), "
            r"index \(0, 0\) \(overflow encountered in (square|power) in `mean_vx = unit_mean\(ex_f\[t\]\*\*2\)`\)$")


def test_raise_catches_an_overflow_in_an_uncached_intermediate_runtime_guard():
    """The runtime's guard around the generated forward (as the generated code wraps it)."""
    li, x = huge_layer_norm_input()
    with pytest.raises(NonFiniteError, match=UNCACHED), _runtime.guard("raise"):
        lstm_layer_norm.forward(li.params, x, nonfinite="raise")


def test_raise_catches_an_overflow_in_an_uncached_intermediate():
    li, x = huge_layer_norm_input()
    with pytest.raises(NonFiniteError, match=UNCACHED):
        lstm_layer_norm.forward(li.params, x, nonfinite="raise")


def test_raise_still_names_a_non_finite_input_first_when_an_intermediate_fails():
    """An Inf in x makes Inf - Inf in the layer norm (an invalid operation): the report names x, as before."""
    li = random_instance(lstm_layer_norm, (3, 2, 3, 4), 0)
    x = li.seq["x"].copy()
    x[1, 0, 2] = np.inf
    with pytest.raises(NonFiniteError, match=r"^lstm_layer_norm: input x is non-finite at index \(1, 0, 2\)"), \
            _runtime.guard("raise"):
        lstm_layer_norm.forward(li.params, x, nonfinite="raise")


def test_raise_in_backward_names_a_non_finite_cotangent_first(inst):
    """An Inf in d_final['c'] makes Inf - Inf in U^T d_z: the report names the cotangent, as before."""
    _, final, cache = fwd(inst)
    d_c = np.ones_like(final["c"])
    d_c[0, 3] = np.inf
    with pytest.raises(NonFiniteError, match=r"^lstm: cotangent d_final\['c'\] is non-finite at index \(0, 3\)"), \
            _runtime.guard("raise"):
        lstm.backward(cache, None, {"c": d_c}, nonfinite="raise")


def test_raise_in_backward_names_the_step_and_statement_and_the_forward_cause(inst):
    x = inst.seq["x"].copy()
    x[2, 1, 0] = np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        y, _, cache = fwd(inst, x=x)  # propagate: the Inf flows into the cache
    with pytest.raises(NonFiniteError, match=r"^lstm: first non-finite value in the backward pass: .*invalid value "
                                             r"encountered in \w+ (at step t=\d \(0-based\) )?in `.+`\)?; the forward "
                                             r"pass already was: input x is non-finite at index \(2, 1, 0\)"), \
            _runtime.guard("raise"):
        lstm.backward(cache, np.ones_like(y), nonfinite="raise")


def test_the_guard_checks_the_policy_and_leaves_propagate_alone():
    with pytest.raises(InputError, match=r"nonfinite: got 'warn'"):
        _runtime.guard("warn")
    with np.errstate(over="ignore"), _runtime.guard("propagate"):
        assert np.isinf(np.float64(1e300) * np.float64(1e300))
    with _runtime.guard("raise"):
        assert np.exp(np.float64(-1e4)) == 0  # underflow is correct rounding, never reported
    with pytest.raises(NonFiniteError, match=r"overflow encountered in (scalar )?multiply"), _runtime.guard("raise"):
        np.float64(1e300) * np.float64(1e300)
    assert np.geterr()["over"] == "warn"  # restored


# ----------------------------------------------------------------------------------------- item 8: aliasing
def gradients_after(mod, inst, mutate):
    y, final, cache = mod.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()})
    mutate(y, final)
    return mod.backward(cache, inst.dy, inst.d_final)


@pytest.mark.parametrize("name", CELLS)
def test_writing_into_the_inputs_after_forward_does_not_change_the_gradients(name):
    mod = module(name)
    inst = random_instance(mod, (3, 2, 3, 4), 0)
    expected = run(mod, inst)[2]
    mine = type(inst)({k: v.copy() for k, v in inst.params.items()}, {k: v.copy() for k, v in inst.seq.items()},
                      {k: v.copy() for k, v in inst.init.items()}, inst.dy, inst.d_final, inst.dims)

    def refill(y, final):
        for d in (mine.params, mine.seq, mine.init):
            for a in d.values():
                a[...] = 2.7
    got = gradients_after(mod, mine, refill)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


@pytest.mark.parametrize("name", ["lstm", "gru_reset_after", "lstm_layer_norm", "lstm_stacked2"])
def test_writing_into_y_or_the_final_states_does_not_change_the_gradients(name):
    mod = module(name)
    inst = random_instance(mod, (3, 2, 3, 4), 0)
    expected = run(mod, inst)[2]

    def scale(y, final):
        y *= 0.5
        for v in final.values():
            v += 1.0
    got = gradients_after(mod, inst, scale)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


@pytest.mark.parametrize("name", CELLS)
def test_the_cache_shares_no_memory_with_the_callers_arrays(name):
    mod = module(name)
    inst = random_instance(mod, (3, 2, 3, 4), 0)
    _, _, cache = mod.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()})
    given = [*inst.params.values(), *inst.seq.values(), *inst.init.values()]
    for k, v in cache.items():
        if isinstance(v, np.ndarray):
            assert not any(np.shares_memory(v, a) for a in given), k


@pytest.mark.parametrize("name", CELLS)
def test_the_outputs_share_no_memory_with_the_cache(name):
    mod = module(name)
    inst = random_instance(mod, (3, 2, 3, 4), 0)
    y, final, cache = mod.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()})
    kept = [v for v in cache.values() if isinstance(v, np.ndarray)]
    for label, out in [("y", y), *final.items()]:
        assert not any(np.shares_memory(out, v) for v in kept), label


@pytest.mark.parametrize("name", CELLS)
def test_the_gradients_share_no_memory_with_the_cache_or_the_cotangents(name):
    mod = module(name)
    inst = random_instance(mod, (3, 2, 3, 4), 0)
    _, _, cache = mod.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()})
    g = mod.backward(cache, inst.dy, inst.d_final)
    kept = [v for v in cache.values() if isinstance(v, np.ndarray)] + [inst.dy, *inst.d_final.values()]
    for k, v in g.items():
        assert not any(np.shares_memory(v, a) for a in kept), k


# ----------------------------------------------------------------------------------------- item 18: mask builders
@pytest.mark.parametrize("call, match", [
    (lambda m: m.mask_from_lengths(ArrayRaises(), 3), r"^lengths: could not be read as a NumPy array \(ValueError"),
    (lambda m: m.mask_from_lengths([[1], [1, 2]], 3), r"^lengths: could not be read as a NumPy array"),
    (lambda m: m.mask_from_lengths([1, 2], 3, "foo"), r"^dtype: got 'foo', expected float32, float64 or complex128"),
    (lambda m: m.dropout_mask(np.random.default_rng(0), -1, 2, 3, 0.5), r"^T: expected an integer >= 0, got -1"),
    (lambda m: m.dropout_mask(np.random.default_rng(0), 2, 2.0, 3, 0.5), r"^B: expected an integer >= 0, got 2.0"),
    (lambda m: m.dropout_mask(np.random.default_rng(0), 2, 2, 3, "0.5"), r"^p: expected a drop probability in "
                                                                          r"\(0, 1\), got '0.5'"),
    (lambda m: m.dropout_mask(0, 2, 2, 3, 0.5), r"^rng: expected a numpy.random.Generator"),
    (lambda m: m.dropout_mask(np.random.default_rng(0), 2, 2, 3, 0.5, dtype=int), r"^dtype: got int64, expected"),
])
def test_mask_builders_refuse_hostile_arguments_naming_them(call, match):
    from lstm_spec.reference import masks

    with pytest.raises(InputError, match=match):
        call(masks)


def test_mask_from_lengths_names_a_torch_tensor_that_requires_grad():
    torch = torch_tensors()
    from lstm_spec.reference import masks

    with pytest.raises(InputError, match=r"^lengths: could not be read as a NumPy array \(RuntimeError"):
        masks.mask_from_lengths(torch.tensor([1.0, 2.0], requires_grad=True), 3)
