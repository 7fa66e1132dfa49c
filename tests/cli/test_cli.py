"""The command line: verify prints the table and exits 0 only when everything passes."""

import subprocess
import sys


def cli(*args):
    return subprocess.run([sys.executable, "-m", "lstm_spec", *args], capture_output=True, text=True)


def test_verify_prints_table_and_passes():
    res = cli("verify")
    assert res.returncode == 0, res.stdout + res.stderr
    for check in ("(a) symbolic, one step", "(b) symbolic, unrolled T=2", "(c) complex step",
                  "(c) finite differences", "(d) PyTorch"):
        line = next(row for row in res.stdout.splitlines() if check in row and row.startswith("lstm "))
        assert "pass" in line and "caught" in line
    from lstm_spec.spec import builtin_cells

    for name in builtin_cells():  # every cell of the spec is in the default run
        assert any(row.startswith(f"{name} ") for row in res.stdout.splitlines()), name
    assert "all checks passed" in res.stdout
    n = len(builtin_cells()) + 1  # progress: a line per cell (and the rules), not a terminal here
    assert f"[{n}/{n}] " in res.stderr and "] lstm: pass (" in res.stderr and "(c) complex step" not in res.stderr


def test_verify_fails_on_a_stale_generated_module(tmp_path, monkeypatch):
    """Run verify in-process with the committed module replaced by a mutant: exit code 1."""
    from lstm_spec import cli as cli_module
    from lstm_spec.checks import mutants, runner
    from lstm_spec.derivations.build import REFERENCE_DIR

    text = (REFERENCE_DIR / "lstm.py").read_text()
    bad = mutants.load_module(mutants.mutate_code(text, mutants.recursion_line(text), "delete"))
    monkeypatch.setattr(runner, "_module_for", lambda cell, gen: bad)
    assert cli_module.main(["verify", "lstm", "--quiet"]) == 1


def test_derive_prints_plain_and_latex():
    res = cli("derive", "lstm")
    assert res.returncode == 0 and "d_z_o = d_o * o * (1 - o)" in res.stdout
    res = cli("derive", "lstm", "--latex")
    assert res.returncode == 0 and r"\delta z_{o,t}" in res.stdout


def test_list_and_unknown_cell():
    res = cli("list")
    from lstm_spec.spec import builtin_cells

    assert res.returncode == 0 and len(res.stdout.splitlines()) == len(builtin_cells())
    assert any(row.startswith("lstm ") and "Canonical LSTM" in row for row in res.stdout.splitlines())
    res = cli("derive", "nope")
    assert res.returncode == 2 and "unknown cell 'nope'" in res.stderr


def test_verify_proof_runs_sympy_diff_and_says_so():
    res = cli("verify", "lstm", "--proof", "--no-torch", "--quiet")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "the difference expanded to 0 (a proof)" in res.stdout
    line = next(row for row in res.stdout.splitlines() if row.startswith("lstm ") and "(a) symbolic" in row)
    assert "pass" in line and "caught" in line
    fast = cli("verify", "lstm", "--no-torch", "--quiet")
    assert "reverse accumulation" in fast.stdout
