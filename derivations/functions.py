"""The elementwise functions a spec may declare, as SymPy functions whose derivatives are written
through their own outputs (sigma' = sigma (1 - sigma), tanh' = 1 - tanh^2).

Each kind carries its closed-form definition so that the derivative rule can be confirmed by SymPy
(:func:`confirm_rules`), and the name of its numeric implementation in the generated code's runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
from sympy.core.function import ArgumentIndexError

from lstm_spec.reference import _runtime
from lstm_spec.spec.functions import KINDS


class Sigmoid(sympy.Function):
    """The logistic function sigma(x) = 1 / (1 + exp(-x)), differentiated as sigma (1 - sigma)."""

    nargs = 1

    def fdiff(self, argindex=1):
        if argindex != 1:
            raise ArgumentIndexError(self, argindex)
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


class ClipMask(sympy.Function):
    """d clip(x, b)/dx: 1 where -b <= x <= b, else 0. At the kinks x = +-b it is 1 (the clip is taken as
    differentiable from inside, as PyTorch's clamp does); the numeric checks keep away from the kinks."""

    nargs = 2

    def fdiff(self, argindex=1):
        return sympy.S.Zero

    def _eval_rewrite_as_Piecewise(self, x, b, **kwargs):
        return sympy.Piecewise((1, (x >= -b) & (x <= b)), (0, True))

    def _latex(self, printer, exp=None):
        x, b = (printer._print(a) for a in self.args)
        return r"\mathbb{1}\left[\left|%s\right| \le %s\right]" % (x, b)


class Clip(sympy.Function):
    """clip(x, b) = min(max(x, -b), b): ONNX's gate clip, TF's cell_clip. Piecewise linear, derivative
    ClipMask(x, b)."""

    nargs = 2

    def fdiff(self, argindex=1):
        if argindex != 1:
            raise ArgumentIndexError(self, argindex)
        return ClipMask(*self.args)

    def _eval_rewrite_as_Piecewise(self, x, b, **kwargs):
        return sympy.Piecewise((-b, x < -b), (x, x <= b), (b, True))

    def _latex(self, printer, exp=None):
        x, b = (printer._print(a) for a in self.args)
        return r"\operatorname{clip}_{%s}\left(%s\right)" % (b, x)


class Exp(sympy.Function):
    """exp(x), kept as an opaque function (SymPy would merge exp(a) exp(b) into exp(a + b)), with
    exp' = exp."""

    nargs = 1

    def fdiff(self, argindex=1):
        return self

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return sympy.exp(arg)

    def _latex(self, printer, exp=None):
        return r"\exp\left(%s\right)" % printer._print(self.args[0])


class UnitSum(sympy.Function):
    """Sum over the units of a vector (a reduction: the per-unit argument, summed). Per unit, the
    derivative of the sum with respect to its argument is 1."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sympy.S.One

    def _latex(self, printer, exp=None):
        return r"\sum_{k} %s" % printer.parenthesize(self.args[0], 1000)


class LogSumExp(sympy.Function):
    """log sum_k exp(x_k), written per unit: its derivative with respect to unit k of its argument is
    the softmax exp(x_k - logsumexp(x)), i.e. it is expressed through the function's own output."""

    nargs = 1

    def fdiff(self, argindex=1):
        return Exp(self.args[0] - self)

    def _latex(self, printer, exp=None):
        return r"\log\sum_{k}\exp\left(%s\right)" % printer._print(self.args[0])


class LogSumExpN(sympy.Function):
    """logsumexp of explicit arguments (the checks' explicit form of LogSumExp)."""

    def fdiff(self, argindex=1):
        return Exp(self.args[argindex - 1] - self)

    def _eval_rewrite_as_exp(self, *args, **kwargs):
        return sympy.log(sum(sympy.exp(a) for a in args))


class UnitCount(sympy.Function):
    """The number of units of a vector expression, as a per-sample value (a reduction with derivative 0).
    Its arguments are the symbols of that expression: per unit they are vectors of N units or per-sample
    values (one unit, broadcast), so N is the largest of their lengths (numerically: the broadcast size of
    their last axes). It appears in the derivative of the mean, 1/N."""

    def fdiff(self, argindex=1):
        return sympy.S.Zero

    def _latex(self, printer, exp=None):
        if hasattr(printer, "_print_UnitCount"):  # the derivation's printer: the dimension's name, H
            return printer._print_UnitCount(self, exp)
        base = r"N_{%s}" % ",".join(printer._print(a) for a in self.args)
        return base if exp is None else r"%s^{%s}" % (base, exp)


def unit_count_of(expr) -> "UnitCount":
    """UnitCount of the symbols of a per-unit expression, in a fixed order."""
    return UnitCount(*sorted(expr.free_symbols, key=lambda s: s.name))


class UnitMean(sympy.Function):
    """Mean over the units of a vector: (1/N) sum_k x_k. Per unit, the derivative of the mean with respect to
    its argument is 1/N, N the number of units of the argument (UnitCount)."""

    nargs = 1

    def fdiff(self, argindex=1):
        return 1 / unit_count_of(self.args[0])

    def _latex(self, printer, exp=None):
        base = r"\operatorname{mean}_{k}\left(%s\right)" % printer._print(self.args[0])
        return base if exp is None else r"%s^{%s}" % (base, exp)


class Rsqrt(sympy.Function):
    """The reciprocal square root 1 / sqrt(x) (layer normalisation's 1 / sqrt(var + eps)), differentiated
    through its own output: rsqrt'(x) = -rsqrt(x)^3 / 2."""

    nargs = 1

    def fdiff(self, argindex=1):
        if argindex != 1:
            raise ArgumentIndexError(self, argindex)
        return -self**3 / 2

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return 1 / sympy.sqrt(arg)

    def _latex(self, printer, exp=None):
        arg = printer._print(self.args[0])
        base = r"\frac{1}{\sqrt{%s}}" % arg
        return base if exp is None else r"\left(%s\right)^{%s}" % (base, exp)


class StopGradient(sympy.Function):
    """stop_gradient(x) = x in value, with derivative 0: what a truncated gradient treats as a constant."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sympy.S.Zero

    def _latex(self, printer, exp=None):
        return r"\operatorname{sg}\left(%s\right)" % printer._print(self.args[0])


@dataclass(frozen=True)
class FunctionKind:
    kind: str
    sympy_function: type
    runtime_name: str  # name of the numeric implementation in lstm_spec.reference._runtime
    definition: object  # closed form, a callable taking a SymPy expression (and the kind's parameters)
    derivative_text: str  # the rule as documented
    parameters: tuple = ()  # names of constant parameters declared with the function (e.g. "bound")
    declarable: bool = True  # False for functions that only appear in derivatives
    reduction: bool = False  # True when the function maps a vector to one value per sample


def _kind(name: str, sympy_function, definition, derivative_text: str) -> FunctionKind:
    """A kind of spec/functions.py (runtime name, parameters, flags) with its SymPy function and rule."""
    base = KINDS[name]
    return FunctionKind(name, sympy_function, base.runtime_name, definition, derivative_text, base.parameters,
                        base.declarable, base.reduction)


FUNCTIONS: dict[str, FunctionKind] = {
    "logistic": _kind("logistic", Sigmoid, lambda x: 1 / (1 + sympy.exp(-x)), "sigma'(x) = sigma(x) (1 - sigma(x))"),
    "tanh": _kind("tanh", sympy.tanh, lambda x: (sympy.exp(x) - sympy.exp(-x)) / (sympy.exp(x) + sympy.exp(-x)),
                  "tanh'(x) = 1 - tanh(x)^2"),
    "identity": _kind("identity", Identity, lambda x: x, "identity'(x) = 1"),
    "clip": _kind("clip", Clip, lambda x, b: sympy.Piecewise((-b, x < -b), (x, x <= b), (b, True)),
                  "clip'(x) = 1 if -b <= x <= b else 0 (1 at the kinks)"),
    "stop_gradient": _kind("stop_gradient", StopGradient, None,
                           "stop_gradient'(x) = 0 (the value passes, the derivative does not)"),
    "exp": _kind("exp", Exp, lambda x: sympy.exp(x), "exp'(x) = exp(x)"),
    "rsqrt": _kind("rsqrt", Rsqrt, lambda x: 1 / sympy.sqrt(x), "rsqrt'(x) = -rsqrt(x)^3 / 2"),
    "sum": _kind("sum", UnitSum, None, "d sum_k x_k / d x_j = 1"),
    "logsumexp": _kind("logsumexp", LogSumExp, None, "d logsumexp(x) / d x_j = exp(x_j - logsumexp(x)) (the softmax)"),
    "mean": _kind("mean", UnitMean, None, "d mean_k x_k / d x_j = 1 / N (N units)"),
    "unit_count": _kind("unit_count", UnitCount, None,
                        "the number of units N of its argument (a constant: derivative 0)"),
    "clip_mask": _kind("clip_mask", ClipMask, None, "the derivative of clip"),
}
assert set(FUNCTIONS) == set(KINDS), "spec/functions.py and the rules here name the same kinds"


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
        if fk.kind == "clip":
            out.append((fk.kind, _confirm_clip(fk)))
            continue
        if fk.reduction:
            out.append((fk.kind, _confirm_reduction(fk)))
            continue
        if fk.kind == "stop_gradient":  # a definition, not a rule: nothing to confirm but that it is 0
            out.append((fk.kind, sympy.diff(fk.sympy_function(x), x)))
            continue
        if not fk.declarable:
            continue
        rule = sympy.diff(fk.sympy_function(x), x)
        closed = sympy.diff(fk.definition(x), x)
        rule_closed = rule.subs(fk.sympy_function(x), fk.definition(x)) if rule.has(fk.sympy_function) else rule
        diff = sympy.simplify((rule_closed - closed).rewrite(sympy.exp))
        out.append((fk.kind, diff))
    return out


def _confirm_clip(fk) -> int:
    """The clip rule against SymPy's derivative of the piecewise definition. Piecewise differences do
    not simplify reliably, so both are compared exactly at points on every piece and at the kinks:
    returns the number of points where they differ."""
    x = sympy.Symbol("x", real=True)
    bad = 0
    for b in (sympy.Rational(1), sympy.Rational(5, 2)):
        rule = sympy.diff(fk.sympy_function(x, b), x).rewrite(sympy.Piecewise)
        closed = sympy.diff(fk.definition(x, b), x)
        value_rule = fk.sympy_function(x, b).rewrite(sympy.Piecewise)
        for point in (-3 * b, -b - sympy.Rational(1, 10**9), -b, -b / 2, 0, b / 3, b,
                      b + sympy.Rational(1, 10**9), 4 * b):
            if rule.subs(x, point) != closed.subs(x, point):
                bad += 1
            if value_rule.subs(x, point) != fk.definition(x, b).subs(x, point):
                bad += 1
    return bad


def _confirm_reduction(fk) -> int:
    """A reduction's per-unit rule against sympy.diff of its closed form on 3 explicit units: returns the
    number of units where they differ (after rewriting in exp and simplifying)."""
    xs = sympy.symbols("x0:3", real=True)
    if fk.kind == "unit_count":  # a constant of the sizes: its derivative must be 0
        return sum(1 for x in xs if sympy.diff(UnitCount(x), x) != 0)
    if fk.kind == "sum":
        closed, explicit = sum(xs), sum(xs)
        rule = [sympy.diff(UnitSum(x), x) for x in xs]  # per unit: 1
    elif fk.kind == "mean":  # per unit 1 / N, N = UnitCount of the argument = 3 here
        closed = explicit = sum(xs) / len(xs)
        rule = [sympy.diff(UnitMean(x), x).subs(UnitCount(x), len(xs)) for x in xs]
    else:
        closed = sympy.log(sum(sympy.exp(x) for x in xs))
        explicit = LogSumExpN(*xs)
        rule = [sympy.diff(LogSumExp(x), x).subs(LogSumExp(x), explicit) for x in xs]
    bad = 0
    for x, r in zip(xs, rule, strict=True):
        want = sympy.diff(closed, x)
        got = r.rewrite(sympy.exp)
        if sympy.simplify(got - want) != 0:
            bad += 1
        if sympy.simplify(sympy.diff(explicit, x).rewrite(sympy.exp) - want) != 0:
            bad += 1
    return bad


# the runtime's object-array branches (reference/_runtime.py) evaluate these on SymPy expressions
_runtime._SYMPY_FUNCTIONS.update({f.__name__: f for f in (Sigmoid, StopGradient, Exp, Rsqrt, LogSumExpN, Clip,
                                                          ClipMask)})
