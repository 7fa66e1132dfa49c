"""Input validation at every public entry of the generated reference (forward, backward), and the
non-finite policy. Every bad input must give an InputError that names the argument, what it got and
what was expected; nothing is silently cast or broadcast; inputs are never written to.

Bad inputs tried on forward: lists, Python/NumPy scalars, np.matrix, masked arrays, int, bool, float16,
complex64 and object dtypes, mixed float32/float64 (in a parameter and in an initial state), 2-D x,
a batch-major x with h0 given (and with a second sequence), missing and unknown parameter names, a
transposed weight, a zero feature or hidden size, an unknown ``nonfinite`` policy. On backward: dy of the
wrong shape, dtype or type, d_final with an unknown key, as a list, or of the wrong shape, a cache from
another cell and a dict that is no cache. Accepted and unchanged: non-contiguous, Fortran-ordered and
read-only arrays; T = 0 and B = 0 have defined results (every cell).
"""

import importlib

import numpy as np
import pytest

from lstm_spec.checks.cases import random_instance, run
from lstm_spec.reference import _runtime, gru_reset_after, lstm, lstm_masked_zeros, lstm_mse
from lstm_spec.reference._runtime import InputError, NonFiniteError
from lstm_spec.spec import builtin_cells

CELLS = builtin_cells()


def module(name):
    return importlib.import_module(f"lstm_spec.reference.{name}")


@pytest.fixture
def inst():
    return random_instance(lstm, (3, 2, 4, 5), 1)  # T=3, B=2, D=4, H=5: every size distinct


def fwd(inst, **kw):
    args = dict(params=inst.params, x=inst.seq["x"], h0=inst.init["h"], c0=inst.init["c"])
    args.update(kw)
    return lstm.forward(**args)


def call_forward(mod, inst, **kw):
    return mod.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()}, **kw)


# ----------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("bad, got", [
    (lambda x: x.tolist(), "got list"),
    (lambda x: tuple(x.tolist()), "got tuple"),
    (lambda x: np.asmatrix(x[:, 0]), "got numpy.matrix"),
    (lambda x: np.ma.masked_array(x, mask=x > 0), "got numpy.ma.MaskedArray"),
    (lambda x: x.astype(np.int64), "got dtype int64"),
    (lambda x: x > 0, "got dtype bool"),
    (lambda x: x.astype(np.float16), "got dtype float16"),
    (lambda x: x.astype(np.complex64), "got dtype complex64"),
    (lambda x: x.astype(object), "got dtype object"),
])
@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_bad_x_is_named_with_what_it_got(inst, bad, got):
    with pytest.raises(InputError, match=rf"^x: .*{got}"):
        fwd(inst, x=bad(inst.seq["x"]))


@pytest.mark.parametrize("value", [np.float64(0.5), 0.5])
def test_scalar_bias_is_not_broadcast(inst, value):
    with pytest.raises(InputError, match=r"params\['b_f'\]: expected a NumPy array, got (float64|float)"):
        fwd(inst, params=dict(inst.params, b_f=value))


def test_vector_of_wrong_length_is_not_broadcast(inst):
    with pytest.raises(InputError, match=r"params\['b_f'\]: got shape \(1,\).*expected shape \(H=5\)"):
        fwd(inst, params=dict(inst.params, b_f=np.ones(1)))


def test_float32_params_with_float64_x_are_rejected_not_cast(inst):
    params = {k: v.astype(np.float32) for k, v in inst.params.items()}
    with pytest.raises(InputError, match=r"params\['W_f'\]: dtype float32 differs from x's float64"):
        fwd(inst, params=params)


def test_float32_state_with_float64_x_is_rejected(inst):
    with pytest.raises(InputError, match=r"c0: dtype float32 differs from x's float64"):
        fwd(inst, c0=inst.init["c"].astype(np.float32))


def test_int_state_is_named(inst):
    with pytest.raises(InputError, match=r"h0: got dtype int32, expected float32, float64 or complex128"):
        fwd(inst, h0=inst.init["h"].astype(np.int32))


def test_two_dimensional_x(inst):
    with pytest.raises(InputError, match=r"x: got shape \(3, 4\) and dtype float64, expected shape \(T, B, D\)"):
        fwd(inst, x=inst.seq["x"][:, 0])


def test_batch_major_x_is_caught_when_h0_is_given(inst):
    x_bt = np.swapaxes(inst.seq["x"], 0, 1)
    with pytest.raises(InputError, match=r"h0: got shape \(2, 5\).*expected shape \(B=3, H=5\).*batch-major"):
        fwd(inst, x=x_bt)


def test_batch_major_x_is_caught_by_a_second_sequence():
    m = random_instance(lstm_masked_zeros, (3, 2, 4, 5), 0)
    with pytest.raises(InputError, match=r"m: got shape \(3, 2, 1\).*\(T=2, B=3, 1=1\).*batch-major"):
        lstm_masked_zeros.forward(m.params, np.swapaxes(m.seq["x"], 0, 1), m.seq["m"])


def test_batch_major_x_without_states_is_undetectable_as_documented(inst):
    """Documented limit: the parameters fix only D and H, so without h0/c0 a (B, T, D) x is a valid
    time-major problem of a different T and B."""
    y, _, _ = fwd(inst, x=np.swapaxes(inst.seq["x"], 0, 1), h0=None, c0=None)
    assert y.shape == (2, 3, 5)


def test_missing_and_unknown_parameter_names(inst):
    params = dict(inst.params)
    del params["U_o"]
    params["U_0"] = inst.params["U_o"]
    with pytest.raises(InputError, match=r"missing parameter\(s\) \['U_o'\]; unknown parameter\(s\) \['U_0'\]"):
        fwd(inst, params=params)


def test_params_must_be_a_dict(inst):
    with pytest.raises(InputError, match=r"params: expected a dict .* got list"):
        fwd(inst, params=list(inst.params.values()))


@pytest.mark.parametrize("which", ["x", "W_f"])
def test_zero_feature_or_hidden_size_is_rejected(inst, which):
    if which == "x":
        with pytest.raises(InputError, match=r"x: got shape \(3, 2, 0\).*D >= 1 \(only T and B may be 0\)"):
            fwd(inst, x=inst.seq["x"][:, :, :0])
    else:
        params = {k: v[:0] for k, v in inst.params.items()}  # H = 0
        with pytest.raises(InputError, match=r"params\['W_f'\]: got shape \(0, 4\).*H >= 1"):
            fwd(inst, params=params, h0=None, c0=None)


def test_unknown_nonfinite_policy(inst):
    with pytest.raises(InputError, match=r"nonfinite: got 'warn', expected one of \['propagate', 'raise'\]"):
        fwd(inst, nonfinite="warn")


@pytest.mark.parametrize("name", CELLS)
def test_every_cell_rejects_int_x_and_mixed_precision(name):
    mod = module(name)
    inst = random_instance(mod, (2, 3, 4, 5), 0)
    first = next(iter(inst.seq))
    bad = dict(inst.seq, **{first: inst.seq[first].astype(np.int64)})
    with pytest.raises(InputError, match=rf"^{first}: got dtype int64"):
        mod.forward(inst.params, **bad)
    p32 = {k: v.astype(np.float32) for k, v in inst.params.items()}
    with pytest.raises(InputError, match=r"params\['\w+'\]: dtype float32 differs"):
        mod.forward(p32, **inst.seq)


@pytest.mark.parametrize("name", CELLS)
def test_every_cell_catches_batch_major_x_given_its_initial_states(name):
    mod = module(name)
    inst = random_instance(mod, (3, 2, 4, 5), 0)
    seq = {k: np.swapaxes(v, 0, 1) for k, v in inst.seq.items()}
    init = {f"{s}0": v for s, v in inst.init.items()}
    with pytest.raises(InputError, match=r"batch-major"):
        mod.forward(inst.params, **seq, **init)


# ----------------------------------------------------------------------------------------- memory layout
@pytest.mark.parametrize("name", CELLS)
def test_read_only_non_contiguous_and_fortran_inputs_work_and_are_not_modified(name):
    mod = module(name)
    inst = random_instance(mod, (3, 2, 4, 5), 2)
    expected = run(mod, inst)

    def odd_layout(a):
        """The same values in a non-contiguous, Fortran-ordered or strided, read-only array."""
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        b = wide[..., ::2] if a.ndim != 2 else np.asfortranarray(a)
        b.setflags(write=False)
        return b

    odd = type(inst)({k: odd_layout(v) for k, v in inst.params.items()},
                     {k: odd_layout(v) for k, v in inst.seq.items()},
                     {k: odd_layout(v) for k, v in inst.init.items()}, odd_layout(inst.dy),
                     {k: odd_layout(v) for k, v in inst.d_final.items()}, inst.dims)
    before = [a.copy() for d in (odd.params, odd.seq, odd.init, odd.d_final) for a in d.values()] + [odd.dy.copy()]
    got = run(mod, odd)
    after = [a for d in (odd.params, odd.seq, odd.init, odd.d_final) for a in d.values()] + [odd.dy]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-12, atol=1e-14)
    for k in expected[2]:
        np.testing.assert_allclose(got[2][k], expected[2][k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_views_of_a_longer_sequence_work(inst):
    long_x = np.repeat(inst.seq["x"], 2, axis=0)
    y, _, _ = fwd(inst, x=long_x[::2])
    np.testing.assert_array_equal(y, fwd(inst)[0])


# ----------------------------------------------------------------------------------------- T = 0, B = 0
@pytest.mark.parametrize("name", CELLS)
def test_t_zero_returns_empty_output_and_initial_states(name):
    mod = module(name)
    inst = random_instance(mod, (0, 2, 3, 4), 3)
    y, final, cache = call_forward(mod, inst)
    assert y.shape[:2] == (0, 2)
    for s, v in inst.init.items():
        np.testing.assert_array_equal(final[s], v)
    g = mod.backward(cache, None, inst.d_final)
    for s in inst.init:
        np.testing.assert_array_equal(g[f"{s}0"], inst.d_final[s])
    for k in inst.params:
        assert g[k].shape == inst.params[k].shape and not g[k].any()


@pytest.mark.parametrize("name", CELLS)
def test_b_zero_returns_empty_arrays_and_zero_parameter_gradients(name):
    mod = module(name)
    inst = random_instance(mod, (3, 0, 3, 4), 3)
    y, final, cache = call_forward(mod, inst)
    assert y.shape[:2] == (3, 0) and all(v.shape[0] == 0 for v in final.values())
    g = mod.backward(cache)
    for k in inst.params:
        assert g[k].shape == inst.params[k].shape and not g[k].any()


# ----------------------------------------------------------------------------------------- backward
def test_dy_of_wrong_shape_dtype_or_type(inst):
    y, _, cache = fwd(inst)
    with pytest.raises(InputError, match=r"dy: got shape \(3, 5\) .* expected shape \(3, 2, 5\)"):
        lstm.backward(cache, dy=y[:, 0])
    with pytest.raises(InputError, match=r"dy: got shape \(2, 3, 5\)"):
        lstm.backward(cache, dy=np.swapaxes(y, 0, 1).copy())
    with pytest.raises(InputError, match=r"dy: got shape \(3, 2, 5\) and dtype float32, expected .* dtype float64"):
        lstm.backward(cache, dy=y.astype(np.float32))
    with pytest.raises(InputError, match=r"dy: expected a NumPy array, got float"):
        lstm.backward(cache, dy=1.0)


def test_d_final_unknown_key_list_and_shape(inst):
    _, final, cache = fwd(inst)
    with pytest.raises(InputError,
                       match=r"d_final: unknown state\(s\) \['h_T'\]; the states of 'lstm' are \['h', 'c'\]"):
        lstm.backward(cache, d_final={"h_T": final["h"]})
    with pytest.raises(InputError, match=r"d_final: expected a dict .* got list"):
        lstm.backward(cache, d_final=[final["h"], final["c"]])
    with pytest.raises(InputError, match=r"d_final\['c'\]: got shape \(5,\)"):
        lstm.backward(cache, d_final={"c": final["c"][0]})


def test_cache_from_another_cell_is_refused(inst):
    g = random_instance(gru_reset_after, (3, 2, 4, 5), 0)
    _, _, other = call_forward(gru_reset_after, g)
    with pytest.raises(InputError,
                       match=r"cache: made by the forward of cell 'gru_reset_after', expected one from 'lstm'"):
        lstm.backward(other)


def test_cache_with_the_same_keys_from_another_cell_is_refused(inst):
    """lstm_two_bias and nfg caches hold lstm's keys: only the recorded origin tells them apart."""
    from lstm_spec.reference import peephole

    p = random_instance(peephole, (3, 2, 4, 5), 0)
    _, _, other = call_forward(peephole, p)
    assert all(k in other for k in lstm.SIGNATURE.parameters)
    with pytest.raises(InputError, match=r"cache: made by the forward of cell 'peephole'"):
        lstm.backward(other)


def test_cache_survives_pickling_with_its_origin(inst):
    import copy
    import pickle

    _, _, cache = fwd(inst)
    for clone in (pickle.loads(pickle.dumps(cache)), copy.deepcopy(cache)):
        assert clone["dims"] == cache["dims"] and clone["dims"].cell == "lstm"
        lstm.backward(clone)
        with pytest.raises(InputError, match="made by the forward of cell 'lstm'"):
            gru_reset_after.backward(clone)


def test_a_dict_that_is_no_cache_is_named():
    with pytest.raises(InputError, match="cache: expected the cache returned by lstm.forward"):
        lstm.backward({"y": np.zeros(3)})


def test_missing_cache_entries_are_named(inst):
    _, _, cache = fwd(inst)
    del cache["U_c"]
    with pytest.raises(InputError, match=r"cache: missing \['U_c'\]"):
        lstm.backward(cache)


# ----------------------------------------------------------------------------------------- non-finite policy
def test_nan_propagates_by_default(inst):
    x = inst.seq["x"].copy()
    x[1, 0, 2] = np.nan
    with np.errstate(invalid="ignore"):
        y, _, cache = fwd(inst, x=x)
        g = lstm.backward(cache, np.ones_like(y))
    assert np.isfinite(y[0]).all() and np.isnan(y[1, 0]).all() and np.isfinite(y[1, 1]).all()
    assert np.isnan(g["W_f"]).any()


def test_raise_names_a_non_finite_input_parameter_or_state(inst):
    x = inst.seq["x"].copy()
    x[2, 1, 3] = np.inf
    with pytest.raises(NonFiniteError, match=r"lstm: input x is non-finite at index \(2, 1, 3\)"):
        fwd(inst, x=x, nonfinite="raise")
    U = inst.params["U_i"].copy()
    U[4, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"parameter U_i is non-finite at index \(4, 0\)"):
        fwd(inst, params=dict(inst.params, U_i=U), nonfinite="raise")
    c0 = inst.init["c"].copy()
    c0[1, 2] = -np.inf
    with pytest.raises(NonFiniteError, match=r"initial state c0 is non-finite at index \(1, 2\)"):
        fwd(inst, c0=c0, nonfinite="raise")


def test_raise_names_the_first_intermediate_that_overflowed():
    inst = random_instance(lstm_mse, (4, 2, 3, 4), 0)
    target = inst.seq["target"].copy()
    target[2, 1, 0] = 1e200  # e = y - target is finite, e * e overflows at step 2 only
    with np.errstate(over="ignore"):
        with pytest.raises(NonFiniteError, match=r"lstm_mse: first non-finite value in the forward pass: \w+ at "
                                                 r"step t=2 \(0-based\), index \(1, 0\)"):
            lstm_mse.forward(inst.params, inst.seq["x"], target, nonfinite="raise")
        y, _, _ = lstm_mse.forward(inst.params, inst.seq["x"], target)  # propagate: no error
    assert np.isinf(y[2, 1]).all() and np.isfinite(y[:2]).all()


def test_raise_in_backward_names_the_non_finite_cotangent(inst):
    y, final, cache = fwd(inst)
    dy = np.ones_like(y)
    dy[1, 0, 4] = np.nan
    with np.errstate(invalid="ignore"), pytest.raises(NonFiniteError, match=r"lstm: cotangent dy is non-finite "
                                                                             r"at index \(1, 0, 4\)"):
        lstm.backward(cache, dy, nonfinite="raise")
    d_c = np.ones_like(final["c"])
    d_c[0, 3] = np.inf
    with np.errstate(invalid="ignore"), pytest.raises(NonFiniteError, match=r"cotangent d_final\['c'\] is "
                                                                             r"non-finite at index \(0, 3\)"):
        lstm.backward(cache, None, {"c": d_c}, nonfinite="raise")
    with np.errstate(invalid="ignore"):
        g = lstm.backward(cache, dy)  # propagate
    assert np.isnan(g["b_o"]).any()


def test_raise_in_backward_names_the_gradient_and_the_forward_cause(inst):
    x = inst.seq["x"].copy()
    x[0, 1, 0] = np.nan
    with np.errstate(invalid="ignore"):
        y, _, cache = fwd(inst, x=x)
        with pytest.raises(NonFiniteError, match=r"gradient '\w+' is non-finite .* the forward pass already was: "
                                                 r"input x is non-finite at index \(0, 1, 0\)"):
            lstm.backward(cache, np.ones_like(y), nonfinite="raise")


def test_raise_passes_finite_runs_including_long_sequences_with_stacked_weights():
    """T = 9 > 4H = 4: arrays that are not per step (stacked weight matrices) must not be indexed by t."""
    inst = random_instance(lstm, (9, 2, 3, 1), 0)
    y, _, cache = call_forward(lstm, inst, nonfinite="raise")
    g = lstm.backward(cache, inst.dy, inst.d_final, nonfinite="raise")
    np.testing.assert_array_equal(g["W_f"], lstm.backward(cache, inst.dy, inst.d_final)["W_f"])


def test_propagate_scans_nothing(inst, monkeypatch):
    """'raise' costs nothing when not asked for: under 'propagate' no array is scanned."""
    def boom(a):
        raise AssertionError("scanned under 'propagate'")

    monkeypatch.setattr(_runtime, "_first_nonfinite", boom)
    y, _, cache = fwd(inst)
    lstm.backward(cache, np.ones_like(y))
    with pytest.raises(AssertionError, match="scanned"):
        fwd(inst, nonfinite="raise")


# ----------------------------------------------------------------------------------------- hand-written entries
# Bad inputs tried: losses (y as a list, 2-D, (T, B, 2), int); masks (T as a float, bool or negative, float16
# dtype, bool lengths); truncation (bool k1, seq missing an input / with an extra key / not a dict, unknown
# init and d_final states, dy of the wrong shape or dtype); bidirectional (seq with an unknown key, init as a
# list, dy of one direction's width, d_final with an unknown direction, a cache that is not one); training
# (grads not a dict, max_norm as a bool or a string, a forget bias value as a string, params as a list).
from lstm_spec.reference import bidirectional, losses, masks, training, truncation  # noqa: E402 - this section's imports, beside its tests


@pytest.mark.parametrize("y, match", [
    ([[[1.0]]], "y: expected a NumPy array, got list"),
    (np.zeros((3, 2)), r"y: got shape \(3, 2\) .* expected .* \(T, B, 1\)"),
    (np.zeros((3, 2, 2)), r"y: got shape \(3, 2, 2\)"),
    (np.zeros((3, 2, 1), int), r"y: got shape \(3, 2, 1\) and dtype int64"),
])
def test_loss_reductions_check_the_per_step_losses(y, match):
    for fn in (losses.time_weights, losses.sequence_loss):
        with pytest.raises(InputError, match=match):
            fn(y, "sum")


@pytest.mark.parametrize("kw, match", [
    (dict(T=3.0), r"T: expected an integer >= 0, got 3.0"),
    (dict(T=True), r"T: expected an integer >= 0, got True"),
    (dict(T=-1), r"T: expected an integer >= 0, got -1"),
    (dict(T=3, dtype=np.float16), r"dtype: got float16, expected float32, float64 or complex128"),
    (dict(T=3, lengths=[True, False]), r"lengths: expected a 1-D array of integers, got shape \(2,\) and dtype bool"),
])
def test_masks_check_t_dtype_and_lengths(kw, match):
    kw = dict(dict(lengths=[1, 3]), **kw)
    with pytest.raises(InputError, match=match):
        masks.mask_from_lengths(**kw)


def test_mask_from_lengths_accepts_numpy_integers():
    assert masks.mask_from_lengths(np.array([1, 2]), np.int64(2), np.float32).dtype == np.float32


@pytest.fixture
def tb():
    return random_instance(lstm, (4, 2, 3, 2), 0)


@pytest.mark.parametrize("change, match", [
    (dict(k1=True), r"k1, k2: expected integers with 1 <= k1 <= k2, got k1=True"),
    (dict(seq={}), r"seq: got \[\], expected a dict with exactly the inputs of 'lstm': \['x'\]"),
    (dict(seq="x"), r"seq: got str"),
    (dict(extra_seq=True), r"seq: got \['m', 'x'\]"),
    (dict(init={"h0": None}), r"init: unknown state\(s\) \['h0'\]; .* \(keys without the 0 suffix\)"),
    (dict(d_final={"q": None}), r"d_final: unknown state\(s\) \['q'\]"),
    (dict(dy="half"), r"dy: got shape \(2, 2, 2\) and dtype float64, expected shape \(4, 2, 2\)"),
    (dict(dy="float32"), r"dy: got shape \(4, 2, 2\) and dtype float32, expected .* dtype float64"),
])
def test_truncated_bptt_checks_its_arguments(tb, change, match):
    args = dict(module=lstm, params=tb.params, seq=dict(tb.seq), k1=2, k2=2, init=tb.init, dy=tb.dy,
                d_final=tb.d_final)
    if change.pop("extra_seq", False):
        args["seq"]["m"] = np.ones((4, 2, 1))
    if change.get("dy") == "half":
        change["dy"] = tb.dy[:2]
    elif change.get("dy") == "float32":
        change["dy"] = tb.dy.astype(np.float32)
    args.update(change)
    with pytest.raises(InputError, match=match):
        truncation.truncated_bptt(**args)


def test_truncated_bptt_accepts_numpy_integer_windows(tb):
    _, _, g = truncation.truncated_bptt(lstm, tb.params, tb.seq, np.int64(2), np.int64(4), tb.init, tb.dy, tb.d_final)
    _, _, full = run(lstm, tb)
    np.testing.assert_allclose(g["W_f"], full["W_f"], rtol=1e-12)


def test_bidirectional_checks_its_arguments(tb):
    with pytest.raises(InputError, match=r"seq: got \['input'\], expected a dict with exactly the inputs"):
        bidirectional.forward(lstm, tb.params, tb.params, {"input": tb.seq["x"]})
    with pytest.raises(InputError, match=r"init_bwd: expected a dict \{state: array\} or None, got list"):
        bidirectional.forward(lstm, tb.params, tb.params, tb.seq, init_bwd=[tb.init["h"]])
    y, _, cache = bidirectional.forward(lstm, tb.params, tb.params, tb.seq)
    assert y.shape == (4, 2, 4)
    with pytest.raises(InputError, match=r"dy: got shape \(4, 2, 2\) .* expected shape \(4, 2, 4\)"):
        bidirectional.backward(cache, tb.dy)
    with pytest.raises(InputError, match=r"d_final: got \['backward'\], expected a dict with keys 'fwd' and/or 'bwd'"):
        bidirectional.backward(cache, None, {"backward": tb.d_final})
    with pytest.raises(InputError, match=r"cache: expected the cache returned by bidirectional.forward"):
        bidirectional.backward({"fwd": cache["fwd"]})
    bidirectional.backward(cache, np.ones_like(y), {"bwd": tb.d_final})  # the valid call still works


def test_training_helpers_check_their_arguments(tb):
    _, _, g = run(lstm, tb)
    with pytest.raises(InputError, match=r"grads: expected a dict of gradient arrays .* got list"):
        training.global_norm(list(g.values()))
    with pytest.raises(InputError, match=r"max_norm: expected a real number, got bool True"):
        training.clip_by_global_norm(g, True)
    with pytest.raises(InputError, match=r"max_norm: expected a real number, got str"):
        training.clip_by_global_norm(g, "1.0")
    with pytest.raises(InputError, match=r"value: expected a real number, got str"):
        training.init_forget_bias(tb.params, "1")
    with pytest.raises(InputError, match=r"params: expected a dict"):
        training.init_forget_bias(list(tb.params.values()))


# ----------------------------------------------------------------------------------------- layouts
# Bad inputs tried: missing arrays (each converter), mixed float32/float64 gates, inconsistent gate shapes,
# stacked W/U/b of different 4H, a scalar or short bias_ih (no broadcasting), ONNX arrays without the
# direction axis or a direction out of range, Flax trees missing a bias, Layout flags of the wrong type,
# bias_ih keys that are no gate bias.
from lstm_spec import layouts  # noqa: E402 - this section's imports, beside its tests
from lstm_spec.layouts.stacked import LayoutError  # noqa: E402 - this section's imports, beside its tests


@pytest.fixture
def lp(inst):
    return inst.params  # lstm, H = 5, D = 4


def test_converters_name_missing_arrays(lp):
    short = {k: v for k, v in lp.items() if k != "U_c"}
    for fn in (layouts.to_stacked, layouts.to_torch_lstm, layouts.to_keras_lstm, layouts.to_onnx_lstm,
               layouts.to_flax_lstm):
        with pytest.raises(LayoutError, match=r"params: missing \['U_c'\]"):
            fn(short)
    with pytest.raises(LayoutError, match=r"weights: missing \['bias'\]"):
        layouts.from_keras_lstm({"kernel": np.zeros((4, 20)), "recurrent_kernel": np.zeros((5, 20))})
    with pytest.raises(LayoutError, match=r"state: missing \['bias_hh_l0'\]"):
        t = layouts.to_torch_lstm(lp)
        del t["bias_hh_l0"]
        layouts.from_torch_lstm(t)
    flax = layouts.to_flax_lstm(lp)
    del flax["hf"]["bias"]
    with pytest.raises(LayoutError, match=r"tree: missing \['hf/bias'\]"):
        layouts.from_flax_lstm(flax)
    with pytest.raises(LayoutError, match=r"params: missing \['b_hn'\]"):
        layouts.to_flax_gru({f"{k}_{g}": np.zeros((2, 2) if k != "b" else 2) for k in "WUb" for g in "rzn"})


def test_converters_do_not_cast_mixed_precision(lp):
    mixed = dict(lp, W_i=lp["W_i"].astype(np.float32))
    with pytest.raises(LayoutError, match=r"mixed dtypes \(.*W_i: float32.*\); expected one dtype"):
        layouts.to_stacked(mixed)
    with pytest.raises(LayoutError, match="mixed dtypes"):
        layouts.to_keras_lstm(mixed)


def test_converters_check_shapes(lp):
    with pytest.raises(LayoutError, match=r"params\['U_o'\]: got shape \(5, 4\), expected \(5, 5\)"):
        layouts.to_stacked(dict(lp, U_o=lp["W_o"]))
    with pytest.raises(LayoutError, match=r"stacked\['b'\]: got shape \(16,\), expected \(20,\) \(H = 5 from U\)"):
        layouts.from_stacked({"W": np.zeros((20, 4)), "U": np.zeros((20, 5)), "b": np.zeros(16)})
    for bias_ih in (0.5, np.zeros(5)):
        with pytest.raises(LayoutError, match=r"bias_ih: got shape .* expected shape \(20,\) .* never broadcast"):
            layouts.to_torch_lstm(lp, bias_ih=bias_ih)


def test_onnx_arrays_need_the_direction_axis(lp):
    o = layouts.to_onnx_lstm(lp)
    with pytest.raises(LayoutError, match=r"W: got shape \(20, 4\), expected the ONNX shape \[num_directions, 4H, D\]"):
        layouts.from_onnx_lstm(o["W"][0], o["R"], o["B"])
    with pytest.raises(LayoutError, match=r"direction: got 1, but W holds 1 direction"):
        layouts.from_onnx_lstm(o["W"], o["R"], o["B"], direction=1)
    with pytest.raises(LayoutError, match=r"B: got 20 values per direction, expected 8H = 40"):
        layouts.from_onnx_lstm(o["W"], o["R"], o["B"][:, :20])


def test_layout_fields_and_bias_split_are_checked(lp):
    with pytest.raises(LayoutError, match=r"layout transposed: expected True or False, got 'yes'"):
        layouts.Layout(transposed="yes")
    with pytest.raises(LayoutError, match=r"layout gate_order: expected a tuple of gate letters, got 'ifco'"):
        layouts.Layout(gate_order="ifco")
    with pytest.raises(LayoutError, match=r"bias_ih: unknown key\(s\) \['b_x'\]"):
        layouts.to_layout(lp, layouts.Layout(biases=2), bias_ih={"b_x": lp["b_f"]})
    with pytest.raises(LayoutError, match=r"bias_ih\['b_f'\]: got shape \(\) .* expected \(5,\)"):
        layouts.to_layout(lp, layouts.Layout(biases=2), bias_ih={"b_f": np.float64(0.5)})
