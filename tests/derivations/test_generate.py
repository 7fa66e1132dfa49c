"""Generated code: committed, current, marked as generated, and the drift check bites."""

import subprocess
import sys

from lstm_spec.derivations.build import REFERENCE_DIR, generate, load_cells
from lstm_spec.spec import builtin_cells


def test_every_builtin_cell_has_a_current_generated_module():
    for g in generate(load_cells([])):
        assert g.path.exists(), f"{g.path} missing: run lstm-spec generate"
        assert not g.stale, g.diff()


def test_header_says_generated_from_which_spec_by_which_command():
    text = (REFERENCE_DIR / "lstm.py").read_text()
    head = text[:600]
    assert "GENERATED FILE - DO NOT EDIT." in head
    assert "from spec/lstm.toml" in head
    assert "`lstm-spec generate`" in head


def test_generation_is_deterministic():
    a = generate(load_cells(["lstm"]))[0].text
    b = generate(load_cells(["lstm"]))[0].text
    assert a == b


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lstm_spec", *args], capture_output=True, text=True)


def test_generate_check_fails_with_a_diff_when_a_generated_line_is_edited(tmp_path):
    assert _cli("generate", "--out", str(tmp_path)).returncode == 0
    assert _cli("generate", "--check", "--out", str(tmp_path)).returncode == 0
    path = tmp_path / "lstm.py"
    text = path.read_text()
    line = "        d_c_prev = d_c * f[t]\n"
    assert line in text
    path.write_text(text.replace(line, ""))
    res = _cli("generate", "--check", "--out", str(tmp_path))
    assert res.returncode == 1
    assert "-        d_c_prev" not in res.stdout and "+        d_c_prev = d_c * f[t]" in res.stdout
    assert "stale" in res.stderr


def test_generate_check_fails_when_the_spec_changes(tmp_path):
    """Changing a sign in the spec changes the derivation and so the generated code."""
    from lstm_spec.derivations.codegen import generate_module
    from lstm_spec.derivations.reverse import derive
    from lstm_spec.spec import load

    spec = (REFERENCE_DIR.parent / "spec" / "lstm.toml").read_text()
    changed = spec.replace("c       = f ⊙ c[t-1] + i ⊙ c_tilde", "c       = f ⊙ c[t-1] - i ⊙ c_tilde")
    assert changed != spec
    (tmp_path / "lstm.toml").write_text(changed)
    text = generate_module(derive(load(tmp_path / "lstm.toml")))
    assert "        d_c_tilde = -d_c * i[t]" in text
    assert text != (REFERENCE_DIR / "lstm.py").read_text()


def test_list_of_builtin_cells_matches_generated_files():
    """Every generated module in reference/ comes from a spec file, and the hand-written helpers there
    (runtime, losses, masks, truncation, bidirectional, training) say nothing of being generated."""
    generated = {p.stem for p in REFERENCE_DIR.glob("*.py") if "GENERATED FILE - DO NOT EDIT" in p.read_text()[:400]}
    assert generated == set(builtin_cells())
