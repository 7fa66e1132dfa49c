"""The API reference page, generated from the docstrings and signatures of the public modules.

(mkdocstrings cannot find lstm_spec's subpackages: their sources live in spec/, derivations/, ...
mapped by setuptools' package-dir, which griffe's finder does not follow. Importing them and reading
``inspect`` works everywhere the package is installed.)
"""

from __future__ import annotations

import html
import importlib
import inspect
import re

MODULES = [
    ("lstm_spec.spec", ["load", "builtin_cells", "load_all", "Cell"]),
    ("lstm_spec.derivations", ["derive"]),
    ("lstm_spec.derivations.render", ["forward_equations", "backward_equations", "describe", "latex_names",
                                      "latex_name"]),
    ("lstm_spec.reference.lstm", ["forward", "backward", "SIGNATURE"]),
    ("lstm_spec.layouts", ["to_stacked", "from_stacked", "to_torch_lstm", "from_torch_lstm", "GATES"]),
    ("lstm_spec.checks.tolerances", ["tolerance", "TOLERANCES"]),
    ("lstm_spec.checks.numeric", ["check_derivatives", "check_float32"]),
    ("lstm_spec.checks.runner", ["verify_cell", "verify_rules", "all_passed"]),
    ("lstm_spec.conformance", ["load_target", "conform", "default_cases", "format_report",
                               "ProtocolTarget"]),
]
ROLE = re.compile(r":(?:func|mod|class|meth|attr|data|exc):`[.~]?([^`]+)`")


def docstring_html(doc: str) -> str:
    """A docstring as preformatted text that wraps (class lstm-docstring), its reST roles and double
    backquotes read as plain names (``:func:`.load``` -> ``load``)."""
    text = ROLE.sub(r"\1", doc).replace("``", "")
    return f'<pre class="lstm-docstring">{html.escape(text, quote=False)}</pre>'


def _doc(obj) -> str:
    doc = inspect.getdoc(obj)
    return docstring_html(doc) + "\n" if doc else "*(no docstring)*\n"


def page() -> str:
    out = ["<!-- generated at build time from the modules' docstrings -->",
           "# API reference", "",
           "Generated at build time from the docstrings and signatures of the installed package. "
           "Every generated reference module (`lstm_spec.reference.<cell>`) has the same `forward`, "
           "`backward` and `SIGNATURE` as `lstm_spec.reference.lstm`.", ""]
    for modname, names in MODULES:
        mod = importlib.import_module(modname)
        out += [f"## `{modname}`", "", _doc(mod)]
        for name in names:
            obj = getattr(mod, name, None)
            if obj is None:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                try:
                    sig = str(inspect.signature(obj))
                except (TypeError, ValueError):
                    sig = ""
                kind = "class" if inspect.isclass(obj) else "def"
                out += [f"### `{name}`", "", f"```python\n{kind} {name}{sig}\n```", "", _doc(obj)]
            else:
                out += [f"### `{name}`", "", f"```python\n{name} = {obj!r}\n```", ""]
    return "\n".join(out)
