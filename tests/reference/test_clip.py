"""Clipping (piecewise derivatives): declared bounds, the rule at the kinks, checks that see both pieces
and keep away from the kinks."""

import numpy as np
import pytest

from lstm_spec.checks.cases import KINK_MARGIN, SHAPES, kink_distance, kinks, random_instance
from lstm_spec.reference import lstm_cell_clip, lstm_clip
from lstm_spec.reference._runtime import clip, clip_mask
from lstm_spec.spec import SpecError, load

from ..conftest import write_spec


@pytest.mark.parametrize("module", [lstm_clip, lstm_cell_clip])
def test_instances_exercise_both_pieces_and_avoid_the_kinks(module):
    clipped = inside = 0
    for k, shape in enumerate(SHAPES):
        inst = random_instance(module, shape, 10 + k)
        assert kink_distance(module, inst) >= KINK_MARGIN
        _, _, cache = module.forward(inst.params, **inst.seq, **{f"{s}0": v for s, v in inst.init.items()})
        for key, bound in kinks(module):  # a bound named by a constant: its value
            v = np.abs(cache[key])
            clipped += int((v > bound).sum())
            inside += int((v < bound).sum())
    assert clipped > 0 and inside > 0


def test_clip_numerics_and_derivative_at_the_kinks():
    z = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    np.testing.assert_array_equal(clip(z, 1.0), [-1, -1, -0.5, 0, 0.5, 1, 1])
    np.testing.assert_array_equal(clip_mask(z, 1.0), [0, 1, 1, 1, 1, 1, 0])  # 1 at the kinks
    zc = z + 1e-30j
    np.testing.assert_array_equal(np.imag(clip(zc, 1.0)) / 1e-30, [0, 1, 1, 1, 1, 1, 0])
    assert clip(z.astype(np.float32), 1.0).dtype == np.float32


def test_clip_declaration_errors(tmp_path):
    base = (load("lstm_clip").path).read_text()
    # the built-in spec names its bound by a constant (gate_clip); these declarations give a number
    base = base.replace('bound = "gate_clip"', "bound = 1.0").replace(
        "gate_clip = " + base.split("gate_clip = ", 1)[1].split("\n", 1)[0] + "\n", "")
    for bad, msg in [('clip = { kind = "clip", bound = 1.0 }', None),
                     ('clip = { kind = "clip" }', "takes exactly the parameters"),
                     ('clip = { kind = "clip", bound = -1 }', "positive number"),
                     ('clip = { kind = "clip", bound = 1, extra = 2 }', "takes exactly the parameters"),
                     ('clip = "clip"', "needs its parameters"),
                     ('clip = { kind = "clip_mask", bound = 1 }', "unknown function kind")]:
        path = write_spec(tmp_path, base.replace('clip = { kind = "clip", bound = 1.0 }', bad))
        if msg is None:
            load(path)
        else:
            with pytest.raises(SpecError, match=msg):
                load(path)
