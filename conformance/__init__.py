"""Conformance: test any LSTM implementation against the reference and say exactly what is wrong.

``lstm-spec conform TARGET`` (TARGET: torch, keras, flax, onnxruntime, ``package.module:object`` or
``path/to/file.py:object``) runs the cases of :func:`default_cases` on the target and on the generated
reference, compares outputs, final states and every gradient, and on a failure tries the known bug
signatures (:mod:`.signatures`). The protocol for a user's own implementation is in
conformance/PROTOCOL.md; golden vectors for other languages in conformance/VECTORS.md.
"""

import importlib

# Exports load on first use (PEP 562), so `lstm-spec --help` registers conform and vectors without NumPy or SymPy.
_EXPORTS = {**dict.fromkeys(["Case", "Problem", "expected", "make_problem"], ".problem"),
            **dict.fromkeys(["Report", "conform", "default_cases", "format_report"], ".runner"),
            **dict.fromkeys(["SIGNATURES", "diagnose"], ".signatures"),
            **dict.fromkeys(["ProtocolTarget", "Target", "TargetError", "Unavailable", "load_target"], ".targets")}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
