"""The spec: one declarative TOML file per cell, the single source of truth of lstm-spec.

``load("lstm")`` reads a built-in cell from this folder; ``load("path/to/my_cell.toml")`` reads a
user's own file. Both return a validated :class:`~lstm_spec.spec.cells.Cell`.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from .cells import SPEC_DIR, SPEC_SUFFIX, Cell, Quantity, load_file
from .language import SpecError

__all__ = ["Cell", "Quantity", "SpecError", "builtin_cells", "did_you_mean", "is_builtin", "load", "load_all"]


def builtin_cells() -> list[str]:
    """Names of the cells shipped in spec/, sorted."""
    return sorted(p.stem for p in SPEC_DIR.glob(f"*{SPEC_SUFFIX}"))


def is_builtin(cell: Cell) -> bool:
    """Whether ``cell`` is a built-in cell: its spec file is in this folder (the one place that decides it;
    its generated module then lives in the package's reference/)."""
    return cell.relpath.startswith("spec/")


def did_you_mean(name: str, choices=None) -> str:
    """'did you mean 'lstm'? ' for a mistyped cell name (among ``choices``, default the built-in cells), else ''."""
    close = difflib.get_close_matches(name, builtin_cells() if choices is None else list(choices), n=3)
    return f"did you mean {' or '.join(map(repr, close))}? " if close else ""


def load(name_or_path: str | Path) -> Cell:
    """Load a built-in cell by name, or any spec file by path."""
    text = str(name_or_path)
    if text in builtin_cells():
        return load_file(SPEC_DIR / f"{text}{SPEC_SUFFIX}")
    path = Path(text)
    if path.suffix == SPEC_SUFFIX or path.exists():
        return load_file(path)
    raise SpecError(f"unknown cell {text!r}: {did_you_mean(text)}not a built-in cell ({', '.join(builtin_cells())}) "
                    f"and not a path to a {SPEC_SUFFIX} spec file")


def load_all() -> list[Cell]:
    return [load(n) for n in builtin_cells()]
