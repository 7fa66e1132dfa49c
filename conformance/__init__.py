"""Conformance: test any LSTM implementation against the reference and say exactly what is wrong.

``lstm-spec conform TARGET`` (TARGET: torch, keras, flax, onnxruntime, ``package.module:object`` or
``path/to/file.py:object``) runs the cases of :func:`default_cases` on the target and on the generated
reference, compares outputs, final states and every gradient, and on a failure tries the known bug
signatures (:mod:`.signatures`). The protocol for a user's own implementation is in
conformance/PROTOCOL.md; golden vectors for other languages in conformance/VECTORS.md.
"""

from .problem import Case, Problem, expected, make_problem
from .runner import Report, conform, default_cases, format_report
from .signatures import SIGNATURES, diagnose
from .targets import ProtocolTarget, Target, TargetError, Unavailable, load_target

__all__ = ["Case", "Problem", "ProtocolTarget", "Report", "SIGNATURES", "Target", "TargetError", "Unavailable",
           "conform", "default_cases", "diagnose", "expected", "format_report", "load_target", "make_problem"]
