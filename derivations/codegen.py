"""Writing a derivation as a NumPy module: forward over a sequence keeping what backward needs, and
backward through time accumulating parameter gradients.

The generated code follows the derivation statement by statement (``lstm-spec derive CELL``), so a
reader can check it line by line. Layout of the arrays in the generated code:

- sequences are time-major: x has shape (T, B, D);
- a state s is kept in an array of T + 1 slots: ``s[0]`` is the initial state and ``s[t + 1]`` the
  state after loop step t, so in the loop ``s[t]`` is s_{t-1} and ``s[t + 1]`` is s_t of the math;
- a value the backward pass needs is cached in an array of T slots; others stay local to the step;
- matrix products with an input are done for all time steps at once before the loop, and parameter
  gradients as one contraction over (time, batch) after it.
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass

import sympy

from lstm_spec.spec.language import Call

from .functions import FUNCTIONS, kind_of
from .printing import CodePrinter, print_ast, reads, reorder
from .render import backward_equations, forward_equations
from .reverse import Derivation
from .rules import (
    MATVEC,
    MATVEC_SEQ,
    MATVEC_VJP_MATRIX,
    MATVEC_VJP_OPERAND,
    MATVEC_VJP_OPERAND_SEQ,
    SPLIT_COLUMNS,
    SPLIT_ROWS,
    STACK,
    SUM_VJP,
)

COMMAND = "lstm-spec generate"


class CodegenError(ValueError):
    pass


def _shape(dims):
    return "(" + ", ".join(dims) + ")"


class _Plan:
    """Which values are cached, what each symbol is called in each part of the generated code."""

    def __init__(self, d: Derivation):
        self.d = d
        cell = d.cell
        info = d.symbols.info
        self.info = info
        refs_loop, refs_after = set(), set()
        for st in d.loop:
            refs_loop |= reads(st.elementwise) | {dl for _, dl in st.matvec}
        for st in d.after:
            refs_after |= reads(st.elementwise) | {dl for _, dl in st.matvec}
            for dl, v in st.outer:
                refs_after |= {dl, v}
        refs = refs_loop | refs_after
        self.refs = refs
        self.inputs = set(cell.inputs)
        self.states = list(cell.states)
        values = [fe.lhs for fe in d.forward]
        self.cached = {n for n in values if n not in cell.states and
                       (d.symbols.value(n) in refs or n == cell.output)}
        self.terms = [s for s in info if info[s].kind == "term"]
        self.precomputed = {s for s in self.terms if info[s].operand in cell.inputs}
        self.cached_terms = {s for s in self.terms if s in refs and s not in self.precomputed}
        self.stored_adjoints = {st.target for st in d.loop if st.target in refs_after}
        self.shapes = {fe.lhs: fe.shape for fe in d.forward}
        for n, q in list(cell.inputs.items()) + list(cell.states.items()):
            self.shapes[n] = q.shape
        self.ns = d.namespace.copy()  # the stacks' and buffers' names are added to a copy

    def term_name(self, s):
        return self.d.code_names[s]

    def adjoint_name(self, s):
        return self.d.code_names[s]

    def next_name(self, state):
        return self.d.code_names[self.d.symbols.next(state)]

    def adjoint_dims(self, a):
        of = self.info[self.info[a].of]
        return self.term_dims(self.info[a].of) if of.kind == "term" else self.shapes[of.name]

    def term_dims(self, s):
        return (self.d.cell.parameters[self.info[s].matrix].shape[0],)

    def names(self, where: str) -> dict:
        """where: 'loop' (inside the time loop, index t) or 'all' (whole arrays, after the loop)."""
        out = {}
        loop = where == "loop"
        for s, i in self.info.items():
            if i.kind == "value":
                if i.name in self.states:
                    out[s] = f"{i.name}[t + 1]" if loop else f"{i.name}[1:]"
                elif i.name in self.inputs or i.name in self.cached:
                    out[s] = f"{i.name}[t]" if loop else i.name
                else:
                    out[s] = i.name
            elif i.kind == "prev":
                out[s] = f"{i.name}[t]" if loop else f"{i.name}[:-1]"
            elif i.kind in ("param", "const"):
                out[s] = i.name
            elif i.kind == "term":
                stored = s in self.precomputed or s in self.cached_terms
                out[s] = self.term_name(s) + ("[t]" if loop and stored else "")
            elif i.kind == "next":
                out[s] = self.d.code_names[s]
            elif i.kind == "cot":
                out[s] = "dy[t]" if loop else "dy"
            else:
                name = self.adjoint_name(s)
                out[s] = f"{name}[t]" if loop and s in self.stored_adjoints else name
        return out

@dataclass
class _Stack:
    """Linear terms with one operand, computed by one GEMM: v @ S.T with S = [M_1; ...; M_k]."""

    operand: sympy.Symbol  # the operand's symbol (a value or a state at t-1)
    terms: list  # the term symbols, in stacking order
    matrices: list  # their matrices' names, same order
    sizes: list  # their matrices' row dimensions (dimension names), same order
    matrix: str  # the stacked matrix's name in the generated code, S_x (S_<operand>)
    product: str  # the product's, P_x
    gradient: str  # the stacked matrix's gradient's, d_S_x
    adjoints: list | None = None  # the terms' adjoints (stored side by side in one buffer), or None
    buffer: int | None = None  # which adjoint buffer holds them
    offset: list | None = None  # their columns in that buffer: the dimension names before them
    width: list | None = None  # and their own
    params: bool = False  # the matrices' gradients come from one contraction (each has no other use)


def _find_stacks(d: Derivation, plan) -> tuple[list, list]:
    """Group the linear terms by operand (two or more terms: one GEMM), and lay out their adjoints side by
    side in buffers so that the backward products are single GEMMs too. Returns (stacks, buffers), a
    buffer being the list of adjoint symbols it holds, in order."""
    stacks = _stacks_of_groups(d, plan, _terms_by_operand(d, plan))
    _stack_adjoints(d, plan, stacks)
    # buffers: adjoints used together laid out side by side; every stack must find its adjoints as one
    # contiguous run (stacks are reordered to match); the ones that do not keep one product per term
    with_adj = [st for st in stacks if st.adjoints]
    buffers = _adjoint_buffers(d, with_adj)
    for st in with_adj:
        _place_in_buffer(d, plan, st, buffers)
    return stacks, buffers


def _terms_by_operand(d: Derivation, plan) -> dict:
    """The linear terms by operand, in order of first use (None for a term whose value backward needs)."""
    info, cell, sym = d.symbols.info, d.cell, d.symbols
    order = {}
    for fe in d.forward:
        for t in sorted(fe.expr.free_symbols, key=lambda s: s.name):
            if info[t].kind == "term":
                order.setdefault(t, len(order))
    groups: dict = {}
    for t in sorted(order, key=order.get):
        i = info[t]
        if i.prev:
            operand = sym.prev(i.operand)
        elif i.operand in cell.inputs or i.operand in {fe.lhs for fe in d.forward}:
            operand = sym.value(i.operand)
        else:
            continue  # a matrix times a parameter vector: not stacked
        if t in plan.cached_terms:
            groups.setdefault(operand, [])  # a term whose value backward needs: left alone
            groups[operand].append(None)
            continue
        groups.setdefault(operand, []).append(t)
    return groups


def _stacks_of_groups(d: Derivation, plan, groups: dict) -> list:
    """A stack (with its names allocated) for each group of two or more terms with distinct matrices."""
    info, cell = d.symbols.info, d.cell
    stacks = []
    for operand, terms in groups.items():
        if len(terms) < 2 or None in terms or len({info[t].matrix for t in terms}) < len(terms):
            continue
        oi = info[operand]
        name = oi.name + ("_prev" if oi.kind == "prev" else "")
        what = f"the matrices that multiply {oi.name}" + ("[t-1]" if oi.kind == "prev" else "")
        names = [plan.ns.fresh(f"{prefix}_{name}", f"{role} {what}")
                 for prefix, role in (("S", "the stack of"), ("P", "the product of"), ("d_S", "the gradient of"))]
        stacks.append(_Stack(operand, terms, [info[t].matrix for t in terms],
                             [cell.parameters[info[t].matrix].shape[0] for t in terms], *names))
    return stacks


def _stack_adjoints(d: Derivation, plan, stacks: list) -> None:
    """Each stack's adjoints: the one stored adjoint each term sends on (the d_operand statement's (M, dL)
    pairs), when every term has exactly one and they are distinct."""
    by_target = {st.target: st for st in d.statements}
    for st in stacks:
        target = d.adjoint_of.get(st.operand)
        stmt = by_target.get(target)
        if stmt is None:
            continue
        pairs = {}
        for M, dl in stmt.matvec:
            pairs.setdefault(M, []).append(dl)
        dls = [pairs.get(M, []) for M in st.matrices]
        if all(len(x) == 1 for x in dls) and len({x[0] for x in dls}) == len(dls) and \
                all(x[0] in plan.stored_adjoints for x in dls):
            st.adjoints = [x[0] for x in dls]


def _adjoint_buffers(d: Derivation, with_adj: list) -> list:
    """The buffers: the stacks' adjoints, those used together merged, each laid out most used first."""
    uses = {}
    for st in with_adj:
        for a in st.adjoints:
            uses[a] = uses.get(a, 0) + 1
    first = {}
    for st in d.loop:
        first.setdefault(st.target, len(first))
    components: list[set] = []
    for st in with_adj:
        merged = set(st.adjoints)
        for comp in [c for c in components if c & merged]:
            merged |= comp
            components.remove(comp)
        components.append(merged)
    buffers = []
    for comp in components:
        layout = sorted(comp, key=lambda a: (-uses[a], -first.get(a, 0), a.name))  # a.name: not set order
        buffers.append(layout)
    return buffers


def _place_in_buffer(d: Derivation, plan, st: _Stack, buffers: list) -> None:
    """Put st's adjoints at their columns of their buffer (its terms reordered to match), or give them up
    (st.adjoints = None) when they are not one contiguous run; and whether its matrices' gradients are one
    contraction."""
    sym = d.symbols
    b = next(k for k, lay in enumerate(buffers) if st.adjoints[0] in lay)
    lay = buffers[b]
    pos = sorted(lay.index(a) for a in st.adjoints)
    if pos != list(range(pos[0], pos[0] + len(pos))):
        st.adjoints = None
        return
    perm = sorted(range(len(st.terms)), key=lambda k: lay.index(st.adjoints[k]))
    for field_ in ("terms", "matrices", "sizes", "adjoints"):
        setattr(st, field_, [getattr(st, field_)[k] for k in perm])
    st.buffer = b
    st.offset = [plan.adjoint_dims(a)[0] for a in lay[:pos[0]]]
    st.width = [plan.adjoint_dims(a)[0] for a in st.adjoints]
    # the matrices' gradients as one contraction: each matrix has exactly this one use
    by_target = {s.target: s for s in d.statements}
    outers = {sym.param(M): by_target[d.adjoint_of[sym.param(M)]].outer for M in st.matrices
              if sym.param(M) in d.adjoint_of}
    st.params = len(outers) == len(st.matrices) and all(
        o == [(a, st.operand)] for o, a in zip(outers.values(), st.adjoints, strict=True))


# ----------------------------------------------------------------------------------------- the module's shape
_GLOBALS = ("SIGNATURE", "STOP_GRADIENT", "MASKS", "KINKS")  # module-level constants besides the imports
_RUNTIME_MODULE = "lstm_spec.reference._runtime"
_RUNTIME_HELPERS = ("seq_matmul", "split_first", "split_last", "stack_rows")


def check_module(text: str, names: set) -> None:
    """The written module has exactly the expected top level and binds only names of its namespace. A second
    line of defence behind the loader: no spec text can add a statement (a title that ended the docstring
    would), and no invented name can bypass the namespace. Raises CodegenError."""
    tree = ast.parse(text)
    for k, node in enumerate(tree.body):
        if not _expected_top_level(k, node):
            raise CodegenError(f"the generated module has an unexpected top level statement at line {node.lineno}: "
                               f"{ast.unparse(node)[:80]!r}")
    check_module_names(text, names, tree)


def _expected_top_level(k: int, node) -> bool:
    if k == 0:
        return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    if isinstance(node, ast.Import):
        return [(a.name, a.asname) for a in node.names] == [("numpy", "np")]
    if isinstance(node, ast.ImportFrom):
        return node.module == _RUNTIME_MODULE and node.level == 0
    if isinstance(node, ast.FunctionDef):
        return node.name in ("forward", "backward")
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in _GLOBALS):
        return False
    value = node.value
    if node.targets[0].id == "SIGNATURE":
        if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "Signature"
                and not value.args):
            return False
        return all(_literal(kw.value) for kw in value.keywords)
    return _literal(value)


def _literal(node) -> bool:
    try:
        ast.literal_eval(node)
    except ValueError:
        return False
    return True


def check_module_names(text: str, names: set, tree=None) -> None:
    """Every name the module's functions bind (arguments and assignments) is one of ``names``."""
    tree = tree or ast.parse(text)
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        bound = [a.arg for a in fn.args.args + fn.args.kwonlyargs]
        bound += [n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
        stray = sorted(set(bound) - names)
        if stray:
            raise CodegenError(f"{fn.name}() binds {stray[0]!r}, a name outside the generated module's namespace "
                               "(a generator bug: every name it invents must be allocated there)")


def _digest(cell) -> str:
    return hashlib.sha256(cell.source.encode("utf-8")).hexdigest()[:16]


def _dims_sum(dims) -> str:
    return str(sum((sympy.Symbol(x) for x in dims), sympy.S.Zero))


class _Writer:
    """What one module is written from (the derivation, its plan, stacks and adjoint buffers, the names of
    every symbol in and after the loop) and the lines written so far."""

    def __init__(self, d: Derivation):
        self.d, self.cell, self.info = d, d.cell, d.symbols.info
        self.plan = plan = _Plan(d)
        self.stacks, self.buffers = _find_stacks(d, plan)
        self.stacked_terms = {t: st for st in self.stacks for t in st.terms}
        self.used_buffers = sorted({st.buffer for st in self.stacks if st.buffer is not None})
        self.buffer_name = {k: plan.ns.fresh(f"d_Z{n}", f"adjoint buffer {n}")
                            for n, k in enumerate(self.used_buffers)}
        self.in_buffer = {a: k for k in self.used_buffers for a in self.buffers[k]}
        self.loop_names, self.all_names = plan.names("loop"), plan.names("all")
        self.printer_loop = CodePrinter(self.loop_names, d.shape)
        self.printer_all = CodePrinter(self.all_names, d.shape)
        self.inputs, self.states = list(d.cell.inputs), plan.states
        self.cached_order = [fe.lhs for fe in d.forward if fe.lhs in plan.cached]
        self.cache_items: list[str] = []  # what forward's cache holds besides dims, dtype and constants
        self.lines: list[str] = []

    def emit(self, line: str) -> None:
        self.lines.append(line)

    def buffer_slice(self, st, at):
        """The columns of st's adjoints in their buffer (at: '[t]' in the loop, '' after it)."""
        name = self.buffer_name[st.buffer] + at
        if len(st.adjoints) == len(self.buffers[st.buffer]):
            return name
        a, b = _dims_sum(st.offset), _dims_sum(st.offset + st.width)
        return f"{name}[..., {'' if a == '0' else a}:{b}]"


def generate_module(d: Derivation) -> str:
    w = _Writer(d)
    _write_header(w)
    w.emit("import numpy as np")
    w.emit("")
    import_at = len(w.lines)  # the runtime import, written at the end with the helpers the code uses
    w.emit("")
    w.emit("")
    _write_signature(w)
    _write_module_constants(w)
    w.emit("")
    w.emit("")
    _write_forward(w)
    w.emit("")
    w.emit("")
    _write_backward(w)
    _write_runtime_import(w, import_at)
    text = "\n".join(w.lines) + "\n"
    check_module(text, w.plan.ns.names())
    return text


# ----------------------------------------------------------------------------------------- header and globals
def _write_header(w: _Writer) -> None:
    """The module's docstring: the cell, the equations forward and backward, the layout, the stacks."""
    cell, emit = w.cell, w.emit
    emit('"""' + f"{cell.title} (cell {cell.name!r}): forward pass and backpropagation through time.")
    emit("")
    emit("GENERATED FILE - DO NOT EDIT.")
    emit(f"Generated by `{COMMAND}` from {cell.origin} (spec sha256 {_digest(cell)}...).")
    emit(f"To change it, edit the spec and run `{COMMAND}`; `{COMMAND} --check` fails when it is stale.")
    emit("")
    emit("Forward equations of one time step (x is x_t; NAME[t-1] is the previous step's value):")
    for r in forward_equations(w.d):
        emit(f"    {r}" + ("    (auxiliary, named by the derivation)" if r.kind == "aux" else ""))
    if cell.constants:
        emit("")
        emit("Constants (the spec's [constants]): forward(..., constants={name: value}) overrides these defaults,")
        emit("backward() uses the forward's (read from the cache); an unknown name is an InputError:")
        for c in cell.constants.values():
            emit(f"    {c.name} = {c.value!r}" + (f": {c.doc}" if c.doc else ""))
    emit("")
    emit("Derived backward step (d_q is the adjoint dL/dq; products are elementwise; d_s_next is what")
    emit("step t+1 sent back to state s, d_s_prev what this step sends to step t-1; dy is the cotangent of")
    emit(f"the output y_t = {cell.output}_t; parameter sums run over time and batch):")
    for r in backward_equations(w.d):
        emit(f"    {r}")
    emit("")
    emit("Array layout: time-major sequences (T, B, ...). A state s is stored with T + 1 slots: s[0] is the")
    emit("initial state and s[t + 1] the state after loop step t (so s[t] is s_{t-1} of the equations).")
    if w.stacks:
        _write_header_stacks(w)
    emit('"""')
    emit("")


def _write_header_stacks(w: _Writer) -> None:
    """The docstring's account of the stacked products and the adjoint buffers."""
    emit, info = w.emit, w.info
    emit("")
    emit("Stacked products (one GEMM for the terms that share an operand; rules.py, confirmed by SymPy):")
    for st in w.stacks:
        oname = info[st.operand].name + ("[t-1]" if info[st.operand].kind == "prev" else "")
        emit(f"    {st.matrix} = [{'; '.join(st.matrices)}]; {st.product} = {oname} @ {st.matrix}.T holds "
             + ", ".join(f"{M} {oname}" for M in st.matrices) + " side by side")
    for k in w.used_buffers:
        names = [w.plan.adjoint_name(a) for a in w.buffers[k]]
        users = [st for st in w.stacks if st.buffer == k]
        emit(f"    {w.buffer_name[k]} holds {', '.join(names)} side by side; for each stack S the operand's "
             "adjoint sum_j M_j^T d_j")
        emit(f"    is {w.buffer_name[k]} @ S (its columns of {w.buffer_name[k]}) and d_S = tensordot of those "
             "columns with the operand: " + ", ".join(st.matrix for st in users))


def _write_signature(w: _Writer) -> None:
    """SIGNATURE: the cell's names and shapes, its output and constants."""
    cell, emit = w.cell, w.emit
    emit("SIGNATURE = Signature(")
    emit(f"    cell={cell.name!r},")
    emit(f"    inputs={ {n: q.shape for n, q in cell.inputs.items()}!r},")
    emit(f"    states={ {n: q.shape for n, q in cell.states.items()}!r},")
    emit("    parameters={")
    for n, q in cell.parameters.items():
        emit(f"        {n!r}: {q.shape!r},")
    emit("    },")
    emit(f"    output={cell.output!r},")
    emit(f"    output_dims={w.plan.shapes[cell.output]!r},")
    if cell.constants:
        emit(f"    constants={ {c.name: c.value for c in cell.constants.values()}!r},")
        positive = tuple(c.name for c in cell.constants.values() if c.positive)
        if positive:
            emit(f"    positive_constants={positive!r},")
    emit(")")


def _kinks(d: Derivation) -> list:
    """(cached value's name, bound) for every clip whose derivative jumps; a bound is a number or a constant."""
    info, kinks = d.symbols.info, []
    for st in d.statements:
        for m in st.elementwise.atoms(sympy.Function):
            if kind_of(m.func).kind == "clip_mask" and isinstance(m.args[0], sympy.Symbol):
                arg = info[m.args[0]]
                key = arg.name if arg.kind in ("value", "prev") else None
                bound = info[m.args[1]].name if m.args[1] in info else float(m.args[1])  # a constant's name
                if key and (key, bound) not in kinks:
                    kinks.append((key, bound))
    return kinks


def _write_module_constants(w: _Writer) -> None:
    """STOP_GRADIENT, MASKS and KINKS, each when the cell has them."""
    d, emit = w.d, w.emit
    kinks = _kinks(d)
    if any(kind_of(a.func).kind == "stop_gradient" for fe in d.forward for a in fe.expr.atoms(sympy.Function)):
        emit("")
        emit("# The backward pass is the gradient of a truncated objective (stop_gradient): finite differences,")
        emit("# which see the untruncated function, do not apply to it; complex-step derivatives do.")
        emit("STOP_GRADIENT = True")
    if w.cell.masks:
        emit("")
        emit("# Inputs that are masks (spec [masks]): 0 with probability p, else 1/(1-p) (inverted) or 1 (binary);")
        emit("# 'fixed': one mask repeated at every step. The numeric checks draw them so.")
        emit(f"MASKS = {w.cell.masks!r}")
    if kinks:
        emit("")
        emit("# Where the derivative has kinks: (cached value, |value| at which the clip's derivative jumps: a number")
        emit("# or the name of a constant, whose value is the forward's).")
        emit("# The numeric derivative checks draw instances whose values stay away from these.")
        emit(f"KINKS = {kinks!r}")


def _write_runtime_import(w: _Writer, import_at: int) -> None:
    """The runtime import at its place: the fixed names and the helpers the code calls, nothing else."""
    code = "\n".join(w.lines[import_at:])
    runtime = sorted(h for h in {fk.runtime_name for fk in FUNCTIONS.values()} | set(_RUNTIME_HELPERS)
                     if re.search(rf"\b{h}\(", code))
    w.lines[import_at:import_at + 1] = ["from lstm_spec.reference._runtime import "
                                        "(Signature, cached_constants, finish_backward, finish_forward, "
                                        "guarded, prepare, prepare_constants, prepare_cotangents,",
                                        "                                           " + ", ".join(runtime) + ")"]


# ----------------------------------------------------------------------------------------- forward
def _write_forward(w: _Writer) -> None:
    _write_forward_docstring(w)
    _write_forward_setup(w)
    _write_forward_storage(w)
    w.emit("")
    w.emit("    for t in range(T):")
    _write_forward_loop(w)
    w.emit("")
    _write_forward_finish(w)


def _write_forward_docstring(w: _Writer) -> None:
    cell, emit, states = w.cell, w.emit, w.states
    init_args = ", ".join(f"{s}0=None" for s in states)
    emit("@guarded  # runs under the non-finite policy (_runtime.guard): "
         "with 'raise', a NaN or Inf is caught where it is made")
    emit(f"def forward(params, {', '.join(w.inputs)}, {init_args}, *, constants=None, nonfinite=\"propagate\"):")
    emit(f'    """Run the {cell.name} cell over a sequence.')
    emit("")
    emit("    params: dict of arrays keyed by the spec's parameter names: " +
         ", ".join(f"{n} {_shape(q.shape)}" for n, q in cell.parameters.items()) + ".")
    for n, q in cell.inputs.items():
        emit(f"    {n}: the input sequence, shape (T, B, {', '.join(q.shape)}), time-major.")
    for s, q in cell.states.items():
        emit(f"    {s}0: initial {s}, shape (B, {', '.join(q.shape)}); zeros when omitted.")
    emit("")
    emit(f"    Returns (y, final, cache): y = ({cell.output}_1, ..., {cell.output}_T) of shape (T, B, "
         f"{', '.join(w.plan.shapes[cell.output])}),")
    emit("    final = {" + ", ".join(f"{s!r}: {s}_T" for s in states) + "}, and the cache that backward() needs.")
    emit("    T = 0 is allowed: y is empty and the final states are the initial ones.")
    emit("    constants: a dict overriding the spec's constants (" + (", ".join(
        f"{c.name} = {c.value!r}" for c in cell.constants.values()) or "this cell has none") + "); None: the defaults.")
    emit("    nonfinite: 'propagate' (default: NaN and Inf flow through like any value) or 'raise'")
    emit("    (NonFiniteError naming the array, step and index of the first non-finite value).")
    emit('    """')


def _write_forward_setup(w: _Writer) -> None:
    """Checked arguments unpacked; the stacked matrices; the products with the inputs, all steps at once."""
    cell, emit, inputs, plan = w.cell, w.emit, w.inputs, w.plan
    emit(f"    p, seq, init, dims = prepare(SIGNATURE, params, {{{', '.join(f'{n!r}: {n}' for n in inputs)}}}, "
         f"{{{', '.join(f'{s!r}: {s}0' for s in w.states)}}})")
    for n in inputs:  # prepare() copied them: the cache never holds an array of the caller's
        emit(f"    {n} = seq[{n!r}]")
    emit("    constants = prepare_constants(SIGNATURE, constants)")
    for n in cell.constants:
        emit(f"    {n} = constants[{n!r}]")
    for n in cell.parameters:
        emit(f"    {n} = p[{n!r}]")
    emit('    T, B = dims["T"], dims["B"]')
    for dim in cell.dimensions:
        emit(f"    {dim} = dims[{dim!r}]")
    emit(f"    dtype = {inputs[0]}.dtype")
    if w.stacks:
        emit("")
        emit("    # matrices that multiply the same vector, stacked by rows: one GEMM for all of their products")
        for st in w.stacks:
            emit(f"    {st.matrix} = " + STACK.format(Ms=", ".join(st.matrices)))
    if plan.precomputed:
        emit("")
        emit("    # matrix products with the inputs, for every time step at once")
        for st in w.stacks:
            if st.terms[0] in plan.precomputed:
                emit(f"    {st.product} = " + MATVEC_SEQ.format(v=w.info[st.operand].name, M=st.matrix))
                emit(f"    {', '.join(plan.term_name(t) for t in st.terms)} = "
                     + SPLIT_COLUMNS.format(a=st.product, sizes=", ".join(st.sizes)))
        for s in sorted(plan.precomputed, key=lambda s: plan.term_name(s)):
            if s in w.stacked_terms:
                continue
            i = w.info[s]
            emit(f"    {plan.term_name(s)} = " + MATVEC_SEQ.format(v=i.operand, M=i.matrix))


def _write_forward_storage(w: _Writer) -> None:
    """The arrays the loop fills: states with T + 1 slots, cached values and terms with T."""
    emit, plan = w.emit, w.plan
    emit("")
    emit("    # storage: states with T + 1 slots (slot 0 = initial state); values backward needs, T slots")
    for s in w.states:
        emit(f"    {s} = np.empty((T + 1, B, {', '.join(plan.shapes[s])}), dtype)")
        emit(f"    {s}[0] = init[{s!r}]")
    for n in w.cached_order:
        emit(f"    {n} = np.empty((T, B, {', '.join(plan.shapes[n])}), dtype)")
    for s in sorted(plan.cached_terms, key=plan.term_name):
        emit(f"    {plan.term_name(s)} = np.empty((T, B, {', '.join(plan.term_dims(s))}), dtype)")


class _ForwardNames:
    """How the loop body's code names a spec name, calls a function and multiplies by a matrix."""

    def __init__(self, w: _Writer):
        self.w = w

    def name(self, n):
        w = self.w
        if n.prev:
            return f"{n.name}[t]"
        if n.name in w.cell.constants:
            return n.name
        return w.loop_names.get(w.d.symbols.value(n.name)) if n.name not in w.cell.parameters else n.name

    def call(self, func, arg):
        cell = self.w.cell
        extra = [a if isinstance(a, str) else repr(float(a)) if a.denominator != 1 else str(a.numerator)
                 for a in cell.function_args.get(func, ())]  # a constant by its name
        return f"{FUNCTIONS[cell.functions[func]].runtime_name}({', '.join([arg] + extra)})"

    def matmul(self, node):
        w = self.w
        s = w.d.symbols.term(node.left.name, node.right.name, node.right.prev)
        if s in w.plan.precomputed or s in w.plan.cached_terms or s in w.stacked_terms:
            return w.loop_names[s]
        return "(" + MATVEC.format(v=self.name(node.right), M=node.left.name) + ")"

    def code(self, node):
        return print_ast(node, "code", self.name, self.call, self.matmul)


def _write_forward_loop(w: _Writer) -> None:
    """One step: each equation after the products it reads that are computed in the loop."""
    names = _ForwardNames(w)
    done_terms = set()
    for fe in w.d.forward:
        for s in sorted(fe.expr.free_symbols, key=lambda s: s.name):
            _write_forward_products(w, s, done_terms)
        target = w.loop_names[w.d.symbols.value(fe.lhs)]
        rhs = names.code(fe.ast)
        kind = FUNCTIONS[w.cell.functions[fe.ast.func]] if isinstance(fe.ast, Call) else None
        if kind and kind.runtime_name in ("sigmoid", "tanh") and target.endswith("]"):
            # a stored function value is computed straight into its slot of the cache
            w.emit(f"        {kind.runtime_name}({names.code(fe.ast.arg)}, out={target})")
        else:
            w.emit(f"        {target} = {rhs}")


def _write_forward_products(w: _Writer, s, done_terms: set) -> None:
    """The in-loop product that term s comes from (a stack's GEMM or a cached term's), once."""
    info, plan = w.info, w.plan
    st = w.stacked_terms.get(s)
    if st is not None and s not in plan.precomputed and s not in done_terms:
        oi = info[st.operand]
        operand = f"{oi.name}[t]" if oi.kind == "prev" else w.loop_names[st.operand]
        w.emit(f"        {st.product} = " + MATVEC.format(v=operand, M=st.matrix))
        w.emit(f"        {', '.join(plan.term_name(t) for t in st.terms)} = "
               + SPLIT_COLUMNS.format(a=st.product, sizes=", ".join(st.sizes)))
        done_terms.update(st.terms)
    if s in plan.cached_terms and s not in done_terms:
        i = info[s]
        operand = f"{i.operand}[t]" if i.prev else w.loop_names[w.d.symbols.value(i.operand)]
        w.emit(f"        {plan.term_name(s)}[t] = " + MATVEC.format(v=operand, M=i.matrix))
        done_terms.add(s)


def _write_forward_finish(w: _Writer) -> None:
    """The cache backward reads, and the outputs (copies)."""
    cell, plan, states = w.cell, w.plan, w.states
    out_expr = f"{cell.output}[1:]" if cell.output in cell.states else cell.output
    w.cache_items = w.inputs + states + w.cached_order + sorted(
        (plan.term_name(s) for s in plan.precomputed | plan.cached_terms if s in plan.refs)) + [
        st.matrix for st in w.stacks if st.adjoints] + list(cell.parameters)
    w.emit("    cache = {'dims': dims, 'dtype': dtype, 'constants': constants, "
           + ", ".join(f"{n!r}: {n}" for n in w.cache_items) + "}")
    w.emit("    finish_forward(SIGNATURE, cache, nonfinite)")
    w.emit("    # copies: what the caller gets never aliases the cache that backward() reads")
    w.emit(f"    final = {{{', '.join(f'{s!r}: {s}[T].copy()' for s in states)}}}")
    w.emit(f"    return {out_expr}.copy(), final, cache")


# ----------------------------------------------------------------------------------------- backward
def _write_backward(w: _Writer) -> None:
    _write_backward_docstring(w)
    w.emit("    dy, d_final = prepare_cotangents(SIGNATURE, cache, dy, d_final)")
    constants_at = len(w.lines)
    w.emit("    dims, dtype = cache[\"dims\"], cache[\"dtype\"]")
    unpack_at = len(w.lines)
    w.emit('    T, B = dims["T"], dims["B"]')
    dims_at = len(w.lines)
    _write_backward_storage(w)
    w.emit("")
    w.emit("    for t in reversed(range(T)):")
    rhs = _BackwardRhs(w)
    _write_backward_loop(w, rhs)
    w.emit("")
    w.emit("    # inputs and parameters: from the stored adjoints of all steps at once")
    _write_parameter_sums(w, rhs)
    w.emit("")
    return_at = len(w.lines)
    _write_backward_finish(w)
    _write_backward_unpack(w, "\n".join(w.lines[dims_at:return_at]), constants_at, unpack_at, dims_at)


def _write_backward_docstring(w: _Writer) -> None:
    cell, emit, states = w.cell, w.emit, w.states
    emit("@guarded")
    emit('def backward(cache, dy=None, d_final=None, *, constants=None, nonfinite="propagate"):')
    emit(f'    """Backpropagation through time for the {cell.name} cell.')
    emit("")
    emit(f"    cache: from forward(). dy: cotangent of y, shape (T, B, {', '.join(w.plan.shapes[cell.output])}). "
         "d_final: {" + ", ".join(f"{s!r}: cotangent of {s}_T" for s in states) + "}.")
    emit("    Missing cotangents are zeros. Returns the gradients of L = <dy, y> + sum_s <d_final[s], s_T>: one")
    emit("    entry per parameter (summed over time and batch), per input (per step) and per initial state (" +
         ", ".join(f"'{s}0'" for s in states) + ").")
    emit("    constants: None (the forward's, from the cache) or the same dict that forward was given.")
    emit("    nonfinite: 'propagate' (default) or 'raise' (NonFiniteError naming the first non-finite gradient).")
    emit('    """')


def _write_backward_storage(w: _Writer) -> None:
    """The boundary adjoints at t = T, and the arrays (and buffers) of the adjoints kept for every step."""
    emit, plan = w.emit, w.plan
    emit("")
    emit("    # adjoints arriving at the final states (boundary condition at t = T)")
    for s in w.states:
        emit(f"    {plan.next_name(s)} = d_final[{s!r}]")
    stored = [st.target for st in w.d.loop if st.target in plan.stored_adjoints]
    if not stored:
        return
    emit("    # adjoints kept for every step: "
         "the parameter and input gradients are computed from them after the loop")
    for k in w.used_buffers:
        widths = [plan.adjoint_dims(a)[0] for a in w.buffers[k]]
        emit(f"    {w.buffer_name[k]} = np.empty((T, B, {_dims_sum(widths)}), dtype)")
        emit(f"    {', '.join(plan.adjoint_name(a) for a in w.buffers[k])} = "
             + SPLIT_COLUMNS.format(a=w.buffer_name[k], sizes=", ".join(widths)))
    for s in stored:
        if s in w.in_buffer:
            continue
        dims_ = plan.adjoint_dims(s)
        emit(f"    {plan.adjoint_name(s)} = np.empty((T, B, {', '.join(dims_)}), dtype)")


class _BackwardRhs:
    """The right-hand side of a backward statement, in the loop or after it."""

    def __init__(self, w: _Writer):
        self.w = w
        self.stacks_of = {}
        for stack in w.stacks:
            if stack.buffer is not None:
                self.stacks_of.setdefault(w.d.adjoint_of[stack.operand], []).append(stack)

    def shape_of(self, x):
        w, i = self.w, self.w.info[x]
        if i.kind in ("value", "prev", "next"):
            return w.plan.shapes.get(i.name)
        if i.kind == "cot":
            return w.plan.shapes.get(w.cell.output)
        if i.kind == "term":
            return w.plan.term_dims(x)
        if i.kind == "adj":
            return w.plan.adjoint_dims(x)
        if i.kind == "param":
            return w.cell.parameters[i.name].shape
        return None  # a common subexpression: unknown, treated as a vector

    def per_sample(self, x):
        return self.shape_of(x) == ("1",) or self.w.info[x].kind == "param" and self.shape_of(x) == ()

    def target_is_vector(self, st):
        info = self.w.info
        return info[st.target].kind == "adj" and info[info[st.target].of].kind in ("term", "value", "prev") and \
            self.w.plan.adjoint_dims(st.target) != ("1",)

    def elementwise(self, st, printer, names, ref_for_zero) -> str:
        w, e = self.w, st.elementwise
        text = printer.doprint(reorder(e, w.d.symbols))
        if not (reads(e) - {s for s in reads(e) if w.info[s].kind in ("param", "const")}):
            text = f"np.full_like({ref_for_zero}, {text})"
        elif not st.matvec and self.target_is_vector(st) and all(self.per_sample(x) for x in reads(e)):
            # a per-sample value (B, 1) sent to every unit of a vector: made explicit for the products after
            dims = w.plan.adjoint_dims(st.target)
            lead = "B" if names is w.loop_names else "T, B"
            text = f"np.broadcast_to({text}, ({lead}, {', '.join(dims)}))"
        return text

    def __call__(self, st, printer, names, ref_for_zero):
        parts = []
        if st.elementwise != 0:
            parts.append(self.elementwise(st, printer, names, ref_for_zero))
        done = set()
        in_loop = names is self.w.loop_names
        for stack in self.stacks_of.get(st.target, []):
            done |= set(stack.matrices)
            parts.append((MATVEC_VJP_OPERAND if in_loop else MATVEC_VJP_OPERAND_SEQ).format(
                dL=self.w.buffer_slice(stack, "[t]" if in_loop else ""), M=stack.matrix))
        for matrix, dl in st.matvec:
            if matrix not in done:
                parts.append((MATVEC_VJP_OPERAND if in_loop else MATVEC_VJP_OPERAND_SEQ).format(
                    dL=names[dl], M=matrix))
        if not parts:
            return f"np.zeros_like({ref_for_zero})"
        return " + ".join(parts)


def _write_backward_loop(w: _Writer, rhs: _BackwardRhs) -> None:
    """One step back: the loop's statements, then the adjoints sent to step t-1."""
    info, plan, states = w.info, w.plan, w.states
    for st in w.d.loop:
        target = w.loop_names[st.target]
        i = info[st.target]
        ref = plan.next_name(states[0])
        if i.kind == "adj":
            ref = w.loop_names[i.of] if info[i.of].kind != "term" else plan.next_name(states[0])
        w.emit(f"        {target} = {rhs(st, w.printer_loop, w.loop_names, ref)}")
    w.emit("        " + ", ".join(plan.next_name(s) for s in states) + " = " +
           ", ".join(plan.adjoint_name(w.d.symbols.adj(w.d.symbols.prev(s))) for s in states))


def _write_parameter_sums(w: _Writer, rhs: _BackwardRhs) -> None:
    """The input and parameter gradients after the loop, from the stored adjoints of all steps."""
    d, info, plan, all_names = w.d, w.info, w.plan, w.all_names
    params_done = set()
    for st in d.after:
        i = info[info[st.target].of]
        name = plan.adjoint_name(st.target)
        if st.kind == "param_matrix" and i.name in params_done:
            continue
        stack = next((x for x in w.stacks if x.params and i.name in x.matrices), None)
        if st.kind == "param_matrix" and stack is not None:
            w.emit(f"    {stack.gradient} = " + MATVEC_VJP_MATRIX.format(dL=w.buffer_slice(stack, ""),
                                                                     v=all_names[stack.operand]))
            w.emit(f"    {', '.join(plan.adjoint_name(d.adjoint_of[d.symbols.param(M)]) for M in stack.matrices)} = "
                   + SPLIT_ROWS.format(a=stack.gradient, sizes=", ".join(stack.sizes)))
            params_done.update(stack.matrices)
        elif st.kind == "param_matrix":
            parts = [MATVEC_VJP_MATRIX.format(dL=all_names[dl], v=all_names[v]) for dl, v in st.outer]
            w.emit(f"    {name} = " + (" + ".join(parts) if parts else f"np.zeros_like({i.name})"))
        elif st.kind == "param_vector":
            w.emit(f"    {name} = " + _parameter_vector_sum(w, st, i.name))
        else:  # an input
            w.emit(f"    {name} = {rhs(st, w.printer_all, all_names, i.name)}")


def _parameter_vector_sum(w: _Writer, st, param: str) -> str:
    """A parameter vector's gradient: its elementwise adjoint summed over time and batch."""
    e = st.elementwise
    if e == 0:
        return f"np.zeros_like({param})"
    text = w.printer_all.doprint(reorder(e, w.d.symbols))
    if isinstance(e, sympy.Symbol) and w.d.shape(e) == w.cell.parameters[param].shape:
        return SUM_VJP.format(e=text)
    return SUM_VJP.format(e=f"np.broadcast_to({text}, (T, B) + {param}.shape)")


def _write_backward_finish(w: _Writer) -> None:
    """The gradients returned: parameters, inputs, initial states."""
    d, plan = w.d, w.plan
    grads = [f"{n!r}: {plan.adjoint_name(d.adjoint_of[d.symbols.param(n)])}" for n in w.cell.parameters]
    grads += [f"{n!r}: {plan.adjoint_name(d.adjoint_of[d.symbols.value(n)])}" for n in w.inputs]
    grads += [f"'{s}0': {plan.next_name(s)}" for s in w.states]
    w.emit("    grads = {")
    for g in grads:
        w.emit(f"        {g},")
    w.emit("    }")
    w.emit("    finish_backward(SIGNATURE, cache, grads, nonfinite, dy, d_final)")
    w.emit("    return grads")


def _write_backward_unpack(w: _Writer, body: str, constants_at: int, unpack_at: int, dims_at: int) -> None:
    """What backward reads from the cache, its dimensions and its constants: only the names its body uses
    (inserted at their places, the last place first)."""
    def used(n):
        return re.search(rf"\b{re.escape(n)}\b", body) is not None
    L = w.lines
    L[dims_at:dims_at] = [f"    {dim} = dims[{dim!r}]" for dim in w.cell.dimensions if used(dim)]
    L[unpack_at:unpack_at] = [f"    {n} = cache[{n!r}]" for n in w.cache_items if used(n)]
    backward_constants = [n for n in w.cell.constants if used(n)]
    L[constants_at:constants_at] = (["    constants = cached_constants(SIGNATURE, cache, constants)"]
                                    + [f"    {n} = constants[{n!r}]" for n in backward_constants]
                                    if backward_constants else ["    cached_constants(SIGNATURE, cache, constants)"])

