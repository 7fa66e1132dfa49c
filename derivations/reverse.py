"""Symbolic reverse mode over a cell's equations: the adjoint of every quantity of one time step,
and from it the backpropagation-through-time recursion.

How it works
------------
1. Each equation is turned into a per-unit SymPy expression (``equations_to_sympy``). A matrix-vector
   product ``M @ v`` becomes one opaque *linear-term* symbol; vectors (inputs, states, biases,
   intermediates) become one symbol each, standing for unit k of that vector. Function applications
   that are not a whole right-hand side are hoisted into auxiliary equations (``h = o * tanh(c)``
   becomes ``tanh_c = tanh(c)`` and ``h = o * tanh_c``), so every function value has a name and every
   derivative can be written through names (sigma'(z_f) = f (1 - f)).
2. Walking the equations backwards, the adjoint of the left-hand side is the sum of the contributions
   its consumers sent it; each argument ``a`` of the right-hand side F receives ``d_lhs * dF/da``
   (``sympy.diff``, per unit). A linear term L = M @ v sends its adjoint on with the two
   matrix-calculus rules of :mod:`lstm_spec.derivations.rules`: ``d_v += M^T d_L`` and
   ``d_M += d_L v^T`` (summed over batch and time), and a vector parameter p used elementwise
   receives the batch-and-time sum of its per-unit adjoint.
3. A state s enters step t as ``s[t-1]`` and leaves it as ``s``. Its adjoint inside step t starts from
   what step t+1 sent back (``d_s_next``; at t = T the cotangent of the final state) plus the
   cotangent of the output y_t when s is the output. The adjoint of ``s[t-1]`` computed at step t is
   what step t sends to step t-1: that is the whole BPTT recursion.

Nothing in here knows about LSTMs: any spec goes through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import sympy

from lstm_spec.spec.cells import Cell
from lstm_spec.spec.language import BinOp, Call, Name, Neg, Num, Pow, SpecError
from lstm_spec.spec.language import children as _children_of

from .functions import FUNCTIONS, UnitSum
from .names import Namespace, spec_namespace


# ----------------------------------------------------------------------------------------- symbols
@dataclass(frozen=True)
class SymInfo:
    kind: str  # value | prev | term | param | const | adj | next | cot | cse
    name: str  # quantity name (or term's "M@v"), used to print the symbol
    matrix: str | None = None  # for terms
    operand: str | None = None  # for terms
    prev: bool = False  # for terms: operand is a state at t-1
    of: sympy.Symbol | None = None  # for adjoints: the symbol whose adjoint this is


class Symbols:
    """Creates and remembers the SymPy symbols of one derivation, with what each one stands for."""

    def __init__(self):
        self.info: dict[sympy.Symbol, SymInfo] = {}
        self._by_key: dict[tuple, sympy.Symbol] = {}

    def _make(self, key, name, info):
        if key not in self._by_key:
            sym = sympy.Symbol(name, real=True)
            while sym in self.info:  # one SymPy symbol per key: a spec quantity may be called tmp0 too
                sym = sympy.Symbol(sym.name + "′", real=True)
            self._by_key[key] = sym
            self.info[sym] = info
        return self._by_key[key]

    def value(self, name):
        return self._make(("value", name), name, SymInfo("value", name))

    def param(self, name):
        return self._make(("param", name), name, SymInfo("param", name))

    def prev(self, name):
        return self._make(("prev", name), f"{name}[t-1]", SymInfo("prev", name))

    def const(self, name):
        """A constant of the spec's [constants]: a symbol the derivation never differentiates by."""
        return self._make(("const", name), name, SymInfo("const", name))

    def term(self, matrix, operand, prev):
        label = f"{matrix}@{operand}" + ("[t-1]" if prev else "")
        return self._make(("term", matrix, operand, prev), label,
                          SymInfo("term", label, matrix=matrix, operand=operand, prev=prev))

    def adj(self, sym):
        return self._make(("adj", sym), f"δ{sym.name}", SymInfo("adj", self.info[sym].name, of=sym))

    def next(self, state):
        return self._make(("next", state), f"δ{state}⁺", SymInfo("next", state))

    def cot(self):
        return self._make(("cot",), "δ⟨y⟩", SymInfo("cot", "y"))

    def cse(self, index):
        return self._make(("cse", index), f"tmp{index}", SymInfo("cse", f"tmp{index}"))


# ----------------------------------------------------------------------------------------- forward
@dataclass
class ForwardEquation:
    lhs: str
    expr: sympy.Expr  # per unit
    aux: bool  # hoisted by the derivation, not written in the spec
    text: str  # the spec's text ("" for auxiliaries)
    ast: object  # the right-hand side as a spec-language tree (auxiliaries replaced by names)
    shape: tuple = ()  # symbolic dims of the value, e.g. ("H",)


@dataclass
class Statement:
    """One line of the derived backward pass: ``target = elementwise + sum(matvec) + sum(outer)``.

    - elementwise: a per-unit SymPy expression (0 when there is none);
    - matvec: ``[(M, dL)]``, each meaning M^T dL (per sample), i.e. ``dL @ M`` on batch-major arrays;
    - outer: ``[(dL, v)]`` for a matrix parameter, each meaning sum over batch and time of dL v^T;
    - reduce: the target is a vector parameter, the elementwise part is summed over batch and time.
    """

    target: sympy.Symbol
    kind: str  # adjoint of: value | prev | term | input | param_vector | param_matrix | cse
    elementwise: sympy.Expr = sympy.S.Zero
    matvec: list = field(default_factory=list)
    outer: list = field(default_factory=list)


@dataclass
class Derivation:
    cell: Cell
    symbols: Symbols
    forward: list[ForwardEquation]
    loop: list[Statement]  # backward statements inside the time loop, in order
    after: list[Statement]  # input and parameter adjoints, computed once after the loop
    adjoint_of: dict  # symbol -> its adjoint symbol (or alias) for every differentiated symbol
    namespace: Namespace | None = None  # every name of the generated module so far (names.py)
    code_names: dict = field(default_factory=dict)  # symbol -> its name in the generated code

    @property
    def statements(self):
        return self.loop + self.after

    def shape(self, sym) -> tuple | None:
        """The dims of what a symbol stands for, e.g. ("H",); ("1",) for one value per sample; None for a
        temporary."""
        info = self.symbols.info[sym]
        if info.kind == "adj":
            return self.shape(info.of)
        if info.kind == "term":
            return (self.cell.parameters[info.matrix].shape[0],)
        name = self.cell.output if info.kind == "cot" else info.name
        if info.kind == "cse":
            return None
        if info.kind == "const":
            return ("1",)  # one number, broadcast like a per-sample value
        for table in (self.cell.inputs, self.cell.states, self.cell.parameters):
            if name in table:
                return table[name].shape
        return next(fe.shape for fe in self.forward if fe.lhs == name)


# ----------------------------------------------------------------------------------------- sympy
def equations_to_sympy(cell: Cell, symbols: Symbols, ns: Namespace | None = None) -> list[ForwardEquation]:
    """The cell's equations as per-unit SymPy expressions. A function applied inside a larger
    expression is hoisted into an auxiliary equation of its own (the same application once), named in
    the namespace ``ns`` (the spec's own by default)."""
    conv = _ToSympy(cell, symbols, ns or spec_namespace(cell))
    for eq in cell.equations:
        _check_no_parameter_operand(cell, eq)
        rhs = conv.hoist(eq.rhs, eq.lhs, top=True)
        conv.out.append(ForwardEquation(eq.lhs, conv(rhs), False, eq.text, rhs, cell.shapes[eq.lhs]))
    return conv.out


def _check_no_parameter_operand(cell: Cell, eq) -> None:
    for mm in _matmuls(eq.rhs):
        if isinstance(mm.right, Name) and mm.right.name in cell.parameters:
            raise SpecError(f"{cell.path}, line {eq.line}, equation '{eq.text}': {mm.left.name} @ "
                            f"{mm.right.name}: the right operand of @ is the parameter {mm.right.name}; a matrix "
                            "times a parameter is the same at every step and is not supported: declare its "
                            "product as a bias vector instead")


class _ToSympy:
    """Spec-language trees to per-unit SymPy expressions (calling it), and the hoisting of function
    applications into auxiliary equations (``out`` collects the equations, auxiliaries before their user)."""

    def __init__(self, cell: Cell, symbols: Symbols, ns: Namespace):
        self.cell, self.symbols, self.ns = cell, symbols, ns
        self.out: list[ForwardEquation] = []
        self.products = {_product_form(mm.left.name, mm.right.name, mm.right.prev)
                         for eq in cell.equations for mm in _matmuls(eq.rhs)}
        self.hoisted: dict[Call, str] = {}

    def fresh(self, base):
        """An auxiliary's name never looks like an adjoint or a product (a function called d applied to c
        would be d_c, the name of c's adjoint)."""
        if base.startswith("d_") or base.endswith(("_prev", "_next", "_all")) or base in self.products:
            base = "aux_" + base
        return self.ns.fresh(base, f"the auxiliary {base} the derivation hoists")

    def hoist(self, node, lhs, top=False):
        """A copy of the AST with every non-top-level call replaced by the name of its auxiliary."""
        if isinstance(node, BinOp):
            return BinOp(node.op, self.hoist(node.left, lhs), self.hoist(node.right, lhs))
        if isinstance(node, Neg):
            return Neg(self.hoist(node.operand, lhs))
        if isinstance(node, Pow):
            return Pow(self.hoist(node.base, lhs), node.exponent)
        if isinstance(node, Call):
            return self._hoist_call(node, lhs, top)
        return node

    def _hoist_call(self, node, lhs, top):
        cell = self.cell
        arg = self.hoist(node.arg, lhs)
        kind = FUNCTIONS[cell.functions[node.func]]
        # SymPy rewrites some applications on sight (tanh(-b) -> -tanh(b)); then no function value
        # would carry a name and its derivative could not be written through one: name the argument
        rewritten = (kind.kind != "identity" and not isinstance(arg, (Name, Num))
                     and not isinstance(self(Call(node.func, arg)), kind.sympy_function))
        if (kind.parameters or rewritten) and not isinstance(arg, (Name, Num)):
            # a function with kinks (clip) gets a named argument, so the backward pass and the
            # numeric checks can refer to the value whose kinks matter
            name = self.fresh(f"{node.func}_arg_{lhs}")
            self.out.append(ForwardEquation(name, self(arg), True, "", arg, self.shape_of_ast(arg)))
            arg = Name(name)
        call = Call(node.func, arg)
        if top or cell.functions[node.func] == "identity":
            return call
        if call not in self.hoisted:
            arg = call.arg
            base = f"{node.func}_{arg.name}" if isinstance(arg, Name) and not arg.prev else f"{node.func}_{lhs}"
            name = self.fresh(base)
            self.hoisted[call] = name
            kind = FUNCTIONS[cell.functions[node.func]]
            self.out.append(ForwardEquation(name, self(call), True, "", call, ("1",) if kind.reduction else
                                            cell.shapes[lhs]))
        return Name(self.hoisted[call])

    def shape_of_ast(self, node):
        """An elementwise expression is a vector when any operand is (one value per sample broadcasts)."""
        cell = self.cell
        known = {fe.lhs: fe.shape for fe in self.out} | dict(cell.shapes)
        for table in (cell.inputs, cell.states, cell.parameters):
            known.update({n: q.shape for n, q in table.items()})
        stack = [node]
        while stack:
            n = stack.pop()
            if isinstance(n, BinOp) and n.op == "@":
                return (cell.parameters[n.left.name].shape[0],)
            if isinstance(n, Name) and known.get(n.name, ("1",)) != ("1",):
                return known[n.name]
            if isinstance(n, Call) and FUNCTIONS[cell.functions[n.func]].reduction:
                continue  # one value per sample: its operand's units are summed away
            stack += _children_of(n)
        return ("1",)

    def __call__(self, node):
        """The SymPy expression of a tree."""
        cell, symbols = self.cell, self.symbols
        if isinstance(node, Num):
            v: Fraction = node.value
            return sympy.Rational(v.numerator, v.denominator)
        if isinstance(node, Name):
            if node.prev:
                return symbols.prev(node.name)
            if node.name in cell.constants:
                return symbols.const(node.name)
            if node.name in cell.parameters:
                return symbols.param(node.name)
            return symbols.value(node.name)
        if isinstance(node, Neg):
            return -self(node.operand)
        if isinstance(node, Pow):
            return self(node.base) ** node.exponent
        if isinstance(node, BinOp):
            if node.op == "@":
                return symbols.term(node.left.name, node.right.name, node.right.prev)
            left, right = self(node.left), self(node.right)
            return {"+": lambda: left + right, "-": lambda: left - right,
                    "*": lambda: left * right, "/": lambda: left / right}[node.op]()
        if isinstance(node, Call):
            extra = [symbols.const(a) if isinstance(a, str) else sympy.Rational(a.numerator, a.denominator)
                     for a in cell.function_args.get(node.func, ())]
            return FUNCTIONS[cell.functions[node.func]].sympy_function(self(node.arg), *extra)
        raise TypeError(node)  # pragma: no cover


def _matmuls(node):
    """The matrix products of an expression tree, left to right."""
    if isinstance(node, BinOp):
        yield from ([node] if node.op == "@" else [])
        yield from _matmuls(node.left)
        yield from _matmuls(node.right)
    elif isinstance(node, (Neg, Pow, Call)):
        yield from _matmuls(node.operand if isinstance(node, Neg) else node.base if isinstance(node, Pow)
                            else node.arg)


def _product_form(matrix: str, operand: str, prev: bool) -> str:
    """The readable name of the product matrix @ operand in generated code: W_f_x, U_f_h_prev."""
    return f"{matrix}_{operand}" + ("_prev" if prev else "")


def _name_function_values(expr, forward: list[ForwardEquation], symbols: Symbols):
    """Replace every function application that some equation defines by that equation's name."""
    table = {fe.expr: symbols.value(fe.lhs) for fe in forward if isinstance(fe.expr, sympy.Function)}
    return expr.xreplace(table) if table else expr


_UNDEFINED = (sympy.S.ComplexInfinity, sympy.S.NaN, sympy.S.Infinity, sympy.S.NegativeInfinity,
              sympy.Derivative, sympy.Subs)


def _check_defined(expr, cell: Cell, forward: list[ForwardEquation], idx: int, what: str):
    """A spec can pass the loader and still have no value or no derivative, e.g. x / (a - a): SymPy
    then gives zoo, nan or an unevaluated Derivative. That is the spec's error, named like the loader's
    (file, line, equation), not a crash of the derivation or code that computes nan."""
    if not expr.has(*_UNDEFINED):
        return
    spec_index = sum(1 for fe in forward[:idx] if not fe.aux)  # auxiliaries precede their equation
    eq = cell.equations[min(spec_index, len(cell.equations) - 1)]
    raise SpecError(f"{cell.path}, line {eq.line}, equation '{eq.text}': {what} is not defined ({expr}); "
                    "is something divided by zero?")


_REDUCTIONS = tuple(fk.sympy_function for fk in FUNCTIONS.values() if fk.reduction)


def _per_unit(expr, symbols: Symbols, shape_of) -> bool:
    """Whether a per-unit expression varies over units: it reads a vector outside every reduction."""
    stack = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, _REDUCTIONS):
            continue
        if isinstance(e, sympy.Symbol):
            if symbols.info[e].kind in ("value", "prev", "term", "param") and shape_of(e) != ("1",):
                return True
            continue
        stack.extend(e.args)
    return False


def _differentiable(expr, symbols: Symbols):
    return sorted((s for s in expr.free_symbols if symbols.info[s].kind in ("value", "prev", "term", "param")),
                  key=lambda s: s.name)


# ----------------------------------------------------------------------------------------- reverse
def derive(cell: Cell, simplify: bool = True) -> Derivation:
    symbols = Symbols()
    ns = spec_namespace(cell)
    forward = equations_to_sympy(cell, symbols, ns)
    for idx, fe in enumerate(forward):
        _check_defined(fe.expr, cell, forward, idx, f"the value of {fe.lhs}")
    r = _Reverse(cell, symbols, forward, simplify)
    for idx in range(len(forward) - 1, -1, -1):
        r.step_back(idx)
    r.to_previous_step()
    after = r.after_loop()
    live = _drop_dead(r.loop, after)
    dead = {st.target for st in r.loop} - {st.target for st in live}
    adjoint_of = {sym: adj for sym, adj in r.adjoint_of.items() if adj not in dead}  # nobody reads those
    loop = _cse(live, symbols) if simplify else live
    loop, aliases = _without_aliases(loop, after)
    adjoint_of = {sym: adj for sym, adj in adjoint_of.items() if adj not in aliases}
    return Derivation(cell, symbols, forward, loop, after, adjoint_of, ns, _code_names(ns, symbols, forward))


def _without_aliases(loop: list[Statement], after: list[Statement]) -> tuple[list[Statement], set]:
    """The loop without alias lines (an adjoint whose whole value is one other name, e.g. the four equal
    adjoints of a mean's terms after common-subexpression elimination: d_mean_vh4 = tmp5): the name is
    substituted where the loop's elementwise parts read it. Only an adjoint of a value or term that nothing
    else reads (no matrix product, no outer product, nothing after the loop) is removed."""
    read_elsewhere = set()
    for st in loop + after:
        read_elsewhere |= {dl for _, dl in st.matvec} | {dl for dl, _ in st.outer}
    for st in after:
        read_elsewhere |= st.elementwise.free_symbols if st.elementwise != 0 else set()
    aliases = {st.target: st.elementwise for st in loop
               if st.kind in ("value", "term") and isinstance(st.elementwise, sympy.Symbol) and not st.matvec
               and not st.outer and st.target not in read_elsewhere and st.elementwise != st.target}
    if not aliases:
        return loop, set()
    for target, value in list(aliases.items()):  # a chain a = b, b = tmp5: a reads tmp5
        while value in aliases:
            value = aliases[value]
        aliases[target] = value
    out = []
    for st in loop:
        if st.target in aliases:
            continue
        new = st.elementwise.xreplace(aliases) if st.elementwise != 0 else st.elementwise
        out.append(Statement(st.target, st.kind, new, st.matvec, st.outer))
    return out, set(aliases)


class _Reverse:
    """Reverse mode over one step's equations, last to first: the adjoint contributions each symbol has
    received, the loop's statements, and what is the adjoint of what."""

    def __init__(self, cell: Cell, symbols: Symbols, forward: list[ForwardEquation], simplify: bool):
        self.cell, self.symbols, self.forward, self.simplify = cell, symbols, forward, simplify
        self.defined = {fe.lhs for fe in forward}
        # contributions[sym] = [elementwise terms], matvecs[sym] = [(M, dL)], outers[M] = [(dL, v_sym)]
        self.contributions: dict[sympy.Symbol, list] = {}
        self.matvecs: dict[sympy.Symbol, list] = {}
        self.outers: dict[str, list] = {}
        self.adjoint_of: dict[sympy.Symbol, object] = {}
        self.loop: list[Statement] = []
        # Seeds: what arrives at the states from outside step t.
        for s in cell.states:
            self.add(symbols.value(s), symbols.next(s))
        self.add(symbols.value(cell.output), symbols.cot())  # the cotangent of y_t
        self.shapes = {fe.lhs: fe.shape for fe in forward}
        for table in (cell.inputs, cell.states, cell.parameters):
            self.shapes.update({n: q.shape for n, q in table.items()})
        # first (in forward order) equation consuming each linear term: its adjoint is final after it
        self.first_use: dict[sympy.Symbol, int] = {}
        for idx, fe in enumerate(forward):
            for s in sorted(fe.expr.free_symbols, key=lambda s: s.name):  # not set order: PYTHONHASHSEED
                if symbols.info[s].kind == "term":
                    self.first_use.setdefault(s, idx)

    def add(self, sym, expr):
        self.contributions.setdefault(sym, []).append(expr)

    def total(self, sym):
        return sympy.Add(*self.contributions.get(sym, []))

    def shape_of(self, sym):
        info = self.symbols.info[sym]
        if info.kind == "term":
            return (self.cell.parameters[info.matrix].shape[0],)
        return self.shapes[info.name]

    def tidy(self, expr):
        return _tidy(expr, self.simplify)

    def step_back(self, idx: int) -> None:
        """Equation idx: its value's adjoint, the contributions it sends to what it reads, and the adjoints
        of the linear terms it is the first to use."""
        fe, symbols = self.forward[idx], self.symbols
        lhs = symbols.value(fe.lhs)
        d_lhs_expr = self.total(lhs)
        mv = self.matvecs.get(lhs, [])
        if isinstance(d_lhs_expr, sympy.Symbol) and not mv and symbols.info[d_lhs_expr].kind == "adj":
            d_lhs = d_lhs_expr  # alias: the adjoint is already a named quantity
        else:
            d_lhs = symbols.adj(lhs)
            self.loop.append(Statement(d_lhs, "value", self.tidy(d_lhs_expr), list(mv)))
        self.adjoint_of[lhs] = d_lhs
        # a zero adjoint (e.g. under stop_gradient) sends nothing: its statement is then dead and dropped
        self.send_partials(idx, sympy.S.Zero if d_lhs_expr == 0 and not mv else d_lhs)
        for term, first in self.first_use.items():
            if first == idx:
                self.term_adjoint(term)

    def send_partials(self, idx: int, d_lhs) -> None:
        """To each differentiable symbol equation idx reads: d_lhs times the partial derivative."""
        fe, symbols = self.forward[idx], self.symbols
        for a in _differentiable(fe.expr, symbols):
            partial = _name_function_values(sympy.diff(fe.expr, a), self.forward, symbols)
            _check_defined(partial, self.cell, self.forward, idx, f"the derivative of {fe.lhs} with respect to {a}")
            contribution = d_lhs * partial
            if self.shape_of(a) == ("1",) and contribution != 0 and (
                    fe.shape != ("1",) or _per_unit(partial, symbols, self.shape_of)):
                # a per-sample value used by every unit (of the result, or of a reduction's argument:
                # lse(s * v) sends sum_k softmax_k v_k to s)
                contribution = UnitSum(contribution)
            self.add(a, contribution)

    def term_adjoint(self, term) -> None:
        """A linear term's adjoint (final now), sent on to its operand (M^T dL) and its matrix (dL v^T)."""
        symbols, info = self.symbols, self.symbols.info[term]
        d_term_expr = self.total(term)
        if isinstance(d_term_expr, sympy.Symbol) and symbols.info[d_term_expr].kind == "adj" and \
                self.shape_of(symbols.info[d_term_expr].of) == self.shape_of(term):
            d_term = d_term_expr  # an alias (not when a per-sample adjoint meets a vector term)
        else:
            d_term = symbols.adj(term)
            self.loop.append(Statement(d_term, "term", self.tidy(d_term_expr)))
        self.adjoint_of[term] = d_term
        operand = symbols.prev(info.operand) if info.prev else (
            symbols.value(info.operand) if info.operand in self.defined or info.operand in self.cell.inputs
            else symbols.param(info.operand))
        self.matvecs.setdefault(operand, []).insert(0, (info.matrix, d_term))
        self.outers.setdefault(info.matrix, []).insert(0, (d_term, operand))

    def to_previous_step(self) -> None:
        """What step t sends back to step t-1."""
        for s in self.cell.states:
            p = self.symbols.prev(s)
            d_p = self.symbols.adj(p)
            self.loop.append(Statement(d_p, "prev", self.tidy(self.total(p)), list(self.matvecs.get(p, []))))
            self.adjoint_of[p] = d_p

    def after_loop(self) -> list[Statement]:
        """Inputs and parameters: once, after the loop, summed over time (and batch for parameters)."""
        symbols, after = self.symbols, []
        for x in self.cell.inputs:
            v = symbols.value(x)
            d = symbols.adj(v)
            after.append(Statement(d, "input", self.tidy(self.total(v)), list(self.matvecs.get(v, []))))
            self.adjoint_of[v] = d
        for pname, q in self.cell.parameters.items():
            sym = symbols.param(pname)
            d = symbols.adj(sym)
            if len(q.shape) == 2:
                after.append(Statement(d, "param_matrix", sympy.S.Zero, [], list(self.outers.get(pname, []))))
            else:
                after.append(Statement(d, "param_vector", self.tidy(self.total(sym))))
            self.adjoint_of[sym] = d
        return after


def _code_names(ns: Namespace, symbols: Symbols, forward: list[ForwardEquation]) -> dict:
    """The name of every symbol in the generated code, allocated in the namespace: products in the order the
    equations use them, then what arrives at the states from step t+1, the adjoints, the temporaries.
    Values, parameters and states keep their own names (a previous state value is its state's array)."""
    info = symbols.info
    out = {s: i.name for s, i in info.items() if i.kind in ("value", "param", "prev", "const")}
    out.update({s: "dy" for s, i in info.items() if i.kind == "cot"})
    for fe in forward:
        for s in sorted(fe.expr.free_symbols, key=lambda s: s.name):
            i = info[s]
            if i.kind == "term" and s not in out:
                out[s] = ns.fresh(_product_form(i.matrix, i.operand, i.prev), f"the product {i.name}")
    for s, i in info.items():
        if i.kind == "term" and s not in out:  # pragma: no cover - every product appears in an equation
            out[s] = ns.fresh(_product_form(i.matrix, i.operand, i.prev), f"the product {i.name}")
    for s, i in info.items():
        if i.kind == "next":
            out[s] = ns.fresh(f"d_{i.name}_next", f"the adjoint step t+1 sends to state {i.name}")
    for s, i in info.items():
        if i.kind == "adj":
            of = info[i.of]
            base = f"{of.name}_prev" if of.kind == "prev" else out[i.of]
            out[s] = ns.fresh(f"d_{base}", f"the adjoint of {of.name}" + ("[t-1]" if of.kind == "prev" else ""))
    for s, i in info.items():
        if i.kind == "cse":
            out[s] = ns.fresh(f"_{i.name}", f"the common subexpression {i.name}")
    return out


def _drop_dead(loop: list[Statement], after: list[Statement]) -> list[Statement]:
    """Remove loop statements whose adjoint nobody reads (e.g. the adjoint of a stop_gradient's output):
    every line of the generated backward then matters, which the negative controls check."""
    def reads(st):
        return st.elementwise.free_symbols | {dl for _, dl in st.matvec} | {dl for dl, _ in st.outer}

    while True:
        used = set().union(*(reads(st) for st in loop + after)) if loop or after else set()
        keep = [st for st in loop if st.kind == "prev" or st.target in used]
        if len(keep) == len(loop):
            return loop
        loop = keep


# The largest adjoint of the cells in spec/ has 10 operations; a spec file from anywhere can make one with
# thousands (a name read by many equations through rational functions), on which sympy.simplify runs for
# minutes (factor_terms too). Above this size the adjoint is kept as derived (still exact, just not shortened).
MAX_SIMPLIFY_OPS = 20


def _tidy(expr, simplify):
    """Light simplification: keep SymPy's simplified form only when it is strictly shorter."""
    if not simplify or expr == 0:
        return expr
    if sympy.count_ops(expr) > MAX_SIMPLIFY_OPS:  # their time grows steeply with the size: skip them
        return expr
    candidates = [expr, sympy.factor_terms(expr)]
    try:
        candidates.append(sympy.simplify(expr))
    except Exception:  # pragma: no cover - simplify is a heuristic
        pass
    return min(candidates, key=lambda e: (sympy.count_ops(e), candidates.index(e)))


def _cse(loop: list[Statement], symbols: Symbols) -> list[Statement]:
    """Common-subexpression elimination across the elementwise parts of the loop's statements.
    Each repeated subexpression becomes a named temporary placed just before its first use."""

    def names():
        k = 0
        while True:
            yield symbols.cse(k)
            k += 1

    replacements, reduced = sympy.cse([st.elementwise for st in loop], symbols=names(),
                                      optimizations=None, order="none")
    if not replacements:
        return loop
    first_use = {}
    for pos, expr in enumerate(reduced):
        for tmp in expr.free_symbols:
            first_use.setdefault(tmp, pos)
    for tmp, value in reversed(replacements):  # a temporary used by a later one is needed no later
        for inner in value.free_symbols:
            if tmp in first_use:
                first_use[inner] = min(first_use.get(inner, first_use[tmp]), first_use[tmp])
    out: list[Statement] = []
    for pos, (st, new) in enumerate(zip(loop, reduced, strict=True)):
        out += [Statement(tmp, "cse", value) for tmp, value in replacements if first_use.get(tmp) == pos]
        out.append(Statement(st.target, st.kind, new, st.matvec, st.outer))
    return out


def expand_adjoint(derivation: Derivation, target) -> sympy.Expr:
    """The elementwise part of a statement with every adjoint and temporary substituted back, as far
    as the loop defines them (for display of the 'textbook' form, e.g. dz_o = dh tanh(c) o (1-o))."""
    defs = {st.target: st.elementwise for st in derivation.loop if not st.matvec}
    expr = next(st.elementwise for st in derivation.statements if st.target == target)
    for _ in range(len(defs) + 1):
        new = expr.xreplace(defs)
        if new == expr:
            break
        expr = new
    return expr
