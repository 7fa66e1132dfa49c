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
from pathlib import Path

import numpy as np

from lstm_spec.layouts.frameworks import Layout, LayoutError, gate_names, grads_from_layout, to_layout

from .problem import Case, Problem, slot_key


class TargetError(Exception):
    """A target that cannot be loaded or does not follow the protocol (message says what to fix)."""


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
    except Exception as exc:  # noqa: BLE001 - an object that does not convert is the target's fault
        raise TargetError(f"{what}: expected an array, got {_describe(value)} ({type(exc).__name__}: {exc})") from exc


# positional argument names of the protocol's methods (conformance/PROTOCOL.md, section 1)
_ARG_NAMES = {"forward": ("params", "x"), "backward": ("params", "x")}


def _private_copy(value):
    """A deep copy of an argument (arrays, dicts of arrays); other values are immutable here."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: _private_copy(v) for k, v in value.items()}
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


class ProtocolTarget(Target):
    """A user's implementation: an object with a ``conformance`` dict and ``forward`` (and optionally
    ``backward``); see conformance/PROTOCOL.md."""

    def __init__(self, obj, label: str = ""):
        meta = getattr(obj, "conformance", None)
        if not isinstance(meta, dict):
            raise TargetError(f"{label or obj!r}: expected an object with a `conformance` dict attribute "
                              "(cell, params, gate_order, transposed, biases, batch_major, dtypes); see "
                              "conformance/PROTOCOL.md")
        if not callable(getattr(obj, "forward", None)):
            raise TargetError(f"{label}: expected a callable `forward(params, x, **initial_states)`")
        known = {"cell", "params", "gate_order", "transposed", "biases", "batch_major", "dtypes", "features",
                 "name", "description"}
        unknown = sorted(set(meta) - known)
        if unknown:
            raise TargetError(f"{label}: unknown conformance key(s) {unknown}; known: {sorted(known)}")
        self.obj = obj
        self.name = meta.get("name") or label or type(obj).__name__
        cell = meta.get("cell", "lstm")
        self.cells = (cell,)
        self.dtypes = tuple(meta.get("dtypes", ("float32", "float64")))
        order = meta.get("gate_order", ())
        try:
            self.layout = Layout(meta.get("params", "per_gate"), tuple(order), bool(meta.get("transposed", False)),
                                 int(meta.get("biases", 1)), bool(meta.get("batch_major", False)))
        except Exception as exc:
            raise TargetError(f"{label}: {exc}") from exc
        self.biases = self.layout.biases
        feats = set(meta.get("features", ()))
        bad = feats - {"reverse", "lengths"}
        if bad:
            raise TargetError(f"{label}: unknown feature(s) {sorted(bad)}; known: lengths, reverse")
        if callable(getattr(obj, "backward", None)):
            feats.add("gradients")
        self.features = frozenset(feats)
        lay = self.layout
        self.description = meta.get("description") or (
            f"user implementation, cell {cell}, {lay.params} parameters"
            + (f" in gate order {''.join(lay.gate_order) or 'of the spec'}" if lay.params == "stacked" else "")
            + (", transposed" if lay.transposed else "") + f", {lay.biases} bias(es), "
            + ("batch-major" if lay.batch_major else "time-major")
            + ("" if "gradients" in feats else ", forward only"))

    def _kwargs(self, problem: Problem, slot: int) -> dict:
        kw = {f"{s}0": problem.init[slot][s] for s in problem.states}
        if problem.lengths is not None:
            kw["lengths"] = problem.lengths
        if problem.case.direction == "reverse":
            kw["reverse"] = True
        return kw

    def _call(self, problem: Problem, method: str, *args, **kwargs):
        """Call ``method`` of the user's object on private copies of the arguments, then record in
        ``problem.extra["mutations"]`` every argument it changed (named as the user sees it)."""
        named = dict(zip(_ARG_NAMES[method], args), **kwargs)
        sent = {k: _private_copy(v) for k, v in named.items()}
        kept = {k: _private_copy(v) for k, v in named.items()}
        positional = [sent[k] for k in _ARG_NAMES[method][:len(args)]]  # called as the protocol shows it
        out = getattr(self.obj, method)(*positional, **{k: v for k, v in sent.items() if k in kwargs})
        for k in sent:
            change = _changed(sent[k], kept[k], k)
            if change:
                problem.extra.setdefault("mutations", []).append(f"{self.name}.{method} modified its argument {change}")
        return out

    def run(self, problem: Problem) -> dict:
        lay = self.layout
        states = problem.states
        bm = (lambda a: np.ascontiguousarray(np.swapaxes(a, 0, 1))) if lay.batch_major else (lambda a: a)  # noqa: E731
        params = to_layout(problem.params[0], lay, problem.bias_ih[0])
        x = bm(problem.x)
        out = self._call(problem, "forward", params, x, **self._kwargs(problem, 0))
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TargetError(f"{self.name}.forward: expected (y, final states), got {_describe(out)}")
        y, final = out
        final = self._states(final, states, "forward")
        y = _result(y, f"{self.name}.forward: y")
        if lay.batch_major and y.ndim != 3:
            raise TargetError(f"{self.name}.forward: y has shape {y.shape}, expected (B, T, H) (batch_major)")
        res = {"y": bm(y)}
        for s in states:
            res[slot_key(f"{s}_T", "")] = _result(final[s], f"{self.name}.forward: final state {s}")
        if "gradients" in self.features:
            g = self._call(problem, "backward", params, x, dy=bm(problem.dy), d_final=dict(problem.d_final[0]),
                           **self._kwargs(problem, 0))
            if not isinstance(g, dict):
                raise TargetError(f"{self.name}.backward: expected a dict of gradients, got {_describe(g)}")
            g = {k: _result(v, f"{self.name}.backward: gradient {k!r}") for k, v in g.items()}
            special = {"x"} | {f"{s}0" for s in states}
            try:
                canon = grads_from_layout({k: v for k, v in g.items() if k not in special}, lay,
                                          gate_names(problem.params[0]))
            except LayoutError as exc:
                raise TargetError(f"{self.name}.backward: {exc}") from exc
            for k, v in canon.items():
                res[f"d {k}"] = v
            if "x" in g:
                if lay.batch_major and g["x"].ndim != 3:
                    raise TargetError(f"{self.name}.backward: gradient 'x' has shape {g['x'].shape}, expected "
                                      "(B, T, D) (batch_major)")
                res["d x"] = bm(g["x"])
            for s in states:
                if f"{s}0" in g:
                    res[f"d {s}0"] = g[f"{s}0"]
        return res

    def _states(self, final, states, where):
        if isinstance(final, dict):
            missing = [s for s in states if s not in final]
            if missing:
                raise TargetError(f"{self.name}.{where}: final states lack {missing}")
            return final
        if not isinstance(final, (tuple, list)) or len(final) != len(states):
            raise TargetError(f"{self.name}.{where}: expected the final states as a dict {states} or a tuple "
                              f"in the order {tuple(states)}")
        return dict(zip(states, final))


def _import(spec: str, mod_name: str):
    """The target's module, imported (from a file or by name): target code, run under :func:`guarded`."""
    if mod_name.endswith(".py") or "/" in mod_name:
        path = Path(mod_name)
        if not path.is_file():
            raise TargetError(f"target {spec!r}: no such file {path}")
        name = f"lstm_spec_user_{path.stem}"
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
