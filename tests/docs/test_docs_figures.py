"""The site's figures (docs/hooks/lstm_spec_docs/figures.py): drawn by Graphviz's dot at build time from the
spec, for every cell; the backward paths into the previous states coloured; the unrolled truncation
picture; the framework layout blocks; a clear failure without dot; a cache that spares dot on a rebuild."""

from __future__ import annotations

import html
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))

if not os.environ.get("CI"):  # under CI the docs tools are installed: a missing one fails
    pytest.importorskip("mkdocs", reason="docs tools: pip install -e '.[docs]'")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed (apt-get install graphviz)", allow_module_level=True)

from lstm_spec_docs import figures, site  # noqa: E402

from lstm_spec.spec import builtin_cells, load  # noqa: E402

EDGE = re.compile(r'<g id="[^"]*" class="edge">\s*<title>(.*?)</title>(.*?)</g>', re.S)
pytestmark = pytest.mark.docs  # the docs selection (conftest marks test_docs*.py files it lists)
NODE = re.compile(r'<g id="[^"]*" class="node">\s*<title>(.*?)</title>', re.S)


def nodes(svg: str) -> set[str]:
    return {html.unescape(t) for t in NODE.findall(svg)}


def edges(svg: str) -> dict[tuple[str, str], str]:
    """{(from, to): the SVG of the edge} of a dot SVG."""
    out = {}
    for title, body in EDGE.findall(svg):
        u, v = html.unescape(title).split("->")
        out[(u, v)] = body
    return out


def strokes(body: str) -> set[str]:
    return set(re.findall(r'<path[^>]*stroke="([^"]+)"', body))


def test_every_cell_has_a_step_graph_whose_nodes_are_its_spec_names():
    for name in builtin_cells():
        cell = load(name)
        svg = figures.render(figures.step_graph(name))
        got = nodes(svg)
        constants = set(getattr(cell, "constants", {}))  # named numbers the equations read
        declared = set(cell.inputs) | set(cell.parameters) | {eq.lhs for eq in cell.equations}
        prev = {f"{s}[t-1]" for s in cell.states}
        assert declared <= got, f"{name}: no node for {sorted(declared - got)}"
        assert got <= declared | prev | constants, f"{name}: nodes not in the spec: {sorted(got - declared - prev)}"
        assert got & prev, f"{name}: no previous state in the graph"
        for eq in cell.equations:  # one arrow per name an equation reads
            assert any(v == eq.lhs for _, v in edges(svg)), f"{name}: nothing flows into {eq.lhs}"


def test_backward_paths_into_previous_states_are_coloured():
    svg = figures.render(figures.step_graph("lstm"))
    e = edges(svg)
    red, blue = figures.state_colours(load("lstm"))["c"], figures.state_colours(load("lstm"))["h"]
    assert strokes(e[("c[t-1]", "c")]) == {red}  # the constant error carousel: c_{t-1} -> c_t
    for g in "fico":
        assert strokes(e[("h[t-1]", f"z_{g}")]) == {blue}
    assert strokes(e[("c", "h")]) == {red, blue}  # on both paths: two parallel lines
    assert strokes(e[("W_f", "z_f")]) == {"#616161"}  # a parameter is on no path into a previous state


def test_stop_gradient_edge_is_dashed_and_carries_no_path():
    svg = figures.render(figures.step_graph("lstm_cell_only_bptt"))
    e = edges(svg)
    cell = load("lstm_cell_only_bptt")
    blue = figures.state_colours(cell)["h"]
    assert 'stroke-dasharray' in e[("h[t-1]", "h_const")] and strokes(e[("h[t-1]", "h_const")]) == {figures.NO_GRADIENT}
    assert not any(blue in strokes(body) for body in e.values()), "an adjoint path into h_{t-1} despite the stop"
    assert strokes(e[("c[t-1]", "c")]) == {figures.state_colours(cell)["c"]}


def test_unrolled_truncation_picture_cuts_the_chunks_and_the_hidden_path():
    e = edges(figures.render(figures.unrolled_graph(T=6)))
    grey = {figures.NO_GRADIENT}
    assert strokes(e[("chunked_c_3", "chunked_c_4")]) == grey  # the chunk boundary: value forward, no adjoint
    assert strokes(e[("chunked_h_3", "chunked_h_4")]) == grey
    assert strokes(e[("chunked_c_2", "chunked_c_3")]) != grey
    assert strokes(e[("full_c_3", "full_c_4")]) != grey and strokes(e[("full_h_3", "full_h_4")]) != grey
    for t in range(1, 7):  # cell-only: through h nothing comes back, through c everything does
        assert strokes(e[("cellonly_h_%d" % (t - 1), "cellonly_h_%d" % t)]) == grey
        assert strokes(e[("cellonly_h_%d" % (t - 1), "cellonly_c_%d" % t)]) == grey
        assert strokes(e[("cellonly_c_%d" % (t - 1), "cellonly_c_%d" % t)]) != grey


def test_layout_blocks_show_each_frameworks_order():
    svg = figures.render(figures.layout_blocks())
    order = {}
    for fw, n, g in re.findall(r'xlink:title="([^"]*?): block (\d) is gate (\w)"', svg):
        order.setdefault(html.unescape(fw), {})[int(n)] = g
    got = {fw: "".join(v[k] for k in sorted(v)) for fw, v in order.items()}
    assert got["PyTorch nn.LSTM"] == "ifco" and got["ONNX LSTM"] == "iofc" and got["Keras 3 LSTM"] == "ifco"
    assert got["TF1 tf.compat.v1.nn.rnn_cell.LSTMCell"] == "icfo"
    assert got["cuDNN (CUDNN_LSTM)"] == "ifco" and got["MXNet (gluon.rnn.LSTM, the RNN operator)"] == "ifco"


def test_pages_embed_their_figures():
    page = site.cell_page("rnn_tanh")
    assert "<!-- lstm-spec: figure graph rnn_tanh -->" in page
    for doc, directive in (("derivation.md", "figure graph lstm"), ("truncated-bptt.md", "figure unrolled"),
                           ("layouts.md", "figure layouts")):
        text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
        assert f"<!-- lstm-spec: {directive} -->" in text, f"{doc} does not show its figure"
    out = site.expand_page("<!-- lstm-spec: figure graph gru_reset_after -->", "x.md")
    assert out.startswith('<figure class="lstm-figure" data-figure="graph"') and "<svg" in out
    assert "\n\n" not in out, "a blank line would end the raw HTML block in Markdown"
    assert "<?xml" not in out and 'id="graph-gru_reset_after-node1"' in out  # ids unique on the page
    assert "<title>" not in out and 'class="node" data-name="h[t&#45;1]"' in out  # no DOT ids as page text


def test_without_dot_the_build_stops_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot here
    with pytest.raises(figures.FigureError, match="Graphviz's dot was not found on PATH.*apt-get install graphviz"):
        figures.render(figures.step_graph("lstm"))  # even when the figure is cached
    with pytest.raises(RuntimeError, match="derivation.md: directive .*figure graph lstm.*apt-get install graphviz"):
        site.expand_page("<!-- lstm-spec: figure graph lstm -->", "derivation.md")
    with pytest.raises(figures.FigureError):
        figures.prerender(figures.all_sources())  # what on_files calls: the build stops there
    from mkdocs.exceptions import BuildError

    assert issubclass(figures.FigureError, BuildError)  # MkDocs prints its message alone and exits with 1


def test_a_drawn_figure_is_cached_by_its_source(monkeypatch, tmp_path):
    monkeypatch.setenv("LSTM_SPEC_DOCS_CACHE", str(tmp_path / "derivations"))
    source = figures.step_graph("lstm") + "// cache test\n"
    first = figures.render(source)
    assert len(list((tmp_path / "docs-figures").glob("*.svg"))) == 1

    class DotRan(Exception):
        pass

    def no_dot(s):
        raise DotRan

    monkeypatch.setattr(figures, "_run_dot", no_dot)
    monkeypatch.setattr(figures, "DRAWN", {})  # a new build: only the folder remembers
    assert figures.render(source) == first  # from the cache
    with pytest.raises(DotRan):  # a different source is drawn again
        figures.render(source.replace("cache test", "changed"))


@pytest.mark.slow
def test_every_built_cell_page_shows_its_graph_with_the_spec_names():
    from lstm_spec_docs import testing

    out = testing.built_site()
    for name in builtin_cells():
        text = (out / "cells" / name / "index.html").read_text(encoding="utf-8")
        m = re.search(rf'<figure class="lstm-figure" data-figure="graph" data-name="{name}".*?</figure>', text, re.S)
        assert m and "<svg" in m.group(0), f"cells/{name}: no step graph"
        shown = {html.unescape(n) for n in re.findall(r'class="node" data-name="([^"]*)"', m.group(0))}
        cell = load(name)
        assert set(cell.parameters) | {eq.lhs for eq in cell.equations} <= shown, f"cells/{name}: names missing"
    for page, kind in (("derivation", "graph"), ("truncated-bptt", "unrolled"), ("layouts", "layouts")):
        assert f'data-figure="{kind}"' in (out / page / "index.html").read_text(encoding="utf-8"), page


def test_with_the_cache_off_each_figure_is_drawn_once_per_build(monkeypatch):
    monkeypatch.setenv("LSTM_SPEC_DOCS_CACHE", "off")
    monkeypatch.setattr(figures, "DRAWN", {})
    runs = []
    real = figures._run_dot
    monkeypatch.setattr(figures, "_run_dot", lambda s: runs.append(s) or real(s))
    sources = [figures.step_graph("lstm"), figures.unrolled_graph()]
    figures.prerender(sources)  # on_files
    for s in sources:  # the pages
        figures.render(s)
    assert sorted(runs) == sorted(sources)
