"""Symbolic checks.

(a) ``check_step``: every derived adjoint of one time step equals the derivative of the explicit forward on
    small explicit sizes (D != H). The scalar differentiated is L = <dy, y_t> + sum_s <d_s_next, s_t>: the
    step's outputs weighted by the adjoints that arrive at them. The adjoint of an intermediate q is dL/dq
    with q cut loose (q a free variable, everything downstream of it recomputed from it).
(b) ``check_unrolled``: the *generated* NumPy code, run on arrays of symbols for T steps, gives exactly the
    derivative of the unrolled scalar loss with respect to every parameter, input and initial state. The
    unrolled loss is built independently of the generated code, by evaluating the spec's equations step by
    step.
Both take the spec's constants ([constants]: a forget bias, a clip bound, an epsilon) as symbols without
gradients, on both sides (the generated module gets them as ``constants=``): what they check holds for every
value of the constants, the defaults and any override included.

Two ways to get the expected derivative and decide equality:
- derivative="reverse" (`lstm-spec verify`): every value of the explicit forward is a node of a tape
  (PointTape) holding its residue modulo 2^61 - 1 at a random point; the expected derivatives are one reverse
  accumulation over the tape (the chain rule ``sympy.diff`` applies, evaluated: sums pass the adjoint on,
  products the other factors, functions their ``fdiff`` rule) and compared with the derived or generated
  values evaluated at the same point. Nothing is expanded or built as a SymPy expression: the cost is linear
  in the number of scalar operations of the explicit forward (polynomial in the spec's size), whatever the
  degree of the polynomials it spells.
- derivative="sympy" (`lstm-spec verify --proof`): ``sympy.diff`` of the explicit SymPy forward, then
  exact="expand": function values are replaced by atoms keyed by their expanded argument, both sides are
  polynomials and ``expand`` of the difference is 0 (a proof), or exact="points": both sides are evaluated
  exactly modulo 2^61 - 1 at random points (ModularPoint). Building and expanding is exponential in the
  depth of a chain of products, so SymPy is used only when the expansion is bounded (``expansion_bound``: at
  most PROOF_MAX_TERMS monomials of degree at most PROOF_MAX_DEGREE); above it the check degrades to the tape
  at random points and says so in its "note".

Function values (sigma(u), tanh(u), ...) are uninterpreted at the points: a pseudo-random residue determined
by the residue of u (function_value), with the two identities SymPy itself applies when it builds an
expression (tanh is odd, sigma(0) = 1/2), so the generated code run through SymPy's functions and the tape
agree on every point.
"""

from __future__ import annotations

import hashlib
import numbers

import numpy as np
import sympy
from sympy.core.parameters import evaluate as sympy_evaluate

from lstm_spec.derivations.functions import (
    Clip,
    ClipMask,
    Exp,
    LogSumExp,
    LogSumExpN,
    Rsqrt,
    Sigmoid,
    StopGradient,
    UnitCount,
    UnitMean,
    UnitSum,
)
from lstm_spec.derivations.reverse import Derivation, Statement
from lstm_spec.derivations.rules import symbol_array
from lstm_spec.reference._runtime import symbolic
from lstm_spec.spec import is_builtin

ATOM_FUNCTIONS = (Sigmoid, sympy.tanh, Clip, ClipMask, Exp, LogSumExpN, StopGradient, Rsqrt)
REDUCTIONS = (UnitSum, LogSumExp, UnitMean, UnitCount)
P = (1 << 61) - 1
# --proof builds, differentiates and expands the step in SymPy only when its expansion (expansion_bound) has
# at most this many monomials and this degree (the built-in cells: at most 5833 monomials, of degree at most 8,
# over two unrolled steps); SymPy's time grows with both (a chain of n squares has degree 2^n: 2x per square).
# A larger step is checked at random points on a tape instead, with a note in the row.
PROOF_MAX_TERMS = 20_000
PROOF_MAX_DEGREE = 16


# ----------------------------------------------------------------------------------------- equality
class Atomizer:
    def __init__(self):
        self.table: dict = {}
        self.memo: dict = {}

    def __call__(self, expr):
        expr = sympy.sympify(expr)
        if expr.is_Atom:
            return expr
        if expr in self.memo:
            return self.memo[expr]
        if isinstance(expr, ATOM_FUNCTIONS):
            key = (expr.func,) + tuple(sympy.expand(self(a)) for a in expr.args)
            if key not in self.table:
                self.table[key] = sympy.Symbol(f"_atom{len(self.table)}")
            out = self.table[key]
        else:
            out = expr.func(*[self(a) for a in expr.args])
        self.memo[expr] = out
        return out


def function_value(func, values: tuple, salt: int) -> int:
    """The residue of an uninterpreted function at residues ``values``: pseudo-random (a keyed hash, the
    same in every process), except for what SymPy evaluates when it builds an expression, so that both sides
    of a comparison agree however they were built: tanh is odd (tanh(-u) becomes -tanh(u)), sigma(0) = 1/2."""
    if func is sympy.tanh:
        v = values[0]
        if v == 0:
            return 0
        if v > P // 2:
            return (-function_value(func, (P - v,), salt)) % P
    if func is Sigmoid and values[0] == 0:
        return pow(2, -1, P)
    text = f"{func.__name__}:{','.join(map(str, values))}:{salt}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") % P


def residue(r) -> int:
    """A rational (SymPy Integer / Rational / Float, Python int / float) modulo P."""
    if isinstance(r, (bool, np.bool_)):
        raise TypeError("a boolean is not a number of the generated code")
    if isinstance(r, (numbers.Integral, np.integer)):
        return int(r) % P
    if isinstance(r, (float, np.floating)) or (isinstance(r, sympy.Basic) and r.is_Float):
        r = exact_constant(r)
    r = sympy.Rational(r)
    return int(r.p) % P * pow(int(r.q) % P, -1, P) % P


class ModularPoint:
    """Exact evaluation of SymPy expressions at a random point modulo the prime 2^61 - 1.

    Every symbol gets a random residue; sigma(u) and tanh(u) are treated as uninterpreted functions
    whose value is a pseudo-random residue determined by the value of u (function_value). Two expressions
    that are equal as polynomials in the symbols and the function values evaluate equally; two that differ
    evaluate equally with probability at most (degree / 2^61) per point (Schwartz-Zippel). The DAG
    is evaluated once per node (memoized), so large unrolled gradients cost little.
    """

    P = P

    def __init__(self, seed: int, symbols: dict | None = None, salt: int | None = None):
        self.rng = np.random.default_rng(seed)
        self.symbols: dict = dict(symbols or {})
        self.memo: dict = {}
        self.salt = int(self.rng.integers(1, 1 << 62)) if salt is None else salt

    def __call__(self, expr) -> int:
        key = id(expr)
        hit = self.memo.get(key)
        if hit is not None:
            return hit[0]
        if expr.is_Symbol:
            if expr not in self.symbols:
                self.symbols[expr] = int(self.rng.integers(1, P))
            v = self.symbols[expr]
        elif expr.is_Number:
            v = residue(expr)
        elif expr.is_Add:
            v = sum(self(a) for a in expr.args) % P
        elif expr.is_Mul:
            v = 1
            for a in expr.args:
                v = v * self(a) % P
        elif expr.is_Pow and expr.exp.is_Integer:
            base = self(expr.base)
            e = int(expr.exp)
            v = pow(base, e, P) if e >= 0 else pow(pow(base, -1, P), -e, P)
        elif isinstance(expr, ATOM_FUNCTIONS):
            v = function_value(expr.func, tuple(self(a) for a in expr.args), self.salt)
        else:
            raise TypeError(f"cannot evaluate {type(expr).__name__} exactly")
        self.memo[key] = (v, expr)  # keep expr alive so its id stays unique
        return v


def exact_constant(f):
    """The rational a float constant of the generated code stands for. Spec constants are decimals or
    small fractions (1/2, 1/3); the generated code carries them as Python floats, which in symbolic
    mode become SymPy Floats: the nearest fraction with a denominator up to 10^6 recovers them when it
    rounds to exactly that float; any other float stands for its own exact binary value."""
    from fractions import Fraction

    exact = Fraction(float(f))
    fr = exact.limit_denominator(10**6)
    if float(fr) != float(f):  # not a small fraction: keep the float's exact binary value, so a
        fr = exact             # perturbed constant such as 1.0000001 is not mistaken for 1
    return sympy.Rational(fr.numerator, fr.denominator)


def equal_at_points(a, b, points) -> bool:
    return all(pt(sympy.sympify(a)) == pt(sympy.sympify(b)) for pt in points)


def comparator(exact: str, seeds=(1, 2)):
    """same(a, b) for the symbolic checks: "expand" proves the difference is 0 (function values as atoms),
    "points" evaluates both exactly at random points modulo 2^61 - 1."""
    if exact == "expand":
        atomize = Atomizer()
        return lambda a, b: difference_is_zero(a, b, atomize)
    if exact == "points":
        points = [ModularPoint(seed) for seed in seeds]
        return lambda a, b: equal_at_points(a, b, points)
    raise ValueError(f"exact: expected 'expand' or 'points', got {exact!r}")


def difference_is_zero(a, b, atomize: Atomizer) -> bool:
    a, b = sympy.sympify(a), sympy.sympify(b)
    a = a.xreplace({f: exact_constant(f) for f in a.atoms(sympy.Float)})
    b = b.xreplace({f: exact_constant(f) for f in b.atoms(sympy.Float)})
    diff = sympy.expand(atomize(a) - atomize(b))
    if diff == 0:
        return True
    # a rational expression (a spec with '/') may need cancellation before it is visibly 0
    return sympy.cancel(sympy.together(diff)) == 0


# ----------------------------------------------------------------------------------------- point tape
class Node:
    """One scalar of a computation on a PointTape: its residue at the tape's point and its place on the tape.
    Arithmetic with numbers, other nodes and SymPy expressions (whose symbols are nodes: ``_sympy_``) records
    a new node; SymPy defers to it (``_op_priority``), so a generated module run on arrays of nodes records
    every operation it makes."""

    __slots__ = ("index", "tape", "value")
    _op_priority = 1000.0

    def __init__(self, tape, index, value):
        self.tape, self.index, self.value = tape, index, value

    def _sympy_(self):
        return self.tape.symbol_of(self)

    def __add__(self, o):
        return self.tape.add(self, o)

    def __radd__(self, o):
        return self.tape.add(o, self)

    def __sub__(self, o):
        return self.tape.add(self, self.tape.neg(o))

    def __rsub__(self, o):
        return self.tape.add(o, self.tape.neg(self))

    def __mul__(self, o):
        return self.tape.mul(self, o)

    def __rmul__(self, o):
        return self.tape.mul(o, self)

    def __truediv__(self, o):
        return self.tape.mul(self, self.tape.inv(o))

    def __rtruediv__(self, o):
        return self.tape.mul(o, self.tape.inv(self))

    def __pow__(self, e):
        return self.tape.power(self, e)

    def __neg__(self):
        return self.tape.neg(self)

    def __pos__(self):
        return self

    def __repr__(self):
        return f"Node#{self.index}={self.value}"


class PointTape:
    """The values of a computation at one random point modulo 2^61 - 1, recorded as a tape (Wengert list):
    each node keeps its operands and its partial derivatives with respect to them, evaluated at the point.
    ``adjoints(L)`` is one reverse accumulation: dL/dn for every node n recorded before L, in one pass.

    Leaves get random residues (``symbol``); constants their exact residue; a function application the
    residue function_value gives, and as partials its SymPy derivative rule ``F.fdiff(k)`` evaluated at the
    point (the rule ``sympy.diff`` applies)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.salt = int(self.rng.integers(1, 1 << 62))
        self.values: list[int] = []
        self.operands: list[tuple] = []
        self.partials: list[tuple] = []
        self.constants: dict = {}  # index of a constant node -> its SymPy number
        self._const_nodes: dict = {}
        self._symbols: dict = {}  # SymPy stand-in symbol -> node (for SymPy functions applied to nodes)
        self._symbol_of: dict = {}
        self._converted: dict = {}  # id of a SymPy expression -> (its node, the expression, kept alive)

    # recording
    def _record(self, value, operands=(), partials=()) -> Node:
        self.values.append(value)
        self.operands.append(operands)
        self.partials.append(partials)
        return Node(self, len(self.values) - 1, value)

    def symbol(self, name=None) -> Node:
        """A leaf: a fresh variable with a random residue."""
        return self._record(int(self.rng.integers(1, P)))

    def const(self, number) -> Node:
        if isinstance(number, (float, np.floating)) or (isinstance(number, sympy.Basic) and number.is_Float):
            number = exact_constant(number)
        elif isinstance(number, (numbers.Integral, np.integer)) and not isinstance(number, (bool, np.bool_)):
            number = sympy.Integer(int(number))
        elif not (isinstance(number, sympy.Basic) and number.is_Rational):
            raise TypeError(f"cannot evaluate {type(number).__name__} {number!r} exactly")
        node = self._const_nodes.get(number)
        if node is None:
            node = self._const_nodes[number] = self._record(residue(number))
            self.constants[node.index] = number
        return node

    def fresh(self, x) -> Node:
        """A new node equal to x (derivative 1): the value of one named quantity, whose adjoint is its own."""
        x = self.lift(x)
        return self._record(x.value, (x.index,), (1,))

    def lift(self, x) -> Node:
        if isinstance(x, Node):
            if x.tape is not self:
                raise ValueError("a node of another tape")
            return x
        if isinstance(x, sympy.Basic) and not x.is_Number:
            return self.from_sympy(x)
        if isinstance(x, np.ndarray) and x.shape == ():
            return self.lift(x[()])
        return self.const(x)

    # arithmetic
    def add(self, a, b) -> Node:
        a, b = self.lift(a), self.lift(b)
        return self._record((a.value + b.value) % P, (a.index, b.index), (1, 1))

    def neg(self, a) -> Node:
        a = self.lift(a)
        return self._record(-a.value % P, (a.index,), (P - 1,))

    def mul(self, a, b) -> Node:
        a, b = self.lift(a), self.lift(b)
        return self._record(a.value * b.value % P, (a.index, b.index), (b.value, a.value))

    def inv(self, a) -> Node:
        a = self.lift(a)
        if a.value == 0:
            raise ZeroDivisionError("division by a value that is 0 at the random point")
        v = pow(a.value, -1, P)
        return self._record(v, (a.index,), (-v * v % P,))

    def power(self, a, e) -> Node:
        if isinstance(e, sympy.Basic):
            if not e.is_Integer:
                raise TypeError(f"cannot evaluate the power {e} exactly")
            e = int(e)
        if not isinstance(e, (numbers.Integral, np.integer)):
            raise TypeError(f"cannot evaluate the power {e!r} exactly")
        a, e = self.lift(a), int(e)
        if e < 0:
            return self.power(self.inv(a), -e)
        if e == 0:
            return self.const(1)
        return self._record(pow(a.value, e, P), (a.index,), (e * pow(a.value, e - 1, P) % P,))

    def apply(self, func, args) -> Node:
        args = [self.lift(a) for a in args]
        values = tuple(a.value for a in args)
        partials = tuple(0 if a.index in self.constants else _rule_at(func, k, values, self.salt)
                         for k, a in enumerate(args))
        return self._record(function_value(func, values, self.salt), tuple(a.index for a in args), partials)

    # SymPy interplay
    def symbol_of(self, node: Node):
        sym = self._symbol_of.get(node.index)
        if sym is None:
            sym = sympy.Dummy(f"n{node.index}")
            self._symbol_of[node.index], self._symbols[sym] = sym, node
        return sym

    def from_sympy(self, expr) -> Node:
        """A SymPy expression whose symbols are nodes' stand-ins (a SymPy function applied to nodes), evaluated
        (built or not) node by node: each subexpression once per tape, iteratively (any depth)."""
        expr = sympy.sympify(expr)
        stack = [expr]
        while stack:
            e = stack[-1]
            if id(e) in self._converted:
                stack.pop()
                continue
            todo = [a for a in _operands(e) if id(a) not in self._converted]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            self._converted[id(e)] = (self._convert(e, [self._converted[id(a)][0] for a in _operands(e)]), e)
        return self._converted[id(expr)][0]

    def _convert(self, e, args) -> Node:
        if e.is_Symbol:
            if e not in self._symbols:
                raise TypeError(f"cannot evaluate the free symbol {e} at the point")
            return self._symbols[e]
        if e.is_Number:
            return self.const(e)
        if e.is_Add or e.is_Mul:
            out = args[0]
            for a in args[1:]:
                out = self.add(out, a) if e.is_Add else self.mul(out, a)
            return out
        if e.is_Pow:
            return self.power(args[0], e.exp)
        if isinstance(e, ATOM_FUNCTIONS):
            return self.apply(e.func, args)
        raise TypeError(f"cannot evaluate {type(e).__name__} exactly")

    def value_of(self, x) -> int:
        return self.lift(x).value

    # reverse accumulation
    def adjoints(self, L) -> list[int]:
        """dL/dn for every node n recorded up to L (index -> residue), by one backward pass over the tape."""
        L = self.lift(L)
        adj = [0] * (L.index + 1)
        adj[L.index] = 1
        operands, partials = self.operands, self.partials
        for i in range(L.index, -1, -1):
            a = adj[i]
            if a:
                for j, d in zip(operands[i], partials[i], strict=True):
                    adj[j] = (adj[j] + a * d) % P
        return adj


def _operands(e) -> tuple:
    """The subexpressions from_sympy evaluates first: none for a symbol, a number, or a power's exponent."""
    if e.is_Symbol or e.is_Number:
        return ()
    return (e.base,) if e.is_Pow else e.args


_RULES: dict = {}


def _rule_at(func, k: int, values: tuple, salt: int) -> int:
    """F.fdiff(k + 1) (SymPy's derivative rule, through function_value) evaluated at the arguments' residues;
    0 for an argument F is not differentiated by (a clip's bound)."""
    key = (func, len(values), k)
    if key not in _RULES:
        us = sympy.symbols(f"_u0:{len(values)}", cls=sympy.Dummy)
        try:
            _RULES[key] = (us, func(*us).fdiff(k + 1))
        except sympy.core.function.ArgumentIndexError:
            _RULES[key] = (us, sympy.S.Zero)
    us, rule = _RULES[key]
    return ModularPoint(0, symbols=dict(zip(us, values, strict=True)), salt=salt)(rule)


# ----------------------------------------------------------------------------------------- cost bound
class TermBound:
    """Upper bounds on the size of an expression once expanded, function values as atoms (as the Atomizer
    makes them; each function's argument is expanded on its own, ``peak`` keeps the largest): its number of
    monomials and its degree, capped at CAP. Computed in one cheap pass over the explicit forward
    (ExplicitStep with this as its algebra): what --proof would have SymPy build, differentiate and expand."""

    CAP = 10**12

    def __init__(self):
        self.peak = (1, 1)

    def symbol(self, name=None):
        return _Terms(self, 1, 1)

    def const(self, number):
        return _Terms(self, 1, 0)

    def fresh(self, x):
        return self.lift(x)

    def lift(self, x):
        return x if isinstance(x, _Terms) else _Terms(self, 1, 0)

    def apply(self, func, args):
        for a in args:
            a = self.lift(a)
            self.peak = (max(self.peak[0], a.n), max(self.peak[1], a.deg))
        return _Terms(self, 1, 1)


class _Terms:
    __slots__ = ("alg", "deg", "n")

    def __init__(self, alg, n, deg):
        self.alg, self.n, self.deg = alg, min(n, TermBound.CAP), min(deg, TermBound.CAP)

    def __add__(self, o):
        o = self.alg.lift(o)
        return _Terms(self.alg, self.n + o.n, max(self.deg, o.deg))

    __radd__ = __sub__ = __rsub__ = __add__

    def __mul__(self, o):
        o = self.alg.lift(o)
        return _Terms(self.alg, self.n * o.n, self.deg + o.deg)

    __rmul__ = __truediv__ = __rtruediv__ = __mul__

    def __pow__(self, e):
        e = abs(int(e))
        n = self.n ** e if e * self.n.bit_length() < 4096 else TermBound.CAP
        return _Terms(self.alg, n, self.deg * e)

    def __neg__(self):
        return self


def expansion_bound(d: Derivation, sizes: dict | None = None, steps: int = 1) -> tuple[int, int]:
    """Upper bounds on (monomials, degree) of the explicit forward of ``steps`` steps (its loss and every
    function argument), expanded: what --proof would have to build and expand."""
    alg = TermBound()
    sizes = {**(sizes or _default_sizes(d.cell)), "1": 1}
    ex = ExplicitStep(d, sizes, alg, symbolic_constants(d.cell, alg))
    cell, S = d.cell, d.symbols
    state = {n: _vec(n, sizes[q.shape[0]], alg) for n, q in cell.states.items()}
    total = alg.const(0)
    for _ in range(steps):
        env = ex.run({n: _vec(n, sizes[q.shape[0]], alg) for n, q in cell.inputs.items()}, state)
        state = {n: env[S.value(n)] for n in cell.states}
        for name in [cell.output, *cell.states]:
            total = total + sum((alg.symbol() * v for v in env[S.value(name)]), alg.const(0))
    return max(alg.peak[0], total.n), max(alg.peak[1], total.deg)


def _proof_feasible(bound: tuple[int, int]) -> bool:
    return bound[0] <= PROOF_MAX_TERMS and bound[1] <= PROOF_MAX_DEGREE


def _not_a_proof(bound: tuple[int, int]) -> str:
    return (f"not a proof: expanded, the step would have up to {bound[0]:.1e} monomials of degree up to "
            f"{bound[1]:.1e} (limits {PROOF_MAX_TERMS} and {PROOF_MAX_DEGREE}); checked by exact evaluation at 2 "
            "random points mod 2^61 - 1 instead")


# ----------------------------------------------------------------------------------------- explicit
class SympyAlgebra:
    """The explicit forward as SymPy expressions (what --proof differentiates and expands)."""

    def symbol(self, name):
        return sympy.Symbol(name)  # no assumptions, like symbol_array (see there why)

    def const(self, number):
        return number

    def fresh(self, x):
        return x

    def apply(self, func, args):
        return func(*args)


SYMPY = SympyAlgebra()


class Mat(tuple):
    """A matrix of explicit scalars, as a tuple of rows."""

    @property
    def T(self):
        return Mat(tuple(col) for col in zip(*self, strict=True))


def _is_matrix(v) -> bool:
    return isinstance(v, (Mat, sympy.MatrixBase))


def _as_mat(v) -> Mat:
    return v if isinstance(v, Mat) else Mat(tuple(row) for row in v.tolist())


def _flat(v) -> list:
    return [x for row in _as_mat(v) for x in row] if _is_matrix(v) else list(v)


def _matvec(M, v) -> list:
    return [sum((m * x for m, x in zip(row, v, strict=True)), 0) for row in _as_mat(M)]


def _vec(prefix, n, alg=SYMPY):
    return [alg.symbol(f"{prefix}_{k}") for k in range(n)]


def _mat(prefix, m, n, alg=SYMPY):
    return Mat(tuple(alg.symbol(f"{prefix}_{i}_{j}") for j in range(n)) for i in range(m))


def symbolic_constants(cell, alg=SYMPY) -> dict:
    """The spec's constants as fresh symbols of ``alg`` (name -> symbol): the symbolic checks hold for every
    value of them."""
    return {name: alg.symbol(f"const_{name}") for name in cell.constants}


class ExplicitStep:
    """The forward equations of one step (one sample) on explicit values for given sizes. A vector is a
    list of per-unit scalars; a per-sample value (shape ("1",)) a list of one, which broadcasts; a matrix
    parameter a Mat (or a SymPy Matrix). The scalars are those of ``alg``: SymPy expressions (SYMPY), nodes
    of a PointTape, or TermBound counts."""

    def __init__(self, d: Derivation, sizes: dict, alg=SYMPY, constants: dict | None = None):
        """constants: the values of the spec's [constants] (scalars of ``alg``; the checks give symbols, so that
        what they check holds for every value); None: their defaults, what a module runs with by default."""
        self.d, self.sizes, self.alg = d, {**sizes, "1": 1}, alg
        cell, S = d.cell, d.symbols
        self.leaf = {}  # symbol -> list of per-unit scalars (vectors) / Mat (matrix params)
        for name, q in cell.parameters.items():
            dims = [self.sizes[x] for x in q.shape]
            self.leaf[S.param(name)] = _mat(name, *dims, alg) if len(dims) == 2 else _vec(name, dims[0], alg)
        self.constants = {S.const(name): [constants[name] if constants is not None else
                                          alg.const(exact_constant(c.value))] for name, c in cell.constants.items()}

    def size(self, shape):
        return self.sizes[shape[0]]

    def run(self, inputs: dict, prev: dict, cut: dict | None = None) -> dict:
        """inputs: name -> vector; prev: state -> vector; cut: symbol -> free vector replacing it.
        Returns symbol -> per-unit list for every value, prev, term and parameter. Every value and term is
        a fresh scalar of the algebra (on a tape: its own node, whose adjoint is the cut derivative)."""
        d, S, alg = self.d, self.d.symbols, self.alg
        cut = cut or {}
        env = {**self.constants, **self.leaf}
        for n, v in inputs.items():
            env[S.value(n)] = v
        for n, v in prev.items():
            env[S.prev(n)] = v
        env.update({k: v for k, v in cut.items() if k in env})
        for fe in d.forward:
            for s in sorted(fe.expr.free_symbols, key=lambda s: s.name):
                info = S.info[s]
                if info.kind == "term" and s not in env:
                    operand = S.prev(info.operand) if info.prev else (
                        S.param(info.operand) if info.operand in d.cell.parameters else S.value(info.operand))
                    env[s] = cut.get(s) or [alg.fresh(u) for u in _matvec(env[S.param(info.matrix)], env[operand])]
            lhs = S.value(fe.lhs)
            if lhs in cut:
                env[lhs] = cut[lhs]
                continue
            env[lhs] = [alg.fresh(explicit(fe.expr, env, k, alg)) for k in range(self.size(fe.shape))]
        return env


def _units(expr, env) -> int:
    """How many units an expression ranges over: the longest vector among its symbols."""
    n = 1
    for s in expr.free_symbols:
        v = env[s]
        if not _is_matrix(v):
            n = max(n, len(v))
    return n


def explicit(expr, env, k, alg=SYMPY):
    """Unit k of a per-unit expression on explicit values: the expression evaluated with the algebra's
    operations (never substituted into and expanded). Reductions (sum, mean, logsumexp) range over the units
    of their argument, a unit count is the length of its longest argument, and a per-sample value
    broadcasts to every unit. Each subexpression is evaluated once per unit and each reduction once (its value
    is the same for every unit): nested reductions cost units x size, not units^depth."""
    memo: dict = {}

    def ev(e, k):
        key = (id(e), None if isinstance(e, REDUCTIONS) else k)
        if key not in memo:
            memo[key] = (_ev(e, k), e)
        return memo[key][0]

    def _ev(e, k):
        if e.is_Symbol:
            v = env[e]
            return v if _is_matrix(v) else (v[k] if len(v) > 1 else v[0])
        if e.is_Number:
            return alg.const(e)
        if isinstance(e, UnitCount):
            return alg.const(sympy.Integer(_units(sympy.Tuple(*e.args), env)))
        if isinstance(e, (UnitSum, LogSumExp, UnitMean)):
            inner = e.args[0]
            values = [ev(inner, j) for j in range(_units(inner, env))]
            if isinstance(e, LogSumExp):
                return alg.apply(LogSumExpN, values)
            total = sum(values[1:], values[0])
            return total / alg.const(sympy.Integer(len(values))) if isinstance(e, UnitMean) else total
        args = [ev(a, k) for a in e.args]
        if e.is_Add:
            return sum(args[1:], args[0])
        if e.is_Mul:
            out = args[0]
            for a in args[1:]:
                out = out * a
            return out
        if e.is_Pow:
            return args[0] ** e.exp
        if isinstance(e, ATOM_FUNCTIONS):
            return alg.apply(e.func, args)
        raise TypeError(f"cannot make {type(e).__name__} explicit")

    return ev(expr, k)


# ----------------------------------------------------------------------------------------- (a)
def check_step(d: Derivation, sizes: dict | None = None, exact: str = "expand", stop_after: int | None = None,
               only=None, derivative: str = "sympy") -> dict:
    """Returns {"error": number of adjoints that differ, "checked": entries compared, "failures": [names]}
    and, when a proof was asked for but not attempted, "note" saying so.

    derivative="sympy": the expected adjoints are ``sympy.diff`` of the explicit forward; then
    exact="expand": the difference expands to 0 (a proof), exact="points": exact evaluation at two random
    points modulo 2^61 - 1 (ModularPoint); negative controls use it with stop_after=1. Attempted only when
    the expansion is bounded (_proof_feasible(expansion_bound)); otherwise as derivative="reverse".
    derivative="reverse": the explicit forward is evaluated on a PointTape at two random points, and every
    expected adjoint comes from one reverse accumulation over it (linear in the forward's size).
    only: restrict to the adjoints with these names, e.g. {"δz_f"} (a negative control checks the planted one)."""
    if derivative not in ("sympy", "reverse"):
        raise ValueError(f"derivative: expected 'sympy' or 'reverse', got {derivative!r}")
    sizes = sizes or _default_sizes(d.cell)
    if derivative == "sympy":
        bound = expansion_bound(d, sizes)
        if _proof_feasible(bound):
            return _step_by_sympy(d, sizes, exact, stop_after, only)
    res = _step_at_points(d, sizes, stop_after, only)
    if derivative == "sympy":
        res["note"] = _not_a_proof(bound)
    return res


def _step_leaves(d: Derivation, sizes: dict, alg):
    """The explicit step's inputs, previous states and the adjoints arriving at its outputs (seeds)."""
    cell, S = d.cell, d.symbols
    inputs = {n: _vec(n, sizes[q.shape[0]], alg) for n, q in cell.inputs.items()}
    prev = {n: _vec(f"{n}_prev", sizes[q.shape[0]], alg) for n, q in cell.states.items()}
    seeds = {S.next(n): _vec(f"d{n}_next", sizes[q.shape[0]], alg) for n, q in cell.states.items()}
    out_size = {**sizes, "1": 1}[next(fe.shape for fe in d.forward if fe.lhs == cell.output)[0]]
    seeds[S.cot()] = _vec("dy", out_size, alg)
    return inputs, prev, seeds


def _step_loss(d: Derivation, env: dict, seeds: dict):
    """L = <dy, y_t> + sum_s <d_s_next, s_t> on the explicit step."""
    cell, S = d.cell, d.symbols
    total = sum(a * b for a, b in zip(seeds[S.cot()], env[S.value(cell.output)], strict=True))
    for n in cell.states:
        total += sum(a * b for a, b in zip(seeds[S.next(n)], env[S.value(n)], strict=True))
    return total


def _derived_step(d: Derivation, base: dict, seeds: dict, alg) -> dict:
    """The derived statements evaluated on the explicit forward."""
    S = d.symbols
    derived = {**base, **seeds}
    for st in d.statements:
        info = S.info[st.target]
        n = len(base[info.of]) if info.kind == "adj" and not _is_matrix(base[info.of]) else 1
        if info.kind == "cse":
            n = _units(st.elementwise, derived)
        derived[st.target] = _evaluate_statement(st, derived, S, n, alg)
    return derived


def _step_at_points(d: Derivation, sizes: dict, stop_after, only) -> dict:
    """Check (a) on a PointTape at the points of seeds 3 and 4: the adjoint of each value's node (one
    reverse accumulation from L) against the derived statement evaluated at the same point."""
    S = d.symbols
    differ, checked, shown = set(), {}, set()
    for seed in (3, 4):
        tape = PointTape(seed)
        inputs, prev, seeds = _step_leaves(d, sizes, tape)
        base = ExplicitStep(d, sizes, tape, symbolic_constants(d.cell, tape)).run(inputs, prev)
        adj = tape.adjoints(_step_loss(d, base, seeds))
        derived = _derived_step(d, base, seeds, tape)
        for sym, a in d.adjoint_of.items():
            if only is not None and a.name not in only:
                continue
            got = [tape.value_of(g) for g in _flat(derived[a])]
            checked[sym] = len(got)
            if [adj[n.index] for n in _flat(base[sym])] != got:
                differ.add(sym)
        if only is None:
            shown |= set(displayed_differ(d, derived, lambda a, b, tp=tape: tp.value_of(a) == tp.value_of(b), tape))
    failures = [S.info[s].name for s in d.adjoint_of if s in differ][:stop_after or None]
    failures += sorted(shown)
    return {"error": len(failures), "checked": sum(checked.values()), "failures": failures}


def _step_by_sympy(d: Derivation, sizes: dict, exact: str, stop_after, only) -> dict:
    """Check (a) by sympy.diff: for each adjoint, the forward is cut at its quantity (free symbols in its
    place, everything downstream recomputed) and L differentiated by them, entry by entry."""
    cell, S = d.cell, d.symbols
    ex = ExplicitStep(d, sizes, constants=symbolic_constants(cell))
    inputs, prev, seeds = _step_leaves(d, sizes, SYMPY)
    base = ex.run(inputs, prev)
    derived = _derived_step(d, base, seeds, SYMPY)
    same = comparator(exact, seeds=(3, 4))
    failures, checked = [], 0
    for sym, adj in d.adjoint_of.items():
        if stop_after and len(failures) >= stop_after:
            break
        if only is not None and adj.name not in only:
            continue
        info, value = S.info[sym], base[sym]
        if _is_matrix(value):
            free = _mat(f"free_{info.name}", len(_as_mat(value)), len(_as_mat(value)[0]))
        else:
            free = _vec(f"free_{info.name.replace('@', '_')}", len(value))
        if info.kind in ("value", "term") and info.name not in cell.inputs:
            env = ex.run(inputs, prev, cut={sym: free})
        elif info.kind == "param":
            saved = ex.leaf
            ex.leaf = {**saved, sym: free}
            env = ex.run(inputs, prev)
            ex.leaf = saved
        else:  # an input or a previous state: a leaf given to run()
            ins = {**inputs, info.name: free} if info.kind == "value" else inputs
            prv = {**prev, info.name: free} if info.kind == "prev" else prev
            env = ex.run(ins, prv)
        # entry by entry (a matrix row by row): d L / d free, at free = the value it was cut from
        L, free, got = _step_loss(d, env, seeds), _flat(free), _flat(derived[adj])
        at = dict(zip(free, _flat(value), strict=True))
        for f, g in zip(free, got, strict=True):
            checked += 1
            if not same(g, sympy.diff(L, f).xreplace(at)):
                failures.append(info.name)
                break
    if only is None:
        failures += displayed_differ(d, derived, same, SYMPY)
    return {"error": len(failures), "checked": checked, "failures": failures}


def displayed_differ(d: Derivation, derived: dict, same, alg=SYMPY) -> list[str]:
    """(a) for what people read: every statement of the textbook form (render.textbook_statements: temporaries
    and aliases written in place, loss layers in closed form, ...) evaluated on the explicit step equals the
    derived statement of the same target there (``derived``: _derived_step), entry by entry (``same``). Since
    (a) proves the derived statements, this proves the displayed ones. Returns "shown <name>" per difference."""
    from lstm_spec.derivations.printing import unfold
    from lstm_spec.derivations.render import textbook_statements

    S, out = d.symbols, []
    original = {st.target: st for st in d.statements}
    for st in textbook_statements(d):
        if st == original.get(st.target):
            continue  # printed as derived
        want = derived[st.target]
        n = 1 if _is_matrix(want) else len(want)
        shown = Statement(st.target, st.kind, unfold(st.elementwise), st.matvec, st.outer)
        got = _evaluate_statement(shown, derived, S, n, alg)
        if not all(same(a, b) for a, b in zip(_flat(got), _flat(want), strict=True)):
            out.append(f"shown {S.info[st.target].name}")
    return out


def _evaluate_statement(st, env, S, n, alg=SYMPY):
    """One derived statement on explicit per-unit values (one sample, one step); n units."""
    if st.kind == "param_matrix":
        total = None
        for dl, v in st.outer:
            term = [[a * b for b in env[v]] for a in env[dl]]
            total = term if total is None else [[x + y for x, y in zip(r, s, strict=True)]
                                                for r, s in zip(total, term, strict=True)]
        return Mat(tuple(r) for r in total)
    parts = [alg.const(sympy.S.Zero)] * n
    for matrix, dl in st.matvec:
        contrib = _matvec(_as_mat(env[S.param(matrix)]).T, env[dl])
        parts = [a + b for a, b in zip(parts, contrib, strict=True)]
    if st.elementwise != 0:
        parts = [a + explicit(st.elementwise, env, k, alg) for k, a in enumerate(parts)]
    return parts


# Cells whose one-step check (a) does not finish at the default sizes. lstm_layer_norm: with H = 2 every
# unit depends on every other through three means and variances, and sympy.diff of the explicit step
# spends its time deciding whether huge products are zero (> 20 minutes for one adjoint). With H = 1 the
# two gate normalisations still reduce over 4H = 4 units; the cell-state normalisation (over H units) is
# checked symbolically with N = 3 by the layer-normalised RNN of tests/reference/test_regularisation.py, and
# numerically (complex step, finite differences, PyTorch's layer_norm) with H up to 4.
STEP_SIZES = {"lstm_layer_norm": {"D": 1, "H": 1}}


def _default_sizes(cell) -> dict:
    """Small explicit sizes with D != H: inputs' dimension 3, every other dimension 2 (STEP_SIZES aside)."""
    if cell.name in STEP_SIZES and is_builtin(cell):
        return {**STEP_SIZES[cell.name], "1": 1}
    sizes = {}
    for name, q in cell.inputs.items():
        if name not in cell.masks:  # a mask (dropout, zoneout) on the hidden units keeps H != D
            sizes[q.shape[-1]] = 3
    sizes["1"] = 1
    for d in cell.dimensions:
        sizes.setdefault(d, 2)
    return sizes


# ----------------------------------------------------------------------------------------- (b)
def check_unrolled(d: Derivation, module, T: int = 2, B: int = 1, sizes: dict | None = None,
                   exact: str = "points", stop_after: int | None = None, derivative: str = "sympy") -> dict:
    """Run the generated module on symbols and compare every gradient entry with the derivative of the
    unrolled loss. Returns {"error": entries that differ (or inf on an exception), "checked": n, "failures"}
    and, when sympy.diff was asked for but not attempted, "note" saying so.

    derivative="sympy": the module runs on SymPy symbols, the expected gradient is sympy.diff of the unrolled
    loss; exact="expand": the difference of the two expressions is expanded (after replacing function
    values by atoms) and must be 0: a proof, slow beyond T = 2. exact="points": both are evaluated
    exactly at two random points modulo 2^61 - 1 (see ModularPoint). Attempted only when the unrolled loss's
    expansion is bounded (_proof_feasible(expansion_bound)); otherwise as derivative="reverse".
    derivative="reverse": the module runs on the nodes of a PointTape (every operation it makes recorded at
    the point) and the expected gradient of every leaf comes from one reverse accumulation over the
    independently built unrolled loss on the same tape.
    stop_after: stop after that many differing entries (negative controls need only one)."""
    if derivative not in ("sympy", "reverse"):
        raise ValueError(f"derivative: expected 'sympy' or 'reverse', got {derivative!r}")
    sizes = {**(sizes or _default_sizes(d.cell)), "1": 1}
    if derivative == "sympy":
        bound = expansion_bound(d, sizes, steps=T)
        if _proof_feasible(bound):
            return _unrolled_by_sympy(d, module, T, B, sizes, exact, stop_after)
    res = _unrolled_at_points(d, module, T, B, sizes, stop_after)
    if derivative == "sympy":
        res["note"] = _not_a_proof(bound)
    return res


def _leaf_array(alg, prefix, shape):
    if alg is SYMPY:
        return symbol_array(prefix, shape)
    out = np.empty(shape, dtype=object)
    for idx in np.ndindex(shape):
        out[idx] = alg.symbol(f"{prefix}_{'_'.join(map(str, idx))}")
    return out


def _unrolled_arrays(sig, sizes: dict, T: int, B: int, alg) -> dict:
    """The leaves of the unrolled check: params, seq, init, dy, d_final (arrays of the algebra's symbols)."""

    def dims(ds):
        return tuple(sizes[x] for x in ds)

    return {"constants": {n: alg.symbol(f"const_{n}") for n in sig.constants},
            "params": {n: _leaf_array(alg, n, dims(ds)) for n, ds in sig.parameters.items()},
            "seq": {n: _leaf_array(alg, n, (T, B) + dims(ds)) for n, ds in sig.inputs.items()},
            "init": {n: _leaf_array(alg, f"{n}0", (B,) + dims(ds)) for n, ds in sig.states.items()},
            "dy": _leaf_array(alg, "dy", (T, B) + dims(sig.output_dims)),
            "d_final": {n: _leaf_array(alg, f"d{n}T", (B,) + dims(ds)) for n, ds in sig.states.items()}}


def _unrolled_loss(d: Derivation, sizes: dict, a: dict, T: int, B: int, alg):
    """The unrolled scalar loss, built independently of the generated code: the spec's equations evaluated
    step by step, per sample."""
    cell, S = d.cell, d.symbols
    ex = ExplicitStep(d, sizes, alg, a["constants"])  # the same symbols the module gets
    ex.leaf = {S.param(n): (Mat(tuple(map(tuple, v))) if v.ndim == 2 else list(v)) for n, v in a["params"].items()}
    L = alg.const(sympy.S.Zero)
    for b in range(B):
        state = {n: list(a["init"][n][b]) for n in cell.states}
        for t in range(T):
            env = ex.run({n: list(a["seq"][n][t, b]) for n in cell.inputs}, state)
            L += sum(u * y for u, y in zip(a["dy"][t, b], env[S.value(cell.output)], strict=True))
            state = {n: env[S.value(n)] for n in cell.states}
        for n in cell.states:
            L += sum(u * s for u, s in zip(a["d_final"][n][b], state[n], strict=True))
    return L


def _run_module(module, a: dict, build: bool = True) -> dict:
    """forward and backward of the module on the leaves. build=False (on a tape): what the runtime's SymPy
    functions return and any arithmetic among those is left unevaluated, so SymPy never simplifies (asks
    assumptions of) a deep expression; the tape evaluates it node by node when it meets a node."""
    with symbolic(), sympy_evaluate(build):
        _, _, cache = module.forward(a["params"], **a["seq"], **{f"{s}0": v for s, v in a["init"].items()},
                                     **({"constants": a["constants"]} if a["constants"] else {}))
        return module.backward(cache, a["dy"], a["d_final"])


def _entries(a: dict, grads: dict):
    """(name, leaf, the generated code's gradient of it) for every entry; failures for missing gradients."""
    leaves = [(n, v) for n, v in a["params"].items()] + [(n, v) for n, v in a["seq"].items()]
    leaves += [(f"{s}0", v) for s, v in a["init"].items()]
    entries, failures = [], []
    for key, arr_ in leaves:
        got = grads.get(key)
        if got is None or np.shape(got) != arr_.shape:
            failures.append(f"{key}: missing or wrong shape")
            continue
        entries += [(f"{key}{list(idx)}", arr_[idx], got[idx]) for idx in np.ndindex(arr_.shape)]
    return entries, failures


def _broken(exc) -> dict:  # a broken generated module fails the check, it does not crash it
    return {"error": float("inf"), "checked": 0, "failures": [f"{type(exc).__name__}: {exc}"]}


def _unrolled_at_points(d: Derivation, module, T, B, sizes, stop_after) -> dict:
    differ, failures, entries = set(), [], []
    for seed in (1, 2):
        tape = PointTape(seed)
        a = _unrolled_arrays(module.SIGNATURE, sizes, T, B, tape)
        adj = tape.adjoints(_unrolled_loss(d, sizes, a, T, B, tape))
        try:
            entries, failures = _entries(a, _run_module(module, a, build=False))
            differ |= {k for k, (_, leaf, g) in enumerate(entries) if adj[leaf.index] != tape.value_of(g)}
        except Exception as exc:
            return _broken(exc)
    failures += [entries[k][0] for k in sorted(differ)]
    failures = failures[:stop_after or None]
    return {"error": len(failures), "checked": len(entries), "failures": failures}


def _unrolled_by_sympy(d: Derivation, module, T, B, sizes, exact, stop_after) -> dict:
    a = _unrolled_arrays(module.SIGNATURE, sizes, T, B, SYMPY)
    L = _unrolled_loss(d, sizes, a, T, B, SYMPY)
    try:
        entries, failures = _entries(a, _run_module(module, a))
    except Exception as exc:
        return _broken(exc)
    same = comparator(exact, seeds=(1, 2))
    checked = 0
    for name, x, g in entries:
        checked += 1
        if not same(g, sympy.diff(L, x)):
            failures.append(name)
            if stop_after and len(failures) >= stop_after:
                break
    return {"error": len(failures), "checked": checked, "failures": failures}
