"""Issue 16 item 4, one home per concept: typed check rows and case outcomes (enums for the status
vocabularies), the case shapes written once, generated-code mutation in checks/mutants.py only, and one
meaning per class name."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ (a) typed results
def test_check_row_statuses_are_enums_with_the_tables_words():
    from lstm_spec.checks.runner import CheckRow, Control, Status, all_passed, format_table

    row = CheckRow("lstm", "(c) complex step", 0.0, 1e-12, True, "caught", 0.1)
    assert row.status is Status.PASS and row.control is Control.CAUGHT
    assert str(Status.PASS) == "pass" and f"{Status.NA}" == "n/a" and str(Control.NOT_CAUGHT) == "NOT CAUGHT"
    failed = CheckRow("lstm", "(d) PyTorch", 1.0, 1e-10, True, Control.NOT_CAUGHT, 0.1)
    assert failed.status is Status.FAIL and not all_passed([row, failed])
    na = CheckRow("gru", "(d) PyTorch", None, None, None, Control.NONE, 0.0, "PyTorch has no such cell")
    skipped = CheckRow("gru", "(d) PyTorch", None, None, None, "-", 0.0, "PyTorch is not installed")
    assert (na.status, skipped.status) == (Status.NA, Status.SKIP) and all_passed([row, na])
    assert not all_passed([row, skipped])
    table = format_table([row, failed])
    assert " pass " in table and " FAIL " in table and "NOT CAUGHT" in table and "Status." not in table


def test_a_typod_control_or_case_status_raises():
    from lstm_spec.checks.runner import CheckRow
    from lstm_spec.conformance.problem import Case
    from lstm_spec.conformance.runner import CaseResult, CaseStatus

    with pytest.raises(ValueError, match="cought"):
        CheckRow("lstm", "(a)", 0, 0, True, "cought", 0.0)
    case = Case("lstm", (1, 1, 3, 2), "float64", 0)
    assert CaseResult(case, "pass").status is CaseStatus.PASS  # the vocabulary's words are taken
    with pytest.raises(ValueError, match="passed"):
        CaseResult(case, "passed")


def test_case_outcomes_serialise_to_the_same_words():
    from lstm_spec.conformance.problem import Case
    from lstm_spec.conformance.runner import CaseStatus, conform, format_report, report_dict
    from lstm_spec.conformance.targets import load_target

    target = load_target("lstm_spec.conformance.examples:correct")
    report = conform(target, [Case("lstm", (2, 1, 2, 3), "float64", 0)], diagnose_failures=False)
    assert report.results[0].status is CaseStatus.PASS
    data = json.loads(json.dumps(report_dict(report)))
    assert data["cases"][0]["status"] == "pass" and data["counts"] == {"pass": 1, "FAIL": 0, "error": 0, "skip": 0}
    assert type(report_dict(report)["cases"][0]["status"]) is str  # the value, not the enum, at the boundary
    assert ": pass" in format_report(report) and "CaseStatus" not in format_report(report)


def _functions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_verify_cell_is_split_into_short_pieces():
    long = {f.name: f.end_lineno - f.lineno + 1 for f in _functions(ROOT / "checks" / "runner.py")
            if f.end_lineno - f.lineno + 1 >= 60}
    assert long == {}, long


# ------------------------------------------------------------------------------------ (b) case shapes
PACKAGE_DIRS = ["spec", "derivations", "reference", "checks", "layouts", "conformance", "bench", "lstm_spec"]


def _package_files():
    for d in PACKAGE_DIRS:
        yield from sorted((ROOT / d).rglob("*.py"))


def _shape_literals(tree) -> list[tuple]:
    """(T, B, D, H) tuples written as literals: tuples of four ints."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.Tuple) and len(n.elts) == 4
            and all(isinstance(e, ast.Constant) and type(e.value) is int for e in n.elts)]


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def shape_homes(files) -> dict:
    """name -> the files that assign a module-level name ending in SHAPE or SHAPES."""
    out: dict = {}
    for path in files:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign) else []
            for t in targets:
                if isinstance(t, ast.Name) and t.id.endswith(("SHAPE", "SHAPES")):
                    out.setdefault(t.id, []).append(_rel(path))
    return out


def test_the_case_shapes_are_written_in_checks_cases_only():
    homes = shape_homes(_package_files())
    homes.pop("CS_SHAPES", None)  # checks/fuzz.py: the fuzzer's own shapes for random specs (not a case table)
    assert {f for files in homes.values() for f in files} == {"checks/cases.py"}, homes
    assert all(len(files) == 1 for files in homes.values()), homes
    runner = ast.parse((ROOT / "conformance" / "runner.py").read_text(encoding="utf-8"))
    assert _shape_literals(runner) == []  # conform's cases name the shapes of checks.cases


def test_a_planted_second_shape_table_is_found(tmp_path):
    planted = tmp_path / "runner.py"
    planted.write_text("SHAPES = [(1, 1, 3, 2), (16, 2, 3, 4)]\n")
    homes = shape_homes([ROOT / "checks" / "cases.py", planted])
    assert len(homes["SHAPES"]) == 2
    assert len(_shape_literals(ast.parse(planted.read_text()))) == 2


def test_conform_runs_the_checks_shapes_and_the_long_one():
    from lstm_spec.checks.cases import CONFORM_SHAPES, LONG_SHAPE, SHAPES
    from lstm_spec.conformance.runner import default_cases

    assert CONFORM_SHAPES == SHAPES + [LONG_SHAPE] and LONG_SHAPE[0] == 16
    forward = [c.shape for c in default_cases(dtypes=("float64",))
               if c.direction == "forward" and c.lengths is None and c.layers == 1]
    assert forward == CONFORM_SHAPES


# ------------------------------------------------------------------------- (c) generated-code mutation
CARRY_LINE = "        d_h_next, d_c_next = d_h_prev, d_c_prev"  # as the generated backward writes it
OTHER_LINE = "        d_h = d_y[t] + d_h_next"  # another line of the loop


def _regex_literals(tree) -> list[str]:
    """The literal patterns of calls re.<fn>(pattern, ...)."""
    out = []
    for n in ast.walk(tree):
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
                and n.func.value.id == "re" and n.args and isinstance(n.args[0], ast.Constant)
                and isinstance(n.args[0].value, str)):
            out.append(n.args[0].value)
    return out


def carry_patterns(files) -> dict:
    """file -> its literal regexes that match a generated carry line (and not another line of the loop)."""
    import re

    out = {}
    for path in files:
        hits = [p for p in _regex_literals(ast.parse(path.read_text(encoding="utf-8")))
                if re.match(p, CARRY_LINE) and not re.match(p, OTHER_LINE)]
        if hits:
            out[_rel(path)] = hits
    return out


def test_only_checks_mutants_holds_patterns_over_the_carry_line():
    assert set(carry_patterns(_package_files())) == {"checks/mutants.py"}


def test_a_planted_pattern_over_the_carry_line_is_found(tmp_path):
    planted = tmp_path / "signatures.py"
    planted.write_text('import re\nm = re.match(r"(\\s+)((?:d_\\w+_next)(?:, d_\\w+_next)*) = (.+)$", line)\n')
    assert list(carry_patterns([planted])) == [str(planted)]


def test_the_carry_helper_reads_and_rewrites_the_generated_line():
    import inspect

    from lstm_spec.checks import mutants
    from lstm_spec.reference import lstm

    c = mutants.carry(CARRY_LINE)
    assert c.names == ("d_h_next", "d_c_next") and c.values == ("d_h_prev", "d_c_prev")
    assert c.line(c.values) == CARRY_LINE and mutants.carry("        d_h = d_y[t]") is None
    text = inspect.getsource(lstm)
    bad = mutants.mutate_backward(text, "no_carry:c")
    changed = [(a, b) for a, b in zip(text.splitlines(), bad.splitlines(), strict=True) if a != b]
    assert changed == [(CARRY_LINE, "        d_h_next, d_c_next = d_h_prev, 0 * d_c_prev")], changed
    assert mutants.mutate_backward(text, "no_carry:m") == text  # no state m: nothing zeroed
    assert "reversed(range(1, T))" in mutants.mutate_backward(text, "loop_skips_t0")
    with pytest.raises(ValueError):
        mutants.mutate_backward(text, "no_such_bug")


# ---------------------------------------------------------------------------- (d) one meaning per name
# A duplicate left to another file's owner: checks/fuzz.py's Report (the fuzzer's tally) beside conformance's
# public Report (lstm_spec.conformance.Report); the fuzzer's is to be renamed FuzzReport.
PENDING = set()


def class_homes(files) -> dict:
    """class name -> the files that define a module-level class of that name."""
    out: dict = {}
    for path in files:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                out.setdefault(node.name, []).append(_rel(path))
    return out


def test_no_two_classes_of_the_package_share_a_name():
    shared = {name: files for name, files in class_homes(_package_files()).items() if len(files) > 1}
    assert set(shared) <= PENDING, shared


def test_a_planted_duplicate_class_name_is_found(tmp_path):
    planted = tmp_path / "worker.py"
    planted.write_text("class CaseWorker:\n    pass\n")
    homes = class_homes([ROOT / "conformance" / "runner.py", planted])
    assert len(homes["CaseWorker"]) == 2


def test_the_renamed_classes_keep_their_catalogue():
    from lstm_spec.conformance import signatures
    from lstm_spec.conformance.runner import CaseWorker
    from lstm_spec.reference._runtime import Signature

    assert all(isinstance(s, signatures.BugSignature) for s in signatures.SIGNATURES) and signatures.SIGNATURES
    assert not hasattr(signatures, "Signature") and Signature.__module__.endswith("_runtime")
    assert CaseWorker.__name__ == "CaseWorker"
