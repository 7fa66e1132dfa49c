"""Negative controls: deliberately wrong derivations and generated code, to show each check can fail.

- ``planted_derivation``: a copy of a derivation with one derived formula changed (sign flipped);
- ``mutate_code``: the generated module's text with one line of its backward pass negated, zeroed
  or deleted; ``load_module`` turns any module text into a module without writing a file.
"""

from __future__ import annotations

import copy
import re
import types

import sympy

from lstm_spec.derivations.reverse import Derivation, Statement

_ASSIGN = re.compile(r"^(\s+)([A-Za-z_][\w\[\] +,]*?) = (.+)$")


def load_module(text: str, name: str = "lstm_spec_mutant") -> types.ModuleType:
    """Execute generated module text (our own generated code, never spec content) as a module."""
    module = types.ModuleType(name)
    exec(compile(text, f"<{name}>", "exec"), module.__dict__)
    return module


def backward_lines(text: str) -> list[int]:
    """0-based indices of the derived lines of backward(): the assignments of the time loop and the
    gradient computations after it (not the unpacking of the cache or the returned dict)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("def backward("))
    loop = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("for t in reversed("))
    end = next(i for i in range(loop, len(lines)) if lines[i].strip().startswith(("grads = {", "return {")))
    return [i for i in range(loop + 1, end) if _ASSIGN.match(lines[i]) and "np.empty" not in lines[i]]


def _one_call(rhs: str) -> bool:
    """True when rhs is a single call f(...) (its commas are inside the parentheses)."""
    m = re.match(r"^[A-Za-z_][\w.]*\(", rhs)
    if not m or not rhs.endswith(")"):
        return False
    depth = 0
    for k in range(m.end() - 1, len(rhs)):
        depth += rhs[k] == "("
        depth -= rhs[k] == ")"
        if depth == 0 and k < len(rhs) - 1:
            return False
    return True


def mutate_code(text: str, index: int, how: str) -> str:
    """how: "negate" (target = -(rhs)), "zero" (target = 0 * (rhs)), "delete" (line removed)."""
    lines = text.splitlines()
    m = _ASSIGN.match(lines[index])
    if not m:
        raise ValueError(f"line {index + 1} is not an assignment: {lines[index]!r}")
    indent, target, rhs = m.groups()
    if how == "delete":
        del lines[index]
    elif how == "negate":
        if "," in target and _one_call(rhs):  # a tuple assignment from one call (a split): negate each part
            lines[index] = f"{indent}{target} = [-_part for _part in {rhs}]"
        elif "," in target:  # a tuple assignment: swap in negated values
            lines[index] = f"{indent}{target} = " + ", ".join(f"-({v.strip()})" for v in rhs.split(","))
        else:
            lines[index] = f"{indent}{target} = -({rhs})"
    elif how == "zero":
        if "," in target and _one_call(rhs):
            lines[index] = f"{indent}{target} = [0 * _part for _part in {rhs}]"
        elif "," in target:
            lines[index] = f"{indent}{target} = " + ", ".join(f"0 * ({v.strip()})" for v in rhs.split(","))
        else:
            lines[index] = f"{indent}{target} = 0 * ({rhs})"
    else:
        raise ValueError(how)
    return "\n".join(lines) + "\n"


def recursion_line(text: str) -> int:
    """The line that hands d_s_prev to the next (earlier) step: deleting it drops the recurrent gradient."""
    lines = text.splitlines()
    return next(i for i in backward_lines(text) if re.match(r"\s+d_\w+_next(, d_\w+_next)* = ", lines[i]))


def planted_derivation(d: Derivation, index: int | None = None) -> tuple[Derivation, str]:
    """A copy of ``d`` with the sign of one derived elementwise formula flipped. Default: the last
    adjoint in the loop with a non-trivial formula (for the LSTM, the forget gate's pre-activation)."""
    candidates = [k for k, st in enumerate(d.loop) if st.kind == "value" and st.elementwise.free_symbols
                  and not isinstance(st.elementwise, sympy.Symbol)]
    k = candidates[-1] if index is None else index
    bad = copy.copy(d)
    bad.loop = list(d.loop)
    st = d.loop[k]
    bad.loop[k] = Statement(st.target, st.kind, -st.elementwise, st.matvec, st.outer)
    return bad, st.target.name
