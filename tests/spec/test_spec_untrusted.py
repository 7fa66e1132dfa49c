"""Spec files are untrusted input (issue 7, item 3): the loader accepts only the whitelisted grammar and
rejects everything else with a SpecError naming the file, the line and the equation (or declaration);
nothing else ever escapes, nothing runs long, and no spec text reaches Python. Each case below fails
without the protection it names; the property-based tests and the fuzz run look for what the cases
did not think of."""

import ast
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstm_spec.checks import fuzz as spec_fuzz
from lstm_spec.checks import mutants
from lstm_spec.derivations import derive
from lstm_spec.derivations.codegen import generate_module
from lstm_spec.spec import SpecError, load
from lstm_spec.spec.cells import SPEC_DIR
from lstm_spec.spec.language import MAX_DEPTH, MAX_NODES, parse_equation

from ..conftest import write_spec
from ..spec.test_spec import MINIMAL

EQS = "z = W @ x + U @ h[t-1] + b\nh = tanh(z)"
LINE_OF_H = 6  # line of 'h = ...' in MINIMAL


def body(equations=EQS, replace=None, extra=""):
    text = MINIMAL.replace(EQS, equations)
    if replace:
        assert replace[0] in text, replace
        text = text.replace(*replace)
    return text + extra


def rejected(tmp_path, text, *fragments, name="cell.toml"):
    """Load text as a spec file: it must be rejected with a SpecError naming the file and fragments."""
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    with pytest.raises(SpecError) as err:
        derive(load(path))
    message = str(err.value)
    assert str(path) in message or repr(str(path)) in message, message
    for fragment in fragments:
        assert re.search(fragment, message), (fragment, message)
    return message


def h_equation(rhs):
    """The spec with h's equation replaced: the error must name line 6 and that equation."""
    return body(f"z = W @ x + U @ h[t-1] + b\nh = {rhs}")


AT_H = rf"line {LINE_OF_H}, equation 'h = "


def balanced(leaves):
    return "z" if leaves == 1 else f"({balanced(leaves // 2)}+{balanced(leaves - leaves // 2)})"


# ----------------------------------------------------------------------------------------- grammar
@pytest.mark.parametrize("rhs, message", [
    ("tanh(z).__class__", "unexpected character '.'"),  # attribute access
    ("z.real", "unexpected character '.'"),
    ("eval(z)", "undeclared function 'eval'"),  # calls to undeclared functions
    ("__import__(z)", "unexpected character '_'"),  # dunder names
    ("tanh(z) + __class__", "unexpected character '_'"),
    ("tanh(z); import os", "unexpected character ';'"),
    ("tanh(z) if z else z", "unexpected 'if'"),
    ("lambda: z", "unexpected character ':'"),
    ("tanh(z) ^ 999999999", "larger than the allowed"),  # huge exponents
    ("tanh(z) ^ " + "9" * 5000, "equation is .* characters long"),
    ("((((z ^ 8) ^ 8) ^ 8) ^ 8)", "polynomial degree 64"),  # nested powers multiply
    ("(z * z * z * z) ^ 8", "polynomial degree 32"),
    ("tanh(z) * 1" + "0" * 40, "number literal .* at most 30"),  # huge numbers
    ("tanh(z) * ٣", "unexpected character '٣'"),  # a Unicode digit is not a digit here
    ("tanh(z) *\u00a0z", "non-printable|unexpected character"),  # nor a Unicode space a space
    ("tanh(z) * nan", "'nan' is not declared"),  # NaN and Inf are not literals
    ("tanh(z) * inf", "'inf' is not declared"),
    ("z / 0", "division by zero"),
    ("z / 0.0", "division by zero"),
    ("tanh(z) + " + "(" * 40 + "z" + ")" * 40, "nested deeper"),  # deeply nested
    ("-" * 100 + "z", "nested deeper"),
    ("tanh(" * 40 + "z" + ")" * 40, "nested deeper"),
    ("+".join(["z"] * 900), "nested deeper|more than"),  # a flat chain: RecursionError before
    ("*".join(["z"] * 900), "nested deeper|more than|degree"),
    (balanced(2 * MAX_NODES), "more than"),  # many nodes, shallow
    ("tanh(z) ** 2", "use '\\^'"),
    ("tanh(z) + " + "q" * 100, "at most 64"),  # very long names
])
def test_hostile_equations_are_rejected_naming_file_line_and_equation(tmp_path, rhs, message):
    rejected(tmp_path, h_equation(rhs), message, AT_H)


def test_limits_leave_room_for_the_real_cells():
    """The size limits are far above what the cells of spec/ need (so they stop hostile input only)."""
    from lstm_spec.spec import load_all
    from lstm_spec.spec.language import check_size

    for cell in load_all():
        for eq in cell.equations:
            check_size(eq.rhs, "here")  # raises if a real equation came near a limit
    assert MAX_DEPTH >= 16 and MAX_NODES >= 100


@pytest.mark.parametrize("escape, shown", [(r"\r", r"\\r"), (r"\f", r"\\x0c"), (r"\u000b", r"\\x0b"),
                                           (r"\u2028", r"\\u2028"), (r"\u0085", r"\\x85")])
def test_line_breaks_other_than_newline_are_not_whitespace(tmp_path, escape, shown):
    """A carriage return inside an equation (a TOML escape) would end a line of the generated module's
    docstring, which quotes the equations; the tokenizer takes only spaces and tabs as whitespace."""
    equations = f'equations = "z = W @ x + U @ h[t-1] + b\\nh = tanh(z) +{escape}z"'
    text = re.sub(r"equations = '''.*?'''", lambda m: equations, MINIMAL, flags=re.S)
    rejected(tmp_path, text, rf"line 4, equation 'h = tanh\(z\) \+{shown}z': unexpected character '{shown}'")

def test_a_chain_of_a_thousand_terms_is_refused_before_any_recursion():
    """Without the iterative size check the parser builds a 1000-deep left-leaning tree that shape
    inference and SymPy conversion then recurse through (RecursionError, not SpecError)."""
    with pytest.raises(SpecError, match="nested deeper|more than"):
        parse_equation("h = " + "+".join(["x"] * 990), "file.toml, line 3, equation 'h = ...'")


# ----------------------------------------------------------------------------------------- names and structure
@pytest.mark.parametrize("equations, message", [
    ("z = W @ x + U @ h[t-1] + b + q\nq = z\nh = tanh(q)", r"'q' is used before its equation \(line 6\)"),  # cycle
    ("z = W @ x + U @ h[t-1] + b\nh = tanh(z) + nope", r"'nope' is not declared"),  # undefined
    ("z = W @ x + U @ h[t-1] + b\nq = z\nh = tanh(z)", "computed but never used"),  # unused
    ("z = W @ x + U @ h[t-1] + b\nh = tanh(z)\nh = z", r"'h' is defined twice \(first on line 6\)"),
    ("z = W @ x + U @ h[t-1] + b\nx = z\nh = tanh(z)", "declared as a input"),  # defines an input
    ("W = W @ x\nh = tanh(W)", "declared as a parameter"),  # defines a parameter
    ("z = W @ x + U @ h[t-1] + b\nh = tanh(z) + x",  # shapes
     "elementwise sum \\(\\+\\) of a vector of H and a vector of D"),
    ("z = W @ h[t-1] + U @ h[t-1] + b\nh = tanh(z)", "W is H x D but the vector"),
    ("z = W @ x + U @ h[t-1] + b\nh = tanh(z) + W", "matrix parameter"),
    ("z = W @ x + U @ h[t-1] + b\nrange = tanh(z)\nh = range", "reserved word"),  # a builtin
    ("z = W @ x + U @ h[t-1] + b\ndims = tanh(z)\nh = dims", "reserved word"),  # a generated local
    ("z = W @ x + U @ h[t-1] + b\np = tanh(z)\nh = p", "reserved word"),
])
def test_bad_structure_is_rejected(tmp_path, equations, message):
    rejected(tmp_path, body(equations), message, r"line \d+, equation '")


@pytest.mark.parametrize("replace, extra, message", [
    (('H = "hidden"', 'H = "hidden"\nQ = "unused"'), "", r"line 11, \[dimensions\] Q: .*never|no shape uses it"),
    (None, '\n[latex]\nnope = "n"\n', r"\[latex\] nope: 'nope' is not a quantity"),
    (('tanh = "tanh"', 'tanh = ["tanh"]'), "", r"line 20, \[functions\] tanh: unknown function kind"),
    (('tanh = "tanh"', 'tanh = { kind = ["tanh"] }'), "", "unknown function kind"),
    (('tanh = "tanh"', 'tanh = { kind = "clip", bound = nan }'), "", "bound must be a positive number"),
    (('tanh = "tanh"', 'tanh = { kind = "clip", bound = 1e-300 }'), "", "bound must be a positive number"),
    (('H = "hidden"', "H = 5"), "", r"\[dimensions\] H: .* must be a string, got an integer"),
    (('name = "mini"', 'name = "mini"\ntitle = { a = 1 }'), "", "title must be a string, got a table"),
    (('name = "mini"', 'name = "mini"\nsummary = [1, 2]'), "", "summary must be a string, got an array"),
    (('name = "mini"', 'name = "mini"\ndescription = 1979-05-27'), "", "description must be a string"),
    (('output = "h"', "output = 1"), "", "output must be non-empty text"),
    (('x = "D"', "x = 3"), "", r"\[inputs\] x: a shape is a string"),
    (('U = "H x H"', 'U = "H x H x H"'), "", r"line 17, \[parameters\] U: bad shape"),
    (('name = "mini"', 'name = "' + "m" * 100 + '"'), "", "cell name"),
    (('W = "H x D"', 'W = "H x D"\n"__class__" = "H"'), "", "'__class__' is not a valid name"),
    (('W = "H x D"', 'W = "H x D"\nh0 = "H"'), "", "initial value"),
    (('output = "h"', 'output = "z"'), "", None),  # an intermediate may be the output
    (('output = "h"', 'output = "x"'), "", r"line 3, output: output 'x' is not defined by an equation"),
    (('[states]\nh = "H"', '[states]\nh = "H"\nc = "H"'), "", r"line \d+, \[states\] c: state 'c' has no equation"),
])
def test_bad_declarations_name_the_line(tmp_path, replace, extra, message):
    text = body(replace=replace, extra=extra)
    if message is None:
        derive(load(write_spec(tmp_path, text)))
        return
    rejected(tmp_path, text, message, r"line \d+")


def test_a_state_that_is_never_read_back_names_its_equation(tmp_path):
    text = body("z = W @ x + U @ c[t-1] + b\nc = z\nh = tanh(c)",
                replace=('[states]\nh = "H"', '[states]\nh = "H"\nc = "H"'))
    rejected(tmp_path, text, r"line 7, equation 'h = tanh\(c\)': state 'h' is never read as h\[t-1\]")


# ----------------------------------------------------------------------------------------- files and text
@pytest.mark.parametrize("title", ['x"""\nimport os\n"""', 'x"""; import os; """', 'ends with a backslash \\',
                                   'an \\N{escape}', "two\nlines", "a\x00nul"])
def test_text_copied_into_the_generated_module_cannot_break_out(tmp_path, title):
    """The title goes into the generated module's docstring: a quote or backslash could end it."""
    import json

    text = body(replace=('name = "mini"', f"name = \"mini\"\ntitle = {json.dumps(title)}"))
    rejected(tmp_path, text, "title (may not contain|contains)", "line 3, title")


def test_a_file_name_never_reaches_the_generated_module(tmp_path):
    """No file name is written into generated code (issue 13 item 2: a link's name was checked, the resolved
    target's name written): a name with quotes loads, and its module names only the cell and the digest."""
    text = generate_module(derive(load(write_spec(tmp_path, body(), 'evil""".toml'))))
    assert "evil" not in text and ast.get_docstring(ast.parse(text)).startswith("mini")


def test_accepted_titles_give_a_module_whose_docstring_holds_them(tmp_path):
    text = body(replace=('name = "mini"', "name = \"mini\"\ntitle = \"Mini cell (it's fine: ünïcode, 'quotes')\""))
    module = generate_module(derive(load(write_spec(tmp_path, text))))
    tree = ast.parse(module)
    assert ast.get_docstring(tree).startswith("Mini cell (it's fine: ünïcode, 'quotes')")
    assert [type(n).__name__ for n in tree.body[:1]] == ["Expr"]


@pytest.mark.parametrize("data, message", [
    (MINIMAL.encode() + b"\n# \xff\xfe", r"line 2\d: not a UTF-8 text file"),
    (b"\xef\xbb\xbf" + MINIMAL.encode(), r"line 1: invisible or control character U\+FEFF"),  # a BOM
    (b"a = " + b"[" * 50_000, "not a valid TOML"),  # tomllib recursion: RecursionError before
    (b"a = { b = " * 5_000, "not a valid TOML"),
    (b"a = 1" + b"0" * 5_000, "not a valid TOML"),  # an integer Python refuses to convert
    (b"x" * 300_000, "larger than 200000 bytes"),
    (b"", "missing required text key 'name'"),
])
def test_malformed_files_are_spec_errors(tmp_path, data, message):
    rejected(tmp_path, data, message)


def test_equation_lines_are_right_in_every_string_style(tmp_path):
    """Literal and basic multi-line strings, with or without a line break after the opening quotes,
    and a one-line basic string with \\n escapes (then the line of the equations key is named)."""
    cases = [("equations = '''\nz = W @ x + U @ h[t-1] + b\nh = tanh(z) + bad\n'''", 6),
             ('equations = """z = W @ x + U @ h[t-1] + b\nh = tanh(z) + bad\n"""', 5),
             ('equations = """\n# a comment\n\nz = W @ x + U @ h[t-1] + b\nh = tanh(z) + bad"""', 8),
             ('equations = "z = W @ x + U @ h[t-1] + b\\nh = tanh(z) + bad"', 4)]
    for k, (equations, line) in enumerate(cases):
        text = re.sub(r"equations = '''.*?'''", lambda m: equations, MINIMAL, flags=re.S)  # noqa: B023 - called within the iteration
        rejected(tmp_path, text, rf"line {line}, equation 'h = tanh\(z\) \+ bad'", name=f"c{k}.toml")


# ----------------------------------------------------------------------------------------- derivation
def test_a_value_or_derivative_that_is_not_defined_is_a_spec_error(tmp_path):
    rejected(tmp_path, h_equation("tanh(z) / (z - z)"), AT_H, "not defined", "divided by zero")
    rejected(tmp_path, h_equation("tanh(z) * (z - z) ^ 0 / (b - b) ^ 2"), AT_H, "not defined")


def test_zero_adjoint_under_stop_gradient_generates_running_code(tmp_path):
    """Found by the fuzzer: stop_gradient of a hoisted clip left the generated backward reading a value
    it never computed (NameError)."""
    text = body("a0 = sg(clp(h[t-1]))\nz = W @ x + U @ h[t-1] + b\nh = tanh(z + a0)",
                replace=('tanh = "tanh"', 'tanh = "tanh"\nsg = "stop_gradient"\nclp = { kind = "clip", bound = 3 }'))
    spec_fuzz.push_further(load(write_spec(tmp_path, text)))


def test_matrix_product_read_only_by_a_reduction_runs_and_is_right(tmp_path):
    """Found by the fuzzer: a matrix product read only through a reduction has a per-sample adjoint (B, 1);
    it is now its own statement, broadcast to the product's units, and the gradients match complex step."""
    from lstm_spec.checks.numeric import check_derivatives
    from lstm_spec.checks.tolerances import TOLERANCES

    text = body("z = U @ h[t-1] + b\nh = tanh(z) + total(W @ x) * z",
                replace=('tanh = "tanh"', 'tanh = "tanh"\ntotal = "sum"'))
    cell = load(write_spec(tmp_path, text))
    spec_fuzz.push_further(cell)
    module = mutants.load_module(generate_module(derive(cell)))
    assert check_derivatives(module, "complex_step")["error"] <= TOLERANCES[("complex_step", "complex128")].value


def test_matrix_times_a_parameter_is_a_spec_error(tmp_path):
    """Found by the fuzzer: V @ b with b a parameter derived but the generated backward failed; a matrix times
    a parameter is constant over time (a bias), and is rejected with the equation named."""
    text = body("z = W @ x + U @ h[t-1] + V @ b\nh = tanh(z)", replace=('U = "H x H"', 'U = "H x H"\nV = "H x H"'))
    with pytest.raises(SpecError, match=r"line \d+, equation 'z = W @ x \+ U @ h\[t-1\] \+ V @ b'.*parameter b"):
        derive(load(write_spec(tmp_path, text)))


# ----------------------------------------------------------------------------------------- properties
QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@QUICK
@given(st.text(max_size=200))
def test_any_text_parses_or_is_a_spec_error(text):
    try:
        parse_equation(text, "f.toml, line 1, equation")
    except SpecError as exc:
        assert str(exc).startswith("f.toml, line 1, equation")


GRAMMAR = ["+", "-", "*", "⊙", "/", "@", "^", "(", ")", "[", "]", "t", "1", "8", "0", "0.5", "=", "x", "h",
           "W", "tanh", "h[t-1]", "__x__", ".", "**", ",", "9" * 40]


@QUICK
@given(st.lists(st.sampled_from(GRAMMAR), max_size=40))
def test_random_token_sequences_parse_or_are_spec_errors(tokens):
    try:
        parse_equation("h = " + " ".join(tokens), "f.toml, line 1, equation")
    except SpecError:
        pass


def expressions():
    leaves = st.sampled_from(["z", "h[t-1]", "b", "2", "0.5", "(W @ x)", "(U @ h[t-1])"])
    return st.recursive(leaves, lambda sub: st.one_of(
        st.tuples(sub, st.sampled_from(["+", "-", "*", "⊙"]), sub).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        sub.map(lambda e: f"-{e}"), sub.map(lambda e: f"tanh({e})"),
        st.tuples(sub, st.integers(0, 3)).map(lambda t: f"({t[0]}) ^ {t[1]}")), max_leaves=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expressions())
def test_random_expression_trees_load_derive_and_generate(tmp_path_factory, expr):
    """Well-formed trees over declared names: every one either loads, derives and generates a module
    that compiles, or is a SpecError (e.g. a constant right-hand side, an unused parameter)."""
    path = write_spec(tmp_path_factory.mktemp("tree"), h_equation(f"tanh(z) + {expr}"))
    try:
        cell = load(path)
    except SpecError as exc:
        assert str(path) in str(exc)
        return
    compile(generate_module(derive(cell)), "<generated>", "exec")


REAL = sorted(SPEC_DIR.glob("*.toml"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(REAL), st.integers(0, 2**32 - 1))
def test_mutations_of_the_real_specs_load_or_are_spec_errors(tmp_path_factory, spec, seed):
    """Deleted, duplicated, swapped lines, renamed and swapped names, hostile tokens, random bytes and
    Unicode, wrong TOML types, huge numbers, truncation (lstm_spec.checks.fuzz.mutate)."""
    path = tmp_path_factory.mktemp("mut") / "m.toml"
    path.write_bytes(spec_fuzz.mutate(spec.read_text(encoding="utf-8"), random.Random(seed)))
    try:
        load(path)
    except SpecError as exc:
        assert str(path) in str(exc)


@QUICK
@given(st.binary(max_size=400))
def test_random_bytes_are_spec_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "b.toml"
    path.write_bytes(data)
    with pytest.raises(SpecError) as err:
        load(path)
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------------------- the fuzzer
def test_fuzz_run_has_no_crash(tmp_path):
    """A few hundred generated files, every 5th accepted one derived, generated, compiled and run."""
    report = spec_fuzz.fuzz(n=300, seed=7, derive_every=5, timeout=120, crash_dir=tmp_path / "crashes")
    text = "\n".join(report.lines())
    assert report.inputs == 300 and report.accepted + report.rejected == 300, text
    assert report.crashes == [], text
    assert report.accepted >= 30 and report.derived >= 6, text  # the generators do reach the derivation
    assert not (tmp_path / "crashes").exists()


def test_fuzz_counts_and_saves_a_crash(tmp_path, monkeypatch):
    """The fuzzer's own check can fail: an exception that is not a SpecError is a crash, saved."""
    real = spec_fuzz.load_file

    def flaky(path):
        if b"random" in path.read_bytes() or path.read_bytes().count(b"=") % 7 == 0:
            raise KeyError("planted")
        return real(path)

    monkeypatch.setattr(spec_fuzz, "load_file", flaky)
    report = spec_fuzz.fuzz(n=20, seed=0, derive_every=0, crash_dir=tmp_path / "crashes")
    assert report.crashes and all("KeyError" in c[2] and c[3] == "load" for c in report.crashes)
    saved = sorted((tmp_path / "crashes").glob("*.toml"))
    assert len(saved) == len(report.crashes)
    assert "planted" in saved[0].with_suffix(".txt").read_text()


def test_fuzz_counts_a_hang(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(spec_fuzz, "load_file", lambda path: time.sleep(5))
    report = spec_fuzz.fuzz(n=1, seed=0, timeout=0.2, crash_dir=tmp_path / "crashes")
    assert len(report.crashes) == 1 and "Hang" in report.crashes[0][2]


def test_fuzz_command_prints_the_figures(tmp_path, capsys):
    code = spec_fuzz.main(["--n", "30", "--seed", "3", "--crash-dir", str(tmp_path / "c")])
    out = capsys.readouterr().out
    for word in ("inputs:   30", "accepted:", "rejected:", "crashes:  0", "time per file: max", "median",
                 "total time:"):
        assert word in out
    assert code == 0


def test_simplification_is_skipped_for_large_adjoints(tmp_path, monkeypatch):
    """Time per file is bounded: sympy.simplify (and factor_terms) run for minutes on the large adjoints
    a spec can make within the size limits (a name read by many equations through rational functions;
    7 such equations took over a minute). The derivation only hands them small expressions."""
    import sympy

    from lstm_spec.derivations import reverse

    sizes = []
    real = sympy.simplify
    monkeypatch.setattr(sympy, "simplify", lambda e, *a, **k: sizes.append(sympy.count_ops(e)) or real(e, *a, **k))
    chain = ["z = W @ x + U @ h[t-1] + b", "a0 = z"]
    chain += [f"a{k} = tanh(a{k - 1}) * (a{k - 1} - z ^ 2) + a{k - 1} ^ 3 * h[t-1] / (1 + a{k - 1} ^ 2)"
              for k in range(1, 5)]
    cell = load(write_spec(tmp_path, body("\n".join(chain + ["h = tanh(a4)"]))))
    with spec_fuzz.time_limit(300):  # a guard against a hang, not a timing assertion
        derive(cell)
    assert sizes and max(sizes) <= reverse.MAX_SIMPLIFY_OPS
    assert reverse.MAX_SIMPLIFY_OPS >= 10  # the largest adjoint of the cells in spec/ is still simplified
