"""Conformance cases and what the reference says about them.

A :class:`Case` names what to run (cell, shape, dtype, seed, direction, sequence lengths, layers); a
:class:`Problem` holds the concrete arrays of a case in lstm-spec's canonical layout (per-gate
parameters named as in the spec, time-major sequences); :func:`expected` runs the generated reference
on a problem in float64 and returns every quantity a target must reproduce.

Quantities (the keys of every result dict):

- ``y`` (T, B, H), and the final states ``h_T``, ``c_T`` (B, H) (one per state of the cell);
- gradients ``d W_f``, ``d U_f``, ``d b_f``, ... of every parameter (summed over time and batch),
  ``d x`` (T, B, D) and ``d h0``, ``d c0`` (B, H), of L = <dy, y> + sum_s <d_final[s], s_T>;
- for a target with two biases (PyTorch, cuDNN, ONNX), ``d b_f(ih)`` and ``d b_f(hh)``: each must equal
  the gradient of our single ``b_f``;
- with several directions or layers, each per-slot quantity gets a suffix ``[l0 fwd]``, ``[l0 bwd]``,
  ``[l1 fwd]``: ``y`` is the last layer's output, directions concatenated on the last axis as in
  PyTorch and ONNX, ``d x`` the gradient of the network input.

Conventions fixed here (adapters translate their framework's conventions to these):

- a reverse direction reads each sequence backwards from its last *valid* step and its outputs are
  returned in the original time order (ONNX, PyTorch);
- with sequence lengths, outputs at padded steps are not compared (frameworks differ: zeros, carried
  forward, unspecified), their cotangents are zero, and the final state is the state after the last
  valid step.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np

from lstm_spec.checks.cases import KINK_MARGIN, dims_for, kinks
from lstm_spec.layouts.frameworks import gate_names

DIRECTIONS = ("forward", "reverse", "bidirectional")


@dataclass(frozen=True)
class Case:
    cell: str
    shape: tuple  # (T, B, D, H)
    dtype: str
    seed: int
    direction: str = "forward"
    lengths: tuple | None = None
    layers: int = 1
    variant: str = ""  # which API of the target runs it (e.g. "nn.LSTMCell"); "" for the target's main one
    zero_states: bool = False  # the initial states are zero (a target that takes none: Target.adapt)
    zero_d_final: bool = False  # the cotangents of the final states are zero (a backward that takes none)
    last_output_loss: bool = False  # dy is zero except at each sequence's last valid step (a loss on it only)
    constants: tuple = ()  # ((name, value), ...) of the cell's [constants] the target declares: the reference uses them

    @property
    def ndir(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    @property
    def slots(self) -> list[str]:
        """One label per (layer, direction): '' for a single one."""
        if self.ndir == 1 and self.layers == 1:
            return [""]
        dirs = ["fwd", "bwd"] if self.ndir == 2 else ["fwd" if self.direction == "forward" else "bwd"]
        return [f"l{layer} {d}" for layer in range(self.layers) for d in dirs]

    @property
    def single(self) -> bool:
        return self.ndir == 1 and self.layers == 1

    @property
    def name(self) -> str:
        T, B, D, H = self.shape
        s = f"{self.cell} T={T} B={B} D={D} H={H} {self.dtype} {self.direction}"
        if self.lengths is not None:
            s += f" lengths={list(self.lengths)}"
        if self.layers > 1:
            s += f" layers={self.layers}"
        s += f" seed={self.seed}"
        return f"{self.variant}: {s}" if self.variant else s


def slot_key(base: str, slot: str) -> str:
    return f"{base} [{slot}]" if slot else base


def reference_module(cell: str):
    return importlib.import_module(f"lstm_spec.reference.{cell}")


@dataclass
class Problem:
    case: Case
    module: object
    params: list  # per slot: {name: array} in the case dtype
    x: np.ndarray  # (T, B, D) in the case dtype
    init: list  # per slot: {state: (B, ...)}
    dy: np.ndarray  # (T, B, ndir * H): cotangent of the last layer's output
    d_final: list  # per slot: {state: (B, ...)}
    bias_ih: list  # per slot: {b_name: input-side part}; the recurrent side is b - part
    dims: dict
    lengths: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def dtype(self):
        return np.dtype(self.case.dtype)

    @property
    def states(self) -> list[str]:
        return list(self.module.SIGNATURE.states)

    @property
    def output_size(self) -> int:
        return self.dims[self.module.SIGNATURE.output_dims[-1]]

    def bias_hh(self, slot: int) -> dict:
        return {k: (self.params[slot][k] - v).astype(self.dtype) for k, v in self.bias_ih[slot].items()}

    def with_(self, **kw) -> "Problem":
        return replace(self, **kw)


def bias_names(module) -> list[str]:
    """The biases a two-bias system splits into an input-side and a recurrent-side part (b = b_ih + b_hh).
    Only gate biases (b_g of a gate g: W_g and U_g exist) are such a sum: a layer norm's b_n or an output
    layer's bias is not. A reset-after GRU's b_n (input side) and b_hn (inside r * (U_n h + b_hn)) are not
    such a sum either."""
    params = module.SIGNATURE.parameters
    names = [f"b_{g}" for g in gate_names(params) if f"b_{g}" in params]
    if "b_hn" in params:
        names = [n for n in names if n not in ("b_n", "b_hn")]
    return names


def make_problem(case: Case, module=None) -> Problem:
    """Random non-uniform weights and biases, non-zero initial states (zero with ``case.zero_states``),
    random cotangents on every output (zero at padded steps; on the final states zero with
    ``case.zero_d_final``; on y zero before each sequence's last step with ``case.last_output_loss``), all
    rounded to the case's dtype."""
    module = module or reference_module(case.cell)
    sig = module.SIGNATURE
    T, B, D, H = case.shape
    rng = np.random.default_rng(case.seed)
    dt = np.dtype(case.dtype)
    dims = dims_for(module, case.shape)
    out_dim = dims[sig.output_dims[-1]]
    params, init, d_final, bias_ih = [], [], [], []
    for k, _slot in enumerate(case.slots):
        layer = k // case.ndir
        ldims = dict(dims)
        if layer > 0:  # deeper layers read the previous layer's (concatenated) output
            ldims[sig.inputs[next(iter(sig.inputs))][-1]] = case.ndir * out_dim
        p = {n: (0.5 * rng.standard_normal(tuple(ldims[d] for d in ds))).astype(dt) for n, ds in sig.parameters.items()}
        params.append(p)
        init.append({n: (0.5 * rng.standard_normal((B,) + tuple(dims[d] for d in ds))).astype(dt)
                     for n, ds in sig.states.items()})
        d_final.append({n: rng.standard_normal((B,) + tuple(dims[d] for d in ds)).astype(dt)
                        for n, ds in sig.states.items()})
        bias_ih.append({n: (0.5 * rng.standard_normal(p[n].shape)).astype(dt) for n in bias_names(module)})
    if case.zero_states:  # drawn all the same: every other array is the one of the case with states
        init = [{n: np.zeros_like(v) for n, v in s.items()} for s in init]
    if case.zero_d_final:
        d_final = [{n: np.zeros_like(v) for n, v in s.items()} for s in d_final]
    x = rng.standard_normal((T, B, D)).astype(dt)
    dy = rng.standard_normal((T, B, case.ndir * out_dim)).astype(dt)
    lengths = None
    if case.lengths is not None:
        lengths = np.asarray(case.lengths, dtype=np.int64)
        if lengths.shape != (B,) or lengths.min() < 0 or lengths.max() > T:
            raise ValueError(f"case {case.name}: lengths must be B = {B} integers in 0..{T}")
        dy = dy * (np.arange(T)[:, None] < lengths[None, :])[:, :, None].astype(dt)
    if case.last_output_loss:  # the last valid step of each sequence (in the original time order)
        last = (lengths if lengths is not None else np.full(B, T)) - 1
        dy = dy * (np.arange(T)[:, None] == last[None, :])[:, :, None].astype(dt)
    return in_regimes(Problem(case, module, params, x, init, dy, d_final, bias_ih, dims, lengths))


REGIME_GAINS = (1.0, 1.5, 2.0, 3.0, 4.0)
PIECES = ("below -bound", "inside", "above bound")


def in_regimes(problem: Problem) -> Problem:
    """For a cell with piecewise functions (its module's KINKS: clips), the problem scaled (:func:`_scaled`)
    by the first of REGIME_GAINS (times the largest clip bound in use, when above 1: a declared
    cell_clip = 3) at which every clip meets each of its PIECES somewhere in the case and no value lies
    within KINK_MARGIN of a kink (a float32 target's rounding must not cross one): first the cell states
    and projections only, then every parameter too (a clip of the gates' pre-activations); when no gain
    does (a case with a handful of values), the first that comes closest. At gain 1 the draw alone rarely
    exceeds a cell clip. A cell without kinks: the problem as drawn."""
    module = problem.module
    if not getattr(module, "KINKS", None):
        return problem
    reach = max([1.0] + [b for _, b in kinks(module, dict(getattr(problem.case, "constants", ())))])
    best = None
    for gates in (False, True):
        for gain in REGIME_GAINS:
            scaled = _scaled(problem, gain * reach, gates)
            met, nearest = regimes_met(scaled)
            score = (min(len(m) for m in met.values()), nearest >= KINK_MARGIN)
            if score == (len(PIECES), True):
                return scaled
            if best is None or score > best[0]:
                best = (score, scaled)
    return best[1]


def _scaled(problem: Problem, gain: float, gates: bool = False) -> Problem:
    """The initial states other than the output's (a cell state) and the parameters outside the gates (a
    projection) multiplied by ``gain``; with ``gates``, every parameter too. Without, the gates' own
    parameters keep their draw, so no gate saturates more than drawn: a float32 target's 1 - tanh(z)**2 and
    sigma(z)(1 - sigma(z)) stay as well conditioned."""
    sig = problem.module.SIGNATURE
    names = set(gate_names(sig.parameters))
    scaled = {n for n in sig.parameters if gates or n.rsplit("_", 1)[-1] not in names} | set(sig.states) - {sig.output}

    def scale(d):
        return {k: (np.asarray(v, np.float64) * gain).astype(problem.dtype) if k in scaled else v
                for k, v in d.items()}

    return problem if gain == 1 else problem.with_(params=[scale(p) for p in problem.params],
                                                    init=[scale(s) for s in problem.init])


def regimes_met(problem: Problem) -> tuple[dict, float]:
    """({KINKS key: the PIECES its values meet in the case}, the smallest distance of a value to a kink),
    from the float64 reference's forward over every layer, direction and valid step of the case."""
    module = problem.module
    met = {key: set() for key, _ in module.KINKS}
    nearest = [np.inf]

    def forward(*args, **kwargs):
        out = module.forward(*args, **kwargs)
        for key, b in kinks(module, kwargs.get("constants")):
            v = np.asarray(out[2][key])
            met[key] |= {p for p, hit in zip(PIECES, (v < -b, np.abs(v) < b, v > b), strict=True) if hit.any()}
            nearest[0] = min(nearest[0], float(np.min(np.abs(np.abs(v) - b), initial=np.inf)))
        return out

    expected(problem, module=SimpleNamespace(SIGNATURE=module.SIGNATURE, forward=forward), with_grads=False)
    return met, nearest[0]


def valid_mask(problem: Problem) -> np.ndarray | None:
    """(T, B) booleans, True at valid steps; None without lengths."""
    if problem.lengths is None:
        return None
    T = problem.case.shape[0]
    return np.arange(T)[:, None] < problem.lengths[None, :]


# ------------------------------------------------------------------------------------------ the reference
def run_sequence(module, params, x, init, dy, d_final, lengths=None, reverse=False, with_grads=True,
                 constants=None):
    """The reference on one (layer, direction): y (T, B, H) with zeros at padded steps, the final
    states, and the gradients (None when with_grads is False). Everything in the arrays' dtype.
    ``constants``: values of the cell's [constants] (None or {}: the spec's)."""
    T, B = x.shape[:2]
    st = list(module.SIGNATURE.states)
    kw = {"constants": dict(constants)} if constants else {}
    if lengths is None and not reverse:
        y, final, cache = module.forward(params, x, **{f"{s}0": init[s] for s in st}, **kw)
        grads = module.backward(cache, dy, d_final) if with_grads else None
        return y, final, grads
    lengths = np.full(B, T) if lengths is None else lengths
    y = None
    final = {s: np.empty_like(init[s]) for s in st}
    grads = None
    for b in range(B):
        L = int(lengths[b])
        xb, dyb = x[:L, b:b + 1], dy[:L, b:b + 1]
        if reverse:
            xb, dyb = xb[::-1], dyb[::-1]
        yb, fb, cache = module.forward(params, np.ascontiguousarray(xb), **{f"{s}0": init[s][b:b + 1] for s in st},
                                       **kw)
        if y is None:
            y = np.zeros((T, B) + yb.shape[2:], dtype=x.dtype)
        y[:L, b:b + 1] = yb[::-1] if reverse else yb
        for s in st:
            final[s][b] = fb[s][0]
        if with_grads:
            gb = module.backward(cache, np.ascontiguousarray(dyb), {s: d_final[s][b:b + 1] for s in st})
            if grads is None:
                grads = {k: np.zeros_like(v) for k, v in params.items()}
                grads["x"] = np.zeros_like(x)
                for s in st:
                    grads[f"{s}0"] = np.zeros_like(init[s])
            for k in params:
                grads[k] += gb[k]
            gx = gb["x"][::-1] if reverse else gb["x"]
            grads["x"][:L, b:b + 1] = gx
            for s in st:
                grads[f"{s}0"][b] = gb[f"{s}0"][0]
    return y, final, grads


def expected(problem: Problem, module=None, dtype="float64", biases: int = 1, with_grads: bool = True,
             direction: str | None = None) -> dict:
    """Every quantity the reference gives for ``problem`` (see the module docstring), computed in
    ``dtype`` from the problem's values. ``module`` replaces the reference (diagnosis runs mutated
    copies); ``direction`` overrides the case's direction for a single-slot case."""
    module = module or problem.module
    case = problem.case
    dt = np.dtype(dtype)
    def conv(d):
        return {k: np.asarray(v, dtype=dt) for k, v in d.items()}

    st = problem.states
    ndir = case.ndir
    direction = direction or case.direction
    def reverse_of(d):
        return direction == "reverse" or (direction == "bidirectional" and d == 1)

    H = problem.output_size
    inp = problem.x.astype(dt)
    layer_inputs, runs = [], []
    for layer in range(case.layers):
        outs = []
        layer_inputs.append(inp)
        for d in range(ndir):
            k = layer * ndir + d
            y, final, _ = run_sequence(module, conv(problem.params[k]), inp, conv(problem.init[k]),
                                       np.zeros(inp.shape[:2] + (H,), dt), conv(problem.d_final[k]),
                                       problem.lengths, reverse_of(d), with_grads=False, constants=case.constants)
            outs.append(y)
            runs.append(final)
        inp = np.concatenate(outs, axis=-1) if ndir > 1 else outs[0]
    res = {"y": inp}
    for k, slot in enumerate(case.slots):
        for s in st:
            res[slot_key(f"{s}_T", slot)] = runs[k][s]
    if not with_grads:
        return res
    d_out = problem.dy.astype(dt)
    for layer in reversed(range(case.layers)):
        d_in = np.zeros_like(layer_inputs[layer])
        for d in range(ndir):
            k = layer * ndir + d
            slot = case.slots[k]
            _, _, g = run_sequence(module, conv(problem.params[k]), layer_inputs[layer], conv(problem.init[k]),
                                   np.ascontiguousarray(d_out[..., d * H:(d + 1) * H]), conv(problem.d_final[k]),
                                   problem.lengths, reverse_of(d), constants=case.constants)
            for name in problem.params[k]:
                if name in problem.bias_ih[k] and biases == 2:
                    res[slot_key(f"d {name}(ih)", slot)] = g[name]
                    res[slot_key(f"d {name}(hh)", slot)] = g[name]
                else:
                    res[slot_key(f"d {name}", slot)] = g[name]
            for s in st:
                res[slot_key(f"d {s}0", slot)] = g[f"{s}0"]
            d_in = d_in + g["x"]
        d_out = d_in
    res["d x"] = d_out
    return res
