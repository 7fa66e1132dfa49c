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


def test_negative_control_permuted_gates_are_caught():
    """Converting with the input and forget gates swapped is visible with random weights."""
    from lstm_spec.checks.torch_check import _lstm_weights

    def swapped(torch, p, dims, seed):
        return _lstm_weights(torch, p, dims, seed, gates=("f", "i", "c", "o"))
    assert check_torch(lstm, "lstm", weights=swapped)["error"] > TOL


@pytest.mark.parametrize("cell", ["lstm_two_bias", "projection", "gru_reset_after", "rnn_tanh", "no_peepholes",
                                  "lstm_stacked2", "lstm_mse", "lstm_softmax_ce"])
def test_other_cells_agree_with_pytorch(cell):
    import importlib

    module = importlib.import_module(f"lstm_spec.reference.{cell}")
    res = check_torch(module, cell)
    assert res["error"] <= TOL, res


def test_negative_control_gru_with_swapped_gates_is_caught():
    from lstm_spec.checks.torch_check import _gru_weights
    from lstm_spec.reference import gru_reset_after

    def swapped(torch, p, dims, seed):
        q = dict(p)
        for k in ("W", "U", "b"):
            q[f"{k}_r"], q[f"{k}_z"] = p[f"{k}_z"], p[f"{k}_r"]
        return _gru_weights(torch, q, dims, seed)

    assert check_torch(gru_reset_after, "gru_reset_after", weights=swapped)["error"] > TOL
