"""The build step of the documentation: what the MkDocs hook (docs/hooks/lstm_docs.py) calls.

- ``on_config``: the "Cells" section of the navigation gets one page per built-in cell
  (``lstm_spec.spec.builtin_cells()``), so a new spec file gets its page without touching the docs.
- ``on_files``: adds the generated pages (cells/*.md, api.md), the plots (img/*.svg, drawn by matplotlib
  from the reference's numbers) and the math renderer (MathJax 3, copied from the ``mathjax`` folder that
  the PyPI package django-static-mathjax installs; nothing is fetched from a network).
- ``on_page_markdown``: expands the directives ``<!-- lstm-spec: ... -->`` of every page into formulas
  from the derivation (formulas.py), numbers and tables from the reference (numbers.py) and the slides'
  errata (errata.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex

from . import api, catalogue, errata, figures, formulas, layouts_doc, numbers, quickstart, student
from .text import spec_html

STUDENT = {"explode-table": student.explode_table, "clip-table": student.clip_table,
           "multilayer-check": student.multilayer_md, "concat-adjoint": student.concat_adjoint_md}

ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
DIRECTIVE = re.compile(r"<!-- lstm-spec: (.+?) -->")
BENCH_JSON = ROOT / "docs" / "data" / "bench.json"  # written by `lstm-spec bench --json`, committed
GENERATED_NOTE = "<!-- generated at build time from {src}; edit that, not the built page -->\n"


# ------------------------------------------------------------------------------------------ MathJax
def mathjax_file() -> str:
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MathJax not found: install the docs extra (pip install -e '.[docs]'), which "
                           "brings django-static-mathjax (MathJax 3.2.2, vendored in a PyPI wheel)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "static", "mathjax", "es5", "tex-svg-full.js")
    if not os.path.exists(path):
        raise RuntimeError(f"MathJax: {path} is missing")
    return path


# ------------------------------------------------------------------------------------------ pages
def cell_page(name: str) -> str:
    d = formulas.derivation(name)
    cell = d.cell
    canon = formulas.derivation(formulas.CANONICAL)
    lines = ["---", f"title: {json.dumps(catalogue.title_plain(name))}", "---",  # the browser tab's title
             GENERATED_NOTE.format(src=f"spec/{name}.toml"), f"# {catalogue.title_html(name)} (`{name}`)", "",
             f"*{spec_html(cell.summary)}*", "", spec_html(cell.description), ""]
    def dims(q):
        return " x ".join(q.shape)
    rows = [(f"`{q.name}`", q.role, dims(q)) for q in list(cell.inputs.values()) + list(cell.states.values())
            + list(cell.parameters.values())]
    lines += ["## Quantities", "", numbers.table(["name", "role", "shape"], rows), "",
              f"Output of a step: `{cell.output}`. Spec file: `spec/{name}.toml`; generated reference: "
              f"`lstm_spec.reference.{name}` (`reference/{name}.py`).", ""]
    if cell.masks:
        values = {"inverted": "0 or 1/(1-p) (inverted dropout: the scaling is in the mask)",
                  "binary": "0 or 1"}
        times = {"per_step": "a new mask at every step", "fixed": "one mask per sequence, repeated at every step"}
        rows = [(f"`{m}`", f"{spec['p']:g}", values[spec["values"]], times[spec["time"]])
                for m, spec in cell.masks.items()]
        lines += ["## Masks", "", "These inputs are masks, given explicitly per step and sample so that forward and "
                  "backward are deterministic; `lstm_spec.reference.masks.dropout_mask` draws them, and so do "
                  "the numeric checks. p is the probability that an entry is 0.", "",
                  numbers.table(["input", "p", "values", "over time"], rows), ""]
    lines += constants_md(cell)
    lines += ["## Forward pass, one time step", "", f"<!-- lstm-spec: forward {name} -->", "",
              "## The computational graph of one step", "", f"<!-- lstm-spec: figure graph {name} -->", ""]
    if formulas.stacked_formulas(d):
        lines += ["In the stacked 4H layout (blocks in the order of `lstm_spec.layouts.GATES`):", "",
                  f"<!-- lstm-spec: stacked {name} -->", ""]
    lines += ["## Backward pass, one time step", "",
              "Derived by lstm-spec's symbolic reverse mode; every line is checked by `lstm-spec verify`. "
              "δq is the adjoint ∂L/∂q; products are elementwise; δs⁽ᵗ⁺¹⁾ is what step t+1 sends back to "
              "state s; parameter gradients sum over time (and the batch).", "",
              f"<!-- lstm-spec: backward {name} -->", "",
              "Boundary conditions: at t = T the carried adjoints are the cotangents of the final states "
              "(zero when the loss does not read them); the adjoints sent back by step 1 are the gradients "
              "of the initial states.", ""]
    if name != formulas.CANONICAL:
        lines += ["## What differs from the canonical LSTM", "", diff_md(canon, d), ""]
    return "\n".join(lines)


def constants_md(cell) -> list[str]:
    """The cell page's table of the spec's [constants] (none: nothing)."""
    if not cell.constants:
        return []
    rows = [(f"`{c.name}`", f"{c.value:g}", spec_html(c.doc) or "-") for c in cell.constants.values()]
    example = next(iter(cell.constants))
    return ["## Constants", "", "Named numbers of the spec (`[constants]`): the equations use them by name. "
            f"`lstm_spec.reference.{cell.name}.forward(..., constants={{\"{example}\": ...}})` runs the cell at "
            "another value without regenerating (backward uses the forward's); `lstm-spec verify --constants "
            f"{example}=...` checks it there, and a conformance target declares the values it uses "
            f"(`\"constants\": {{\"{example}\": ...}}`).", "",
            numbers.table(["constant", "default", "what it is"], rows), ""]


def _zero_constants_removed(text: str, cell) -> str:
    """An equation's text without the terms `+ c` of constants whose default is 0 (the canonical cell's run-time
    forget bias): at the defaults they change nothing, so they do not make two cells' equations differ."""
    for c in cell.constants.values():
        if c.value == 0:
            text = text.replace(f" + {c.name}", "")
    return text


def diff_md(a, b) -> str:
    from lstm_spec.derivations.render import forward_equations

    fa = {r.target: r.expression for r in forward_equations(a, latex=False)}
    fb = {r.target: r.expression for r in forward_equations(b, latex=False)}
    same = {t for t in fa if t in fb and _zero_constants_removed(fa[t], a.cell) == _zero_constants_removed(fb[t],
                                                                                                          b.cell)}
    pa, pb = set(a.cell.parameters), set(b.cell.parameters)
    sa, sb = set(a.cell.states), set(b.cell.states)
    rows = []
    for t in list(fa) + [t for t in fb if t not in fa]:
        if t not in fb:
            rows.append((f"`{t}`", f"`{fa[t]}`", "(not in this cell)"))
        elif t not in fa:
            rows.append((f"`{t}`", "(not in the canonical cell)", f"`{fb[t]}`"))
        elif t not in same:
            rows.append((f"`{t}`", f"`{fa[t]}`", f"`{fb[t]}`"))
    out = ["Forward equations that differ (plain text of the spec, as parsed):", "",
           numbers.table(["quantity", "canonical `lstm`", f"`{b.cell.name}`"], rows) if rows else "(none)", ""]
    out.append(f"Parameters only here: {', '.join(f'`{p}`' for p in sorted(pb - pa)) or 'none'}; "
               f"canonical parameters not here: {', '.join(f'`{p}`' for p in sorted(pa - pb)) or 'none'}. "
               f"States: {', '.join(f'`{s}`' for s in b.cell.states)}"
               + ("" if sa == sb else f" (canonical: {', '.join(f'`{s}`' for s in a.cell.states)})") + ".")
    from lstm_spec.derivations.render import backward_equations

    ba = {r.target: r.expression for r in backward_equations(a, latex=False) if r.kind != "cse"}
    bb = {r.target: r.expression for r in backward_equations(b, latex=False) if r.kind != "cse"}
    rows = [(f"`{t}`", f"`{ba[t]}`" if t in ba else "(not in the canonical cell)", f"`{e}`")
            for t, e in bb.items() if ba.get(t) != e]
    rows += [(f"`{t}`", f"`{e}`", "(not in this cell)") for t, e in ba.items() if t not in bb]
    out += ["", "Backward statements that differ from the canonical cell's (plain text; the temporaries "
            "tmpN of common subexpressions are left out):", "",
            numbers.table(["adjoint", "canonical `lstm`", f"`{b.cell.name}`"], rows) if rows else "(none)"]
    nb, na = len(formulas.backward(b)), len(formulas.backward(a))
    out.append("")
    out.append(f"The derivation has {nb} backward statements here, {na} for the canonical cell.")
    return "\n".join(out)


def cells_index() -> str:
    return (GENERATED_NOTE.format(src="spec/*.toml") + "# Cells\n\nOne page per cell of the spec "
            "(`lstm_spec.spec.builtin_cells()`), generated at build time from its spec file and its "
            "derivation, grouped by family (the family follows from what the spec declares). A new spec "
            "file gets its page on the next build.\n\n" + catalogue.index_md())


# ------------------------------------------------------------------------------------------ directives
def _formula_blocks(what):
    def handler(rest):  # forward|backward|stacked|concat CELL [kinds=a,b] [targets=x,y]
        options = {"kinds": None, "targets": None}
        for a in rest[1:]:
            key, _, val = a.partition("=")
            if key not in options:
                raise ValueError(f"unknown option {a!r}")
            options[key] = val.split(",")
        return formulas.blocks(rest[0], what, targets=options["targets"], kinds=options["kinds"])
    return handler


def _describe(rest):
    from lstm_spec.derivations.render import describe

    return "```text\n" + describe(formulas.derivation(rest[0])) + "\n```"


def _errata_checks(rest):
    rows = [(label, "inf" if err == float("inf") else f"{err:.1e}", worst.replace("|", "/"),
             "agrees" if ok else "**does not agree**") for label, err, worst, ok in errata.run_checks()]
    return numbers.table(["slides' backward", "complex-step error", "worst at", "verdict"], rows)


def _errata_reference(rest):
    rows = [(n, f"{e:.1e}") for n, e in errata.against_reference()]
    return numbers.table(["slides (corrected, peepholes 0) vs reference", "max abs difference"], rows)


def _tolerances(rest):
    from lstm_spec.checks.tolerances import TOLERANCES

    return numbers.table(["method", "dtype", "tolerance", "why"],
                         [(m, dt, f"{t.value:g}", t.reason) for (m, dt), t in TOLERANCES.items()])


def _layouts(rest):
    import lstm_spec.layouts as lay

    return "\n".join(line for line in (lay.__doc__ or "").splitlines() if line.startswith("|"))


def _module_doc(rest):
    import importlib
    import inspect

    doc = inspect.getdoc(importlib.import_module(rest[0])) or ""
    return re.sub(r":(func|mod|class|meth):`\.?", "`", doc)  # Sphinx roles read as code here


def _command_help(rest):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "lstm_spec", rest[0], "--help"], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"lstm-spec {rest[0]} --help failed: {r.stderr}")
    return r.stdout.rstrip()


def _module_docstring(name: str) -> str:
    import importlib

    return importlib.import_module(name).__doc__ or ""


def _layout_table(rest):  # the gate order, what conversions get wrong first, as the second column
    return column_first(_module_docstring(rest[0]), "gate order")


def _layout_notes(rest):
    notes = _module_docstring(rest[0]).split("Differences that matter when converting", 1)
    return without_internal_paths("Differences that matter when converting" + notes[1]) if len(notes) == 2 else ""


def _bug_signatures(rest):
    from lstm_spec.conformance import SIGNATURES

    return numbers.table(["key", "bug", "what it means (and where it was reported)"],
                         [(f"`{s.key}`", spec_html(s.title), spec_html(s.explain)) for s in SIGNATURES])


def _include_code(rest):  # include-code PATH LANG: a file of the repository, verbatim, as a code block
    return f"```{rest[1]}\n" + (ROOT / rest[0]).read_text(encoding="utf-8").rstrip() + "\n```"


def _nested(text: str) -> str:
    return re.sub(r"^#", "###", text, flags=re.M)  # an included file's headings nest under the page's


def _include(rest):  # include PATH: a markdown file of the repository (it must exist)
    path = ROOT / rest[0]
    if not path.exists():
        raise FileNotFoundError(f"docs: {rest[0]} is included by a page but does not exist")
    return _nested(path.read_text(encoding="utf-8"))


def _include_if_exists(rest):
    path = ROOT / rest[0]
    if path.exists():
        return _nested(path.read_text(encoding="utf-8"))
    return f'!!! note "Not written yet"\n    `{rest[0]}` does not exist yet; this section is filled from it.'


def _cell_link(rest):  # cell-link NAME [PREFIX]: a link to a cell's page if the cell exists, else its name
    prefix = rest[1] if len(rest) > 1 else ""
    if rest[0] in formulas.cells():
        return f"[{catalogue.title_html(rest[0])}]({prefix}cells/{rest[0]}.md) (`{rest[0]}`)"
    return f"`{rest[0]}` (not in this build)"


def _bench(what):
    def handler(rest):  # bench-table|bench-targets|bench-tools|bench-meta JSON: lstm-spec bench results
        from . import bench_page

        return bench_page.directive(what, ROOT / rest[0])
    return handler


def _figure(rest):  # figure graph CELL | figure unrolled | figure layouts: drawn by dot (figures.py)
    return {"graph": lambda: figures.step_figure(rest[1]), "unrolled": figures.unrolled_figure,
            "layouts": figures.layout_figure}[rest[0]]()


def _with_args(fn):
    return lambda rest: fn(*rest)


# Every directive <!-- lstm-spec: NAME ARGS... --> of the pages: NAME -> handler(ARGS) returning Markdown/HTML
DIRECTIVES = {
    **{what: _formula_blocks(what) for what in ("forward", "backward", "stacked", "concat")},
    **{f"bench-{k}": _bench(f"bench-{k}") for k in ("table", "targets", "tools", "meta", "profile")},
    "name": lambda rest: formulas.inline(rest[0], rest[1], rest[2] if len(rest) > 2 else None),  # CELL Q [TIME]
    "describe": _describe,
    "worked-example": lambda rest: numbers.worked_example_md(rest[0]),
    "ten-step": lambda rest: numbers.ten_step_md(rest[0]),
    "flow-table": lambda rest: numbers.flow_table(),
    "eigen-table": lambda rest: numbers.eigen_table(),
    "truncation": lambda rest: numbers.truncation_md(),
    "errata-checks": _errata_checks,
    "errata-reference": _errata_reference,
    "tolerances": _tolerances,
    "layouts": _layouts,
    "module-doc": _module_doc,
    "command-help": _command_help,
    "layout-table": _layout_table,
    "layout-notes": _layout_notes,
    "bug-signatures": _bug_signatures,
    "include-code": _include_code,
    "include": _include,
    "include-if-exists": _include_if_exists,
    "cell-link": _cell_link,
    "cells": lambda rest: catalogue.families_md(),
    "quickstart": lambda rest: quickstart.md(),
    "usage": lambda rest: quickstart.usage_md(),
    "diagnosis-examples": lambda rest: quickstart.diagnosis_examples_md(),
    "figure": _figure,
    "layout-rows-documented": lambda rest: "\n".join(layouts_doc.extra_rows_md()),  # frameworks without a converter
    "layout-sources": lambda rest: layouts_doc.sources_md(),
    **{what: _with_args(fn) for what, fn in STUDENT.items()},  # the students' pages: numbers by the reference
}


def expand(args: list[str]) -> str:
    """One directive's content: DIRECTIVES[NAME](ARGS)."""
    what, rest = args[0], args[1:]
    if what not in DIRECTIVES:
        raise ValueError(f"unknown directive {what!r}")
    return DIRECTIVES[what](rest)


def column_first(doc: str, name: str) -> str:
    """The Markdown table of a docstring with the column ``name`` moved next to the first column."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in doc.splitlines()
            if line.startswith("|")]
    if not rows or name not in rows[0]:
        raise ValueError(f"no table with a column {name!r}")
    k = rows[0].index(name)
    rows = [r[:1] + [r[k]] + r[1:k] + r[k + 1:] for r in rows]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


INTERNAL_PATH = re.compile(r"\s*\((?:see (?:also )?)?\.\./shared/[^()]*\)")


def without_internal_paths(text: str) -> str:
    """A docstring shown on a page drops its references to the developers' notes (../shared/...), which
    are not part of the site and not available to its readers."""
    return INTERNAL_PATH.sub("", text)


def expand_page(markdown: str, where: str = "") -> str:
    def sub(m):
        try:
            return expand(shlex.split(m.group(1)))
        except Exception as exc:  # a broken directive fails the build, naming the page
            raise RuntimeError(f"{where}: directive <!-- lstm-spec: {m.group(1)} -->: {exc}") from exc

    return DIRECTIVE.sub(sub, markdown)


# ------------------------------------------------------------------------------------------ MkDocs events
def on_config(config):
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and "Cells" in entry:
            entry["Cells"] = catalogue.nav()
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    gen = [("cells/index.md", cells_index())]
    gen += [(f"cells/{n}.md", cell_page(n)) for n in formulas.cells()]
    gen += [("api.md", api.page())]
    for uri, text in gen:
        files.append(File.generated(config, uri, content=text))
    files.append(File.generated(config, "img/gradient-flow.svg", content=numbers.plot_flow()))
    files.append(File.generated(config, "img/eigenvalues.svg", content=numbers.plot_eigen()))
    from . import bench_page  # the plot of the committed lstm-spec bench result

    files.append(File.generated(config, "img/bench.svg", content=bench_page.plot_svg(bench_page.load(BENCH_JSON))))
    files.append(File.generated(config, "assets/mathjax/tex-svg-full.js", abs_src_path=mathjax_file()))
    files.append(File.generated(config, "img/exploding-gradients.svg", content=student.plot_explode()))
    figures.prerender(figures.all_sources())  # dot, in parallel, for the figures not yet cached
    return files


def on_page_markdown(markdown, page, config, files):
    return expand_page(markdown, page.file.src_uri)
