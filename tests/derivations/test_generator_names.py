"""The names the generator invents, the text it writes, and what the loader reads (issue 13 items 2, 4,
5, 8, 9, 17, 20; issue 16 item 2).

- Every name of a generated module comes from one namespace: a spec's names, the runtime's exported
  names and the module's own locals are taken first, every invented name (auxiliaries, products,
  adjoints, temporaries, stacks, buffers) is allocated there, so no two things share a name, whatever
  the spec calls its quantities and functions.
- The generated text is the same under every PYTHONHASHSEED.
- No file name reaches the generated code (a symlink to a file named like Python code runs nothing).
- The loader refuses invisible control characters and anything that is not a regular file, and names the
  right line of a TOML error.
- forward's outputs and cache never alias each other or the caller's arrays.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from lstm_spec.checks import cases
from lstm_spec.checks import fuzz as spec_fuzz
from lstm_spec.checks.mutants import load_module
from lstm_spec.checks.numeric import check_derivatives
from lstm_spec.derivations import derive
from lstm_spec.derivations.codegen import CodegenError, generate_module
from lstm_spec.spec import SpecError, load
from lstm_spec.spec.cells import SPEC_DIR

from ..conftest import write_spec

CS_TOL = 1e-9

SPEC = """
name = "mini"
output = "h"
equations = '''
{eqs}
'''
[dimensions]
D = "in"
H = "hidden"
[inputs]
x = "D"
[states]
h = "H"
[parameters]
{params}
[functions]
{funcs}
"""
PARAMS = 'W = "H x D"\nU = "H x H"\nb = "H"'


def spec(eqs, params=PARAMS, funcs='tanh = "tanh"'):
    return SPEC.format(eqs=eqs, params=params, funcs=funcs)


def module_of(tmp_path, text, name="cell.toml"):
    return load_module(generate_module(derive(load(write_spec(tmp_path, text, name)))), "lstm_spec_names_test")


def complex_step_error(module):
    return check_derivatives(module, "complex_step", shapes=[(1, 1, 3, 2), (3, 2, 2, 3)])["error"]


# ----------------------------------------------------------------------------------------- item 4
def test_a_function_named_d_does_not_take_the_name_of_an_adjoint(tmp_path):
    """d(c) was hoisted as the auxiliary d_c, the name of c's adjoint: gradients off by 0.59, no error."""
    module = module_of(tmp_path, spec("c = W @ x + U @ h[t-1] + b\nh = d(c) * c", funcs='d = "tanh"'))
    assert complex_step_error(module) < CS_TOL


def test_two_products_whose_names_concatenate_alike_stay_two(tmp_path):
    """A_q @ x and A @ q_x were both named A_q_x: the forward was off by 1.08."""
    params = 'W = "H x D"\nU = "H x H"\nA_q = "H x D"\nA = "H x H"'
    module = module_of(tmp_path, spec("q_x = W @ x\nh = tanh(A_q @ x + A @ q_x + U @ h[t-1])", params))
    inst = cases.random_instance(module, (2, 2, 3, 2), seed=0)
    y, _, _ = cases.run(module, inst)
    p, x, h = inst.params, inst.seq["x"], inst.init["h"]
    for t in range(2):
        h = np.tanh(x[t] @ p["A_q"].T + (x[t] @ p["W"].T) @ p["A"].T + h @ p["U"].T)
        assert np.allclose(y[t], h, rtol=1e-13, atol=1e-13)
    assert complex_step_error(module) < CS_TOL


def _renamed(cell, old, new):
    text = (SPEC_DIR / f"{cell}.toml").read_text(encoding="utf-8")
    return re.sub(rf"\b{re.escape(old)}\b", new, text)


def _rename_keys(d, old, new):
    return {(new if k == old else k): v for k, v in d.items()}


# (cell, quantity, new name): each one crashed or gave wrong numbers (issue 13 items 4 and 9)
RENAMES = [
    ("rnn_tanh", "z", "S_x"), ("rnn_tanh", "z", "W_x"), ("rnn_tanh", "z", "unit_count"),
    ("gru_reset_after", "n", "tmp0"), ("gru_reset_after", "b_hn", "tmp0"), ("gru_reset_after", "a_r", "Z0"),
    ("gru_reset_after", "W_n", "S"),
    ("lstm", "f", "Z0"), ("lstm", "U_f", "S"), ("lstm", "c", "Z0"), ("lstm", "z_o", "tanh_c"),
    ("lstm_layer_norm", "sc", "unit_mean"),
]


@pytest.mark.parametrize("cell, old, new", RENAMES)
def test_a_renamed_cell_computes_what_the_original_does(tmp_path, cell, old, new):
    """Renaming a quantity to a name that looks generated changes nothing but names: same forward,
    same gradients (or a one-line SpecError when the name is reserved)."""
    try:
        renamed = module_of(tmp_path, _renamed(cell, old, new))
    except SpecError as exc:
        assert "reserved" in str(exc) and "\n" not in str(exc)
        return
    base = load_module(generate_module(derive(load(cell))), "lstm_spec_base")
    inst = cases.random_instance(base, (3, 2, 3, 4), seed=1)
    moved = cases.Instance(_rename_keys(inst.params, old, new), _rename_keys(inst.seq, old, new),
                           _rename_keys(inst.init, old, new), inst.dy, _rename_keys(inst.d_final, old, new),
                           inst.dims)
    y0, f0, g0 = cases.run(base, inst)
    y1, f1, g1 = cases.run(renamed, moved)
    g1 = {(old if k == new else f"{old}0" if k == f"{new}0" else k): v for k, v in g1.items()}
    assert np.allclose(y1, y0, rtol=1e-12, atol=1e-12)
    assert sorted(g1) == sorted(g0)
    for k in g0:
        assert np.allclose(g1[k], g0[k], rtol=1e-11, atol=1e-12), k


def test_a_dimension_whose_name_holds_an_x_is_one_dimension(tmp_path):
    """Found by the grown fuzzer: "H x q_x" was split at every x ('bad shape'), so a dimension called q_x
    or x0 could be declared but never used."""
    text = spec("h = tanh(W @ x + U @ h[t-1] + b)").replace('D = "in"', 'q_x = "in"').replace(
        'x = "D"', 'x = "q_x"').replace('W = "H x D"', 'W = "H x q_x"')
    assert load(write_spec(tmp_path, text)).parameters["W"].shape == ("H", "q_x")
    compact = spec("h = tanh(W @ x + U @ h[t-1] + b)").replace('W = "H x D"', 'W = "HxD"')
    assert load(write_spec(tmp_path, compact, "compact.toml")).parameters["W"].shape == ("H", "D")


def test_a_bias_read_only_inside_a_reduction_gets_a_gradient_of_its_shape(tmp_path):
    """Found by the grown fuzzer's complex-step property: in total(b2 + W @ x) the bias' adjoint is one value
    per sample, and its gradient came back with shape (1,) instead of (H,)."""
    funcs = 'tanh = "tanh"\ntotal = "sum"'
    params = PARAMS + '\nb2 = "H"'
    module = module_of(tmp_path, spec("h = tanh(total(b2 + W @ x) * b + U @ h[t-1])", params, funcs))
    assert complex_step_error(module) < CS_TOL


def test_a_per_sample_value_inside_a_reduction_gets_the_sum_over_its_units(tmp_path):
    """Found by the 10^4 run of the grown fuzzer: in lse(total(a) * v) the per-sample total(a) receives
    sum_k softmax_k v_k, but the derivation sent it the per-unit softmax_k v_k (its result being one value
    per sample too): gradients off by 0.8."""
    funcs = 'tanh = "tanh"\ntotal = "sum"\nlse = "logsumexp"'
    params = PARAMS + '\nM = "H x H"'
    eqs = "a = M @ h[t-1]\nv = W @ x\nh = tanh(lse(total(a) * v) * b + U @ h[t-1])"
    assert complex_step_error(module_of(tmp_path, spec(eqs, params, funcs))) < CS_TOL


# ----------------------------------------------------------------------------------------- item 9
def test_every_name_the_runtime_exports_is_reserved(tmp_path):
    """The reserved names come from the runtime module itself (they missed unit_mean, unit_count, rsqrt)."""
    from lstm_spec.reference import _runtime

    exported = sorted(n for n in vars(_runtime) if not n.startswith("_") and re.fullmatch(r"[A-Za-z]\w*", n))
    assert {"unit_mean", "rsqrt", "seq_matmul", "prepare"} <= set(exported)
    for name in exported:
        with pytest.raises(SpecError, match="reserved"):
            load(write_spec(tmp_path, spec(f"{name} = W @ x + U @ h[t-1] + b\nh = act({name})",
                                           funcs='act = "tanh"')))


def test_a_mean_of_matrix_products_derives_and_is_right(tmp_path):
    """mean(W @ x + U @ h[t-1]) made derive die with a TypeError: the unit count was a call with one
    argument per symbol, which the printer took for numeric constants."""
    module = module_of(tmp_path, spec("h = tanh(mean(W @ x + U @ h[t-1]) + b)",
                                      funcs='tanh = "tanh"\nmean = "mean"'))
    assert complex_step_error(module) < CS_TOL


def test_the_unit_count_is_the_dimension():
    """Issue 16 item 2: the layer-norm module divides by H, caches no product for a unit count and
    stacks its recurrent products (one GEMM per step)."""
    text = generate_module(derive(load("lstm_layer_norm")))
    assert "unit_count(" not in text
    assert re.search(r"/ H\b", text)
    forward = text[text.index("def forward("):text.index("def backward(")]
    assert "cache = {" in forward
    cache_line = next(line for line in forward.splitlines() if "cache = {" in line)
    assert "'U_f_h_prev'" not in cache_line and "'W_f_x'" not in cache_line
    assert re.search(r"P_h_prev = h\[t\] @ S_h_prev\.T", forward)


def test_the_unit_count_reads_as_the_dimension_in_text_and_latex():
    """derive printed unit_count(U_o @ h[t-1]) where the math has 1/H, and LaTeX 'x \\odot N \\odot -1'."""
    from lstm_spec.derivations.render import describe

    d = derive(load("lstm_layer_norm"))
    assert "d_c = d_c_next + d_ec + d_mc / H" in describe(d)
    latex = describe(d, latex=True)
    assert r"\frac{\delta \mathrm{mc}_{t}}{H}" in latex and r"\odot -1" not in latex and "N_{" not in latex


# ----------------------------------------------------------------------------------------- item 5
USER_SPECS = {
    "plain.toml": spec("h = tanh(W @ x + U @ h[t-1] + b)"),
    "gates.toml": spec("f = sigma(W @ x + U @ h[t-1] + b)\ng = tanh(V @ x + R @ h[t-1])\n"
                       "h = f * h[t-1] + (1 - f) * g",
                       'W = "H x D"\nU = "H x H"\nb = "H"\nV = "H x D"\nR = "H x H"',
                       'sigma = "logistic"\ntanh = "tanh"'),
    "reduce.toml": spec("a = W @ x + U @ h[t-1]\nh = tanh(a - mean(a)) * b + total(a * a) * a",
                        funcs='tanh = "tanh"\nmean = "mean"\ntotal = "sum"'),
}
_DIGESTS = """
import hashlib, sys
from lstm_spec.derivations import derive
from lstm_spec.derivations.codegen import generate_module
from lstm_spec.spec import load
for arg in sys.argv[1:]:
    print(arg, hashlib.sha256(generate_module(derive(load(arg))).encode()).hexdigest())
"""


def test_generated_text_does_not_depend_on_the_hash_seed(tmp_path):
    """30 of 92 user specs differed across PYTHONHASHSEED (a set of symbols iterated)."""
    paths = [str(write_spec(tmp_path, text, name)) for name, text in USER_SPECS.items()]
    args = paths + ["rnn_tanh", "gru_reset_after", "peephole"]
    runs = [subprocess.Popen([sys.executable, "-c", _DIGESTS, *args], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONHASHSEED": str(seed)}) for seed in range(4)]
    outs = [r.communicate(timeout=300)[0] for r in runs]
    assert all(r.returncode == 0 for r in runs)
    assert len(outs[0].splitlines()) == len(args)
    assert outs[1:] == [outs[0]] * 3


# ----------------------------------------------------------------------------------------- item 2
def test_a_symlink_to_a_file_named_like_code_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    target = tmp_path / 'x"""+str(__import__("os").system("touch PWNED"))+"""y.toml'
    target.write_text(spec("h = tanh(W @ x + U @ h[t-1] + b)"), encoding="utf-8")
    link = tmp_path / "link.toml"
    link.symlink_to(target.name)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        text = generate_module(derive(load(link)))
        load_module(text, "lstm_spec_link")
    finally:
        os.chdir(cwd)
    assert not marker.exists()
    assert "__import__" not in text and "system" not in text and '"""+' not in text
    assert "link.toml" not in text  # no file name at all: the cell's name and the spec's digest
    assert re.search(r"cell 'mini'.*spec sha256 [0-9a-f]{16}", text[:2000].replace("\n", " "))


def test_the_built_in_header_still_names_its_spec_file():
    text = generate_module(derive(load("rnn_tanh")))
    assert "from spec/rnn_tanh.toml" in text[:1000]


def test_text_that_would_leave_the_docstring_is_refused_by_the_generator(tmp_path):
    """A second line of defence: whatever gets past the loader, the generator checks the module it
    wrote has exactly the expected top-level statements."""
    cell = load(write_spec(tmp_path, spec("h = tanh(W @ x + U @ h[t-1] + b)")))
    cell.title = 'x"""\nimport os\n"""'
    with pytest.raises(CodegenError, match="top level"):
        generate_module(derive(cell))


# ----------------------------------------------------------------------------------------- item 17
@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200b", "\u200f", "\u2028", "\x1b", "\ufeff"])
def test_invisible_and_bidi_characters_are_refused_even_in_comments(tmp_path, char):
    text = spec("h = tanh(W @ x + U @ h[t-1] + b)  # ok" + char + "ay")
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError, match=r"line 5: .*U\+%04X" % ord(char)) as err:
        load(path)
    assert "\n" not in str(err.value)


def test_readable_unicode_in_comments_and_prose_is_fine(tmp_path):
    text = spec("h = tanh(W @ x + U @ h[t-1] + b)  # ünïcode — fine ⊙").replace('D = "in"', 'D = "entrée"')
    assert load(write_spec(tmp_path, text)).name == "mini"


def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "cell.toml"
    os.mkfifo(fifo)
    with spec_fuzz.time_limit(10), pytest.raises(SpecError, match="not a regular file") as err:
        load(fifo)
    assert "\n" not in str(err.value)


def test_a_directory_is_refused(tmp_path):
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(SpecError, match="not a regular file"):
        load(tmp_path / "dir.toml")


# ----------------------------------------------------------------------------------------- item 20
def test_a_toml_error_on_line_one_names_line_one(tmp_path):
    path = write_spec(tmp_path, 'name = "mini" oops\n' + spec("h = tanh(W @ x + U @ h[t-1] + b)").replace(
        'name = "mini"\n', ""))
    with pytest.raises(SpecError) as err:
        load(path)
    message = str(err.value)
    assert re.search(r", line 1: ", message), message
    assert not re.search(r"line [02-9]", message), message


def test_a_toml_error_names_the_line_tomllib_names(tmp_path):
    text = spec("h = tanh(W @ x + U @ h[t-1] + b)") + 'x = "unterminated\n'
    with pytest.raises(SpecError, match=rf", line {text.count(chr(10))}: "):
        load(write_spec(tmp_path, text))


# ----------------------------------------------------------------------------------------- item 8
@pytest.mark.parametrize("cell", ["lstm", "lstm_softmax_ce", "rnn_tanh"])
def test_outputs_and_cache_alias_nothing(cell):
    """y and the final states were views of the cache, and the cache kept the caller's x: y *= 0.5
    before backward changed the gradients by 0.24, refilling x by 2.7."""
    import importlib

    module = importlib.import_module(f"lstm_spec.reference.{cell}")
    inst = cases.random_instance(module, (3, 2, 3, 4), seed=3)
    _, _, want = cases.run(module, inst)
    seq = {k: v.copy() for k, v in inst.seq.items()}
    init = {f"{k}0": v.copy() for k, v in inst.init.items()}
    y, final, cache = module.forward(inst.params, **seq, **init)
    y *= 0.5
    for v in final.values():
        v *= 0.5
    for v in list(seq.values()) + list(init.values()):
        v[...] = 7.0
    got = module.backward(cache, inst.dy, inst.d_final)
    for k in want:
        assert np.array_equal(got[k], want[k]), k


def test_a_name_bound_without_the_namespace_is_a_generator_error():
    """The generator's own backstop: every name the module binds must have been allocated (or be one
    of the module's fixed locals); a name emitted outside the namespace fails generation."""
    from lstm_spec.derivations.codegen import check_module_names

    d = derive(load("rnn_tanh"))
    text = generate_module(d)  # generate_module runs the check on every module it writes
    bad = text.replace("    for t in range(T):", "    stray = 1\n    for t in range(T):", 1)
    with pytest.raises(CodegenError, match="'stray'"):
        check_module_names(bad, d.namespace.names())
