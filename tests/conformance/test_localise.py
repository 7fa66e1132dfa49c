"""Negative controls of the localiser (conformance/localise.py, issue 14 deliverable 1): a planted forward
bug is blamed on the forward, a planted backward-only bug on the backward (its gate's d_z, its first
step), a correct target gets no complaint, a gradient not returned is "not provided" and never used."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lstm_spec.conformance import examples
from lstm_spec.conformance.localise import derived_statements, localise
from lstm_spec.conformance.problem import Case, make_problem
from lstm_spec.conformance.targets import ProtocolTarget
from lstm_spec.reference import lstm as ref

TOL = {"float64": 1e-10, "float32": 1e-4}
CASE = Case("lstm", (6, 2, 4, 4), "float64", 30)


class ForgetBiasShift:
    """A forward bug with its consistent backward: forward and backward are both of the LSTM whose
    forget pre-activation gets + shift (built from the reference by wrapping)."""

    def __init__(self, shift=1.0, dtypes=("float32", "float64")):
        self.shift = shift
        self.conformance = {"cell": "lstm", "params": "per_gate", "dtypes": list(dtypes), "name": "forget-bias shift"}

    def _p(self, params):
        return {**params, "b_f": params["b_f"] + np.asarray(self.shift, params["b_f"].dtype)}

    def forward(self, params, x, h0, c0):
        y, final, _ = ref.forward(self._p(params), x, h0, c0)
        return y, (final["h"], final["c"])

    def backward(self, params, x, dy, d_final, h0, c0):
        _, _, cache = ref.forward(self._p(params), x, h0, c0)
        return ref.backward(cache, dy, d_final)


class HandBPTT:
    """A hand-written BPTT over the reference's forward. ``gate``: that gate's activation derivative is
    missing in the backward at steps t <= ``upto`` (d_z_g = d_g); ``drop``: gradients not returned."""

    def __init__(self, gate=None, upto=10 ** 9, drop=(), dtypes=("float32", "float64")):
        self.gate, self.upto, self.drop = gate, upto, set(drop)
        self.conformance = {"cell": "lstm", "params": "per_gate", "dtypes": list(dtypes), "name": "hand BPTT"}

    def forward(self, params, x, h0, c0):
        y, final, _ = ref.forward(params, x, h0, c0)
        return y, (final["h"], final["c"])

    def backward(self, params, x, dy, d_final, h0, c0):
        _, _, k = ref.forward(params, x, h0, c0)
        g = {n: np.zeros_like(v) for n, v in params.items()}
        dx, dh, dc = np.zeros_like(x), d_final["h"].copy(), d_final["c"].copy()
        for t in reversed(range(x.shape[0])):
            f, i, ct, o, tc = (k[n][t] for n in ("f", "i", "c_tilde", "o", "tanh_c"))
            dh = dh + dy[t]
            dc = dc + dh * o * (1 - tc ** 2)
            d_gate = {"f": dc * k["c"][t], "i": dc * ct, "c": dc * i, "o": dh * tc}
            deriv = {"f": f * (1 - f), "i": i * (1 - i), "c": 1 - ct ** 2, "o": o * (1 - o)}
            dz = {q: d_gate[q] * (1 if (q == self.gate and t <= self.upto) else deriv[q]) for q in "fico"}
            for q in "fico":
                g[f"W_{q}"] += dz[q].T @ x[t]
                g[f"U_{q}"] += dz[q].T @ k["h"][t]
                g[f"b_{q}"] += dz[q].sum(0)
            dx[t] = sum(dz[q] @ params[f"W_{q}"] for q in "fico")
            dh = sum(dz[q] @ params[f"U_{q}"] for q in "fico")
            dc = dc * f
        out = {**g, "x": dx, "h0": dh, "c0": dc}
        return {n: v for n, v in out.items() if n not in self.drop}


def _localise(obj, case=CASE):
    target = ProtocolTarget(obj, "test")
    problem = make_problem(case)
    problem.extra["biases"] = target.biases_for(case)
    return localise(problem, target, TOL[case.dtype])


def _wrong(loc):
    return sorted(k for k, v in loc.adjoints.items() if v == "wrong")


# ------------------------------------------------------------------------------------------ forward
def test_forward_bug_with_consistent_backward_is_blamed_on_the_forward():
    loc = _localise(ForgetBiasShift())
    assert loc.verdict == "forward"
    assert loc.checks and all(c.consistent for c in loc.checks)
    assert loc.forward_step == 0
    assert loc.statements == []  # no backward statement is blamed
    text = "\n".join(loc.lines())
    assert "your backward is the gradient of your forward: the difference is in the forward" in text
    assert "not the gradient of your own forward" not in text


def test_forward_bug_example_from_the_catalogue():
    loc = _localise(examples.broken_forget_bias)
    assert loc.verdict == "forward" and loc.forward_step == 0


def test_final_state_bug_is_a_forward_bug_with_every_output_right():
    loc = _localise(examples.broken_final_off_by_one)
    assert loc.verdict == "forward"
    assert loc.forward_step is None and loc.final_wrong == ["h_T", "c_T"]


# ----------------------------------------------------------------------------------------- backward
@pytest.mark.parametrize("gate", ["f", "i", "c", "o"])
def test_backward_only_bug_names_its_gate_and_the_last_step(gate):
    loc = _localise(HandBPTT(gate=gate))
    assert loc.verdict == "backward"
    assert loc.forward_step is None and not loc.final_wrong
    assert loc.backward_step == CASE.shape[0] - 1  # every step is wrong: the backward departs at once
    wrong = _wrong(loc)
    assert f"d_z_{gate}" in wrong
    assert not [g for g in "fico" if g != gate and f"d_z_{g}" in wrong]
    stmts = derived_statements(ref)
    assert f"d_z_{gate} = {stmts[f'd_z_{gate}']}" in loc.statements
    text = "\n".join(loc.lines())
    assert "your backward is not the gradient of your own forward" in text


def test_backward_bug_from_a_middle_step_is_found_at_that_step():
    loc = _localise(HandBPTT(gate="i", upto=2))
    assert loc.verdict == "backward"
    assert loc.backward_step == 2
    assert "the backward departs first at step t=2, 3 steps before the last" in "\n".join(loc.lines())


def test_dropped_cell_carry_is_named_d_c_prev():
    loc = _localise(examples.broken_no_cell_carry_grad)
    assert loc.verdict == "backward"
    assert _wrong(loc) == ["d_c_prev"]
    assert loc.statements == ["d_c_prev = d_c * f"]
    assert loc.backward_step == CASE.shape[0] - 2  # the carry arrives one step before the last


def test_gradients_averaged_over_the_batch_depart_only_with_b_above_1():
    loc = _localise(examples.broken_grad_averaged)
    assert loc.verdict == "backward"
    assert _wrong(loc) == []
    assert "depart with B = 2" in loc.probe_note


# ----------------------------------------------------------------------------- correct, not provided
@pytest.mark.parametrize("obj", [HandBPTT(), examples.correct, examples.correct_torch_like],
                         ids=["hand", "numpy", "numpy-torch-layout"])
def test_correct_target_gets_no_complaint(obj):
    loc = _localise(obj)
    assert loc.verdict == "neither" and not loc.failing and not loc.not_provided
    assert all(c.consistent for c in loc.checks)
    assert [c.quantity for c in loc.checks] == [q for q in loc.passing if q.startswith("d ")]  # every gradient checked
    assert _wrong(loc) == [] and loc.statements == []
    assert loc.backward_step is None and loc.forward_step is None


def test_missing_gradients_are_not_provided_and_never_used():
    drop = ("x", "c0", "b_f", "U_o")
    loc = _localise(HandBPTT(drop=drop))
    assert sorted(loc.not_provided) == sorted(f"d {d}" for d in drop)
    assert loc.verdict == "neither" and not loc.failing
    assert {c.quantity for c in loc.checks}.isdisjoint(loc.not_provided)
    assert loc.adjoints["d_c_prev"] == "not provided" and loc.adjoints["d_x"] == "not provided"
    assert loc.adjoints["d_z_f"] == "right"  # from d W_f, the bias gradient is not returned
    assert loc.backward_how == "not provided"
    assert "not provided (not used) d b_f" in "\n".join(loc.lines())


def test_missing_gradients_with_a_backward_bug():
    loc = _localise(HandBPTT(gate="o", drop=("x", "b_o")))
    assert loc.verdict == "backward"
    assert "d_z_o" in _wrong(loc)
    assert "the backward is not localised in time (d x not provided)" in "\n".join(loc.lines())


# ------------------------------------------------------------------------------------ float32 only
def test_float32_only_target_gets_the_weaker_check():
    case = Case("lstm", (4, 3, 5, 3), "float32", 21)
    fwd = _localise(ForgetBiasShift(dtypes=["float32"]), case)
    assert fwd.fd_dtype == "float32" and "weaker check" in fwd.fd_note
    assert fwd.verdict == "forward"
    bwd = _localise(HandBPTT(gate="f", dtypes=["float32"]), case)
    assert bwd.verdict == "backward" and "d_z_f" in _wrong(bwd)


def test_float32_case_of_a_float64_capable_target_is_checked_in_float64():
    loc = _localise(HandBPTT(gate="c"), Case("lstm", (4, 3, 5, 3), "float32", 21))
    assert loc.fd_dtype == "float64" and loc.fd_note == ""
    assert loc.verdict == "backward"


# --------------------------------------------------------------------------------------- the rest
def test_a_reverse_case_is_localised_on_the_plain_forward_case():
    loc = _localise(examples.broken_forget_bias, Case("lstm", (5, 3, 4, 3), "float64", 101, direction="reverse"))
    assert loc.verdict == "forward"
    assert any("localised on lstm T=5 B=3 D=4 H=3 float64 forward" in n for n in loc.notes)


def test_a_target_that_raises_on_a_probe_stops_the_localisation_not_the_run():
    class RaisesOnShortSequences(HandBPTT):
        def backward(self, params, x, dy, d_final, h0, c0):
            if x.shape[0] == 1:
                raise RuntimeError("no")
            return super().backward(params, x, dy, d_final, h0, c0)

    loc = _localise(RaisesOnShortSequences(gate="f"))
    assert any("localisation stopped: the target raised RuntimeError" in n for n in loc.notes)


def test_report_is_deterministic_and_serialisable():
    a, b = _localise(HandBPTT(gate="i")), _localise(HandBPTT(gate="i"))
    assert a.lines() == b.lines()
    assert json.loads(json.dumps(a.as_dict()))["verdict"] == "backward"


def test_derived_statements_are_those_the_module_prints():
    stmts = derived_statements(ref)
    assert stmts["d_z_f"] == "d_f * f * (1 - f)" and stmts["d_c_prev"] == "d_c * f"
    assert stmts["d_b_f"] == "sum_t d_z_f"


def test_forward_bug_with_a_backward_of_another_function_is_blamed_on_both():
    """The issue's hard case: a forward bug whose backward is not the gradient of that buggy forward."""

    class ShiftedForwardPlainBackward(HandBPTT):
        def forward(self, params, x, h0, c0):
            return ForgetBiasShift().forward(params, x, h0, c0)

    loc = _localise(ShiftedForwardPlainBackward())
    assert loc.verdict == "both" and loc.forward_step == 0
    assert loc.statements == []  # the adjoints are tainted by the forward: no backward statement is named
    assert "your forward differs from the reference and your backward is not the gradient" in loc.lines()[0]


def test_forward_only_target_of_another_cell():
    loc = _localise(examples.broken_output_peephole, Case("peephole", (6, 2, 4, 4), "float64", 30))
    assert loc.verdict == "forward only" and loc.forward_step == 0 and loc.checks == []


def test_backward_bug_in_a_gru_is_named_by_the_gru_derivation():
    import inspect

    from lstm_spec.checks.mutants import load_module
    from lstm_spec.reference import gru_reset_after as gru

    text = inspect.getsource(gru)
    assert text.count("d_a_z[t] = d_z * _tmp0 * z[t]") == 1
    mutant = load_module(text.replace("d_a_z[t] = d_z * _tmp0 * z[t]", "d_a_z[t] = d_z * _tmp0"))

    class MutantGRU(examples.ReferenceCell):
        def backward(self, params, x, dy, d_final, **init):
            _, _, cache = mutant.forward(params, x, **init)
            return mutant.backward(cache, dy, d_final)

    case = Case("gru_reset_after", (5, 2, 3, 4), "float64", 7)
    assert _localise(examples.ReferenceCell("gru_reset_after"), case).verdict == "neither"
    loc = _localise(MutantGRU("gru_reset_after"), case)
    assert loc.verdict == "backward" and loc.backward_step == 4
    assert "d_a_z" in _wrong(loc) and "d_a_r" not in _wrong(loc) and "d_a_n" not in _wrong(loc)
    assert "d_a_z = d_z * tmp0 * z" in loc.statements
