"""Targets: what `lstm-spec conform` tests. A built-in adapter (torch, keras, flax, onnxruntime) or a
user's implementation following the protocol of conformance/PROTOCOL.md, loaded from
``package.module:object`` or ``path/to/file.py:object``."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from lstm_spec.layouts.frameworks import (
    SEQ_AXES,
    Layout,
    LayoutError,
    gate_names,
    grads_from_layout,
    seq_from_layout,
    seq_to_layout,
    state_from_layout,
    state_to_layout,
    to_layout,
)
from lstm_spec.layouts.gates import LSTM_GATES

from . import directions
from .problem import Case, Problem, slot_key


class TargetError(Exception):
    """A target that cannot be loaded or does not follow the protocol (message says what to fix)."""


class ProtocolError(TargetError):
    """A result that breaks the protocol in a way only its author can fix (a gradient or a state under a
    name the protocol does not know): the case errs and `conform` exits with 2."""


FORWARD = "forward results"  # key of Problem.extra: the forward's results while the backward runs (ProtocolTarget.run)


class Unavailable(TargetError):
    """A framework that is not installed: reported as skipped with the install command."""

    def __init__(self, name: str, install: str, why: str = ""):
        super().__init__(f"{name} is not installed{': ' + why if why else ''}; install it with: {install}")
        self.install = install


# ------------------------------------------------------------------------------ calling a target's code
def describe(exc: BaseException) -> str:
    """An exception a target raised, in one line: its type and the first line of its message."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: sys.exit({exc.code!r})"
    lines = str(exc).strip().splitlines() or [""]
    text = lines[0][:300] + (" ..." if len(lines) > 1 or len(lines[0]) > 300 else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_SIGINT = {"seen": False}


def _on_sigint(signum, frame):
    _SIGINT["seen"] = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def watching_interrupts():
    """While active, a SIGINT (Ctrl-C) is recorded, so that the KeyboardInterrupt of a user who stops
    the run can be told from one that a target's code raises (:func:`users_interrupt`). Only in the
    main thread, and only where SIGINT has Python's default handler; nested uses are free."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    _SIGINT["seen"] = False
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def users_interrupt(exc: BaseException) -> bool:
    """``exc`` is the user's Ctrl-C or a SIGTERM (:func:`terminating_cleanly`): re-raise it; not an
    exception of the target's code. Asked right after a :func:`watching_interrupts` block (the
    outermost one forgets earlier signals)."""
    return isinstance(exc, (KeyboardInterrupt, SystemExit)) and _SIGINT["seen"]


def _on_sigterm(signum, frame):
    _SIGINT["seen"] = True
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def terminating_cleanly():
    """While active (main thread), SIGTERM (a CI timeout, kill) unwinds as ``SystemExit(143)``, so that
    ``finally`` clauses run: a worker process and every process it started are killed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def guarded(spec: str, what: str, call, *args):
    """``call(*args)``, code of the target ``spec``: whatever it raises (SystemExit, KeyboardInterrupt,
    GeneratorExit, a TargetError of its own...) becomes a TargetError naming ``what``; only the user's
    Ctrl-C goes through."""
    try:
        with watching_interrupts():
            return call(*args)
    except BaseException as exc:
        if users_interrupt(exc):
            raise
        hint = "; a target must not end the process (script code belongs under `if __name__ == \"__main__\":`)" \
            if isinstance(exc, SystemExit) else ""
        raise TargetError(f"target {spec!r}: {what} raised {describe(exc)}{hint}") from None


class Target:
    """What the runner needs from a target. Adapters subclass it; ``ProtocolTarget`` wraps a user's object."""

    name = "target"
    description = ""
    cells: tuple = ("lstm",)
    dtypes: tuple = ("float32", "float64")
    features: frozenset = frozenset()  # "gradients", "reverse", "lengths", "bidirectional", "layers"
    biases = 1
    tolerance_key = "conform"
    spec: str | None = None  # the name it was loaded by (load_target), if any

    def versions(self) -> str:
        return ""

    def supports(self, case: Case) -> str | None:
        """None, or why the case is skipped."""
        if case.cell not in self.cells:
            return f"cell {case.cell!r} not offered (offers {', '.join(self.cells)})"
        if case.dtype not in self.dtypes:
            return f"dtype {case.dtype} not offered"
        from .problem import reference_module

        try:
            inputs = list(reference_module(case.cell).SIGNATURE.inputs)
        except ImportError:
            return f"cell {case.cell!r} has no generated reference"
        if inputs != ["x"]:
            return f"cell {case.cell!r} reads inputs {inputs}; conform handles cells with one input x"
        if case.direction == "reverse" and "reverse" not in self.features:
            return "no reverse direction"
        if case.direction == "bidirectional" and "bidirectional" not in self.features:
            return "not bidirectional"
        if case.lengths is not None and "lengths" not in self.features:
            return "no sequence lengths"
        if case.layers > 1 and "layers" not in self.features:
            return "single layer only"
        return None

    def biases_for(self, case: Case) -> int:
        """1 or 2: whether this target splits the biases of ``case``'s cell in two (b = b_ih + b_hh)."""
        return self.biases

    initial_states = True  # False: the target takes no initial states; its cases start from zero states
    constants: dict = {}  # declared values of the cell's [constants] (e.g. forget_bias): the reference runs with them
    d_final = True  # False: its backward takes no cotangents on the final states; its cases have zero ones
    loss = "sequence"  # "last": its backward takes the cotangent of the last output only; dy is zero before
    batch = True  # False: it runs one sequence per call (no batch dimension); the harness loops over the batch

    def adapt(self, case: Case) -> Case:
        """``case`` as this target runs it (a target without initial states: from zero states)."""
        return case

    def untested(self, quantities) -> list:
        """The quantities among ``quantities`` that this target does not provide (declared): not compared."""
        return []

    @property
    def has_gradients(self) -> bool:
        return "gradients" in self.features

    def run(self, problem: Problem) -> dict:
        raise NotImplementedError


def _as_np(a):
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):  # torch
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _is_array(value) -> bool:
    """An array of NumPy or of a framework (it converts itself: ``__array__``, ``detach``); not a Python
    list, tuple or number, which the protocol does not accept in place of an array."""
    if isinstance(value, (np.ndarray, np.generic)):
        return True
    if value is None or isinstance(value, (str, bytes, dict, list, tuple, int, float, complex)):
        return False
    return any(hasattr(value, a) for a in ("__array__", "__array_interface__", "detach"))


def _result(value, what: str) -> np.ndarray:
    """A returned array as an ndarray; anything that is not an array (a Python list included) is a protocol
    error naming ``what``. Its dtype and shape are kept as returned: the comparison judges them."""
    if not _is_array(value):
        hint = " (the protocol wants arrays: return np.asarray(...))" if isinstance(value, (list, tuple)) else ""
        raise TargetError(f"{what}: expected an array, got {_describe(value)}{hint}")
    try:
        return _as_np(value)
    except Exception as exc:  # an object that does not convert is the target's fault
        raise TargetError(f"{what}: expected an array, got {_describe(value)} ({type(exc).__name__}: {exc})") from exc


# positional argument names of the protocol's methods (conformance/PROTOCOL.md, section 1)
_ARG_NAMES = {"forward": ("params", "x"), "backward": ("params", "x")}


def _private_copy(value):
    """A deep copy of an argument (arrays, dicts of arrays); other values are immutable here."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: _private_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):  # per-slot parameters or states (directions.py)
        return type(value)(_private_copy(v) for v in value)
    return value


def _changed(now, before, name: str) -> str:
    """'' when ``now`` equals ``before`` bit for bit, else what changed, naming the argument."""
    if isinstance(before, dict):
        if not isinstance(now, dict) or set(now) != set(before):
            gone = sorted(set(before) - set(now)) if isinstance(now, dict) else []
            added = sorted(set(now) - set(before)) if isinstance(now, dict) else []
            return f"{name} (keys removed {gone}, added {added})"
        for k in before:
            change = _changed(now[k], before[k], f"{name}[{k!r}]")
            if change:
                return change
        return ""
    if isinstance(before, (list, tuple)):
        if not isinstance(now, type(before)) or len(now) != len(before):
            return f"{name} (replaced, or items added or removed)"
        return next((c for k in range(len(before)) if (c := _changed(now[k], before[k], f"{name}[{k}]"))), "")
    if isinstance(before, np.ndarray):
        if not isinstance(now, np.ndarray) or now.shape != before.shape or now.dtype != before.dtype:
            return f"{name} (replaced or reshaped)"
        same = (now == before) | (np.isnan(now) & np.isnan(before)) if now.dtype.kind in "fc" else now == before
        if same.all():
            return ""
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(~same)), same.shape))
        return (f"{name} ({int((~same).sum())} of {same.size} elements, first at index {idx}: "
                f"{before[idx].item():.6g} became {now[idx].item():.6g})")
    return ""


_FEATURES = ("lengths", "reverse")
_DTYPES = ("float32", "float64")
# Every key of a declaration (conformance/PROTOCOL.md section 1) -> its accepted values: a tuple of the
# values themselves (checked by _choice, the default first) or a text saying them (checked where the key
# is read). A key not in this table is refused at load; a new key is added here, then read in _declare.
_KEYS = {
    "cell": "a cell name (`lstm-spec list`)",
    "params": ("per_gate", "stacked", "combined"),
    "gate_order": "a permutation of the cell's gates",
    "concat": ("xh", "hx"),
    "transposed": "True or False",
    "biases": "1 or 2",
    "bias_shape": ("vector", "row"),
    "batch_major": "True or False",
    "axes": "a permutation of T, B, F (time, batch, features)",
    "batch": "True or False",
    "dtypes": _DTYPES,
    "features": _FEATURES,
    "gradients": "a list of the gradients backward returns",
    "initial_states": "True or False",
    "d_final": "True or False",
    "loss": ("sequence", "last"),
    "constants": "a dict {name: number} of the cell's [constants] (its spec's [constants] table, its docs page)",
    "bidirectional": "True, False or a dict with keys output, order, params, states (PROTOCOL.md section 11)",
    "layers": "an integer >= 1 or a dict with keys count, params, states (PROTOCOL.md section 11)",
    "name": "a string",
    "description": "a string",
}


def _choice(meta: dict, key: str):
    """A key whose accepted values _KEYS lists (the first is the default): its declared value."""
    accepted = _KEYS[key]
    value = meta.get(key, accepted[0])
    if not any(value == a and type(value) is type(a) for a in accepted):
        raise TargetError(f"conformance[{key!r}]: expected {' or '.join(map(repr, accepted))}, got {value!r}")
    return value


def _axes(meta: dict, batch: bool) -> tuple:
    """The declared axes of x and y: a permutation of T, B, F (of T, F without a batch dimension), as a
    string "BFT" or a tuple; () when not declared (batch_major decides)."""
    if "axes" not in meta:
        return ()
    value, want = meta["axes"], ("T", "B", "F") if batch else ("T", "F")
    seq = tuple(value) if isinstance(value, (str, list, tuple)) else ()
    if not all(isinstance(a, str) for a in seq) or sorted(seq) != sorted(want):
        without = "" if batch else " (no batch dimension: conformance['batch'] is False)"
        raise TargetError(f"conformance['axes']: expected a permutation of {', '.join(want)} (time, "
                          f"{'batch, ' if batch else ''}features){without}, as a string {''.join(want)!r} or a tuple "
                          f"{want!r}, got {value!r}")
    if "batch_major" in meta and bool(meta["batch_major"]) != (seq.index("B") < seq.index("T")):
        raise TargetError(f"conformance['batch_major'] is {meta['batch_major']!r} but conformance['axes'] is "
                          f"{value!r}: declare one of them")
    return seq


def _flag(meta: dict, key: str, default: bool) -> bool:
    value = meta.get(key, default)
    if not isinstance(value, (bool, np.bool_)):
        raise TargetError(f"conformance[{key!r}]: expected True or False, got {value!r}")
    return bool(value)


def _names(meta: dict, key: str, accepted, example: str) -> list | None:
    """A declared list of names (None when not declared), each one of ``accepted``."""
    if key not in meta:
        return None
    value = meta[key]
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(v, str) for v in value):
        raise TargetError(f"conformance[{key!r}]: expected a list of names such as {example}, got {value!r}; "
                          f"accepted names: {', '.join(map(repr, accepted))}")
    bad = [v for v in value if v not in accepted]
    if bad:
        raise TargetError(f"conformance[{key!r}]: unknown {', '.join(map(repr, bad))}; accepted: "
                          f"{', '.join(map(repr, accepted))}")
    return list(value)


def _cell(meta: dict) -> str:
    from lstm_spec.spec import builtin_cells, did_you_mean

    from .problem import reference_module

    cell = meta.get("cell", "lstm")
    if not isinstance(cell, str):
        raise TargetError(f"conformance['cell']: expected a cell name (a string), got {cell!r}; accepted: "
                          f"{', '.join(builtin_cells())}")
    try:
        reference_module(cell)
    except ImportError:
        raise TargetError(f"conformance['cell']: unknown cell {cell!r}; {did_you_mean(cell)}accepted (cells with a "
                          f"generated reference): {', '.join(builtin_cells())}") from None
    return cell


def _gate_order(meta: dict, gates: tuple) -> tuple:
    """The declared gate order as our gate letters: a string ('ifco') or a tuple of letters; PyTorch's
    g (the candidate) is accepted for our c when the cell has a gate c and no gate g."""
    order = meta.get("gate_order", ())
    alias = "c" in gates and "g" not in gates
    seq = tuple(order) if isinstance(order, (str, list, tuple)) else None
    if seq is not None and all(isinstance(g, str) for g in seq):
        seq = tuple("c" if alias and g == "g" else g for g in seq)
        if not seq or sorted(seq) == sorted(gates):
            return seq
    spelled = "".join(gates) if all(len(g) == 1 for g in gates) else gates
    also = (" (g, PyTorch's letter for the candidate, is accepted for our c"
            + (": PyTorch's 'ifgo' is our 'ifco')" if sorted(gates) == sorted(LSTM_GATES) else ")")) if alias else ""
    raise TargetError(f"conformance['gate_order']: expected a permutation of the gates of the cell, as a string "
                      f"{spelled!r} or a tuple {gates!r}{also}, got {order!r}")


def _dummy(cell: str):
    """The canonical parameters (and a two-bias split) of ``cell`` on a tiny case: which names it has."""
    from .problem import make_problem

    problem = make_problem(Case(cell, (1, 1, 2, 2), "float64", 0))
    return problem.params[0], problem.bias_ih[0], problem.states


def _layout(meta: dict, gates: tuple) -> Layout:
    params = _choice(meta, "params")
    biases = meta.get("biases", 1)
    if biases not in (1, 2) or isinstance(biases, (bool, np.bool_)) or not isinstance(biases, (int, np.integer)):
        raise TargetError(f"conformance['biases']: expected 1 or 2, got {biases!r}")
    if "concat" in meta and params != "combined":
        raise TargetError(f"conformance['concat'] is for a combined kernel: declare \"params\": \"combined\" "
                          f"(params is {params!r})")
    batch, batch_major = _flag(meta, "batch", True), _flag(meta, "batch_major", False)
    if batch_major and not batch:
        raise TargetError("conformance['batch_major'] is True but conformance['batch'] is False (no batch "
                          "dimension): declare 'axes' ('TF' or 'FT') instead")
    return Layout(params, _gate_order(meta, gates), _flag(meta, "transposed", False), int(biases), batch_major,
                  concat=_choice(meta, "concat"), bias_shape=_choice(meta, "bias_shape"), axes=_axes(meta, batch),
                  batch=batch)


def _input_size(params: dict) -> int:
    """D: the input width of a cell's canonical parameters (W_g is (H, D))."""
    return int(np.asarray(params[f"W_{gate_names(params)[0]}"]).shape[1])


def _layout_words(lay: Layout) -> str:
    """The new layout declarations, for a target's description (the header of the report)."""
    words = [f"combined kernel over [{lay.concat[0]}; {lay.concat[1]}]" if lay.params == "combined" else "",
             "biases as rows (1, n)" if lay.bias_shape == "row" else "",
             f"x, y as ({', '.join(lay.seq_axes)})" if lay.axes else "",
             "no batch dimension (declared): called once per batch element" if not lay.batch else ""]
    return "".join(f", {w}" for w in words if w)


def _constants(meta: dict, cell: str) -> dict:
    """The declared values of the cell's [constants] ({} when not declared), checked by the reference's runtime:
    an unknown name or a value that is not a finite number (a clip bound: above 0) names the cell's constants."""
    from lstm_spec.reference._runtime import InputError, prepare_constants

    from .problem import reference_module

    value = meta.get("constants", {})
    sig = reference_module(cell).SIGNATURE
    try:
        known = prepare_constants(sig, value)
    except InputError as exc:
        raise TargetError(f"conformance['constants']: {str(exc).removeprefix('constants: ')}") from None
    return {k: known[k] for k in value}


def constants_words(values: dict) -> str:
    """'forget_bias = 1.0, cell_clip = 3.0' (the report's words for declared constants)."""
    return ", ".join(f"{k} = {v!r}" for k, v in values.items())


def _text(meta: dict, key: str) -> str:
    value = meta.get(key, "")
    if not isinstance(value, str):
        raise TargetError(f"conformance[{key!r}]: expected a string, got {value!r}")
    return value


class ProtocolTarget(Target):
    """A user's implementation: an object with a ``conformance`` dict and ``forward`` (and optionally
    ``backward``); see conformance/PROTOCOL.md. The declaration is validated here, when the target loads."""

    def __init__(self, obj, label: str = ""):
        meta = getattr(obj, "conformance", None)
        if not isinstance(meta, dict):
            raise TargetError(f"{label or obj!r}: expected an object with a `conformance` dict attribute "
                              "(cell, params, gate_order, transposed, biases, batch_major, dtypes); see "
                              "conformance/PROTOCOL.md")
        if not callable(getattr(obj, "forward", None)):
            raise TargetError(f"{label}: expected a callable `forward(params, x, **initial_states)`")
        try:
            self._declare(obj, meta)
        except (TargetError, LayoutError) as exc:
            raise TargetError(f"{label}: {exc}") from None
        self.obj = obj
        self.name = meta.get("name") or label or type(obj).__name__
        self.description = meta.get("description") or self._describe(meta) + self.stack.describe()

    def _declare(self, obj, meta: dict) -> None:
        unknown = sorted(map(str, set(meta) - set(_KEYS)))
        if unknown:
            raise TargetError(f"unknown conformance key(s) {unknown}; accepted: {', '.join(map(repr, _KEYS))}")
        for key in ("name", "description"):
            _text(meta, key)
        cell = _cell(meta)
        self.constants = _constants(meta, cell)
        params, bias_ih, states = _dummy(cell)
        self.cells = (cell,)
        self.layout = _layout(meta, gate_names(params))
        self.biases, self.batch = self.layout.biases, self.layout.batch
        self.dtypes = tuple(_names(meta, "dtypes", _DTYPES, '["float32", "float64"]') or _DTYPES)
        feats = set(_names(meta, "features", _FEATURES, '["reverse", "lengths"]') or ())
        has_backward = callable(getattr(obj, "backward", None))
        if has_backward:
            feats.add("gradients")
        try:
            self.stack = directions.declare(meta)
        except directions.DeclarationError as exc:
            raise TargetError(str(exc)) from None
        feats |= {f for f, on in (("bidirectional", self.stack.bidirectional), ("layers", self.stack.layers > 1)) if on}
        self.features = frozenset(feats)
        self.initial_states = _flag(meta, "initial_states", True)
        self.d_final = _flag(meta, "d_final", True)
        self.loss = _choice(meta, "loss")
        if not has_backward and ("d_final" in meta or "loss" in meta):
            raise TargetError(f"conformance[{'d_final' if 'd_final' in meta else 'loss'!r}] describes the "
                              "backward but the object has no `backward` method")
        if not self.layout.batch and "lengths" in feats:
            raise TargetError("conformance['features'] lists 'lengths' but conformance['batch'] is False: a target "
                              "without a batch dimension gets one whole sequence per call (no lengths)")
        self.states = list(states)
        self.param_names = list(to_layout(params, self.layout, bias_ih))  # also checks the gate order
        self.grad_names = self.param_names + ["x"] + ([f"{s}0" for s in states] if self.initial_states else [])
        listed = meta.get("gradients") if isinstance(meta.get("gradients"), (list, tuple)) else ()
        stateful = [f"{s}0" for s in states if f"{s}0" in listed]
        if stateful and not self.initial_states:
            raise TargetError(f"conformance['gradients'] lists {', '.join(map(repr, stateful))} but "
                              "conformance['initial_states'] is False (no initial states, no gradient of them)")
        declared = _names(meta, "gradients", ["parameters", *self.grad_names], '["parameters", "x"]')
        if declared is not None and not has_backward:
            raise TargetError("conformance['gradients'] is declared but the object has no `backward` method")
        if declared is None and not self.initial_states:
            declared = ["parameters", "x"]
        self.declared = None if declared is None else \
            sorted({n for d in declared for n in (self.param_names if d == "parameters" else [d])},
                   key=self.grad_names.index)
        self.provided = None if declared is None else self._quantities(params, bias_ih)

    def _quantities(self, params: dict, bias_ih: dict) -> set:
        """The result quantities (``d W_f``, ``d x``, ...) the declared gradients give."""
        layout = to_layout(params, self.layout, bias_ih)
        canon = grads_from_layout({k: v for k, v in layout.items() if k in self.declared}, self.layout,
                                  gate_names(params), input_size=_input_size(params))
        return {f"d {k}" for k in canon} | {f"d {k}" for k in self.declared if k not in layout}

    def _describe(self, meta: dict) -> str:
        lay = self.layout
        order = meta.get("gate_order", "")
        spelled = "".join(order) if not isinstance(order, str) else order
        said = (f" in gate order {spelled}" + (" (g: the candidate, our c)" if "g" in spelled and "g" not in
                lay.gate_order else "") if spelled else " in the spec's gate order")
        return (f"user implementation, cell {self.cells[0]}, {lay.params} parameters"
                + (said if lay.params == "stacked" else "")
                + (", transposed" if lay.transposed else "") + f", {lay.biases} bias(es)"
                + ("" if lay.axes or not lay.batch else ", batch-major" if lay.batch_major else ", time-major")
                + ("" if "gradients" in self.features else ", forward only")
                + ("" if self.declared is None else f", gradients {', '.join(self.declared)} (declared)")
                + ("" if self.initial_states else ", no initial states (declared)")
                + (f", {constants_words(self.constants)} (declared)" if self.constants else "")
                + _layout_words(lay) + ("" if self.d_final else ", no cotangents on the final states (declared)")
                + (", loss on the last output only (declared)" if self.loss == "last" else ""))

    def adapt(self, case: Case) -> Case:
        return replace(case, constants=case.constants or tuple(self.constants.items()),
                       zero_states=case.zero_states or not self.initial_states,
                       zero_d_final=case.zero_d_final or not self.d_final,
                       last_output_loss=case.last_output_loss or self.loss == "last")

    def untested(self, quantities) -> list:
        """The quantities of ``quantities`` this target does not provide (its declaration says so)."""
        if self.provided is None:
            return []
        return [q for q in quantities if q.startswith("d ") and q.split(" [")[0] not in self.provided]

    def supports(self, case: Case) -> str | None:
        return super().supports(case) or self.stack.supports(case)

    def _kwargs(self, problem: Problem, rows: slice) -> dict:
        """The keyword arguments of ``forward``/``backward`` for the batch ``rows`` (all, or one element)."""
        kw = {f"{s}0": state_to_layout(problem.init[0][s][rows], self.layout) for s in problem.states} \
            if self.initial_states else {}
        if problem.lengths is not None:
            kw["lengths"] = problem.lengths[rows]
        if problem.case.direction == "reverse":
            kw["reverse"] = True
        return kw

    def _call(self, problem: Problem, method: str, *args, **kwargs):
        """Call ``method`` of the user's object on private copies of the arguments, then record in
        ``problem.extra["mutations"]`` every argument it changed (named as the user sees it)."""
        named = dict(zip(_ARG_NAMES[method], args, strict=False), **kwargs)  # optional trailing arguments
        sent = {k: _private_copy(v) for k, v in named.items()}
        kept = {k: _private_copy(v) for k, v in named.items()}
        positional = [sent[k] for k in _ARG_NAMES[method][:len(args)]]  # called as the protocol shows it
        out = getattr(self.obj, method)(*positional, **{k: v for k, v in sent.items() if k in kwargs})
        for k in sent:
            change = _changed(sent[k], kept[k], k)
            if change:
                problem.extra.setdefault("mutations", []).append(f"{self.name}.{method} modified its argument {change}")
        return out

    def _unseq(self, a: np.ndarray, what: str) -> np.ndarray:
        """A returned sequence in the target's axes -> time-major (T, B, F). In the default axes a wrong
        number of axes is left to the comparison (it reports the shape)."""
        lay = self.layout
        if lay.batch and lay.seq_axes == SEQ_AXES and a.ndim != 3:
            return a
        try:
            return seq_from_layout(a, lay)
        except LayoutError as exc:
            raise TargetError(f"{self.name}.{what}: {exc}") from None

    def _dy(self, problem: Problem, rows: slice) -> np.ndarray:
        """The cotangent of y for the batch ``rows``, in the target's axes; with a loss on the last output
        only, that of the last (valid) step, (B, H) like a state."""
        dy = problem.dy[:, rows]
        if self.loss != "last":
            return seq_to_layout(dy, self.layout)
        T, B = dy.shape[:2]
        last = problem.lengths[rows] - 1 if problem.lengths is not None else np.full(B, T - 1)
        return state_to_layout(np.ascontiguousarray(dy[last, np.arange(B)]), self.layout)

    def run(self, problem: Problem) -> dict:
        """The forward's results, then the backward's; a target without a batch dimension is called once
        per batch element and its results joined. While the backward runs, ``problem.extra[FORWARD]``
        holds (where, the forward's results): when the backward fails (raises, breaks the protocol), the
        runner still compares them (runner.invoke). Several layers or directions: directions.run."""
        if not problem.case.single:
            return directions.run(self, problem)
        params = to_layout(problem.params[0], self.layout, problem.bias_ih[0])
        rows = [slice(None)] if self.batch else [slice(b, b + 1) for b in range(problem.x.shape[1])]
        res = self._join([self._forward(problem, params, r) for r in rows], problem.states, "forward")
        if "gradients" not in self.features:
            return res
        problem.extra[FORWARD] = (f"{self.name}.backward", res)
        return {**res, **self._join([self._backward(problem, params, r) for r in rows], problem.states, "backward")}

    def _join(self, parts: list, states, method: str) -> dict:
        """The results of the batch elements (a target without a batch dimension) as one: sequences and
        states joined on their batch axis, parameter gradients summed."""
        if len(parts) == 1:
            return parts[0]
        if any(set(p) != set(parts[0]) for p in parts):
            raise TargetError(f"{self.name}.{method}: different results for different batch elements")
        batched = {"d x": 1, "y": 1} | {f"{s}_T": 0 for s in states} | {f"d {s}0": 0 for s in states}
        out = {}
        for k in parts[0]:
            vals = [p[k] for p in parts]
            try:
                out[k] = np.concatenate(vals, axis=batched[k]) if k in batched else sum(vals[1:], vals[0])
            except ValueError as exc:
                raise TargetError(f"{self.name}.{method}: {k}: shapes differ between batch elements ({exc})") from None
        return out

    def _forward(self, problem: Problem, params: dict, rows: slice) -> dict:
        x = seq_to_layout(problem.x[:, rows], self.layout)
        out = self._call(problem, "forward", params, x, **self._kwargs(problem, rows))
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TargetError(f"{self.name}.forward: expected (y, final states), got {_describe(out)}")
        y, final = out
        final = self._states(final, problem.states, "forward")
        res = {"y": self._unseq(_result(y, f"{self.name}.forward: y"), "forward: y")}
        for s in problem.states:
            a = _result(final[s], f"{self.name}.forward: final state {s}")
            res[slot_key(f"{s}_T", "")] = state_from_layout(a, self.layout)
        return res

    def _backward(self, problem: Problem, params: dict, rows: slice) -> dict:
        lay, states = self.layout, problem.states
        kw = self._kwargs(problem, rows)
        if self.d_final:
            kw["d_final"] = {s: state_to_layout(problem.d_final[0][s][rows], lay) for s in states}
        x = seq_to_layout(problem.x[:, rows], lay)
        g = self._call(problem, "backward", params, x, dy=self._dy(problem, rows), **kw)
        if not isinstance(g, dict):
            raise TargetError(f"{self.name}.backward: expected a dict of gradients, got {_describe(g)}")
        self._check_names(g)
        g = {k: _result(v, f"{self.name}.backward: gradient {k!r}") for k, v in g.items()}
        special = {"x"} | {f"{s}0" for s in states}
        try:
            canon = grads_from_layout({k: v for k, v in g.items() if k not in special}, lay,
                                      gate_names(problem.params[0]), input_size=problem.x.shape[-1])
        except LayoutError as exc:
            raise TargetError(f"{self.name}.backward: {exc}") from exc
        res = {f"d {k}": v for k, v in canon.items()}
        if "x" in g:
            res["d x"] = self._unseq(g["x"], "backward: gradient 'x'")
        res.update({f"d {s}0": state_from_layout(g[f"{s}0"], lay) for s in states if f"{s}0" in g})
        return res

    def _check_names(self, g: dict) -> None:
        """Every returned gradient has a name of the protocol (and of the declaration, if any): a
        ProtocolError naming the expected ones, never a gradient silently dropped."""
        unknown = [k for k in g if k not in self.grad_names]
        if unknown:
            expected = ", ".join(map(repr, self.grad_names))
            raise ProtocolError(f"{self.name}.backward returned gradient(s) under unknown name(s) "
                                f"{', '.join(map(repr, unknown))}; expected names: {expected}")
        extra = [k for k in g if self.declared is not None and k not in self.declared]
        if extra:
            raise ProtocolError(f"{self.name}.backward returned {', '.join(map(repr, extra))}, not in its declared "
                                f"conformance['gradients'] ({', '.join(map(repr, self.declared))}): declare "
                                "it or do not return it")

    def _states(self, final, states, where):
        if isinstance(final, dict):
            unknown = [k for k in final if k not in states]
            if unknown:
                raise ProtocolError(f"{self.name}.{where}: final state(s) under unknown name(s) "
                                    f"{', '.join(map(repr, unknown))}; expected names: {', '.join(map(repr, states))}")
            missing = [s for s in states if s not in final]
            if missing:
                raise TargetError(f"{self.name}.{where}: final states lack {missing}")
            return final
        if not isinstance(final, (tuple, list)) or len(final) != len(states):
            raise TargetError(f"{self.name}.{where}: expected the final states as a dict {states} or a tuple "
                              f"in the order {tuple(states)}")
        return dict(zip(states, final, strict=True))  # the length is checked above


def _import(spec: str, mod_name: str):
    """The target's module, imported (from a file or by name): target code, run under :func:`guarded`."""
    if mod_name.endswith(".py") or "/" in mod_name:
        path = Path(mod_name)
        if not path.is_file():
            raise TargetError(f"target {spec!r}: no such file {path}")
        name = f"lstm_spec_user_{path.stem}"
        folder = str(path.resolve().parent)  # the modules beside the file import, as under `python file.py`
        if folder not in sys.path:
            sys.path.insert(0, folder)
        mspec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mspec)
        sys.modules[name] = module
        try:
            guarded(spec, f"importing {path}", mspec.loader.exec_module, module)
        except TargetError:
            sys.modules.pop(name, None)
            raise
        return module
    return guarded(spec, f"importing {mod_name}", importlib.import_module, mod_name)


def load_object(spec: str):
    """``package.module:object`` or ``path/to/file.py:object`` -> the object (a class is instantiated
    without arguments). Whatever the target's code does while it is imported or constructed (raise,
    ``sys.exit``, a SyntaxError) is a TargetError."""
    if ":" not in spec:
        raise TargetError(f"target {spec!r}: expected a built-in adapter name, `package.module:object` or "
                          "`path/to/file.py:object`")
    mod_name, _, attr = spec.rpartition(":")
    obj = _import(spec, mod_name)
    for part in attr.split("."):
        if not guarded(spec, f"looking up {attr}", hasattr, obj, part):
            raise TargetError(f"target {spec!r}: {mod_name} has no attribute {attr!r}")
        obj = guarded(spec, f"looking up {attr}", getattr, obj, part)
    if isinstance(obj, type):
        obj = guarded(spec, f"constructing {attr}()", obj)
    return obj


def load_target(spec: str) -> Target:
    """A built-in adapter by name, or a user's object through the protocol. Raises ``Unavailable``
    when a built-in adapter's framework is missing and ``TargetError`` for anything else the user can
    fix (a user's target never raises ``Unavailable``: exit code 3 is conform's, not the target's)."""
    from .adapters import ADAPTERS, load_adapter

    if spec in ADAPTERS:
        target = load_adapter(spec)
    else:
        obj = load_object(spec)
        if isinstance(obj, Target):
            target = obj
        else:
            try:
                with watching_interrupts():
                    target = ProtocolTarget(obj, spec)
            except TargetError as exc:
                raise TargetError(str(exc)) from None
            except BaseException as exc:  # its conformance dict or forward, read: target code
                if users_interrupt(exc):
                    raise
                raise TargetError(f"target {spec!r}: reading its conformance attributes raised {describe(exc)}") \
                    from None
    target.spec = spec  # how a worker process loads the same target again (runner.conform with a timeout)
    return target
