"""Explanation by mutating the derivation (issue 14, deliverable 2): single-point changes of the generated
reference module of a cell, enumerated automatically from its source, each run on the failing problem
and matched quantity by quantity against the target's results.

Every mutation changes one (or, for a few kinds, a fixed set of) lines of the generated module, parsed
with :mod:`ast`; each line corresponds to a statement of the derivation as ``lstm-spec derive`` prints
it (the module's docstring), so a mutation is named by that statement, the generated line and the
change. Kinds:

- a summand dropped, a factor dropped, a sign flipped (``+`` <-> ``-``);
- an activation derivative replaced by 1 or evaluated at the activation's output (``o * (1 - o)`` ->
  ``1`` or ``sigma(o) * (1 - sigma(o))``); an activation replaced by the identity in the forward;
- a state or cached operand one step early or late (index ``t`` -> ``t + 1`` / ``t - 1``, also with
  the first or last step kept at its boundary);
- one gate's quantity where another's belongs (names of the same shape swapped within a statement: in
  an adjoint, in a pre-activation, in a parameter gradient, in the returned gradients); a stacked
  product with one gate's block left out, or with its blocks not transposed;
- parameter gradients from the first or last step only, or the first batch row only;
- a carry (``d_h_next``, ``d_c_next``) not passed on (kept at the final-state cotangent, or zero), with
  and without the step-0 gradient still returned; a returned gradient left at zero.

A forward mutation is tried three ways: the whole module mutated (the backward's formulas evaluated at the
mutated forward's values), the outputs only (the backward is the reference's: it does not know of the
change), and the backward's values only (a pre-activation recomputed wrongly in the backward).
"""

from __future__ import annotations

import ast
import copy
import inspect
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lstm_spec.checks.mutants import carry, load_module

from .compare import compare
from .problem import Problem, expected


@dataclass(frozen=True)
class Mutation:
    key: str  # unique and deterministic: kind, line and new text
    kind: str
    where: str  # "forward" or "backward"
    statement: str  # the derived statement it changes, as `lstm-spec derive` prints it
    line: int  # 1-based line of the generated module
    old: str  # the generated line(s) before
    new: str  # and after
    edits: tuple  # ((0-based line index, new line text), ...)
    variant: str = "whole"  # forward mutations: "whole", "outputs", "cache"

    def text(self, path: str) -> str:
        what = {"whole": "", "outputs": " in the forward only (the backward is the reference's)",
                "cache": " in the values the backward recomputes only (the forward is right)",
                "recompute": " in the forward only (the backward recomputes each step from the forward's stored "
                             "states without the change)"}[self.variant]
        return f"{self.statement} changed{what}: {self.old.strip()} -> {self.new.strip()} [{path}:{self.line}]"


@dataclass
class Source:
    """A generated module's text, split into the parts the mutations need."""

    module: object
    lines: list
    forward_loop: list = field(default_factory=list)  # 0-based indices of the forward loop's body
    backward_loop: list = field(default_factory=list)
    after_loop: list = field(default_factory=list)  # the backward's statements after its loop
    returned: list = field(default_factory=list)  # the lines of the returned gradients dict
    stacks: dict = field(default_factory=dict)  # S_x -> [W_f, W_i, ...]
    groups: list = field(default_factory=list)  # sets of names of one shape (swappable)
    statements: dict = field(default_factory=dict)  # lhs -> derived statement text
    per_step: list = field(default_factory=list)  # the forward's arrays of T slots (the cache's per-step values)
    state_slots: list = field(default_factory=list)  # and of T + 1 slots (the states, slot 0 the initial one)

    @property
    def path(self) -> str:
        f = getattr(self.module, "__file__", "") or ""
        p = Path(f)
        return f"{p.parent.name}/{p.name}" if f else self.module.__name__


_SOURCES: dict = {}
_MODULES: dict = {}


# ------------------------------------------------------------------------------------------- parsing
def source(module) -> Source:
    key = module.__name__
    if key not in _SOURCES:
        _SOURCES[key] = _parse(module)
    return _SOURCES[key]


def _body(lines, start) -> list:
    """Indices of the indented body of the `for` at ``start``."""
    indent = len(lines[start]) - len(lines[start].lstrip())
    out = []
    for k in range(start + 1, len(lines)):
        s = lines[k]
        if s.strip() and len(s) - len(s.lstrip()) <= indent:
            break
        if s.strip() and not s.strip().startswith("#"):
            out.append(k)
    return out


def _parse(module) -> Source:
    lines = inspect.getsource(module).splitlines()
    src = Source(module, lines)
    fwd = next(k for k, s in enumerate(lines) if s.startswith("def forward("))
    bwd = next(k for k, s in enumerate(lines) if s.startswith("def backward("))
    floop = next(k for k in range(fwd, bwd) if lines[k].strip().startswith("for t in range("))
    bloop = next(k for k in range(bwd, len(lines)) if lines[k].strip().startswith("for t in reversed("))
    src.forward_loop = _body(lines, floop)
    src.backward_loop = _body(lines, bloop)
    ret = next(k for k in range(bloop, len(lines)) if lines[k].strip() == "grads = {")
    end = next(k for k in range(ret, len(lines)) if lines[k].strip() == "}")
    after = [k for k in range(src.backward_loop[-1] + 1, ret)
             if lines[k].strip() and not lines[k].strip().startswith("#")]
    src.after_loop = after
    src.returned = list(range(ret + 1, end))
    _names(src, fwd, bwd)
    src.statements = _derived(module.__doc__ or "")
    return src


def _names(src: Source, fwd: int, bwd: int):
    """Stacks, and groups of names of one shape: per-step cached arrays, split products, parameters,
    loop adjoints, parameter gradients."""
    lines = src.lines
    shapes: dict = {}
    for j, s in enumerate(lines[fwd:], fwd):
        m = re.match(r"\s+(\w+) = stack_rows\((.+)\)$", s)
        if m:
            src.stacks[m.group(1)] = [a.strip() for a in m.group(2).split(",")]
        m = re.match(r"\s+(\w+) = np\.empty\((\(.+?\)), dtype\)$", s)
        if m:
            shapes.setdefault(("empty", m.group(2)), set()).add(m.group(1))
            if j < bwd and m.group(2).startswith("(T, "):
                src.per_step.append(m.group(1))
            elif j < bwd and m.group(2).startswith("(T + 1, "):
                src.state_slots.append(m.group(1))
        m = re.match(r"\s+(\w+(?:, \w+)+) = split_(?:last|first)\(", s)
        if m:
            src.groups.append({n.strip() for n in m.group(1).split(",")})
    params = getattr(src.module.SIGNATURE, "parameters", {})
    by_shape: dict = {}
    for p, dims in params.items():
        by_shape.setdefault(tuple(dims), set()).add(p)
    for names in by_shape.values():
        src.groups.append(set(names))
        src.groups.append({f"d_{p}" for p in names})
    src.groups += [g for g in shapes.values()]
    loop_locals = set()
    for k in src.backward_loop:
        m = re.match(r"\s+(d_\w+) = ", lines[k])
        if m and not m.group(1).endswith(("_next", "_prev")):
            loop_locals.add(m.group(1))
    src.groups.append(loop_locals)
    src.groups = [g for g in src.groups if len(g) > 1]


def _derived(doc: str) -> dict:
    """lhs -> statement, forward ('Forward equations') and backward ('Derived backward step')."""
    out = {}
    for head in ("Forward equations", "Derived backward step"):
        if head not in doc:
            continue
        block = doc.split(head, 1)[1].split("\n\n", 1)[0]
        for line in block.splitlines():
            m = re.match(r"\s{4}(\w+) = (.+?)(\s{2,}\(.*\))?$", line)
            if m and m.group(1) not in out:
                out[m.group(1)] = f"{m.group(1)} = {m.group(2).strip()}"
    return out


# ------------------------------------------------------------------------------------ naming a line
def _lhs(line: str) -> str:
    s = line.strip()
    m = re.match(r"(\w+)(?:\[[^\]]*\])? = ", s)
    if m:
        return m.group(1)
    m = re.match(r"\w+\(.*out=(\w+)\[", s)
    return m.group(1) if m else ""


def statement_of(src: Source, k: int) -> str:
    """The derived statement generated line ``k`` computes (the line itself when none is named)."""
    lhs = _lhs(src.lines[k])
    st = src.statements
    if lhs in st:
        return st[lhs]
    if lhs.startswith("d_S_") and lhs[2:] in src.stacks:
        names = [f"d_{n}" for n in src.stacks[lhs[2:]]]
        first = st.get(names[0], names[0])
        return f"{first} (and {', '.join(names[1:])})" if len(names) > 1 else first
    if lhs in ("h", "c") or lhs in src.module.SIGNATURE.states:
        return st.get(lhs, src.lines[k].strip())
    m = re.match(r"\s+'(\w+)': (\w+),?$", src.lines[k])
    if m:
        return f"returned gradient {m.group(1)} ({st.get(m.group(2), m.group(2))})"
    return src.lines[k].strip()


# --------------------------------------------------------------------------------- enumerating edits
def _replace(tree, target, replacement):
    """A copy of ``tree`` with ``target`` (a node of it) replaced."""
    memo: dict = {}
    new = copy.deepcopy(tree, memo)
    old = memo[id(target)]

    class R(ast.NodeTransformer):
        def visit(self, node):
            if node is old:
                return copy.deepcopy(replacement)
            return self.generic_visit(node)

    return ast.fix_missing_locations(R().visit(new))


def _e(text: str):
    return ast.parse(text, mode="eval").body


def _same(a, b) -> bool:
    return ast.dump(a) == ast.dump(b)


def _node_edits(src: Source, node, in_loop: bool):
    """(kind, replacement) for one node of a right-hand side."""
    u = ast.unparse
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Add):
            yield "drop a summand", node.left
            yield "drop a summand", node.right
            yield "sign flipped", ast.BinOp(node.left, ast.Sub(), node.right)
        elif isinstance(node.op, ast.Sub):
            yield "drop a summand", node.left
            if not (isinstance(node.left, ast.Constant) and node.left.value == 1):
                yield "drop a summand", ast.UnaryOp(ast.USub(), node.right)
            yield "sign flipped", ast.BinOp(node.left, ast.Add(), node.right)
        elif isinstance(node.op, ast.Mult):
            yield from _activation_edits(node)
            yield "drop a factor", node.left
            yield "drop a factor", node.right
        elif isinstance(node.op, ast.MatMult):
            yield from _stack_edits(src, node.left, node.right, lambda a, s: ast.BinOp(a, ast.MatMult(), s))
    elif isinstance(node, ast.Call) and u(node.func) == "seq_matmul" and len(node.args) == 2:
        yield from _stack_edits(src, node.args[0], node.args[1], lambda a, s: _e(f"seq_matmul({u(a)}, {u(s)})"))
    elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        yield from _index_edits(src, node, in_loop)
    if isinstance(node, ast.Name):
        for g in src.groups:
            if node.id in g:
                for other in sorted(g - {node.id}):
                    yield "another gate's quantity", ast.Name(other, ast.Load())


def _derivative(node):
    """(generated function, incoming adjoint L, activation output Y) when ``node`` is an activation's derivative
    written from its output, as the derived backward writes it: ``L * Y * (1 - Y)`` (sigmoid) or
    ``L * (1 - Y**2)`` (tanh); else None."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)):
        return None
    r = node.right
    if not (isinstance(r, ast.BinOp) and isinstance(r.op, ast.Sub) and isinstance(r.left, ast.Constant)
            and r.left.value == 1):
        return None
    if isinstance(r.right, ast.BinOp) and isinstance(r.right.op, ast.Pow):
        return "tanh", node.left, r.right.left
    left = node.left
    if isinstance(left, ast.BinOp) and isinstance(left.op, ast.Mult) and _same(left.right, r.right):
        return "sigmoid", left.left, r.right
    return None


def _activation_edits(node):
    """X * (1 - X) [times what comes before] -> 1 or the derivative at the output."""
    d = _derivative(node)
    if d is None:
        return
    u = ast.unparse
    fn, adjoint, y = d
    if fn == "tanh":
        yield "activation derivative at the output", _e(f"{u(adjoint)} * (1 - np.tanh({u(y)})**2)")
        return
    yield "activation derivative replaced by 1", adjoint
    yield "activation derivative at the output", _e(f"{u(adjoint)} * sigmoid(1 * {u(y)}) * (1 - sigmoid(1 * {u(y)}))")


def _stack_edits(src: Source, a, s, build):
    """A stacked product A @ S_*: one gate's block left out; the blocks not transposed (square ones)."""
    name = ast.unparse(s)
    blocks = src.stacks.get(name)
    if not blocks:
        return
    n, ua = len(blocks), ast.unparse(a)
    for k, b in enumerate(blocks):
        yield f"drop a summand ({b})", build(_e(f"_drop_block({ua}, {k}, {n})"), s)
    yield "matrix not transposed", _e(f"_untransposed({ua}, {name}, {n})")


def _index_edits(src: Source, node, in_loop: bool):
    """A time index one step early or late (boundaries kept too); a slice h[:-1] <-> h[1:]."""
    u = ast.unparse
    base, idx = node.value.id, u(node.slice)
    if not in_loop:
        for a, b in ((":-1", "1:"), ("1:", ":-1")):
            if idx == a:
                yield "state one step off", _e(f"{base}[{b}]")
        return
    if idx == "t":
        opts = ["t + 1", "t + (t > 0)", "max(t - 1, 0)", f"min(t + 1, len({base}) - 1)"]
    elif idx == "t + 1":
        opts = ["t", f"t + 1 - (t + 1 < len({base}))", f"min(t + 2, len({base}) - 1)"]
    else:
        return
    for o in opts:
        yield "state one step off", _e(f"{base}[{o}]")


def _line_edits(src: Source, k: int, in_loop: bool):
    """(kind, new line) for line k: every node of its right-hand side (or of a call's arguments)."""
    line = src.lines[k]
    indent = line[: len(line) - len(line.lstrip())]
    try:
        tree = ast.parse(line.strip())
    except SyntaxError:
        return
    stmt = tree.body[0]
    if isinstance(stmt, ast.Assign):
        roots = [stmt.value]
    elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        roots = list(stmt.value.args)
        act = _activation_call(line)
        if act is not None:  # the activation replaced by the identity, or by a hard variant
            yield "activation removed", _variant_line(line, act, "{z}")
            for name, value, _ in ACTIVATION_VARIANTS.get(act[0], ()):
                if name != LINEAR:
                    yield f"{name} instead of {_spec_function(src, k, act[0])}", _variant_line(line, act, value)
    else:
        return
    for root in roots:
        for node in ast.walk(root):
            if isinstance(node, ast.Name) and node.id in ("np", "t", "T", "B", "H", "D", "dtype"):
                continue
            for kind, rep in _node_edits(src, node, in_loop):
                yield kind, indent + ast.unparse(_replace(tree, node, rep))


# ------------------------------------------------------------------------- hard and linear activations
LINEAR = "linear (identity)"
# generated function -> (variant, its value at the argument {z}, its derivative from the output {y}; None: 1)
# (the identity first: where a hard variant stays in its linear piece the two agree, and the simpler one is named)
ACTIVATION_VARIANTS = {
    "sigmoid": ((LINEAR, "{z}", None),
                ("hard sigmoid clip(0.2 z + 0.5, 0, 1) (Keras 2 hard_sigmoid)", "np.clip(0.2 * {z} + 0.5, 0, 1)",
                 "0.2 * (({y} > 0) & ({y} < 1))"),
                ("hard sigmoid clip(z / 6 + 0.5, 0, 1) (PyTorch hardsigmoid, Keras 3 hard_sigmoid)",
                 "np.clip({z} / 6 + 0.5, 0, 1)", "(({y} > 0) & ({y} < 1)) / 6")),
    "tanh": ((LINEAR, "{z}", None),
             ("hard tanh clip(z, -1, 1)", "np.clip({z}, -1, 1)", "1.0 * (({y} > -1) & ({y} < 1))")),
}


def _activation_call(line: str):
    """(function, argument, output) of a generated activation line ``f(z, out=y[t])``; None otherwise."""
    try:
        stmt = ast.parse(line.strip()).body[0]
    except SyntaxError:
        return None
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and stmt.value.args):
        return None
    out = next((kw.value for kw in stmt.value.keywords if kw.arg == "out"), None)
    return None if out is None else (ast.unparse(stmt.value.func), stmt.value.args[0], out)


def _variant_line(line: str, act, value: str) -> str:
    """The activation line ``line`` computing ``value`` ({z}: its argument) into its output instead."""
    indent = line[: len(line) - len(line.lstrip())]
    return f"{indent}np.copyto({ast.unparse(act[2])}, {value.format(z=ast.unparse(act[1]))})"


def _spec_function(src: Source, k: int, fn: str) -> str:
    """The spec's name of the function generated line ``k`` applies ('sigma' for sigmoid), from its statement."""
    rhs = statement_of(src, k).partition(" = ")[2]
    name = rhs.partition("(")[0]
    return name if name.isidentifier() else fn


def _derivative_sites(src: Source, out) -> list:
    """(line, node, adjoint) of the backward's derivatives of the activation whose output is ``out``."""
    found = []
    for k in src.backward_loop:
        try:
            tree = ast.parse(src.lines[k].strip())
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            d = _derivative(node)
            if d is not None and _same(d[2], out):
                found.append((k, tree, node, d[1]))
    return found


def _variant_edits(src: Source, k: int, act, back: list, value: str, deriv: str | None) -> list:
    """The edits of one activation site: its forward line, and each backward derivative of it."""
    edits = [(k, _variant_line(src.lines[k], act, value))]
    for kb, tree, node, adjoint in back:
        rep = adjoint if deriv is None else _e(f"{ast.unparse(adjoint)} * ({deriv.format(y=ast.unparse(act[2]))})")
        line = src.lines[kb]
        edits.append((kb, line[: len(line) - len(line.lstrip())] + ast.unparse(_replace(tree, node, rep))))
    return edits


def _activations(src: Source, add):
    """An activation replaced by a hard or linear variant in the forward and, consistently, its derivative in
    the backward (which the derivation writes from the activation's output): at one site, and at every site of
    the function at once (Keras' recurrent_activation is every gate's)."""
    sites: dict = {}
    for k in src.forward_loop:
        act = _activation_call(src.lines[k])
        if act is not None and act[0] in ACTIVATION_VARIANTS:
            back = _derivative_sites(src, act[2])
            if back and len({kb for kb, *_ in back}) == len(back):
                sites.setdefault(act[0], []).append((k, act, back))
    for fn, found in sites.items():
        spec = _spec_function(src, found[0][0], fn)
        for name, value, deriv in ACTIVATION_VARIANTS[fn]:
            every = []
            for k, act, back in found:
                edits = _variant_edits(src, k, act, back, value, deriv)
                every += edits
                add(f"{name} instead of {_spec_function(src, k, fn)}, its derivative too", "forward", k, edits)
            if len(found) > 1 and len({j for j, _ in every}) == len(every):
                add(f"{name} instead of every {spec}, its derivative too", "forward", found[0][0], sorted(every))


# -------------------------------------------------------------------------- conventions with a constant
FITTED = "_FITTED"  # the module-level name a fitted constant is read from


def _fitted_edits(src: Source, convention: str):
    """(edits, the spec's value) making one constant of the module a free one, read from ``FITTED``: 'clip'
    every clip bound (the forward's clip and the backward's clip_mask); 'eps' the epsilon of rsqrt(v + eps);
    'eps outside' that epsilon added to the square root, 1 / (sqrt(v) + eps), the backward's derivative of
    s = rsqrt(...), -s**3 / 2, made the one of that form, -s**3 / (2 (1 - eps s)). None without such constant."""
    values, outputs, edits = [], [], []

    class Free(ast.NodeTransformer):
        def visit_Call(self, node):
            self.generic_visit(node)
            name = ast.unparse(node.func)
            if convention == "clip" and name in ("clip", "clip_mask") and len(node.args) == 2:
                values.append(node.args[1])
                node.args[1] = ast.Name(FITTED, ast.Load())
            elif convention.startswith("eps") and name == "rsqrt" and isinstance(node.args[0], ast.BinOp) \
                    and isinstance(node.args[0].op, ast.Add):
                v, eps = node.args[0].left, node.args[0].right
                values.append(eps)
                if convention == "eps":
                    return _e(f"rsqrt({ast.unparse(v)} + {FITTED})")
                return _e(f"(1 / (np.sqrt({ast.unparse(v)}) + {FITTED}))")
            return node

    class Derivative(ast.NodeTransformer):
        def visit_BinOp(self, node):
            self.generic_visit(node)
            if isinstance(node.op, ast.Pow) and ast.unparse(node.right) == "3" and \
                    ast.unparse(node.left) in outputs:
                return _e(f"({ast.unparse(node)} / (1 - {FITTED} * {ast.unparse(node.left)}))")
            return node

    for k in src.forward_loop + src.backward_loop:
        line = src.lines[k]
        try:
            tree = ast.parse(line.strip())
        except SyntaxError:
            continue
        before = len(values)
        new = Free().visit(tree) if k in src.forward_loop or convention == "clip" else tree
        if len(values) > before and isinstance(tree.body[0], ast.Assign) and k in src.forward_loop:
            outputs.append(ast.unparse(tree.body[0].targets[0]))
        if convention == "eps outside" and k in src.backward_loop:
            new = Derivative().visit(new)
        text = ast.unparse(ast.fix_missing_locations(new))
        if text != ast.unparse(ast.parse(line.strip())):
            edits.append((k, line[: len(line) - len(line.lstrip())] + text))
    spec = {ast.unparse(v) for v in values}
    if not values or len(spec) > 1:
        return None
    names = {**vars(src.module), **(getattr(src.module.SIGNATURE, "constants", None) or {})}  # a named constant
    return tuple(edits), float(eval(spec.pop(), names))  # noqa: S307 - an expression of our own generated module


def fitted_module(module, convention: str, value: float):
    """(the reference with the constant of ``convention`` (see :func:`_fitted_edits`) set to ``value``, the spec's
    value); None when the module has no such constant."""
    key = ("fitted", module.__name__, convention)
    if key not in _MODULES:
        _MODULES[key] = _fitted_edits(source(module), convention)
    found = _MODULES[key]
    if found is None:
        return None
    mod = mutant(module, found[0])
    if mod is None:
        return None
    setattr(mod, FITTED, value)
    return mod, found[1]


# ------------------------------------------------------------------------------------- the mutations
def mutations(module) -> list[Mutation]:
    """Every single-point mutation of ``module``'s forward and backward (cached per module)."""
    key = ("mutations", module.__name__)
    if key in _MODULES:
        return _MODULES[key]
    src = source(module)
    out, seen = [], set()

    def add(kind, where, k, edits, variants=("whole",)):
        new = "\n".join(t for _, t in edits)
        if (tuple(edits)) in seen:
            return
        seen.add(tuple(edits))
        old, shown = src.lines[k], new
        if len(edits) > 1:  # several lines: shown on one
            old, shown = (" ; ".join(t.strip() for t in texts) for texts in ([src.lines[j] for j, _ in edits],
                                                                              [t for _, t in edits]))
        for v in variants:
            out.append(Mutation(f"{kind}|{v}|{k + 1}|{new.strip()}", kind, where, statement_of(src, k), k + 1,
                                old, shown, tuple(edits), v))

    variants = ("whole", "outputs", "cache") + (("recompute",) if _recomputable(src) else ())
    for k in src.forward_loop:
        for kind, new in _line_edits(src, k, True):
            add(kind, "forward", k, [(k, new)], variants)
    for k in src.backward_loop:
        for kind, new in _line_edits(src, k, True):
            add(kind, "backward", k, [(k, new)])
    for k in src.after_loop:
        for kind, new in _line_edits(src, k, False):
            add(kind, "backward", k, [(k, new)])
    _activations(src, add)
    _restricted(src, add)
    _carries(src, add)
    _returned(src, add)
    _MODULES[key] = out
    return out


def _param_lines(src: Source) -> list:
    """Lines after the loop that compute parameter gradients from per-step arrays."""
    params = set(src.module.SIGNATURE.parameters)
    out = []
    for k in src.after_loop:
        lhs = _lhs(src.lines[k])
        grad = (lhs.startswith("d_S_") and lhs[2:] in src.stacks) or lhs[2:] in params
        if grad and "split_" not in src.lines[k]:
            out.append(k)
    return out


def _restrict_line(src: Source, k: int, how: str) -> str | None:
    """Line k with every per-step operand restricted: 'first' step, 'last' step, first batch 'row'."""
    tree = ast.parse(src.lines[k].strip())
    per_step = {n for g in src.groups for n in g if n.startswith("d_")} | {"x", "d_Z0"}
    per_step |= {ast.unparse(t) for t in ast.walk(tree) if isinstance(t, ast.Name) and t.id.startswith("d_")}
    sl = {"first": "[:1]", "last": "[-1:]", "row": "[:, :1]"}[how]

    class R(ast.NodeTransformer):
        def visit_Name(self, node):
            if node.id in per_step and isinstance(node.ctx, ast.Load):
                return _e(f"{node.id}{sl}")
            return node

        def visit_Subscript(self, node):
            if isinstance(node.value, ast.Name) and ast.unparse(node.slice) in (":-1", "1:"):
                return _e(f"{ast.unparse(node)}{sl}")
            return self.generic_visit(node)

    stmt = tree.body[0]
    stmt.value = R().visit(stmt.value)
    new = ast.unparse(ast.fix_missing_locations(tree))
    line = src.lines[k]
    return None if new == line.strip() else line[: len(line) - len(line.lstrip())] + new


_RESTRICT = {"first": "the first step only (the last the backward visits)", "last": "the last step only",
             "row": "the first batch row only"}


def _restricted(src: Source, add):
    lines = _param_lines(src)
    for how, what in _RESTRICT.items():
        edits = [(k, _restrict_line(src, k, how)) for k in lines]
        edits = [(k, e) for k, e in edits if e]
        for k, e in edits:
            add(f"parameter gradient from {what}", "backward", k, [(k, e)])
        if len(edits) > 1:
            add(f"every parameter gradient from {what}", "backward", edits[0][0], edits)


def _carries(src: Source, add):
    """The carry line d_h_next, d_c_next = d_h_prev, d_c_prev: one state's adjoint not passed on."""
    for k in src.backward_loop:
        c = carry(src.lines[k])
        if not c:
            continue
        lhs, rhs = list(c.names), list(c.values)
        for j, (n, v) in enumerate(zip(lhs, rhs, strict=False)):
            s = n[2:-5]
            st = next((text for text in src.statements.values() if re.search(rf"\b{n}\b", text)), n)
            for repl, what in ((f"d_final['{s}']", "kept at the final-state cotangent"), (f"0 * {v}", "zero")):
                vals = list(rhs)
                vals[j] = repl
                edit = (k, c.line(vals))
                kind = f"carry {n} not passed on ({what})"
                add(kind, "backward", k, [edit])
                ret = next((r for r in src.returned if re.search(rf"'{s}0': {n},", src.lines[r])), None)
                if ret is not None:
                    fixed = (ret, src.lines[ret].replace(n, v))
                    add(kind + ", the step-0 gradient still returned", "backward", k, [edit, fixed])
            _ = st
        if len(lhs) > 1:  # every carry at once (one loop forgets them all)
            for what, rep in (("kept at the final-state cotangents", lambda n, v: f"d_final['{n[2:-5]}']"),
                              ("zero", lambda n, v: f"0 * {v}")):
                edit = (k, c.line([rep(n, v) for n, v in zip(lhs, rhs, strict=False)]))
                kind = f"no carry passed on ({what})"
                add(kind, "backward", k, [edit])
                rets = [(r, src.lines[r].replace(n, v)) for n, v in zip(lhs, rhs, strict=False) for r in src.returned
                        if re.search(rf"'{n[2:-5]}0': {n},", src.lines[r])]
                if rets:
                    add(kind + ", the step-0 gradients still returned", "backward", k, [edit] + rets)


def _returned(src: Source, add):
    for k in src.returned:
        m = re.match(r"(\s+)'(\w+)': (\w+),?$", src.lines[k])
        if m:
            add("returned gradient zero", "backward", k, [(k, f"{m.group(1)}'{m.group(2)}': 0 * {m.group(3)},")])
            for g in src.groups:
                if m.group(3) in g:
                    for other in sorted(g - {m.group(3)}):
                        add("another gate's quantity", "backward", k, [(k, f"{m.group(1)}'{m.group(2)}': {other},")])


# ---------------------------------------------------------------------------------- mutant modules
_HELPERS = '''

def _unset(shape, dtype):
    return np.full(shape, np.nan, dtype)

def _drop_block(a, k, n):
    w = a.shape[-1] // n
    a = a.copy()
    a[..., k * w:(k + 1) * w] = 0
    return a


def _untransposed(a, s, n):
    w = a.shape[-1] // n
    out = 0
    for k in range(n):
        blk = s[k * w:(k + 1) * w]
        out = out + a[..., k * w:(k + 1) * w] @ blk.T
    return out
'''


def mutant(module, edits: tuple):
    """The module with ``edits`` applied (compiled once per module and edits; None if it does not load)."""
    key = (module.__name__, edits)
    if key not in _MODULES:
        lines = list(source(module).lines)
        for k, text in edits:
            lines[k] = text
        try:
            text = "\n".join(lines).replace("np.empty(", "_unset(")  # a value read before it is written: NaN
            _MODULES[key] = load_module(text + _HELPERS, f"{module.__name__}_explain")
        except Exception:  # noqa: BLE001 - an edit that does not compile is no mutation
            _MODULES[key] = None
    return _MODULES[key]


_PREDICTIONS: dict = {}  # the last problem's predictions: {"problem": problem, (edits, variant, ...): result}


def _cached(problem: Problem, key: tuple, compute):
    """``compute()`` memoised for the last problem seen (by identity: a problem explained against many
    targets, as the round trip does, runs each mutation once; one problem at a time is kept)."""
    if _PREDICTIONS.get("problem") is not problem:
        _PREDICTIONS.clear()
        _PREDICTIONS["problem"] = problem
    if key not in _PREDICTIONS:
        _PREDICTIONS[key] = compute()
    res = _PREDICTIONS[key]
    return None if res is None else dict(res)


def reference(problem: Problem, biases: int, with_grads: bool) -> dict:
    """The reference's quantities on ``problem`` (memoised as :func:`predict`)."""
    return _cached(problem, ("reference", biases, with_grads),
                   lambda: expected(problem, biases=biases, with_grads=with_grads))


def predict(problem: Problem, m: Mutation, biases: int, with_grads: bool, base: dict | None = None) -> dict | None:
    """The quantities the reference with mutation ``m`` gives on ``problem`` (None when it cannot run)."""
    return _cached(problem, (m.edits, m.variant, biases, with_grads),
                   lambda: _predict(problem, m, biases, with_grads, base))


def _predict(problem: Problem, m: Mutation, biases: int, with_grads: bool, base: dict | None) -> dict | None:
    if m.variant in ("outputs", "cache"):  # parts of the whole module's run (one run for the three variants)
        res = predict(problem, replace(m, variant="whole"), biases, with_grads, base)
        return None if res is None else _part(problem, m, res, biases, with_grads, base)
    mod = mutant(problem.module, m.edits)
    if mod is None:
        return None
    if m.variant == "recompute":
        mod = Recomputed(problem.module, mod)
    with np.errstate(all="ignore"):
        try:
            res = expected(problem, module=mod, biases=biases, with_grads=with_grads)
        except Exception:  # noqa: BLE001 - e.g. an index out of range at a boundary: not this mutation
            return None
    if not all(np.isfinite(v).all() for v in res.values()):  # it reads a value never computed
        return None
    return res


def _part(problem: Problem, m: Mutation, res: dict, biases: int, with_grads: bool, base: dict | None) -> dict:
    """The 'outputs' or 'cache' variant of a forward mutation from the whole module's quantities ``res``."""
    base = base if base is not None else reference(problem, biases, with_grads)
    if m.variant == "outputs":  # the forward changed, the backward is the reference's
        return {k: (res[k] if not k.startswith("d ") else base[k]) for k in res}
    return {k: (res[k] if k.startswith("d ") else base[k]) for k in res}  # "cache"


def _recomputable(src: Source) -> bool:
    """Whether the backward's per-step values can be recomputed from the states (one array per state)."""
    return bool(src.per_step) and sorted(src.state_slots) == sorted(src.module.SIGNATURE.states)


class Recomputed:
    """A reference whose forward is ``forward``'s (a mutated module; ``forward_params`` changes the parameters
    it sees, e.g. a forget bias added at run time) and whose backward recomputes every step's values from the
    states that forward stored, with the reference's own step and the parameters as given: an implementation
    that keeps x_t and the previous states and recomputes the gates in its backward, without the change."""

    def __init__(self, reference, forward, forward_params=None):
        self.reference, self.fwd, self.forward_params = reference, forward, forward_params
        self.SIGNATURE = reference.SIGNATURE
        self.__name__ = f"{reference.__name__}_recomputed"

    def forward(self, params, x, **init):
        p = self.forward_params(params) if self.forward_params else params
        y, final, cache = self.fwd.forward(p, x, **init)
        src = source(self.reference)
        for t in range(x.shape[0]):
            states = {f"{s}0": cache[s][t] for s in src.state_slots}
            if init.get("constants") is not None:  # the target's declared constants, as the forward ran with
                states["constants"] = init["constants"]
            _, _, one = self.reference.forward(params, x[t:t + 1], **states)
            for k in src.per_step:
                cache[k][t] = one[k][0]
        return y, final, cache

    def backward(self, cache, dy=None, d_final=None, **kw):
        return self.reference.backward(cache, dy, d_final, **kw)


def combine(a: Mutation, b: Mutation) -> Mutation | None:
    """Two mutations at once (on different lines, both of the whole module)."""
    lines_a, lines_b = {k for k, _ in a.edits}, {k for k, _ in b.edits}
    if lines_a & lines_b or "whole" not in (a.variant, b.variant) or a.variant != b.variant:
        return None
    return Mutation(f"{a.key} + {b.key}", f"{a.kind} + {b.kind}", a.where if a.where == b.where else "both",
                    f"{a.statement} and {b.statement}", a.line, f"{a.old.strip()} ; {b.old.strip()}",
                    f"{a.new.strip()} ; {b.new.strip()}", tuple(sorted(a.edits + b.edits)))


# ------------------------------------------------------------------------------------------ matching
@dataclass
class Match:
    """How well one candidate (a mutation or a catalogue entry) reproduces the target on one problem."""

    name: str
    explained: list  # failing quantities it reproduces
    broken: list  # passing quantities it does not
    pred: dict
    source: object = None  # the Mutation or (signature, detail)

    @property
    def score(self) -> tuple:
        return (len(self.explained), -len(self.broken))

    def full(self, failing: list) -> bool:
        """Every failing quantity reproduced (or left out on purpose: a catalogue entry does not predict
        e.g. the gradient of a bias it drops), no passing one broken."""
        return not self.broken and all(q in self.explained or q not in self.pred for q in failing)


def score(problem: Problem, got: dict, failing: list, passing: list, pred: dict, tol: float) -> tuple | None:
    """(explained failing quantities, broken passing ones) of a prediction; None if it predicts none."""
    keys = [q for q in failing + passing if q in pred]
    if not any(q in pred for q in failing):
        return None
    rows = {r.quantity: r for r in compare(problem, got, pred, tol, keys)}
    return ([q for q in failing if q in rows and rows[q].within],
            [q for q in passing if q in rows and not rows[q].within])


def same(problem: Problem, a: dict, b: dict, keys: list, tol: float) -> bool:
    """Two predictions indistinguishable on ``keys`` (within the case's tolerance)."""
    keys = [k for k in keys if k in a and k in b]
    return bool(keys) and all(r.within for r in compare(problem, a, b, tol, keys))


FORWARD_OUTPUTS = ("y",)
TOP_SINGLES = 6  # partial singles combined in pairs when nothing explains everything


def _is_output(q: str) -> bool:
    base = q.split(" [")[0]
    return base == "y" or base.endswith("_T")


def candidates(problem: Problem, failing: list) -> list[Mutation]:
    """The mutations worth trying: forward ones (all variants) when an output fails; otherwise backward
    ones and the forward's 'cache' variant (a value recomputed wrongly for the backward)."""
    out_fails = any(_is_output(q) for q in failing)
    grads_fail = any(not _is_output(q) for q in failing)
    keep = []
    for m in mutations(problem.module):
        if m.where == "forward":
            if m.variant == "cache" and not grads_fail:
                continue
            if m.variant != "cache" and not out_fails:
                continue
        elif out_fails:
            continue
        keep.append(m)
    return keep


def explain(problem: Problem, got: dict, failing: list, passing: list, tol: float, biases: int,
            with_grads: bool, extra: list | None = None) -> list[list[Match]]:
    """Groups of candidates, best first: every full explanation (all failing quantities reproduced, no
    passing one broken) as its own group of indistinguishable candidates; else the best partial one.
    ``extra``: (source, prediction, tolerance or None) tried first (the catalogue)."""
    base = reference(problem, biases, with_grads)
    tried = [(src_, pred, tol_ or tol) for src_, pred, tol_ in extra or []]
    full = [Match(_name(s_), [q for q in failing if q in p_], [], p_, s_) for s_, p_, t_ in tried
            if _reproduces(problem, got, failing, passing, p_, t_)]
    if full:  # a named convention reproduces the numbers: the mutations would only add indistinguishable ones
        return _group(problem, full, failing + passing, tol)
    for m in candidates(problem, failing):
        pred = predict(problem, m, biases, with_grads, base)
        if pred is not None:
            tried.append((m, pred, tol))
    full = [Match(_name(s_), [q for q in failing if q in p_], [], p_, s_) for s_, p_, t_ in tried
            if _reproduces(problem, got, failing, passing, p_, t_)]
    if full:  # the common case: no candidate needs scoring on every quantity
        return _group(problem, full, failing + passing, tol)
    matches: list = []
    for src_, pred, tol_ in tried:
        _add(matches, problem, got, failing, passing, pred, tol_, src_)
    full = _pairs(problem, got, failing, passing, tol, biases, with_grads, matches)
    if full:
        return _group(problem, full, failing + passing, tol)
    best = sorted((x for x in matches if x.explained), key=lambda x: (-x.score[0], -x.score[1]))
    return _group(problem, best[:1], failing + passing, tol) if best else []


def _reproduces(problem, got, failing, passing, pred, tol) -> bool:
    """Whether ``pred`` is a full explanation (as :meth:`Match.full`), stopping at the first quantity it
    gets wrong: most candidates are out after one comparison."""
    keys = [q for q in failing if q in pred]
    if not keys:
        return False
    return all(compare(problem, got, pred, tol, [q])[0].within for q in keys + [q for q in passing if q in pred])


def _add(matches, problem, got, failing, passing, pred, tol, src_):
    s = score(problem, got, failing, passing, pred, tol)
    if s is not None and s[0]:
        matches.append(Match(_name(src_), s[0], s[1], pred, src_))


def _name(src_) -> str:
    return src_.key if isinstance(src_, Mutation) else str(src_)


def _pairs(problem, got, failing, passing, tol, biases, with_grads, matches) -> list:
    """Pairs among the best partial single mutations (on different lines)."""
    singles = [x for x in matches if isinstance(x.source, Mutation) and x.source.variant == "whole"]
    singles.sort(key=lambda x: (-x.score[0], -x.score[1]))
    top, seen = [], set()
    for x in singles:  # the best of each line
        line = x.source.edits
        if line not in seen:
            seen.add(line)
            top.append(x)
        if len(top) == TOP_SINGLES:
            break
    out = _forward_with_backward(problem, got, failing, passing, tol, biases, with_grads, top)
    if out or not top:
        return out
    for b in mutations(problem.module):  # the best partial one with every other change
        m = combine(top[0].source, b) if b.where == top[0].source.where else None
        pred = predict(problem, m, biases, with_grads) if m else None
        s = score(problem, got, failing, passing, pred, tol) if pred is not None else None
        if s and len(s[0]) == len(failing) and not s[1]:
            out.append(Match(m.key, s[0], s[1], pred, m))
    if out:
        return out
    for a_i, a in enumerate(top):
        for b in top[a_i + 1:]:
            if not set(a.explained) - set(b.explained) or not set(b.explained) - set(a.explained):
                continue  # a pair is only worth it when each explains something the other does not
            m = combine(a.source, b.source)
            pred = predict(problem, m, biases, with_grads) if m else None
            if pred is None:
                continue
            s = score(problem, got, failing, passing, pred, tol)
            if s and len(s[0]) == len(failing) and not s[1]:
                out.append(Match(m.key, s[0], s[1], pred, m))
    return out


def _group(problem, matches, keys, tol) -> list[list[Match]]:
    groups: list[list[Match]] = []
    for x in matches:
        for g in groups:
            if same(problem, g[0].pred, x.pred, keys, tol):
                g.append(x)
                break
        else:
            groups.append([x])
    return groups


def explain_catalogue(problem: Problem, got: dict, failing: list, passing: list, tol: float, extra: list):
    """The catalogue alone (cases of several layers or directions), grouped and ranked as :func:`explain`."""
    matches: list = []
    for src_, pred, tol_ in extra:
        _add(matches, problem, got, failing, passing, pred, tol_ or tol, src_)
    full = [x for x in matches if x.full(failing)]
    return _group(problem, full, failing + passing, tol)


FORWARD_PAIRED = 2  # forward mutations that reproduce the outputs, paired with every backward one


def _forward_with_backward(problem, got, failing, passing, tol, biases, with_grads, top) -> list:
    """A forward change that reproduces every failing output, with the backward changed to match (the
    backward of the changed forward, written by hand): the forward mutation paired with each backward one."""
    outs = [q for q in failing if _is_output(q)]
    fwd = [x for x in top if x.source.where == "forward" and outs and all(q in x.explained for q in outs)]
    if not fwd or not with_grads:
        return []
    back = [m for m in mutations(problem.module) if m.where == "backward"]
    out = []
    for a in fwd[:FORWARD_PAIRED]:
        for b in back:
            m = combine(a.source, b)
            pred = predict(problem, m, biases, with_grads) if m else None
            s = score(problem, got, failing, passing, pred, tol) if pred is not None else None
            if s and len(s[0]) == len(failing) and not s[1]:
                out.append(Match(m.key, s[0], s[1], pred, m))
    return out
