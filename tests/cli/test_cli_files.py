"""The files the CLI reads and writes: `generate PATH` names the module after the spec file and never
overwrites what it did not write, verify never executes a module it did not generate, output errors are
one line, a closed pipe ends a command quietly, a mistyped cell name gets a suggestion."""

import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lstm_spec.derivations import build
from lstm_spec.spec import SPEC_DIR, load

SIMPLE = SPEC_DIR / "rnn_tanh.toml"  # the smallest built-in cell: verify of a copy takes seconds


@pytest.fixture
def cli(capsys):
    """`lstm-spec ARGS` in this process (a subprocess costs seconds of imports): exit code, stdout, stderr."""
    from lstm_spec.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


def user_spec(where: Path, file_name="my_cell.toml", cell_name="my_rnn") -> Path:
    where.mkdir(parents=True, exist_ok=True)
    spec = where / file_name
    spec.write_text(SIMPLE.read_text().replace('name = "rnn_tanh"', f'name = "{cell_name}"'))
    return spec


def one_line_error(res, *needles):
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    for n in needles:
        assert n in res.stderr, res.stderr


# ------------------------------------------------------------------ generate PATH: which file, when it refuses

def test_generate_names_the_module_after_the_spec_file_not_its_cell_name(cli, tmp_path):
    spec = user_spec(tmp_path)
    res = cli("generate", str(spec))
    assert res.returncode == 0, res.stderr
    module = tmp_path / "my_cell.py"
    assert module.exists() and not (tmp_path / "my_rnn.py").exists()
    assert f"wrote {module}" in res.stdout
    assert cli("generate", "--check", str(spec)).returncode == 0


def test_generate_refuses_to_overwrite_a_hand_written_module(cli, tmp_path):
    spec = user_spec(tmp_path, "my_rnn.toml")
    mine = tmp_path / "my_rnn.py"
    mine.write_text("# my own code\nprint('hello')\n")
    res = cli("generate", str(spec))
    one_line_error(res, str(mine), "not a generated file")
    assert mine.read_text() == "# my own code\nprint('hello')\n"


def test_generate_refuses_to_overwrite_a_module_generated_from_another_spec(cli, tmp_path):
    a = user_spec(tmp_path / "a", "cell.toml", "cell_a")
    b = user_spec(tmp_path / "b", "cell.toml", "cell_b")
    out = tmp_path / "out"
    assert cli("generate", str(a), "--out", str(out)).returncode == 0
    before = (out / "cell.py").read_text()
    one_line_error(cli("generate", str(b), "--out", str(out)), "another spec")
    assert (out / "cell.py").read_text() == before
    # the same spec edited: its own module is regenerated
    a.write_text(a.read_text().replace("tanh(z)", "tanh(z + z)"))
    assert cli("generate", str(a), "--out", str(out)).returncode == 0
    assert (out / "cell.py").read_text() != before


def test_generate_refuses_two_specs_that_write_the_same_module(cli, tmp_path):
    a = user_spec(tmp_path / "a", "cell.toml", "cell_a")
    b = user_spec(tmp_path / "b", "cell.toml", "cell_b")
    one_line_error(cli("generate", str(a), str(b), "--out", str(tmp_path / "out")), "cell.py")
    assert not (tmp_path / "out" / "cell.py").exists()


def test_generate_out_to_a_file_is_a_one_line_error(cli, tmp_path):
    spec = user_spec(tmp_path)
    target = tmp_path / "a_file"
    target.write_text("x")
    one_line_error(cli("generate", str(spec), "--out", str(target)), str(target))


def test_generated_files_follow_the_umask(tmp_path):
    spec = user_spec(tmp_path, "my_rnn.toml")
    old = os.umask(0o022)
    try:
        written = build.write(build.generate([load(spec)]))
    finally:
        os.umask(old)
    assert written == [tmp_path / "my_rnn.py"]
    assert (tmp_path / "my_rnn.py").stat().st_mode & 0o777 == 0o644


def test_stale_hints_give_the_exact_command_with_the_spec_path(cli, tmp_path):
    spec = user_spec(tmp_path / "sub dir")
    assert cli("generate", str(spec)).returncode == 0
    spec.write_text(spec.read_text().replace("tanh(z)", "tanh(z + z)"))
    res = cli("generate", "--check", str(spec))
    assert res.returncode == 1 and f"lstm-spec generate {shlex.quote(str(spec))}" in res.stderr, res.stderr
    res = cli("verify", str(spec), "--no-torch", "--quiet", "--jobs", "1")
    assert res.returncode == 1
    row = next(line for line in res.stdout.splitlines() if "up to date" in line)
    assert "FAIL" in row and f"lstm-spec generate {shlex.quote(str(spec))}" in res.stdout


# ------------------------------------------------------------------ verify runs no foreign code

def test_verify_does_not_execute_a_module_it_did_not_generate(cli, tmp_path):
    spec = user_spec(tmp_path)
    marker = tmp_path / "ran"
    (tmp_path / "my_cell.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(0)\n")
    res = cli("verify", str(spec), "--no-torch", "--quiet", "--jobs", "1")
    assert not marker.exists()
    assert res.returncode == 1, res.stdout + res.stderr
    row = next(line for line in res.stdout.splitlines() if "up to date" in line)
    assert "FAIL" in row and f"lstm-spec generate {shlex.quote(str(spec))}" in res.stdout
    assert "(c) complex step" in res.stdout  # the checks ran (on the code the spec generates)


def test_verify_cannot_exit_0_when_loading_the_module_exits(monkeypatch):
    from lstm_spec import cli as cli_module
    from lstm_spec.checks import runner

    def exits(*args):
        raise SystemExit(0)

    monkeypatch.setattr(runner, "_module_for", exits)
    assert cli_module.main(["verify", "rnn_tanh", "--quiet", "--no-torch", "--jobs", "1"]) == 1


# ------------------------------------------------------------------ bench's files

def test_bench_render_of_a_missing_or_corrupt_file_is_a_one_line_error(cli, tmp_path):
    one_line_error(cli("bench", "--render", str(tmp_path / "missing.json")), "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    one_line_error(cli("bench", "--render", str(bad)), "bad.json")
    bad.write_text('{"meta": {}, "points": [{"nothing": 1}]}')
    one_line_error(cli("bench", "--render", str(bad)), "bad.json")


def test_bench_json_to_an_unwritable_path_fails_before_measuring(tmp_path, monkeypatch, capsys):
    from lstm_spec import cli as cli_module
    from lstm_spec.bench import runner

    def measure(*args, **kw):
        raise AssertionError("measured before checking the output path")

    monkeypatch.setattr(runner, "Bench", measure)
    monkeypatch.setattr(runner, "run_tools", measure)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for argv in (["--quick"], ["--what", "generate"], ["--profile", "--T", "1", "--B", "1", "--H", "2"]):
        assert cli_module.main(["bench", *argv, "--json", str(a_file / "out.json")]) == 2
        err = capsys.readouterr().err
        assert str(a_file / "out.json") in err and len(err.strip().splitlines()) == 1, err
    assert cli_module.main(["bench", "--quick", "--json", str(tmp_path)]) == 2


# ------------------------------------------------------------------ pipes, names, help

@pytest.mark.parametrize("argv", [["list"], ["derive", "lstm"], ["generate", "--help"]])
def test_a_closed_stdout_ends_the_command_quietly(argv):
    r, w = os.pipe()
    os.close(r)  # like `lstm-spec list | head -0`: every write to stdout fails with EPIPE
    try:
        res = subprocess.run([sys.executable, "-m", "lstm_spec", *argv], stdout=w, stderr=subprocess.PIPE,
                             text=True)
    finally:
        os.close(w)
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr
    assert res.returncode in (0, 141), res.returncode


@pytest.mark.parametrize("argv", [["derive", "lstmm"], ["generate", "--check", "peephol"],
                                  ["verify", "gru_reset_befor"]])
def test_a_mistyped_cell_name_gets_a_suggestion(cli, argv):
    res = cli(*argv)
    one_line_error(res, f"unknown cell {argv[-1]!r}", "did you mean")
    assert {"lstmm": "'lstm'", "peephol": "'peephole'", "gru_reset_befor": "'gru_reset_before'"}[argv[-1]] \
        in res.stderr


def test_list_help_describes_the_command():
    res = subprocess.run([sys.executable, "-m", "lstm_spec", "list", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    assert "title" in res.stdout.split("options:")[0].lower()


def test_help_list_derive_generate_import_no_ml_framework(tmp_path):
    code = ("import sys, contextlib, io\nfrom lstm_spec.cli import main\n"
            "for argv in (['--help'], ['list'], ['derive', 'lstm'], ['generate', '--check', 'lstm']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
            "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'keras', 'flax', 'onnxruntime') "
            "if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_verify_finds_the_module_generate_wrote(cli, tmp_path):
    spec = user_spec(tmp_path)
    assert cli("generate", str(spec)).returncode == 0
    gen = build.generate([load(spec)])[0]
    assert gen.path == tmp_path / "my_cell.py" and not gen.stale
