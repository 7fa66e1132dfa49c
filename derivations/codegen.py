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

import hashlib
import re

import sympy

from .functions import FUNCTIONS, kind_of
from .printing import CodePrinter, print_ast, reorder
from .render import backward_equations, forward_equations
from .reverse import Derivation
from .rules import MATVEC, MATVEC_VJP_MATRIX, MATVEC_VJP_OPERAND, SUM_VJP

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
            refs_loop |= st.elementwise.free_symbols | {dl for _, dl in st.matvec}
        for st in d.after:
            refs_after |= st.elementwise.free_symbols | {dl for _, dl in st.matvec}
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
        taken = set(values) | set(cell.inputs) | set(cell.parameters) | set(cell.dimensions)
        for s in self.terms:
            name = self.term_name(s)
            if name in taken:
                raise CodegenError(f"{cell.path}: the generated name {name!r} for {info[s].name} collides with a "
                                   "name of the spec; rename that quantity")

    def term_name(self, s):
        i = self.info[s]
        return f"{i.matrix}_{i.operand}" + ("_prev" if i.prev else "")

    def adjoint_name(self, s):
        i = self.info[s]
        if i.kind == "cse":
            return "_" + i.name
        of = self.info[i.of]
        if of.kind == "prev":
            return f"d_{of.name}_prev"
        if of.kind == "term":
            return "d_" + self.term_name(i.of)
        return f"d_{of.name}"

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
            elif i.kind == "param":
                out[s] = i.name
            elif i.kind == "term":
                stored = s in self.precomputed or s in self.cached_terms
                out[s] = self.term_name(s) + ("[t]" if loop and stored else "")
            elif i.kind == "next":
                out[s] = f"d_{i.name}_next"
            elif i.kind == "cot":
                out[s] = "dy[t]" if loop else "dy"
            else:
                name = self.adjoint_name(s)
                out[s] = f"{name}[t]" if loop and s in self.stored_adjoints else name
        return out


def _digest(cell) -> str:
    return hashlib.sha256(cell.source.encode("utf-8")).hexdigest()[:16]


def generate_module(d: Derivation) -> str:
    cell = d.cell
    plan = _Plan(d)
    loop_names, all_names = plan.names("loop"), plan.names("all")
    printer_loop, printer_all = CodePrinter(loop_names), CodePrinter(all_names)
    info = d.symbols.info
    L: list[str] = []
    emit = L.append

    # ------------------------------------------------------------------ header
    emit('"""' + f"{cell.title} (cell {cell.name!r}): forward pass and backpropagation through time.")
    emit("")
    emit("GENERATED FILE - DO NOT EDIT.")
    emit(f"Generated by `{COMMAND}` from {cell.relpath} (spec sha256 {_digest(cell)}...).")
    emit(f"To change it, edit the spec and run `{COMMAND}`; `{COMMAND} --check` fails when it is stale.")
    emit("")
    emit("Forward equations of one time step (x is x_t; NAME[t-1] is the previous step's value):")
    for r in forward_equations(d):
        emit(f"    {r}" + ("    (auxiliary, named by the derivation)" if r.kind == "aux" else ""))
    emit("")
    emit("Derived backward step (d_q is the adjoint dL/dq; products are elementwise; d_s_next is what")
    emit("step t+1 sent back to state s, d_s_prev what this step sends to step t-1; dy is the cotangent of")
    emit(f"the output y_t = {cell.output}_t; parameter sums run over time and batch):")
    for r in backward_equations(d):
        emit(f"    {r}")
    emit("")
    emit("Array layout: time-major sequences (T, B, ...). A state s is stored with T + 1 slots: s[0] is the")
    emit("initial state and s[t + 1] the state after loop step t (so s[t] is s_{t-1} of the equations).")
    emit('"""')
    emit("")
    emit("import numpy as np")
    emit("")
    applied = set()
    for e in [fe.expr for fe in d.forward] + [st.elementwise for st in d.statements]:
        applied |= {a.func for a in e.atoms(sympy.Function)}
    runtime = sorted({FUNCTIONS[k].runtime_name for k in cell.functions.values()} |
                     {kind_of(f).runtime_name for f in applied})
    emit("from lstm_spec.reference._runtime import (Signature, finish_backward, finish_forward, prepare, "
         "prepare_cotangents,")
    emit("                                           " + ", ".join(runtime) + ")")
    emit("")
    emit(f"SIGNATURE = Signature(")
    emit(f"    cell={cell.name!r},")
    emit(f"    inputs={ {n: q.shape for n, q in cell.inputs.items()}!r},")
    emit(f"    states={ {n: q.shape for n, q in cell.states.items()}!r},")
    emit("    parameters={")
    for n, q in cell.parameters.items():
        emit(f"        {n!r}: {q.shape!r},")
    emit("    },")
    emit(f"    output={cell.output!r},")
    emit(f"    output_dims={plan.shapes[cell.output]!r},")
    emit(")")
    kinks = []
    for st in d.statements:
        for m in st.elementwise.atoms(sympy.Function):
            if kind_of(m.func).kind == "clip_mask" and isinstance(m.args[0], sympy.Symbol):
                arg = info[m.args[0]]
                key = arg.name if arg.kind in ("value", "prev") else None
                if key and (key, float(m.args[1])) not in kinks:
                    kinks.append((key, float(m.args[1])))
    if any(kind_of(a.func).kind == "stop_gradient" for fe in d.forward for a in fe.expr.atoms(sympy.Function)):
        emit("")
        emit("# The backward pass is the gradient of a truncated objective (stop_gradient): finite differences,")
        emit("# which see the untruncated function, do not apply to it; complex-step derivatives do.")
        emit("STOP_GRADIENT = True")
    if kinks:
        emit("")
        emit("# Where the derivative has kinks: (cached value, |value| at which the clip's derivative jumps).")
        emit("# The numeric derivative checks draw instances whose values stay away from these.")
        emit(f"KINKS = {kinks!r}")
    emit("")
    emit("")

    # ------------------------------------------------------------------ forward
    inputs = list(cell.inputs)
    states = plan.states
    init_args = ", ".join(f"{s}0=None" for s in states)
    emit(f"def forward(params, {', '.join(inputs)}, {init_args}, *, nonfinite=\"propagate\"):")
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
         f"{', '.join(plan.shapes[cell.output])}),")
    emit("    final = {" + ", ".join(f"{s!r}: {s}_T" for s in states) + "}, and the cache that backward() needs.")
    emit("    T = 0 is allowed: y is empty and the final states are the initial ones.")
    emit("    nonfinite: 'propagate' (default: NaN and Inf flow through like any value) or 'raise'")
    emit("    (NonFiniteError naming the array, step and index of the first non-finite value).")
    emit('    """')
    emit(f"    p, seq, init, dims = prepare(SIGNATURE, params, {{{', '.join(f'{n!r}: {n}' for n in inputs)}}}, "
         f"{{{', '.join(f'{s!r}: {s}0' for s in states)}}})")
    for n in inputs:
        emit(f"    {n} = seq[{n!r}]")
    for n in cell.parameters:
        emit(f"    {n} = p[{n!r}]")
    emit('    T, B = dims["T"], dims["B"]')
    for dim in cell.dimensions:
        emit(f"    {dim} = dims[{dim!r}]")
    emit(f"    dtype = {inputs[0]}.dtype")
    if plan.precomputed:
        emit("")
        emit("    # matrix products with the inputs, for every time step at once")
        for s in sorted(plan.precomputed, key=lambda s: plan.term_name(s)):
            i = info[s]
            emit(f"    {plan.term_name(s)} = " + MATVEC.format(v=i.operand, M=i.matrix))
    emit("")
    emit("    # storage: states with T + 1 slots (slot 0 = initial state); values backward needs, T slots")
    for s in states:
        emit(f"    {s} = np.empty((T + 1, B, {', '.join(plan.shapes[s])}), dtype)")
        emit(f"    {s}[0] = init[{s!r}]")
    cached_order = [fe.lhs for fe in d.forward if fe.lhs in plan.cached]
    for n in cached_order:
        emit(f"    {n} = np.empty((T, B, {', '.join(plan.shapes[n])}), dtype)")
    for s in sorted(plan.cached_terms, key=plan.term_name):
        emit(f"    {plan.term_name(s)} = np.empty((T, B, {', '.join(plan.term_dims(s))}), dtype)")
    emit("")
    emit("    for t in range(T):")

    def fwd_name(n):
        if n.prev:
            return f"{n.name}[t]"
        return loop_names.get(d.symbols.value(n.name)) if n.name not in cell.parameters else n.name

    def fwd_call(func, arg):
        extra = [repr(float(a)) if a.denominator != 1 else str(a.numerator) for a in cell.function_args.get(func, ())]
        return f"{FUNCTIONS[cell.functions[func]].runtime_name}({', '.join([arg] + extra)})"

    def fwd_matmul(node):
        s = d.symbols.term(node.left.name, node.right.name, node.right.prev)
        if s in plan.precomputed or s in plan.cached_terms:
            return loop_names[s]
        return "(" + MATVEC.format(v=fwd_name(node.right), M=node.left.name) + ")"

    done_terms = set()
    for fe in d.forward:
        for s in sorted(fe.expr.free_symbols, key=lambda s: s.name):
            if s in plan.cached_terms and s not in done_terms:
                i = info[s]
                operand = f"{i.operand}[t]" if i.prev else loop_names[d.symbols.value(i.operand)]
                emit(f"        {plan.term_name(s)}[t] = " + MATVEC.format(v=operand, M=i.matrix))
                done_terms.add(s)
        target = loop_names[d.symbols.value(fe.lhs)]
        rhs = print_ast(fe.ast, "code", fwd_name, fwd_call, fwd_matmul)
        emit(f"        {target} = {rhs}")
    emit("")
    out_expr = f"{cell.output}[1:]" if cell.output in cell.states else cell.output
    cache_items = inputs + states + cached_order + sorted(
        (plan.term_name(s) for s in plan.precomputed | plan.cached_terms if s in plan.refs)) + list(cell.parameters)
    emit("    cache = {'dims': dims, 'dtype': dtype, " + ", ".join(f"{n!r}: {n}" for n in cache_items) + "}")
    emit(f"    final = {{{', '.join(f'{s!r}: {s}[T]' for s in states)}}}")
    emit("    finish_forward(SIGNATURE, cache, nonfinite)")
    emit(f"    return {out_expr}, final, cache")
    emit("")
    emit("")

    # ------------------------------------------------------------------ backward
    emit('def backward(cache, dy=None, d_final=None, *, nonfinite="propagate"):')
    emit(f'    """Backpropagation through time for the {cell.name} cell.')
    emit("")
    emit(f"    cache: from forward(). dy: cotangent of y, shape (T, B, {', '.join(plan.shapes[cell.output])}). "
         "d_final: {" + ", ".join(f"{s!r}: cotangent of {s}_T" for s in states) + "}.")
    emit("    Missing cotangents are zeros. Returns the gradients of L = <dy, y> + sum_s <d_final[s], s_T>: one")
    emit("    entry per parameter (summed over time and batch), per input (per step) and per initial state (" +
         ", ".join(f"'{s}0'" for s in states) + ").")
    emit("    nonfinite: 'propagate' (default) or 'raise' (NonFiniteError naming the first non-finite gradient).")
    emit('    """')
    emit("    dims, dtype = cache[\"dims\"], cache[\"dtype\"]")
    emit("    dy, d_final = prepare_cotangents(SIGNATURE, cache, dy, d_final)")
    unpack_at = len(L)
    emit('    T, B = dims["T"], dims["B"]')
    dims_at = len(L)
    emit("")
    emit("    # adjoints arriving at the final states (boundary condition at t = T)")
    for s in states:
        emit(f"    d_{s}_next = d_final[{s!r}]")
    stored = [st.target for st in d.loop if st.target in plan.stored_adjoints]
    if stored:
        emit("    # adjoints kept for every step: the parameter and input gradients are computed from them after the loop")
        for s in stored:
            i = info[info[s].of]
            dims_ = plan.term_dims(info[s].of) if i.kind == "term" else plan.shapes[i.name]
            emit(f"    {plan.adjoint_name(s)} = np.empty((T, B, {', '.join(dims_)}), dtype)")
    emit("")
    emit("    for t in reversed(range(T)):")

    def rhs_of(st, printer, names, ref_for_zero):
        parts = []
        e = st.elementwise
        if e != 0:
            text = printer.doprint(reorder(e, d.symbols))
            if not (e.free_symbols - {s for s in e.free_symbols if info[s].kind == "param"}):
                text = f"np.full_like({ref_for_zero}, {text})"
            parts.append(text)
        for matrix, dl in st.matvec:
            parts.append(MATVEC_VJP_OPERAND.format(dL=names[dl], M=matrix))
        if not parts:
            return f"np.zeros_like({ref_for_zero})"
        return " + ".join(parts)

    for st in d.loop:
        target = loop_names[st.target]
        i = info[st.target]
        ref = "d_" + states[0] + "_next"
        if i.kind == "adj":
            ref = loop_names[i.of] if info[i.of].kind != "term" else f"d_{states[0]}_next"
        emit(f"        {target} = {rhs_of(st, printer_loop, loop_names, ref)}")
    emit("        " + ", ".join(f"d_{s}_next" for s in states) + " = " +
         ", ".join(plan.adjoint_name(d.symbols.adj(d.symbols.prev(s))) for s in states))
    emit("")
    emit("    # inputs and parameters: from the stored adjoints of all steps at once")
    for st in d.after:
        i = info[info[st.target].of]
        name = plan.adjoint_name(st.target)
        if st.kind == "param_matrix":
            parts = [MATVEC_VJP_MATRIX.format(dL=all_names[dl], v=all_names[v]) for dl, v in st.outer]
            emit(f"    {name} = " + (" + ".join(parts) if parts else f"np.zeros_like({i.name})"))
        elif st.kind == "param_vector":
            e = st.elementwise
            if e == 0:
                emit(f"    {name} = np.zeros_like({i.name})")
            else:
                text = printer_all.doprint(reorder(e, d.symbols))
                if isinstance(e, sympy.Symbol):
                    emit(f"    {name} = " + SUM_VJP.format(e=text))
                else:
                    emit(f"    {name} = " + SUM_VJP.format(e=f"np.broadcast_to({text}, (T, B) + {i.name}.shape)"))
        else:  # an input
            emit(f"    {name} = {rhs_of(st, printer_all, all_names, i.name)}")
    emit("")
    grads = [f"{n!r}: {plan.adjoint_name(d.adjoint_of[d.symbols.param(n)])}" for n in cell.parameters]
    grads += [f"{n!r}: {plan.adjoint_name(d.adjoint_of[d.symbols.value(n)])}" for n in inputs]
    grads += [f"'{s}0': d_{s}_next" for s in states]
    return_at = len(L)
    emit("    grads = {")
    for g in grads:
        emit(f"        {g},")
    emit("    }")
    emit("    finish_backward(SIGNATURE, cache, grads, nonfinite)")
    emit("    return grads")
    body = "\n".join(L[dims_at:return_at])
    used = lambda n: re.search(rf"\b{re.escape(n)}\b", body) is not None  # noqa: E731
    L[dims_at:dims_at] = [f"    {dim} = dims[{dim!r}]" for dim in cell.dimensions if used(dim)]
    L[unpack_at:unpack_at] = [f"    {n} = cache[{n!r}]" for n in cache_items if used(n)]
    return "\n".join(L) + "\n"
