"""Printing derived expressions: as NumPy code, as plain text and as LaTeX.

A symbol prints as whatever the caller's ``names`` table says (the same SymPy symbol is ``f[t]`` inside
the generated time loop, ``f`` in plain text and ``f_{t}`` in LaTeX). Products print adjoints first,
so a formula reads like the textbook: ``d_z_o = d_o * o * (1 - o)``.
"""

from __future__ import annotations

import sympy
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from .functions import FUNCTIONS, Identity, Sigmoid, UnitCount, UnitSum, kind_of

ADJOINT_KINDS = ("adj", "next", "cot")


class Softmax(sympy.Function):
    """softmax(v) = exp(v - logsumexp(v)), a name the textbook display (render.textbook_statements) gives the
    derivative of a logsumexp; never in the generated code. Its arguments are v and the symbol that holds
    logsumexp(v); :meth:`unfold` gives the expression it stands for."""

    nargs = 2

    def unfold(self):
        from .functions import Exp

        return Exp(self.args[0] - self.args[1])


def unfold(expr):
    """``expr`` with every display-only name (Softmax) replaced by what it stands for."""
    return expr.replace(lambda e: isinstance(e, Softmax), lambda e: e.unfold())


def unit_count_dimension(e, shape_of) -> str:
    """The number of units N of a mean's argument, as the name of the axis it reduces: the dimension of its
    symbols that are vectors ("H"), "1" when all are one value per sample. ``shape_of(symbol)`` gives a
    symbol's dims. (The generated code divides by H, read from the call's dims: no array is read for it.)"""
    named = sorted({shape[0] for shape in map(shape_of, e.args) if shape and shape[0] != "1"})
    if len(named) > 1:  # pragma: no cover - the loader makes an elementwise expression's vectors agree
        raise ValueError(f"a unit count over vectors of different dimensions {named}")
    return named[0] if named else "1"


def reads(expr):
    """The symbols printed code for ``expr`` reads: those of a unit count are not read (it prints as a
    dimension)."""
    counts = expr.atoms(UnitCount)
    if not counts:
        return expr.free_symbols
    return expr.xreplace({u: _UNITS for u in counts}).free_symbols - {_UNITS}


_UNITS = sympy.Symbol("ℕ")  # a placeholder for a unit count, only inside reads()


def reorder(expr, symbols, textbook: bool = False):
    """Rebuild ``expr`` unevaluated with adjoint factors first in products and terms carrying
    incoming adjoints first in sums (printing with order='none' keeps that order). ``textbook``: also
    the positive terms of a sum before the negative ones (``c_new - c[t-1]``, not ``-c[t-1] + c_new``);
    the generated code keeps SymPy's order (its arithmetic, and so its rounding, is not changed)."""

    def rank_factor(f):
        if f.is_Number:
            return 0
        if isinstance(f, sympy.Symbol) and f in symbols.info and symbols.info[f].kind in ADJOINT_KINDS:
            return 1
        if isinstance(f, sympy.Symbol):
            return 2
        return 3

    def walk(e):
        if e.is_Atom:
            return e
        args = [walk(a) for a in e.args]
        if isinstance(e, sympy.Mul):
            order = sorted(range(len(args)), key=lambda k: (rank_factor(e.args[k]), k))
            return sympy.Mul(*[args[k] for k in order], evaluate=False)
        if isinstance(e, sympy.Add):
            terms = list(e.as_ordered_terms())
            incoming = [walk(a) for a in terms if _is_incoming(a, symbols)]
            rest = [a for a in terms if a.is_Number and not _is_incoming(a, symbols)]
            rest += [a for a in terms if not a.is_Number and not _is_incoming(a, symbols)]
            if textbook:
                rest.sort(key=lambda a: bool(a.could_extract_minus_sign()))  # stable: positive terms first
            return sympy.Add(*(incoming + [walk(a) for a in rest]), evaluate=False)
        return e.func(*args, evaluate=False) if isinstance(e, sympy.Pow) else e.func(*args)

    return walk(expr)


def _is_incoming(term, symbols):
    return isinstance(term, sympy.Symbol) and term in symbols.info and symbols.info[term].kind in ("next", "cot", "adj")


class CodePrinter(StrPrinter):
    """NumPy code. Functions print as the runtime's names (sigmoid, tanh)."""

    def __init__(self, names: dict, shape_of=None):
        super().__init__({"order": "none"})
        self.names = names
        self.shape_of = shape_of  # symbol -> its dims, for a unit count (required when one is printed)

    def _print_Symbol(self, s):
        return self.names[s]

    def _print_Function(self, e):
        if isinstance(e, UnitCount):
            return unit_count_dimension(e, self.shape_of)
        return f"{self._function_name(e)}({self._args(e)})"

    def _function_name(self, e):
        return kind_of(e.func).runtime_name

    def _args(self, e):
        """The argument, then any constant parameters (e.g. a clip's bound): numbers, or a [constants] name."""
        extra = [self._print(a) if a.is_Symbol else repr(float(a)) if not a.is_Integer else str(a) for a in e.args[1:]]
        return ", ".join([self._print(e.args[0])] + extra)


    def _print_Rational(self, e):
        return f"({e.p}/{e.q})"

    def _print_Mul(self, e):
        """Factors in the given order, spaced: ``d_o * o[t] * (1 - o[t])``."""
        from sympy.printing.precedence import precedence

        factors = list(e.args)
        sign = ""
        if factors and factors[0] == -1:
            sign, factors = "-", factors[1:]
        num, den = [], []
        for f in factors:
            if f.is_Pow and f.exp.is_Integer and f.exp < 0:
                den.append(sympy.Pow(f.base, -f.exp))
            else:
                num.append(f)
        prec = precedence(e)
        text = " * ".join(self.parenthesize(f, prec, strict=False) for f in num) or "1"
        if den:
            d = " * ".join(self.parenthesize(f, prec, strict=False) for f in den)
            text += " / " + (d if len(den) == 1 and (den[0].is_Atom or den[0].is_Function) else f"({d})")
        return sign + text


class PlainPrinter(CodePrinter):
    """Plain text for people: the spec's function names, '*' for the elementwise product."""

    def __init__(self, names: dict, functions: dict, shape_of=None):
        super().__init__(names, shape_of)
        self.functions = functions  # sympy function class -> spec name

    def _function_name(self, e):
        return self.functions.get(e.func) or kind_of(e.func).runtime_name


    def _print_Rational(self, e):
        return f"{e.p}/{e.q}"

    def _print_Softmax(self, e):
        return f"softmax({self._print(e.args[0])})"


# SymPy dispatches on the class name first: route every function kind (functions.FUNCTIONS) to
# _print_Function (PlainPrinter inherits the routing and names functions its own way)
for _name in sorted({fk.sympy_function.__name__ for fk in FUNCTIONS.values()}):
    setattr(CodePrinter, f"_print_{_name}", CodePrinter._print_Function)


class MathPrinter(LatexPrinter):
    """LaTeX with ⊙ for the elementwise product of vectors."""

    def __init__(self, names: dict, shape_of=None):
        super().__init__({"order": "none", "mul_symbol": None})
        self.names = names
        self.shape_of = shape_of

    def _print_UnitCount(self, e, exp=None):
        dim = unit_count_dimension(e, self.shape_of)
        base = dim if len(dim) == 1 else r"\mathrm{%s}" % dim
        return base if exp is None else "%s^{%s}" % (base, exp)

    def _print_Symbol(self, s, style="plain"):
        return self.names[s]

    def _print_Mul(self, e):
        """Factors joined by ⊙; factors with a negative integer power form a denominator, \\frac{...}{...}
        (LatexPrinter also hands a lone negative power, x^-1, here). A rational coefficient p/q is written
        into the fraction, a minus sign in front: ``-\\frac{δs ⊙ s^3}{2}``, ``\\frac{δv ⊙ e}{2 H}``."""
        factors = list(e.args) if isinstance(e, sympy.Mul) else [e]
        coeff = sympy.Mul(*[f for f in factors if f.is_Number])
        factors = [f for f in factors if not f.is_Number]
        sign = "-" if coeff.is_negative else ""
        if not coeff.is_Rational:  # pragma: no cover - the derivation's numbers are rationals
            return sign + self._print(abs(coeff)) + " " + self._print_Mul(sympy.Mul(*factors, evaluate=False))
        p, q = abs(coeff.p), coeff.q  # an integer coefficient has q = 1
        num = [f for f in factors if not (f.is_Pow and f.exp.is_Integer and f.exp < 0)]
        den = [sympy.Pow(f.base, -f.exp) for f in factors if f.is_Pow and f.exp.is_Integer and f.exp < 0]
        text = r" \odot ".join(self._factor(f) for f in num)
        text = (f"{p} " + text if text else str(p)) if p != 1 else text or "1"
        if den or q != 1:
            below = r" \odot ".join(self._factor(f) for f in den)
            below = (f"{q} " + below if below else str(q)) if q != 1 else below
            text = r"\frac{%s}{%s}" % (text, below)
        return sign + text

    def _print_Softmax(self, e, exp=None):
        return r"\operatorname{softmax}\left(%s\right)" % self._print(e.args[0])

    def _print(self, expr, **kwargs):
        """A sum over units of one quantity without parentheses: Σ_k target_t (UnitSum._latex would add them)."""
        if isinstance(expr, UnitSum) and isinstance(expr.args[0], sympy.Symbol):
            return r"\sum_{k} %s" % self._print(expr.args[0])
        return super()._print(expr, **kwargs)

    def _factor(self, f):
        text = self._print(f)
        return r"\left(%s\right)" % text if isinstance(f, sympy.Add) else text

    def _print_Sigmoid(self, e, exp=None):
        return r"\sigma\left(%s\right)" % self._print(e.args[0])


__all__ = ["CodePrinter", "PlainPrinter", "MathPrinter", "reorder", "unfold", "Softmax", "Sigmoid", "Identity"]


# ----------------------------------------------------------------------------------------- spec ASTs
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 2}


def print_ast(node, fmt: str, name, call, matmul=None) -> str:
    """Print a spec-language tree. ``name(Name) -> str``, ``call(func, arg_text) -> str`` and
    ``matmul(BinOp) -> str`` give the context's spelling of names, function calls and matrix products;
    ``fmt`` is "code" or "latex"."""
    from lstm_spec.spec.language import BinOp, Call, Name, Neg, Num, Pow

    def prec(n):
        if isinstance(n, BinOp):
            return _PREC[n.op]
        if isinstance(n, Neg):
            return 3
        if isinstance(n, Pow):
            return 4
        return 5

    def paren(text):
        return f"({text})" if fmt == "code" else r"\left(%s\right)" % text

    def go(n):
        if isinstance(n, Num):
            v = n.value
            if v.denominator == 1:
                return str(v.numerator)
            if fmt == "code":
                return f"({v.numerator}/{v.denominator})"
            return r"\frac{%d}{%d}" % (v.numerator, v.denominator)
        if isinstance(n, Name):
            return name(n)
        if isinstance(n, Call):
            return call(n.func, go(n.arg))
        if isinstance(n, Neg):
            inner = go(n.operand)
            return "-" + (paren(inner) if prec(n.operand) < 3 else inner)
        if isinstance(n, Pow):
            base = go(n.base)
            base = paren(base) if prec(n.base) < 5 else base
            return f"{base}**{n.exponent}" if fmt == "code" else f"{{{base}}}^{{{n.exponent}}}"
        if isinstance(n, BinOp):
            p = _PREC[n.op]
            if n.op == "@" and matmul is not None:
                return matmul(n)
            left, right = go(n.left), go(n.right)
            if prec(n.left) < p:
                left = paren(left)
            if prec(n.right) < p or (prec(n.right) == p and (n.op in ("-", "/") or n.right.op != n.op)):
                right = paren(right)
            if n.op == "@":
                return f"{left} @ {right}" if fmt == "code" else f"{left} {right}"
            if fmt == "latex":
                if n.op == "*":
                    return rf"{left} \odot {right}"
                if n.op == "/":
                    return r"\frac{%s}{%s}" % (go(n.left), go(n.right))
            return f"{left} {n.op} {right}"
        raise TypeError(n)  # pragma: no cover

    return go(node)
