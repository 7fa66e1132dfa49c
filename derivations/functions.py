"""The elementwise functions a spec may declare, as SymPy functions whose derivatives are written
through their own outputs (sigma' = sigma (1 - sigma), tanh' = 1 - tanh^2).

Each kind carries its closed-form definition so that the derivative rule can be confirmed by SymPy
(:func:`confirm_rules`), and the name of its numeric implementation in the generated code's runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy


class Sigmoid(sympy.Function):
    """The logistic function sigma(x) = 1 / (1 + exp(-x)), differentiated as sigma (1 - sigma)."""

    nargs = 1

    def fdiff(self, argindex=1):
        if argindex != 1:
            raise sympy.ArgumentIndexError(self, argindex)
        return self * (1 - self)

    @classmethod
    def eval(cls, arg):
        if arg.is_zero:
            return sympy.Rational(1, 2)
        return None

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return 1 / (1 + sympy.exp(-arg))

    def _eval_evalf(self, prec):
        return self.rewrite(sympy.exp)._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        arg = printer._print(self.args[0])
        base = r"\sigma\left(%s\right)" % arg
        return base if exp is None else r"\sigma^{%s}\left(%s\right)" % (exp, arg)


class Identity(sympy.Function):
    """The identity g(x) = x (for variants without an input or output activation)."""

    nargs = 1

    @classmethod
    def eval(cls, arg):
        return arg


@dataclass(frozen=True)
class FunctionKind:
    kind: str
    sympy_function: type
    runtime_name: str  # name of the numeric implementation in lstm_spec.reference._runtime
    definition: object  # closed form, a callable taking a SymPy expression
    derivative_text: str  # the rule as documented


FUNCTIONS: dict[str, FunctionKind] = {
    "logistic": FunctionKind("logistic", Sigmoid, "sigmoid", lambda x: 1 / (1 + sympy.exp(-x)),
                             "sigma'(x) = sigma(x) (1 - sigma(x))"),
    "tanh": FunctionKind("tanh", sympy.tanh, "tanh", lambda x: (sympy.exp(x) - sympy.exp(-x))
                         / (sympy.exp(x) + sympy.exp(-x)), "tanh'(x) = 1 - tanh(x)^2"),
    "identity": FunctionKind("identity", Identity, "identity", lambda x: x, "identity'(x) = 1"),
}


def kind_of(func) -> FunctionKind:
    for fk in FUNCTIONS.values():
        if func == fk.sympy_function:
            return fk
    raise KeyError(func)


def confirm_rules() -> list[tuple[str, object]]:
    """For every function kind, the symbolic difference between its derivative rule and SymPy's
    derivative of its closed-form definition. Each must simplify to 0."""
    x = sympy.Symbol("x", real=True)
    out = []
    for fk in FUNCTIONS.values():
        rule = sympy.diff(fk.sympy_function(x), x)
        closed = sympy.diff(fk.definition(x), x)
        rule_closed = rule.subs(fk.sympy_function(x), fk.definition(x)) if rule.has(fk.sympy_function) else rule
        diff = sympy.simplify((rule_closed - closed).rewrite(sympy.exp))
        out.append((fk.kind, diff))
    return out
