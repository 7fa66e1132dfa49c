"""Built-in adapters: each runs a framework's LSTM on a conformance problem and returns the
quantities in lstm-spec's conventions (conformance/problem.py). A framework that is not installed
raises ``Unavailable`` with the install command; `lstm-spec conform` reports it as skipped."""

from __future__ import annotations

import importlib

from ..targets import Target, Unavailable

# name -> (module, class, pip extra)
ADAPTERS = {
    "torch": ("torch_adapter", "TorchLSTM", "torch"),
    "keras": ("keras_adapter", "KerasLSTM", "keras"),
    "flax": ("flax_adapter", "FlaxLSTM", "flax"),
    "onnxruntime": ("onnxruntime_adapter", "OnnxRuntimeLSTM", "onnxruntime"),
}


def available_cells(names) -> tuple:
    """The cells among ``names`` that the spec has (an adapter lists what it could map)."""
    from lstm_spec.spec import builtin_cells

    have = set(builtin_cells())
    return tuple(c for c in names if c in have)


def install_command(name: str) -> str:
    return f'pip install "lstm-spec[{ADAPTERS[name][2]}]"'


def load_adapter(name: str, **options) -> Target:
    mod, cls, _ = ADAPTERS[name]
    try:
        module = importlib.import_module(f"{__name__}.{mod}")
        return getattr(module, cls)(**options)
    except ImportError as exc:
        raise Unavailable(name, install_command(name), str(exc)) from exc
