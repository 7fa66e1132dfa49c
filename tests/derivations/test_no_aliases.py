"""Generated backward passes read without alias lines (issue 16): no statement in the loop of a generated
backward whose whole right-hand side is another name (d_mean_vh4 = _tmp5, d_loss = dy[t]); the derivation
substitutes such a name where it is read (derivations/reverse.py, _without_aliases)."""

import ast
import importlib
import inspect

import pytest

from lstm_spec.spec import builtin_cells


def alias_lines(source: str) -> list[str]:
    """The loop statements of ``backward`` that only copy another name (or its step t)."""
    tree = ast.parse(source)
    backward = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "backward")
    found = []
    for loop in (n for n in ast.walk(backward) if isinstance(n, ast.For)):
        for st in loop.body:
            if not (isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name)):
                continue
            if st.targets[0].id.endswith("_next"):  # the carry to step t-1 (d_h_next = d_h_prev): not an alias
                continue
            v = st.value
            if isinstance(v, ast.Name) or (isinstance(v, ast.Subscript) and isinstance(v.value, ast.Name)
                                           and isinstance(v.slice, ast.Name) and v.slice.id == "t"):
                found.append(ast.unparse(st))
    return found


@pytest.mark.parametrize("cell", sorted(builtin_cells()))
def test_a_generated_backward_has_no_alias_lines(cell):
    module = importlib.import_module(f"lstm_spec.reference.{cell}")
    assert alias_lines(inspect.getsource(module)) == []


def test_negative_control_a_planted_alias_line_is_found():
    source = inspect.getsource(importlib.import_module("lstm_spec.reference.lstm_layer_norm"))
    line = "        d_h = d_h_next + "
    assert line in source
    planted = source.replace(line, "        d_copy = d_h_next\n" + line, 1)
    assert alias_lines(planted) == ["d_copy = d_h_next"]
    planted = source.replace(line, "        d_copy = dy[t]\n" + line, 1)
    assert alias_lines(planted) == ["d_copy = dy[t]"]
