"""pytest plugin of lstm-spec (registered as the ``pytest11`` entry point ``lstm_spec``).

It only adds options and a report header; tests come from ``lstm_spec.conformance.suite``:

    LSTM_SPEC_TARGET=mypkg.rnn:MyLSTM python -m pytest --pyargs lstm_spec.conformance.suite
    python -m pytest --pyargs lstm_spec.conformance.suite --lstm-spec-target path/to/my_lstm.py:impl \
        --lstm-spec-xfail known_deviations.toml

With no target configured the plugin does nothing.
"""

from __future__ import annotations

import math
import os


def pytest_addoption(parser):
    g = parser.getgroup("lstm-spec", "lstm-spec conformance")
    g.addoption("--lstm-spec-target", default=None,
                help="implementation to test: torch, keras, flax, onnxruntime, package.module:object or "
                     "path/to/file.py:object (default: $LSTM_SPEC_TARGET)")
    g.addoption("--lstm-spec-xfail", default=None,
                help="TOML file of known deviations ([[skip]] / [[xfail]] entries; default: $LSTM_SPEC_XFAIL)")
    g.addoption("--lstm-spec-timeout", default=None, type=float,
                help="seconds per case: the target runs in a worker process that is killed when a case takes "
                     "longer (default: $LSTM_SPEC_TIMEOUT or 300; 0: in the pytest process, no timeout)")


def configured_target(config) -> str | None:
    return config.getoption("--lstm-spec-target", None) or os.environ.get("LSTM_SPEC_TARGET") or None


def configured_xfail(config) -> str | None:
    return config.getoption("--lstm-spec-xfail", None) or os.environ.get("LSTM_SPEC_XFAIL") or None


def configured_timeout(config) -> float:
    """Seconds per case (0: no worker process). Raises pytest.UsageError for a value that is not >= 0."""
    import pytest

    from .cli import DEFAULT_TIMEOUT

    value = config.getoption("--lstm-spec-timeout", None)
    if value is None:
        text = os.environ.get("LSTM_SPEC_TIMEOUT", "")
        try:
            value = float(text) if text else DEFAULT_TIMEOUT
        except ValueError:
            raise pytest.UsageError(f"LSTM_SPEC_TIMEOUT: expected seconds >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise pytest.UsageError(f"--lstm-spec-timeout / LSTM_SPEC_TIMEOUT: expected finite seconds >= 0, got {value:g}")
    return value


def pytest_report_header(config):
    spec = configured_target(config)
    if not spec:
        return None
    from .runner import header
    from .targets import TargetError, load_target

    try:
        target = load_target(spec)
    except TargetError as exc:
        return [f"lstm-spec conformance: target {spec}: {exc}"]
    lines = header(target)
    lines[0] = f"lstm-spec conformance: {spec} ({target.name})"
    timeout = configured_timeout(config)
    lines.append(f"  runs in a worker process, timeout {timeout:g} s per case" if timeout
                 else "  runs in the pytest process, no timeout")
    xf = configured_xfail(config)
    lines.append(f"  known deviations: {xf or 'none (set --lstm-spec-xfail or LSTM_SPEC_XFAIL)'}")
    return lines
