"""The function kinds, at the base of the pipeline: what a spec's ``[functions]`` table may declare, and
the facts every stage shares about each kind -- the name of its NumPy implementation in
lstm_spec.reference._runtime, its constant parameters, whether a spec may declare it, whether it reduces a
vector to one value per sample. The derivation adds each kind's SymPy function and rule
(lstm_spec.derivations.functions.FUNCTIONS, built from this table); the spec's loader, the code printer and
the checks read the facts from here or from there, never a list of their own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str
    runtime_name: str  # the numeric implementation in lstm_spec.reference._runtime
    parameters: tuple = ()  # names of constant parameters declared with the function (e.g. "bound")
    declarable: bool = True  # False for functions that only appear in derivatives
    reduction: bool = False  # True when the function maps a vector to one value per sample


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("logistic", "sigmoid"),
    Kind("tanh", "tanh"),
    Kind("identity", "identity"),
    Kind("clip", "clip", ("bound",)),
    Kind("stop_gradient", "stop_gradient"),
    Kind("exp", "exp"),
    Kind("rsqrt", "rsqrt"),
    Kind("sum", "unit_sum", reduction=True),
    Kind("logsumexp", "logsumexp", reduction=True),
    Kind("mean", "unit_mean", reduction=True),
    Kind("unit_count", "unit_count", declarable=False, reduction=True),
    Kind("clip_mask", "clip_mask", ("bound",), declarable=False),
)}
