"""Reading a cell's spec file (TOML) into a validated :class:`Cell`.

A spec file declares dimensions, the role and shape of every name (input, state, parameter), the
functions the equations may call, and the equations of one time step. Everything is checked here:
unknown keys, wrong value types, undeclared or unused names, redefinitions, use before definition
(and so cycles), shape mismatches, names that would collide with the generated code's own names, and
text that would end up in the generated module. Errors name the file, the line and the equation (or
the declaration). Spec files are untrusted: every failure is a :class:`SpecError`, never another
exception, and size limits keep loading and deriving any accepted file fast.
"""

from __future__ import annotations

import builtins
import functools
import keyword
import os
import re
import stat
import tomllib
import unicodedata
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from .language import (
    IDENTIFIER,
    MAX_NAME_LENGTH,
    BinOp,
    Call,
    Equation,
    Name,
    Neg,
    Num,
    Pow,
    SpecError,
    parse_equation,
)

SPEC_DIR = Path(__file__).resolve().parent
SCALAR = "1"  # the shape of one value per sample (what a reduction such as sum(...) gives): ("1",)
SPEC_SUFFIX = ".toml"
MAX_SPEC_BYTES = 200_000
MAX_EQUATIONS = 100
MAX_DECLARATIONS = 200  # entries of [dimensions], [inputs], [states], [parameters], [functions] together
MAX_TITLE_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 10_000

# The generated module's own names: its module-level names and the locals of forward() and backward(). A
# spec may not use them, nor the runtime's names (lstm_spec.reference._runtime, which a generated module
# imports from), nor Python's keywords and builtins, for its quantities or dimensions: those become
# Python variables in the generated module. Function names are exempt: they never appear in the code.
# (The generator checks every name its modules bind against this and the names it allocates.)
GENERATED_NAMES = frozenset({
    "np", "t", "T", "B", "params", "cache", "dy", "d_final", "grads", "forward", "backward", "p", "seq", "init",
    "dims", "dtype", "final", "nonfinite", "SIGNATURE", "KINKS", "MASKS", "STOP_GRADIENT",
    "Forward", "validate", "symbolic",  # kept from earlier versions of the generated code
    "constants",  # the keyword of forward() and backward() that overrides the spec's [constants]
})


@functools.cache
def reserved_names() -> frozenset:
    """GENERATED_NAMES, every public name of the runtime module (read from its source, so the list cannot
    drift from what a generated module may import), and Python's keywords and builtins."""
    runtime = {n for n in _module_bindings("lstm_spec.reference._runtime") if not n.startswith("_")}
    python = set(keyword.kwlist) | {n for n in dir(builtins) if not n.startswith("_")}
    return frozenset(GENERATED_NAMES | runtime | python)


def _module_bindings(module: str) -> set[str]:
    """The names a module's top level binds (defs, classes, assignments, imports), read from its source
    without importing or running it."""
    import ast
    import importlib.util

    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


TOP_KEYS = {"name", "title", "summary", "description", "output", "equations", "dimensions", "inputs",
            "states", "parameters", "constants", "functions", "latex", "masks"}

# [constants]: named numbers the equations and the function declarations use (a forget bias added at run
# time, a clip bound, a layer-norm epsilon), each written `name = 0.0` or `name = { value = 0.0, doc = "..." }`.
# They are symbols without gradients in the derivation and names in the generated code, whose forward and
# backward take `constants={"name": value}` to override them without regenerating.
MAX_CONSTANT = 1e6  # |value| below this (a constant used as a clip bound: from 1e-6)

# [masks]: inputs that are dropout or zoneout masks, given explicitly per step. The checks draw them as
# masks (not Gaussian): each entry is 0 with probability p, else 1/(1-p) ("inverted": inverted dropout,
# the scaling folded into the mask) or 1 ("binary": zoneout); "fixed" repeats one mask at every step of
# a sequence (variational dropout), "per_step" draws a new one at every step.
MASK_VALUES = ("inverted", "binary")
MASK_TIMES = ("per_step", "fixed")


@dataclass(frozen=True)
class Quantity:
    name: str
    role: str  # "input" | "state" | "parameter" | "intermediate"
    shape: tuple[str, ...]  # symbolic dims, () for a scalar


@dataclass(frozen=True)
class Constant:
    name: str
    value: float  # the default
    doc: str = ""
    positive: bool = False  # a clip bound: every value given for it must be > 0


@dataclass
class Cell:
    """A validated cell: the single source of truth everything else is derived from."""

    name: str
    title: str
    summary: str
    description: str
    path: Path
    source: str
    dimensions: dict[str, str]
    inputs: dict[str, Quantity]
    states: dict[str, Quantity]
    parameters: dict[str, Quantity]
    functions: dict[str, str]  # spec name -> function kind (e.g. "sigma" -> "logistic")
    equations: list[Equation]
    output: str
    latex: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # every defined quantity
    function_args: dict[str, tuple] = field(default_factory=dict)  # spec name -> its parameters: Fraction or
    #                                                                  the name of a constant
    constants: dict[str, Constant] = field(default_factory=dict)  # [constants], in the spec's order
    masks: dict[str, dict] = field(default_factory=dict)  # input name -> {"p", "values", "time"}

    def quantity(self, name: str) -> Quantity:
        for table in (self.inputs, self.states, self.parameters):
            if name in table:
                return table[name]
        return Quantity(name, "intermediate", self.shapes[name])

    @property
    def relpath(self) -> str:
        """Path relative to the repository for built-in specs ("spec/lstm.toml"), else the file name.
        For messages and for telling built-in cells apart; never written into generated code (origin is)."""
        try:
            return "spec/" + self.path.relative_to(SPEC_DIR).as_posix()
        except ValueError:
            return self.path.name

    @property
    def origin(self) -> str:
        """Where the generated module says it comes from, safe to write into code: "spec/<name>.toml" for
        a built-in cell whose file is named after it, else the cell's name (a validated identifier). A file
        name is never written into code: a link can point at a file named like Python code."""
        if self.relpath == f"spec/{self.name}{SPEC_SUFFIX}":
            return self.relpath
        return f"the spec of cell {self.name!r}"


def _parse_shape(text, where, dims=()) -> tuple[str, ...]:
    """"H" or "H x D" (or "H×D"); "HxD" too when H and D are declared dimensions. A dimension whose name holds
    an x (q_x, x0) is one dimension: only an x between spaces (or ×) separates two."""
    if not isinstance(text, str) or len(text) > 2 * MAX_NAME_LENGTH + 10:
        raise SpecError(f"{where}: a shape is a string such as \"H\" or \"H x D\", got {text!r}")
    text = text.strip()
    parts = [p.strip() for p in re.split(r"\s+x\s+|\s*×\s*", text)] if text else []
    if len(parts) == 1 and parts[0] not in dims:
        compact = re.split(r"x", parts[0])
        if len(compact) == 2 and all(p in dims for p in compact):
            parts = compact
    if not 1 <= len(parts) <= 2 or not all(IDENTIFIER.match(p) or p == SCALAR for p in parts):
        raise SpecError(f"{where}: bad shape {text!r}; write \"H\" for a vector or \"H x D\" for a matrix")
    return tuple(parts)


def _table(data, key, where) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise SpecError(f"{where}: [{key}] must be a table, got {_type_name(value)}")
    return value


def _type_name(value) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", dict: "a table",
            list: "an array"}.get(type(value), f"a {type(value).__name__}")


def _check_text(value, where, what, max_length, multiline=False, code_safe=False):
    """A piece of prose from the spec (title, summary, description, dimension or LaTeX text): a string,
    bounded, printable. code_safe: it is copied into the generated module's docstring, so it may hold
    neither a quote nor a backslash (which could end the docstring or form an escape)."""
    if not isinstance(value, str):
        raise SpecError(f"{where}: {what} must be a string, got {_type_name(value)}")
    if len(value) > max_length:
        raise SpecError(f"{where}: {what} is {len(value)} characters long; at most {max_length} are allowed")
    lines = value.split("\n") if multiline else [value]
    for line in lines:
        bad = next((ch for ch in line if not ch.isprintable() and not (multiline and ch in "\t\r")), None)
        if bad is not None:
            raise SpecError(f"{where}: {what} contains the control or non-printable character {bad!r}"
                            + ("" if multiline else "; it must be one line"))
    if code_safe and ('"' in value or "\\" in value):
        raise SpecError(f"{where}: {what} may not contain a double quote or a backslash (it is copied into "
                        f"the generated module's docstring), got {value!r}")
    return value


def _check_name(name, where, what):
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise SpecError(f"{where}: {what} {name!r} is not a valid name (ASCII letters, digits, _; starts with "
                        "a letter)")
    if len(name) > MAX_NAME_LENGTH:
        raise SpecError(f"{where}: {what} name is {len(name)} characters long; at most {MAX_NAME_LENGTH}")
    if keyword.iskeyword(name) or name in reserved_names():
        raise SpecError(f"{where}: {what} {name!r} is a reserved word (a Python keyword or builtin, or a "
                        "name the generated code uses); rename it")
    if name.startswith("d_") or name.endswith(("_prev", "_next", "_all")):
        raise SpecError(f"{where}: {what} {name!r}: names starting with d_ or ending in _prev/_next/_all "
                        "are reserved for the generated code's adjoints")


class _Lines:
    """Line numbers of a spec file's keys and equations (tomllib reports none), best effort but never
    absent: when a line cannot be told, the line of the enclosing key or table is named instead."""

    _HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_\"'. -]+?)\s*\]\s*(?:#.*)?\Z")
    _KEY = re.compile(r"\s*(?:\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+))\s*=")

    def __init__(self, source: str):
        self.lines = source.split("\n")
        self.keys: dict[tuple[str, str], int] = {}
        table = ""
        for number, text in enumerate(self.lines, 1):
            header = self._HEADER.match(text)
            if header:
                table = header.group(1).strip("\"'")
                self.keys.setdefault((table, ""), number)
                continue
            key = self._KEY.match(text)
            if key:
                self.keys.setdefault((table, next(g for g in key.groups() if g is not None)), number)

    def key(self, table: str, key: str = "") -> int:
        return self.keys.get((table, key)) or self.keys.get((table, "")) or self.keys.get(("", "equations"), 0) or 1

    def equations(self, value_lines: list[tuple[int, str]]) -> list[int]:
        """Line of each (index in the equations text, text) pair."""
        start = self.key("", "equations")
        opening = self.lines[start - 1] if 0 < start <= len(self.lines) else ""
        after = re.split(r"'''|\"\"\"", opening, maxsplit=1)
        # a multi-line string whose first line break right after the opening quotes is dropped by TOML
        first = start + 1 if len(after) == 2 and not after[1].strip() else start
        out = []
        for index, text in value_lines:
            line = first + index
            if not (0 < line <= len(self.lines) and text.strip() in self.lines[line - 1]):
                line = next((n for n in range(max(start, 1), len(self.lines) + 1)
                             if text.strip() and text.strip() in self.lines[n - 1]), start)
            out.append(line)
        return out


def load_file(path) -> Cell:
    path = Path(path)
    where = str(path)
    if any(not ch.isprintable() for ch in where):
        raise SpecError(f"{where!r}: the path of a spec may not contain control or non-printable characters")
    source = _check_characters(_decode(_read(path, where), where), where)
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{where}, line {_toml_error_line(exc, source)}: not a valid TOML spec file: {exc}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # e.g. nesting too deep, an integer too long
        raise SpecError(f"{where}: not a valid TOML spec file: {type(exc).__name__}: {str(exc)[:200]}") from None
    return _build(data, source, path)


def _read(path: Path, where: str) -> bytes:
    """The first MAX_SPEC_BYTES + 1 bytes of a regular file. Opened without blocking and checked before
    reading: a FIFO (or a device, a directory) is refused at once instead of blocking the loader forever."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SpecError(f"{where}: cannot read spec file: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise SpecError(f"{where}: not a regular file ({kind}); give the path of a {SPEC_SUFFIX} spec file")
    with os.fdopen(fd, "rb") as fh:
        try:
            raw = fh.read(MAX_SPEC_BYTES + 1)
        except OSError as exc:
            raise SpecError(f"{where}: cannot read spec file: {exc.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{where}: spec file larger than {MAX_SPEC_BYTES} bytes")
    return raw


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SpecError(f"{where}, line {line}: not a UTF-8 text file (byte {raw[exc.start]:#04x} at offset "
                        f"{exc.start})") from None


# Characters a reader cannot see or that change how the text around them is shown: controls other than
# tab, line feed and carriage return (Cc), format characters such as the bidirectional overrides and
# isolates, zero-width spaces and the byte-order mark (Cf), line and paragraph separators (Zl, Zp),
# surrogates, private-use and unassigned code points. Refused anywhere in a spec, comments included: an
# editor would show text the parser does not read.
_INVISIBLE = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _check_characters(source: str, where: str) -> str:
    if source.isascii():
        m = _ASCII_CONTROL.search(source)
        bad = m.start() if m else None
    else:
        bad = next((k for k, ch in enumerate(source) if ch not in "\t\n\r"
                    and unicodedata.category(ch) in _INVISIBLE), None)
    if bad is None:
        return source
    ch = source[bad]
    line = source.count("\n", 0, bad) + 1
    column = bad - (source.rfind("\n", 0, bad) + 1) + 1
    name = unicodedata.name(ch, "a control character").lower()
    raise SpecError(f"{where}, line {line}: invisible or control character U+{ord(ch):04X} ({name}) at column "
                    f"{column}; such characters are refused anywhere in a spec, comments included: delete it")


_TOML_AT = re.compile(r"\(at line (\d+), column \d+\)\Z")


def _toml_error_line(exc, source: str) -> int:
    """The line tomllib names in its message ("(at line N, column M)"), or the last line for an error
    "(at end of document)"."""
    m = _TOML_AT.search(str(exc))
    return int(m.group(1)) if m else source.count("\n") + 1


def _build(data: dict, source: str, path: Path) -> Cell:
    where = str(path)
    at = _Locator(where, _Lines(source))
    name, title, summary, description = _top_level(data, where, at)
    dims = _dimensions(data, where, at)
    declared, tables = _quantities(data, at, dims)
    constants = _constants(_table(data, "constants", at("constants")), at, declared, dims)
    functions, function_args = _functions(_table(data, "functions", at("functions")), at, declared, dims, constants)
    latex = {}
    for k, v in _table(data, "latex", at("latex")).items():
        latex[k] = _check_text(v, at("latex", k), "a LaTeX name", 200)
    masks = _masks(_table(data, "masks", at("masks")), at, tables["inputs"])
    equations = _equations(data["equations"], where, at)
    _check_other_names(tables["states"], declared, dims, at)
    shapes, used, defined_at = _equation_shapes(equations, where, declared, functions, dims, tables["states"])
    output = data["output"]
    _check_usage(_Usage(where, at, tables, declared, dims, functions, function_args, constants, equations, shapes,
                        used, defined_at, output, latex))
    return Cell(
        name=name,
        title=title,
        summary=summary,
        description=description,
        path=path.resolve(),
        source=source,
        dimensions=dict(dims),
        inputs=tables["inputs"],
        states=tables["states"],
        parameters=tables["parameters"],
        functions=functions,
        equations=equations,
        output=output,
        latex=latex,
        shapes=shapes,
        function_args=function_args,
        masks=masks,
        constants=constants,
    )


class _Locator:
    """Where a declaration is, for messages: at(table, key) is 'file, line N, [table] key'; for a top-level
    key, 'file, line N, key'."""

    def __init__(self, where: str, lines: _Lines):
        self.where, self.lines = where, lines

    def __call__(self, table, key=""):
        what = f"[{table}] {key}".strip() if table else key
        return f"{self.where}, line {self.lines.key(table, key)}" + (f", {what}" if what else "")

    def equations(self, eq_texts):
        return self.lines.equations(eq_texts)


def _top_level(data: dict, where: str, at: _Locator) -> tuple[str, str, str, str]:
    """The top-level keys: none unknown, the required ones there; the cell's name, title, summary, description."""
    unknown = set(data) - TOP_KEYS
    if unknown:
        first = sorted(unknown)[0]
        raise SpecError(f"{at('', first)}: unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    for key in ("name", "equations", "output"):
        if key not in data:
            raise SpecError(f"{where}, line 1: missing required text key {key!r}")
        if not isinstance(data[key], str) or not data[key].strip():
            raise SpecError(f"{at('', key)}: {key} must be non-empty text, got {data[key]!r:.80}")
    name = data["name"]
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name) or len(name) > MAX_NAME_LENGTH:
        raise SpecError(f"{at('', 'name')}: cell name {name!r:.80} must be lower-case ASCII letters, digits and _ "
                        f"(at most {MAX_NAME_LENGTH}, starting with a letter)")
    title = _check_text(data.get("title", name), at("", "title"), "title", MAX_TITLE_LENGTH, code_safe=True)
    summary = _check_text(data.get("summary", ""), at("", "summary"), "summary", MAX_TITLE_LENGTH, code_safe=True)
    description = _check_text(data.get("description", ""), at("", "description"), "description",
                              MAX_DESCRIPTION_LENGTH, multiline=True)
    return name, title, summary, description


def _dimensions(data: dict, where: str, at: _Locator) -> dict:
    """[dimensions], and the number of declarations in all tables within the limit."""
    dims = _table(data, "dimensions", at("dimensions"))
    for d, text in dims.items():
        _check_name(d, at("dimensions", d), "dimension")
        _check_text(text, at("dimensions", d), "the description of a dimension", MAX_TITLE_LENGTH)
    count = sum(len(_table(data, k, at(k))) for k in ("dimensions", "inputs", "states", "parameters", "constants",
                                                     "functions"))
    if count > MAX_DECLARATIONS:
        raise SpecError(f"{where}: {count} declarations; at most {MAX_DECLARATIONS} are allowed")
    return dims


def _quantities(data: dict, at: _Locator, dims: dict) -> tuple[dict, dict]:
    """[inputs], [states], [parameters]: (every declared quantity by name, each table by its key)."""
    declared: dict[str, Quantity] = {}
    tables = {}
    for role, key in (("input", "inputs"), ("state", "states"), ("parameter", "parameters")):
        table = {}
        for qname, shape_text in _table(data, key, at(key)).items():
            loc = at(key, qname)
            _check_name(qname, loc, role)
            if qname in declared:
                raise SpecError(f"{loc}: {qname!r} is declared twice")
            shape = _parse_shape(shape_text, loc, dims)
            for d in shape:
                if d not in dims and d != SCALAR:
                    raise SpecError(f"{loc}: dimension {d!r} is not declared in [dimensions]")
            if role != "parameter" and len(shape) != 1:
                raise SpecError(f"{loc}: {role}s are vectors (one dimension), got {shape_text!r}")
            q = Quantity(qname, role, shape)
            declared[qname] = table[qname] = q
        tables[key] = table
    if not tables["inputs"]:
        raise SpecError(f"{at('inputs')}: [inputs] declares no input")
    if not tables["states"]:
        raise SpecError(f"{at('states')}: [states] declares no state")
    return declared, tables


def _functions(table: dict, at: _Locator, declared: dict, dims: dict, constants: dict) -> tuple[dict, dict]:
    """[functions]: (spec name -> kind, spec name -> the kind's parameters)."""
    functions, function_args = {}, {}
    for fname, kind in table.items():
        loc = at("functions", fname)
        if not isinstance(fname, str) or not IDENTIFIER.match(fname) or keyword.iskeyword(fname) \
                or len(fname) > MAX_NAME_LENGTH:
            raise SpecError(f"{loc}: {fname!r:.80} is not a valid function name")
        if fname in declared:
            raise SpecError(f"{loc}: {fname!r} is already declared as a {declared[fname].role}")
        if fname in dims:
            raise SpecError(f"{loc}: {fname!r} is already declared as a dimension")
        functions[fname], function_args[fname] = _function_kind(kind, loc, constants)
    return functions, function_args


def _function_kind(kind, loc: str, constants: dict) -> tuple[str, tuple]:
    """One function's declaration: "kind", or { kind = "clip", bound = 3 } for a kind with parameters."""
    from .functions import KINDS as FUNCTIONS  # the function kinds (spec/functions.py)

    known = sorted(k for k, f in FUNCTIONS.items() if f.declarable)
    args = ()
    if isinstance(kind, dict):  # a function with constant parameters: { kind = "clip", bound = 3 }
        decl = dict(kind)
        kind = decl.pop("kind", None)
        if not isinstance(kind, str) or kind not in FUNCTIONS or not FUNCTIONS[kind].declarable:
            raise SpecError(f"{loc}: unknown function kind {kind!r:.80}; known: {known}")
        wanted = FUNCTIONS[kind].parameters
        if set(decl) != set(wanted):
            raise SpecError(f"{loc}: kind {kind!r} takes exactly the parameters "
                            f"{list(wanted)}, got {sorted(decl)}")
        args = tuple(_function_parameter(decl[pname], pname, loc, constants) for pname in wanted)
    elif not isinstance(kind, str) or kind not in FUNCTIONS or not FUNCTIONS[kind].declarable:
        raise SpecError(f"{loc}: unknown function kind {kind!r:.80}; known: {known}")
    elif FUNCTIONS[kind].parameters:
        raise SpecError(f"{loc}: kind {kind!r} needs its parameters: "
                        f"{{ kind = \"{kind}\", {', '.join(f'{p} = ...' for p in FUNCTIONS[kind].parameters)} }}")
    return kind, args


def _masks(table: dict, at: _Locator, inputs: dict) -> dict:
    """[masks]: input name -> {"p", "values", "time"}."""
    masks = {}
    for mname, decl in table.items():
        loc = at("masks", mname)
        if mname not in inputs:
            raise SpecError(f"{loc}: a mask is one of the [inputs]; {mname!r} is not declared there")
        if not isinstance(decl, dict) or set(decl) != {"p", "values", "time"}:
            raise SpecError(f"{loc}: expected {{ p = ..., values = \"inverted\" | \"binary\", "
                            f"time = \"per_step\" | \"fixed\" }}, got {decl!r:.80}")
        p = decl["p"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
            raise SpecError(f"{loc}: p (the probability that an entry is dropped) must be in (0, 1), got {p!r:.40}")
        if decl["values"] not in MASK_VALUES:
            raise SpecError(f"{loc}: values must be one of {list(MASK_VALUES)}, got {decl['values']!r:.40}")
        if decl["time"] not in MASK_TIMES:
            raise SpecError(f"{loc}: time must be one of {list(MASK_TIMES)}, got {decl['time']!r:.40}")
        masks[mname] = {"p": float(p), "values": decl["values"], "time": decl["time"]}
    return masks


def _equations(text: str, where: str, at: _Locator) -> list[Equation]:
    """The equations parsed, comments and blank lines dropped, each knowing its line in the file."""
    text_lines = text.split("\n")
    eq_texts = [(i, raw.split("#", 1)[0]) for i, raw in enumerate(text_lines)]
    eq_texts = [(i, code) for i, code in eq_texts if code.strip()]
    if len(eq_texts) > MAX_EQUATIONS:
        raise SpecError(f"{at('', 'equations')}: {len(eq_texts)} equations; at most {MAX_EQUATIONS} are allowed")
    line_numbers = at.equations(eq_texts)
    equations = []
    for (_, text), line in zip(eq_texts, line_numbers, strict=True):
        equations.append(parse_equation(text, f"{where}, line {line}, equation '{_shown(text.strip())}'", line))
    return equations


def _check_other_names(states: dict, declared: dict, dims: dict, at: _Locator) -> None:
    """No declaration takes a state's initial-value name (s0), no dimension a quantity's name."""
    for s in states:
        if f"{s}0" in declared or f"{s}0" in dims:
            raise SpecError(f"{at('states', s)}: {s}0 is the name of state {s!r}'s initial value; rename {s}0")
    for d in dims:
        if d in declared:
            raise SpecError(f"{at('dimensions', d)}: {d!r} is both a dimension and a {declared[d].role}")


def _equation_shapes(equations, where, declared, functions, dims, states) -> tuple[dict, set, dict]:
    """Each equation's left-hand side checked and its shape inferred, in order. Returns (shapes, the names
    read, the first equation defining each name)."""
    defined_at = {}  # name -> the first equation defining it, to explain a use before definition
    for eq in equations:
        defined_at.setdefault(eq.lhs, eq)
    ctx = _ShapeContext(declared, {}, functions, set(), defined_at)
    shapes = ctx.shapes
    for eq in equations:
        loc = _loc(where, eq)
        if eq.lhs in declared and declared[eq.lhs].role != "state":
            raise SpecError(f"{loc}: {eq.lhs!r} is declared as a {declared[eq.lhs].role} and cannot be defined")
        if eq.lhs in functions:
            raise SpecError(f"{loc}: {eq.lhs!r} is a function name")
        if eq.lhs in shapes:
            raise SpecError(f"{loc}: {eq.lhs!r} is defined twice (first on line {defined_at[eq.lhs].line})")
        _check_name(eq.lhs, loc, "quantity")
        if eq.lhs in dims or any(eq.lhs == f"{st}0" for st in states):
            raise SpecError(f"{loc}: {eq.lhs!r} is already a dimension or an initial-state name")
        shape = _infer(eq.rhs, loc, ctx)
        if shape is None or len(shape) != 1:
            raise SpecError(f"{loc}: the right-hand side must be a vector, got "
                            f"{'a scalar' if shape is None else 'a matrix'}")
        if eq.lhs in declared and declared[eq.lhs].shape != shape:
            raise SpecError(f"{loc}: state {eq.lhs!r} is declared with shape {declared[eq.lhs].shape} "
                            f"but its equation gives {shape}")
        shapes[eq.lhs] = shape
    return shapes, ctx.used, defined_at


@dataclass
class _Usage:
    """What the usage checks read: the declarations, the equations and what they defined and read."""

    where: str
    at: _Locator
    tables: dict
    declared: dict
    dims: dict
    functions: dict
    function_args: dict
    constants: dict
    equations: list
    shapes: dict
    used: set
    defined_at: dict
    output: str
    latex: dict


def _check_usage(u: _Usage) -> None:
    """Every state has an equation and feeds the next step; the output is defined; everything declared or
    computed is used; the [latex] names name something of the cell."""
    at, used = u.at, u.used
    for s in u.tables["states"]:
        if s not in u.shapes:
            raise SpecError(f"{at('states', s)}: state {s!r} has no equation")
        if f"{s}[t-1]" not in used:
            raise SpecError(f"{_loc(u.where, u.defined_at[s])}: state {s!r} is never read as {s}[t-1]; a value "
                            "that does not feed the next step is an intermediate, not a state")
    if u.output not in u.shapes:
        raise SpecError(f"{at('', 'output')}: output {u.output!r:.80} is not defined by an equation")
    for key in ("inputs", "parameters"):
        for qname, q in u.tables[key].items():
            if qname not in used:
                raise SpecError(f"{at(key, qname)}: {q.role} {qname!r} is declared but never used")
    for eq in u.equations:
        if eq.lhs not in used and eq.lhs not in u.tables["states"] and eq.lhs != u.output:
            raise SpecError(f"{_loc(u.where, eq)}: {eq.lhs!r} is computed but never used")
    _check_declarations_used(u)


def _check_declarations_used(u: _Usage) -> None:
    """Functions, constants (in an equation or as a function's parameter) and dimensions are used; [latex]
    names a quantity or function of the cell."""
    at, used = u.at, u.used
    for fname in u.functions:
        if fname not in used:
            raise SpecError(f"{at('functions', fname)}: function {fname!r} is declared but never used")
    bounds = {a for fname in u.functions if fname in used for a in u.function_args[fname] if isinstance(a, str)}
    for cname in u.constants:
        if cname not in used and cname not in bounds:
            raise SpecError(f"{at('constants', cname)}: constant {cname!r} is declared but never used (in an "
                            "equation or as a function's parameter)")
    dims_used = {d for q in u.declared.values() for d in q.shape}
    for d in u.dims:
        if d not in dims_used:
            raise SpecError(f"{at('dimensions', d)}: dimension {d!r} is declared but no shape uses it")
    for k in u.latex:
        if k not in u.declared and k not in u.shapes and k not in u.functions:
            raise SpecError(f"{at('latex', k)}: {k!r:.80} is not a quantity or function of this cell")


def _constants(table: dict, at, declared: dict, dims: dict) -> dict:
    """[constants]: `name = number` or `name = { value = number, doc = "..." }`; each one is added to ``declared``
    (role "constant", a scalar) so that no other declaration or equation can take its name."""
    out = {}
    for cname, decl in table.items():
        loc = at("constants", cname)
        _check_name(cname, loc, "constant")
        if cname in declared or cname in dims:
            what = declared[cname].role if cname in declared else "dimension"
            raise SpecError(f"{loc}: {cname!r} is already declared as a {what}")
        doc = ""
        if isinstance(decl, dict):
            extra = sorted(set(decl) - {"value", "doc"})
            if "value" not in decl or extra:
                raise SpecError(f"{loc}: expected {cname} = 0.5 or {{ value = 0.5, doc = \"...\" }}, got keys "
                                f"{sorted(decl)}")
            doc = _check_text(decl.get("doc", ""), loc, "the doc of a constant", MAX_TITLE_LENGTH, code_safe=True)
            decl = decl["value"]
        if isinstance(decl, bool) or not isinstance(decl, (int, float)) or not abs(decl) < MAX_CONSTANT:
            raise SpecError(f"{loc}: the value of a constant is a number below {MAX_CONSTANT:g} in magnitude, got "
                            f"{decl!r:.80}")
        out[cname] = Constant(cname, float(decl), doc)
        declared[cname] = Quantity(cname, "constant", ())
    return out


def _function_parameter(value, pname, loc, constants: dict):
    """A function's parameter (a clip's bound): a positive number (a Fraction), or the name of a constant of
    [constants] whose default is positive (the name; the constant is then marked positive)."""
    if isinstance(value, str):
        if value not in constants:
            raise SpecError(f"{loc}: {pname} {value!r:.80} is not a constant declared in [constants] "
                            f"({', '.join(constants) or 'none declared'}); declare it there or give a number")
        c = constants[value]
        if not 1e-6 <= c.value < MAX_CONSTANT:
            raise SpecError(f"{loc}: {pname} is the constant {value!r}, whose value {c.value:g} must be a positive "
                            "number from 1e-6 to below 1e6")
        constants[value] = Constant(c.name, c.value, c.doc, positive=True)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (1e-6 <= value < MAX_CONSTANT):
        raise SpecError(f"{loc}: {pname} must be a positive number from 1e-6 to below 1e6 or the name of a "
                        f"constant, got {value!r:.80}")
    return Fraction(str(value))


def _shown(text: str) -> str:
    """Text for a message: control and other non-printable characters escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _loc(where, eq: Equation) -> str:
    return f"{where}, line {eq.line}, equation '{eq.text}'"


@dataclass
class _ShapeContext:
    """What shape inference reads (the declarations, the shapes defined so far, the functions, the equations
    defining each name) and records (the names read; a state's previous value as 's[t-1]')."""

    declared: dict
    shapes: dict
    functions: dict
    used: set
    defined_at: dict | None = None


def _infer(node, loc, ctx: _ShapeContext):
    """Shape of an expression: None for a scalar, (n,) for a vector, (m, n) for a matrix parameter."""
    if isinstance(node, Num):
        return None
    if isinstance(node, Name):
        return _infer_name(node, loc, ctx)
    if isinstance(node, Call):
        return _infer_call(node, loc, ctx)
    if isinstance(node, Neg):
        return _vector_or_scalar(_infer(node.operand, loc, ctx), loc, "-")
    if isinstance(node, Pow):
        return _vector_or_scalar(_infer(node.base, loc, ctx), loc, "^")
    if isinstance(node, BinOp):
        if node.op == "@":
            return _infer_matmul(node, loc, ctx)
        return _infer_elementwise(node, loc, ctx)
    raise SpecError(f"{loc}: unsupported expression")  # pragma: no cover - the parser makes no other nodes


def _infer_name(node, loc, ctx: _ShapeContext):
    declared, n = ctx.declared, node.name
    if node.prev:
        if n not in declared or declared[n].role != "state":
            raise SpecError(f"{loc}: {n}[t-1] refers to a previous value, but {n!r} is not a declared state")
        ctx.used.add(f"{n}[t-1]")
        return declared[n].shape
    if n in ctx.functions:
        raise SpecError(f"{loc}: function {n!r} is used without an argument")
    if n in ctx.shapes:
        ctx.used.add(n)
        return ctx.shapes[n]
    if n in declared:
        if declared[n].role == "constant":
            ctx.used.add(n)
            return None  # a number: broadcasts like a literal
        if declared[n].role == "state":
            raise SpecError(f"{loc}: state {n!r} is used before its equation; write {n}[t-1] for the "
                            "previous step's value")
        ctx.used.add(n)
        return declared[n].shape
    if ctx.defined_at and n in ctx.defined_at:
        raise SpecError(f"{loc}: {n!r} is used before its equation (line {ctx.defined_at[n].line}); equations are "
                        "computed in order, so a name must be defined above its first use (no cycles)")
    raise SpecError(f"{loc}: name {n!r} is not declared (inputs, states, parameters, constants) nor defined "
                  "above")


def _infer_call(node, loc, ctx: _ShapeContext):
    if node.func not in ctx.functions:
        raise SpecError(f"{loc}: call of undeclared function {node.func!r}; declare it in [functions]")
    ctx.used.add(node.func)
    shape = _infer(node.arg, loc, ctx)
    if shape is not None and len(shape) != 1:
        raise SpecError(f"{loc}: {node.func}() applies elementwise to a vector, not to a matrix")
    from .functions import KINDS

    if KINDS[ctx.functions[node.func]].reduction:
        if shape is None or shape == (SCALAR,):
            raise SpecError(f"{loc}: {node.func}() reduces a vector over its units; its argument is not a vector")
        return (SCALAR,)
    return shape


def _infer_matmul(node, loc, ctx: _ShapeContext):
    declared, left, right = ctx.declared, node.left, node.right
    if not (isinstance(left, Name) and not left.prev and left.name in declared
            and declared[left.name].role == "parameter" and len(declared[left.name].shape) == 2):
        raise SpecError(f"{loc}: the left operand of @ must be a matrix parameter")
    if not isinstance(right, Name):
        raise SpecError(f"{loc}: the right operand of @ must be a name; define the vector in its own equation")
    rows, cols = declared[left.name].shape
    ctx.used.add(left.name)
    rshape = _infer(right, loc, ctx)
    if rshape is None or len(rshape) != 1 or rshape[0] != cols:
        raise SpecError(f"{loc}: {left.name} @ {right.name}{'[t-1]' if right.prev else ''}: "
                        f"{left.name} is {rows} x {cols} but the vector is {_shape_text(rshape)}")
    return (rows,)


def _infer_elementwise(node, loc, ctx: _ShapeContext):
    ls = _vector_or_scalar(_infer(node.left, loc, ctx), loc, node.op)
    rs = _vector_or_scalar(_infer(node.right, loc, ctx), loc, node.op)
    if ls is not None and rs is not None and ls != rs:
        if ls == (SCALAR,) or rs == (SCALAR,):  # one value per sample broadcasts over the units
            return rs if ls == (SCALAR,) else ls
        op = {"*": "product (* or ⊙)", "/": "division (/)", "+": "sum (+)",
              "-": "difference (-)"}.get(node.op, node.op)
        raise SpecError(f"{loc}: elementwise {op} of a vector of {_shape_text(ls)} and a vector of "
                        f"{_shape_text(rs)}: both sides need the same size (or one value per sample)")
    return ls if ls is not None else rs


def _shape_text(shape) -> str:
    """A shape as the spec writes it: 'H', 'H x D', or 'one value per sample'."""
    if shape is None:
        return "unknown size"
    if shape == (SCALAR,):
        return "one value per sample"
    return " x ".join(shape)


def _vector_or_scalar(shape, loc, op):
    if shape is not None and len(shape) != 1:
        raise SpecError(f"{loc}: a matrix parameter can only appear as the left operand of @ (near {op!r})")
    return shape
