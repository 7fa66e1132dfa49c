"""`lstm-spec conform` against hostile targets (issue 13, items 3, 11, 13, 14, 15, 16): whatever the target
does (exit, interrupt, print, fork, return lists or objects that misbehave when unpickled), conform's exit
code and report are its own; every failure is one line with the documented exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lstm_spec.cli import main
from lstm_spec.conformance import conform, default_cases, format_report, load_target
from lstm_spec.conformance.runner import CaseWorker

TARGETS = Path(__file__).with_name("conform_misbehaving_targets.py")
QUICK = [c for c in default_cases() if c.direction == "forward" and c.lengths is None and c.layers == 1]
F64 = [c for c in QUICK if c.dtype == "float64"][1:4]  # T = 2, 4, 6: the targets misbehave on T = 4
N_QUICK64 = sum(c.dtype == "float64" for c in QUICK)  # what `conform --quick --dtype float64` runs
GUARD = 600  # seconds: only against a hang of the test itself


def _main(*args) -> int:
    """`lstm-spec ARGS` in this process, with the exit status the interpreter would give it."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def _statuses(report):
    return [r.status for r in report.results]


# ------------------------------------------------------------------------------------ loading the target
BAD_MODULES = {
    "exit0": ("import sys\nsys.exit(0)\n", "SystemExit"),
    "exit3": ("import sys\nsys.exit(3)\n", "SystemExit"),
    "interrupt": ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
    "syntax": ("def broken(:\n    pass\n", "SyntaxError"),
    "unavailable": (("from lstm_spec.conformance.targets import Unavailable\n"
                    "raise Unavailable('torch', 'pip install torch')\n"), "Unavailable"),
    "constructor": (("from lstm_spec.conformance.examples import NumpyLSTM\n"
                     "class Impl(NumpyLSTM):\n    def __init__(self):\n"
                     "        raise RuntimeError('no GPU\\nsecond line')\n"), "RuntimeError: no GPU ..."),
    "constructor_exit": (("import sys\nfrom lstm_spec.conformance.examples import NumpyLSTM\n"
                         "class Impl(NumpyLSTM):\n    def __init__(self):\n        sys.exit(0)\n"), "SystemExit"),
}


@pytest.mark.parametrize("kind", sorted(BAD_MODULES))
def test_a_target_that_cannot_load_is_a_one_line_error_with_exit_2(kind, tmp_path, capfd):
    """sys.exit(0) at import (a missing main guard) used to exit 0 without a report, sys.exit(3) gave the
    "not installed" code 3, a SyntaxError or a failing constructor a traceback."""
    source, what = BAD_MODULES[kind]
    f = tmp_path / f"hostile_{kind}.py"
    f.write_text(source)
    rc = _main("conform", f"{f}:Impl", "--quiet")
    out, err = capfd.readouterr()
    assert rc == 2, out + err
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and what in lines[0] and str(f) in lines[0], err


# ------------------------------------------------------------------------------------ during a case
@pytest.mark.parametrize("timeout", [0, GUARD])
@pytest.mark.parametrize("name, what", [("ExitsZero", "SystemExit: sys.exit(0)"),
                                        ("ExitsThree", "SystemExit: sys.exit(3)"),
                                        ("Interrupts", "KeyboardInterrupt")])
def test_exit_or_interrupt_during_a_case_is_that_case_error(name, what, timeout, capfd):
    """In this process (--timeout 0) sys.exit(0) ended conform with 0 and no report; in the worker the
    case was reported as "killed by SIGKILL" (item 15)."""
    rc = _main("conform", f"{TARGETS}:{name}", "--quick", "--dtype", "float64", "--quiet", "--timeout", timeout)
    out, err = capfd.readouterr()
    assert rc == 1, out + err
    assert f"the target raised {what}" in out and "SIGKILL" not in out
    assert f"{N_QUICK64 - 1} passed, 0 failed, 1 errors, 0 skipped" in out and "DOES NOT CONFORM" in out


def test_a_worker_that_ends_itself_is_reported_with_its_exit_code():
    """The worker closes its pipe, then exits 7 a moment later: it was killed (SIGKILL) while exiting and
    reported as such; now its own exit code is reported (item 15)."""
    report = conform(load_target(f"{TARGETS}:ClosesPipeAndExits"), F64, timeout=GUARD)
    assert _statuses(report) == ["pass", "error", "pass"], format_report(report)
    assert "the target's process died during the case (exit code 7)" in report.results[1].detail


def test_a_real_interrupt_still_stops_an_in_process_run():
    """A KeyboardInterrupt raised by the target is the case's error; SIGINT (Ctrl-C) stops the run."""
    with pytest.raises(KeyboardInterrupt):
        conform(load_target(f"{TARGETS}:SignalsInterrupt"), F64)


def test_a_target_may_use_a_process_pool():
    """The worker was daemonic: "daemonic processes are not allowed to have children" (item 11)."""
    report = conform(load_target(f"{TARGETS}:UsesPool"), F64[:1], timeout=GUARD)
    assert _statuses(report) == ["pass"], format_report(report)


def test_a_timed_out_targets_children_are_killed(tmp_path):
    """The target's child inherited conform's stdout and kept it open for 60 s after the timeout (item 14)."""
    pidfile = tmp_path / "pid"
    env = dict(os.environ, LSTM_SPEC_TEST_PIDFILE=str(pidfile))
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "lstm_spec.cli", "conform", f"{TARGETS}:OrphanThenHang", "--quick",
                          "--dtype", "float64", "--case", "T=4", "--timeout", "2", "--quiet"],
                         check=False, capture_output=True, text=True, timeout=40, env=env)
    assert res.returncode == 1 and "timed out: no result within 2 s" in res.stdout, res.stdout + res.stderr
    assert time.monotonic() - t0 < 30
    pid = int(pidfile.read_text())
    for _ in range(50):  # the orphan is reaped by init shortly after its death
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the target's child {pid} outlived conform")


# ------------------------------------------------------------------------------------ what comes back
@pytest.mark.parametrize("timeout", [0, GUARD])
def test_the_targets_output_stays_out_of_the_report(timeout, capfd):
    """A target's prints went into the report on stdout (item 16): now a bounded tail, for a failing case."""
    rc = _main("conform", f"{TARGETS}:Chatty", "--quick", "--dtype", "float64", "--quiet", "--timeout", timeout)
    out, err = capfd.readouterr()
    assert rc == 1
    assert len(out) < 20_000 and len(err) < 5_000, (len(out), len(err))
    assert "the target raised RuntimeError: boom after printing" in out
    assert "the target's output" in out and "last words before the error" in out
    assert out.count("chatter") < 500


def test_lists_are_not_arrays():
    report = conform(load_target(f"{TARGETS}:ReturnsLists"), QUICK[:1])
    assert _statuses(report) == ["error"]
    assert "ReturnsLists.forward: y: expected an array, got a list of length 1" in report.results[0].detail


@pytest.mark.parametrize("name", ["ResultExitsOnUnpickle", "ResultFailsToUnpickle"])
def test_results_come_back_as_plain_arrays(name):
    """The worker's results were unpickled in conform's process: an ndarray subclass whose unpickling
    calls sys.exit(3) ended conform with 3, one that raises killed the run with a traceback (item 13).
    The worker now sends plain arrays: right numbers in an ndarray subclass pass."""
    report = conform(load_target(f"{TARGETS}:{name}"), F64[:1], timeout=GUARD)
    assert _statuses(report) == ["pass"], format_report(report)


# ------------------------------------------------------------------------------------ the command line
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e999"])
def test_a_bad_timeout_is_a_one_line_error(value, capfd):
    rc = _main("conform", "lstm_spec.conformance.examples:correct", f"--timeout={value}")
    out, err = capfd.readouterr()
    assert rc == 2 and out == "", out + err
    assert err.strip().splitlines() == [err.strip()] and "--timeout: expected" in err, err


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 0])
def test_worker_rejects_a_bad_timeout(value):
    with pytest.raises(ValueError, match="timeout: expected a positive"):
        CaseWorker(load_target("lstm_spec.conformance.examples:correct"), value)


@pytest.mark.parametrize("args, what", [
    (["--seed=-1"], "--seed: expected an integer >= 0"),
    (["--cell", "lstmm"], "--cell 'lstmm': not a built-in cell; did you mean 'lstm'")])
def test_a_bad_seed_or_cell_is_a_one_line_error(args, what, capfd):
    """--seed -1 gave a NumPy traceback; an unknown --cell skipped every case and said DOES NOT CONFORM."""
    rc = _main("conform", "lstm_spec.conformance.examples:correct", "--quick", *args)
    out, err = capfd.readouterr()
    assert rc == 2 and out == "", out + err
    assert err.strip().splitlines() == [err.strip()] and what in err, err
