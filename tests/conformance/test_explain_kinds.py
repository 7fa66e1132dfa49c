"""Explanation kinds of issue 14 item 2 that were caught but not named: a hard or linear activation in place of
sigma / tanh (forward and, consistently, backward), gradients averaged over time or batch (every gradient, or the
parameter gradients only, or the output cotangent), and conventions with a fitted constant (a clip bound, a
layer-norm epsilon inside or outside the square root).

The targets here are small NumPy LSTMs written independently of the generated reference and of the diagnosis:
a per-sample loop over one concatenated [x; h] kernel in the gate order i, f, g, o, and a per-sample layer-norm
LSTM with a generic normalisation helper; random non-uniform weights, non-zero initial states. Each planted bug is
named; the correct targets conform, and a different bug is not named as one of these kinds."""

import numpy as np
import pytest

from lstm_spec.conformance import explain
from lstm_spec.conformance.compare import compare
from lstm_spec.conformance.problem import Case, expected, make_problem
from lstm_spec.conformance.signatures import diagnose

TOL = 1e-10
GATES = ("i", "f", "c", "o")  # the kernel's block order (PyTorch's i, f, g, o)


class _Target:
    has_gradients = True
    biases = 1


def _sig(a):
    return 0.5 * (1 + np.tanh(0.5 * a))


ACTS = {  # name -> (activation, its derivative written from the activation's output)
    "sigmoid": (_sig, lambda y: y * (1 - y)),
    "tanh": (np.tanh, lambda y: 1 - y * y),
    "keras_hard_sigmoid": (lambda a: np.clip(0.2 * a + 0.5, 0, 1), lambda y: 0.2 * ((y > 0) & (y < 1))),
    "torch_hardsigmoid": (lambda a: np.minimum(np.maximum(a + 3, 0), 6) / 6, lambda y: ((y > 0) & (y < 1)) / 6),
    "hardtanh": (lambda a: np.minimum(np.maximum(a, -1), 1), lambda y: 1.0 * (np.abs(y) < 1)),
    "linear": (lambda a: 1.0 * a, np.ones_like),
}
DEFAULT_ACTS = {"i": "sigmoid", "f": "sigmoid", "c": "tanh", "o": "sigmoid", "out": "tanh"}


def _kernel(p):
    K = np.concatenate([np.concatenate([p[f"W_{g}"], p[f"U_{g}"]], axis=1) for g in GATES])
    return K, np.concatenate([p[f"b_{g}"] for g in GATES])


def loop_lstm(problem, acts=None, gate_clip=None, cell_clip=None, divide_all=1.0, divide_params=1.0,
              divide_dy=1.0):
    """A per-sample LSTM over one [x; h] kernel; ``acts`` replaces activations (site -> name of ACTS, sites i, f, c
    for the candidate, o, out for the output's tanh), in the forward and consistently in the backward;
    ``gate_clip`` clips the pre-activations (lstm_clip), ``cell_clip`` the cell state (lstm_cell_clip); the
    gradients divided by ``divide_all`` (all), ``divide_params`` (parameters only), ``divide_dy`` (dy only)."""
    acts = {**DEFAULT_ACTS, **(acts or {})}
    fn = {s: ACTS[n] for s, n in acts.items()}
    p = problem.params[0]
    K, bias = _kernel(p)
    T, B, D = problem.x.shape
    H = bias.size // 4
    dK, dbias = np.zeros_like(K), np.zeros_like(bias)
    out = {"y": np.zeros((T, B, H)), "h_T": np.zeros((B, H)), "c_T": np.zeros((B, H)), "d x": np.zeros((T, B, D)),
           "d h0": np.zeros((B, H)), "d c0": np.zeros((B, H))}
    for b in range(B):
        h, c = problem.init[0]["h"][b].copy(), problem.init[0]["c"][b].copy()
        tape = []
        for t in range(T):
            v = np.concatenate([problem.x[t, b], h])
            a = K @ v + bias
            ac = a if gate_clip is None else np.clip(a, -gate_clip, gate_clip)
            g = {s: fn[s][0](ac[k * H:(k + 1) * H]) for k, s in enumerate(GATES)}
            pre = g["f"] * c + g["i"] * g["c"]
            c_new = pre if cell_clip is None else np.clip(pre, -cell_clip, cell_clip)
            co = fn["out"][0](c_new)
            tape.append((v, a, g, c, pre, co))
            h, c = g["o"] * co, c_new
            out["y"][t, b] = h
        out["h_T"][b], out["c_T"][b] = h, c
        dh, dc = problem.d_final[0]["h"][b].copy(), problem.d_final[0]["c"][b].copy()
        for t in reversed(range(T)):
            v, a, g, c_prev, pre, co = tape[t]
            dh = dh + problem.dy[t, b] / divide_dy
            dc = dc + dh * g["o"] * fn["out"][1](co)
            if cell_clip is not None:
                dc = dc * (np.abs(pre) <= cell_clip)
            dg = {"i": dc * g["c"], "f": dc * c_prev, "c": dc * g["i"], "o": dh * co}
            da = np.concatenate([dg[s] * fn[s][1](g[s]) for s in GATES])
            if gate_clip is not None:
                da = da * (np.abs(a) <= gate_clip)
            dK += np.outer(da, v)
            dbias += da
            dv = K.T @ da
            out["d x"][t, b] = dv[:D] / divide_all
            dh, dc = dv[D:], dc * g["f"]
        out["d h0"][b], out["d c0"][b] = dh / divide_all, dc / divide_all
    for k, s in enumerate(GATES):
        rows = slice(k * H, (k + 1) * H)
        out[f"d W_{s}"] = dK[rows, :D] / (divide_all * divide_params)
        out[f"d U_{s}"] = dK[rows, D:] / (divide_all * divide_params)
        out[f"d b_{s}"] = dbias[rows] / (divide_all * divide_params)
    return out


def _ln(a, eps, outside):
    e = a - a.mean()
    v = (e * e).mean()
    s = 1 / (np.sqrt(v) + eps) if outside else 1 / np.sqrt(v + eps)
    return e * s, (e, s, v)


def _ln_back(dn, stats, eps, outside):
    e, s, v = stats
    ds_dv = -s * s / (2 * np.sqrt(v)) if outside else -0.5 * s ** 3
    de = dn * s + (dn * e).sum() * ds_dv * 2 * e / e.size
    return de - de.mean()


def layer_norm_lstm(problem, eps=1e-5, outside=False):
    """A per-sample layer-normalised LSTM (Ba et al.: W x and U h each normalised over the 4H units, c over its H
    units), with the epsilon ``eps`` inside the square root (or added to it, ``outside``)."""
    p = problem.params[0]
    order = ("f", "i", "c", "o")
    W = np.concatenate([p[f"W_{g}"] for g in order])
    U = np.concatenate([p[f"U_{g}"] for g in order])
    gx, gh, bias = (np.concatenate([p[f"{n}_{g}"] for g in order]) for n in ("gx", "gh", "b"))
    T, B, D = problem.x.shape
    H = bias.size // 4
    grads = {k: np.zeros_like(v) for k, v in {"W": W, "U": U, "gx": gx, "gh": gh, "b": bias}.items()}
    dgn, dbn = np.zeros(H), np.zeros(H)
    out = {"y": np.zeros((T, B, H)), "h_T": np.zeros((B, H)), "c_T": np.zeros((B, H)), "d x": np.zeros((T, B, D)),
           "d h0": np.zeros((B, H)), "d c0": np.zeros((B, H))}
    for b in range(B):
        h, c = problem.init[0]["h"][b].copy(), problem.init[0]["c"][b].copy()
        tape = []
        for t in range(T):
            x = problem.x[t, b]
            nx, sx = _ln(W @ x, eps, outside)
            nh, sh = _ln(U @ h, eps, outside)
            z = gx * nx + gh * nh + bias
            f, i, g, o = _sig(z[:H]), _sig(z[H:2 * H]), np.tanh(z[2 * H:3 * H]), _sig(z[3 * H:])
            c_new = f * c + i * g
            nc, sc = _ln(c_new, eps, outside)
            th = np.tanh(p["g_n"] * nc + p["b_n"])
            tape.append((x, h, c, nx, sx, nh, sh, f, i, g, o, nc, sc, th))
            h, c = o * th, c_new
            out["y"][t, b] = h
        out["h_T"][b], out["c_T"][b] = h, c
        dh, dc = problem.d_final[0]["h"][b].copy(), problem.d_final[0]["c"][b].copy()
        for t in reversed(range(T)):
            x, h_prev, c_prev, nx, sx, nh, sh, f, i, g, o, nc, sc, th = tape[t]
            dh = dh + problem.dy[t, b]
            du = dh * o * (1 - th * th)
            dgn += du * nc
            dbn += du
            dc = dc + _ln_back(du * p["g_n"], sc, eps, outside)
            dz = np.concatenate([dc * c_prev * f * (1 - f), dc * g * i * (1 - i), dc * i * (1 - g * g),
                                 dh * th * o * (1 - o)])
            dax, dah = _ln_back(dz * gx, sx, eps, outside), _ln_back(dz * gh, sh, eps, outside)
            grads["b"] += dz
            grads["gx"] += dz * nx
            grads["gh"] += dz * nh
            grads["W"] += np.outer(dax, x)
            grads["U"] += np.outer(dah, h_prev)
            out["d x"][t, b] = W.T @ dax
            dh, dc = U.T @ dah, dc * f
        out["d h0"][b], out["d c0"][b] = dh, dc
    for k, g in enumerate(order):
        rows = slice(k * H, (k + 1) * H)
        for n in ("W", "U", "gx", "gh", "b"):
            out[f"d {n}_{g}"] = grads[n][rows]
    out["d g_n"], out["d b_n"] = dgn, dbn
    return out


def _problem(cell, shape=(4, 3, 5, 3), seed=20):
    return make_problem(Case(cell, shape, "float64", seed))


def _diagnose(problem, got):
    failing = [r.quantity for r in compare(problem, got, expected(problem), TOL) if not r.within]
    assert failing, "the planted bug is invisible on this case"
    return diagnose(problem, _Target(), got, failing, TOL)


def _full(ds) -> str:
    """The first diagnosis, which must be a full explanation; its title and detail as one text."""
    assert ds and "partly" not in ds[0].title, ds
    return f"{ds[0].title}: {ds[0].detail}"


# --------------------------------------------------------------------------- the independent targets are right
@pytest.mark.parametrize("cell, run", [
    ("lstm", loop_lstm), ("lstm_clip", lambda p: loop_lstm(p, gate_clip=1.0)),
    ("lstm_cell_clip", lambda p: loop_lstm(p, cell_clip=1.0)), ("lstm_layer_norm", layer_norm_lstm)])
def test_correct_independent_targets_conform_and_get_no_diagnosis(cell, run):
    problem = _problem(cell)
    got = run(problem)
    rows = compare(problem, got, expected(problem), TOL)
    assert all(r.within for r in rows), [r.quantity for r in rows if not r.within]
    assert diagnose(problem, _Target(), got, [r.quantity for r in rows], TOL) == []


# ------------------------------------------------------------------------------- hard and linear activations
@pytest.mark.parametrize("site, act, statement, words", [
    ("o", "keras_hard_sigmoid", "o = sigma(z_o)", ("hard sigmoid", "Keras", "instead of sigma")),
    ("f", "torch_hardsigmoid", "f = sigma(z_f)", ("hard sigmoid", "PyTorch hardsigmoid", "instead of sigma")),
    ("c", "hardtanh", "c_tilde = tanh(z_c)", ("hard tanh", "instead of tanh")),
    ("out", "hardtanh", "tanh_c = tanh(c)", ("hard tanh", "instead of tanh")),
    ("i", "linear", "i = sigma(z_i)", ("linear (identity)", "instead of sigma")),
    ("out", "linear", "tanh_c = tanh(c)", ("linear (identity)", "instead of tanh")),
])
def test_hard_or_linear_activation_is_named(site, act, statement, words):
    """One activation replaced in the forward, its derivative consistently in the backward: named by the
    derived statement and the variant, as one full explanation (not a pair of unrelated changes)."""
    problem = _problem("lstm")
    text = _full(_diagnose(problem, loop_lstm(problem, acts={site: act})))
    assert statement in text and all(w in text for w in words), text
    assert "its derivative" in text and text.startswith("forward statement, "), text  # one change, not a pair


def test_every_gate_hard_sigmoid_is_named():
    """Keras' recurrent_activation='hard_sigmoid': every sigmoid gate at once, one explanation."""
    problem = _problem("lstm")
    got = loop_lstm(problem, acts={g: "keras_hard_sigmoid" for g in "ifo"})
    text = _full(_diagnose(problem, got))
    assert "every sigma" in text and "Keras" in text, text


def test_hard_sigmoid_is_not_confused_with_its_neighbours():
    """Keras' hard sigmoid is not named PyTorch's, a hard tanh is not named linear, and a backward that only
    drops the gate's derivative (a backward bug) is not named a hard or linear activation."""
    problem = _problem("lstm")
    text = _full(_diagnose(problem, loop_lstm(problem, acts={"o": "keras_hard_sigmoid"})))
    assert "PyTorch" not in text and "linear" not in text, text
    text = _full(_diagnose(problem, loop_lstm(problem, acts={"c": "hardtanh"})))
    assert "linear" not in text, text
    m = next(m for m in explain.mutations(problem.module)
             if m.kind == "activation derivative replaced by 1" and "d_z_o" in m.old)
    text = _full(_diagnose(problem, explain.predict(problem, m, 1, True)))
    assert "hard" not in text and "linear" not in text and "d_z_o = d_o * o * (1 - o)" in text, text


def test_hard_activation_variants_are_in_the_round_trip():
    """The new mutations are generated (so the round trip of test_explain covers them) and named as such."""
    problem = _problem("lstm", (3, 2, 3, 2), 7)
    muts = [m for m in explain.mutations(problem.module) if "hard" in m.kind or "linear" in m.kind]
    assert len(muts) >= 10
    missed = []
    for m in muts:
        base = expected(problem)
        got = explain.predict(problem, m, 1, True, base)
        failing = [r.quantity for r in compare(problem, got, base, TOL) if not r.within]
        if got is None or not failing:
            continue
        passing = [q for q in base if q not in failing]
        groups = explain.explain(problem, got, failing, passing, TOL, 1, True)
        if not any(m.key == x.name for g in groups if g[0].full(failing) for x in g):
            missed.append(m.key)
    assert not missed, missed


# --------------------------------------------------------------------------- gradients averaged (time, batch)
@pytest.mark.parametrize("how, words, not_words", [
    ({"divide_all": 4.0}, ("every gradient", "sequence length T"), ("parameter gradients divided",)),
    ({"divide_all": 3.0}, ("every gradient", "batch size B"), ("parameter gradients divided",)),
    ({"divide_params": 4.0}, ("parameter gradients divided by the sequence length T",), ("every gradient",)),
    ({"divide_dy": 4.0}, ("dy divided by the sequence length T",), ("every gradient", "parameter gradients")),
])
def test_averaged_gradients_are_named(how, words, not_words):
    """Every gradient (d x, d h0, d c0 too) divided by T or B, the parameter gradients only, or the output
    cotangent only (a loss averaged over time whose final-state terms are not): each named as itself."""
    problem = _problem("lstm")
    text = _full(_diagnose(problem, loop_lstm(problem, **how)))
    assert all(w in text for w in words) and not any(w in text for w in not_words), text


def test_a_different_bug_is_not_named_averaged():
    problem = _problem("lstm")
    got = loop_lstm(problem, acts={"o": "torch_hardsigmoid"})
    assert "divided" not in _full(_diagnose(problem, got))


# ------------------------------------------------------------------------------ fitted clip bound, epsilon
@pytest.mark.parametrize("cell, how, words", [
    ("lstm_clip", {"gate_clip": 3.0}, "clip bound 3 instead of 1"),
    ("lstm_clip", {"gate_clip": 0.37}, "clip bound 0.37 instead of 1"),
    ("lstm_cell_clip", {"cell_clip": 0.5}, "clip bound 0.5 instead of 1"),
])
def test_clip_bound_is_fitted_and_named(cell, how, words):
    problem = _problem(cell)
    text = _full(_diagnose(problem, loop_lstm(problem, **how)))
    assert words in text, text


def test_a_clip_not_applied_is_named_so():
    """A target without the clip (or with a bound above every value it would clip): said so, no bound fitted."""
    problem = _problem("lstm_cell_clip")
    text = _full(_diagnose(problem, loop_lstm(problem)))
    assert "the clip is not applied" in text and "clip bound" not in text, text


def test_a_different_bug_in_a_clipped_cell_is_not_named_a_clip_bound():
    problem = _problem("lstm_clip")
    text = _full(_diagnose(problem, loop_lstm(problem, gate_clip=1.0, divide_all=3.0)))
    assert "clip bound" not in text and "every gradient" in text, text


@pytest.mark.parametrize("eps, outside, words, not_words", [
    (1e-3, False, "epsilon 0.001 instead of 1e-05", "outside"),
    (1e-12, False, "epsilon 1e-12 instead of 1e-05", "outside"),
    (1e-5, True, "epsilon 1e-05 outside the square root", "instead of"),
    (1e-3, True, "epsilon 0.001 outside the square root", "inside"),
])
def test_layer_norm_epsilon_is_fitted_and_named(eps, outside, words, not_words):
    problem = _problem("lstm_layer_norm", (3, 2, 3, 3), 11)
    text = _full(_diagnose(problem, layer_norm_lstm(problem, eps, outside)))
    named = text.split(" (indistinguishable on this case")[0]  # a tiny epsilon is one inside or outside
    assert words in named and not_words not in named, text


def test_a_different_bug_in_a_layer_norm_cell_is_not_named_an_epsilon():
    problem = _problem("lstm_layer_norm", (3, 2, 3, 3), 11)
    got = layer_norm_lstm(problem)
    got = {k: (v / 3 if k.startswith("d ") else v) for k, v in got.items()}
    text = _full(_diagnose(problem, got))
    assert "epsilon" not in text and "every gradient" in text, text
