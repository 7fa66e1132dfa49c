"""verify's cost is polynomial in the spec's size on every accepted spec (issue 13, item 10), and finite
differences do not report a false failure on a badly conditioned one.

The worst case found: a chain of squares a_j = a_{j-1} * a_{j-1} (degree 2^n in tanh(z)); check (a) took
6.7 / 21 / 78 s for n = 5 / 6 / 7 and did not finish for n = 10, because SymPy built the explicit forward
(its automatic evaluation asks assumptions of ever deeper products). The checks now evaluate the forward on
a tape of residues at random points, and --proof uses SymPy only when the expansion is bounded."""

import signal
import time
from contextlib import contextmanager

import pytest

from lstm_spec.checks import mutants
from lstm_spec.checks.numeric import check_derivatives
from lstm_spec.checks.runner import unrolled_sizes, verify_cell
from lstm_spec.checks.symbolic import (
    _proof_feasible,
    check_step,
    check_unrolled,
    expansion_bound,
)
from lstm_spec.checks.tolerances import tolerance
from lstm_spec.derivations import derive
from lstm_spec.derivations.build import generate
from lstm_spec.spec import load
from lstm_spec.spec.cells import load_file

from ..conftest import write_spec


def chain_spec(n: int) -> str:
    eqs = ["z = W @ x + U @ h[t-1] + b", "a0 = tanh(z)"]
    eqs += [f"a{j} = a{j - 1} * a{j - 1}" for j in range(1, n + 1)]
    eqs.append(f"h = tanh(a{n})")
    body = "\n".join(eqs)
    return f'''name = "chain{n}"
title = "A chain of squares"
summary = "a_j = a_(j-1) * a_(j-1), n times: degree 2^n"
output = "h"

equations = """
{body}
"""

[dimensions]
D = "input features"
H = "hidden units"

[inputs]
x = "D"

[states]
h = "H"

[parameters]
W = "H x D"
U = "H x H"
b = "H"

[functions]
tanh = "tanh"
'''


def chain(tmp_path, n):
    cell = load_file(write_spec(tmp_path, chain_spec(n), f"chain{n}.toml"))
    gen = generate([cell])[0]
    return cell, derive(cell), gen.text


@contextmanager
def within(seconds: int):
    """Fail (instead of hanging) when the block takes longer than ``seconds``."""
    def stop(*_):
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("n", [5, 10, 20])
def test_checks_a_and_b_on_a_chain_of_squares_take_polynomial_time(tmp_path, n):
    cell, d, text = chain(tmp_path, n)
    module = mutants.load_module(text, f"chain{n}")
    t0 = time.perf_counter()
    with within(30):
        a = check_step(d, exact="points", derivative="reverse")
        b = check_unrolled(d, module, T=2, sizes=unrolled_sizes(cell), derivative="reverse")
    assert a["error"] == 0 and a["checked"] > 0, a
    assert b["error"] == 0 and b["checked"] > 0, b
    assert time.perf_counter() - t0 < 10


def test_negative_controls_still_caught_on_the_chain(tmp_path):
    cell, d, text = chain(tmp_path, 10)
    with within(30):
        for k, st in enumerate(d.loop):
            if st.elementwise == 0 or st.elementwise.is_Symbol:
                continue
            bad, target = mutants.planted_derivation(d, k)
            assert check_step(bad, exact="points", only={target}, derivative="reverse")["error"] > 0, target
        for how in ("delete", "negate"):
            mutant = mutants.load_module(mutants.mutate_code(text, mutants.recursion_line(text), how), "chain_bad")
            res = check_unrolled(d, mutant, T=2, sizes=unrolled_sizes(cell), stop_after=1, derivative="reverse")
            assert res["error"] > 0, how


def test_proof_degrades_to_points_with_a_note_when_the_expansion_is_unbounded(tmp_path):
    cell, d, text = chain(tmp_path, 10)
    module = mutants.load_module(text, "chain10")
    with within(30):
        a = check_step(d, exact="expand", derivative="sympy")
        b = check_unrolled(d, module, T=2, sizes=unrolled_sizes(cell), derivative="sympy")
    for res in (a, b):
        assert res["error"] == 0 and res["note"].startswith("not a proof"), res
    assert expansion_bound(d)[1] == 2**10
    # every built-in cell stays within the bound: --proof still proves them
    for name in ("lstm", "lstm_layer_norm", "gru_reset_after", "lstm_stacked2_dropout"):
        c = load(name)
        dd = derive(c)
        assert _proof_feasible(expansion_bound(dd)), name
        assert _proof_feasible(expansion_bound(dd, unrolled_sizes(c), steps=2)), name


def test_verify_of_the_chain_finishes_quickly(tmp_path):
    cell, _, _ = chain(tmp_path, 20)
    t0 = time.perf_counter()
    with within(60):
        rows = verify_cell(cell, torch=False)
    by_check = {r.check: r for r in rows}
    for check in ("(a) symbolic, one step", "(b) symbolic, unrolled T=2", "(c) complex step",
                  "(c) finite differences"):
        assert by_check[check].status == "pass", by_check[check]
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("n", [5, 6, 7])
def test_finite_differences_no_false_failure_on_a_badly_conditioned_loss(tmp_path, n):
    """At n = 6 central differences at one fixed step reported 0.67 against 1e-6 (a gradient 10^-14 times
    smaller than L is below what a difference of two L's resolves) while complex step agreed to 1e-14."""
    _, _, text = chain(tmp_path, n)
    module = mutants.load_module(text, f"chain{n}")
    tol = tolerance("finite_difference", "float64")
    assert check_derivatives(module, "complex_step")["error"] <= tolerance("complex_step", "complex128")
    res = check_derivatives(module, "finite_difference")
    assert res["error"] <= tol, res
    mutant = mutants.load_module(mutants.mutate_code(text, mutants.recursion_line(text), "delete"), "chain_bad")
    assert check_derivatives(mutant, "finite_difference")["error"] > tol


def test_finite_differences_error_model_does_not_hide_a_small_planted_error(lstm_text):
    """The error estimate is the differences' own (truncation + rounding), not a looser constant: a gradient
    off by 1e-4 relative on a well-conditioned cell is still caught."""
    line = "        d_c_prev = d_c * f[t]\n"
    assert line in lstm_text
    bad = mutants.load_module(lstm_text.replace(line, "        d_c_prev = d_c * f[t] * 1.0001\n"), "lstm_bad")
    assert check_derivatives(bad, "finite_difference")["error"] > tolerance("finite_difference", "float64")


def test_the_table_shows_a_passing_rows_not_a_proof_note():
    """--proof that fell back to random points says so in verify's table even when the row passes."""
    from lstm_spec.checks.runner import CheckRow, format_table

    rows = [CheckRow("chain", "(a) symbolic", 0, 0, True, "caught", 0.1,
                "not a proof: the expansion is unbounded; 8 entries"),
            CheckRow("chain", "(b) unrolled", 0, 0, True, "caught", 0.1, "8 entries; differ: []")]
    text = format_table(rows)
    assert "chain / (a) symbolic: not a proof" in text and "(b) unrolled: 8 entries" not in text
