"""One home per concept (issue 16, item 4): the normwise relative error and every tolerance in
checks/tolerances.py; each system's gate order in layouts/gates.py; "is this a built-in cell" in
lstm_spec.spec.is_builtin.

The AST test reads every hand-written module of the package (the folders pyproject's package-dir maps into
lstm_spec, and the docs hooks) and fails on
- a function whose name says it is a relative error (rel_error, _step_rel, relative_error, ...);
- a relative error computed in place: |a - b| divided by max |w| (or a tolerance times max |w| in a
  comparison), directly or through names bound to them;
- a float tolerance literal in a comparison: a float constant below 1e-2 in a comparison, directly or through a
  module-level name bound to one (CHECK_TOLERANCE = 1e-12; ... err > CHECK_TOLERANCE).
A negative control plants each kind in a temporary module and sees it found.
"""

from __future__ import annotations

import ast
import re
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest

from lstm_spec.checks import tolerances
from lstm_spec.checks.tolerances import TOLERANCES, error_scale, rel_error, step_errors, tolerance

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "checks" / "tolerances.py"
REL_NAME = re.compile(r"rel(ative)?_?err|(^|_)(step_)?rel$|normwise", re.IGNORECASE)
# Literals that are not tolerances, each with the reason (path relative to the repository, the literal)
NOT_TOLERANCES = {
    ("spec/cells.py", 1e-06): "the range a spec's positive constant may take, not a bound on an error",
    ("checks/cases.py", 1e-04): "KINK_MARGIN: how far from a kink a random instance is drawn (an input, not an error)",
    ("docs/hooks/lstm_spec_docs/numbers.py", 1e-12): "a docs table counting eigenvalues with an imaginary part",
}


def _package_dirs() -> list[Path]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dirs = {ROOT / d for d in cfg["tool"]["setuptools"]["package-dir"].values()}
    return sorted(dirs | {ROOT / "docs" / "hooks"})


def _modules() -> list[Path]:
    found = {f for d in _package_dirs() for f in d.rglob("*.py")}
    return sorted(f for f in found if f != HOME and "GENERATED FILE - DO NOT EDIT" not in f.read_text()[:400])


def _name(func) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _is_max_abs(node) -> bool:
    """max |w| in any spelling: max(abs(a) ...), np.max(np.abs(w)), np.abs(w).max()."""
    if not (isinstance(node, ast.Call) and _name(node.func) in {"max", "amax", "nanmax"}):
        return False
    operand = node.func.value if isinstance(node.func, ast.Attribute) and not node.args else (
        node.args[0] if node.args else None)
    return operand is not None and any(
        isinstance(n, ast.Call) and _name(n.func) in {"abs", "absolute", "fabs"} for n in ast.walk(operand))


def _small_float(node) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is float and 0 < abs(node.value) < 1e-2


def _is_abs_diff(node) -> bool:
    """|a - b| in any spelling: abs(a - b), np.abs(g - w)."""
    return (isinstance(node, ast.Call) and _name(node.func) in {"abs", "absolute", "fabs"} and bool(node.args)
            and isinstance(node.args[0], ast.BinOp) and isinstance(node.args[0].op, ast.Sub))


def _bound_names(tree, holds) -> set[str]:
    """Names bound (anywhere, transitively) to an expression holding a node for which ``holds`` is true."""
    names: set[str] = set()
    while True:
        new = set(names)
        for n in ast.walk(tree):
            if isinstance(n, ast.Assign) and any(holds(m) or (isinstance(m, ast.Name) and m.id in names)
                                                 for m in ast.walk(n.value)):
                new |= {t.id for tgt in n.targets for t in ast.walk(tgt) if isinstance(t, ast.Name)}
        if new == names:
            return names
        names = new


def _literal_names(tree) -> dict[str, float]:
    """Module-level names bound to an expression holding a small float literal."""
    out = {}
    for st in tree.body:
        if isinstance(st, ast.Assign | ast.AnnAssign):
            targets = st.targets if isinstance(st, ast.Assign) else [st.target]
            lits = [m.value for m in ast.walk(st.value) if _small_float(m)] if st.value else []
            out.update({t.id: lits[0] for t in targets if isinstance(t, ast.Name) and lits})
    return out


def findings(source: str, rel: str = "<planted>") -> list[str]:
    """What a module defines or computes that belongs in checks/tolerances.py."""
    tree = ast.parse(source)
    literals, out = _literal_names(tree), []
    for scope in _scopes(tree):
        out += _in_place(scope, rel)

    for n in ast.walk(tree):
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and REL_NAME.search(n.name):
            out.append(f"{rel}:{n.lineno}: defines {n.name}(), a relative error")
        elif isinstance(n, ast.Compare):
            sides = [n.left, *n.comparators]
            for m in (m for s in sides for m in ast.walk(s)):
                value = m.value if _small_float(m) else literals.get(m.id) if isinstance(m, ast.Name) else None
                if value is not None and (rel, value) not in NOT_TOLERANCES:
                    out.append(f"{rel}:{n.lineno}: the float literal {value!r} in a comparison (a tolerance)")
    return sorted(set(out), key=out.index)


def _scopes(tree) -> list:
    """Every function, and the module's own statements (outside functions and classes)."""
    top = ast.Module(body=[st for st in tree.body if not isinstance(
        st, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)], type_ignores=[])
    return [top] + [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _in_place(scope, rel: str) -> list[str]:
    """Relative errors computed in place in one scope (names followed within it)."""
    scales, diffs = _bound_names(scope, _is_max_abs), _bound_names(scope, _is_abs_diff)

    def scaled(node) -> bool:
        return any(_is_max_abs(m) or (isinstance(m, ast.Name) and m.id in scales) for m in ast.walk(node))

    def differs(node) -> bool:
        return any(_is_abs_diff(m) or (isinstance(m, ast.Name) and m.id in diffs) for m in ast.walk(node))

    out = []
    for n in ast.walk(scope):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and scaled(n.right) and differs(n.left):
            out.append(f"{rel}:{n.lineno}: |a - b| over max |w| (a relative error computed in place)")
        elif isinstance(n, ast.Compare) and any(isinstance(m, ast.BinOp) and isinstance(m.op, ast.Mult)
                                                and scaled(m) for s in [n.left, *n.comparators] for m in ast.walk(s)):
            out.append(f"{rel}:{n.lineno}: a tolerance times max |w| (a relative error computed in place)")
    return out


def test_no_relative_error_or_tolerance_outside_the_table():
    found = [f for path in _modules() for f in findings(path.read_text(encoding="utf-8"),
                                                          str(path.relative_to(ROOT)))]
    assert not found, ("relative errors and tolerances belong in checks/tolerances.py (rel_error, TOLERANCES):\n"
                       + "\n".join(found))


def test_the_scan_reads_the_package():
    names = {str(p.relative_to(ROOT)) for p in _modules()}
    assert {"conformance/compare.py", "conformance/vectors.py", "bench/runner.py", "checks/cases.py",
            "conformance/localise.py"} <= names
    assert "reference/lstm.py" not in names and "checks/tolerances.py" not in names


PLANTED = {
    "a definition": """
        def rel_error(got, want):
            return 0.0
    """,
    "a per-step definition": """
        def _step_rel(got, want):
            return got
    """,
    "in place, through a name": """
        import numpy as np
        def f(g, w):
            scale = float(np.max(np.abs(w))) or 1.0
            return float(np.max(np.abs(g - w))) / scale
    """,
    "in place, through two names": """
        import numpy as np
        def f(g, w):
            diff = np.abs(g - w)
            mx = float(diff[np.argmax(diff)])
            scale = float(np.max(np.abs(w)))
            return mx / scale if scale > 0 else mx
    """,
    "in place, directly": """
        def f(gv, dv):
            return max(abs(a - b) for a, b in zip(gv, dv)) / max(abs(a) for a in dv)
    """,
    "a tolerance times the scale": """
        import numpy as np
        def f(a, v):
            err, scale = float(np.max(np.abs(a - v))), float(np.max(np.abs(v)))
            return err > 1.0 * max(scale, 1.0)
    """,
    "a named tolerance": """
        CHECK_TOLERANCE = 1e-12
        def f(err):
            return err > CHECK_TOLERANCE
    """,
    "a dict of tolerances": """
        FLOOR = {"float64": 1e-7, "float32": 3e-3}
        def f(rel, dtype):
            return rel <= FLOOR[dtype]
    """,
    "a literal": """
        def f(k):
            return abs(k) < 1e-9
    """,
}


@pytest.mark.parametrize("what", sorted(PLANTED))
def test_a_planted_one_is_found(tmp_path, what):
    """Negative control: each kind, written to a temporary module, is found."""
    path = tmp_path / "planted.py"
    path.write_text(textwrap.dedent(PLANTED[what]), encoding="utf-8")
    assert findings(path.read_text(encoding="utf-8"), "planted.py"), what


def test_what_is_not_a_tolerance_is_not_found():
    source = """
        import numpy as np
        STEP = 1e-6
        def f(g, v, r):
            denom = float(np.linalg.norm(g) * np.linalg.norm(v)) or 1.0
            h = STEP * max(1.0, float(np.max(np.abs(g))))
            U = g * 2.0 / np.max(np.abs(g))
            return r < 0.03, h / denom, float(np.max(np.abs(g - v))), U
    """
    assert findings(textwrap.dedent(source)) == []


# ------------------------------------------------------------------------------------------- the zero rule
def test_relative_to_the_largest_entry():
    assert rel_error([1.0, 2.0], [1.0, 4.0]) == pytest.approx(0.5)
    assert rel_error(np.array([[3.0, -4.0]]), np.array([[2.0, -4.0]])) == pytest.approx(0.25)


def test_all_zero_want_is_absolute():
    assert error_scale(np.zeros(3)) == 1.0
    assert rel_error([1e-3, 0.0], [0.0, 0.0]) == pytest.approx(1e-3)
    assert rel_error(np.zeros(2), np.zeros(2)) == 0.0


def test_a_small_nonzero_want_is_relative():
    """The floor is only for an all-zero want: a want of 1e-20 is still relative (no max(scale, 1))."""
    assert rel_error([2e-20], [1e-20]) == pytest.approx(1.0)


def test_shapes_empty_and_non_finite():
    assert rel_error(np.zeros((2, 3)), np.zeros((3, 2))) == np.inf
    assert rel_error(np.zeros(0), np.zeros(0)) == 0.0
    assert rel_error([np.nan, 1.0], [1.0, 1.0]) == np.inf
    assert rel_error([np.inf], [1.0]) == np.inf


def test_allowance_counts_only_what_exceeds_it():
    assert rel_error([1.5, 2.0], [1.0, 2.0], allowance=0.4) == pytest.approx(0.05)
    assert rel_error([1.5, 2.0], [1.0, 2.0], allowance=np.array([0.5, 0.0])) == 0.0


def test_step_errors_share_the_scale_and_the_rule():
    want = np.array([[1.0, 4.0], [2.0, 0.0]])
    got = want + np.array([[0.0, 0.0], [2.0, 0.0]])
    assert step_errors(got, want).tolist() == [0.0, 0.5]
    assert step_errors(np.ones((2, 1)), np.zeros((2, 1))).tolist() == [1.0, 1.0]
    assert step_errors(np.array([[np.nan], [0.0]]), np.ones((2, 1)))[0] == np.inf
    assert max(step_errors(got, want)) == rel_error(got, want)


def test_every_tolerance_in_the_table_has_a_reason():
    assert all(t.reason and t.value >= 0 for t in TOLERANCES.values())
    assert tolerance("vectors", "float64") == 1e-12 and tolerance("localise", "float64") == 1e-7
    assert tolerances.__doc__ and "zero rule" in tolerances.__doc__


# ------------------------------------------------------------------------------------------- gate orders
GATE_SETS = ({"f", "i", "c", "o"}, {"r", "z", "n"})
GATE_HOME = ROOT / "layouts" / "gates.py"
# plays a user's implementation, which writes its own order as a user would (the protocol's gate_order)
USER_CODE = {"conformance/examples.py"}


def _is_order(letters) -> bool:
    return len(letters) in (3, 4) and len(set(letters)) == len(letters) and set(letters) in GATE_SETS


def gate_orders(source: str, rel: str = "<planted>") -> list[str]:
    """Gate orders written out: a string such as "ifco" or a tuple or list of gate letters."""
    out = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and _is_order(n.value):
            out.append(f"{rel}:{n.lineno}: the gate order {n.value!r}")
        elif isinstance(n, ast.Tuple | ast.List) and n.elts and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) and len(e.value) == 1 for e in n.elts):
            letters = "".join(e.value for e in n.elts)
            if _is_order(letters):
                out.append(f"{rel}:{n.lineno}: the gate order {tuple(letters)}")
    return out


def test_gate_orders_are_written_once_in_layouts():
    found = [f for path in _modules() if path != GATE_HOME and str(path.relative_to(ROOT)) not in USER_CODE
             for f in gate_orders(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert not found, "gate orders belong in layouts/gates.py (import them):\n" + "\n".join(found)


@pytest.mark.parametrize("planted", ['ORDER = "iofc"', 'for g in "fico": pass', 'G = ("i", "f", "c", "o")',
                                     'G = ["z", "r", "n"]'])
def test_a_planted_gate_order_is_found(tmp_path, planted):
    path = tmp_path / "planted.py"
    path.write_text(planted + "\n", encoding="utf-8")
    assert gate_orders(path.read_text(encoding="utf-8"))


def test_the_orders_are_what_the_frameworks_document():
    from lstm_spec.layouts import gates
    from lstm_spec.layouts.stacked import GATES

    assert GATES == gates.TORCH_LSTM_ORDER == ("i", "f", "c", "o") and gates.ONNX_LSTM_ORDER == ("i", "o", "f", "c")
    assert gates.KERAS_GRU_ORDER == ("z", "r", "n") and gates.LSTM_GATES == ("f", "i", "c", "o")


# ------------------------------------------------------------------------------------ built-in cells
def test_built_in_is_decided_in_one_place():
    """Only lstm_spec.spec.is_builtin reads a cell's path to tell a built-in cell (derivations.build re-uses it)."""
    from lstm_spec.derivations import build
    from lstm_spec.spec import is_builtin, load

    pattern = re.compile(r"relpath\.startswith\(|relative_to\(SPEC_DIR\)")
    homes = {ROOT / "spec" / "__init__.py", ROOT / "spec" / "cells.py"}  # cells.py: Cell.relpath itself
    found = [str(p.relative_to(ROOT)) for p in _modules() if p not in homes
             and pattern.search(p.read_text(encoding="utf-8"))]
    assert not found, f"use lstm_spec.spec.is_builtin: {found}"
    assert build.is_builtin is is_builtin and is_builtin(load("lstm"))
