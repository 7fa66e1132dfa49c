"""Golden vectors: written atomically, round-trip through --check, and every kind of damage is named."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from lstm_spec.cli import main
from lstm_spec.conformance import vectors


@pytest.fixture(scope="module")
def vec(tmp_path_factory):
    out = tmp_path_factory.mktemp("v") / "vectors"
    vectors.write_vectors(out, cells=["lstm", "rnn_tanh"])
    return out


def _copy(vec, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(vec, dst)
    return dst


def test_round_trip(vec, capsys):
    m = json.loads((vec / "manifest.json").read_text())
    assert m["schema_version"] == vectors.SCHEMA_VERSION
    assert {e["cell"] for e in m["cases"]} == {"lstm", "rnn_tanh"}
    e = m["cases"][0]
    for key in ("file", "T", "B", "D", "H", "dtype", "seed", "direction", "lengths", "layers", "arrays", "sha256",
                "bytes"):
        assert key in e
    with np.load(vec / e["file"]) as z:
        for name in ("x", "h0", "c0", "dy", "d_final.h", "param.W_f", "y", "h_T", "c_T", "grad.W_f", "grad.x",
                     "grad.h0", "grad.c0"):
            assert name in z.files, name
    assert vectors.check_vectors(vec) == []
    assert main(["vectors", "--check", str(vec)]) == 0
    assert "OK" in capsys.readouterr().out


def test_vectors_agree_with_reference(vec):
    from lstm_spec.checks.tolerances import rel_error
    from lstm_spec.reference import lstm

    m = json.loads((vec / "manifest.json").read_text())
    e = next(e for e in m["cases"] if e["cell"] == "lstm" and e["layers"] == 1 and e["direction"] == "forward"
             and not e["lengths"] and e["dtype"] == "float64")
    with np.load(vec / e["file"]) as z:
        params = {k[6:]: z[k] for k in z.files if k.startswith("param.")}
        y, final, cache = lstm.forward(params, z["x"], z["h0"], z["c0"])
        g = lstm.backward(cache, z["dy"], {"h": z["d_final.h"], "c": z["d_final.c"]})
        assert rel_error(y, z["y"]) < 1e-14 and rel_error(final["c"], z["c_T"]) < 1e-14
        assert rel_error(g["U_o"], z["grad.U_o"]) < 1e-14 and rel_error(g["c0"], z["grad.c0"]) < 1e-14


def test_damage_is_named(vec, tmp_path, capsys):
    d = _copy(vec, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    files = [e["file"] for e in m["cases"]]
    # a flipped byte, a truncated file, a missing file, a stray file
    b = bytearray((d / files[0]).read_bytes())
    b[len(b) // 2] ^= 0xFF
    (d / files[0]).write_bytes(bytes(b))
    (d / files[1]).write_bytes((d / files[1]).read_bytes()[:100])
    (d / files[2]).unlink()
    (d / "stray.npz").write_bytes(b"x")
    problems = vectors.check_vectors(d)
    text = "\n".join(problems)
    assert f"{files[0]}: sha256 differs" in text
    assert f"{files[1]}: 100 bytes" in text and "truncated" in text
    assert f"{files[2]}: missing" in text
    assert "stray.npz: not listed" in text
    assert len(problems) == 4
    assert main(["vectors", "--check", str(d)]) == 1
    assert files[1] in capsys.readouterr().out


def test_modified_values_with_valid_checksum_are_caught(vec, tmp_path):
    d = _copy(vec, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    e = m["cases"][3]
    with np.load(d / e["file"]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["grad.U_f"] = arrays["grad.U_f"] + 1e-6
    np.savez(d / e["file"], **arrays)
    e["bytes"] = (d / e["file"]).stat().st_size
    e["sha256"] = hashlib.sha256((d / e["file"]).read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(m))
    problems = vectors.check_vectors(d)
    assert len(problems) == 1 and "grad.U_f differs from the reference" in problems[0]


def test_bad_manifest(tmp_path):
    assert "missing" in vectors.check_vectors(tmp_path)[0]
    (tmp_path / "manifest.json").write_text("{not json")
    assert "not valid JSON" in vectors.check_vectors(tmp_path)[0]
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    assert "schema_version 99" in vectors.check_vectors(tmp_path)[0]


def test_writing_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "v"
    vectors.write_vectors(out, cells=["rnn_tanh"])
    before = sorted(p.name for p in out.iterdir())
    calls = []

    def boom(problem):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(problem)

    real = vectors.case_arrays
    monkeypatch.setattr(vectors, "case_arrays", boom)
    with pytest.raises(RuntimeError):
        vectors.write_vectors(out, cells=["lstm"])
    assert sorted(p.name for p in out.iterdir()) == before  # the old directory is untouched
    assert vectors.check_vectors(out) == []
    assert [p.name for p in tmp_path.iterdir()] == ["v"]  # no temporary directory left behind
