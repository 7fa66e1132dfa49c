"""Variable-length sequences: with 0/1 masks the masked cells are exactly the unmasked LSTM run on each
sequence's valid steps (outputs, final states at the last valid step, every gradient)."""

import numpy as np
import pytest

from lstm_spec.checks.cases import random_instance
from lstm_spec.reference import lstm, lstm_masked_carry, lstm_masked_zeros
from lstm_spec.reference.masks import mask_from_lengths

LENGTHS = np.array([4, 0, 2, 1])


@pytest.mark.parametrize("module, semantics", [(lstm_masked_zeros, "zeros"), (lstm_masked_carry, "carry")])
def test_masked_cell_equals_lstm_on_the_valid_steps(module, semantics):
    T, B = 4, len(LENGTHS)
    inst = random_instance(lstm, (T, B, 3, 2), 11)
    p, x, h0, c0 = inst.params, inst.seq["x"], inst.init["h"], inst.init["c"]
    m = mask_from_lengths(LENGTHS, T)
    rng = np.random.default_rng(0)
    dy = rng.standard_normal((T, B, 2)) * m  # cotangents on the valid steps only
    dfin = {"h": rng.standard_normal((B, 2)), "c": rng.standard_normal((B, 2))}

    y, final, cache = module.forward(p, x, m, h0, c0)
    g = module.backward(cache, dy, dfin)

    want = {k: np.zeros_like(v) for k, v in p.items()}
    for b, L in enumerate(LENGTHS):
        yb, fb, cb = lstm.forward(p, x[:L, b:b + 1], h0[b:b + 1], c0[b:b + 1])
        gb = lstm.backward(cb, dy[:L, b:b + 1], {"h": dfin["h"][b:b + 1], "c": dfin["c"][b:b + 1]})
        np.testing.assert_allclose(y[:L, b], yb[:, 0], rtol=1e-13, atol=1e-15)
        padded = y[L:, b]
        if semantics == "zeros":
            assert not padded.any()
        else:
            np.testing.assert_allclose(padded, np.broadcast_to(fb["h"][0], padded.shape), rtol=1e-13)
        for s in ("h", "c"):
            np.testing.assert_allclose(final[s][b], fb[s][0], rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(g[f"{s}0"][b], gb[f"{s}0"][0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g["x"][:L, b], gb["x"][:, 0], rtol=1e-12, atol=1e-14)
        assert not g["x"][L:, b].any()
        for k in want:
            want[k] += gb[k]
    for k in want:
        np.testing.assert_allclose(g[k], want[k], rtol=1e-12, atol=1e-14)


def test_mask_from_lengths_checks_its_input():
    np.testing.assert_array_equal(mask_from_lengths([2, 0], 3)[:, :, 0], [[1, 0], [1, 0], [0, 0]])
    with pytest.raises(ValueError, match=r"in \[0, T=3\]"):
        mask_from_lengths([4], 3)
    with pytest.raises(ValueError, match="integers"):
        mask_from_lengths([1.5], 3)
