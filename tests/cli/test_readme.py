"""README.md cannot rot: its Python blocks run verbatim, and every shell line it gives is checked against
what it names (a subcommand and its options, an extra of pyproject.toml, a pytest marker, a file)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from lstm_spec.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.S | re.M)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _shell_commands():
    """Every command of README's bash blocks, one per `&&`-separated part, comments dropped."""
    for lang, body in BLOCKS:
        if lang != "bash":
            continue
        for line in body.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                yield from (part.strip() for part in line.split("&&"))


COMMANDS = sorted(set(_shell_commands()))


def test_readme_has_python_and_shell_blocks():
    assert [b for lang, b in BLOCKS if lang == "python"] and COMMANDS


@pytest.mark.parametrize("index", range(sum(lang == "python" for lang, _ in BLOCKS)))
def test_python_block_runs_verbatim(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = [b for lang, b in BLOCKS if lang == "python"][index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("command", COMMANDS)
def test_shell_command_names_what_exists(command):
    words = shlex.split(command)
    env = [w for w in words if re.match(r"^[A-Z_]+=", w)]
    words = words[len(env):]
    if words[0] == "lstm-spec":
        build_parser().parse_args(words[1:])  # an unknown subcommand or option exits 2
    elif words[:2] == ["pip", "install"]:
        for extra in re.findall(r"\[([\w,]+)\]", command):
            for name in extra.split(","):
                assert name in PYPROJECT["project"]["optional-dependencies"], name
    elif words[:3] == ["python", "-m", "pytest"]:
        if "-m" in words[3:]:
            marks = {m.split(":")[0] for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
            expr = words[words.index("-m", 3) + 1]
            assert set(re.findall(r"\w+", expr)) - {"not", "and", "or"} <= marks, expr
    elif words[0] == "mkdocs":
        assert words[1] in ("serve", "build")
    elif words[:3] == ["python", "-m", "http.server"]:
        pass
    else:
        pytest.fail(f"README gives a command this test does not know how to check: {command!r}")
