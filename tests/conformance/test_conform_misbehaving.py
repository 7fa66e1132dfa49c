"""Conformance against misbehaving targets (issue 7, item 4): a target that raises, returns something
that is not an array, a wrong shape or dtype, NaN, hangs, dies, or modifies its inputs gives a failing
case with the reason, and the run goes on to the next case. Determinism of the report (item 6)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lstm_spec.conformance import conform, default_cases, format_report, load_target
from lstm_spec.conformance.runner import CaseWorker

TARGETS = Path(__file__).with_name("conform_misbehaving_targets.py")
# one case per shape, float64 then float32; the targets misbehave on T = 4 only
QUICK = [c for c in default_cases() if c.direction == "forward" and c.lengths is None and c.layers == 1]
PICKED = {c.name for c in QUICK if c.shape[0] == 4}
GUARD = 600  # seconds: only against a hang of the test itself, never a timing assertion


def _target(name):
    return load_target(f"{TARGETS}:{name}")


def _by_status(report):
    out = {}
    for r in report.results:
        out.setdefault(r.status, set()).add(r.case.name)
    return out


@pytest.mark.parametrize("name, status, reason", [
    ("Raises", "error", "the target raised RuntimeError: boom at T = 4"),
    ("ReturnsString", "error", "ReturnsString.forward: y: expected an array, got str"),
    ("WrongShape", "FAIL", "shape (4, 3, 2), expected (4, 3, 3)"),
    ("NaNOutput", "FAIL", "y: non-finite values: 1 NaN of 36, first nan at t=1 b=2 unit=0"),
])
def test_misbehaving_case_fails_with_reason_and_the_run_goes_on(name, status, reason):
    report = conform(_target(name), QUICK)
    assert _by_status(report) == {status: PICKED, "pass": {c.name for c in QUICK} - PICKED}
    text = format_report(report, verbose=False)
    assert reason in text, text
    assert "DOES NOT CONFORM" in text


def test_wrong_dtype_fails_even_within_tolerance():
    """float64 arrays in a float32 case: the numbers are within the float32 tolerance, the dtype is not
    the case's (without the dtype check these cases pass)."""
    report = conform(_target("UpcastFloat32"), QUICK)
    f32 = {c.name for c in QUICK if c.dtype == "float32"}
    assert _by_status(report) == {"FAIL": f32, "pass": {c.name for c in QUICK} - f32}
    for r in report.results:
        if r.case.dtype == "float32":
            assert [x.quantity for x in r.failing] == ["y"] and r.failing[0].within
            assert "dtype float64, expected float32" in r.failing[0].detail
            assert not r.diagnoses  # the numbers are right: no bug signature to look for
    assert not report.passed


@pytest.mark.parametrize("name, reason", [
    ("MutatesX", "MutatesX.forward modified its argument x ("),
    ("MutatesParams", "MutatesParams.forward modified its argument params['W'] ("),
    ("MutatesDyAndH0", "MutatesDyAndH0.backward modified its argument dy ("),
    ("MutatesProblem", "the target modified the problem's x"),
])
def test_modified_inputs_are_named(name, reason):
    report = conform(_target(name), QUICK)
    assert _by_status(report) == {"FAIL": {c.name for c in QUICK}}
    for r in report.results:
        assert reason in r.detail, r.detail
    if name == "MutatesDyAndH0":  # every number is right: without the check, every case would pass
        assert all(row.passed for r in report.results for row in r.rows)
        assert "MutatesDyAndH0.backward modified its argument h0 (1 of" in report.results[0].detail
    if name in ("MutatesX", "MutatesParams"):
        # the target got private copies: its scribbles did not reach backward or the reference
        assert all(row.passed for r in report.results for row in r.rows)
    assert reason in format_report(report, verbose=False)


def test_modified_inputs_are_named_from_a_worker_process():
    report = conform(_target("MutatesDyAndH0"), QUICK[:2], timeout=GUARD)
    assert [r.status for r in report.results] == ["FAIL", "FAIL"]
    assert "MutatesDyAndH0.backward modified its argument dy" in report.results[0].detail


@pytest.mark.parametrize("name", ["HangsInPython", "HangsInC"])
def test_hang_is_a_timeout_and_the_run_goes_on(name):
    cases = [c for c in QUICK if c.dtype == "float64"][1:4]  # T = 2, 4, 6: the middle one hangs
    report = conform(_target(name), cases, timeout=3)
    assert [r.status for r in report.results] == ["pass", "error", "pass"], format_report(report)
    assert "timed out: no result within 3 s" in report.results[1].detail
    assert "process was killed" in report.results[1].detail


def test_dead_worker_is_reported_and_replaced():
    cases = [c for c in QUICK if c.dtype == "float64"][1:4]  # T = 2, 4, 6: the middle one dies
    report = conform(_target("Crashes"), cases, timeout=GUARD)
    assert [r.status for r in report.results] == ["pass", "error", "pass"]
    assert "the target's process died during the case (killed by SIGKILL)" in report.results[1].detail


def test_worker_is_stopped_and_rejects_a_bad_timeout():
    target = _target("Correct")
    with pytest.raises(ValueError, match="timeout: expected a positive number of seconds, got 0"):
        CaseWorker(target, 0)
    w = CaseWorker(target, GUARD)
    out = w.run(QUICK[0], 1)
    assert out.error == "" and "y" in out.got
    proc = w.proc
    w.stop()
    assert not proc.is_alive() and w.proc is None


def _cli(*args, env=None, check_rc=None):
    res = subprocess.run([sys.executable, "-m", "lstm_spec.cli", *args], capture_output=True, text=True,
                         timeout=GUARD, env=env, cwd=Path(__file__).parents[2])
    if check_rc is not None:
        assert res.returncode == check_rc, res.stdout + res.stderr
    return res


def test_cli_timeout_stops_a_hanging_target():
    """Without the worker process, this would hang until the guard (the test fails by TimeoutExpired)."""
    res = _cli("conform", f"{TARGETS}:HangsInPython", "--quick", "--dtype", "float64", "--timeout", "3",
               "--quiet", check_rc=1)
    assert "timed out: no result within 3 s (--timeout)" in res.stdout
    assert "4 passed, 0 failed, 1 errors, 0 skipped" in res.stdout  # the T = 4 case hangs
    assert "a worker process, timeout 3 s per case" in res.stderr


def test_cli_rejects_a_negative_timeout():
    res = _cli("conform", f"{TARGETS}:Correct", "--timeout", "-1", check_rc=2)
    assert "--timeout: expected seconds >= 0" in res.stderr


# ----------------------------------------------------------------------------------------- determinism
def test_report_is_the_same_in_two_processes():
    """Same seed, two processes with different hash seeds: the same report, byte for byte (the
    seconds per case and the total go to stderr, not into the report)."""
    args = ("conform", "lstm_spec.conformance.examples:broken_gate_order", "--seed", "3", "--quiet")
    runs = []
    for hashseed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        runs.append(_cli(*args, env=env, check_rc=1).stdout)
    assert runs[0] == runs[1]
    assert "diagnosis: gate blocks permuted" in runs[0] and "seed=3" in runs[0]
    assert not re.search(r"\d s\)|\(\d+\.\d+ s\)", runs[0]), "timings in the default report"
    other = _cli("conform", "lstm_spec.conformance.examples:broken_gate_order", "--seed", "4", "--quiet").stdout
    assert other != runs[0]  # the seed does reach the cases


def test_timings_are_opt_in():
    report = conform(_target("Correct"), QUICK[:1])
    line = next(x for x in format_report(report).splitlines() if x.startswith("[1/1]"))
    assert line.endswith(": pass"), line
    assert re.search(r"^\[1/1\] .*: pass \(\d+\.\d\d s\)$", format_report(report, timings=True), re.M)
