"""What the docs tests (tests/docs/test_docs*.py) share: building the site once per process, and the checks
they apply to a built site, written as functions of a site folder so that each has a negative control
(the same function run on a deliberately broken copy must report the breakage)."""

from __future__ import annotations

import functools
import html
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

DERIVED = re.compile(
    r'<div class="arithmatex lstm-derived" data-cell="([^"]*)" data-section="([^"]*)" data-index="(\d+)" '
    r'data-target="([^"]*)">\\\[ (.*?) \\\]</div>', re.S)


@functools.cache
def fresh_derivation(cell: str):
    """The derivation of a cell computed now, never read from the build's cache (formulas.derivation):
    what the built pages are compared with, so that a stale cached derivation would show as a mismatch."""
    from lstm_spec.derivations import derive
    from lstm_spec.spec import load

    return derive(load(cell))


@functools.cache
def built_site() -> Path:
    """``mkdocs build --strict`` into a temporary folder (once per process); raises with the log on failure."""
    out = Path(tempfile.mkdtemp(prefix="lstm_spec_site_"))
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)], cwd=ROOT,
                       capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"mkdocs build --strict failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return out


def pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if "assets" not in p.parts)


def derived_blocks(site: Path):
    """Every derived formula on the built pages: (page, cell, section, index, target, LaTeX)."""
    for p in pages(site):
        for m in DERIVED.finditer(p.read_text(encoding="utf-8")):
            cell, sec, idx, target, tex = m.groups()
            yield p, cell, sec, int(idx), html.unescape(target), html.unescape(tex)


def expected_section(d, sec: str) -> list[tuple[str, str]]:
    """What the derivation says, computed here straight from lstm_spec.derivations.render (forward and
    backward) and from the documented assembly of the derivation's names (stacked, concat)."""
    from lstm_spec.derivations.render import backward_equations, forward_equations

    from . import formulas

    if sec == "forward":
        plain = [r.target for r in forward_equations(d, latex=False) if r.kind != "aux"]
        return list(zip(plain, [str(r) for r in forward_equations(d, latex=True)], strict=True))
    if sec == "backward":
        plain = [r.target for r in backward_equations(d, latex=False, textbook=True)]
        return list(zip(plain, [str(r) for r in backward_equations(d, latex=True)], strict=True))
    return formulas.section(d, sec)


def formula_mismatches(site: Path, derivation_of) -> list[str]:
    """Every derived formula on the site that differs from ``derivation_of(cell)``; also every cell page
    that does not show all its forward and backward equations."""
    problems, seen = [], {}
    cache = {}
    for page, cell, sec, idx, target, tex in derived_blocks(site):
        if (cell, sec) not in cache:
            cache[(cell, sec)] = expected_section(derivation_of(cell), sec)
        want = cache[(cell, sec)]
        rel = page.relative_to(site)
        if idx >= len(want):
            problems.append(f"{rel}: {cell}/{sec}[{idx}] does not exist in the derivation")
            continue
        wt, wtex = want[idx]
        if (target, tex) != (wt, wtex):
            problems.append(f"{rel}: {cell}/{sec}[{idx}] {target}: page has\n    {tex}\n  derivation gives\n    {wtex}")
        seen.setdefault((rel.as_posix(), cell, sec), set()).add(idx)
    from . import formulas

    for cell in formulas.cells():
        rel = f"cells/{cell}/index.html"
        for sec in ("forward", "backward"):
            n = len(cache.get((cell, sec)) or expected_section(derivation_of(cell), sec))
            got = seen.get((rel, cell, sec), set())
            if got != set(range(n)):
                problems.append(f"{rel}: shows {len(got)} of the {n} {sec} equations of {cell}")
    return problems


RESOURCE = re.compile(r'<(script|link|img|iframe|source)\b[^>]*?\b(src|href)="(https?:)?//[^"]*"', re.I)
CSS_URL = re.compile(r'(@import|url\()\s*["\']?(https?:)?//', re.I)


def network_references(site: Path) -> list[str]:
    """Every resource a page, stylesheet or script would fetch from another host (links to read are fine)."""
    found = []
    for p in site.rglob("*"):
        if p.suffix not in (".html", ".css"):
            continue
        text = p.read_text(encoding="utf-8", errors="replace")
        for m in RESOURCE.finditer(text):
            if m.group(1).lower() == "link" and re.search(r'rel="(canonical|alternate|author|license)"', m.group(0)):
                continue
            found.append(f"{p.relative_to(site)}: {m.group(0)[:120]}")
        if p.suffix == ".css":
            for m in CSS_URL.finditer(text):
                found.append(f"{p.relative_to(site)}: {text[m.start():m.start() + 80]}")
    return found


def hand_typed_displays(site: Path) -> list[str]:
    """Every displayed formula that is not a derived block (pymdownx.arithmatex renders a $$...$$ display
    typed into a page as <div class="arithmatex">): displays on this site come from the derivation only;
    hand-written math is limited to inline names in the prose."""
    found = []
    for p in pages(site):
        for m in re.finditer(r'<div class="arithmatex">(.*?)</div>', p.read_text(encoding="utf-8"), re.S):
            found.append(f"{p.relative_to(site)}: {html.unescape(m.group(1))[:80]}")
    return found
