"""Random instances for the numeric checks: non-zero initial states, random non-uniform weights and
biases, random cotangents on every output, and shapes that include T = 1, B = 1 and D != H."""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass

import numpy as np

from lstm_spec.reference.masks import dropout_mask

# The case shapes, (T, B, D, H), written here once. SHAPES, for the numeric checks and conform: T = 1 and B = 1
# together, B = 1, D != H (both ways), D = H, a longer sequence.
SHAPES = [(1, 1, 3, 2), (2, 1, 2, 3), (4, 3, 5, 3), (6, 2, 4, 4)]
# conform adds a long sequence: an error that grows with T (float32 accumulation) and a cell clip reached by
# accumulation show there. The numeric checks leave it out: complex step and finite differences perturb every
# entry of every parameter, at a cost that grows with T, and their errors do not grow with T.
LONG_SHAPE = (16, 2, 3, 4)
CONFORM_SHAPES = [*SHAPES, LONG_SHAPE]
LENGTHS_SHAPE = (5, 3, 4, 3)  # conform's reverse and sequence-lengths cases (B = 3: lengths such as (5, 3, 1))
LAYERS_SHAPE = (4, 2, 3, 3)  # conform's bidirectional and two-layer cases


@dataclass
class Instance:
    params: dict
    seq: dict  # input name -> (T, B, ...)
    init: dict  # state name -> (B, ...)
    dy: np.ndarray
    d_final: dict
    dims: dict

    def astype(self, dtype):
        def conv(d):
            return {k: v.astype(dtype) for k, v in d.items()}
        return Instance(conv(self.params), conv(self.seq), conv(self.init), self.dy.astype(dtype),
                        conv(self.d_final), self.dims)

    def arguments(self):
        """Every differentiable argument as (gradient key, dict holding it, key in that dict)."""
        out = [(k, self.params, k) for k in self.params]
        out += [(k, self.seq, k) for k in self.seq]
        out += [(f"{s}0", self.init, s) for s in self.init]
        return out


def dims_for(module, shape) -> dict:
    """Bind the cell's dimension names for a (T, B, D, H) shape: inputs' last dim is D, every other
    dimension is H (a cell with more dimensions gets H + 1, H + 2, ...)."""
    T, B, D, H = shape
    sig = module.SIGNATURE
    dims = {"T": T, "B": B, "1": 1}
    for ds in sig.inputs.values():
        dims.setdefault(ds[-1], D)
    extra = 0
    for ds in list(sig.states.values()) + list(sig.parameters.values()):
        for d in ds:
            if d not in dims:
                dims[d] = H + extra
                extra += 1
    return dims


KINK_MARGIN = 1e-4


def random_instance(module, shape, seed: int, scale: float = 0.5) -> Instance:
    """A random instance; for a cell with kinks (clips) one whose clipped values all stay at least
    KINK_MARGIN away from the kinks, so finite differences never straddle one."""
    for attempt in range(100):
        inst = _draw(module, shape, seed + 7919 * attempt, scale)
        if kink_distance(module, inst) >= KINK_MARGIN:
            return inst
    raise RuntimeError(f"no instance away from the kinks after 100 draws (shape {shape}, seed {seed})")


def kinks(module, constants=None) -> list:
    """The module's KINKS, each bound a number: a constant's name is resolved to its value (the module's
    default, or the one in ``constants``)."""
    values = {**getattr(module.SIGNATURE, "constants", {}), **(constants or {})}
    return [(key, float(values[b] if isinstance(b, str) else b)) for key, b in getattr(module, "KINKS", [])]


def with_constants(module, constants):
    """``module`` run at other values of its spec's constants: a module-like object whose forward gets
    ``constants`` (validated here: an unknown name is the runtime's InputError) unless its caller passes its
    own, whose SIGNATURE.constants are the values in use and whose KINKS are resolved to them. None or {}:
    the module itself. Every check takes it where it takes a generated module."""
    if not constants:
        return module
    from lstm_spec.reference._runtime import prepare_constants

    values = prepare_constants(module.SIGNATURE, constants)
    bound = types.SimpleNamespace(**{k: getattr(module, k) for k in ("MASKS", "STOP_GRADIENT") if hasattr(module, k)})
    bound.__name__ = f"{module.__name__} with {format_constants(values)}"
    bound.SIGNATURE = dataclasses.replace(module.SIGNATURE, constants=values)
    if hasattr(module, "KINKS"):
        bound.KINKS = kinks(module, values)

    def forward(*args, constants=None, **kwargs):
        return module.forward(*args, constants={**values, **(constants or {})}, **kwargs)

    bound.forward, bound.backward = forward, module.backward
    return bound


def format_constants(values: dict) -> str:
    """'forget_bias = 1.0, cell_clip = 3.0' (how reports and rows name the constants a run used)."""
    return ", ".join(f"{k} = {v:g}" if isinstance(v, (int, float)) else f"{k} = {v}" for k, v in values.items())


def alternative_constants(module) -> dict:
    """Non-default values of a module's constants for the checks: a clip bound halved (the instances then reach
    the clip more often, not less), 1 for a constant whose default is 0, else twice the default. {} for a cell
    without constants."""
    sig = module.SIGNATURE
    positive = set(getattr(sig, "positive_constants", ()))
    values = getattr(sig, "constants", {})
    return {k: (v / 2 if k in positive else 1.0 if v == 0 else 2.0 * v) for k, v in values.items()}


def kink_distance(module, inst: Instance) -> float:
    """Smallest | |v| - bound | over the cached values the module lists in KINKS (inf if none)."""
    kinks_ = kinks(module)
    if not kinks_:
        return float("inf")
    _, _, cache = module.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()})
    dist = float("inf")
    for key, bound in kinks_:
        values = np.abs(np.asarray(cache[key]))
        if values.size:
            dist = min(dist, float(np.min(np.abs(values - bound))))
    return dist


def _draw(module, shape, seed: int, scale: float) -> Instance:
    rng = np.random.default_rng(seed)
    sig = module.SIGNATURE
    dims = dims_for(module, shape)
    T, B = dims["T"], dims["B"]
    params = {n: scale * rng.standard_normal(tuple(dims[d] for d in ds)) for n, ds in sig.parameters.items()}
    seq = {n: rng.standard_normal((T, B) + tuple(dims[d] for d in ds)) for n, ds in sig.inputs.items()}
    for n, m in getattr(module, "MASKS", {}).items():  # dropout / zoneout masks: 0 or 1/(1-p) (or 1)
        seq[n] = dropout_mask(rng, T, B, dims[sig.inputs[n][-1]], m["p"], m["values"], m["time"])
    init = {n: 0.5 * rng.standard_normal((B,) + tuple(dims[d] for d in ds)) for n, ds in sig.states.items()}
    dy = rng.standard_normal((T, B) + tuple(dims[d] for d in sig.output_dims))
    d_final = {n: rng.standard_normal((B,) + tuple(dims[d] for d in ds)) for n, ds in sig.states.items()}
    return Instance(params, seq, init, dy, d_final, dims)


def run(module, inst: Instance):
    """Forward and backward of a generated module on an instance: (y, final, grads)."""
    y, final, cache = module.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()})
    grads = module.backward(cache, inst.dy, inst.d_final)
    return y, final, grads


def loss(module, inst: Instance):
    """The scalar whose gradient backward() computes: <dy, y> + sum over states <d_final, s_T>."""
    y, final, _ = module.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()})
    total = (inst.dy * y).sum()
    for s, v in inst.d_final.items():
        total = total + (v * final[s]).sum()
    return total
