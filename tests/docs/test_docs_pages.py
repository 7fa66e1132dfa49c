"""What a reader meets on the built pages besides the formulas (tests/docs/test_docs.py) and the browser's view
(tests/docs/test_docs_browser.py): spec text shown as math or code, never as raw notation; cells grouped by
family in the navigation and listed in full once; no developer-only paths; the quickstart's example
conforms and its sample report is what the command prints; the usage snippet runs; the truncated-BPTT and
errata pages say what their numbers show; derivations cached between builds only while still valid.

The checks on a built site are functions of its folder, so that each can be run on another build (the
one before a fix, a broken copy) and must fail there."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))

if not os.environ.get("CI"):
    pytest.importorskip("mkdocs", reason="docs tools: pip install -e '.[docs]'")

from lstm_spec_docs import catalogue, formulas, numbers, quickstart, testing  # noqa: E402 - after the importorskip above
from lstm_spec_docs.text import spec_html, spec_plain  # noqa: E402 - after the importorskip above


# ------------------------------------------------------------------------------------------ helpers
class _Text(HTMLParser):
    """The text a reader sees: no math source, no scripts, and (unless ``code``) no code; navigation and
    page content alike."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, code: bool):
        super().__init__(convert_charrefs=True)
        self.hidden = {"script", "style"} | (set() if code else {"code", "pre"})
        self.parts, self.depth, self.skip_from = [], 0, None

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        self.depth += 1
        if self.skip_from is None and (tag in self.hidden or "arithmatex" in (dict(attrs).get("class") or "")):
            self.skip_from = self.depth

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if self.skip_from == self.depth:
            self.skip_from = None
        self.depth -= 1

    def handle_data(self, data):
        if self.skip_from is None:
            self.parts.append(data)


def visible_text(page: Path, code: bool = False) -> str:
    p = _Text(code)
    p.feed(page.read_text(encoding="utf-8"))
    return " ".join("".join(p.parts).split())


def shown_as(spec_text: str) -> str:
    """What a reader sees of a piece of spec text rendered by the docs (tags dropped, entities read)."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", spec_html(spec_text))).split())


def summaries_not_shown(site: Path) -> list[str]:
    """Cells whose summary the Cells overview does not show whole (a "|" in it splits its table row, and
    Python-Markdown drops the cells beyond the header's count)."""
    text = visible_text(site / "cells" / "index.html", code=True)
    return [n for n in formulas.cells() if shown_as(catalogue.spec(n).summary) not in text]


RAW_NOTATION = re.compile(r"\w_\{|\b[a-zA-Z]~|\[t-1\]|\|\^2")  # in the text a reader sees
EATEN = re.compile(r"\w_<em>")  # in the HTML: an underscore that Markdown took for emphasis


def raw_spec_notation(site: Path) -> list[str]:
    """Spec notation left raw on a page (``h_{t-1}``, ``c~``, ``c[t-1]``, ``|...|^2``) or eaten by Markdown
    (``gx_*`` read as emphasis), in the text a reader sees, navigation labels included."""
    found = []
    for page in testing.pages(site):
        text = visible_text(page)
        raw = page.read_text(encoding="utf-8")
        for m in list(RAW_NOTATION.finditer(text)) + list(EATEN.finditer(raw)):
            src = m.string
            found.append(f"{page.relative_to(site)}: ...{src[max(0, m.start() - 40):m.end() + 20]}...")
    return found


def broken_table_rows(site: Path) -> list[str]:
    """Table rows with another number of cells than their header (a "|" in a cell splits the row)."""
    found = []
    for page in testing.pages(site):
        for table in re.findall(r"<table>(.*?)</table>", page.read_text(encoding="utf-8"), re.S):
            width = len(re.findall(r"<th\b", table))
            for row in re.findall(r"<tr>(.*?)</tr>", table, re.S):
                n = len(re.findall(r"<td\b", row))
                if n and n != width:
                    found.append(f"{page.relative_to(site)}: {n} cells under {width} headers: "
                                 f"{re.sub(r'<[^>]+>', ' ', row)[:100]}")
    return found


INTERNAL = ("../shared", "docs/hooks")


def internal_paths(site: Path) -> list[str]:
    """Mentions of the developers' notes or of the docs build's own code anywhere in a built page."""
    return [f"{p.relative_to(site)}: {needle}" for p in testing.pages(site)
            for needle in INTERNAL if needle in p.read_text(encoding="utf-8")]


def nav_of(site: Path) -> str:
    text = (site / "index.html").read_text(encoding="utf-8")
    start = text.index('<nav class="md-nav md-nav--primary"')
    return text[start:text.index("md-sidebar--secondary", start)]


def cell_links_on_home(site: Path) -> set[str]:
    article = (site / "index.html").read_text(encoding="utf-8").split("<article", 1)[1].split("</article>")[0]
    return set(re.findall(r'href="cells/([a-z0-9_]+)/"', article))


@pytest.fixture(scope="module")
def site():
    return testing.built_site()


# ------------------------------------------------------------------------------------------ spec text
def test_spec_text_becomes_math_code_or_escaped_text():
    assert spec_html("on h_{t-1} and x_t") == "on h<sub>t−1</sub> and x<sub>t</sub>"
    assert spec_html("c~ and c~_t and c[t-1]") == "c\u0303 and c\u0303<sub>t</sub> and c<sub>t−1</sub>"
    assert spec_html("loss_t = 1/2 |y_t - target_t|^2") == \
        "loss<sub>t</sub> = 1/2 ‖y<sub>t</sub> - target<sub>t</sub>‖²"
    assert spec_html("gains (gx_*, gh_*)") == "gains (<code>gx&#95;&#42;</code>, <code>gh&#95;&#42;</code>)"
    assert spec_html("Keras recurrent_dropout, go_backwards; c_new, W_hy") == \
        ("Keras <code>recurrent&#95;dropout</code>, <code>go&#95;backwards</code>; c<sub>new</sub>, "
         "W<sub>hy</sub>")
    assert spec_html("a | b * c & <d>") == "a &#124; b &#42; c &amp; &lt;d&gt;"
    assert spec_plain("on h_{t-1} (Keras recurrent_dropout)") == "on hₜ₋₁ (Keras recurrent_dropout)"


def test_a_table_cell_with_a_pipe_stays_one_cell():
    md = numbers.table(["a", "b"], [("|x|", "`p | q`")])
    assert md.splitlines()[2] == "| &#124;x&#124; | `p | q` |"


def test_no_spec_notation_is_left_raw_and_no_table_row_is_split(site):
    assert raw_spec_notation(site) == []
    assert broken_table_rows(site) == []
    assert summaries_not_shown(site) == []


def test_negative_control_raw_notation_and_a_split_row_are_caught(site, tmp_path):
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    page = copy / "cells" / "index.html"
    text = page.read_text(encoding="utf-8")
    text = text.replace("<td>", "<td>c~ on h_{t-1}</td><td>", 1)
    page.write_text(text, encoding="utf-8")
    assert any("cells/index.html" in p and "h_{t-1}" in p for p in raw_spec_notation(copy))
    assert any("cells/index.html" in p for p in broken_table_rows(copy))


# ------------------------------------------------------------------------------------------ navigation
def test_cells_are_grouped_by_family_and_listed_in_full_once(site):
    groups = catalogue.families()
    assert sum(len(names) for _, names in groups) == len(formulas.cells())
    assert 5 <= len(groups) <= 12 and max(len(names) for _, names in groups) < len(formulas.cells()) / 2
    assert groups[0][1][0] == formulas.CANONICAL
    nav = nav_of(site)
    for family, names in groups:
        assert html.escape(family, quote=False).replace("'", "&#x27;") in nav or family in nav
        for name in names:
            assert f"cells/{name}/" in nav
    # the pages after the cells are in the navigation, and the nav lists the cells once
    for page in ("errata/", "conformance/", "layouts/", "api/"):
        assert f'href="{page}"' in nav
    assert len(re.findall(r'href="cells/lstm/"', nav)) == 1
    # Home links to the families, not to every cell again
    assert len(cell_links_on_home(site)) <= 3


def test_family_rules_follow_the_spec_not_a_list_of_names():
    assert catalogue.family_of("gru_reset_after") == catalogue.family_of("rnn_tanh") == "Plain RNN and GRU"
    assert catalogue.family_of("peephole") == catalogue.family_of("peephole_full") == "Peepholes"
    assert catalogue.family_of("lstm_zoneout") == "Dropout and zoneout"
    assert catalogue.family_of("lstm") == catalogue.CANONICAL_FAMILY


def test_no_page_mentions_internal_paths(site):
    assert internal_paths(site) == []


def test_negative_control_an_internal_path_is_caught(site, tmp_path):
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    page = copy / "conformance" / "index.html"
    page.write_text(page.read_text(encoding="utf-8").replace("</article>", "(see ../shared/anchors.md)</article>", 1),
                    encoding="utf-8")
    assert internal_paths(copy) == ["conformance/index.html: ../shared"]


# ------------------------------------------------------------------------------------------ quickstart
def _conform(path: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lstm_spec", "conform", f"{path}:MyLSTM", "--timeout", "0",
                           "--quiet", *options], capture_output=True, text=True, cwd=path.parent, timeout=300)


def test_the_quickstart_example_conforms_and_a_broken_copy_does_not(tmp_path):
    r = _conform(ROOT / quickstart.EXAMPLE)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("CONFORMS"), r.stdout[-500:] + r.stderr[-500:]
    broken = tmp_path / "my_lstm.py"
    text = (ROOT / quickstart.EXAMPLE).read_text(encoding="utf-8")
    assert 'np.tanh(z["c"])' in text
    broken.write_text(text.replace('np.tanh(z["c"])', 'np.tanh(z["o"])'), encoding="utf-8")
    r = _conform(broken, "--quick", "--dtype", "float64")
    assert r.returncode == 1 and "DOES NOT CONFORM" in r.stdout


def test_the_usage_snippet_runs_and_its_gradient_is_right():
    import numpy as np

    ns: dict = {}
    exec(compile((ROOT / quickstart.USAGE).read_text(encoding="utf-8"), quickstart.USAGE, "exec"), ns)
    grads, params, x, lstm = ns["grads"], ns["params"], ns["x"], ns["lstm"]
    assert grads["W_f"].shape == (4, 3) and grads["x"].shape == (5, 2, 3) and grads["h0"].shape == (2, 4)
    pc = {k: v.astype(complex) for k, v in params.items()}
    pc["U_i"] = pc["U_i"].copy()
    pc["U_i"][1, 2] += 1e-30j
    y, _, _ = lstm.forward(pc, x.astype(complex))
    assert abs(np.imag(y.sum()) / 1e-30 - grads["U_i"][1, 2]) < 1e-12  # complex step: L = sum(y)


def test_the_sample_report_on_the_pages_is_what_the_command_prints(site):
    """The command, run here (in its own process: --timeout 0 spares it a worker, and its report does not
    depend on where the target runs), prints on stdout exactly the report shown on both pages."""
    r = subprocess.run([sys.executable, "-m", "lstm_spec", *quickstart.SAMPLE[1:], "--timeout", "0", "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1
    for page in ("index.html", "conformance/index.html"):
        text = html.unescape(re.sub(r"<[^>]+>", "", (site / page).read_text(encoding="utf-8")))
        assert r.stdout.rstrip() in text, page
        assert quickstart.SAMPLE[2] in text


# ------------------------------------------------------------------------------------------ accuracy
def test_truncated_bptt_page_shows_the_truncated_step_and_defines_its_k(site):
    text = (site / "truncated-bptt" / "index.html").read_text(encoding="utf-8")
    assert 'data-cell="lstm_cell_only_bptt" data-section="backward"' in text
    assert re.search(r'data-target="d_h_prev">\\\[ \\delta h_\{t-1\} = 0 \\\]', text)
    words = visible_text(site / "truncated-bptt" / "index.html")
    assert "k1 = k2 = k" in words and "k1 = k2 = 40" not in words


def test_errata_page_reads_the_row_vector_layout_as_a_convention(site):
    words = visible_text(site / "errata" / "index.html")
    assert "Weight gradients are transposed" not in words
    assert "convention" in words and "without the candidate's peephole" in words
    assert "cannot be executed" in words


# ------------------------------------------------------------------------------------------ build time
def test_a_cached_derivation_is_used_only_while_its_spec_and_code_are_unchanged(tmp_path, monkeypatch):
    from lstm_spec.derivations.render import backward_equations

    monkeypatch.setenv(formulas.CACHE_ENV, str(tmp_path))
    fresh = formulas.derivation.__wrapped__("rnn_tanh")
    files = list(tmp_path.glob("rnn_tanh-*.pickle"))
    assert len(files) == 1
    again = formulas.derivation.__wrapped__("rnn_tanh")
    assert [str(r) for r in backward_equations(again)] == [str(r) for r in backward_equations(fresh)]
    # a cache file that does not belong to this spec text is not used
    import pickle

    stale = pickle.loads(files[0].read_bytes())
    stale.cell.source = stale.cell.source + "\n# another spec text\n"
    files[0].write_bytes(pickle.dumps(stale))
    assert formulas.derivation.__wrapped__("rnn_tanh").cell.source == fresh.cell.source
    files[0].write_bytes(b"not a pickle")
    assert formulas.derivation.__wrapped__("rnn_tanh").cell.source == fresh.cell.source
    monkeypatch.setenv(formulas.CACHE_ENV, "off")
    assert formulas.cache_dir() is None


def test_conformance_guide_explains_the_diagnosis_with_two_real_reports(site):
    """Issue 14, deliverable 6: the guide says how a diagnosis is reached and shows two reports produced
    at build time: a backward bug localised in the backward and a forward bug localised in the forward."""
    html = (site / "conformance" / "index.html").read_text(encoding="utf-8")
    assert "How a failure is localised and explained" in html
    backward, forward = html.split("A bug in the forward", 1)
    assert "your backward is not the gradient of your own forward" in backward.split("A bug in the backward", 1)[1]
    assert "the difference is in the forward" in forward
    assert "d_c_prev = d_c * f" in backward and "forget bias" in forward
