"""Diagnosis: the known bug signatures of LSTM implementations, each a way to re-run the reference
*with that bug applied*. When a case fails, every signature that applies is tried; one that
reproduces the target's numbers (every quantity it predicts within the case's tolerance, including
the failing ones) names the bug. Sources: LSTM bugs reported in the public issue trackers of the
frameworks and of hand-written implementations (each entry's explanation says which).

Forward-side bugs transform the problem (parameters, direction, outputs) and run the generated
reference; backward-side bugs run a *mutated copy of the generated module* (one line of its derived
backward changed, as the negative controls of `lstm-spec verify` do) or transform its gradients.
"""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lstm_spec.checks.mutants import load_module, mutate_backward
from lstm_spec.checks.tolerances import TOLERANCES, tolerance

from . import explain
from .compare import compare
from .problem import Problem, expected, run_sequence


@dataclass
class BugSignature:
    key: str
    title: str
    explain: str
    candidates: Callable  # (problem, target, got) -> iterable of (detail, predicted quantities, tolerance or None)
    fitted: bool = False  # its parameter is fitted to the target's numbers: reported only when nothing exact is


# ----------------------------------------------------------------------------------------- helpers
def _gates(problem):
    from lstm_spec.layouts.frameworks import gate_names

    return list(gate_names(problem.params[0]))


def _with_params(problem, fn) -> Problem:
    p = {k: np.asarray(v, np.float64).copy() for k, v in problem.params[0].items()}
    fn(p)
    return problem.with_(params=[p])


def _nb(problem, target) -> int:
    return problem.extra.get("biases", target.biases)


def _ref(problem, target, module=None, dtype="float64", direction=None, with_grads=None):
    grads = target.has_gradients if with_grads is None else with_grads
    return expected(problem, module=module, dtype=dtype, biases=_nb(problem, target), with_grads=grads,
                    direction=direction)


def _param_grad_keys(res):
    return [k for k in res if k.startswith("d ") and k not in ("d x",) and not re.match(r"d \w+0$", k)]


_MUTANTS: dict = {}


def _mutant(module, how: str):
    """A copy of a generated reference module with a known bug in its backward (checks.mutants.mutate_backward;
    None when it has no line for it; cached)."""
    key = (module.__name__, how)
    if key not in _MUTANTS:
        text = mutate_backward(inspect.getsource(module), how)
        _MUTANTS[key] = None if text is None else \
            load_module(text, f"{module.__name__}_mutant_{re.sub(r'[^a-z0-9]', '_', how)}")
    return _MUTANTS[key]


# ----------------------------------------------------------------------------------------- signatures
def _permuted(problem, target, got):
    gates = _gates(problem)
    names = set(problem.params[0])
    for perm in itertools.permutations(gates):
        if perm == tuple(gates):
            continue
        src = dict(zip(gates, perm, strict=False))  # the target computes gate g with the parameters of gate src[g]

        def fn(p, src=src):
            orig = {k: v.copy() for k, v in p.items()}
            for g, s in src.items():
                for kind in ("W", "U", "b"):
                    if f"{kind}_{g}" in names:
                        p[f"{kind}_{g}"] = orig[f"{kind}_{s}"]
        res = _ref(_with_params(problem, fn), target)
        out = {}
        for k, v in res.items():
            m = re.match(r"d ([WUb])_(\w)(\(..\))?$", k)
            out[f"d {m.group(1)}_{src[m.group(2)]}{m.group(3) or ''}" if m and m.group(2) in src else k] = v
        moved = [f"{g}<-{s}" for g, s in src.items() if g != s]
        yield f"gate g computed with the parameters of gate s (g<-s): {', '.join(moved)}", out, None


def _forget_bias(problem, target, got):
    """A constant k added to z_f at every step, k fitted to the target's outputs; with the gradient of that
    forward, and with the reference's gradients (a backward that recomputes the gates without k)."""
    if "b_f" not in problem.params[0] or got.get("y") is None:
        return
    def shifted(k):
        return _with_params(problem, lambda p: p.__setitem__("b_f", p["b_f"] + k))
    k = _fit(lambda k: _ref(shifted(k), target, with_grads=False)["y"], np.asarray(got["y"], np.float64))
    if k is None or abs(k) < tolerance("diagnosis_fit_zero", "float64"):
        return
    res = _ref(shifted(k), target)
    declare = (f" (if that is your convention, declare it: \"constants\": {{\"forget_bias\": {k:.4g}}})"
               if "forget_bias" in (getattr(problem.module.SIGNATURE, "constants", None) or {}) else "")
    yield f"forget_bias = {k:.4g} added to z_f at every step{declare}", res, None
    if target.has_gradients:
        if explain._recomputable(explain.source(problem.module)):
            def add(p):
                return {**p, "b_f": p["b_f"] + k}
            mod = explain.Recomputed(problem.module, problem.module, add)
            detail = (f"forget_bias = {k:.4g} added to z_f in the forward only (the backward recomputes the gates "
                      f"from the stored states without it)")
            yield detail, _ref(problem, target, module=mod), None
        base = _ref(problem, target)
        detail = (f"forget_bias = {k:.4g} added to z_f in the forward only (the backward runs its own forward "
                  "without it)")
        yield (detail, {q: (base[q] if q.startswith("d ") else v) for q, v in res.items()}, None)


def _fit(model, target: np.ndarray, starts=(-2.0, -1.0, -0.5, 0.5, 1.0, 2.0), steps: int = 8):
    """The constant k for which model(k) is closest to ``target`` (least squares, Gauss-Newton from the
    best of a few starts); None when the shapes differ."""
    if model(0.0).shape != target.shape:
        return None
    def err(k):
        return float(np.sum((model(k) - target) ** 2))
    k = min(starts, key=err)
    for _ in range(steps):
        r, h = model(k) - target, 1e-6
        J = (model(k + h) - model(k - h)) / (2 * h)
        jj = float(np.sum(J * J))
        if jj == 0:
            break
        dk = float(np.sum(J * r)) / jj
        k -= dk
        if abs(dk) < tolerance("diagnosis_fit_step", "float64") * max(1.0, abs(k)):
            break
    return k


def _lengths_ignored(problem, target, got):
    if problem.lengths is None or not problem.case.single or problem.case.direction != "forward":
        return
    detail = ("sequence lengths ignored for the final states (the state runs through the padded steps: the states "
              "after step T)")
    yield (detail, _ref(problem.with_(lengths=None), target), None)


def _bias_twice(problem, target, got):
    def fn(p):
        for k in p:
            if k.startswith("b_"):
                p[k] = 2 * p[k]
    res = _ref(_with_params(problem, fn), target)
    for k in res:
        if k.startswith("d b_"):
            res[k] = 2 * res[k]
    yield "every bias added twice", res, None


def _bias_dropped(problem, target, got):
    if _nb(problem, target) == 1:
        def fn(p):
            for k in p:
                if k.startswith("b_"):
                    p[k] = 0 * p[k]
        res = _ref(_with_params(problem, fn), target)
        yield "the bias is never added", {k: v for k, v in res.items() if not k.startswith("d b_")}, None
        return
    for side, other in (("hh", "ih"), ("ih", "hh")):
        keep = problem.bias_ih[0] if side == "hh" else {k: problem.params[0][k] - v
                                                          for k, v in problem.bias_ih[0].items()}

        def fn(p, keep=keep):
            for k, v in keep.items():
                p[k] = np.asarray(v, np.float64)
        res = _ref(_with_params(problem, fn), target)
        label = "recurrent-side bias (b_hh)" if side == "hh" else "input-side bias (b_ih)"
        yield f"the {label} is dropped, only b_{other} is used", {
            k: v for k, v in res.items() if not k.endswith(f"({side})")}, None


def _reversed(problem, target, got):
    if not problem.case.single:
        return
    def flip(r):
        return {k: (v[::-1] if k == "y" else v) for k, v in r.items()}
    res = flip(_ref(problem.with_(dy=problem.dy[::-1].copy()), target))
    yield "outputs returned in reversed time order", res, None
    other = "forward" if problem.case.direction == "reverse" else "reverse"
    res = _ref(problem, target, direction=other)
    yield f"sequence read in the wrong direction ({other}), outputs in original order", res, None
    res = flip(_ref(problem.with_(dy=problem.dy[::-1].copy()), target, direction=other))
    yield f"sequence read in the wrong direction ({other}), outputs in processing order", res, None


def _final_off_by_one(problem, target, got):
    case = problem.case
    if not case.single or problem.lengths is not None or case.direction != "forward":
        return
    mod = problem.module
    st = problem.states
    def f64(d):
        return {k: np.asarray(v, np.float64) for k, v in d.items()}
    params, init, x = f64(problem.params[0]), f64(problem.init[0]), problem.x.astype(np.float64)
    T = x.shape[0]
    dy = problem.dy.astype(np.float64)
    zero = {s: np.zeros_like(init[s]) for s in st}
    y, _, g_full = run_sequence(mod, params, x, init, dy, zero, with_grads=target.has_gradients)
    _, prev, g_pre = run_sequence(mod, params, x[:T - 1], init, dy[:T - 1] * 0, f64(problem.d_final[0]),
                                  with_grads=target.has_gradients)
    res = {"y": y}
    for s in st:
        res[f"{s}_T"] = prev[s]
    if target.has_gradients:
        for k, v in g_full.items():
            if k == "x":
                gx = v.copy()
                gx[:T - 1] += g_pre["x"]
                res["d x"] = gx
                continue
            total = v + g_pre[k]
            if k in problem.bias_ih[0] and _nb(problem, target) == 2:
                res[f"d {k}(ih)"] = res[f"d {k}(hh)"] = total
            else:
                res[f"d {k}"] = total
    yield "final states are those of step T-1 (one step early)", res, None


def _mutated(how, label):
    def cands(problem, target, got):
        if not target.has_gradients:
            return
        if how.startswith("no_carry:") and how.split(":")[1] not in problem.states:
            return
        mod = _mutant(problem.module, how)
        if mod is None:
            return
        yield label, _ref(problem, target, module=mod), None
    return cands


def _averaged(problem, target, got):
    """Gradients divided by the batch size, the number of steps or both (a loss averaged instead of summed): the
    parameter gradients only; every gradient (x and the initial states too); the output cotangent dy only (a loss
    averaged over the outputs y_t, not over the final states' terms)."""
    if not target.has_gradients:
        return
    T, B = problem.case.shape[:2]
    base = _ref(problem, target)
    seen = {1}  # n = 1 changes nothing; T * B = T when B = 1: said once (the label has no value: one line per bug)
    for label, n, over in (("batch size B", B, "the batch"), ("sequence length T", T, "time"),
                           ("product T * B", T * B, "time and batch")):
        if n in seen:
            continue
        seen.add(n)
        res = dict(base)
        for k in _param_grad_keys(res):
            res[k] = res[k] / n
        yield f"parameter gradients divided by the {label}", res, None
        every = {k: (v / n if k.startswith("d ") else v) for k, v in base.items()}
        yield (f"every gradient (parameters, inputs and initial states) divided by the {label} (a loss averaged over "
               f"{over})"), every, None
        yield (f"the output cotangent dy divided by the {label} (a loss averaged over {over}; the final states' "
               "cotangents are not)"), _ref(problem.with_(dy=problem.dy / n), target), None


def _clip_bound(problem, target, got):
    """Every clip of the cell (forward clip, backward clip_mask) at a bound other than the spec's, fitted to the
    target's outputs; a bound above every value it would clip is no clip at all, and said so."""
    if got.get("y") is None:
        return
    want = np.asarray(got["y"], np.float64)
    def model(k):
        found = explain.fitted_module(problem.module, "clip", k)
        return _ref(problem, target, module=found[0], with_grads=False)["y"]
    found = explain.fitted_module(problem.module, "clip", 1.0)
    if found is None or model(1.0).shape != want.shape:
        return
    spec = found[1]
    k = _fit_piecewise(model, want, spec * 2.0 ** np.arange(-5, 4.01, 0.25))
    same = tolerance("diagnosis_fit_same", "float64")
    if k <= 0 or abs(k - spec) <= same * spec:
        return
    if np.array_equal(model(k), model(1e300)):
        k, detail = 1e300, "the clip is not applied (or its bound is above every value it would clip on this case)"
    else:
        detail = f"clip bound {k:.4g} instead of {spec:.4g} (every clip of the cell, forward and backward)"
    yield detail, _ref(problem, target, module=explain.fitted_module(problem.module, "clip", k)[0]), None


def _fit_piecewise(model, target: np.ndarray, grid) -> float:
    """:func:`_fit` for a model with kinks in k (a clip bound): the best of ``grid``, narrowed by golden-section
    search between its neighbours, then Gauss-Newton within its smooth piece."""
    def err(k):
        return float(np.sum((model(k) - target) ** 2))
    errs = [err(k) for k in grid]
    j = int(np.argmin(errs))
    lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]
    g = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        lo, hi = (lo, b) if err(a) < err(b) else (a, hi)
    return _fit(model, target, starts=((lo + hi) / 2,))


def _layer_norm_epsilon(problem, target, got):
    """The epsilon of the normalisations (rsqrt(var + eps)) other than the spec's, fitted to the target's outputs;
    or added outside the square root, 1 / (sqrt(var) + eps) (forward and, consistently, backward)."""
    if got.get("y") is None:
        return
    want = np.asarray(got["y"], np.float64)
    for convention in ("eps", "eps outside"):
        found = explain.fitted_module(problem.module, convention, 0.0)
        if found is None:
            return
        spec = found[1]
        def model(k, convention=convention):
            return _ref(problem, target, module=explain.fitted_module(problem.module, convention, k)[0],
                        with_grads=False)["y"]
        k = _fit(model, want, starts=(0.0, spec, 1e-3))
        if k is None or (convention == "eps"
                         and abs(k - spec) <= tolerance("diagnosis_fit_same_eps", "float64") * spec):
            continue
        mod = explain.fitted_module(problem.module, convention, k)[0]
        detail = (f"layer-norm epsilon {k:.4g} instead of {spec:.4g} (inside the square root: rsqrt(var + eps))"
                  if convention == "eps" else
                  f"layer-norm epsilon {k:.4g} outside the square root: 1 / (sqrt(var) + eps) (the spec: "
                  f"rsqrt(var + {spec:.4g}))")
        yield detail, _ref(problem, target, module=mod), None


def _clipped(problem, target, got):
    """Parameter gradients clipped before they are returned, the bound fitted to the target's numbers:
    per batch (the summed gradients) or per sample (each batch row's gradients, clipped, then summed);
    elementwise, by the global norm of every parameter gradient together, or by each one's own norm."""
    if not target.has_gradients:
        return
    base = _ref(problem, target)
    keys = [k for k in _param_grad_keys(base) if k in got and got[k] is not None]
    if not keys:
        return
    want = np.concatenate([np.asarray(got[k], np.float64).ravel() for k in keys])
    one_row = problem.x.shape[1] == 1
    for scope in ("batch",) if one_row else ("batch", "sample"):
        parts = [base] if scope == "batch" else _per_sample(problem, target)
        per = [[np.asarray(r[k], np.float64) for k in keys] for r in parts]
        for how, label in _CLIP_RULES:
            def model(c, how=how, per=per):
                return np.concatenate([g.ravel() for g in _clip_sum(per, how, c)])
            c = _fit(model, want, starts=_clip_starts(per, how))
            if c is None or c <= 0 or np.allclose(model(c), model(1e300)):
                continue
            res = dict(base)
            res.update(zip(keys, _clip_sum(per, how, c), strict=False))
            where = _SCOPE["one"] if one_row else _SCOPE[scope]
            yield f"parameter gradients clipped {label} to {c:.4g}, {where}", res, None


_CLIP_RULES = (("value", "elementwise"), ("global", "by their global norm"), ("each", "each by its own norm"))
_SCOPE = {"batch": "after summing over the batch", "sample": "per sample (each batch row's, before they are summed)",
          "one": "per sample or after summing over the batch (one batch row: the two agree)"}


def _clip_sum(per: list, how: str, c: float) -> list:
    """Each part's gradients clipped (``how``: value, global norm, each one's norm) at bound ``c``, summed."""
    out = None
    for gs in per:
        if how == "value":
            gs = [np.clip(g, -c, c) for g in gs]
        elif how == "global":
            n = np.sqrt(sum(float(np.sum(g * g)) for g in gs))
            gs = [g * min(1.0, c / n) if n > 0 else g for g in gs]
        else:
            gs = [g * min(1.0, c / n) if (n := float(np.sqrt(np.sum(g * g)))) > 0 else g for g in gs]
        out = gs if out is None else [a + b for a, b in zip(out, gs, strict=False)]
    return out


def _clip_starts(per: list, how: str) -> tuple:
    """Starting bounds for the fit: the sizes the clip acts on (a bound above all of them changes nothing)."""
    if how == "value":
        sizes = [float(np.max(np.abs(g))) for gs in per for g in gs]
    elif how == "global":
        sizes = [float(np.sqrt(sum(float(np.sum(g * g)) for g in gs))) for gs in per]
    else:
        sizes = [float(np.sqrt(np.sum(g * g))) for gs in per for g in gs]
    sizes = sorted({s for s in sizes if s > 0})
    return tuple(a * f for a in sizes for f in (0.5, 0.99)) or (1.0,)


def _per_sample(problem, target) -> list:
    """The reference's quantities for each batch row alone (a problem with B = 1 per row)."""
    out = []
    for b in range(problem.case.shape[1]):
        def row(d, b=b):
            return [{k: v[b:b + 1] for k, v in slot.items()} for slot in d]
        one = problem.with_(x=problem.x[:, b:b + 1], dy=problem.dy[:, b:b + 1], init=row(problem.init),
                            d_final=row(problem.d_final),
                            lengths=None if problem.lengths is None else problem.lengths[b:b + 1])
        out.append(_ref(one, target))
    return out


_SPEC_MUTANTS: dict = {}


def _spec_mutant(cell: str, old: str, new: str):
    """The cell's spec with ``old`` replaced by ``new`` in its equations, derived and generated in
    memory: a reference *with the bug*, forward and backward, from the same machinery (cached)."""
    key = (cell, old, new)
    if key in _SPEC_MUTANTS:
        return _SPEC_MUTANTS[key]
    import tempfile
    from pathlib import Path

    from lstm_spec.derivations import derive
    from lstm_spec.derivations.codegen import generate_module
    from lstm_spec.spec import SPEC_DIR, load

    mod = None
    path = SPEC_DIR / f"{cell}.toml"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if old in text:
        with tempfile.TemporaryDirectory() as d:
            bad = Path(d) / f"{cell}_mutant.toml"
            bad.write_text(text.replace(old, new), encoding="utf-8")
            mod = load_module(generate_module(derive(load(bad))), f"lstm_spec_spec_mutant_{cell}")
    _SPEC_MUTANTS[key] = mod
    return mod


def _peephole_old_cell(problem, target, got):
    if "p_o" not in problem.params[0]:
        return
    mod = _spec_mutant(problem.case.cell, "p_o ⊙ c +", "p_o ⊙ c[t-1] +")
    if mod is not None:
        yield "the output gate's peephole reads c_{t-1} instead of c_t", _ref(problem, target, module=mod), None


def _precision(problem, target, got):
    if problem.case.dtype != "float64":
        return
    tol = TOLERANCES[("conform", "float32")].value
    yield "computed internally in float32 (inputs and outputs float64)", _ref(problem, target, dtype="float32"), tol


SIGNATURES = [
    BugSignature("gate_order", "gate blocks permuted",
              "the gate blocks of the weights and biases are read in a different order than declared "
              "(tensorflow #29308, coremltools #93, keras #8720)", _permuted),
    BugSignature("forget_bias_runtime", "forget bias added at run time",
              "a constant forget bias (TF1 forget_bias; its value fitted to the target's outputs) added to the "
              "forget gate's pre-activation at every step on top of the stored bias", _forget_bias),
    BugSignature("bias_twice", "bias counted twice",
              "the bias is added twice (a single bias mapped to both sides of a two-bias layout)", _bias_twice),
    BugSignature("bias_dropped", "a bias dropped",
              "one of two biases ignored, or the bias not added at all (keras-onnx #103, flax #3746)", _bias_dropped),
    BugSignature("reversed_time", "reversed time order",
              "outputs returned reversed, or the sequence read in the wrong direction (onnxruntime #4187, "
              "onnx #2881, tensorflow #40345)", _reversed),
    BugSignature("output_peephole_old_cell", "output peephole on c_{t-1}",
              "the output gate's peephole looks at the previous cell state instead of the new one (Lasagne #448 "
              "and the peephole conventions of ONNX, TF1 and Greff et al.)", _peephole_old_cell),
    BugSignature("final_state_off_by_one", "final state off by one step",
              "the final states returned are those after step T-1, not T", _final_off_by_one),
    BugSignature("no_recurrent_gradient", "missing recurrent gradient",
              "the adjoint of h is not passed back to the previous step (truncated to one step)",
              _mutated("no_carry:h", "d h_{t-1} not propagated (no gradient through the recurrent weights)")),
    BugSignature("no_cell_carry_gradient", "missing cell-carry gradient",
              "the adjoint of c is not passed back through c_t = f * c_{t-1} + ...",
              _mutated("no_carry:c", "d c_{t-1} not propagated (no gradient along the cell state)")),
    BugSignature("t0_terms_missing", "t = 0 terms missing",
              "the first step's terms are left out of the backward pass (invisible with zero initial states)",
              lambda p, t, g: itertools.chain(
                  _mutated("t0_recurrent_term",
                           "recurrent weight gradients lack the t = 0 term (h0 taken as 0)")(p, t, g),
                  _mutated("loop_skips_t0", "the backward loop stops before t = 0")(p, t, g))),
    BugSignature("grad_averaged", "gradients averaged instead of summed",
              "parameter gradients, or every gradient, or the output cotangent divided by the batch size or the "
              "number of steps (a loss averaged over the batch or over time)", _averaged),
    BugSignature("clip_bound", "clip convention",
              "the cell's clip (ONNX clip, TF cell_clip) at a bound other than the spec's, fitted to the target's "
              "outputs, forward and backward", _clip_bound, fitted=True),
    BugSignature("layer_norm_epsilon", "another layer-norm epsilon",
              "the normalisation's epsilon other than the spec's (fitted to the target's outputs), or added outside "
              "the square root", _layer_norm_epsilon, fitted=True),
    BugSignature("grad_clipped", "silent gradient clipping",
              "parameter gradients clipped (elementwise or by global norm) before being returned", _clipped,
              fitted=True),
    BugSignature("lengths_ignored", "sequence lengths ignored",
              "the final states are those after step T, not after each sequence's last valid step (outputs at "
              "padded steps zeroed, the state run through them)", _lengths_ignored),
    BugSignature("reduced_precision", "reduced internal precision",
              "a float64 interface computing in float32 inside", _precision),
]


@dataclass
class Diagnosis:
    key: str
    title: str
    detail: str


SHOWN_GROUPS = 3  # full explanations reported per case (each a group of indistinguishable candidates)


def _catalogue(problem: Problem, target, got: dict) -> list:
    """(source, prediction, tolerance or None) of every catalogue entry that applies."""
    out = []
    for sig in SIGNATURES:
        try:
            for detail, pred, tol in sig.candidates(problem, target, got):
                out.append(((sig, detail), pred, tol))
        except Exception:  # noqa: BLE001, S112 - a signature that cannot apply is just not a match
            continue
    return out


def diagnose(problem: Problem, target, got: dict, failing: list[str], tolerance: float) -> list[Diagnosis]:
    """What reproduces the target's results on this problem: catalogue entries and single-point (or, for
    compound bugs, paired) mutations of the generated reference (:mod:`.explain`), matched quantity by
    quantity. Quantities the target did not return are not provided and never used. Full explanations
    (every failing quantity reproduced, no passing one broken), grouped when indistinguishable here; else
    the best partial one, said to be partial."""
    want = _ref(problem, target)
    provided = [q for q in want if got.get(q) is not None]  # a quantity not returned is never evidence
    try:
        within = {r.quantity: r.within for r in compare(problem, got, want, tolerance, provided)}
    except Exception:  # noqa: BLE001 - results that cannot be compared cannot be explained
        return []
    failing = [q for q in provided if q in failing and not within[q]]  # the numbers, not e.g. a wrong dtype
    passing = [q for q in provided if within[q]]
    if not failing:
        return []
    extra = _catalogue(problem, target, got)
    if problem.case.single:
        groups = explain.explain(problem, got, failing, passing, tolerance, _nb(problem, target),
                                 target.has_gradients, extra)
    else:  # mutations run on one layer and one direction: the catalogue alone
        groups = explain.explain_catalogue(problem, got, failing, passing, tolerance, extra)
    return _diagnoses(groups, failing, problem)


def _fitted(m) -> bool:
    return isinstance(m.source, tuple) and m.source[0].fitted


def _diagnoses(groups, failing, problem) -> list[Diagnosis]:
    if not groups:
        return []
    full = groups[0][0].full(failing)
    if full:
        exact = [[m for m in g if not _fitted(m)] for g in groups]  # a fitted value only where nothing exact is
        exact = [g for g in exact if g]
        return [_one(g, problem) for g in (exact or groups)[:SHOWN_GROUPS]]
    d = _one(groups[0], problem)
    best = groups[0][0]
    rest = [q for q in failing if q not in best.explained]
    broken = f"; it breaks {', '.join(best.broken)}" if best.broken else ""
    return [Diagnosis(d.key, f"partly explained ({len(best.explained)} of {len(failing)} failing quantities) by "
                      f"{d.title}", f"{d.detail}; not explained: {', '.join(rest)}{broken}")]


def _one(group, problem) -> Diagnosis:
    head = group[0].source
    if isinstance(head, tuple):
        sig, detail = head
        d = Diagnosis(sig.key, sig.title, detail)
    else:
        d = Diagnosis("mutation", f"{head.where} statement, {head.kind}",
                      head.text(explain.source(problem.module).path))
    if len(group) > 1:
        others = [m.source for m in group[1:]]
        named = [f"{o[0].title}: {o[1]}" if isinstance(o, tuple) else f"{o.kind} in {o.statement}" for o in others]
        more = f" and {len(named) - 2} more" if len(named) > 2 else ""
        d.detail += f" (indistinguishable on this case: {'; '.join(named[:2])}{more})"
    return d
