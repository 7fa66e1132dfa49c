"""Bidirectional layers: complex step on the composition, both output-order conventions, and PyTorch."""

import numpy as np
import pytest

from lstm_spec.checks.cases import random_instance
from lstm_spec.reference import bidirectional, lstm

H_CS = 1e-30


def _setup(seed=3, shape=(5, 2, 3, 4)):
    a = random_instance(lstm, shape, seed)
    b = random_instance(lstm, shape, seed + 1)
    rng = np.random.default_rng(seed)
    T, B, _, H = shape
    dy = rng.standard_normal((T, B, 2 * H))
    d_final = {"fwd": {s: rng.standard_normal((B, H)) for s in "hc"},
               "bwd": {s: rng.standard_normal((B, H)) for s in "hc"}}
    return a, b, dy, d_final


def _loss(a_params, b_params, x, init_f, init_b, dy, d_final, order):
    y, fin, _ = bidirectional.forward(lstm, a_params, b_params, {"x": x}, init_f, init_b, order)
    total = np.sum(dy * y)
    for d in ("fwd", "bwd"):
        total = total + sum(np.sum(d_final[d][s] * fin[d][s]) for s in "hc")
    return total


@pytest.mark.parametrize("order", ["original", "processing"])
def test_bidirectional_gradients_by_complex_step(order):
    a, b, dy, d_final = _setup()
    x = a.seq["x"]
    _, _, cache = bidirectional.forward(lstm, a.params, b.params, {"x": x}, a.init, b.init, order)
    g = bidirectional.backward(cache, dy, d_final)
    rng = np.random.default_rng(0)
    def c(d):
        return {k: v.astype(complex) for k, v in d.items()}
    args = {"pf": c(a.params), "pb": c(b.params), "x": x.astype(complex), "if": c(a.init), "ib": c(b.init)}
    checks = [("pf", k, g["fwd"][k]) for k in a.params] + [("pb", k, g["bwd"][k]) for k in b.params]
    checks += [("x", None, g["x"])] + [("if", s, g[f"fwd_{s}0"]) for s in "hc"]
    checks += [("ib", s, g[f"bwd_{s}0"]) for s in "hc"]
    for where, key, grad in checks:
        v = rng.standard_normal(grad.shape)
        pert = {k: (dict(val) if isinstance(val, dict) else val) for k, val in args.items()}
        if key is None:
            pert[where] = pert[where] + 1j * H_CS * v
        else:
            pert[where][key] = pert[where][key] + 1j * H_CS * v
        val = _loss(pert["pf"], pert["pb"], pert["x"], pert["if"], pert["ib"], dy, d_final, order)
        cs = np.imag(val) / H_CS
        assert abs(cs - np.sum(grad * v)) <= 1e-12 * np.linalg.norm(grad) * np.linalg.norm(v), (where, key)


def test_output_orders_differ_only_in_the_reverse_half():
    a, b, _, _ = _setup()
    y1, _, _ = bidirectional.forward(lstm, a.params, b.params, a.seq, a.init, b.init, "original")
    y2, _, _ = bidirectional.forward(lstm, a.params, b.params, a.seq, a.init, b.init, "processing")
    H = 4
    np.testing.assert_array_equal(y1[..., :H], y2[..., :H])
    np.testing.assert_array_equal(y1[..., H:], y2[::-1, :, H:])
    with pytest.raises(ValueError, match="order"):
        bidirectional.forward(lstm, a.params, b.params, a.seq, order="reversed")


def test_bidirectional_agrees_with_pytorch():
    torch = pytest.importorskip("torch")
    from lstm_spec.layouts import to_torch_lstm

    a, b, dy, d_final = _setup(shape=(4, 3, 5, 3))
    D, H = 5, 3  # of the shape (T, B, D, H) above
    net = torch.nn.LSTM(D, H, bidirectional=True).double()
    with torch.no_grad():
        for params, sfx in ((a.params, "_l0"), (b.params, "_l0_reverse")):
            for k, v in to_torch_lstm(params).items():
                getattr(net, k.replace("_l0", sfx)).copy_(torch.tensor(v))
    x = torch.tensor(a.seq["x"], requires_grad=True)
    h0 = torch.tensor(np.stack([a.init["h"], b.init["h"]]), requires_grad=True)
    c0 = torch.tensor(np.stack([a.init["c"], b.init["c"]]), requires_grad=True)
    y, (hn, cn) = net(x, (h0, c0))
    loss = (y * torch.tensor(dy)).sum()
    for i, d in enumerate(("fwd", "bwd")):
        loss = loss + (hn[i] * torch.tensor(d_final[d]["h"])).sum() + (cn[i] * torch.tensor(d_final[d]["c"])).sum()
    loss.backward()
    ours_y, ours_fin, cache = bidirectional.forward(lstm, a.params, b.params, a.seq, a.init, b.init, "original")
    g = bidirectional.backward(cache, dy, d_final)
    np.testing.assert_allclose(ours_y, y.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours_fin["bwd"]["h"], hn[1].detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g["x"], x.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g["bwd_c0"], c0.grad[1].numpy(), rtol=1e-10, atol=1e-12)
    w = net.weight_hh_l0_reverse.grad.numpy()
    from lstm_spec.layouts import to_stacked

    np.testing.assert_allclose(to_stacked(g["bwd"])["U"], w, rtol=1e-10, atol=1e-12)


def test_bidirectional_by_finite_differences():
    a, b, dy, d_final = _setup(seed=9, shape=(3, 2, 2, 3))
    _, _, cache = bidirectional.forward(lstm, a.params, b.params, a.seq, a.init, b.init, "original")
    g = bidirectional.backward(cache, dy, d_final)
    rng = np.random.default_rng(1)
    for side, params, grads in (("fwd", a.params, g["fwd"]), ("bwd", b.params, g["bwd"])):
        for k in params:
            v = rng.standard_normal(params[k].shape)
            eps = 1e-6
            vals = []
            for sgn in (1, -1):
                p = dict(params, **{k: params[k] + sgn * eps * v})
                pf, pb = (p, b.params) if side == "fwd" else (a.params, p)
                vals.append(_loss(pf, pb, a.seq["x"], a.init, b.init, dy, d_final, "original"))
            fd = (vals[0] - vals[1]) / (2 * eps)
            assert abs(fd - np.sum(grads[k] * v)) <= 1e-6 * np.linalg.norm(grads[k]) * np.linalg.norm(v)


def test_bidirectional_equals_sympy_diff_of_the_unrolled_loss():
    """The composition run on SymPy symbols (T = 2, H = 1, D = 2) against sympy.diff of a loss built
    independently from the spec's equations, for every parameter entry of both directions and x."""
    import sympy

    from lstm_spec.checks.symbolic import ExplicitStep, ModularPoint, equal_at_points
    from lstm_spec.derivations import derive
    from lstm_spec.derivations.rules import symbol_array
    from lstm_spec.reference._runtime import symbolic
    from lstm_spec.spec import load

    d = derive(load("lstm"))
    S = d.symbols
    T, D, H = 2, 2, 1


    sizes = {"D": D, "H": H}
    pf = {n: symbol_array(f"f{n}", tuple(sizes[x] for x in ds)) for n, ds in lstm.SIGNATURE.parameters.items()}
    pb = {n: symbol_array(f"b{n}", tuple(sizes[x] for x in ds)) for n, ds in lstm.SIGNATURE.parameters.items()}
    x = symbol_array("x", (T, 1, D))
    dy = symbol_array("dy", (T, 1, 2 * H))

    def unrolled(params, xs):
        ex = ExplicitStep(d, sizes)
        ex.leaf = {S.param(n): (sympy.Matrix(v) if v.ndim == 2 else list(v)) for n, v in params.items()}
        state, ys = {"h": [0] * H, "c": [0] * H}, []
        for t in range(len(xs)):
            env = ex.run({"x": list(xs[t])}, state)
            ys.append(env[S.value("h")])
            state = {s: env[S.value(s)] for s in ("h", "c")}
        return ys

    yf = unrolled(pf, x[:, 0])
    yb = unrolled(pb, x[::-1, 0])[::-1]  # reverse pass, re-aligned with the input's time order
    L = sum(dy[t, 0, k] * yf[t][k] for t in range(T) for k in range(H))
    L += sum(dy[t, 0, H + k] * yb[t][k] for t in range(T) for k in range(H))

    with symbolic():
        _, _, cache = bidirectional.forward(lstm, pf, pb, {"x": x}, order="original")
        g = bidirectional.backward(cache, dy)
    points = [ModularPoint(s) for s in (1, 2)]
    leaves = [(g["fwd"][n], pf[n]) for n in pf] + [(g["bwd"][n], pb[n]) for n in pb] + [(g["x"], x)]
    for got, sym in leaves:
        for idx in np.ndindex(sym.shape):
            assert equal_at_points(got[idx], sympy.diff(L, sym[idx]), points), sym[idx]


def test_negative_control_misrouted_reverse_cotangent_is_caught():
    """Routing dy to the reverse pass without re-reversing it (a classic reverse-direction bug) breaks the
    agreement with PyTorch-independent complex step."""
    a, b, dy, d_final = _setup()
    _, _, cache = bidirectional.forward(lstm, a.params, b.params, a.seq, a.init, b.init, "original")
    cache["order"] = "processing"  # the bug: backward forgets that the outputs were re-aligned
    g = bidirectional.backward(cache, dy, d_final)
    rng = np.random.default_rng(0)
    v = rng.standard_normal(b.params["U_c"].shape)
    p = {k: val.astype(complex) for k, val in b.params.items()}
    p["U_c"] = p["U_c"] + 1j * H_CS * v
    cs = np.imag(_loss({k: val.astype(complex) for k, val in a.params.items()}, p, a.seq["x"].astype(complex),
                       {k: val.astype(complex) for k, val in a.init.items()},
                       {k: val.astype(complex) for k, val in b.init.items()}, dy, d_final, "original")) / H_CS
    assert abs(cs - np.sum(g["bwd"]["U_c"] * v)) > 1e-6 * np.linalg.norm(g["bwd"]["U_c"]) * np.linalg.norm(v)
