"""Golden test vectors: every conformance case of every cell as NPZ arrays plus a JSON manifest, for
implementations in other languages (format: conformance/VECTORS.md).

``write_vectors(outdir)`` builds the whole directory next to ``outdir`` and renames it into place (a
reader never sees a half-written directory); ``check_vectors(outdir)`` validates one: the manifest, each
file's size and sha256, that each file loads with the declared arrays, shapes and dtypes, and that the
stored outputs and gradients agree with the current reference on the stored inputs.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

import lstm_spec

from .problem import Case, Problem, expected, make_problem
from .runner import default_cases

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CHECK_TOLERANCE = 1e-12  # stored float64 results against the reference recomputed on the stored inputs

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


def case_arrays(problem: Problem) -> dict:
    """Every array of a case: inputs, parameters, cotangents, the reference's outputs and gradients."""
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


def write_vectors(outdir, cells=None, seed: int = 0) -> dict:
    """Write every case of every cell (default: every built-in cell with a generated reference), the
    cases drawn from ``seed``. Atomic: everything is written into a temporary directory beside
    ``outdir`` (same file system), flushed, and renamed into place at the end; an exception or an
    interrupt leaves the previous ``outdir`` (or none) and removes the temporary directory. The bytes
    of every file depend only on the cells, the seed and the version of lstm-spec."""
    out = Path(outdir)
    cells = cells or _cells()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"vectors OUTDIR {out}: exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        entries = []
        cell_info = {}
        for cell in cells:
            mod = importlib.import_module(f"lstm_spec.reference.{cell}")
            sig = mod.SIGNATURE
            cell_info[cell] = {"parameters": {k: list(v) for k, v in sig.parameters.items()},
                               "states": {k: list(v) for k, v in sig.states.items()},
                               "inputs": {k: list(v) for k, v in sig.inputs.items()}, "output": sig.output}
            for k, case in enumerate(default_cases([cell], seed=seed)):
                arrays = case_arrays(make_problem(case, mod))
                name = f"{cell}-{k:03d}.npz"
                write_npz(tmp / name, arrays)
                entries.append({"id": f"{cell}-{k:03d}", "file": name, **_case_entry(case),
                                "name": case.name,
                                "arrays": {a: {"shape": list(v.shape), "dtype": str(v.dtype)} for a, v in arrays.items()},
                                "bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)})
        manifest = {"schema_version": SCHEMA_VERSION, "generator": f"lstm-spec {lstm_spec.__version__}",
                    "seed": seed, "layout": LAYOUT, "cells": cell_info, "cases": entries,
                    "check_tolerance": CHECK_TOLERANCE}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _dir_mode())  # mkdtemp makes it 0700; a directory made by mkdir follows the umask
        _fsync_dir(tmp)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        _fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_vectors(outdir, recompute: bool = True) -> list[str]:
    """Problems found in a vectors directory (empty list: valid). Each names the file at fault."""
    out = Path(outdir)
    problems = []
    mpath = out / MANIFEST
    if not out.is_dir():
        return [f"{out}: not a directory"]
    if not mpath.is_file():
        return [f"{mpath}: missing"]
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [f"{mpath}: not valid JSON ({exc})"]
    if not isinstance(manifest, dict):
        return [f"{mpath}: expected a JSON object, got {type(manifest).__name__}"]
    if manifest.get("schema_version") != SCHEMA_VERSION:
        return [f"{mpath}: schema_version {manifest.get('schema_version')!r}, this lstm-spec reads {SCHEMA_VERSION}"]
    cases = manifest.get("cases")
    if not isinstance(cases, list):
        return [f"{mpath}: 'cases': expected a list, got {type(cases).__name__}"]
    listed = set()
    for k, e in enumerate(cases):
        bad = _entry_problem(e)
        if bad:
            problems.append(f"{mpath}: cases[{k}]: {bad}")
            if isinstance(e, dict) and isinstance(e.get("file"), str):
                listed.add(e["file"])
            continue
        f = out / e["file"]
        listed.add(e["file"])
        if not f.is_file():
            problems.append(f"{e['file']}: missing")
            continue
        size = f.stat().st_size
        if size != e["bytes"]:
            problems.append(f"{e['file']}: {size} bytes, manifest says {e['bytes']} (truncated or modified)")
            continue
        if _sha256(f) != e["sha256"]:
            problems.append(f"{e['file']}: sha256 differs from the manifest (corrupted or modified)")
            continue
        try:
            with np.load(f) as z:
                arrays = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            problems.append(f"{e['file']}: cannot be read as NPZ ({exc})")
            continue
        here = []
        for a, meta in e["arrays"].items():
            if not (isinstance(meta, dict) and isinstance(meta.get("shape"), list) and "dtype" in meta):
                here.append(f"{mpath}: {e['file']}: array {a!r}: expected {{'shape': [...], 'dtype': ...}}")
            elif a not in arrays:
                here.append(f"{e['file']}: array {a!r} missing")
            elif list(arrays[a].shape) != meta["shape"] or str(arrays[a].dtype) != meta["dtype"]:
                here.append(f"{e['file']}: array {a!r} is {arrays[a].shape} {arrays[a].dtype}, manifest says "
                            f"{tuple(meta['shape'])} {meta['dtype']}")
        if recompute and not here:
            try:
                here += _recompute(e, arrays)
            except Exception as exc:  # noqa: BLE001 - a file the reference cannot be run on is a finding
                here.append(f"{e['file']}: cannot recompute the reference on it ({type(exc).__name__}: {exc})")
        problems += here
    for f in sorted(p.name for p in out.iterdir()):
        if f != MANIFEST and f not in listed:
            problems.append(f"{f}: not listed in the manifest")
    return problems


_ENTRY_KEYS = {"file": str, "bytes": int, "sha256": str, "arrays": dict, "cell": str, "T": int, "B": int, "D": int,
               "H": int, "dtype": str, "seed": int, "direction": str, "layers": int}


def _entry_problem(e) -> str:
    """What is wrong with a manifest entry ('' if nothing): missing keys, wrong types, a file name
    that is not a plain name in the directory."""
    if not isinstance(e, dict):
        return f"expected an object, got {type(e).__name__}"
    for key, typ in _ENTRY_KEYS.items():
        if key not in e:
            return f"missing key {key!r}"
        if not isinstance(e[key], typ) or (typ is int and isinstance(e[key], bool)):
            return f"{key!r}: expected {typ.__name__}, got {type(e[key]).__name__}"
    name = e["file"]
    if name in ("", ".", "..", MANIFEST) or "/" in name or "\\" in name:
        return f"'file': expected a plain file name in the directory, got {name!r}"
    return ""


def _recompute(e: dict, arrays: dict) -> list[str]:
    """The stored results against the reference recomputed from the stored inputs."""
    try:
        mod = importlib.import_module(f"lstm_spec.reference.{e['cell']}")
    except ImportError:
        return []  # a cell this version does not have: the checksums are all we can check
    case = Case(e["cell"], (e["T"], e["B"], e["D"], e["H"]), e["dtype"], e["seed"], e["direction"],
                tuple(e["lengths"]) if e["lengths"] else None, e["layers"])
    p = make_problem(case, mod)
    sl = case.slots
    p.x, p.dy = arrays["x"], arrays["dy"]
    p.params = [{n: arrays[f"param.{n}{_sfx(s)}"] for n in mod.SIGNATURE.parameters} for s in sl]
    p.init = [{st: arrays[f"{st}0{_sfx(s)}"] for st in mod.SIGNATURE.states} for s in sl]
    p.d_final = [{st: arrays[f"d_final.{st}{_sfx(s)}"] for st in mod.SIGNATURE.states} for s in sl]
    if "lengths" in arrays:
        p.lengths = arrays["lengths"]
    fresh = case_arrays(p)
    bad = []
    for k, v in fresh.items():
        if k not in arrays:
            bad.append(f"{e['file']}: array {k!r} missing")
            continue
        w = np.asarray(arrays[k], np.float64)
        scale = float(np.max(np.abs(v))) if v.size else 0.0
        err = float(np.max(np.abs(w - v))) if v.size else 0.0
        if err > CHECK_TOLERANCE * max(scale, 1.0):
            bad.append(f"{e['file']}: {k} differs from the reference by {err:.2e} (stale or modified values)")
    return bad
