"""Symbolic checks.

(a) ``check_step``: every derived adjoint of one time step, with the forward definitions substituted
    back, equals ``sympy.diff`` of the fully expanded forward on explicit small sizes (D != H). The
    scalar differentiated is L = <dy, y_t> + sum_s <d_s_next, s_t>: the step's outputs weighted by
    the adjoints that arrive at them. For an intermediate q the forward is cut at q (q becomes free
    symbols, everything downstream of it is expanded) and L is differentiated by those symbols.
(b) ``check_unrolled``: the *generated* NumPy code, run on arrays of SymPy symbols for T steps, gives
    exactly ``sympy.diff`` of the unrolled scalar loss with respect to every parameter, input and
    initial state. The unrolled loss is built independently of the generated code, by evaluating the
    spec's equations step by step.

Equality is decided exactly: function values (sigma(...), tanh(...)) are replaced by atoms keyed by
their expanded argument, after which both sides are polynomials and ``expand`` of the difference is 0
(exact="expand", a proof), or both sides are evaluated exactly modulo 2^61 - 1 at random points
(exact="points", ModularPoint).

Where the expected derivative comes from: derivative="sympy" calls ``sympy.diff`` (one call per entry:
minutes for the larger cells); derivative="reverse" evaluates the same chain rule at each point by one
reverse accumulation over the expression (gradient_at_point: seconds). `lstm-spec verify` uses
"reverse"; `lstm-spec verify --proof` and tests/test_cells.py use "sympy".
"""

from __future__ import annotations

import numpy as np
import sympy

from lstm_spec.derivations.functions import (Clip, ClipMask, Exp, LogSumExp, LogSumExpN, Rsqrt, Sigmoid,
                                             StopGradient, UnitCount, UnitMean, UnitSum)
from lstm_spec.derivations.reverse import Derivation
from lstm_spec.derivations.rules import symbol_array
from lstm_spec.reference._runtime import symbolic

ATOM_FUNCTIONS = (Sigmoid, sympy.tanh, Clip, ClipMask, Exp, LogSumExpN, StopGradient, Rsqrt)
REDUCTIONS = (UnitSum, LogSumExp, UnitMean, UnitCount)


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


class ModularPoint:
    """Exact evaluation of SymPy expressions at a random point modulo the prime 2^61 - 1.

    Every symbol gets a random residue; sigma(u) and tanh(u) are treated as uninterpreted functions
    whose value is a pseudo-random residue determined by the value of u. Two expressions that are
    equal as polynomials in the symbols and the function values evaluate equally; two that differ
    evaluate equally with probability at most (degree / 2^61) per point (Schwartz-Zippel). The DAG
    is evaluated once per node (memoized), so large unrolled gradients cost little.
    """

    P = (1 << 61) - 1

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.symbols: dict = {}
        self.memo: dict = {}
        self.salt = int(self.rng.integers(1, 1 << 62))

    def __call__(self, expr) -> int:
        key = id(expr)
        hit = self.memo.get(key)
        if hit is not None:
            return hit[0]
        P = self.P
        if expr.is_Symbol:
            if expr not in self.symbols:
                self.symbols[expr] = int(self.rng.integers(1, P))
            v = self.symbols[expr]
        elif expr.is_Integer:
            v = int(expr) % P
        elif expr.is_Rational:
            v = int(expr.p) % P * pow(int(expr.q) % P, -1, P) % P
        elif expr.is_Float:
            r = exact_constant(expr)
            v = int(r.p) % P * pow(int(r.q) % P, -1, P) % P
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
            v = hash((expr.func.__name__, tuple(self(a) for a in expr.args), self.salt)) % P
        else:
            raise TypeError(f"cannot evaluate {type(expr).__name__} exactly")
        self.memo[key] = (v, expr)  # keep expr alive so its id stays unique
        return v


def gradient_at_point(L, leaves, point: ModularPoint) -> list[int]:
    """dL/dx for each x in ``leaves``, exactly at ``point`` (mod 2^61 - 1), without building the derivative.

    Reverse accumulation over L's expression DAG, each node visited once: an Add passes its adjoint to every
    term, a Mul to each factor times the product of the others, an integer power b^e passes e b^(e-1), and a
    function f passes its SymPy derivative rule ``f.fdiff(i)`` (the rule ``sympy.diff`` applies: SymPy's own
    for tanh, the rules confirmed by SymPy in derivations/functions.py for the others), evaluated at the
    point. This is the chain rule ``sympy.diff`` applies, evaluated instead of expanded: the same number as
    ``point(sympy.diff(L, x))``, at the cost of one pass for all leaves (tests/test_symbolic_checks.py holds
    it against sympy.diff). It is independent of the derivation under test, which differentiates the
    vectorised per-unit equations with matrix rules; here every scalar of the explicit forward is a node."""
    P = point.P
    L = sympy.sympify(L)
    order, seen, stack = [], set(), [(L, False)]
    while stack:  # iterative post-order: children before parents
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        if not node.is_Atom:
            stack.extend((a, False) for a in node.args if id(a) not in seen)
    adj = {id(L): 1}
    grads: dict = {}
    for node in reversed(order):  # parents before children
        a = adj.pop(id(node), 0)
        if a == 0:
            continue
        if node.is_Symbol:
            grads[node] = (grads.get(node, 0) + a) % P
            continue
        if node.is_Number:
            continue
        args = node.args
        if node.is_Add:
            local = [1] * len(args)
        elif node.is_Mul:
            vals = [point(x) for x in args]
            prefix, suffix = [1] * (len(vals) + 1), [1] * (len(vals) + 1)
            for k, v in enumerate(vals):
                prefix[k + 1] = prefix[k] * v % P
            for k in range(len(vals) - 1, -1, -1):
                suffix[k] = suffix[k + 1] * vals[k] % P
            local = [prefix[k] * suffix[k + 1] % P for k in range(len(vals))]
        elif node.is_Pow and node.exp.is_Integer:
            e, base = int(node.exp), point(node.base)
            power = pow(base, e - 1, P) if e >= 1 else pow(pow(base, -1, P), 1 - e, P)
            local = [e % P * power % P, 0]
        elif isinstance(node, ATOM_FUNCTIONS):
            local = [0 if x.is_number else point(node.fdiff(k + 1)) for k, x in enumerate(args)]
        else:
            raise TypeError(f"cannot differentiate {type(node).__name__} at a point")
        for x, dx in zip(args, local):
            if dx:
                adj[id(x)] = (adj.get(id(x), 0) + a * dx) % P
    return [grads.get(x, 0) for x in leaves]


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


# ----------------------------------------------------------------------------------------- explicit
def _vec(prefix, n):  # symbols without assumptions, like symbol_array (see there why)
    return [sympy.Symbol(f"{prefix}_{k}") for k in range(n)]


def _mat(prefix, m, n):
    return sympy.Matrix(m, n, lambda i, j: sympy.Symbol(f"{prefix}_{i}_{j}"))


class ExplicitStep:
    """The forward equations of one step (one sample) on explicit symbols for given sizes. A vector is a
    list of per-unit expressions; a per-sample value (shape ("1",)) a list of one, which broadcasts."""

    def __init__(self, d: Derivation, sizes: dict):
        self.d, self.sizes = d, {**sizes, "1": 1}
        cell, S = d.cell, d.symbols
        self.leaf = {}  # symbol -> list of per-unit expressions (vectors) / Matrix (matrix params)
        for name, q in cell.parameters.items():
            dims = [self.sizes[x] for x in q.shape]
            self.leaf[S.param(name)] = _mat(name, *dims) if len(dims) == 2 else _vec(name, dims[0])

    def size(self, shape):
        return self.sizes[shape[0]]

    def run(self, inputs: dict, prev: dict, cut: dict | None = None) -> dict:
        """inputs: name -> vector; prev: state -> vector; cut: symbol -> free vector replacing it.
        Returns symbol -> per-unit list for every value, prev, term and parameter."""
        d, S = self.d, self.d.symbols
        cut = cut or {}
        env = dict(self.leaf)
        for n, v in inputs.items():
            env[S.value(n)] = v
        for n, v in prev.items():
            env[S.prev(n)] = v
        env.update({k: v for k, v in cut.items() if k in env})
        for fe in d.forward:
            for s in fe.expr.free_symbols:
                info = S.info[s]
                if info.kind == "term" and s not in env:
                    operand = S.prev(info.operand) if info.prev else (
                        S.param(info.operand) if info.operand in d.cell.parameters else S.value(info.operand))
                    env[s] = cut.get(s) or list(env[S.param(info.matrix)] * sympy.Matrix(env[operand]))
            lhs = S.value(fe.lhs)
            if lhs in cut:
                env[lhs] = cut[lhs]
                continue
            env[lhs] = [explicit(fe.expr, env, k) for k in range(self.size(fe.shape))]
        return env


def _units(expr, env) -> int:
    """How many units an expression ranges over: the longest vector among its symbols."""
    n = 1
    for s in expr.free_symbols:
        v = env[s]
        if not isinstance(v, sympy.MatrixBase):
            n = max(n, len(v))
    return n


def explicit(expr, env, k):
    """Unit k of a per-unit expression on explicit values; reductions (sum, mean, logsumexp) range over the
    units of their argument, a unit count is the length of its longest argument, and a per-sample value
    broadcasts to every unit."""
    if expr.has(*REDUCTIONS):
        def reduce(e):
            if isinstance(e, UnitCount):
                return sympy.Integer(_units(sympy.Tuple(*e.args), env))
            if isinstance(e, (UnitSum, LogSumExp, UnitMean)):
                inner = e.args[0]
                values = [explicit(inner, env, j) for j in range(_units(inner, env))]
                if isinstance(e, UnitMean):
                    return sympy.Add(*values) / len(values)
                return sympy.Add(*values) if isinstance(e, UnitSum) else LogSumExpN(*values)
            if e.is_Atom:
                return e
            return e.func(*[reduce(a) for a in e.args])

        top = reduce(expr)
        return top.xreplace(_unit_subs(top, env, k))
    return expr.xreplace(_unit_subs(expr, env, k))


def _unit_subs(expr, env, k):
    sub = {}
    for s in expr.free_symbols:
        if s not in env:
            continue  # a symbol already made explicit by a reduction
        v = env[s]
        sub[s] = v if isinstance(v, sympy.MatrixBase) else (v[k] if len(v) > 1 else v[0])
    return sub


# ----------------------------------------------------------------------------------------- (a)
def check_step(d: Derivation, sizes: dict | None = None, exact: str = "expand", stop_after: int | None = None,
               only=None, derivative: str = "sympy") -> dict:
    """Returns {"error": number of adjoints that differ, "checked": entries compared, "failures": [names]}.

    derivative="sympy": the expected adjoints are ``sympy.diff`` of the explicit forward; then
    exact="expand": the difference expands to 0 (a proof), exact="points": exact evaluation at two random
    points modulo 2^61 - 1 (ModularPoint); negative controls use it with stop_after=1.
    derivative="reverse": the expected adjoints are evaluated at two random points by reverse accumulation
    over the explicit forward (gradient_at_point: sympy.diff's chain rule, evaluated rather than expanded);
    seconds where sympy.diff takes minutes (`lstm-spec verify` without --proof).
    only: restrict to the adjoints with these names, e.g. {"δz_f"} (a negative control checks the planted one)."""
    if derivative not in ("sympy", "reverse"):
        raise ValueError(f"derivative: expected 'sympy' or 'reverse', got {derivative!r}")
    cell, S = d.cell, d.symbols
    sizes = sizes or _default_sizes(cell)
    ex = ExplicitStep(d, sizes)
    inputs = {n: _vec(n, sizes[q.shape[0]]) for n, q in cell.inputs.items()}
    prev = {n: _vec(f"{n}_prev", sizes[q.shape[0]]) for n, q in cell.states.items()}
    seeds = {S.next(n): _vec(f"d{n}_next", sizes[q.shape[0]]) for n, q in cell.states.items()}
    out_size = {**sizes, "1": 1}[next(fe.shape for fe in d.forward if fe.lhs == cell.output)[0]]
    seeds[S.cot()] = _vec("dy", out_size)

    def loss(env):
        total = sum(a * b for a, b in zip(seeds[S.cot()], env[S.value(cell.output)]))
        for n in cell.states:
            total += sum(a * b for a, b in zip(seeds[S.next(n)], env[S.value(n)]))
        return total

    base = ex.run(inputs, prev)
    # the derived statements evaluated on the explicit forward
    derived = dict(base)
    derived.update(seeds)
    for st in d.statements:
        info = S.info[st.target]
        n = len(base[info.of]) if info.kind == "adj" and not isinstance(base[info.of], sympy.MatrixBase) else 1
        if info.kind == "cse":
            n = _units(st.elementwise, derived)
        derived[st.target] = _evaluate_statement(st, derived, S, n)

    same = comparator(exact, seeds=(3, 4)) if derivative == "sympy" else None
    points = (3, 4) if derivative == "reverse" else None  # seeds of the points
    failures, checked = [], 0
    for sym, adj in d.adjoint_of.items():
        if stop_after and len(failures) >= stop_after:
            break
        if only is not None and adj.name not in only:
            continue
        info = S.info[sym]
        value = base[sym]
        if isinstance(value, sympy.MatrixBase):
            free = _mat(f"free_{info.name}", *value.shape)
            saved = ex.leaf
            ex.leaf = {**saved, sym: free}
            env = ex.run(inputs, prev)
            ex.leaf = saved
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
        L, free, value, got = loss(env), list(free), list(value), list(derived[adj])
        if points:
            checked += len(got)
            if not _reverse_agrees(L, free, value, got, points):
                failures.append(info.name)
            continue
        at = dict(zip(free, value))
        for f, g in zip(free, got):
            checked += 1
            if not same(g, sympy.diff(L, f).xreplace(at)):
                failures.append(info.name)
                break
    return {"error": len(failures), "checked": checked, "failures": failures}


def _reverse_agrees(L, free, values, got, seeds) -> bool:
    """At the random point of each seed: dL/dfree (by reverse accumulation, free set to the values it was cut
    from) equals the derived adjoints ``got`` entry by entry. Fresh points each time: the same free symbols
    (free_h_0) stand for h_t in one adjoint's check and for h_{t-1} in another's."""
    for seed in seeds:
        pt = ModularPoint(seed)
        for f, v in zip(free, values):
            pt.symbols[f] = pt(sympy.sympify(v))
        if gradient_at_point(L, free, pt) != [pt(sympy.sympify(g)) for g in got]:
            return False
    return True


def _evaluate_statement(st, env, S, n):
    """One derived statement on explicit per-unit values (one sample, one step); n units."""
    if st.kind == "param_matrix":
        total = None
        for dl, v in st.outer:
            term = sympy.Matrix(env[dl]) * sympy.Matrix(env[v]).T
            total = term if total is None else total + term
        return total
    parts = [sympy.S.Zero] * n
    for matrix, dl in st.matvec:
        contrib = list(env[S.param(matrix)].T * sympy.Matrix(env[dl]))
        parts = [a + b for a, b in zip(parts, contrib)]
    if st.elementwise != 0:
        parts = [a + explicit(st.elementwise, env, k) for k, a in enumerate(parts)]
    return parts


# Cells whose one-step check (a) does not finish at the default sizes. lstm_layer_norm: with H = 2 every
# unit depends on every other through three means and variances, and sympy.diff of the explicit step
# spends its time deciding whether huge products are zero (> 20 minutes for one adjoint). With H = 1 the
# two gate normalisations still reduce over 4H = 4 units; the cell-state normalisation (over H units) is
# checked symbolically with N = 3 by the layer-normalised RNN of tests/test_regularisation.py, and
# numerically (complex step, finite differences, PyTorch's layer_norm) with H up to 4.
STEP_SIZES = {"lstm_layer_norm": {"D": 1, "H": 1}}


def _default_sizes(cell) -> dict:
    """Small explicit sizes with D != H: inputs' dimension 3, every other dimension 2 (STEP_SIZES aside)."""
    if cell.name in STEP_SIZES and cell.relpath.startswith("spec/"):
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
    """Run the generated module on SymPy symbols and compare every gradient entry with sympy.diff of
    the unrolled loss. Returns {"error": entries that differ (or inf on an exception), "checked": n}.

    exact="expand": the difference of the two expressions is expanded (after replacing function
    values by atoms) and must be 0: a proof, slow beyond T = 2. exact="points": both are evaluated
    exactly at two random points modulo 2^61 - 1 (see ModularPoint): fast for longer sequences.
    stop_after: stop after that many differing entries (negative controls need only one).
    derivative="reverse": the expected gradient of every leaf at each point comes from one reverse
    accumulation over the unrolled loss (gradient_at_point) instead of one sympy.diff per leaf."""
    if derivative not in ("sympy", "reverse"):
        raise ValueError(f"derivative: expected 'sympy' or 'reverse', got {derivative!r}")
    cell, S = d.cell, d.symbols
    sizes = {**(sizes or _default_sizes(cell)), "1": 1}
    sig = module.SIGNATURE


    params = {n: symbol_array(n, tuple(sizes[x] for x in ds)) for n, ds in sig.parameters.items()}
    seq = {n: symbol_array(n, (T, B) + tuple(sizes[x] for x in ds)) for n, ds in sig.inputs.items()}
    init = {n: symbol_array(f"{n}0", (B,) + tuple(sizes[x] for x in ds)) for n, ds in sig.states.items()}
    dy = symbol_array("dy", (T, B) + tuple(sizes[x] for x in sig.output_dims))
    d_final = {n: symbol_array(f"d{n}T", (B,) + tuple(sizes[x] for x in ds)) for n, ds in sig.states.items()}

    # independent unrolled loss: the spec's equations evaluated step by step, per sample
    ex = ExplicitStep(d, sizes)
    ex.leaf = {S.param(n): (sympy.Matrix(v) if v.ndim == 2 else list(v)) for n, v in params.items()}
    L = sympy.S.Zero
    for b in range(B):
        state = {n: list(init[n][b]) for n in cell.states}
        for t in range(T):
            env = ex.run({n: list(seq[n][t, b]) for n in cell.inputs}, state)
            L += sum(u * y for u, y in zip(dy[t, b], env[S.value(cell.output)]))
            state = {n: env[S.value(n)] for n in cell.states}
        for n in cell.states:
            L += sum(u * s for u, s in zip(d_final[n][b], state[n]))

    try:
        with symbolic():
            _, _, cache = module.forward(params, **seq, **{f"{s}0": v for s, v in init.items()})
            grads = module.backward(cache, dy, d_final)
    except Exception as exc:  # a broken generated module fails the check, it does not crash it
        return {"error": float("inf"), "checked": 0, "failures": [f"{type(exc).__name__}: {exc}"]}

    leaves = [(n, params[n]) for n in params] + [(n, seq[n]) for n in seq] + [(f"{s}0", init[s]) for s in init]
    failures, entries = [], []  # entries: (name, leaf symbol, the generated code's gradient of it)
    for key, arr_ in leaves:
        got = grads.get(key)
        if got is None or np.shape(got) != arr_.shape:
            failures.append(f"{key}: missing or wrong shape")
            continue
        entries += [(f"{key}{list(idx)}", arr_[idx], got[idx]) for idx in np.ndindex(arr_.shape)]
    if derivative == "reverse":  # every leaf's derivative at each point from one reverse accumulation
        differ = set()
        for seed in (1, 2):
            pt = ModularPoint(seed)
            expected = gradient_at_point(L, [x for _, x, _ in entries], pt)
            differ |= {k for k, (e, (_, _, g)) in enumerate(zip(expected, entries)) if e != pt(sympy.sympify(g))}
        failures += [entries[k][0] for k in sorted(differ)]
        if stop_after:
            failures = failures[:stop_after]
        return {"error": len(failures), "checked": len(entries), "failures": failures}
    same = comparator(exact, seeds=(1, 2))
    checked = 0
    for name, x, g in entries:
        checked += 1
        if not same(g, sympy.diff(L, x)):
            failures.append(name)
            if stop_after and len(failures) >= stop_after:
                break
    return {"error": len(failures), "checked": checked, "failures": failures}
