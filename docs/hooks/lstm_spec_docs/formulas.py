"""Every formula of the site, produced from the derivation at build time.

A derived formula is emitted as one HTML block

    <div class="arithmatex lstm-derived" data-cell="lstm" data-section="backward" data-index="3"
         data-target="d_c">\\[ <LaTeX of str(Rendered)> \\]</div>

so that tests/docs/test_docs.py can find every one of them on the built pages and compare it with what
``lstm_spec.derivations.render`` gives for that cell, section and index. Composite formulas (the stacked
4H layout, the concatenated input [x, h]) are assembled here from the derivation's own names and
statements (``latex_name``, ``backward_equations``); they carry ``data-section="stacked"`` or
``"concat"`` and are checked the same way against :func:`stacked_formulas` / :func:`concat_formulas`.
"""

from __future__ import annotations

import functools
import hashlib
import html
import os
import pickle
import sys
import tempfile
from pathlib import Path

from lstm_spec.derivations import derive
from lstm_spec.derivations.render import backward_equations, constant_latex, forward_equations, latex_name
from lstm_spec.spec import builtin_cells, load

CANONICAL = "lstm"
CACHE_ENV = "LSTM_SPEC_DOCS_CACHE"  # a folder for the derivation cache, or "off"


# ------------------------------------------------------------------------------------------ derivations
def cache_dir() -> Path | None:
    """Where derivations are kept between builds: $LSTM_SPEC_DOCS_CACHE, else the user's cache folder."""
    where = os.environ.get(CACHE_ENV, "")
    if where == "off":
        return None
    if where:
        return Path(where)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lstm-spec" / "docs-derivations"


@functools.cache
def code_key() -> str:
    """A digest of everything a derivation depends on besides its spec file: the code of the spec reader
    and of the derivation, SymPy's version and Python's. Any change there makes every cached one stale."""
    import sympy

    import lstm_spec.derivations
    import lstm_spec.spec

    h = hashlib.sha256(f"{sympy.__version__} {sys.version}".encode())
    for pkg in (lstm_spec.spec, lstm_spec.derivations):
        for f in sorted(Path(pkg.__file__).parent.glob("*.py")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _cached(path: Path):
    try:
        return pickle.loads(path.read_bytes())  # written by _store below, in the user's own cache folder
    except Exception:  # missing, partly written, or from an incompatible version: derive again
        return None


def _store(path: Path, d) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as f:
            f.write(pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(f.name, path)  # atomic: a concurrent build reads the old file or the new one
        for old in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.pickle"):
            if old != path:
                old.unlink(missing_ok=True)  # the same cell's derivation under an older key
    except OSError:
        pass  # a read-only or full disk only costs the next build the time to derive again


@functools.cache
def derivation(cell: str):
    """The derivation of a built-in cell, once per build, and kept between builds keyed by the digest of
    its spec file and of :func:`code_key` (deriving every cell is most of a build's time otherwise)."""
    spec = load(cell)
    folder = cache_dir()
    if folder is None:
        return derive(spec)
    key = hashlib.sha256((code_key() + "\0" + spec.source).encode()).hexdigest()[:24]
    path = folder / f"{cell}-{key}.pickle"
    d = _cached(path)
    if d is None or getattr(getattr(d, "cell", None), "source", None) != spec.source:
        d = derive(spec)
        _store(path, d)
    return d


def cells() -> list[str]:
    """Every built-in cell, canonical first."""
    names = builtin_cells()
    return sorted(names, key=lambda n: (n != CANONICAL, n))


# ------------------------------------------------------------------------------------------ sections
def forward(d) -> list[tuple[str, str]]:
    """(plain target, LaTeX "target = expression") for every forward equation shown in LaTeX."""
    plain = [r for r in forward_equations(d, latex=False) if r.kind != "aux"]
    tex = forward_equations(d, latex=True)
    assert len(plain) == len(tex), "forward_equations: plain and LaTeX lists differ in length"
    return [(p.target, str(t)) for p, t in zip(plain, tex, strict=True)]


def backward(d) -> list[tuple[str, str, str]]:
    """(plain target, kind, LaTeX "target = expression") for every backward statement, in the textbook form
    (render.textbook_statements: what check (a) proves for display; the generated code keeps temporaries)."""
    plain = backward_equations(d, latex=False, textbook=True)
    tex = backward_equations(d, latex=True)
    return [(p.target, t.kind, str(t)) for p, t in zip(plain, tex, strict=True)]


def _gate_params(d):
    """The gates, in layouts.GATES order, when every pre-activation is exactly W_g x + U_g h[t-1] + b_g in the
    derivation's forward pass, optionally plus one of the spec's [constants] (lstm's forget_bias); else None."""
    from lstm_spec.layouts import GATES

    cell = d.cell
    ok = all(f"{k}_{g}" in cell.parameters for k in ("W", "U", "b") for g in GATES)
    return GATES if ok and _added_constants(d, GATES) is not None else None


def _added_constants(d, gates) -> dict | None:
    """gate -> the constant added to its pre-activation ("" for none); None when a pre-activation has another form."""
    fwd = {r.target: r.expression for r in forward_equations(d, latex=False)}
    out = {}
    for g in gates:
        base = f"W_{g} @ x + U_{g} @ h[t-1] + b_{g}"
        rest = fwd.get(f"z_{g}", "")
        if rest == base:
            out[g] = ""
        elif rest.startswith(base + " + ") and rest[len(base) + 3:] in d.cell.constants:
            out[g] = rest[len(base) + 3:]
        else:
            return None
    return out


def _constant_terms(d, gates, n) -> tuple[list[str], bool]:
    """Per gate, the LaTeX of its added constant (0 for none), and whether any gate has one."""
    added = _added_constants(d, gates) or {}
    return [constant_latex(d, added[g]) if added.get(g) else "0" for g in gates], any(added.values())


def stacked_formulas(d) -> list[str]:
    """The stacked 4H layout of a cell with per-gate W_g, U_g, b_g (g in layouts.GATES order),
    assembled from the derivation's names and its parameter-gradient statements."""
    gates = _gate_params(d)
    if not gates:
        return []
    def n(name, t=None):
        return latex_name(d, name, t)

    def col(items):
        return r"\begin{bmatrix} %s \end{bmatrix}" % r" \\ ".join(items)

    z = col([n(f"z_{g}", "t") for g in gates])
    fwd = (f"{z} = {col([n(f'W_{g}') for g in gates])} {n('x', 't')} + "
           f"{col([n(f'U_{g}') for g in gates])} {n('h', 't-1')} + {col([n(f'b_{g}') for g in gates])}")
    consts, any_const = _constant_terms(d, gates, n)
    if any_const:  # a constant the spec adds at run time (lstm's forget_bias), per gate, 0 where none
        fwd += f" + {col(consts)}"
    # gradients: stack the derivation's own parameter statements, gate by gate
    by_target = {p: tex for p, _, tex in backward(d)}
    rows = {}
    for k in ("W", "U", "b"):
        rows[k] = [by_target[f"d_{k}_{g}"].split(" = ", 1)[1] for g in gates]
    grads = [r"%s = %s" % (col([r"\delta " + n(f"{k}_{g}") for g in gates]), col(rows[k])) for k in ("W", "U", "b")]
    dz = col([r"\delta " + n(f"z_{g}", "t") for g in gates])
    W = col([n(f"W_{g}") for g in gates])
    U = col([n(f"U_{g}") for g in gates])
    plain = {r.target: r.expression for r in backward_equations(d, latex=False, textbook=True)}
    back = []
    for mat, vec, t, key in (("W", W, "t", "d_x"), ("U", U, "t-1", "d_h_prev")):
        terms = set(plain.get(key, "").split(" + "))
        if terms == {f"{mat}_{g}^T d_z_{g}" for g in gates}:  # only where the derivation says exactly this
            var = "x" if mat == "W" else "h"
            back.append(r"\delta %s = {%s}^\top %s" % (n(var, t), vec, dz))
    return [fwd] + grads + back


def concat_formulas(d) -> list[str]:
    """The concatenated-input form: one matrix [W_g  U_g] acting on [x_t; h_{t-1}] per gate, and
    all gates stacked into A = [W U] of shape 4H x (D + H)."""
    gates = _gate_params(d)
    if not gates:
        return []
    def n(name, t=None):
        return latex_name(d, name, t)
    xh = r"\begin{bmatrix} %s \\ %s \end{bmatrix}" % (n("x", "t"), n("h", "t-1"))
    consts, _ = _constant_terms(d, gates, n)
    out = []
    for g, const in zip(gates, consts, strict=True):
        out.append(r"%s = \begin{bmatrix} %s & %s \end{bmatrix} %s + %s%s" % (
            n(f"z_{g}", "t"), n(f"W_{g}"), n(f"U_{g}"), xh, n(f"b_{g}"), "" if const == "0" else f" + {const}"))
    out.append(r"\delta \begin{bmatrix} %s & %s \end{bmatrix} = \sum_{t} \delta %s\, %s^\top" % (
        n(f"W_{gates[0]}"), n(f"U_{gates[0]}"), n(f"z_{gates[0]}", "t"), xh))
    plain = {r.target: r.expression for r in backward_equations(d, latex=False, textbook=True)}
    through_gates = {f"W_{g}^T d_z_{g}" for g in gates}, {f"U_{g}^T d_z_{g}" for g in gates}
    if (set(plain.get("d_x", "").split(" + ")), set(plain.get("d_h_prev", "").split(" + "))) == through_gates:
        # only where the derivation says exactly this: the joined input's adjoint, summed over the gates
        out.append(r"\delta %s = %s" % (xh, " + ".join(
            r"\begin{bmatrix} %s & %s \end{bmatrix}^\top \delta %s" % (n(f"W_{g}"), n(f"U_{g}"), n(f"z_{g}", "t"))
            for g in gates)))
    return out


def section(d, name: str) -> list[tuple[str, str]]:
    """(plain target, LaTeX) of one section of one cell, in page order: what the tests compare with."""
    if name == "forward":
        return forward(d)
    if name == "backward":
        return [(p, tex) for p, _, tex in backward(d)]
    if name == "stacked":
        return [(f"stacked{k}", tex) for k, tex in enumerate(stacked_formulas(d))]
    if name == "concat":
        return [(f"concat{k}", tex) for k, tex in enumerate(concat_formulas(d))]
    raise KeyError(name)


# ------------------------------------------------------------------------------------------ HTML
def block(cell: str, sec: str, index: int, target: str, tex: str) -> str:
    return (f'<div class="arithmatex lstm-derived" data-cell="{cell}" data-section="{sec}" '
            f'data-index="{index}" data-target="{html.escape(target)}">\\[ {html.escape(tex, quote=False)} \\]</div>')


def blocks(cell: str, sec: str, targets=None, kinds=None) -> str:
    d = derivation(cell)
    items = section(d, sec)
    if not items and sec in ("stacked", "concat"):  # a page that asks for a form must not silently lose it
        raise ValueError(f"lstm-spec: {sec} {cell}: the cell's pre-activations are not W_g x + U_g h[t-1] + b_g "
                         "(plus a constant) for every gate, so it has no such form")
    kind_of = {p: k for p, k, _ in backward(d)} if sec == "backward" else {}
    out = []
    for k, (target, tex) in enumerate(items):
        if targets is not None and target not in targets:
            continue
        if kinds is not None and kind_of.get(target) not in kinds:
            continue
        out.append(block(cell, sec, k, target, tex))
    if targets is not None:
        missing = set(targets) - {t for t, _ in items}
        if missing:
            raise KeyError(f"cell {cell!r}, section {sec!r}: no equation for {sorted(missing)}; "
                           f"targets are {[t for t, _ in items]}")
    return "\n\n".join(out)


def inline(cell: str, name: str, time: str | None = None) -> str:
    """A quantity's name as the derivation prints it, as inline math."""
    return r'<span class="arithmatex">\(%s\)</span>' % html.escape(latex_name(derivation(cell), name, time),
                                                                     quote=False)
