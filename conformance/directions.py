"""Layers and directions for a protocol target (conformance/PROTOCOL.md, section 11): the declarations
``bidirectional`` and ``layers``, checked when the target loads, and the conversions between a case of
several (layer, direction) slots and the arrays the target takes and returns.

Slots are numbered as PyTorch numbers its ``h_n``: ``layer * directions + direction`` (direction 0 reads
forward, 1 backward), so a 2-layer bidirectional network's parameters are [l0 fwd, l0 bwd, l1 fwd, l1 bwd].
Everything is converted to the conventions of conformance/problem.py (y (T, B, 2H), directions side by
side, the reverse pass aligned with the input's time), then compared with the reference's stacked and
bidirectional driver (problem.expected: the per-slot run_sequence of reference/bidirectional.py's
conventions), never with this module's own arithmetic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lstm_spec.layouts.frameworks import (
    LayoutError,
    gate_names,
    grads_from_layout,
    seq_from_layout,
    seq_to_layout,
    to_layout,
)
from lstm_spec.reference.bidirectional import ORDERS

from .problem import Case, Problem, slot_key

# the layouts of y (and dy) a bidirectional target may declare, with their time-major shape (batch-major or
# other axes: the direction axis keeps its place, _shape_text)
OUTPUTS = {
    "concat": "(T, B, 2H)",  # PyTorch, Paddle, Keras Bidirectional(merge_mode="concat")
    "stacked": "(2, T, B, H)",  # np.stack([y_fwd, y_bwd])
    "onnx": "(T, 2, B, H)",  # ONNX Y, layout 0 ((B, T, 2, H), layout 1, batch-major)
    "separate": "a pair (y_fwd, y_bwd), each (T, B, H)",  # TF bidirectional_dynamic_rnn
}
PARAMS = ("list", "suffix")  # a list of one layout dict per slot; one dict, names suffixed _l0, _l0_reverse
STATES = ("stacked", "list")  # each state (slots, B, H), like PyTorch's h_n; or a list of (B, H), one per slot
_BIDIRECTIONAL_KEYS = ("output", "order", "params", "states")
_LAYERS_KEYS = ("count", "params", "states")


class DeclarationError(ValueError):
    """A wrong ``bidirectional`` or ``layers`` declaration (the message names the key and the accepted values)."""


@dataclass(frozen=True)
class Stack:
    """What a target declares about layers and directions (the defaults: one layer, one direction)."""

    bidirectional: bool = False
    output: str = "concat"
    order: str = "original"
    layers: int = 1
    params: str = "list"
    states: str = "stacked"

    def supports(self, case: Case) -> str | None:
        if case.layers > self.layers:
            return f"at most {self.layers} layer(s) declared (conformance['layers'])"
        return None

    def describe(self) -> str:
        parts = []
        if self.bidirectional:
            parts.append(f"bidirectional (y {self.output}, the reverse pass in {self.order} order)")
        if self.layers > 1:
            parts.append(f"up to {self.layers} layers")
        if parts:
            parts.append(f"per-slot parameters as a {self.params}, states {self.states}")
        return "".join(f", {p}" for p in parts)


def _choice(where: str, spec: dict, key: str, accepted, default: str) -> str:
    value = spec.get(key, default)
    if value not in accepted:
        raise DeclarationError(f"conformance[{where!r}][{key!r}]: expected one of "
                               f"{', '.join(map(repr, accepted))}, got {value!r}")
    return value


def _table(where: str, value, keys, scalar: str) -> dict:
    """A declaration given as a dict of ``keys`` (or as its scalar form, already turned into a dict)."""
    if not isinstance(value, dict):
        raise DeclarationError(f"conformance[{where!r}]: expected {scalar} or a dict with keys "
                               f"{', '.join(map(repr, keys))}, got {value!r}")
    unknown = sorted(map(str, set(value) - set(keys)))
    if unknown:
        raise DeclarationError(f"conformance[{where!r}]: unknown key(s) {unknown}; accepted: "
                               f"{', '.join(map(repr, keys))}")
    return value


def _bidirectional(meta: dict) -> dict | None:
    value = meta.get("bidirectional", False)
    if isinstance(value, (bool, np.bool_)):
        return {} if value else None
    spec = _table("bidirectional", value, _BIDIRECTIONAL_KEYS, "True, False")
    outputs = ", ".join(f"{k!r} {v}" for k, v in OUTPUTS.items())
    if spec.get("output", "concat") not in OUTPUTS:
        raise DeclarationError(f"conformance['bidirectional']['output']: expected one of {outputs}, got "
                               f"{spec['output']!r}")
    _choice("bidirectional", spec, "order", ORDERS, "original")
    return spec


def _layers(meta: dict) -> dict:
    value = meta.get("layers", 1)
    spec = {"count": value} if not isinstance(value, dict) else _table("layers", value, _LAYERS_KEYS, "an integer")
    count = spec.get("count", 1)
    if isinstance(count, (bool, np.bool_)) or not isinstance(count, (int, np.integer)) or count < 1:
        raise DeclarationError(f"conformance['layers']: expected the most layers your forward takes, an integer >= 1 "
                               f"(or a dict with keys {', '.join(map(repr, _LAYERS_KEYS))}), got {count!r}")
    return spec


def declare(meta: dict) -> Stack:
    """The ``bidirectional`` and ``layers`` keys of a ``conformance`` dict, checked (DeclarationError)."""
    bi, lay = _bidirectional(meta), _layers(meta)
    shared = {}
    for key, accepted, default in (("params", PARAMS, "list"), ("states", STATES, "stacked")):
        given = {w: s[key] for w, s in (("bidirectional", bi or {}), ("layers", lay)) if key in s}
        for where, spec in (("bidirectional", bi or {}), ("layers", lay)):
            if key in spec:
                _choice(where, spec, key, accepted, default)
        if len(set(given.values())) > 1:
            raise DeclarationError(f"conformance['bidirectional'][{key!r}] and conformance['layers'][{key!r}] "
                                   f"differ ({given['bidirectional']!r}, {given['layers']!r}): declare it once")
        shared[key] = next(iter(given.values()), default)
    bidirectional, bi = bi is not None, bi or {}
    if (bidirectional or int(lay.get("count", 1)) > 1) and meta.get("batch", True) is False:
        raise DeclarationError("conformance['bidirectional'] and conformance['layers'] need a batch dimension: "
                               "declare 'batch': True (the harness loops over the batch of single-layer, "
                               "single-direction cases only)")
    if (bidirectional or int(lay.get("count", 1)) > 1) and meta.get("loss", "sequence") == "last":
        raise DeclarationError("conformance['loss'] 'last' is for a single layer and direction: with "
                               "conformance['bidirectional'] or conformance['layers'], declare 'loss': 'sequence'")
    return Stack(bidirectional=bidirectional,
                 output=bi.get("output", "concat"), order=bi.get("order", "original"),
                 layers=int(lay.get("count", 1)), **shared)


# ------------------------------------------------------------------------------------------- conversions
def flip_valid(a: np.ndarray, lengths) -> np.ndarray:
    """(T, B, ...) with each sequence's valid steps in reverse order: processing order <-> input time
    (its own inverse); padded steps are zero."""
    T, B = a.shape[:2]
    lengths = np.full(B, T) if lengths is None else lengths
    out = np.zeros_like(a)
    for b in range(B):
        n = int(lengths[b])
        out[:n, b] = a[:n, b][::-1]
    return out


_SUFFIX = re.compile(r"^(.*)_l(\d+)(_reverse)?$")


def suffix(case: Case, k: int) -> str:
    """PyTorch's parameter suffix of slot ``k``: _l0, _l0_reverse, _l1, ..."""
    return f"_l{k // case.ndir}" + ("_reverse" if k % case.ndir else "")


def pack_params(stack: Stack, case: Case, per_slot: list) -> list | dict:
    """One layout dict per slot -> the declared form (a list, or one dict of suffixed names)."""
    if stack.params == "list":
        return per_slot
    return {f"{n}{suffix(case, k)}": v for k, p in enumerate(per_slot) for n, v in p.items()}


def pack_states(stack: Stack, per_slot: list) -> dict:
    """[{state: (B, H)}, ...] per slot -> {state: (slots, B, H)} or {state: [(B, H), ...]}."""
    names = list(per_slot[0])
    if stack.states == "stacked":
        return {s: np.stack([d[s] for d in per_slot]) for s in names}
    return {s: [d[s] for d in per_slot] for s in names}


def unpack_states(stack: Stack, states: dict, case: Case, what: str) -> list:
    """{state: declared form} -> [{state: (B, H)}] per slot; a wrong form is a ValueError naming ``what``."""
    n = len(case.slots)
    out = [{} for _ in range(n)]
    for s, v in states.items():
        if stack.states == "list":
            if not isinstance(v, (list, tuple)) or len(v) != n:
                raise ValueError(f"{what} {s!r}: expected a list of {n} arrays (B, H), one per slot "
                                 f"(conformance states 'list'), got {type(v).__name__}")
            items = list(v)
        else:
            shape = getattr(v, "shape", None)
            if shape is None or len(shape) < 1 or shape[0] != n:
                raise ValueError(f"{what} {s!r}: expected an array ({n}, B, H), slot = layer * directions + "
                                 f"direction (conformance states 'stacked'), got shape {shape}")
            items = [v[k] for k in range(n)]
        for k in range(n):
            out[k][s] = items[k]
    return out


def _direction_axis(how: str, layout) -> int:
    """Where the declared output layout puts the two directions, in the target's sequence axes: the
    feature axis ('concat'), a new first axis ('stacked'), a new axis right after time ('onnx')."""
    axes = layout.seq_axes
    return {"concat": axes.index("F"), "stacked": 0, "onnx": axes.index("T") + 1}[how]


def _shape_text(how: str, layout) -> str:
    """The declared output layout's shape in the target's axis order, e.g. (T, 2, B, H)."""
    axes = ["2H" if a == "F" and how == "concat" else "H" if a == "F" else a for a in layout.seq_axes]
    if how != "concat":
        axes.insert(_direction_axis(how, layout), "2")
    return f"({', '.join(axes)})"


def split_output(stack: Stack, y, case: Case, layout, lengths) -> list:
    """The target's y in its declared layout -> one time-major (T, B, H) per direction, the reverse pass
    aligned with the input's time. A wrong structure is a ValueError naming the declared layout."""
    if case.ndir == 1:
        return [seq_from_layout(y, layout)]
    how = stack.output
    if how == "separate":
        if not isinstance(y, (list, tuple)) or len(y) != 2:
            raise ValueError(f"y: expected a pair (y_fwd, y_bwd) (conformance['bidirectional']['output'] "
                             f"'separate'), got {type(y).__name__}")
        parts = [np.asarray(a) for a in y]
    else:
        a, axis = np.asarray(y), _direction_axis(how, layout)
        want = len(layout.seq_axes) + (how != "concat")
        if a.ndim != want or a.shape[axis] % 2 or (how != "concat" and a.shape[axis] != 2):
            raise ValueError(f"y: shape {a.shape}, expected {_shape_text(how, layout)} "
                             f"(conformance['bidirectional']['output'] {how!r})")
        parts = np.split(a, 2, axis=axis) if how == "concat" else [np.take(a, d, axis=axis) for d in (0, 1)]
    parts = [seq_from_layout(p, layout) for p in parts]
    if stack.order == "processing":
        parts[1] = flip_valid(parts[1], lengths)
    return parts


def join_output(stack: Stack, parts: list, case: Case, layout, lengths):
    """The inverse of :func:`split_output`: per-direction time-major arrays -> the target's layout (for dy)."""
    if case.ndir == 1:
        return seq_to_layout(parts[0], layout)
    parts = list(parts)
    if stack.order == "processing":
        parts[1] = flip_valid(parts[1], lengths)
    parts = [seq_to_layout(p, layout) for p in parts]
    if stack.output == "separate":
        return tuple(parts)
    axis = _direction_axis(stack.output, layout)
    return np.ascontiguousarray(np.concatenate(parts, axis=axis) if stack.output == "concat"
                                else np.stack(parts, axis=axis))


def param_grads(stack: Stack, case: Case, g: dict, names: list, special: list) -> tuple[list, dict]:
    """A backward's result -> (one layout gradient dict per slot, the rest: ``special``, i.e. x and the
    initial states). A name of neither kind is a ValueError naming the expected ones."""
    n = len(case.slots)
    per_slot = [{} for _ in range(n)]
    if stack.params == "list":
        unknown = [k for k in g if k != "params" and k not in special]
        grads = g.get("params", [{}] * n)
        if unknown or not isinstance(grads, (list, tuple)) or len(grads) != n \
                or not all(isinstance(d, dict) for d in grads):
            raise ValueError(f"expected {{'params': a list of {n} gradient dicts (one per slot, like the params "
                             f"argument), {', '.join(repr(s) for s in special)}}}, got "
                             + (f"unknown name(s) {', '.join(map(repr, unknown))}" if unknown else
                                f"'params' as {type(grads).__name__}"))
        return [dict(d) for d in grads], {k: g[k] for k in special if k in g}
    expected = [f"{p}{suffix(case, k)}" for k in range(n) for p in names] + list(special)
    for key, v in g.items():
        m = _SUFFIX.match(key)
        k = int(m.group(2)) * case.ndir + (1 if m.group(3) else 0) if m else -1
        if key in special:
            continue
        if not m or k >= n or (m.group(3) and case.ndir == 1) or m.group(1) not in names:
            raise ValueError(f"gradient(s) under unknown name {key!r}; expected names: "
                             f"{', '.join(map(repr, expected))}")
        per_slot[k][m.group(1)] = v
    return per_slot, {k: g[k] for k in special if k in g}


def canonical(per_slot: list, layout, problem: Problem) -> dict:
    """Per-slot layout gradients -> the quantities ``d W_f [l0 fwd]`` (grads_from_layout per slot)."""
    res = {}
    for k, slot in enumerate(problem.case.slots):
        try:
            gates = gate_names(problem.params[k])
            size = {"input_size": int(np.shape(problem.params[k][f"W_{gates[0]}"])[1])} \
                if layout.params == "combined" else {}  # a combined kernel's W splits at this layer's D
            canon = grads_from_layout(per_slot[k], layout, gates, **size)
        except LayoutError as exc:
            raise ValueError(f"slot {slot}: {exc}") from exc
        res.update({slot_key(f"d {q}", slot): v for q, v in canon.items()})
    return res


def layout_params(problem: Problem, layout) -> list:
    """The problem's parameters, one layout dict per slot."""
    return [to_layout(p, layout, b) for p, b in zip(problem.params, problem.bias_ih, strict=True)]


# ------------------------------------------------------------------------------------- running a case
def run(target, problem: Problem) -> dict:
    """A case of several slots on a ProtocolTarget: its forward's results, then its backward's (while the
    backward runs, ``problem.extra[FORWARD]`` holds the forward's, as in ProtocolTarget.run)."""
    from .targets import FORWARD

    lay = target.layout
    params = pack_params(target.stack, problem.case, layout_params(problem, lay))
    x = seq_to_layout(problem.x, lay)
    kw = _kwargs(target, problem)
    res = _forward(target, problem, params, x, kw)
    if "gradients" not in target.features:
        return res
    problem.extra[FORWARD] = (f"{target.name}.backward", res)
    return {**res, **_backward(target, problem, params, x, kw)}


def _kwargs(target, problem: Problem) -> dict:
    case = problem.case
    kw = {f"{s}0": v for s, v in pack_states(target.stack, problem.init).items()} if target.initial_states else {}
    if problem.lengths is not None:
        kw["lengths"] = problem.lengths
    if case.direction == "reverse":
        kw["reverse"] = True
    if case.ndir == 2:
        kw["bidirectional"] = True
    if target.stack.layers > 1:
        kw["layers"] = case.layers
    return kw


def _arrays(value, what: str):
    """A returned state (or its gradient) in either declared form, as ndarrays (protocol checks of _result)."""
    from .targets import _result

    if isinstance(value, (list, tuple)):
        return [_result(a, f"{what}[{k}]") for k, a in enumerate(value)]
    return _result(value, what)


def _forward(target, problem: Problem, params, x, kw: dict) -> dict:
    from .targets import TargetError, _describe, _result

    case, name = problem.case, target.name
    out = target._call(problem, "forward", params, x, **kw)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TargetError(f"{name}.forward: expected (y, final states), got {_describe(out)}")
    y, final = out
    final = target._states(final, problem.states, "forward")
    pair = case.ndir == 2 and target.stack.output == "separate"
    y = _arrays(y, f"{name}.forward: y") if pair else _result(y, f"{name}.forward: y")
    try:
        parts = split_output(target.stack, y, case, target.layout, problem.lengths)
        slots = unpack_states(target.stack, {s: _arrays(v, f"{name}.forward: final state {s}")
                                             for s, v in final.items()}, case, "final state")
        res = {"y": np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]}
    except ValueError as exc:
        raise TargetError(f"{name}.forward: {exc}") from None
    for k, slot in enumerate(case.slots):
        res.update({slot_key(f"{s}_T", slot): slots[k][s] for s in problem.states})
    return res


def _backward(target, problem: Problem, params, x, kw: dict) -> dict:
    from .targets import ProtocolError, TargetError, _describe, _result

    case, stack, lay, name = problem.case, target.stack, target.layout, target.name
    dy = join_output(stack, np.split(problem.dy, case.ndir, axis=-1), case, lay, problem.lengths)
    if target.d_final:  # declared False: its backward takes no cotangents on the final states (zero here)
        kw = {**kw, "d_final": pack_states(stack, problem.d_final)}
    g = target._call(problem, "backward", params, x, dy=dy, **kw)
    if not isinstance(g, dict):
        raise TargetError(f"{name}.backward: expected a dict of gradients, got {_describe(g)}")
    special = ["x"] + ([f"{s}0" for s in problem.states] if target.initial_states else [])
    try:
        per_slot, rest = param_grads(stack, case, g, target.param_names, special)
    except ValueError as exc:
        raise ProtocolError(f"{name}.backward returned {exc}") from None
    target._check_names({**{n: None for d in per_slot for n in d}, **rest})
    per_slot = [{n: _result(v, f"{name}.backward: gradient {n!r} [{slot}]") for n, v in d.items()}
                for d, slot in zip(per_slot, case.slots, strict=True)]
    try:
        res = canonical(per_slot, lay, problem)
        if "x" in rest:
            res["d x"] = seq_from_layout(_result(rest["x"], f"{name}.backward: gradient 'x'"), lay)
        states = {s: _arrays(rest[f"{s}0"], f"{name}.backward: gradient '{s}0'") for s in problem.states
                  if f"{s}0" in rest}
        for k, d in enumerate(unpack_states(stack, states, case, "gradient of the initial state")):
            res.update({slot_key(f"d {s}0", case.slots[k]): v for s, v in d.items()})
    except ValueError as exc:
        raise TargetError(f"{name}.backward: {exc}") from None
    return res
