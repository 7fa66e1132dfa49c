"""Golden vectors (issue 7, items 5 and 6): an interrupted write leaves the old directory or none, never
a half one; --check names every damaged file and every malformed manifest entry; the same seed gives
the same bytes in every file, in separate processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lstm_spec.cli import main
from lstm_spec.conformance import vectors

GUARD = 600  # seconds: only against a hang of the test itself


def _snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "vectors"
    vectors.write_vectors(out, cells=["rnn_tanh"])
    return out


def _copy(src, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------- atomic
def _interrupt_a_write(out: Path, sig) -> subprocess.CompletedProcess | None:
    """Start writing every cell into ``out`` in another process, send ``sig`` once its temporary
    directory holds a few files, and return when it has ended."""
    proc = subprocess.Popen([sys.executable, "-m", "lstm_spec.cli", "vectors", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + GUARD
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            tmps = list(out.parent.glob(f".{out.name}.tmp-*"))
            if tmps and len(list(tmps[0].iterdir())) >= 5:
                proc.send_signal(sig)
                break
            time.sleep(0.05)
        proc.communicate(timeout=GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, "the write finished before it could be interrupted"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_write_leaves_the_old_directory(small, tmp_path, sig):
    out = _copy(small, tmp_path)
    before = _snapshot(out)
    _interrupt_a_write(out, sig)
    assert _snapshot(out) == before  # untouched, and still valid
    assert vectors.check_vectors(out) == []
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "copy")
    if sig == signal.SIGKILL:  # nothing can clean up after SIGKILL: a hidden temporary directory remains
        assert all(n.startswith(".copy.tmp-") for n in left), left
    else:
        assert left == []


def test_interrupted_first_write_leaves_no_directory(tmp_path):
    out = tmp_path / "fresh"
    _interrupt_a_write(out, signal.SIGINT)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_outdir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    with pytest.raises(vectors.VectorsError, match=f"OUTDIR {f}: exists and is not a directory"):
        vectors.write_vectors(f, cells=["rnn_tanh"])
    assert f.read_text() == "keep me"
    assert vectors.check_vectors(f) == [f"{f}: not a directory"]


def test_directory_mode_follows_the_umask(small):
    umask = os.umask(0)
    os.umask(umask)
    assert (small.stat().st_mode & 0o777) == (0o777 & ~umask)  # not mkdtemp's 0700


# ---------------------------------------------------------------------------------------------- --check
def _manifest(d):
    return json.loads((d / "manifest.json").read_text())


def _save_manifest(d, m):
    (d / "manifest.json").write_text(json.dumps(m))


def test_truncated_to_nothing_and_checksummed_garbage_are_named(small, tmp_path):
    d = _copy(small, tmp_path)
    m = _manifest(d)
    a, b = m["cases"][0], m["cases"][1]
    (d / a["file"]).write_bytes(b"")
    garbage = b"not a zip file at all"
    (d / b["file"]).write_bytes(garbage)  # and a manifest that agrees with it: only the NPZ check can tell
    import hashlib

    b["bytes"], b["sha256"] = len(garbage), hashlib.sha256(garbage).hexdigest()
    _save_manifest(d, m)
    problems = vectors.check_vectors(d)
    assert problems[0] == f"{a['file']}: 0 bytes, manifest says {a['bytes']} (truncated or modified)"
    assert problems[1].startswith(f"{b['file']}: cannot be read as NPZ")
    assert len(problems) == 2


def test_each_file_is_recomputed_even_after_a_problem_in_another(small, tmp_path):
    """A damaged first file must not stop the value check of the later ones."""
    import hashlib

    d = _copy(small, tmp_path)
    m = _manifest(d)
    (d / m["cases"][0]["file"]).unlink()
    e = m["cases"][5]
    with np.load(d / e["file"]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["grad.U"] = arrays["grad.U"] * 1.001
    vectors.write_npz(d / e["file"], arrays)
    data = (d / e["file"]).read_bytes()
    e["bytes"], e["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    _save_manifest(d, m)
    problems = vectors.check_vectors(d)
    assert problems[0] == f"{m['cases'][0]['file']}: missing"
    assert len(problems) == 2 and problems[1].startswith(f"{e['file']}: grad.U differs from the reference")


@pytest.mark.parametrize("edit, message", [
    (lambda e: e.pop("sha256"), "missing key 'sha256'"),
    (lambda e: e.update(bytes="12"), "'bytes': expected int, got str"),
    (lambda e: e.update(file="../elsewhere.npz"), "'file': expected a plain file name in the directory"),
    (lambda e: e.update(arrays={"x": [1]}), "array 'x': expected {'shape': [...], 'dtype': ...}"),
])
def test_malformed_manifest_entry_is_named_not_raised(small, tmp_path, edit, message):
    d = _copy(small, tmp_path)
    m = _manifest(d)
    edit(m["cases"][2])
    _save_manifest(d, m)
    problems = vectors.check_vectors(d)
    assert message in problems[0] and str(d / "manifest.json") in problems[0], problems
    if "'file'" in message:  # the file it should have named is now one nobody lists
        assert problems[1:] == [f"{m['cases'][3]['file'][:-7]}002.npz: not listed in the manifest"]
    else:
        assert len(problems) == 1, problems


def test_malformed_manifest_top_level(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    assert vectors.check_vectors(tmp_path) == [f"{tmp_path / 'manifest.json'}: expected a JSON object, got list"]
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1, "cases": {}}))
    assert "'cases': expected a list, got dict" in vectors.check_vectors(tmp_path)[0]


def test_cli_check_names_the_file(small, tmp_path, capsys):
    d = _copy(small, tmp_path)
    name = _manifest(d)["cases"][4]["file"]
    data = bytearray((d / name).read_bytes())
    data[-10] ^= 0x01
    (d / name).write_bytes(bytes(data))
    assert main(["vectors", "--check", str(d)]) == 1
    out = capsys.readouterr().out
    assert f"{name}: sha256 differs from the manifest (corrupted or modified)" in out


def test_default_cells_are_the_ones_the_cases_can_feed():
    from lstm_spec.conformance.problem import reference_module

    cells = vectors._cells()
    assert "lstm" in cells and "rnn_tanh" in cells
    assert all(list(reference_module(c).SIGNATURE.inputs) == ["x"] for c in cells)


# ---------------------------------------------------------------------------------------------- determinism
def _write_in_a_process(out: Path, seed: int, hashseed: str) -> None:
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    res = subprocess.run([sys.executable, "-m", "lstm_spec.cli", "vectors", str(out), "--cell", "lstm",
                          "--cell", "gru_reset_after", "--seed", str(seed)], capture_output=True, text=True,
                         timeout=GUARD, env=env)
    assert res.returncode == 0, res.stdout + res.stderr


def test_same_seed_same_bytes_in_two_processes(tmp_path):
    _write_in_a_process(tmp_path / "a", 7, "1")
    _write_in_a_process(tmp_path / "b", 7, "2")
    a, b = _snapshot(tmp_path / "a"), _snapshot(tmp_path / "b")
    assert sorted(a) == sorted(b) and len(a) > 20
    assert [n for n in a if a[n] != b[n]] == []
    assert _manifest(tmp_path / "a")["seed"] == 7
    _write_in_a_process(tmp_path / "c", 8, "1")
    c = _snapshot(tmp_path / "c")
    assert a["lstm-000.npz"] != c["lstm-000.npz"]  # the seed does reach the arrays


def test_npz_bytes_do_not_depend_on_the_clock(tmp_path, monkeypatch):
    arrays = {"x": np.arange(6.0).reshape(2, 3), "lengths": np.array([1, 2], np.int64)}
    vectors.write_npz(tmp_path / "now.npz", arrays)
    later = time.time() + 10 * 365 * 86400
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(time, "localtime", lambda *a: time.gmtime(later))
    vectors.write_npz(tmp_path / "later.npz", arrays)
    assert (tmp_path / "now.npz").read_bytes() == (tmp_path / "later.npz").read_bytes()
    with np.load(tmp_path / "later.npz") as z:
        assert z.files == ["x", "lengths"] and np.array_equal(z["x"], arrays["x"])
