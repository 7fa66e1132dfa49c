"""Reading a cell's spec file (TOML) into a validated :class:`Cell`.

A spec file declares dimensions, the role and shape of every name (input, state, parameter), the
functions the equations may call, and the equations of one time step. Everything is checked here:
unknown keys, undeclared or unused names, redefinitions, use before definition, shape mismatches.
Errors name the file, the line and the equation.
"""

from __future__ import annotations

import keyword
import re
import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from .language import (
    IDENTIFIER,
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
MAX_EQUATIONS = 200

# Names the generated code uses for itself; a spec may not use them for its own quantities.
RESERVED = {"np", "t", "T", "B", "params", "cache", "dy", "grads", "sigmoid", "tanh", "identity",
            "Forward", "forward", "backward", "validate"}

TOP_KEYS = {"name", "title", "summary", "description", "output", "equations", "dimensions", "inputs",
            "states", "parameters", "functions", "latex"}


@dataclass(frozen=True)
class Quantity:
    name: str
    role: str  # "input" | "state" | "parameter" | "intermediate"
    shape: tuple[str, ...]  # symbolic dims, () for a scalar


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
    function_args: dict[str, tuple] = field(default_factory=dict)  # spec name -> constant parameters

    def quantity(self, name: str) -> Quantity:
        for table in (self.inputs, self.states, self.parameters):
            if name in table:
                return table[name]
        return Quantity(name, "intermediate", self.shapes[name])

    @property
    def relpath(self) -> str:
        """Path shown in generated headers: relative to the repository for built-in specs."""
        try:
            return "spec/" + self.path.relative_to(SPEC_DIR).as_posix()
        except ValueError:
            return self.path.name


def _parse_shape(text, where) -> tuple[str, ...]:
    if not isinstance(text, str):
        raise SpecError(f"{where}: a shape is a string such as \"H\" or \"H x D\", got {text!r}")
    parts = [p.strip() for p in re.split(r"\s*[x×]\s*", text.strip())] if text.strip() else []
    if not 1 <= len(parts) <= 2 or not all(IDENTIFIER.match(p) or p == SCALAR for p in parts):
        raise SpecError(f"{where}: bad shape {text!r}; write \"H\" for a vector or \"H x D\" for a matrix")
    return tuple(parts)


def _table(data, key, where) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise SpecError(f"{where}: [{key}] must be a table")
    return value


def _check_name(name, where, what):
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise SpecError(f"{where}: {what} {name!r} is not a valid name (letters, digits, _; starts with a letter)")
    if keyword.iskeyword(name) or name in RESERVED or name.startswith("__"):
        raise SpecError(f"{where}: {what} {name!r} is a reserved word")
    if name.startswith("d_") or name.endswith(("_prev", "_next", "_all")):
        raise SpecError(f"{where}: {what} {name!r}: names starting with d_ or ending in _prev/_next/_all "
                        "are reserved for the generated code's adjoints")


def _locate_lines(source: str, eq_lines: list[str]) -> list[int]:
    """Best-effort line numbers of the equation lines in the file text."""
    file_lines = source.splitlines()
    start = next((i for i, l in enumerate(file_lines) if l.lstrip().startswith("equations")), 0)
    out, cursor = [], start
    for text in eq_lines:
        want = text.strip()
        found = 0
        for j in range(cursor, len(file_lines)):
            if want and want in file_lines[j]:
                found, cursor = j + 1, j + 1
                break
        out.append(found)
    return out


def load_file(path) -> Cell:
    path = Path(path)
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{where}: cannot read spec file: {exc.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{where}: spec file larger than {MAX_SPEC_BYTES} bytes")
    try:
        source = raw.decode("utf-8")
        data = tomllib.loads(source)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{where}: not a valid TOML spec file: {exc}") from None
    return _build(data, source, path)


def _build(data: dict, source: str, path: Path) -> Cell:
    from lstm_spec.derivations.functions import FUNCTIONS  # the function kinds the derivation knows

    where = str(path)
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    for key in ("name", "equations", "output"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise SpecError(f"{where}: missing required text key {key!r}")
    name = data["name"]
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise SpecError(f"{where}: cell name {name!r} must be lower-case letters, digits and _")

    dims = _table(data, "dimensions", where)
    for d in dims:
        _check_name(d, f"{where} [dimensions]", "dimension")
    declared: dict[str, Quantity] = {}
    tables = {}
    for role, key in (("input", "inputs"), ("state", "states"), ("parameter", "parameters")):
        table = {}
        for qname, shape_text in _table(data, key, where).items():
            _check_name(qname, f"{where} [{key}]", role)
            if qname in declared:
                raise SpecError(f"{where} [{key}]: {qname!r} is declared twice")
            shape = _parse_shape(shape_text, f"{where} [{key}] {qname}")
            for d in shape:
                if d not in dims and d != SCALAR:
                    raise SpecError(f"{where} [{key}] {qname}: dimension {d!r} is not declared in [dimensions]")
            if role != "parameter" and len(shape) != 1:
                raise SpecError(f"{where} [{key}] {qname}: {role}s are vectors (one dimension), got {shape_text!r}")
            q = Quantity(qname, role, shape)
            declared[qname] = table[qname] = q
        tables[key] = table
    if not tables["inputs"]:
        raise SpecError(f"{where}: [inputs] declares no input")
    if not tables["states"]:
        raise SpecError(f"{where}: [states] declares no state")

    functions, function_args = {}, {}
    for fname, kind in _table(data, "functions", where).items():
        if not isinstance(fname, str) or not IDENTIFIER.match(fname) or keyword.iskeyword(fname):
            raise SpecError(f"{where} [functions]: {fname!r} is not a valid function name")
        if fname in declared:
            raise SpecError(f"{where} [functions]: {fname!r} is already declared as a {declared[fname].role}")
        args = ()
        if isinstance(kind, dict):  # a function with constant parameters: { kind = "clip", bound = 3 }
            decl = dict(kind)
            kind = decl.pop("kind", None)
            if kind not in FUNCTIONS or not FUNCTIONS[kind].declarable:
                raise SpecError(f"{where} [functions] {fname}: unknown function kind {kind!r}")
            wanted = FUNCTIONS[kind].parameters
            if set(decl) != set(wanted):
                raise SpecError(f"{where} [functions] {fname}: kind {kind!r} takes exactly the parameters "
                                f"{list(wanted)}, got {sorted(decl)}")
            values = []
            for pname in wanted:
                v = decl[pname]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < 1e6):
                    raise SpecError(f"{where} [functions] {fname}: {pname} must be a positive number below 1e6, got {v!r}")
                values.append(Fraction(str(v)))
            args = tuple(values)
        elif kind not in FUNCTIONS or not FUNCTIONS[kind].declarable:
            raise SpecError(f"{where} [functions] {fname}: unknown function kind {kind!r}; "
                            f"known: {sorted(k for k, f in FUNCTIONS.items() if f.declarable)}")
        elif FUNCTIONS[kind].parameters:
            raise SpecError(f"{where} [functions] {fname}: kind {kind!r} needs its parameters: "
                            f"{{ kind = \"{kind}\", {', '.join(f'{p} = ...' for p in FUNCTIONS[kind].parameters)} }}")
        functions[fname] = kind
        function_args[fname] = args

    latex = {}
    for k, v in _table(data, "latex", where).items():
        if not isinstance(v, str) or len(v) > 200:
            raise SpecError(f"{where} [latex] {k}: must be a short string")
        latex[k] = v

    text_lines = data["equations"].splitlines()
    eq_texts = [(i, l.split("#", 1)[0]) for i, l in enumerate(text_lines)]
    eq_texts = [(i, l) for i, l in eq_texts if l.strip()]
    if len(eq_texts) > MAX_EQUATIONS:
        raise SpecError(f"{where}: more than {MAX_EQUATIONS} equations")
    line_numbers = _locate_lines(source, [l for _, l in eq_texts])
    equations = []
    for (_, text), line in zip(eq_texts, line_numbers):
        loc = f"{where}, line {line}, equation '{text.strip()}'" if line else f"{where}, equation '{text.strip()}'"
        equations.append(parse_equation(text, loc, line))

    for s in tables["states"]:
        if f"{s}0" in declared or f"{s}0" in dims:
            raise SpecError(f"{where}: {s}0 is the name of state {s!r}'s initial value; rename {s}0")
    for d in dims:
        if d in declared:
            raise SpecError(f"{where}: {d!r} is both a dimension and a {declared[d].role}")

    shapes: dict[str, tuple[str, ...]] = {}
    used: set[str] = set()
    for eq in equations:
        loc = _loc(where, eq)
        if eq.lhs in declared and declared[eq.lhs].role != "state":
            raise SpecError(f"{loc}: {eq.lhs!r} is declared as a {declared[eq.lhs].role} and cannot be defined")
        if eq.lhs in functions:
            raise SpecError(f"{loc}: {eq.lhs!r} is a function name")
        if eq.lhs in shapes:
            raise SpecError(f"{loc}: {eq.lhs!r} is defined twice")
        _check_name(eq.lhs, loc, "quantity")
        if eq.lhs in dims or any(eq.lhs == f"{st}0" for st in tables["states"]):
            raise SpecError(f"{loc}: {eq.lhs!r} is already a dimension or an initial-state name")
        shape = _infer(eq.rhs, loc, declared, shapes, functions, used)
        if shape is None or len(shape) != 1:
            raise SpecError(f"{loc}: the right-hand side must be a vector, got "
                            f"{'a scalar' if shape is None else 'a matrix'}")
        if eq.lhs in declared and declared[eq.lhs].shape != shape:
            raise SpecError(f"{loc}: state {eq.lhs!r} is declared with shape {declared[eq.lhs].shape} "
                            f"but its equation gives {shape}")
        shapes[eq.lhs] = shape

    output = data["output"]
    for s in tables["states"]:
        if s not in shapes:
            raise SpecError(f"{where}: state {s!r} has no equation")
        if f"{s}[t-1]" not in used:
            raise SpecError(f"{where}: state {s!r} is never read as {s}[t-1]; a value that does not feed "
                            "the next step is an intermediate, not a state")
    if output not in shapes:
        raise SpecError(f"{where}: output {output!r} is not defined by an equation")
    for qname, q in declared.items():
        if q.role != "state" and qname not in used:
            raise SpecError(f"{where}: {q.role} {qname!r} is declared but never used")
    for eq in equations:
        if eq.lhs not in used and eq.lhs not in tables["states"] and eq.lhs != output:
            raise SpecError(f"{_loc(where, eq)}: {eq.lhs!r} is computed but never used")
    for fname in functions:
        if fname not in used:
            raise SpecError(f"{where} [functions]: function {fname!r} is declared but never used")

    return Cell(
        name=name,
        title=str(data.get("title", name)),
        summary=str(data.get("summary", "")),
        description=str(data.get("description", "")),
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
    )


def _loc(where, eq: Equation) -> str:
    return f"{where}, line {eq.line}, equation '{eq.text}'" if eq.line else f"{where}, equation '{eq.text}'"


def _infer(node, loc, declared, shapes, functions, used):
    """Shape of an expression: None for a scalar, (n,) for a vector, (m, n) for a matrix parameter."""
    if isinstance(node, Num):
        return None
    if isinstance(node, Name):
        n = node.name
        if node.prev:
            if n not in declared or declared[n].role != "state":
                raise SpecError(f"{loc}: {n}[t-1] refers to a previous value, but {n!r} is not a declared state")
            used.add(f"{n}[t-1]")
            return declared[n].shape
        if n in functions:
            raise SpecError(f"{loc}: function {n!r} is used without an argument")
        if n in shapes:
            used.add(n)
            return shapes[n]
        if n in declared:
            if declared[n].role == "state":
                raise SpecError(f"{loc}: state {n!r} is used before its equation; write {n}[t-1] for the "
                                "previous step's value")
            used.add(n)
            return declared[n].shape
        raise SpecError(f"{loc}: name {n!r} is not declared (inputs, states, parameters) nor defined above")
    if isinstance(node, Call):
        if node.func not in functions:
            raise SpecError(f"{loc}: call of undeclared function {node.func!r}; declare it in [functions]")
        used.add(node.func)
        shape = _infer(node.arg, loc, declared, shapes, functions, used)
        if shape is not None and len(shape) != 1:
            raise SpecError(f"{loc}: {node.func}() applies elementwise to a vector, not to a matrix")
        from lstm_spec.derivations.functions import FUNCTIONS

        if FUNCTIONS[functions[node.func]].reduction:
            if shape is None or shape == (SCALAR,):
                raise SpecError(f"{loc}: {node.func}() reduces a vector over its units; its argument is not a vector")
            return (SCALAR,)
        return shape
    if isinstance(node, Neg):
        return _vector_or_scalar(_infer(node.operand, loc, declared, shapes, functions, used), loc, "-")
    if isinstance(node, Pow):
        return _vector_or_scalar(_infer(node.base, loc, declared, shapes, functions, used), loc, "^")
    if isinstance(node, BinOp):
        if node.op == "@":
            left, right = node.left, node.right
            if not (isinstance(left, Name) and not left.prev and left.name in declared
                    and declared[left.name].role == "parameter" and len(declared[left.name].shape) == 2):
                raise SpecError(f"{loc}: the left operand of @ must be a matrix parameter")
            if not isinstance(right, Name):
                raise SpecError(f"{loc}: the right operand of @ must be a name; define the vector in its own equation")
            rows, cols = declared[left.name].shape
            used.add(left.name)
            rshape = _infer(right, loc, declared, shapes, functions, used)
            if rshape is None or len(rshape) != 1 or rshape[0] != cols:
                raise SpecError(f"{loc}: {left.name} @ {right.name}{'[t-1]' if right.prev else ''}: "
                                f"{left.name} is {rows} x {cols} but the vector has shape {rshape}")
            return (rows,)
        ls = _vector_or_scalar(_infer(node.left, loc, declared, shapes, functions, used), loc, node.op)
        rs = _vector_or_scalar(_infer(node.right, loc, declared, shapes, functions, used), loc, node.op)
        if ls is not None and rs is not None and ls != rs:
            if ls == (SCALAR,) or rs == (SCALAR,):  # one value per sample broadcasts over the units
                return rs if ls == (SCALAR,) else ls
            raise SpecError(f"{loc}: elementwise {node.op!r} between shapes {ls} and {rs}")
        return ls if ls is not None else rs
    raise SpecError(f"{loc}: unsupported expression")  # pragma: no cover - the parser makes no other nodes


def _vector_or_scalar(shape, loc, op):
    if shape is not None and len(shape) != 1:
        raise SpecError(f"{loc}: a matrix parameter can only appear as the left operand of @ (near {op!r})")
    return shape
