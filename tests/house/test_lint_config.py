"""The ruff configuration in pyproject.toml lints every hand-written module fully: its layout exemptions for
reference/ name exactly the modules `lstm-spec generate` writes (the files with the generated header)."""

import re
import tomllib
from pathlib import Path

from lstm_spec.derivations.build import GENERATED_MARK

ROOT = Path(__file__).resolve().parents[2]


def test_the_layout_exemptions_name_exactly_the_generated_modules():
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["ruff"]["lint"]
    [pattern] = [k for k in lint["per-file-ignores"] if k.startswith("reference/")]
    listed = re.fullmatch(r"reference/\{([\w,]+)\}\.py", pattern).group(1).split(",")
    generated = sorted(p.stem for p in (ROOT / "reference").glob("*.py")
                       if GENERATED_MARK in p.read_text(encoding="utf-8"))
    assert sorted(listed) == generated
    assert "_runtime" not in listed and "masks" not in listed  # hand-written: fully linted
