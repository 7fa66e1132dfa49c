"""Golden vectors against a hostile user or file (issue 13, items 1, 12 and 13): `vectors` deletes only
what it wrote, recognised by its own manifest; `--check` notices a case removed with its manifest entry,
an empty or duplicated case list and sizes that contradict the files; every misuse is one line and an
exit status, never a traceback, and no size read from a file is trusted before it is bounded."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lstm_spec.cli import main
from lstm_spec.conformance import default_cases, vectors

CELL = "rnn_tanh"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "vectors"
    vectors.write_vectors(out, cells=[CELL])
    return out


def _copy(src, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _manifest(d):
    return json.loads((d / "manifest.json").read_text())


def _save_manifest(d, m):
    (d / "manifest.json").write_text(json.dumps(m))


def _reseal(d, e):
    """The manifest entry ``e`` made to agree with its file's current bytes (size and sha256)."""
    data = (d / e["file"]).read_bytes()
    e["bytes"], e["sha256"] = len(data), hashlib.sha256(data).hexdigest()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lstm-spec vectors: "), err
    assert "Traceback" not in err[0]
    return err[0]


# ---------------------------------------------------------------------------------------------- item 1
def test_a_directory_of_the_users_files_is_refused_and_untouched(tmp_path, capsys):
    d = tmp_path / "thesis"
    d.mkdir()
    (d / "chapter1.tex").write_text("three years of work")
    (d / "sub").mkdir()
    (d / "sub" / "data.csv").write_text("1,2,3")
    assert main(["vectors", str(d), "--cell", CELL]) == 2
    line = _one_line_error(capsys)
    assert str(d) in line and "chapter1.tex" in line and "choose another directory" in line
    assert (d / "chapter1.tex").read_text() == "three years of work"
    assert (d / "sub" / "data.csv").read_text() == "1,2,3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # nothing beside it either


def test_a_vectors_directory_with_a_foreign_file_is_refused(small, tmp_path):
    d = _copy(small, tmp_path)
    (d / "notes.txt").write_text("mine")
    before = _snapshot(d)
    with pytest.raises(vectors.VectorsError, match="notes.txt"):
        vectors.write_vectors(d, cells=[CELL])
    assert _snapshot(d) == before


def test_a_manifest_not_written_by_vectors_is_not_a_licence_to_delete(tmp_path):
    d = tmp_path / "other"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"cases": [{"file": "report.pdf"}]}))
    (d / "report.pdf").write_bytes(b"%PDF")
    with pytest.raises(vectors.VectorsError, match="not a directory written by lstm-spec vectors"):
        vectors.write_vectors(d, cells=[CELL])
    assert (d / "report.pdf").read_bytes() == b"%PDF"


def test_a_manifest_that_lists_a_users_file_is_no_licence_to_delete_it(small, tmp_path):
    """Only names `vectors` writes (<cell>-NNN.npz) are deletable, whatever a manifest lists."""
    d = _copy(small, tmp_path)
    m = _manifest(d)
    m["cases"][0]["file"] = "thesis.tex"
    _save_manifest(d, m)
    (d / "thesis.tex").write_text("mine")
    with pytest.raises(vectors.VectorsError, match="thesis.tex"):
        vectors.write_vectors(d, cells=[CELL])
    assert (d / "thesis.tex").read_text() == "mine"


def test_a_subdirectory_named_like_a_listed_file_is_refused(small, tmp_path):
    d = _copy(small, tmp_path)
    name = _manifest(d)["cases"][0]["file"]
    (d / name).unlink()
    (d / name).mkdir()
    (d / name / "inside.txt").write_text("mine")
    with pytest.raises(vectors.VectorsError, match=name):
        vectors.write_vectors(d, cells=[CELL])
    assert (d / name / "inside.txt").read_text() == "mine"


def test_a_symbolic_link_as_outdir_is_refused(small, tmp_path):
    d = _copy(small, tmp_path)
    link = tmp_path / "link"
    link.symlink_to(d)
    with pytest.raises(vectors.VectorsError, match="symbolic link"):
        vectors.write_vectors(link, cells=[CELL])
    assert link.is_symlink() and vectors.check_vectors(d) == []


def test_a_previous_vectors_directory_and_an_empty_one_are_written(small, tmp_path):
    d = _copy(small, tmp_path)
    vectors.write_vectors(d, cells=[CELL], seed=3)
    assert _manifest(d)["seed"] == 3 and vectors.check_vectors(d, recompute=False) == []
    e = tmp_path / "empty"
    e.mkdir()
    vectors.write_vectors(e, cells=[CELL])
    assert vectors.check_vectors(e, recompute=False) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "empty"]  # no .old or .tmp left


def test_a_file_that_appears_during_the_write_is_kept(small, tmp_path, monkeypatch):
    """Between the check of OUTDIR and the replacement a file appears in it: only the files the old
    manifest lists are deleted; the newcomer stays, in the old directory, and a warning says where."""
    d = _copy(small, tmp_path)
    real, calls = vectors.case_arrays, []

    def drop_a_file(problem):
        if not calls:
            (d / "late.txt").write_text("arrived late")
        calls.append(1)
        return real(problem)

    monkeypatch.setattr(vectors, "case_arrays", drop_a_file)
    with pytest.warns(UserWarning, match="late.txt"):
        vectors.write_vectors(d, cells=[CELL])
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".copy.old-")]
    assert len(kept) == 1 and [p.name for p in kept[0].iterdir()] == ["late.txt"]
    assert (kept[0] / "late.txt").read_text() == "arrived late"
    assert "late.txt" not in {p.name for p in d.iterdir()}


# ---------------------------------------------------------------------------------------------- item 12
def test_a_case_deleted_with_its_entry_is_named(small, tmp_path):
    d = _copy(small, tmp_path)
    m = _manifest(d)
    gone = m["cases"].pop(4)
    (d / gone["file"]).unlink()
    _save_manifest(d, m)
    problems = vectors.check_vectors(d, recompute=False)
    assert len(problems) == 1 and f"case {gone['id']} ({gone['file']})" in problems[0], problems
    assert "missing from 'cases'" in problems[0]


def test_an_empty_case_list_is_named(small, tmp_path):
    d = _copy(small, tmp_path)
    m = _manifest(d)
    for e in m["cases"]:
        (d / e["file"]).unlink()
    m["cases"] = []
    _save_manifest(d, m)
    problems = vectors.check_vectors(d)
    assert problems and "'cases' is empty" in problems[0], problems
    m["cells"] = {}
    _save_manifest(d, m)
    assert "'cells': expected" in vectors.check_vectors(d)[0]


def test_a_duplicated_entry_is_named(small, tmp_path):
    d = _copy(small, tmp_path)
    m = _manifest(d)
    m["cases"].append(dict(m["cases"][2]))
    _save_manifest(d, m)
    problems = vectors.check_vectors(d, recompute=False)
    n = len(m["cases"]) - 1  # the appended entry's index
    assert len(problems) == 1 and f"cases[{n}]" in problems[0] and "listed again (first at cases[2])" in problems[0]


@pytest.mark.parametrize("key, value", [("T", 2), ("H", 7), ("dtype", "float32"), ("layers", 2),
                                        ("direction", "reverse"), ("seed", 99), ("lengths", [1])])
def test_an_entry_that_contradicts_its_case_is_named(small, tmp_path, key, value):
    d = _copy(small, tmp_path)
    m = _manifest(d)
    e = m["cases"][0]
    assert e[key] != value
    e[key] = value
    _save_manifest(d, m)
    problems = vectors.check_vectors(d, recompute=False)
    assert len(problems) == 1 and f"cases[0] ({e['file']}): {key!r} is {value!r}" in problems[0], problems


def test_a_file_with_other_sizes_than_its_case_is_named(small, tmp_path):
    """The file and its manifest entry edited together (shapes, bytes, sha256 all agree): the shapes
    the case implies still do not."""
    d = _copy(small, tmp_path)
    m = _manifest(d)
    e = m["cases"][0]
    with np.load(d / e["file"]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x"] = np.concatenate([arrays["x"], arrays["x"]])
    vectors.write_npz(d / e["file"], arrays)
    e["arrays"]["x"]["shape"] = list(arrays["x"].shape)
    _reseal(d, e)
    _save_manifest(d, m)
    problems = vectors.check_vectors(d)
    assert len(problems) == 1 and f"{e['file']}: array 'x' is (2, 1, 3) float64, the case implies (1, 1, 3) float64" \
        in problems[0], problems


def test_an_array_in_the_file_that_the_manifest_omits_is_named(small, tmp_path):
    d = _copy(small, tmp_path)
    m = _manifest(d)
    e = m["cases"][1]
    with np.load(d / e["file"]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["extra"] = np.zeros(3)
    vectors.write_npz(d / e["file"], arrays)
    _reseal(d, e)
    _save_manifest(d, m)
    problems = vectors.check_vectors(d)
    assert problems == [f"{e['file']}: array 'extra' is not listed in the manifest"]


def test_cell_signature_edited_in_the_manifest_is_named(small, tmp_path):
    d = _copy(small, tmp_path)
    m = _manifest(d)
    m["cells"][CELL]["parameters"]["W"] = ["D", "H"]
    _save_manifest(d, m)
    problems = vectors.check_vectors(d, recompute=False)
    assert problems == [f"{d / 'manifest.json'}: cells.{CELL} differs from the cell in this version of lstm-spec"]


# ---------------------------------------------------------------------------------------------- item 13: writing
def test_outdir_that_is_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep me")
    assert main(["vectors", str(f), "--cell", CELL]) == 2
    assert "exists and is not a directory" in _one_line_error(capsys)
    assert f.read_text() == "keep me"


@pytest.mark.parametrize("arg", [".", "..", "sub/.."])
def test_outdir_that_holds_the_current_directory_is_one_line(tmp_path, monkeypatch, capsys, arg):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub" if arg == ".." else tmp_path)
    assert main(["vectors", arg, "--cell", CELL]) == 2
    assert "current directory" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_unknown_cell_and_negative_seed_are_one_line(tmp_path, capsys):
    assert main(["vectors", str(tmp_path / "v"), "--cell", "nope"]) == 2
    line = _one_line_error(capsys)
    assert "'nope'" in line and "lstm" in line
    assert main(["vectors", str(tmp_path / "v"), "--cell", CELL, "--seed", "-1"]) == 2
    assert "--seed -1" in _one_line_error(capsys)
    assert not (tmp_path / "v").exists()


def test_read_only_parent_is_one_line(tmp_path, monkeypatch, capsys):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)  # as root, a chmod 0555 directory is still writable
    assert main(["vectors", str(tmp_path / "v"), "--cell", CELL]) == 1
    assert "Permission denied" in _one_line_error(capsys)


def test_full_disk_is_one_line_and_leaves_the_old_directory(small, tmp_path, monkeypatch, capsys):
    d = _copy(small, tmp_path)
    before = _snapshot(d)

    def full(path, arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vectors, "write_npz", full)
    assert main(["vectors", str(d), "--cell", CELL]) == 1
    assert "No space left on device" in _one_line_error(capsys)
    assert _snapshot(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_cli_writes_and_replaces(small, tmp_path, capsys):
    d = _copy(small, tmp_path)
    assert main(["vectors", str(d), "--cell", CELL, "--cell", CELL]) == 0  # a cell named twice: written once
    assert f"wrote {len(default_cases([CELL]))} cases" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- item 13: --check
def test_deeply_nested_manifest_is_named(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    problems = vectors.check_vectors(tmp_path)
    assert len(problems) == 1 and "nested deeper than" in problems[0]
    assert main(["vectors", "--check", str(tmp_path)]) == 1
    assert "nested deeper than" in capsys.readouterr().out


@pytest.mark.parametrize("number", ["1" * 5000, "1" * 5000 + ".5", "1e99999", "NaN", "-Infinity"])
def test_giant_or_non_finite_number_is_named(tmp_path, number):
    (tmp_path / "manifest.json").write_text(f'{{"schema_version": 1, "seed": {number}, "cases": []}}')
    problems = vectors.check_vectors(tmp_path)
    assert len(problems) == 1 and "not valid JSON" in problems[0] and "number" in problems[0], problems


def test_oversized_manifest_is_named_without_reading_it(tmp_path, monkeypatch):
    monkeypatch.setattr(vectors, "MAX_MANIFEST_BYTES", 100)
    (tmp_path / "manifest.json").write_text(" " * 101 + "{}")
    problems = vectors.check_vectors(tmp_path)
    assert problems == [f"{tmp_path / 'manifest.json'}: 103 bytes, more than a manifest may have (100)"]


def _npy(header: bytes, data: bytes = b"", version=(1, 0)) -> bytes:
    fmt = "<H" if version == (1, 0) else "<I"
    return b"\x93NUMPY" + bytes(version) + struct.pack(fmt, len(header)) + header + data


def _hostile_member(d, e, member: bytes, compress=zipfile.ZIP_STORED, declared_header=None):
    """Replace the member x.npy of e's file by ``member``, then reseal the manifest."""
    with np.load(d / e["file"]) as z:
        arrays = {k: z[k] for k in z.files}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as zf:
        zf.writestr("x.npy", member)
        for k, v in arrays.items():
            if k != "x":
                with zf.open(f"{k}.npy", "w") as m:
                    np.lib.format.write_array(m, v)
    (d / e["file"]).write_bytes(buf.getvalue())
    _reseal(d, e)


@pytest.mark.parametrize("what, member, compress, message", [
    ("huge shape", _npy(b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000000,), }".ljust(127) + b"\n"),
     zipfile.ZIP_STORED, "shape (1000000000000000,) float64 needs 8000000000000000 bytes, the member has 0"),
    ("huge header", _npy(b" " * 200_000 + b"\n", version=(2, 0)), zipfile.ZIP_STORED,
     "header of 200001 bytes (at most 10000)"),
    ("declared header longer than the member", b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0),
     zipfile.ZIP_STORED, "header of 4294967280 bytes (at most 10000)"),
    ("compressed member", _npy(b" " * 100), zipfile.ZIP_DEFLATED, "compressed"),
])
def test_hostile_npz_is_named_not_loaded(small, tmp_path, what, member, compress, message):
    d = _copy(small, tmp_path)
    m = _manifest(d)
    e = m["cases"][0]
    _hostile_member(d, e, member, compress)
    _save_manifest(d, m)
    problems = vectors.check_vectors(d)
    assert len(problems) == 1 and problems[0].startswith(f"{e['file']}: cannot be read as NPZ"), problems
    assert message in problems[0], problems


def test_read_npz_round_trips_what_write_npz_writes(tmp_path):
    arrays = {"x": np.arange(6.0).reshape(2, 3), "lengths": np.array([1, 2], np.int64),
              "f": np.asfortranarray(np.arange(6.0, dtype=np.float32).reshape(2, 3)), "e": np.zeros((0, 3))}
    vectors.write_npz(tmp_path / "a.npz", arrays)
    back = vectors.read_npz(tmp_path / "a.npz")
    assert list(back) == list(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)


def test_values_read_from_the_directory_reach_messages_on_one_short_line(small, tmp_path):
    d = _copy(small, tmp_path)
    m = _manifest(d)
    m["cases"][0]["name"] = "x\n" * 50_000
    m["cases"][1]["file"] = "evil\nname.npz"
    _save_manifest(d, m)
    (d / "stray\nfile").write_text("")
    problems = vectors.check_vectors(d, recompute=False)
    assert all("\n" not in p and len(p) < 400 for p in problems), problems
    assert any("'name' is 'x\\nx\\n" in p for p in problems) and any("'stray\\nfile'" in p for p in problems)
    m["generator"] = "g\n" * 50_000
    _save_manifest(d, m)
    (problem,) = vectors.check_vectors(d)
    assert "'generator'" in problem and "\n" not in problem and len(problem) < 400


def test_too_many_cells_is_named_not_expanded(small, tmp_path):
    d = _copy(small, tmp_path)
    m = _manifest(d)
    m["cells"] = {f"c{k}": {} for k in range(vectors.MAX_CELLS + 1)}
    _save_manifest(d, m)
    (problem,) = vectors.check_vectors(d)
    assert "'cells': expected an object of 1 to 1000 cell names" in problem


def test_a_mistyped_cell_gets_a_suggestion_among_the_cells_vectors_writes():
    with pytest.raises(vectors.VectorsError, match="did you mean 'lstm'\\?") as err:
        vectors._check_request(["lstmm"], 0)
    assert "lstm_mse" not in str(err.value).split("choose from")[0]
