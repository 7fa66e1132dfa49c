"""A user adds a cell without touching the package: generate PATH, verify PATH (worked example: MGU)."""

import shutil
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parents[1] / "data"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lstm_spec", *args], capture_output=True, text=True, cwd=cwd)


def test_generate_and_verify_a_users_own_spec_file(tmp_path):
    spec = tmp_path / "mgu.toml"
    shutil.copy(DATA / "mgu.toml", spec)
    res = cli("generate", str(spec))
    assert res.returncode == 0, res.stderr
    module = tmp_path / "mgu.py"
    assert module.exists() and "from the spec of cell 'mgu'" in module.read_text()[:500]
    assert cli("generate", "--check", str(spec)).returncode == 0

    res = cli("verify", str(spec), "--no-torch", "--quiet")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [row for row in res.stdout.splitlines() if row.startswith("mgu")]
    assert len(rows) == 6 and all(" pass " in r for r in rows)
    assert sum("caught" in r for r in rows) == 4

    # the user edits their spec: the generated module is now stale and verify says so
    spec.write_text(spec.read_text().replace("(1 - f) ⊙ h[t-1] + f ⊙ h_tilde", "f ⊙ h[t-1] + (1 - f) ⊙ h_tilde"))
    assert cli("generate", "--check", str(spec)).returncode == 1
    res = cli("verify", str(spec), "--no-torch", "--quiet")
    assert res.returncode == 1 and "stale" in res.stdout


def test_a_bad_user_spec_is_reported_not_a_traceback(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text((DATA / "mgu.toml").read_text().replace("U_h @ fh", "U_h @ nothing"))
    res = cli("verify", str(spec))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "'nothing' is not declared" in res.stderr
