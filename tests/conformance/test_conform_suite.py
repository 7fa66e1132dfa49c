"""The pytest entry point a project runs in its own CI: target from LSTM_SPEC_TARGET or an option,
a report header naming it, a known-deviations file, failures that carry a reproducer."""

from __future__ import annotations

import os
import subprocess
import sys


def _run(tmp_path, target=None, extra=(), env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SPEC_")}
    if target:
        env["LSTM_SPEC_TARGET"] = target
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "lstm_spec.conformance.suite", "-p", "no:cacheprovider",
           "-rA", *extra]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_correct_target_passes_with_header(tmp_path):
    r = _run(tmp_path, "lstm_spec.conformance.examples:correct")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "lstm-spec conformance: lstm_spec.conformance.examples:correct (NumpyLSTM(correct))" in r.stdout
    assert "16 passed" in r.stdout and "4 skipped" in r.stdout  # 5 shapes + 5 other cases, x 2 dtypes


def test_broken_target_fails_with_diagnosis_and_reproducer(tmp_path):
    r = _run(tmp_path, "lstm_spec.conformance.examples:broken_gate_order")
    assert r.returncode == 1
    assert "diagnosis: gate blocks permuted" in r.stdout
    assert "reproduce: lstm-spec conform lstm_spec.conformance.examples:broken_gate_order --case" in r.stdout


def test_option_and_known_deviations(tmp_path):
    dev = tmp_path / "known.toml"
    dev.write_text('[[skip]]\ncase = "float32"\nreason = "float64 only"\n\n'
                   '[[xfail]]\ncase = "*"\nreason = "forget bias added at every step (our issue 7)"\n')
    r = _run(tmp_path, None, ["--lstm-spec-target", "lstm_spec.conformance.examples:broken_forget_bias",
                              "--lstm-spec-xfail", str(dev)])
    assert r.returncode == 0, r.stdout[-3000:]
    assert "known deviations: " + str(dev) in r.stdout
    assert "8 xfailed" in r.stdout and "float64 only" in r.stdout
    # strict: a listed deviation that passes fails the run
    r = _run(tmp_path, "lstm_spec.conformance.examples:correct", ["--lstm-spec-xfail", str(dev)])
    assert r.returncode == 1 and "XPASS(strict)" in r.stdout


def test_no_target_is_a_skip_not_an_error(tmp_path):
    r = _run(tmp_path)
    assert r.returncode == 0 and "1 skipped" in r.stdout and "LSTM_SPEC_TARGET" in r.stdout


def test_hanging_case_times_out_and_the_others_run(tmp_path):
    from pathlib import Path

    target = Path(__file__).with_name("conform_misbehaving_targets.py")
    r = _run(tmp_path, f"{target}:HangsInPython", ["--lstm-spec-timeout", "3", "-k", "forward and not lengths"])
    assert r.returncode == 1, r.stdout[-3000:]
    assert "runs in a worker process, timeout 3 s per case" in r.stdout
    assert "timed out: no result within 3 s" in r.stdout
    assert "2 failed, 8 passed" in r.stdout  # T = 4 in float64 and float32; the other shapes pass


def test_bad_timeout_is_a_usage_error(tmp_path):
    r = _run(tmp_path, "lstm_spec.conformance.examples:correct", env_extra={"LSTM_SPEC_TIMEOUT": "soon"})
    assert r.returncode != 0 and "LSTM_SPEC_TIMEOUT: expected seconds >= 0, got 'soon'" in r.stdout + r.stderr
