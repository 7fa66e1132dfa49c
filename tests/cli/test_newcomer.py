"""What a newcomer meets first (issue 18): the commands' first answers are right and say what to do."""

from lstm_spec import cli
from lstm_spec.checks import torch_check
from lstm_spec.conformance import default_cases


def test_verify_without_torch_stops_at_once_with_the_install_command(monkeypatch, capsys):
    monkeypatch.setattr(torch_check, "torch_available", lambda: False)
    assert cli.main(["verify", "rnn_tanh", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not installed" in err and "--index-url https://download.pytorch.org/whl/cpu" in err
    assert "--no-torch" in err


def test_verify_names_the_rows_that_failed(monkeypatch, capsys):
    from lstm_spec.checks import runner

    real = runner.verify_cells

    def one_failing(cells, *a, **kw):
        rows = real(cells, *a, **kw)
        rows[0].passed = False
        return rows

    monkeypatch.setattr(runner, "verify_cells", one_failing)
    assert cli.main(["verify", "rnn_tanh", "--quiet", "--no-torch"]) == 1
    out = capsys.readouterr().out
    assert "SOME CHECKS FAILED (1: rnn_tanh / " in out


def test_conform_prints_a_summary_that_fits_and_the_count_it_runs(capsys):
    """A passing run: one line per case family (not every row of every case); --verbose has them all.
    The header's count is the number of cases run (variants included)."""
    target = "lstm_spec.conformance.examples:correct"
    assert cli.main(["conform", target, "--quiet", "--timeout", "0"]) == 0
    cap = capsys.readouterr()
    short = cap.out.splitlines()
    n = int(cap.err.split(" cases,")[0].rsplit(" ", 1)[1])
    cases = default_cases()
    skipped = sum(c.layers > 1 or c.direction == "bidirectional" for c in cases)  # the example: one layer, one way
    assert n == len(cases) and f"{n - skipped} passed, 0 failed, 0 errors, {skipped} skipped" in cap.out
    assert "float64 forward lengths   1/1" in cap.out and "summary" in short[6]
    assert cli.main(["conform", target, "--quiet", "--timeout", "0", "--verbose"]) == 0
    full = capsys.readouterr().out.splitlines()
    assert len(short) < 40 < len(full)


def test_conform_shows_a_dtypes_first_failure_in_full_and_the_rest_in_a_line(capsys):
    target = "lstm_spec.conformance.examples:broken_gate_order"
    assert cli.main(["conform", target, "--quiet", "--timeout", "0", "--dtype", "float64"]) == 1
    out = capsys.readouterr().out
    full = [x for x in out.splitlines() if x.startswith("[") and x.endswith(": FAIL")]
    short = [x for x in out.splitlines() if x.startswith("[") and "(failing: " in x]
    assert len(full) == 1 and len(short) >= 3, out
    assert "FAIL" in out.split("summary")[1].split("\n[")[0]  # the table marks the failing classes


def test_conform_json_carries_rows_localisation_and_diagnosis_deterministically(capsys):
    import json

    argv = ["conform", "lstm_spec.conformance.examples:broken_no_cell_carry_grad", "--quiet", "--timeout", "0",
            "--dtype", "float64", "--case", "T=2 B=1", "--json"]
    assert cli.main(argv) == 1
    first = capsys.readouterr().out
    assert cli.main(argv) == 1
    assert capsys.readouterr().out == first
    d = json.loads(first)
    (case,) = d["cases"]
    assert d["conforms"] is False and case["status"] == "FAIL"
    assert {r["quantity"] for r in case["rows"] if not r["passed"]} >= {"d c0"}
    assert "backward" in json.dumps(case["localisation"]) and case["diagnoses"]


def test_derive_latex_is_a_fragment_to_paste(capsys):
    """Issue 18 item 8: align* environments, one '&=' per line, the prose as comments, the docs' delta."""
    assert cli.main(["derive", "lstm", "--latex"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines.count(r"\begin{align*}") == 2 == lines.count(r"\end{align*}")
    inside = False
    for line in lines:
        if line in (r"\begin{align*}", r"\end{align*}"):
            inside = line.startswith(r"\begin")
            continue
        if inside:
            assert line.count("&=") == 1, line
        elif line:
            assert line.startswith("%"), line
    assert any(r"\delta c_{t-1} &=" in x for x in lines) and not any(x.startswith("  d_") for x in lines)


def _stderr_on_a_terminal(argv: list) -> tuple[int, str]:
    """Run lstm-spec with stderr on a pseudo-terminal (as a user sees it); stdout is captured apart."""
    import os
    import pty
    import subprocess
    import sys

    main_fd, term_fd = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "lstm_spec", *argv], stdout=subprocess.DEVNULL, stderr=term_fd,
                            env={**os.environ, "COLUMNS": "120"})
    os.close(term_fd)
    seen = b""
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(main_fd)
    return proc.wait(), seen.decode("utf-8", "replace")


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(capfd):
    rc, term = _stderr_on_a_terminal(["verify", "rnn_tanh", "--no-torch"])
    assert rc == 0 and "2/2" in term and "eta" in term and "\x1b[" in term, term[-400:]
    rc, term = _stderr_on_a_terminal(["conform", "lstm_spec.conformance.examples:correct", "--dtype", "float64",
                                      "--quick", "--timeout", "0"])
    quick = sum(c.dtype == "float64" and c.direction == "forward" and c.lengths is None and c.layers == 1
                for c in default_cases())
    assert rc == 0 and f"{quick}/{quick}" in term and "eta" in term, term[-400:]
    assert cli.main(["verify", "rnn_tanh", "--no-torch"]) == 0  # not a terminal: one plain line per cell
    err = capfd.readouterr().err
    assert "  [2/2] rnn_tanh: pass" in err and "\x1b[" not in err
