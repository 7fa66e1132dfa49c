"""`lstm-spec generate`: derive every cell and write (or check) its generated NumPy module."""

from __future__ import annotations

import difflib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lstm_spec.spec import Cell, load

from .codegen import generate_module
from .reverse import derive

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reference"


@dataclass
class Generated:
    cell: Cell
    path: Path
    text: str

    def current(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    @property
    def stale(self) -> bool:
        return self.current() != self.text

    def diff(self) -> str:
        old = (self.current() or "").splitlines(keepends=True)
        new = self.text.splitlines(keepends=True)
        label = str(self.path)
        return "".join(difflib.unified_diff(old, new, f"{label} (on disk)", f"{label} (from the spec)"))


def output_dir() -> Path:
    """Where the generated modules live: the package's reference/ folder (the repository's own
    reference/ for an editable install)."""
    return REFERENCE_DIR


def is_builtin(cell: Cell) -> bool:
    return cell.relpath.startswith("spec/")


def default_path(cell: Cell) -> Path:
    """Built-in cells go to reference/; a user's spec file gets its module beside it (cell name + .py)."""
    return output_dir() / f"{cell.name}.py" if is_builtin(cell) else cell.path.parent / f"{cell.name}.py"


def generate(cells: list[Cell], out: Path | None = None) -> list[Generated]:
    return [Generated(c, (out / f"{c.name}.py") if out else default_path(c), generate_module(derive(c)))
            for c in cells]


def write(generated: list[Generated]) -> list[Path]:
    """Write the stale files atomically (a temporary file renamed into place)."""
    written = []
    for g in generated:
        if not g.stale:
            continue
        g.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=g.path.parent, prefix=f".{g.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(g.text)
            os.replace(tmp, g.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(g.path)
    return written


def load_cells(names) -> list[Cell]:
    from lstm_spec.spec import builtin_cells

    return [load(n) for n in (names or builtin_cells())]
