"""The students' and engineers' content of the site (issue 17 items 7 and 8): the pages exist and are in the
navigation, the exercises' answers run against the reference, the citations are linked, the constant
error carousel is named where the derivation shows it, the concatenated input's adjoint is displayed and
true, the corrected multi-layer loops agree with the two-layer cell, the exploding-gradient numbers come
from the reference, and the layout table lists TF1, cuDNN and MXNet with their sources."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "hooks"))

if not os.environ.get("CI"):
    pytest.importorskip("mkdocs", reason="docs tools: pip install -e '.[docs]'")

from lstm_spec_docs import layouts_doc, site, student  # noqa: E402

pytestmark = pytest.mark.docs  # the docs selection (conftest marks test_docs*.py files it lists)
CODE = re.compile(r"^(?P<indent> *)```python\n(?P<code>.*?)^(?P=indent)```", re.S | re.M)
PAGES = {"exploding-gradients.md": "Exploding gradients and clipping", "multilayer-bptt.md": "Multi-layer BPTT",
         "bidirectional.md": "Bidirectional BPTT", "exercises.md": "Exercises", "references.md": "References"}
PAPERS = {"hochreiter1997": "10.1162/neco.1997.9.8.1735", "gers2000": "10.1162/089976600300015015",
          "gers2002": "jmlr.org/papers/v3/gers02a", "graves2013": "arxiv.org/abs/1308.0850",
          "pascanu2013": "proceedings.mlr.press/v28/pascanu13", "werbos1990": "10.1109/5.58337",
          "williams1990": "10.1162/neco.1990.2.4.490"}


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def code_blocks(text: str) -> list[str]:
    out = []
    for m in CODE.finditer(text):
        indent = len(m.group("indent"))
        out.append(textwrap.dedent("\n".join(line[indent:] for line in m.group("code").splitlines())))
    return out


def test_new_pages_are_in_the_learn_section_of_the_navigation():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)  # Material's !!python tags
    nav = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)["nav"]
    learn = next(entry["Learn"] for entry in nav if isinstance(entry, dict) and "Learn" in entry)
    files = {v: k for e in learn for k, v in e.items()}
    for name, title in PAGES.items():
        assert (DOCS / name).exists(), name
        assert files.get(name) == title, f"{name} is not in the Learn section as {title!r}"


def test_every_exercise_answer_runs_against_the_reference(capsys):
    blocks = code_blocks(page("exercises.md"))
    answers = page("exercises.md").count('??? success "Answer"')
    assert answers >= 5 and len(blocks) == answers + 1, "one setup block, then one checked snippet per answer"
    for k, code in enumerate(blocks[1:], 1):
        assert "assert " in code, f"answer {k} checks nothing"
        assert "lstm_spec.reference" in blocks[0] + code
        namespace: dict = {}
        exec(compile(blocks[0], "exercises setup", "exec"), namespace)
        exec(compile(code, f"exercise {k}", "exec"), namespace)


def test_the_other_pages_snippets_run():
    for name in ("exploding-gradients.md", "bidirectional.md"):
        blocks = code_blocks(page(name))
        assert blocks, name
        for code in blocks:
            exec(compile(code, name, "exec"), {})


def test_references_are_full_citations_with_links_and_cited_from_the_pages():
    refs = page("references.md")
    for anchor, link in PAPERS.items():
        entry = re.search(rf'<a id="{anchor}"></a>(.*?)(?=\n- <a id=|\Z)', refs, re.S)
        assert entry, f"no reference {anchor}"
        assert re.search(rf"\]\(https://[^)]*{re.escape(link)}[^)]*\)", entry.group(1)), f"{anchor}: no link to {link}"
        assert re.search(r"\b(19|20)\d\d\b", entry.group(1)) and "*" in entry.group(1), f"{anchor}: not a full citation"
    cited = "".join(page(p) for p in ("derivation.md", "truncated-bptt.md", "exploding-gradients.md",
                                      "bidirectional.md"))
    for anchor in ("hochreiter1997", "gers2000", "pascanu2013", "werbos1990", "williams1990", "graves2013"):
        assert f"references.md#{anchor}" in cited, f"{anchor} is never cited from a page"


def test_constant_error_carousel_is_named_where_the_derivation_shows_the_cell_path():
    text = page("derivation.md")
    section5 = text.split("## 5. What goes back to step t-1", 1)[1].split("\n## ", 1)[0]
    assert "<!-- lstm-spec: backward lstm kinds=prev -->" in section5
    assert "**constant error carousel**" in section5 and "references.md#hochreiter1997" in section5


def test_concatenated_input_adjoint_is_displayed_and_true():
    text = page("derivation.md")
    assert "<!-- lstm-spec: concat-adjoint lstm -->" in text
    shown = student.concat_adjoint_md("lstm")
    assert r"\delta \begin{bmatrix} x_{t} \\ h_{t-1} \end{bmatrix}" in shown
    assert all(rf"\begin{{bmatrix}} W_{{{g}}} &amp; U_{{{g}}} \end{{bmatrix}}^\top \delta z_{{{g},t}}" in shown
               for g in "fico")
    # the display's claim, with the reference: for one step, [W U]^T dz summed over the gates = [dx; dh0]
    from lstm_spec.reference import lstm

    rng = np.random.default_rng(3)
    sizes = {"D": 3, "H": 4}
    p = {n: rng.standard_normal([sizes[d] for d in ds]) for n, ds in lstm.SIGNATURE.parameters.items()}
    x, h0, c0 = rng.standard_normal((1, 1, 3)), rng.standard_normal((1, 4)), rng.standard_normal((1, 4))
    y, _, cache = lstm.forward(p, x, h0=h0, c0=c0)
    g = lstm.backward(cache, rng.standard_normal(y.shape))
    # dz_g from the bias gradients (dz_g = db_g for one step and one sample)
    joined = sum(np.concatenate([p[f"W_{k}"], p[f"U_{k}"]], axis=1).T @ g[f"b_{k}"] for k in "fico")
    assert np.allclose(joined, np.concatenate([g["x"][0, 0], g["h0"][0]]))


def test_multilayer_loops_fix_the_slides_and_agree_with_the_two_layer_cell():
    text = page("multilayer-bptt.md")
    assert "<!-- lstm-spec: include-code docs/examples/multilayer_bptt.py python -->" in text
    code = (DOCS / "examples" / "multilayer_bptt.py").read_text(encoding="utf-8")
    for fix in ("(fix 1)", "(fix 2)", "(fix 3)", "(fix 4)"):
        assert fix in code
    assert "range(L - 1, -1, -1)" in code and "Y[t] - target[t - 1]" in code
    for name, err in student.multilayer_differences():
        assert err < 1e-12, f"{name}: the loops differ from lstm_stacked2 by {err}"


def test_multilayer_check_fails_for_the_slides_layer_loop(monkeypatch):
    """Negative control: the slides' `for l = L-1:0` (the top layer skipped) must show as a difference."""
    source = (DOCS / "examples" / "multilayer_bptt.py").read_text(encoding="utf-8")
    broken = source.replace("for k in range(L - 1, -1, -1):", "for k in range(L - 2, -1, -1):")
    assert broken != source
    module = type(sys)("multilayer_bptt")
    exec(compile(broken, "broken", "exec"), module.__dict__)
    monkeypatch.setattr(student, "example", lambda name: module)
    assert max(err for _, err in student.multilayer_differences()) > 1e-3


def test_exploding_gradient_numbers_come_from_the_reference_and_grow():
    norms = student.explode_measurements()
    small, large = norms[min(norms)], norms[max(norms)]
    assert np.median(small[:, -1]) < 10, "with U at scale 1 the gradient should not explode"
    assert np.median(large[:, -1]) > 1e3 * np.median(large[:, 0]), "with U at scale 8 it should grow by 10^3"
    table = student.clip_table()
    assert "| global norm to 1 (`clip_by_global_norm`) | 1 | 1.000000 |" in table
    page_text = page("exploding-gradients.md")
    for directive in ("explode-table", "clip-table"):
        assert f"<!-- lstm-spec: {directive} -->" in page_text
    assert "img/exploding-gradients.svg" in page_text
    assert student.plot_explode().startswith(b"<?xml")


def test_layout_table_lists_tf1_cudnn_mxnet_with_their_sources():
    text = page("layouts.md")
    table_at = text.index("<!-- lstm-spec: layout-table lstm_spec.layouts.frameworks -->")
    assert text[table_at:].split("\n")[1] == "<!-- lstm-spec: layout-rows-documented -->", \
        "the documented rows must follow the table's last row to stay in the same table"
    rows = site.expand("layout-rows-documented".split())
    table = site.expand(["layout-table", "lstm_spec.layouts.frameworks"]) + "\n" + rows
    lines = table.splitlines()
    assert len({line.count("|") for line in lines}) == 1, "the documented rows have the table's columns"
    expect = {"TF1 tf.compat.v1.nn.rnn_cell.LSTMCell": "i, j (= c), f, o", "cuDNN": "i, f, c′ (= c), o",
              "MXNet": "i, f, g (= c), o"}
    for name, order in expect.items():
        row = next((line for line in lines if line.startswith(f"| {name}")), None)
        assert row and row.split("|")[2].strip() == order, f"{name}: {row}"
    assert "forget_bias" in next(line for line in lines if line.startswith("| TF1"))
    sources = site.expand(["layout-sources"])
    for lay in layouts_doc.LSTM_LAYOUTS:
        if lay.source.startswith("http"):
            assert f"]({lay.source})" in sources
    assert "<!-- lstm-spec: layout-sources -->" in text


def test_notation_page_displays_the_concatenated_input_adjoint_its_prose_describes():
    shown = site.expand(["concat", "lstm"])
    assert shown.strip(), "the concatenated form is not displayed at all"
    assert r"\delta \begin{bmatrix} x_{t} \\ h_{t-1} \end{bmatrix}" in shown
    assert site.expand(["stacked", "lstm"]).strip()


def test_the_layout_pages_tf1_recipe_reproduces_tf1s_lstmcell():
    """The recipe the layout page gives for TF1 (no converter): kernel [W U]^T in the order i, j, f, o and the
    f block of the bias lowered by forget_bias, run through TF1's own LSTMCell, equals the reference."""
    text = page("layouts.md")
    assert "np.concatenate([W, U], axis=1).T" in text and "forget_bias" in text
    tf = pytest.importorskip("tensorflow")
    from tensorflow.python.keras.layers.legacy_rnn import rnn_cell_impl

    from lstm_spec.layouts import to_stacked
    from lstm_spec.layouts.gates import TF1_LSTM_ORDER
    from lstm_spec.reference import lstm

    rng = np.random.default_rng(0)
    D, H = 3, 4
    p = {n: rng.standard_normal([{"D": D, "H": H}[d] for d in ds]) for n, ds in lstm.SIGNATURE.parameters.items()}
    x = rng.standard_normal((1, 2, D))
    s = to_stacked(p, TF1_LSTM_ORDER)
    bias = s["b"].copy()
    f = TF1_LSTM_ORDER.index("f")
    bias[f * H:(f + 1) * H] -= 1.0
    cell = rnn_cell_impl.LSTMCell(H, forget_bias=1.0, dtype=tf.float64)
    zero = rnn_cell_impl.LSTMStateTuple(tf.zeros((2, H), tf.float64), tf.zeros((2, H), tf.float64))
    cell(tf.constant(x[0]), zero)  # builds the kernel
    cell.set_weights([np.concatenate([s["W"], s["U"]], axis=1).T, bias])
    out, _ = cell(tf.constant(x[0]), zero)
    assert np.abs(out.numpy() - lstm.forward(p, x)[0][0]).max() < 1e-12


def test_a_form_the_cell_does_not_have_fails_the_build_instead_of_rendering_nothing():
    with pytest.raises(ValueError, match="has no such form"):
        site.expand(["concat", "gru_reset_after"])


def test_the_stacked_form_shows_the_constant_the_spec_adds():
    shown = site.expand(["stacked", "lstm"])
    assert r"\mathrm{forget\_bias}" in shown and r"0 \\ \mathrm{forget\_bias} \\ 0 \\ 0" in shown
