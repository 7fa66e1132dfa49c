"""Golden test vectors: every conformance case of every cell as NPZ arrays plus a JSON manifest, for
implementations in other languages (format: conformance/VECTORS.md).

``write_vectors(outdir)`` builds the whole directory next to ``outdir`` and renames it into place (a
reader never sees a half-written directory). It replaces only an empty directory or one it wrote
itself, and deletes only the files that directory's manifest lists (:func:`previous_files`).
``check_vectors(outdir)`` validates one: the manifest (parsed within limits), its case list against
the one its cells and seed imply, each file's size and sha256, that each file reads (without trusting
a size in it, :func:`read_npz`) with the declared arrays, shapes and dtypes, and that the stored
outputs and gradients agree with the current reference on the stored inputs.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import math
import os
import re
import shutil
import stat
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

import lstm_spec
from lstm_spec.checks.tolerances import rel_error, tolerance

from .problem import Case, Problem, expected, make_problem
from .runner import default_cases

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GENERATOR = "lstm-spec "  # how the manifest's "generator" starts: the mark of a directory `vectors` wrote
MAX_SEED = 2**32 - 1
# limits for reading a directory nobody vouches for (the largest real ones are far below them)
MAX_MANIFEST_BYTES = 64 << 20  # the manifest of every built-in cell: 1.9 MB
MAX_JSON_DEPTH = 32  # the manifest nests 6 deep
MAX_CELLS = 1000  # cells in one manifest (the spec has about ten)
MAX_CASES = 100_000  # entries in one manifest (18 per cell)
MAX_NUMBER_CHARS = 40  # the longest number in a manifest: a seed, a byte count, 1e-12
MAX_NPZ_BYTES = 64 << 20  # a case file: under 50 kB
MAX_NPY_HEADER = 10_000  # numpy's own limit for headers it does not trust


LAYOUT = {
    "sequences": "time-major: x (T, B, D), y and dy (T, B, directions * H)",
    "parameters": "per gate, named as in the cell's spec: W_g (H, D), U_g (H, H), b_g (H,); y = W_g x + U_g h + b_g",
    "states": "h0, c0, h_T, c_T: (B, H); d_final.<state> is the cotangent of <state>_T",
    "slots": "with two directions or two layers, per-slot arrays carry the suffix @l<layer>_<fwd|bwd>; "
             "layer l > 0 reads the previous layer's output, directions concatenated (fwd first)",
    "reverse": "a reverse direction reads each sequence backwards from its last valid step; its outputs are "
               "stored in original time order",
    "lengths": "int64 (B,): steps t >= lengths[b] are padding: dy is 0 there, y is stored as 0 there and "
               "must not be compared; the final states are those after the last valid step",
    "loss": "every grad.* is the gradient of L = sum(dy * y) + sum over states s of sum(d_final.s * s_T)",
    "dtype": "inputs, parameters and cotangents in the case's dtype; outputs and gradients are the float64 "
             "reference evaluated on exactly those values",
}


class VectorsError(Exception):
    """A request `vectors` refuses before it writes anything (the message says what and what to do)."""


class VectorsWarning(UserWarning):
    """Something the user should know after a successful write."""


class NpzError(ValueError):
    """A file that is not an NPZ as :func:`write_npz` writes it."""

def _cells() -> list[str]:
    from lstm_spec.spec import builtin_cells

    out = []
    for c in builtin_cells():
        try:
            mod = importlib.import_module(f"lstm_spec.reference.{c}")
        except ImportError:
            continue
        if list(mod.SIGNATURE.inputs) == ["x"]:  # the cases feed one input x (as `conform` does)
            out.append(c)
    return out


def _sfx(slot: str) -> str:
    return f"@{slot.replace(' ', '_')}" if slot else ""


def input_arrays(problem: Problem) -> dict:
    """The arrays a case feeds: inputs, parameters, initial states and cotangents."""
    case = problem.case
    arrays = {"x": problem.x, "dy": problem.dy}
    if problem.lengths is not None:
        arrays["lengths"] = problem.lengths.astype(np.int64)
    for k, slot in enumerate(case.slots):
        for name, v in problem.params[k].items():
            arrays[f"param.{name}{_sfx(slot)}"] = v
        for s in problem.states:
            arrays[f"{s}0{_sfx(slot)}"] = problem.init[k][s]
            arrays[f"d_final.{s}{_sfx(slot)}"] = problem.d_final[k][s]
    return arrays


def case_arrays(problem: Problem) -> dict:
    """Every array of a case: inputs, parameters, cotangents, the reference's outputs and gradients."""
    case = problem.case
    arrays = input_arrays(problem)
    res = expected(problem)
    for q, v in res.items():
        base, _, slot = q.partition(" [")
        slot = slot.rstrip("]")
        if base.startswith("d "):
            key = f"grad.{base[2:]}"
        else:
            key = base
        arrays[key + _sfx(slot)] = np.asarray(v, np.float64)
    if problem.lengths is not None:  # padding is unspecified: store zeros there
        mask = np.arange(case.shape[0])[:, None] < problem.lengths[None, :]
        arrays["y"] = np.where(mask[:, :, None], arrays["y"], 0.0)
    return arrays


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


# every member of every NPZ gets this time stamp and these permissions: a file's bytes depend only on its arrays
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = 0o644 << 16


def write_npz(path: Path, arrays: dict) -> None:
    """``arrays`` as an uncompressed NPZ (what ``np.load`` reads), byte for byte the same for the same
    arrays: members in the given order, fixed time stamps and permissions (not the clock's), then
    flushed to disk."""
    with open(path, "wb") as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, value in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
                info.external_attr = _ZIP_MODE
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def read_npz(path) -> dict:
    """The arrays of an NPZ as :func:`write_npz` writes it, read without trusting a size in it: every
    member stored (not compressed) and named ``<array>.npy`` once, its header at most
    ``MAX_NPY_HEADER`` bytes, its data exactly the bytes its shape and dtype need; nothing is allocated
    before the member is known to hold it. Raises :class:`NpzError` naming what is wrong."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = _member_name(info, arrays)
                with zf.open(info) as member:
                    arrays[name] = _read_npy(member, info.file_size, info.filename)
    except NpzError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError, NotImplementedError, struct.error,
            OverflowError) as exc:
        raise NpzError(str(exc) or type(exc).__name__) from exc
    return arrays


def _member_name(info: zipfile.ZipInfo, seen: dict) -> str:
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise NpzError(f"member {_short(info.filename)} is compressed or encrypted "
                       "(vectors stores members as they are)")
    if not info.filename.endswith(".npy"):
        raise NpzError(f"member {_short(info.filename)} is not an .npy array")
    if info.file_size != info.compress_size or info.file_size > MAX_NPZ_BYTES:
        raise NpzError(f"member {_short(info.filename)}: {info.file_size} bytes stored in {info.compress_size}")
    name = info.filename[:-4]
    if name in seen:
        raise NpzError(f"member {_short(info.filename)} appears twice")
    return name


def _read_npy(member, size: int, label: str) -> np.ndarray:
    version = np.lib.format.read_magic(member)
    if version not in ((1, 0), (2, 0)):
        raise NpzError(f"{label}: .npy version {version} (vectors writes 1.0 or 2.0)")
    fmt = "<H" if version == (1, 0) else "<I"
    raw = member.read(struct.calcsize(fmt))
    (hlen,) = struct.unpack(fmt, raw)
    if hlen > MAX_NPY_HEADER:
        raise NpzError(f"{label}: header of {hlen} bytes (at most {MAX_NPY_HEADER})")
    header = member.read(hlen)
    if len(header) != hlen:
        raise NpzError(f"{label}: header cut short ({len(header)} of {hlen} bytes)")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(io.BytesIO(raw + header), max_header_size=MAX_NPY_HEADER)
    if dtype.hasobject or dtype.itemsize == 0 or any(n < 0 for n in shape):
        raise NpzError(f"{label}: shape {shape} {dtype} is not an array of numbers")
    need, have = math.prod(shape) * dtype.itemsize, size - 8 - len(raw) - hlen
    if need != have:
        raise NpzError(f"{label}: shape {shape} {dtype} needs {need} bytes, the member has {have}")
    data = bytearray(member.read(need))
    if len(data) != need:
        raise NpzError(f"{label}: data cut short ({len(data)} of {need} bytes)")
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)


def _dir_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _case_entry(case: Case) -> dict:
    T, B, D, H = case.shape
    return {"cell": case.cell, "T": T, "B": B, "D": D, "H": H, "dtype": case.dtype, "seed": case.seed,
            "direction": case.direction, "lengths": list(case.lengths) if case.lengths else None,
            "layers": case.layers}


def _cell_info(mod) -> dict:
    sig = mod.SIGNATURE
    return {"parameters": {k: list(v) for k, v in sig.parameters.items()},
            "states": {k: list(v) for k, v in sig.states.items()},
            "inputs": {k: list(v) for k, v in sig.inputs.items()}, "output": sig.output}


def _expected_cases(cells, seed: int) -> dict:
    """{file name: (id, case)}: the cases ``write_vectors(cells=cells, seed=seed)`` writes, in its order."""
    out = {}
    for cell in cells:
        for k, case in enumerate(default_cases([cell], seed=seed)):
            out[f"{cell}-{k:03d}.npz"] = (f"{cell}-{k:03d}", case)
    return out


# ---------------------------------------------------------------------------------------------- writing
def _short(value, limit: int = 80) -> str:
    """``repr(value)`` on one line and at most about ``limit`` characters: names and values read from a
    file nobody vouches for go into messages only this way."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _some(names) -> str:
    names = [n if n.isprintable() else _short(n) for n in names]
    return ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")


def _regular(path: Path) -> bool:
    """A regular file, not a link, a directory or anything else."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _holds_cwd(out: Path) -> bool:
    try:
        cwd, target = Path.cwd().resolve(), out.resolve()
    except OSError:
        return False
    return target == cwd or target in cwd.parents


_CASE_FILE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*-[0-9]{3}\.npz")  # the names of the case files vectors writes


def _written_by_vectors(mpath: Path) -> set | None:
    """The names a manifest `vectors` wrote claims (itself and the files it lists that are named as
    vectors names them), None if it is not such a manifest."""
    if not _regular(mpath):
        return None
    manifest, bad = load_manifest(mpath)
    if bad or not isinstance(manifest, dict) or not isinstance(manifest.get("cases"), list) \
            or not str(manifest.get("generator", "")).startswith(GENERATOR):
        return None
    files = {e.get("file") for e in manifest["cases"] if isinstance(e, dict)}
    return {MANIFEST} | {f for f in files if isinstance(f, str) and _CASE_FILE.fullmatch(f)}


def previous_files(out: Path) -> list[str] | None:
    """What writing ``out`` may delete. None: ``out`` does not exist; []: an empty directory; else a
    directory `vectors` wrote (its manifest.json says lstm-spec generated it, and the directory holds
    nothing but regular files that manifest lists, named <cell>-NNN.npz): exactly those names.
    Anything else raises :class:`VectorsError` and nothing is touched."""
    fix = "nothing was written: choose another directory or empty this one"
    if out.name in ("", ".", "..") or _holds_cwd(out):
        raise VectorsError(f"OUTDIR {out}: is or holds the current directory, which cannot be replaced; "
                           f"name a directory for the vectors, e.g. {out / 'vectors'}")
    if out.is_symlink():
        raise VectorsError(f"OUTDIR {out}: is a symbolic link; name a directory ({fix})")
    if not out.exists():
        return None
    if not out.is_dir():
        raise VectorsError(f"OUTDIR {out}: exists and is not a directory; nothing was written: choose another "
                           "directory or remove it")
    names = sorted(os.listdir(out))
    if not names:
        return []
    ours = _written_by_vectors(out / MANIFEST)
    if ours is None:
        raise VectorsError(f"OUTDIR {out}: not empty and not a directory written by lstm-spec vectors (it holds "
                           f"{_some(names)}); {fix}")
    foreign = [n for n in names if n not in ours or not _regular(out / n)]
    if foreign:
        raise VectorsError(f"OUTDIR {out}: holds files lstm-spec vectors did not write ({_some(foreign)}); {fix}")
    return names


def _check_request(cells, seed) -> list[str]:
    available = _cells()
    cells = list(dict.fromkeys(cells or available))  # a cell named twice is written once
    unknown = [c for c in cells if c not in available]
    if unknown:
        from lstm_spec.spec import did_you_mean

        raise VectorsError(f"--cell {unknown[0]!r}: not a cell vectors can write (a built-in cell whose only "
                           f"input is x); {did_you_mean(unknown[0], available)}choose from {', '.join(available)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise VectorsError(f"--seed {seed}: expected an integer from 0 to {MAX_SEED}")
    return cells


def write_vectors(outdir, cells=None, seed: int = 0) -> dict:
    """Write every case of every cell (default: every built-in cell with a generated reference), the
    cases drawn from ``seed``. Refuses (:class:`VectorsError`, nothing touched) an ``outdir`` that is
    neither absent, empty nor a directory `vectors` wrote (:func:`previous_files`). Atomic: everything
    is written into a temporary directory beside ``outdir`` (same file system), flushed, and renamed into
    place at the end; an exception or an interrupt leaves the previous ``outdir`` (or none) and removes
    the temporary directory. The bytes of every file depend only on the cells, the seed and the version
    of lstm-spec."""
    out = Path(outdir)
    cells = _check_request(cells, seed)
    previous = previous_files(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        manifest = _write_into(tmp, cells, seed)
        os.chmod(tmp, _dir_mode())  # mkdtemp makes it 0700; a directory made by mkdir follows the umask
        _fsync_dir(tmp)
        _put_in_place(tmp, out, previous)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_into(tmp: Path, cells: list[str], seed: int) -> dict:
    entries, cell_info = [], {}
    for cell in cells:
        mod = importlib.import_module(f"lstm_spec.reference.{cell}")
        cell_info[cell] = _cell_info(mod)
    for name, (cid, case) in _expected_cases(cells, seed).items():
        arrays = case_arrays(make_problem(case, importlib.import_module(f"lstm_spec.reference.{case.cell}")))
        write_npz(tmp / name, arrays)
        entries.append({"id": cid, "file": name, **_case_entry(case), "name": case.name,
                        "arrays": {a: {"shape": list(v.shape), "dtype": str(v.dtype)} for a, v in arrays.items()},
                        "bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)})
    manifest = {"schema_version": SCHEMA_VERSION, "generator": f"{GENERATOR}{lstm_spec.__version__}",
                "seed": seed, "layout": LAYOUT, "cells": cell_info, "cases": entries,
                "check_tolerance": tolerance("vectors", "float64")}
    with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    return manifest


def _put_in_place(tmp: Path, out: Path, previous: list[str] | None) -> None:
    """Rename ``tmp`` to ``out``. No ``out``, or an empty one: one rename (rename(2) replaces an empty
    directory). A previous vectors directory: renamed aside, ``tmp`` renamed into place (on failure the
    old one is put back), then only the files ``previous`` names are deleted from it."""
    if not previous:
        os.replace(tmp, out)
        _fsync_dir(out.parent)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    try:
        os.replace(out, old)  # onto the empty directory just made
    except BaseException:
        old.rmdir()
        raise
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    _fsync_dir(out.parent)
    _remove_written(old, previous, out)


def _remove_written(old: Path, names: list[str], out: Path) -> None:
    for name in names:
        if _regular(old / name):
            try:
                (old / name).unlink()
            except OSError:
                pass
    try:
        old.rmdir()
    except OSError:  # a file appeared in OUTDIR while it was written: it is not ours to delete
        left = sorted(os.listdir(old))
        warnings.warn(f"OUTDIR {out}: the previous directory is kept as {old}: it holds files lstm-spec vectors "
                      f"did not write ({_some(left)}); move them and delete it", VectorsWarning, stacklevel=4)


# ---------------------------------------------------------------------------------------------- reading the manifest
class _Limit(ValueError):
    pass


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _json_depth(text: str) -> int:
    """How deep the arrays and objects of a JSON text nest (strings left out), without parsing it."""
    skeleton = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode()
    if not skeleton:
        return 0
    b = np.frombuffer(skeleton, np.uint8)
    return int(np.where((b == ord("[")) | (b == ord("{")), 1, -1).cumsum().max())


def _bounded(kind):
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise _Limit(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
        value = kind(text)
        if not math.isfinite(value):
            raise _Limit(f"number {text} is out of range")
        return value
    return parse


def _no_constant(name: str):
    raise _Limit(f"non-finite number {name}")


def load_manifest(mpath: Path) -> tuple[object, str]:
    """(the parsed manifest, '') or (None, the problem): read within limits (its size, how deep it
    nests, how long a number may be; NaN and infinities refused), never a traceback."""
    try:
        size = mpath.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            return None, f"{mpath}: {size} bytes, more than a manifest may have ({MAX_MANIFEST_BYTES})"
        with open(mpath, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        return None, f"{mpath}: cannot be read ({exc.strerror or exc})"
    try:
        if len(raw) > MAX_MANIFEST_BYTES:
            raise _Limit(f"more than {MAX_MANIFEST_BYTES} bytes")
        text = raw.decode("utf-8")
        if _json_depth(text) > MAX_JSON_DEPTH:
            raise _Limit(f"nested deeper than {MAX_JSON_DEPTH} levels")
        return json.loads(text, parse_int=_bounded(int), parse_float=_bounded(float),
                          parse_constant=_no_constant), ""
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and _Limit are ValueErrors
        return None, f"{mpath}: not valid JSON ({exc})"


# ---------------------------------------------------------------------------------------------- checking
def check_vectors(outdir, recompute: bool = True) -> list[str]:
    """Problems found in a vectors directory (empty list: valid). Each names the file at fault."""
    out = Path(outdir)
    mpath = out / MANIFEST
    if not out.is_dir():
        return [f"{out}: not a directory"]
    if not mpath.is_file():
        return [f"{mpath}: missing"]
    manifest, bad = load_manifest(mpath)
    bad = bad or _top_level_problem(manifest, mpath)
    if bad:
        return [bad]
    known = _cells()
    problems = _cells_problems(manifest, mpath, known)
    expected_cases = _expected_cases(manifest["cells"], manifest["seed"])
    listed, seen, malformed = set(), {}, False
    for k, e in enumerate(manifest["cases"]):
        if isinstance(e, dict) and isinstance(e.get("file"), str):
            listed.add(e["file"])
        bad = _entry_problem(e) or _against_expected(k, e, expected_cases, seen)
        if bad:
            problems.append(f"{mpath}: cases[{k}]{bad}")
            malformed = malformed or not bad.startswith(" (")
            continue
        case = expected_cases[e["file"]][1]
        problems += _check_file(out, e, case, recompute and case.cell in known)
    if not manifest["cases"]:
        problems.append(f"{mpath}: 'cases' is empty: the manifest's cells and seed imply {len(expected_cases)} cases")
    elif not malformed:  # with a malformed entry, which case it was meant to be is unknown: named above
        problems += [f"{mpath}: case {cid} ({f}) is missing from 'cases' (the manifest's cells and seed imply "
                     f"{len(expected_cases)} cases)" for f, (cid, _) in expected_cases.items() if f not in seen]
    problems += [f"{f if f.isprintable() else _short(f)}: not listed in the manifest"
                 for f in sorted(os.listdir(out)) if f != MANIFEST and f not in listed]
    return problems


def _top_level_problem(manifest, mpath: Path) -> str:
    """What is wrong with the manifest as a whole ('' if nothing): then no entry can be checked."""
    if not isinstance(manifest, dict):
        return f"{mpath}: expected a JSON object, got {type(manifest).__name__}"
    version = manifest.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        return f"{mpath}: schema_version {_short(version)}, this lstm-spec reads {SCHEMA_VERSION}"
    cases = manifest.get("cases")
    if not isinstance(cases, list):
        return f"{mpath}: 'cases': expected a list, got {type(cases).__name__}"
    if not str(manifest.get("generator", "")).startswith(GENERATOR):
        return f"{mpath}: 'generator': expected '{GENERATOR}<version>', got {_short(manifest.get('generator'))}"
    if len(cases) > MAX_CASES:
        return f"{mpath}: 'cases': {len(cases)} entries, more than a manifest may have ({MAX_CASES})"
    cells = manifest.get("cells")
    if not (isinstance(cells, dict) and 0 < len(cells) <= MAX_CELLS
            and all(c.isidentifier() and len(c) <= 64 and isinstance(v, dict) for c, v in cells.items())):
        return f"{mpath}: 'cells': expected an object of 1 to {MAX_CELLS} cell names, each with its signature"
    seed = manifest.get("seed")
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        return f"{mpath}: 'seed': expected an integer from 0 to {MAX_SEED}, got {_short(seed)}"
    return ""


def _cells_problems(manifest: dict, mpath: Path, known: list[str]) -> list[str]:
    """The signature stored for each cell this version has, against that cell's."""
    return [f"{mpath}: cells.{c} differs from the cell in this version of lstm-spec"
            for c, info in manifest["cells"].items()
            if c in known and info != _cell_info(importlib.import_module(f"lstm_spec.reference.{c}"))]


_ENTRY_KEYS = {"id": str, "file": str, "name": str, "bytes": int, "sha256": str, "arrays": dict, "cell": str,
               "T": int, "B": int, "D": int, "H": int, "dtype": str, "seed": int, "direction": str, "layers": int}


def _file_name_problem(name: str) -> str:
    if name in ("", ".", "..", MANIFEST) or "/" in name or "\\" in name or not name.isprintable() or len(name) > 255:
        return f"'file': expected a plain file name in the directory, got {_short(name)}"
    return ""


def _entry_problem(e) -> str:
    """What is wrong with a manifest entry's form (': ...', '' if nothing): missing keys, wrong types, a
    file name that is not a plain name in the directory."""
    if not isinstance(e, dict):
        return f": expected an object, got {type(e).__name__}"
    for key, typ in _ENTRY_KEYS.items():
        if key not in e:
            return f": missing key {key!r}"
        if not isinstance(e[key], typ) or (typ is int and isinstance(e[key], bool)):
            return f": {key!r}: expected {typ.__name__}, got {type(e[key]).__name__}"
    for a, meta in e["arrays"].items():
        if not (isinstance(meta, dict) and isinstance(meta.get("shape"), list) and isinstance(meta.get("dtype"), str)
                and all(type(n) is int for n in meta["shape"])):
            return f": array {_short(a)}: expected {{'shape': [...], 'dtype': ...}}"
    bad = _file_name_problem(e["file"])
    return f": {bad}" if bad else ""


def _against_expected(k: int, e: dict, expected_cases: dict, seen: dict) -> str:
    """An entry against the case its file name says it is, of those the manifest's cells and seed
    imply (' (file): ...', '' if it is that case): listed twice, not one of them, or a field differs."""
    f = e["file"]
    if f in seen:
        return f" ({f}): listed again (first at cases[{seen[f]}])"
    if f not in expected_cases:
        return f" ({f}): not one of the cases the manifest's cells and seed imply"
    seen[f] = k
    cid, case = expected_cases[f]
    for key, want in {"id": cid, **_case_entry(case), "name": case.name}.items():
        got = e.get(key)
        if got != want or type(got) is not type(want):
            return f" ({f}): {key!r} is {_short(got)}, the case {cid} of the manifest's cells and seed has {want!r}"
    return ""


def _fmt(a) -> str:
    return f"{tuple(a.shape)} {a.dtype}"


def _check_file(out: Path, e: dict, case: Case, recompute: bool) -> list[str]:
    """One listed file: present, its size and sha256, readable as NPZ, its arrays as the manifest says,
    and (``recompute``: a cell this version has) as the case implies and as the reference computes them."""
    name, f = e["file"], out / e["file"]
    if not f.exists():
        return [f"{name}: missing"]
    if not _regular(f):
        return [f"{name}: not a regular file"]
    size = f.stat().st_size
    if size != e["bytes"]:
        return [f"{name}: {size} bytes, manifest says {e['bytes']} (truncated or modified)"]
    if size > MAX_NPZ_BYTES:
        return [f"{name}: {size} bytes, more than a case file may have ({MAX_NPZ_BYTES})"]
    if _sha256(f) != e["sha256"]:
        return [f"{name}: sha256 differs from the manifest (corrupted or modified)"]
    try:
        arrays = read_npz(f)
    except NpzError as exc:
        return [f"{name}: cannot be read as NPZ ({exc})"]
    here = _arrays_against_manifest(e, arrays)
    if recompute and not here:
        try:
            here += _recompute(name, arrays, case)
        except Exception as exc:  # a file the reference cannot be run on is a finding
            here.append(f"{name}: cannot recompute the reference on it ({type(exc).__name__}: {exc})")
    return here


def _arrays_against_manifest(e: dict, arrays: dict) -> list[str]:
    here, name = [], e["file"]
    for a, meta in e["arrays"].items():
        if a not in arrays:
            here.append(f"{name}: array {_short(a)} missing")
        elif list(arrays[a].shape) != meta["shape"] or str(arrays[a].dtype) != meta["dtype"]:
            here.append(f"{name}: array {_short(a)} is {_fmt(arrays[a])}, "
                        f"manifest says {tuple(meta['shape'])} {_short(meta['dtype'])}")
    here += [f"{name}: array {_short(a)} is not listed in the manifest" for a in arrays if a not in e["arrays"]]
    return here


def _recompute(name: str, arrays: dict, case: Case) -> list[str]:
    """The stored arrays against the case: the inputs' shapes and dtypes (and sequence lengths) as the
    case implies, every array of the case and no other, the results as the reference recomputes them
    from the stored inputs."""
    mod = importlib.import_module(f"lstm_spec.reference.{case.cell}")
    p = make_problem(case, mod)
    want = input_arrays(p)
    bad = [f"{name}: array {k!r} missing" for k in want if k not in arrays]
    bad += [f"{name}: array {k!r} is {_fmt(arrays[k])}, the case implies {_fmt(v)}" for k, v in want.items()
            if k in arrays and (arrays[k].shape != v.shape or arrays[k].dtype != v.dtype)]
    if not bad and "lengths" in want and not np.array_equal(arrays["lengths"], want["lengths"]):
        bad.append(f"{name}: lengths {arrays['lengths'].tolist()}, the case has {want['lengths'].tolist()}")
    if bad:
        return bad
    sl = case.slots
    p.x, p.dy = arrays["x"], arrays["dy"]
    p.params = [{n: arrays[f"param.{n}{_sfx(s)}"] for n in mod.SIGNATURE.parameters} for s in sl]
    p.init = [{st: arrays[f"{st}0{_sfx(s)}"] for st in mod.SIGNATURE.states} for s in sl]
    p.d_final = [{st: arrays[f"d_final.{st}{_sfx(s)}"] for st in mod.SIGNATURE.states} for s in sl]
    fresh = case_arrays(p)
    bad = [f"{name}: array {_short(k)} is not an array of the case" for k in arrays if k not in fresh]
    for k, v in fresh.items():
        if k not in arrays:
            bad.append(f"{name}: array {k!r} missing")
        elif arrays[k].shape != v.shape or arrays[k].dtype != v.dtype:
            bad.append(f"{name}: array {k!r} is {_fmt(arrays[k])}, the case implies {_fmt(v)}")
        elif (err := rel_error(arrays[k], v)) > tolerance("vectors", "float64"):
            bad.append(f"{name}: {k} differs from the reference by {err:.2e} relative (stale or modified values)")
    return bad
