"""The documentation site: it builds strictly, every formula on it is what the derivation gives, every cell
has its page, nothing is fetched from a network, and the numbers pages are backed by the reference.
Each check has a negative control: the same check, run on a broken copy, must fail."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))

if not os.environ.get("CI"):  # under CI the docs tools are part of the test extra: a missing one fails
    pytest.importorskip("mkdocs", reason="docs tools: pip install -e '.[docs]'")

from lstm_spec_docs import errata, formulas, testing  # noqa: E402 - after the importorskip above


@pytest.fixture(scope="module")
def site():
    return testing.built_site()


def test_site_builds_with_every_page(site):
    names = {p.relative_to(site).as_posix() for p in testing.pages(site)}
    for page in ("index.html", "notation/index.html", "derivation/index.html", "worked-example/index.html",
                 "gradient-flow/index.html", "truncated-bptt/index.html", "errata/index.html",
                 "conformance/index.html", "adding-a-cell/index.html", "api/index.html", "cells/index.html"):
        assert page in names
    for cell in formulas.cells():
        assert f"cells/{cell}/index.html" in names, f"no page for cell {cell}"
    assert (site / "img" / "gradient-flow.svg").read_bytes().startswith(b"<?xml")
    assert (site / "img" / "eigenvalues.svg").stat().st_size > 10_000
    assert (site / "assets" / "mathjax" / "tex-svg-full.js").stat().st_size > 1_000_000


def test_every_formula_on_the_site_is_the_derivations(site):
    blocks = list(testing.derived_blocks(site))
    assert len(blocks) > 100
    assert {b[1] for b in blocks} >= set(formulas.cells())
    assert testing.formula_mismatches(site, testing.fresh_derivation) == []


def test_negative_control_a_tampered_formula_is_caught(site, tmp_path):
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    page = copy / "derivation" / "index.html"
    text = page.read_text()
    bad = r"\delta c_{t-1} = \delta c_{t} \odot i_{t}"
    good = r"\delta c_{t-1} = \delta c_{t} \odot f_{t}"
    assert good in text
    page.write_text(text.replace(good, bad, 1))
    problems = testing.formula_mismatches(copy, testing.fresh_derivation)
    assert len(problems) == 1 and "derivation/index.html" in problems[0] and "d_c_prev" in problems[0]


def test_negative_control_a_planted_derivation_disagrees_with_the_site(site):
    from lstm_spec.checks.mutants import planted_derivation

    bad, target = planted_derivation(testing.fresh_derivation("lstm"))
    problems = testing.formula_mismatches(site, lambda c: bad if c == "lstm" else testing.fresh_derivation(c))
    assert problems and all(target in p or "d_z_f" in p or "d_f" in p for p in problems)


def test_negative_control_a_missing_formula_is_caught(site, tmp_path):
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    page = copy / "cells" / "lstm" / "index.html"
    text = page.read_text()
    start = text.index('<div class="arithmatex lstm-derived" data-cell="lstm" data-section="backward" data-index="0"')
    end = text.index("</div>", start) + len("</div>")
    page.write_text(text[:start] + text[end:])
    problems = testing.formula_mismatches(copy, testing.fresh_derivation)
    assert any("backward equations of lstm" in p for p in problems)


def test_every_displayed_formula_is_derived(site):
    assert testing.hand_typed_displays(site) == []


def test_negative_control_a_hand_typed_display_is_caught(site, tmp_path):
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    page = copy / "notation" / "index.html"
    page.write_text(page.read_text().replace("<h2", '<div class="arithmatex">\\[ c_t = f_t c_{t-1} \\]</div><h2', 1))
    assert any("c_t = f_t" in p for p in testing.hand_typed_displays(copy))


def test_nothing_is_fetched_from_a_network(site):
    assert testing.network_references(site) == []


def test_negative_control_a_cdn_script_is_caught(site, tmp_path):
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    page = copy / "index.html"
    page.write_text(page.read_text().replace(
        "</head>", '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script></head>', 1))
    assert any("cdn.jsdelivr.net" in p for p in testing.network_references(copy))


def test_worked_example_page_shows_the_reference_numbers(site):
    import numpy as np
    from lstm_spec_docs import numbers

    from lstm_spec.reference import lstm

    w = numbers.worked_example()
    y, _, cache = lstm.forward(w["params"], w["x"])  # an independent run of the reference
    L = float((w["dy"] * y).sum())
    text = (site / "worked-example" / "index.html").read_text()
    assert f"{L:.6f}" in text
    g = lstm.backward(cache, w["dy"], {})["W_f"][0, 0]
    assert f"{g:.15f}" in text
    assert np.isclose(w["cs"], g, rtol=1e-12, atol=0)


def test_ten_step_numbers_are_measured_not_typed():
    from lstm_spec_docs import numbers

    assert abs(numbers.ten_step(0.95)["ratio"] - 0.95 ** 8) < 1e-9
    assert abs(numbers.ten_step(0.5)["ratio"] - 0.5 ** 8) < 1e-9  # the measurement follows the gate


def test_errata_checks_separate_the_printed_from_the_corrected_pseudocode():
    """The cell as printed agrees once its row-vector layout is read as such (a convention, not an error);
    misreading that layout fails; each of the network's three printed errors fails on its own; the
    network with the three corrections agrees."""
    results = {label: ok for label, _, _, ok in errata.run_checks()}
    assert [ok for label, ok in results.items() if label.startswith("cell backward as printed")] == [True]
    assert [ok for label, ok in results.items() if "misread" in label or "misreading" in label] == [False, False]
    assert [ok for label, ok in results.items() if label.startswith("network as printed")] == [False] * 3
    assert results["network with the three corrections"]
    assert max(e for _, e in errata.against_reference()) < 1e-12
