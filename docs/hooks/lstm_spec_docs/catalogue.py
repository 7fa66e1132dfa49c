"""The cells of the spec as the site lists them: grouped into families, with their titles and summaries
read from the spec files alone (``lstm_spec.spec.load``: no derivation, so the navigation costs nothing).

A cell's family follows from what its spec declares (its states, output, masks, functions, equations and
the words of its title), by the first rule of :data:`RULES` that holds: a new spec file lands in a family
without an edit here. The families are shown in the order of :data:`FAMILIES`.
"""

from __future__ import annotations

import functools
import re

from lstm_spec.spec import load
from lstm_spec.spec.language import Name, walk

from . import formulas
from .text import spec_html, spec_plain

CANONICAL_FAMILY = "Canonical LSTM and its layouts"
FAMILIES = [CANONICAL_FAMILY, "Peepholes", "Greff et al.'s variants", "Normalisation and projection",
            "Clipping and truncated gradients", "Dropout and zoneout", "Variable-length sequences",
            "Stacked layers", "With an output layer and a loss", "Plain RNN and GRU"]


@functools.cache
def spec(name: str):
    return load(name)


def _reads_cell_state_in_a_gate(cell) -> bool:
    return any(eq.lhs.startswith("z_") and any(isinstance(n, Name) and n.name == "c" for n in walk(eq.rhs))
               for eq in cell.equations)


def _kinds(cell) -> set[str]:
    return set(cell.functions.values())


# (family, rule) in the order they are tried; a cell none of them claims is a canonical-family cell
RULES = [
    ("Plain RNN and GRU", lambda c: not any(s.startswith("c") for s in c.states)),
    ("With an output layer and a loss", lambda c: c.shapes.get(c.output) == ("1",)),
    ("Stacked layers", lambda c: sum(bool(re.fullmatch(r"h\d+", s)) for s in c.states) > 1),
    ("Dropout and zoneout", lambda c: bool(c.masks)),
    ("Variable-length sequences", lambda c: any(q.shape == ("1",) for q in c.inputs.values())),
    ("Clipping and truncated gradients", lambda c: bool(_kinds(c) & {"clip", "stop_gradient"})),
    ("Greff et al.'s variants", lambda c: bool(re.search(r"Greff|CIFG", c.title))),
    ("Peepholes", _reads_cell_state_in_a_gate),
    ("Normalisation and projection", lambda c: bool(_kinds(c) & {"mean", "rsqrt"}) or c.shapes.get(c.output) != ("H",)),
]


def family_of(name: str) -> str:
    cell = spec(name)
    return next((fam for fam, rule in RULES if rule(cell)), CANONICAL_FAMILY)


def families() -> list[tuple[str, list[str]]]:
    """[(family, [cell, ...])] in display order, canonical cell first; empty families left out."""
    groups: dict[str, list[str]] = {f: [] for f in FAMILIES}
    for name in formulas.cells():
        groups.setdefault(family_of(name), []).append(name)
    return [(f, names) for f, names in groups.items() if names]


def short_title(name: str) -> str:
    """The title without a trailing parenthesis of sources or frameworks (kept when it is a formula)."""
    title = spec(name).title
    m = re.fullmatch(r"(.+?)\s*\(([^()]*)\)", title)
    return m.group(1) if m and " = " not in m.group(2) else title


def title_html(name: str) -> str:
    return spec_html(spec(name).title)


def title_plain(name: str) -> str:
    return spec_plain(spec(name).title)


def nav() -> list:
    """The "Cells" section of the navigation: the overview, then one group per family."""
    return [{"Overview": "cells/index.md"}] + [
        {fam: [{spec_html(short_title(n)): f"cells/{n}.md"} for n in names]} for fam, names in families()]


def slug(family: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", family.lower()).strip("-")


def index_md() -> str:
    """The Cells overview: one table per family (the one place where every cell is listed in full)."""
    from .numbers import table

    out = []
    for fam, names in families():
        rows = [(f"[{title_html(n)}]({n}.md)", f"`{n}`", spec_html(spec(n).summary),
                 ", ".join(f"`{s}`" for s in spec(n).states)) for n in names]
        out += [f"## {fam} {{#{slug(fam)}}}", "", table(["cell", "name", "summary", "states"], rows), ""]
    return "\n".join(out)


def families_md(prefix: str = "cells/") -> str:
    """The families, each linked to its table on the Cells overview, with the number of its cells."""
    n = sum(len(names) for _, names in families())
    items = [f"[{fam}]({prefix}index.md#{slug(fam)}) ({len(names)})" for fam, names in families()]
    return f"{n} cells in {len(items)} families: " + ", ".join(items) + "."
