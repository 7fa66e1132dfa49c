"""The import graph follows the pipeline (issue 16, "Done when"): no module imports from a higher stage.

How the graph is drawn: every .py file under the folders pyproject.toml's [tool.setuptools] package-dir maps
into lstm_spec (lstm_spec.spec = spec/, ...), and the docs hooks (docs/hooks/lstm_spec_docs, the docs stage),
is parsed (ast, nothing is imported). Its edges are every ``import`` and ``from ... import`` anywhere in the
file (inside functions too: a lazy import is still a dependency; relative imports resolved against the
module's package), and every ``importlib.import_module`` / ``importlib.util.find_spec`` / ``__import__``
whose argument starts with a literal module name. Each module gets the stage of its package, except
``lstm_spec.reference._runtime``, the NumPy runtime the generated modules run on: it is a stage of its own
below spec (the spec reserves its names, the derivation's templates are written against it and confirmed on
it).

The stages, lowest first (a module may import from its own stage and from lower ones):

  root         lstm_spec/__init__.py: the package and its __version__, nothing else
  layouts      converters between parameter layouts and each system's gate order: a leaf, pure NumPy
  runtime      lstm_spec.reference._runtime
  spec         the TOML cells, their language and loader
  derivations  SymPy reverse mode, code generation, the docs' formula rendering
  reference    the generated modules and the hand-written ones beside them (masks, losses, training, ...)
  checks       verify: symbolic, numeric, PyTorch checks, tolerances, mutants, the spec fuzzer
  conformance  lstm-spec conform, golden vectors, diagnosis; adapters
  bench        lstm-spec bench: measures the reference against PyTorch and JAX (uses checks' tolerances)
  cli          lstm_spec.cli, lstm_spec.__main__: the command line, wires every stage
  docs         docs/hooks/lstm_spec_docs: renders everything, bench's results and the CLI's help included
"""

from __future__ import annotations

import ast
import functools
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["root", "layouts", "runtime", "spec", "derivations", "reference", "checks", "conformance", "bench", "cli",
          "docs"]
OWN_STAGE = {"lstm_spec.reference._runtime": "runtime"}  # a module in a stage other than its package's
DOCS = ("lstm_spec_docs", ROOT / "docs" / "hooks" / "lstm_spec_docs")


def packages() -> dict[str, Path]:
    """Package name -> folder, as pyproject.toml maps them, plus the docs hooks."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dirs = {name: ROOT / d for name, d in cfg["tool"]["setuptools"]["package-dir"].items()}
    return {**dirs, DOCS[0]: DOCS[1]}


def stage_of(module: str) -> str | None:
    """The stage of a module of the package (None: not ours, e.g. numpy)."""
    if module in OWN_STAGE or any(module.startswith(m + ".") for m in OWN_STAGE):
        return OWN_STAGE[next(m for m in OWN_STAGE if module == m or module.startswith(m + "."))]
    parts = module.split(".")
    if parts[0] == DOCS[0]:
        return "docs"
    if parts[0] != "lstm_spec":
        return None
    if len(parts) == 1:
        return "root"
    if parts[1] not in STAGES or parts[1] in ("root", "cli", "docs", "runtime"):
        return "cli"  # lstm_spec.cli, lstm_spec.__main__
    return parts[1]


@functools.cache
def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a subpackage's files belong to it, not its parent)."""
    pkgs = packages()
    out = {}
    for name, folder in sorted(pkgs.items(), key=lambda kv: len(kv[1].parts)):
        for f in folder.glob("*.py"):
            out[name if f.stem == "__init__" else f"{name}.{f.stem}"] = f
    return out


def _dynamic(call: ast.Call) -> str | None:
    """The literal module name an importlib.import_module / find_spec / __import__ call starts with."""
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    if name not in {"import_module", "find_spec", "__import__"} or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return arg.values[0].value.rstrip(".")
    return None


def imports(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported module) for every import of a module's source, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    known = modules()
    out = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.Import):
            out += [(n.lineno, a.name) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                anchor = package.split(".")[: len(package.split(".")) - (n.level - 1)]
                base = ".".join(anchor + ([n.module] if n.module else []))
            # `from pkg import mod` is an import of the module pkg.mod; `from mod import name`, of mod
            out += [(n.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in known else base) for a in n.names]
        elif isinstance(n, ast.Call) and (name := _dynamic(n)):
            out.append((n.lineno, name))
    return out


def upward(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` (its source given) from a stage above its own."""
    own = stage_of(module)
    found = []
    for line, target in imports(source, module, is_package):
        theirs = stage_of(target)
        if own and theirs and STAGES.index(theirs) > STAGES.index(own):
            found.append(f"{module} ({own}), line {line}: imports {target} ({theirs})")
    return sorted(set(found))


def graph() -> dict[tuple[str, str], list[str]]:
    """(stage, stage) -> the imports behind that edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, path in modules().items():
        for _, target in imports(path.read_text(encoding="utf-8"), module, path.stem == "__init__"):
            a, b = stage_of(module), stage_of(target)
            if a and b and a != b and target in modules():
                edges.setdefault((a, b), []).append(f"{module} -> {target}")
    return edges


def test_no_import_from_a_higher_stage():
    found = [f for module, path in modules().items()
             for f in upward(path.read_text(encoding="utf-8"), module, path.stem == "__init__")]
    assert not found, "imports against the pipeline's order:\n" + "\n".join(found)


def test_every_stage_is_read():
    mods = modules()
    assert {stage_of(m) for m in mods} == set(STAGES)
    assert "lstm_spec.checks.tolerances" in mods and "lstm_spec.conformance.adapters.torch_adapter" in mods
    assert stage_of("lstm_spec.reference._runtime") == "runtime" and stage_of("lstm_spec.reference.lstm") == "reference"
    assert stage_of("numpy") is None and stage_of("lstm_spec.cli") == "cli" and stage_of("lstm_spec") == "root"


def test_the_graph_has_the_pipeline_edges():
    """Positive control: the scan sees the edges that must be there (a scan that saw nothing would pass)."""
    edges = graph()
    for a, b in [("derivations", "spec"), ("checks", "derivations"), ("conformance", "checks"),
                 ("conformance", "layouts"), ("reference", "runtime"), ("docs", "bench"), ("cli", "conformance")]:
        assert (a, b) in edges, (a, b)


PLANTED = {
    "lstm_spec.spec.planted": "from lstm_spec.derivations.functions import FUNCTIONS",
    "lstm_spec.reference._runtime": "def f():\n    from lstm_spec.derivations.functions import Sigmoid",
    "lstm_spec.bench.planted": "import lstm_spec_docs.site",
    "lstm_spec.layouts.planted": "from ..spec import load",
    "lstm_spec.checks.planted": "import importlib\nimportlib.import_module(f'lstm_spec.conformance.{x}')",
}


@pytest.mark.parametrize("module", sorted(PLANTED))
def test_a_planted_upward_import_is_caught(tmp_path, module):
    """Negative control: an upward import written to a temporary module is found, a downward one is not."""
    path = tmp_path / "planted.py"
    path.write_text(textwrap.dedent(PLANTED[module]) + "\n", encoding="utf-8")
    assert upward(path.read_text(encoding="utf-8"), module), module
    assert not upward("import lstm_spec\nfrom lstm_spec.layouts import gates\n", module)


def _fresh(code: str) -> str:
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_lower_stages_run_without_the_higher_ones():
    """What the graph says, at run time: loading every cell and running a generated module import neither the
    derivation nor SymPy's rules; the function kinds' facts come from spec/functions.py."""
    out = _fresh("""
        import sys
        import numpy as np
        from lstm_spec.spec import load_all
        from lstm_spec.reference import lstm_layer_norm
        load_all()
        print(sorted(m for m in sys.modules if m.startswith(("lstm_spec.derivations", "lstm_spec.checks"))))
    """)
    assert out == "[]"


def test_object_arrays_get_their_sympy_functions_from_the_derivation():
    """The runtime's object-array branches use the SymPy functions lstm_spec.derivations registers; without
    it they say so (a TypeError naming what to import) instead of importing upward."""
    out = _fresh("""
        import numpy as np, sympy
        from lstm_spec.reference import _runtime
        z = np.array([sympy.Symbol("x")], dtype=object)
        try:
            _runtime.sigmoid(z)
        except TypeError as exc:
            print("before:", exc)
        import lstm_spec.derivations
        print("after:", _runtime.sigmoid(z)[0], _runtime.clip(z, 2.0)[0])
    """)
    assert "before: Sigmoid of an object array (SymPy expressions) needs lstm_spec.derivations imported" in out
    assert "after: Sigmoid(x) Clip(x, 2)" in out
