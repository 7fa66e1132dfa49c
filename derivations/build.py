"""`lstm-spec generate`: derive every cell and write (or check) its generated NumPy module.

Where a module goes (one rule, used by generate and by verify): a built-in cell's to the package's
reference/<name>.py; a spec file's beside it, named after the FILE (my_cell.toml -> my_cell.py), not
after its `name =`; with --out DIR, to DIR/<file stem>.py. An existing file there is overwritten only
when it is a generated module (its header has the line GENERATED FILE - DO NOT EDIT. and a spec digest)
of a spec of the same cell name; anything else is refused (GenerateError) and nothing is written.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lstm_spec.spec import Cell, SpecError, builtin_cells, did_you_mean, is_builtin, load
from lstm_spec.spec.cells import SPEC_SUFFIX

from .codegen import generate_module
from .reverse import derive

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reference"
GENERATED_MARK = "GENERATED FILE - DO NOT EDIT."  # the fixed line of codegen's header
_DIGEST = re.compile(r"sha256\W*([0-9a-f]{16,64})")  # the spec's digest in that header
_CELL = re.compile(r"\(cell '([A-Za-z_]\w*)'\)")  # the cell's name in its first line


class GenerateError(ValueError):
    """A file `generate` must not write, or cannot (the message is one line for the user)."""


@dataclass
class Generated:
    cell: Cell
    path: Path
    text: str
    out: Path | None = None  # the --out directory it was generated for, if any

    def current(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise GenerateError(f"cannot read {self.path}: {exc.strerror}") from None

    @property
    def stale(self) -> bool:
        return self.current() != self.text

    @property
    def command(self) -> str:
        """The exact command that regenerates this file."""
        return regenerate_command([self])

    def diff(self) -> str:
        old = (self.current() or "").splitlines(keepends=True)
        new = self.text.splitlines(keepends=True)
        label = str(self.path)
        return "".join(difflib.unified_diff(old, new, f"{label} (on disk)", f"{label} (from the spec)"))


def output_dir() -> Path:
    """Where the generated modules live: the package's reference/ folder (the repository's own
    reference/ for an editable install)."""
    return REFERENCE_DIR


def default_path(cell: Cell, out: Path | None = None) -> Path:
    """The module of a cell: named after its spec file (a built-in cell's file is named after the cell),
    in --out, else in reference/ for a built-in cell, else beside the spec file."""
    name = f"{cell.path.stem}.py"
    if out is not None:
        return out / name
    return output_dir() / name if is_builtin(cell) else cell.path.parent / name


def regenerate_command(generated: list[Generated]) -> str:
    """`lstm-spec generate` with the cells (built-in by name, spec files by path) and --out of these files."""
    args = [g.cell.name if is_builtin(g.cell) else str(g.cell.path) for g in generated]
    outs = sorted({str(g.out) for g in generated if g.out is not None})
    return shlex.join(["lstm-spec", "generate", *args, *(a for o in outs for a in ("--out", o))])


def generate(cells: list[Cell], out: Path | None = None) -> list[Generated]:
    if out is not None and out.exists() and not out.is_dir():
        raise GenerateError(f"--out {out}: not a directory; give the directory to write the modules into")
    generated, by_path = [], {}
    for c in cells:
        g = Generated(c, default_path(c, out), generate_module(derive(c)), out)
        first = by_path.setdefault(g.path.resolve(), g)
        if first is g:
            generated.append(g)
        elif first.cell.path.resolve() != c.path.resolve():
            raise GenerateError(f"{first.cell.path} and {c.path} would both be generated into {g.path}: "
                                "rename one spec file or generate them with different --out directories")
    return generated


def recorded_cell(text: str) -> str | None:
    """The cell name recorded in a generated module's header ('' when it records none); None when the
    text is not a generated module (no GENERATED_MARK line with a spec digest in its header)."""
    head = text[:4000].splitlines()[:12]
    if GENERATED_MARK not in (line.strip() for line in head) or not any(_DIGEST.search(line) for line in head):
        return None
    found = _CELL.findall(head[0]) if head else []  # the last one: a title could contain the pattern too
    return found[-1] if found else ""


def check_overwrite(g: Generated) -> None:
    """Raise GenerateError unless g.path is missing, current, or a module generated for the same cell."""
    old = g.current()
    if old is None or old == g.text:
        return
    cell = recorded_cell(old)
    if cell is None:
        raise GenerateError(f"refusing to overwrite {g.path}: it is not a generated file (no {GENERATED_MARK!r} "
                            "line with a spec digest); move it away, or write elsewhere with --out DIR")
    if cell and cell != g.cell.name:
        raise GenerateError(f"refusing to overwrite {g.path}: it was generated from another spec (cell {cell!r}, "
                            f"not {g.cell.name!r}); delete it if that spec is gone, or rename a spec file")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write(generated: list[Generated]) -> list[Path]:
    """Write the stale files atomically (a temporary file renamed into place), with the mode the umask
    gives a new file; nothing is written when any of them may not be overwritten (check_overwrite)."""
    stale = [g for g in generated if g.stale]
    for g in stale:
        check_overwrite(g)
    mode = 0o666 & ~_umask()
    for g in stale:
        try:
            _write_atomic(g.path, g.text, mode)
        except OSError as exc:
            raise GenerateError(f"cannot write {g.path}: {exc.strerror or exc}") from None
    return [g.path for g in stale]


def _write_atomic(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_cell_name(name: str) -> None:
    """A name that is neither a built-in cell nor a spec file: a SpecError with the closest names."""
    path = Path(name)
    if name in builtin_cells() or path.suffix == SPEC_SUFFIX or path.exists():
        return
    raise SpecError(f"unknown cell {name!r}: {did_you_mean(name)}(`lstm-spec list` shows the built-in cells; "
                    f"give your own spec by its path, e.g. my_cell{SPEC_SUFFIX})")


def load_cells(names) -> list[Cell]:
    names = names or builtin_cells()
    for n in names:
        check_cell_name(n)
    return [load(n) for n in names]
