"""Negative controls: deliberately wrong derivations and generated code, to show each check can fail.

- ``planted_derivation``: a copy of a derivation with one derived formula changed (sign flipped);
- ``mutate_code``: the generated module's text with one line of its backward pass negated, zeroed
  or deleted; ``load_module`` turns any module text into a module without writing a file;
- ``carry`` reads the carry line of a generated backward (``d_h_next, d_c_next = d_h_prev, d_c_prev``) and
  ``mutate_backward`` plants a known bug in a generated backward (a carry not passed on, the t = 0 terms
  dropped). conformance/signatures.py and conformance/explain.py mutate generated code through these: the
  patterns over generated lines live here only.
"""

from __future__ import annotations

import copy
import re
import types
from dataclasses import dataclass

import sympy

from lstm_spec.derivations.reverse import Derivation, Statement

_ASSIGN = re.compile(r"^(\s+)([A-Za-z_][\w\[\] +,]*?) = (.+)$")
_CARRY = re.compile(r"^(\s+)((?:d_\w+_next)(?:, d_\w+_next)*) = (.+)$")


@dataclass(frozen=True)
class Carry:
    """The carry line of a generated backward, ``d_h_next, d_c_next = d_h_prev, d_c_prev``: each state's adjoint
    handed to the earlier step (names on the left, values on the right)."""

    indent: str
    names: tuple
    values: tuple

    def line(self, values) -> str:
        """The line with other values handed on."""
        return f"{self.indent}{', '.join(self.names)} = {', '.join(values)}"


def carry(line: str) -> Carry | None:
    """The carry line ``line`` is, or None."""
    m = _CARRY.match(line)
    if not m:
        return None
    return Carry(m.group(1), tuple(n.strip() for n in m.group(2).split(",")),
                 tuple(v.strip() for v in m.group(3).split(",")))


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
    return next(i for i in backward_lines(text) if carry(lines[i]))


def _no_carry(back: str, state: str) -> str | None:
    """``back`` with state's adjoint zeroed on the first carry line that hands on ``_prev`` values."""
    lines = back.splitlines()
    for k, line in enumerate(lines):
        c = carry(line)
        if c and "_prev" in ", ".join(c.values):
            lines[k] = c.line([f"0 * {v}" if v == f"d_{state}_prev" else v for v in c.values])
            return "\n".join(lines) + "\n"
    return None


def mutate_backward(text: str, how: str) -> str | None:
    """Generated module text with a known bug planted in its backward; None when it has no line to plant it in.
    how: "no_carry:STATE" (that state's adjoint not handed to the earlier step), "t0_recurrent_term" (the U
    gradients without the t = 0 outer product: h0 taken as zero), "loop_skips_t0" (the backward loop stops
    before t = 0)."""
    start = text.index("def backward(")
    head, back = text[:start], text[start:]
    if how.startswith("no_carry:"):
        back = _no_carry(back, how.split(":")[1])
    elif how == "t0_recurrent_term":
        back = back.replace(", h[:-1], axes", ", np.concatenate([0 * h[:1], h[1:-1]]), axes") \
            if ", h[:-1], axes" in back else None
    elif how == "loop_skips_t0":
        loop = "for t in reversed(range(T)):"
        back = back.replace(loop, "for t in reversed(range(1, T)):").replace("np.empty((T, B", "np.zeros((T, B")\
            if loop in back else None
    else:
        raise ValueError(how)
    return None if back is None else head + back


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
