"""The independent hand-written targets (tests/data/independent, issue 14): detection and ground truth.

The targets were written from README, PROTOCOL, spec/lstm.toml and `lstm-spec derive lstm` only, in
styles unlike the generated reference; MANIFEST.toml says which are correct and, for each buggy one,
which derived statement its bug breaks. Here:
- the manifest is complete and its statements are printed by `lstm-spec derive lstm`;
- its "where" is right, checked without lstm-spec: a target whose bugs are all in the forward (or that
  has none) has a backward that is the gradient of its own forward, and a target with a backward bug
  has not (central differences of its own forward along random directions);
- `lstm-spec conform` passes every correct target and fails every buggy one;
- a correct target that returns parameter gradients only fails on nothing it returned and (issue 14)
  gets no diagnosis.
How well conform *names* each bug is for a human to judge: `python tests/data/independent/scoreboard.py`.
"""
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from lstm_spec.cli import main as lstm_spec_main

HERE = Path(__file__).resolve().parents[1] / "data" / "independent"
MANIFEST = tomllib.loads((HERE / "MANIFEST.toml").read_text())["target"]
NOT_A_DERIVED_STATEMENT = {"lengths_ignored_final_state", "float32_inside"}
UNRETURNED = {"d x", "d h0", "d c0"}
IDS = [e["file"][:-3] for e in MANIFEST]


def conform(entry, capfd):
    """(exit code, report) of `lstm-spec conform FILE:OBJECT`, in this process."""
    code = lstm_spec_main(["conform", f"{HERE / entry['file']}:{entry['object']}",
                           "--timeout", "0", "--quiet"])
    return code, capfd.readouterr().out


def failing_rows(report):
    """Names of the quantities with a FAIL row in any case ("y", "d W_f", "d b_f(ih)", ...)."""
    names = set()
    for line in report.splitlines():
        parts = line.split()
        if line.startswith("    ") and parts and parts[-1] == "FAIL":
            names.add(" ".join(parts[:2]) if parts[0] == "d" else parts[0])
    return names


# ------------------------------------------------------------------------------- the manifest itself

def test_manifest_lists_every_file_with_enough_of_each_kind():
    files = {p.name for p in HERE.glob("*.py")} - {"scoreboard.py"}
    assert files == {e["file"] for e in MANIFEST}
    correct = [e for e in MANIFEST if e["correct"] and not e.get("partial")]
    partial = [e for e in MANIFEST if e.get("partial")]
    buggy = [e for e in MANIFEST if not e["correct"]]
    assert len(correct) >= 3 and len(partial) >= 2 and len(buggy) >= 14
    for e in buggy:
        assert 1 <= len(e["bug"]) <= 2, e["file"]
        for bug in e["bug"]:
            assert bug["where"] in ("forward", "backward"), e["file"]
            assert {"kind", "statement", "first_wrong", "description"} <= set(bug), e["file"]
    for e in correct + partial:
        assert "bug" not in e, e["file"]


def test_manifest_statements_are_printed_by_derive():
    code = "import sys; from lstm_spec.cli import main; sys.exit(main(['derive', 'lstm']))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    printed = {line.strip() for line in done.stdout.splitlines()}
    for e in MANIFEST:
        for bug in e.get("bug", []):
            if bug["kind"] not in NOT_A_DERIVED_STATEMENT:
                assert bug["statement"] in printed, (e["file"], bug["statement"])


# ----------------------------------------------------- "where" checked without lstm-spec (pure NumPy)

def load_target(entry):
    spec = importlib.util.spec_from_file_location(f"independent_{entry['file'][:-3]}", HERE / entry["file"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, entry["object"])()


def random_params(conf, D, H, rng):
    """Parameters in the target's declared layout (stacked or per gate, transposed, one or two biases)."""
    def mat(rows, cols):
        return rng.standard_normal((cols, rows) if conf.get("transposed") else (rows, cols))
    two = conf.get("biases", 1) == 2
    if conf.get("params", "per_gate") == "stacked":
        params = {"W": mat(4 * H, D), "U": mat(4 * H, H)}
        names, n = (["b_ih", "b_hh"] if two else ["b"]), 4 * H
    else:
        params = {f"{m}_{g}": mat(H, D if m == "W" else H) for g in "fico" for m in "WU"}
        names, n = ([f"b_{g}_{s}" for g in "fico" for s in ("ih", "hh")] if two else [f"b_{g}" for g in "fico"]), H
    params.update({b: rng.standard_normal(n) for b in names})
    return params


def own_gradient_errors(target, rng, T=4, B=3, D=3, H=2):
    """Per returned quantity: |directional derivative of the target's own forward - its backward| / scale."""
    conf = target.conformance
    params = random_params(conf, D, H, rng)
    seq = (B, T) if conf.get("batch_major") else (T, B)
    x, h0, c0 = rng.standard_normal(seq + (D,)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    dy, dh, dc = rng.standard_normal(seq + (H,)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    inputs = dict(params, x=x, h0=h0, c0=c0)

    def loss(values):
        p = {k: values[k].copy() for k in params}
        y, final = target.forward(p, values["x"].copy(), h0=values["h0"].copy(), c0=values["c0"].copy())
        h_T, c_T = (final["h"], final["c"]) if isinstance(final, dict) else final
        return np.sum(dy * y) + np.sum(dh * h_T) + np.sum(dc * c_T)

    grads = target.backward({k: v.copy() for k, v in params.items()}, x.copy(), dy.copy(),
                            {"h": dh.copy(), "c": dc.copy()}, h0=h0.copy(), c0=c0.copy())
    errors = {}
    for name in grads:
        v = rng.standard_normal(inputs[name].shape)
        at = [loss(dict(inputs, **{name: inputs[name] + k * 1e-4 * v})) for k in (-2, -1, 1, 2)]
        slope = (8 * (at[2] - at[1]) - (at[3] - at[0])) / (12 * 1e-4)  # Richardson-extrapolated central difference
        scale = max(np.sum(np.abs(grads[name] * v)), 1e-3)
        errors[name] = abs(slope - np.sum(grads[name] * v)) / scale
    return errors


FLOAT64_TARGETS = [e for e in MANIFEST if "float32_inside" not in {b["kind"] for b in e.get("bug", [])}
                   and "float64" in load_target(e).conformance.get("dtypes", ["float64"])]


@pytest.mark.parametrize("entry", FLOAT64_TARGETS, ids=[e["file"][:-3] for e in FLOAT64_TARGETS])
def test_manifest_where_matches_the_targets_own_gradient(entry):
    errors = own_gradient_errors(load_target(entry), np.random.default_rng(7))
    consistent = max(errors.values()) < 1e-7
    backward_bug = any(b["where"] == "backward" for b in entry.get("bug", []))
    assert consistent != backward_bug, errors


# ------------------------------------------------------------------------------------ lstm-spec conform

@pytest.mark.slow
@pytest.mark.parametrize("entry", MANIFEST, ids=IDS)
def test_conform_passes_correct_and_fails_buggy_targets(entry, capfd):
    code, report = conform(entry, capfd)
    if entry.get("partial"):  # the protocol asks for x, h0, c0 gradients: only those may fail
        assert code in (0, 1), report
        assert failing_rows(report) <= UNRETURNED, report
    else:
        assert code == (0 if entry["correct"] else 1), report


PARTIAL = [e for e in MANIFEST if e.get("partial")]


@pytest.mark.slow
@pytest.mark.parametrize("entry", PARTIAL, ids=[e["file"][:-3] for e in PARTIAL])
def test_conform_gives_no_diagnosis_to_a_correct_target_with_missing_gradients(entry, capfd):
    _, report = conform(entry, capfd)
    diagnoses = [line.strip() for line in report.splitlines() if "diagnosis" in line]
    named = [d for d in diagnoses if "no known bug" not in d and "not provided" not in d]
    assert not named, "\n".join(diagnoses)
