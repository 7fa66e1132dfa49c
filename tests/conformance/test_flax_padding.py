"""The Flax adapter pads every case to one bucket shape (one XLA program per cell, variant, dtype and
direction, not one per shape), exactly: padded hidden units stay 0, padded time steps are masked by
``seq_lengths``; a wrong padding fails the run (negative controls)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("flax", reason='flax not installed: pip install "lstm-spec[flax]"')

import jax.monitoring  # noqa: E402 - after the skip

from lstm_spec.conformance.adapters import flax_adapter as fa  # noqa: E402 - after the skip
from lstm_spec.conformance.problem import Case, make_problem  # noqa: E402 - after the skip
from lstm_spec.conformance.runner import conform, default_cases, expand_variants  # noqa: E402 - after the skip

TRACES = []  # one entry per JAX trace (a jit cache miss) while a test listens
LISTENING = []


def _on_event(name, secs, **kw):
    if LISTENING and name == "/jax/core/compile/jaxpr_trace_duration":
        TRACES.append(secs)


jax.monitoring.register_event_duration_secs_listener(_on_event)


@pytest.fixture(scope="module")
def target():
    return fa.FlaxLSTM()


def test_default_cases_compile_once_per_configuration():
    """Every float64 default case (6 shapes, lengths, both directions, both LSTM variants and the GRU):
    one trace per (cell, variant, direction), i.e. 6, where there was one per shape (about 24)."""
    target = fa.FlaxLSTM()
    cases = expand_variants(target, default_cases(target.cells, ("float64",)))
    configurations = {(c.cell, c.variant, c.direction) for c in cases if target.supports(c) is None}
    shapes = {c.shape for c in cases if target.supports(c) is None}
    TRACES.clear()
    LISTENING.append(True)
    try:
        report = conform(target, cases, diagnose_failures=False)
    finally:
        LISTENING.clear()
    assert report.passed
    assert len(shapes) >= 5 and len(configurations) == 6
    assert len(TRACES) <= len(configurations), f"{len(TRACES)} traces for {len(configurations)} configurations"


@pytest.mark.parametrize("cell,variant", [("lstm", "cell"), ("lstm", "optimized"), ("gru_reset_after", "cell")])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_padded_hidden_units_stay_exactly_zero(target, cell, variant, direction):
    """A padded unit (zero weights, bias and initial state) sees 0 at every gate: an LSTM's c = 0.5 c_prev
    + 0.5 tanh(0) and a GRU's h = 0.5 tanh(0) + 0.5 h_prev stay exactly 0, in every output, both directions."""
    case = Case(cell, (5, 3, 4, 3), "float64", 7, direction=direction, lengths=(2, 5, 4), variant=variant)
    problem = make_problem(case)
    pad = fa.bucket(problem.dims)
    (y, hT, cT), _ = target._compiled(case, tuple(pad[k] for k in "TBDH"))(*fa._inputs(problem, pad))
    H = case.shape[-1]
    for a in (y, hT, cT):
        a = np.asarray(a)
        assert a.shape[-1] > H and not np.any(a[..., H:])


def _fails(target, case) -> bool:
    """The case fails on its values (not an error: the padded run itself works)."""
    (result,) = conform(target, [case], diagnose_failures=False).results
    assert result.status in ("pass", "FAIL"), result.detail
    return result.status == "FAIL"


def test_negative_control_nonzero_padding_fails(target, monkeypatch):
    case = Case("lstm", (4, 3, 5, 3), "float64", 5, variant="cell")
    assert not _fails(target, case)
    monkeypatch.setattr(fa, "_pad", lambda a, shape, dtype: np.pad(
        np.asarray(a, dtype), [(0, s - n) for n, s in zip(np.shape(a), shape, strict=True)], constant_values=0.25))
    assert _fails(target, case)


def test_negative_control_unmasked_padded_time_fails_the_reverse_pass(target, monkeypatch):
    """Without seq_lengths the reverse pass would start on the padded (zero) steps after the sequence."""
    case = Case("lstm", (5, 3, 4, 3), "float64", 101, direction="reverse", variant="cell")
    assert not _fails(target, case)
    monkeypatch.setattr(fa, "_seq_lengths", lambda problem, B: np.full(B, fa.bucket(problem.dims)["T"], np.int64))
    assert _fails(target, case)


def test_persistent_cache_folder_from_the_environment(tmp_path):
    """LSTM_SPEC_JAX_CACHE=off leaves JAX's persistent cache off; a folder turns it on there."""
    code = ("import os, jax; from lstm_spec.conformance.adapters import flax_adapter as fa; "
            "print(jax.config.jax_compilation_cache_dir); os.environ['LSTM_SPEC_JAX_CACHE'] = os.environ['WANT']; "
            "print(fa.persistent_cache())")
    env = {**os.environ, "LSTM_SPEC_JAX_CACHE": "off", "WANT": str(tmp_path / "jax")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", str(tmp_path / "jax")]
