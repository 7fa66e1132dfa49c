"""The expression language of spec files: a tokenizer and a recursive-descent parser.

Spec files are untrusted text. Nothing in them is ever evaluated as Python: this module turns an
equation such as ``f = sigma(W_f @ x + U_f @ h[t-1] + b_f)`` into a small tree of the node classes below,
accepting only this grammar::

    equation := NAME '=' expr
    expr     := term (('+' | '-') term)*
    term     := unary (('*' | '⊙' | '/' | '@') unary)*
    unary    := '-' unary | power
    power    := atom ('^' INTEGER)?
    atom     := NUMBER | NAME | NAME '[' 't' '-' '1' ']' | NAME '(' expr ')' | '(' expr ')'

``*`` and ``⊙`` are both the elementwise (Hadamard) product, ``@`` is a matrix-vector product,
``NAME[t-1]`` is the previous time step's value of a state, ``NAME(...)`` applies a declared function.
Exponents are small non-negative integers, and the size, nesting depth and polynomial degree of an
equation are bounded (checked without recursion, before anything else looks at the tree), so a hostile
file can make neither the parser nor the derivation (SymPy) run away. Only ASCII letters, digits and
whitespace are accepted: a Unicode digit or space is an error, not a silent equivalent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_DEPTH = 32  # nesting of the expression tree (parentheses, calls, and chains of + - * /)
MAX_EXPONENT = 8  # of one '^'
MAX_DEGREE = 16  # polynomial degree of a right-hand side, e.g. (a * b)^8 has degree 16
MAX_NODES = 200  # operators, names, numbers and calls in one right-hand side
MAX_EQUATION_LENGTH = 2000
MAX_NAME_LENGTH = 64
MAX_NUMBER_LENGTH = 30

IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z", re.ASCII)


class SpecError(ValueError):
    """A spec file is malformed. The message names the file, line and equation."""


# ----------------------------------------------------------------------------------------- AST nodes
@dataclass(frozen=True)
class Num:
    value: Fraction


@dataclass(frozen=True)
class Name:
    name: str
    prev: bool = False  # True for NAME[t-1]


@dataclass(frozen=True)
class Call:
    func: str
    arg: object


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * / @
    left: object
    right: object


@dataclass(frozen=True)
class Neg:
    operand: object


@dataclass(frozen=True)
class Pow:
    base: object
    exponent: int


@dataclass(frozen=True)
class Equation:
    lhs: str
    rhs: object
    text: str
    line: int  # 1-based line in the spec file (0 when unknown)


# ----------------------------------------------------------------------------------------- tokenizer
_TOKEN = re.compile(
    r"""[ \t]*(?:
        (?P<number>\d+(?:\.\d+)?)
      | (?P<name>[A-Za-z][A-Za-z0-9_]*)
      | (?P<op>\*\*|[-+*/@^()\[\]=]|⊙)
    )""",
    re.VERBOSE | re.ASCII,  # \d: ASCII digits only; whitespace is a space or a tab, nothing else
)


def tokenize(text: str, where: str) -> list[tuple[str, str, int]]:
    tokens = []
    pos = 0
    text = text.rstrip(" \t")
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            bad = text[pos:].lstrip(" \t")[:1]
            col = len(text) - len(text[pos:].lstrip(" \t")) + 1
            raise SpecError(f"{where}: unexpected character {bad!r} at column {col}")
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "op" and value == "**":
            raise SpecError(f"{where}: use '^' for powers, not '**'")
        if kind == "name" and len(value) > MAX_NAME_LENGTH:
            raise SpecError(f"{where}: name at column {m.start(kind) + 1} is {len(value)} characters long; "
                            f"at most {MAX_NAME_LENGTH} are allowed")
        tokens.append((kind, value, m.start(kind) + 1))
        pos = m.end()
    tokens.append(("end", "", len(text) + 1))
    return tokens


# ----------------------------------------------------------------------------------------- parser
class _Parser:
    def __init__(self, text: str, where: str):
        self.where = where
        self.tokens = tokenize(text, where)
        self.i = 0
        self.depth = 0

    def peek(self):
        return self.tokens[self.i]

    def take(self):
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, value):
        kind, got, col = self.take()
        if got != value:
            shown = got if kind != "end" else "end of equation"
            raise SpecError(f"{self.where}: expected {value!r} at column {col}, got {shown!r}")

    def fail(self, message):
        raise SpecError(f"{self.where}: {message}")

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"expression nested deeper than {MAX_DEPTH} levels")

    def equation(self):
        kind, lhs, col = self.take()
        if kind != "name":
            self.fail(f"an equation starts with the name it defines (column {col})")
        self.expect("=")
        rhs = self.expr()
        kind, value, col = self.peek()
        if kind != "end":
            self.fail(f"unexpected {value!r} at column {col}")
        return lhs, rhs

    def expr(self):
        self.enter()
        node = self.term()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            node = BinOp(op, node, self.term())
        self.depth -= 1
        return node

    def term(self):
        node = self.unary()
        while self.peek()[1] in ("*", "⊙", "/", "@"):
            op = self.take()[1]
            node = BinOp("*" if op == "⊙" else op, node, self.unary())
        return node

    def unary(self):
        if self.peek()[1] == "-":
            self.take()
            self.enter()
            node = Neg(self.unary())
            self.depth -= 1
            return node
        return self.power()

    def power(self):
        base = self.atom()
        if self.peek()[1] == "^":
            self.take()
            kind, value, col = self.take()
            if kind != "number" or "." in value:
                self.fail(f"the exponent after '^' must be a whole number (column {col})")
            if len(value) > MAX_NUMBER_LENGTH or int(value) > MAX_EXPONENT:
                self.fail(f"exponent {value} is larger than the allowed {MAX_EXPONENT} (column {col})")
            return Pow(base, int(value))
        return base

    def atom(self):
        kind, value, col = self.take()
        if kind == "number":
            if len(value) > MAX_NUMBER_LENGTH:
                self.fail(f"number literal at column {col} has {len(value)} characters; at most "
                          f"{MAX_NUMBER_LENGTH} are allowed")
            return Num(Fraction(value))
        if kind == "name":
            nxt = self.peek()[1]
            if nxt == "(":
                self.take()
                arg = self.expr()
                self.expect(")")
                return Call(value, arg)
            if nxt == "[":
                self.take()
                for want in ("t", "-", "1"):
                    k, got, c = self.take()
                    if got != want:
                        self.fail(f"only NAME[t-1] may follow a name in brackets (column {c})")
                self.expect("]")
                return Name(value, prev=True)
            return Name(value)
        if value == "(":
            self.enter()
            arg = self.expr()
            self.depth -= 1
            self.expect(")")
            return arg
        shown = value if kind != "end" else "end of equation"
        self.fail(f"unexpected {shown!r} at column {col}")


def parse_equation(text: str, where: str, line: int = 0) -> Equation:
    """Parse one ``lhs = expression`` line. ``where`` names the file and line for error messages."""
    if not isinstance(text, str):
        raise SpecError(f"{where}: an equation is text, got {type(text).__name__}")
    if len(text) > MAX_EQUATION_LENGTH:
        raise SpecError(f"{where}: equation is {len(text)} characters long; at most {MAX_EQUATION_LENGTH} "
                        "are allowed")
    lhs, rhs = _Parser(text, where).equation()
    check_size(rhs, where)
    return Equation(lhs=lhs, rhs=rhs, text=text.strip(), line=line)


def children(node) -> tuple:
    if isinstance(node, BinOp):
        return (node.left, node.right)
    if isinstance(node, Neg):
        return (node.operand,)
    if isinstance(node, Pow):
        return (node.base,)
    if isinstance(node, Call):
        return (node.arg,)
    return ()


def check_size(rhs, where: str) -> None:
    """Bound the size, depth and polynomial degree of a right-hand side, so that every later pass (shape
    inference, SymPy, simplification, code generation), most of them recursive, stays small and fast.
    Iterative: a chain of a thousand '+' is refused here, not by a RecursionError later."""
    nodes = 0
    degree: dict[int, int] = {}
    stack = [(rhs, 1, False)]  # (node, depth, children done)
    while stack:
        node, depth, done = stack.pop()
        kids = children(node)
        if not done:
            nodes += 1
            if nodes > MAX_NODES:
                raise SpecError(f"{where}: the right-hand side has more than {MAX_NODES} terms, names and "
                                "operators; split it into several equations")
            if depth > MAX_DEPTH:
                raise SpecError(f"{where}: expression nested deeper than {MAX_DEPTH} levels (long chains of "
                                "+ - * / count as nesting); split it into several equations")
            stack.append((node, depth, True))
            stack.extend((k, depth + 1, False) for k in kids)
            continue
        if isinstance(node, Num):
            d = 0
        elif isinstance(node, (Name, Call)) or (isinstance(node, BinOp) and node.op == "@"):
            d = 1  # a function value or a matrix product is one new variable per unit
        elif isinstance(node, BinOp):
            a, b = degree.pop(id(node.left)), degree.pop(id(node.right))
            d = max(a, b) if node.op in "+-" else a + b
            if node.op == "/" and isinstance(node.right, Num) and node.right.value == 0:
                raise SpecError(f"{where}: division by zero")
        elif isinstance(node, Neg):
            d = degree.pop(id(node.operand))
        else:  # Pow
            d = degree.pop(id(node.base)) * node.exponent
        for k in kids:  # a call or a matrix product does not look at its operands' degrees
            degree.pop(id(k), None)
        if d > MAX_DEGREE:
            raise SpecError(f"{where}: the right-hand side has polynomial degree {d} (powers and products "
                            f"multiply); at most {MAX_DEGREE} is allowed")
        degree[id(node)] = d


def walk(node):
    """Yield every node of an expression tree, parents before children."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, BinOp):
            stack += [n.right, n.left]
        elif isinstance(n, (Neg,)):
            stack.append(n.operand)
        elif isinstance(n, Pow):
            stack.append(n.base)
        elif isinstance(n, Call):
            stack.append(n.arg)
