"""(d) PyTorch nn.LSTM / nn.LSTMCell in float64, with a negative control."""

import pytest

from lstm_spec.checks import mutants
from lstm_spec.checks.tolerances import TOLERANCES
from lstm_spec.checks.torch_check import check_torch
from lstm_spec.reference import lstm

torch = pytest.importorskip("torch", reason='PyTorch missing: pip install "lstm-spec[test]"')
TOL = TOLERANCES[("torch", "float64")].value


def test_reference_agrees_with_pytorch():
    res = check_torch(lstm, "lstm")
    assert res["error"] <= TOL, res


def test_negative_control_dropped_recursion_is_caught(lstm_text):
    bad = mutants.load_module(mutants.mutate_code(lstm_text, mutants.recursion_line(lstm_text), "delete"))
    assert check_torch(bad, "lstm")["error"] > TOL


def test_negative_control_permuted_gates_are_caught(monkeypatch):
    """Converting with the input and forget gates swapped is visible with random weights."""
    import functools

    from lstm_spec.checks import torch_check
    from lstm_spec.layouts import to_torch_lstm

    monkeypatch.setattr(torch_check, "to_torch_lstm", functools.partial(to_torch_lstm, order=("f", "i", "c", "o")))
    assert check_torch(lstm, "lstm")["error"] > TOL
