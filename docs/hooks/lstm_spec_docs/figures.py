"""The site's figures, drawn at build time from the spec by Graphviz's ``dot`` (a layout program; nothing
here places a node by hand):

- :func:`step_graph`: the computational graph of one time step of a cell, built from its parsed
  equations (``lstm_spec.spec.load``): a node per input, previous state, parameter and defined quantity,
  an arrow per name an equation reads. Arrows along which an adjoint travels back into a previous state
  (from the step's outputs to ``c[t-1]``, ``h[t-1]``, ...) are coloured, one colour per state; a name read
  through ``stop_gradient`` is a dashed grey arrow (no adjoint flows back along it).
- :func:`unrolled_graph`: a few steps of a cell unrolled in time, for full BPTT, chunked truncation and
  the cell-only truncation of ``lstm_cell_only_bptt``; which state feeds which, and whether an adjoint
  flows back along it, both come from the cells' step graphs.
- :func:`layout_blocks`: the stacked weights of each framework as coloured gate blocks, in its order
  (``lstm_spec.layouts`` and :mod:`.layouts_doc`).

``dot`` renders SVG, inlined into the page. A rendered figure is kept in the user's cache folder under
the SHA-256 of its DOT source, so a rebuild runs ``dot`` only for a figure that changed. Without ``dot``
the build stops with :class:`FigureError`, saying how to install it: a site without its figures is not
built quietly.
"""

from __future__ import annotations

import functools
import hashlib
import html
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lstm_spec.spec.language import Call, Name, children

from . import formulas
from .catalogue import spec as load  # the parsed spec, read once per build

# one colour per carried state: cell states in warm colours, the others in cool ones
CELL_COLOURS = ("#d62728", "#ff7f0e", "#8c564b")
HIDDEN_COLOURS = ("#1f77b4", "#17becf", "#9467bd")
NO_GRADIENT = "#9e9e9e"
ROLE_FILL = {"input": "#e8f5e9", "state": "#fff8e1", "parameter": "#eeeeee", "intermediate": "#ffffff",
             "output": "#e3f2fd", "constant": "#f3e5f5"}
GATE_COLOURS = {"f": "#ef9a9a", "i": "#a5d6a7", "c": "#90caf9", "o": "#ffe082"}
INSTALL_HINT = ("Graphviz's dot was not found on PATH; the documentation draws its figures with it at build "
                "time: install Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install "
                "graphviz) and build again")


try:  # under MkDocs a PluginError stops the build with its message alone, no traceback
    from mkdocs.exceptions import PluginError as _BuildStop
except ImportError:  # pragma: no cover - the hooks without MkDocs (a script, a test)
    _BuildStop = RuntimeError


class FigureError(_BuildStop):
    """A figure could not be drawn (dot missing or failing): the build stops with this message."""


# ------------------------------------------------------------------------------------------ dot
def dot_program() -> str:
    path = shutil.which("dot")
    if path is None:
        raise FigureError(INSTALL_HINT)
    return path


def _cache_path(source: str) -> Path | None:
    where = formulas.cache_dir()
    if where is None:
        return None
    return where.parent / "docs-figures" / (hashlib.sha256(source.encode()).hexdigest() + ".svg")


DRAWN: dict[str, str] = {}  # drawn in this build (what prerender drew, also with the cache turned off)


def _run_dot(source: str) -> str:
    r = subprocess.run([dot_program(), "-Tsvg"], input=source, capture_output=True, text=True, timeout=60)
    if r.returncode:
        raise FigureError(f"dot failed on a figure ({r.stderr.strip()}); the DOT source starts: {source[:200]!r}")
    return r.stdout


def render(source: str) -> str:
    """The SVG that dot draws from a DOT source, from the cache when it was drawn before."""
    dot_program()  # fail clearly without dot, even when every figure is cached
    if source in DRAWN:
        return DRAWN[source]
    path = _cache_path(source)
    if path is not None and path.exists():
        return path.read_text(encoding="utf-8")
    svg = DRAWN[source] = _run_dot(source)
    store(path, svg)
    return svg


def store(path: Path | None, svg: str) -> None:
    """Keep a drawn figure in the cache (atomically: a concurrent build reads the old file or the new one)."""
    if path is None:
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as f:
            f.write(svg)
        os.replace(f.name, path)
    except OSError:
        pass  # an unwritable cache only costs the next build the time to draw again


def prerender(sources: list[str]) -> None:
    """Draw the figures not yet cached, two at a time (dot is single-threaded)."""
    dot_program()
    todo = [s for s in sources if s not in DRAWN and ((p := _cache_path(s)) is None or not p.exists())]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        list(pool.map(render, todo))


TITLE = re.compile(r'(<g id="[^"]*" class="(?:node|edge|graph)"[^>]*)>\s*<title>(.*?)</title>')


def inline_svg(svg: str, prefix: str) -> str:
    """dot's SVG made fit for inlining: no XML prologue, no <title> text (the DOT ids move to data-name),
    ids unique on the page, a natural width that shrinks (keeping its proportions) on a narrow screen."""
    svg = svg[svg.index("<svg"):]
    # a node's or edge's <title> (its DOT id, e.g. h[t-1]->z_f) would be text on the page: kept as an attribute
    svg = TITLE.sub(r'\1 data-name="\2">', svg)
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    m = re.search(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg)
    if m:
        sized = f'<svg role="img" style="width: {m.group(1)}pt; max-width: 100%; height: auto"'
        svg = svg.replace(m.group(0), sized, 1)
    return "\n".join(line for line in svg.splitlines() if line.strip())  # a blank line would end the HTML block


def figure_html(svg: str, kind: str, ident: str, caption: str) -> str:
    return (f'<figure class="lstm-figure" data-figure="{kind}" data-name="{html.escape(ident)}" '
            f'id="figure-{kind}-{html.escape(ident)}">\n{inline_svg(svg, f"{kind}-{ident}")}\n'
            f"<figcaption>{caption}</figcaption>\n</figure>")


# ------------------------------------------------------------------------------------------ labels
def label(cell, name: str, time: str | None = None) -> str:
    """A name as a Graphviz HTML label: c_tilde -> c&#771;, z_f -> z<SUB>f</SUB>, h at t-1 -> h<SUB>t−1</SUB>."""
    tex = cell.latex.get(name)
    if tex:
        base = re.sub(r"\\tilde\{(\w)\}", "\\1&#771;", tex)
        base = re.sub(r"\\mathrm\{(\w+)\}", r"\1", base)
        base = re.sub(r"\^\{([^{}]*)\}", r"<SUP>\1</SUP>", base)
        sub = []
    else:
        base, *sub = name.split("_")
        base = html.escape(base)
    sub = [html.escape(s) for s in sub] + ([time.replace("-", "−")] if time else [])
    return f"<{base}<SUB>{','.join(sub)}</SUB>>" if sub else f"<{base}>"


def state_colours(cell) -> dict[str, str]:
    cells = [s for s in cell.states if s.startswith("c")]
    others = [s for s in cell.states if s not in cells]
    out = {s: CELL_COLOURS[k % len(CELL_COLOURS)] for k, s in enumerate(cells)}
    out.update({s: HIDDEN_COLOURS[k % len(HIDDEN_COLOURS)] for k, s in enumerate(others)})
    return out


# ------------------------------------------------------------------------------------------ one step
def node_id(name: str, prev: bool = False) -> str:
    return f"{name}[t-1]" if prev else name


def reads(cell, rhs) -> list[tuple[str, bool]]:
    """(node id, carries an adjoint) of every name an expression reads, in order, each once; a name read
    only through a stop_gradient call carries none."""
    out: dict[str, bool] = {}
    stack = [(rhs, False)]
    while stack:
        node, stopped = stack.pop()
        if isinstance(node, Name):
            key = node_id(node.name, node.prev)
            out[key] = out.get(key, False) or not stopped
        if isinstance(node, Call) and cell.functions.get(node.func) == "stop_gradient":
            stopped = True
        stack += [(k, stopped) for k in reversed(children(node))]
    return list(out.items())


@functools.cache
def step_edges(name: str) -> list[tuple[str, str, bool]]:
    """(from, to, carries an adjoint) for every name read by every equation of the cell's spec."""
    cell = load(name)
    return [(src, eq.lhs, grad) for eq in cell.equations for src, grad in reads(cell, eq.rhs)]


def _closure(start: set[str], adjacency: dict[str, set[str]]) -> set[str]:
    seen, todo = set(start), list(start)
    while todo:
        for v in adjacency.get(todo.pop(), ()):
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return seen


def backward_paths(name: str) -> dict[str, set[tuple[str, str]]]:
    """For every state s: the edges on a path from s[t-1] to an output of the step (the new states and
    the cell's output) along which adjoints flow: the roads δs_{t-1} is collected from."""
    cell = load(name)
    grad_edges = [(u, v) for u, v, g in step_edges(name) if g]
    fwd: dict[str, set[str]] = {}
    rev: dict[str, set[str]] = {}
    for u, v in grad_edges:
        fwd.setdefault(u, set()).add(v)
        rev.setdefault(v, set()).add(u)
    reaches_output = _closure(set(cell.states) | {cell.output}, rev)
    out = {}
    for s in cell.states:
        from_s = _closure({node_id(s, True)}, fwd)
        out[s] = {(u, v) for u, v in grad_edges if u in from_s and v in reaches_output}
    return out


def _role(cell, node: str) -> str:
    if node.endswith("[t-1]"):
        return "state"
    if node in cell.states or node == cell.output:
        return "output"
    if node in getattr(cell, "constants", {}):
        return "constant"  # a named number of the spec (a forget bias, a clip bound): no gradient
    return cell.quantity(node).role


def step_graph(name: str) -> str:
    """The DOT source of one step of the cell ``name``."""
    cell = load(name)
    edges = step_edges(name)
    colours = state_colours(cell)
    paths = backward_paths(name)
    nodes = list(dict.fromkeys([u for u, _, _ in edges] + [v for _, v, _ in edges]))
    lines = [f'digraph "{name}" {{', '  graph [rankdir=LR, nodesep=0.12, ranksep=0.3, bgcolor="transparent", '
             'fontname="Helvetica"];', '  node [fontname="Helvetica", fontsize=12, style=filled, height=0.3, '
             'margin="0.04,0.02"];', '  edge [color="#616161", arrowsize=0.6];']
    for n in nodes:
        role = _role(cell, n)
        base, prev = n.removesuffix("[t-1]"), n.endswith("[t-1]")
        time = "t-1" if prev else ("t" if role in ("output", "input") else None)
        shape = ("box" if role in ("parameter", "constant") else
                 "doublecircle" if role == "output" and n in cell.states else "ellipse")
        extra = f', color="{colours[base]}", penwidth=2' if prev else ""
        tip = next((" ".join(eq.text.split()) for eq in cell.equations if eq.lhs == n), f"{n}: {role}")
        text = f"<{html.escape(n)}>" if role == "constant" else label(cell, base, time)  # a constant: its name
        lines.append(f'  "{n}" [label={text}, shape={shape}, fillcolor="{ROLE_FILL[role]}", '
                     f'tooltip="{_dot_escape(tip)}"{extra}];')
    sources = [n for n in nodes if _role(cell, n) in ("input", "state")]
    lines.append("  { rank=source; " + " ".join(f'"{n}";' for n in sources) + " }")
    for u, v, grad in edges:
        on = [colours[s] for s in cell.states if (u, v) in paths[s]]
        if not grad:
            attrs = f'color="{NO_GRADIENT}", style=dashed, tooltip="stop_gradient: no adjoint flows back"'
        elif on:
            attrs = f'color="{":".join(on)}", penwidth=1.6'
        else:
            attrs = ""
        lines.append(f'  "{u}" -> "{v}"' + (f" [{attrs}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _swatch(colour: str) -> str:
    return f'<span class="lstm-swatch" style="color: {colour}">■</span>'


def step_caption(name: str) -> str:
    from .text import spec_html

    cell = load(name)
    colours = state_colours(cell)
    keys = ", ".join(f"{_swatch(colours[s])} into {spec_html(s + '_{t-1}')}" for s in cell.states)
    stop = any(not g for _, _, g in step_edges(name))
    consts = ", the spec's named constants in violet ones" if getattr(cell, "constants", None) else ""
    return (f"One step of <code>{name}</code>, drawn by Graphviz from the {len(cell.equations)} equations of "
            f"its spec: an arrow for every name an equation reads (inputs and previous states on the left, "
            f"parameters in grey boxes{consts}, the new states double-circled). Coloured arrows are the paths along "
            f"which the adjoints travel back, against the arrows, from the step's outputs to the previous "
            f"states: {keys}; an arrow of two colours lies on both paths."
            + (" Dashed grey: read through a stop-gradient, no adjoint flows back." if stop else "")
            + " Hover over a node for its equation.")


def step_figure(name: str) -> str:
    return figure_html(render(step_graph(name)), "graph", name, step_caption(name))


# ------------------------------------------------------------------------------------------ unrolled
def state_links(name: str) -> dict[tuple[str, str], bool]:
    """{(s, s'): an adjoint flows back} for every pair of states where s[t-1] feeds the new s', read off
    the step graph of the cell."""
    cell = load(name)
    everything: dict[str, set[str]] = {}
    grads: dict[str, set[str]] = {}
    for u, v, g in step_edges(name):
        everything.setdefault(u, set()).add(v)
        if g:
            grads.setdefault(u, set()).add(v)
    out = {}
    for s in cell.states:
        feeds, carries = _closure({node_id(s, True)}, everything), _closure({node_id(s, True)}, grads)
        out.update({(s, s2): s2 in carries for s2 in cell.states if s2 in feeds})
    return out


TRUNCATION_PANELS = (("full", "Full BPTT (lstm)", "lstm", None),
                     ("chunked", "Chunked truncation, k = 3 (lstm, state detached every 3 steps)", "lstm", 3),
                     ("cellonly", "Cell-only truncation (lstm_cell_only_bptt)", "lstm_cell_only_bptt", None))


def unrolled_graph(T: int = 6) -> str:
    """Full BPTT, chunked truncation and cell-only truncation, T steps each, one panel apiece: a coloured
    arrow carries an adjoint back, a dashed grey one carries the state forward only."""
    lines = ['digraph unrolled {', '  graph [rankdir=LR, nodesep=0.15, ranksep=0.45, bgcolor="transparent", '
             'fontname="Helvetica", fontsize=12, newrank=true];', '  node [fontname="Helvetica", fontsize=11, '
             'style=filled, fillcolor="#fff8e1", height=0.28, width=0.45, margin="0.02,0.01"];',
             '  edge [arrowsize=0.6];']
    for key, title, name, chunk in reversed(TRUNCATION_PANELS):  # dot stacks the clusters bottom-up
        cell = load(name)
        colours = state_colours(cell)
        lines += [f"  subgraph cluster_{key} {{", f'    label="{title}"; labeljust=l; color="#bdbdbd";']
        for t in range(T + 1):
            ids = [f'"{key}_{s}_{t}"' for s in cell.states] + ([f'"{key}_L_{t}"'] if t else [])
            for s in cell.states:
                lines.append(f'    "{key}_{s}_{t}" [label={label(cell, s, str(t))}, color="{colours[s]}"];')
            if t:
                lines.append(f'    "{key}_L_{t}" [label=<L<SUB>{t}</SUB>>, shape=box, fillcolor="#e3f2fd"];')
                out_colour = colours.get(cell.output, "#616161")
                lines.append(f'    "{key}_{cell.output}_{t}" -> "{key}_L_{t}" [color="{out_colour}"];')
            lines.append("    { rank=same; " + " ".join(ids) + " }")
        for t in range(1, T + 1):
            cut = chunk is not None and (t - 1) % chunk == 0 and t > 1
            for (s, s2), grad in state_links(name).items():
                style = (f'color="{colours[s]}", penwidth=1.6' if grad and not cut
                         else f'color="{NO_GRADIENT}", style=dashed')
                lines.append(f'    "{key}_{s}_{t - 1}" -> "{key}_{s2}_{t}" [{style}];')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def unrolled_figure() -> str:
    caption = ("Three ways to send the adjoints back, over 6 steps, drawn by Graphviz from the step graphs of "
               "<code>lstm</code> and <code>lstm_cell_only_bptt</code>. An arrow from step t−1 to step t is "
               "there when the state at t−1 feeds that state at t; it is coloured when an adjoint flows back "
               "along it (against the arrow) and dashed grey when the value goes forward and nothing comes "
               "back: at the chunk boundary (after step 3: <code>h.detach()</code>) and, at every "
               "step, through the stop-gradient on the gates' recurrent input. Each loss L<sub>t</sub> "
               "reads h<sub>t</sub>.")
    return figure_html(render(unrolled_graph()), "unrolled", "truncation", caption)


# ------------------------------------------------------------------------------------------ layouts
def layout_blocks() -> str:
    """The DOT source of the colour-block figure: one row per framework, its four gate blocks in its order."""
    from .layouts_doc import LSTM_LAYOUTS

    rows = []
    for lay in LSTM_LAYOUTS:
        dashed = "" if lay.stacked else 'STYLE="dashed" '
        link = f'HREF="{html.escape(lay.source)}" TARGET="_blank" ' if lay.source.startswith("http") else ""
        cells = "".join(f'<TD BORDER="1" BGCOLOR="{GATE_COLOURS[g]}" WIDTH="46" {dashed}{link}'
                        f'TOOLTIP="{html.escape(lay.name)}: block {n + 1} is gate {g}">'
                        f'<B>{html.escape(lay.letter(g))}</B></TD>' for n, g in enumerate(lay.order))
        note = html.escape(lay.weights if lay.stacked else "separate arrays, named: " + lay.weights)
        rows.append(f'<TR><TD ALIGN="LEFT">{html.escape(lay.name)}</TD>{cells}'
                    f'<TD ALIGN="LEFT"><FONT POINT-SIZE="9" COLOR="#616161">{note}</FONT></TD></TR>')
    return ('digraph layouts {\n  graph [bgcolor="transparent"];\n'
            '  node [shape=plaintext, fontname="Helvetica", fontsize=11];\n'
            '  blocks [label=<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="3" CELLPADDING="4">\n'
            + "\n".join(rows) + "\n</TABLE>>];\n}\n")


def layout_figure() -> str:
    keys = ", ".join(f"{_swatch(c)} {g}" for g, c in GATE_COLOURS.items())
    caption = ("The four gate blocks of the stacked LSTM weights, framework by framework, in the order each "
               f"stores them (colour = our gate: {keys}; the letter is the framework's own name for the block). "
               "Dashed: separate arrays per gate, no order to get wrong. Drawn by Graphviz from "
               "<code>lstm_spec.layouts</code>' gate orders and, for the frameworks without a converter, "
               "the documented orders listed under the table.")
    return figure_html(render(layout_blocks()), "layouts", "lstm", caption)


def all_sources() -> list[str]:
    """Every figure's DOT source, for :func:`prerender`."""
    return [step_graph(n) for n in formulas.cells()] + [unrolled_graph(), layout_blocks()]
