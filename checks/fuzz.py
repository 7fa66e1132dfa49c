"""Fuzzing the spec loader: spec files are untrusted input.

``python -m lstm_spec.checks.fuzz --n 10000 --seed 0`` writes N generated spec files, loads each one and
counts how it ends: accepted, rejected with a :class:`SpecError`, or a *crash* (any other exception, or
a file that takes longer than ``--timeout`` seconds). Accepted specs are pushed further: a sample of
them (``--derive-every``) is derived, turned into a module by the code generator, compiled, and run
forward and backward on a small random instance, since an accepted spec that then breaks the
derivation or the generated code is a crash too. The text of every crash is saved with its traceback
under ``--crash-dir`` for reproduction (``lstm-spec derive PATH``). Exit status 1 when anything crashed.

Each spec that runs also has its gradients checked against complex-step derivatives (``--cs-tol``) on
instances with several lengths T and batch sizes B, and the text generated for it is compared with the text
a second process generates under another PYTHONHASHSEED (``--no-hash-seed`` skips it). A mismatch is a
finding like a crash.

The inputs come from four generators, in turn:

- mutations of the real spec files (spec/*.toml): deleted, duplicated and swapped lines, renamed and
  swapped names, hostile tokens (``__class__``, ``eval(``, ``.real``, ``**``, huge exponents and
  numbers, NaN/Inf, deep parentheses), random bytes and Unicode, wrong TOML value types, truncation;
- random well-formed cells: random expression trees over declared names, most of them accepted;
- random token sequences of the expression language put into a valid file's equations;
- random cells whose quantities, dimensions and functions are named like what the generated code uses
  (``d_c``, ``W_x``, ``S``, ``Z0``, ``tmp0``, the runtime's names, names made of two others).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lstm_spec.spec.cells import SPEC_DIR, load_file
from lstm_spec.spec.language import SpecError

from .tolerances import tolerance

HOSTILE = [
    "__class__", "__import__", "__builtins__", "eval(", "exec(", "import", "os.system", ".real", "x.T",
    "lambda", "**", "^ 99", "^ 999999999", "^ 8 ^ 8", "^ -1", "^ 1.5", "1e308", "9" * 40, "nan", "inf",
    "NaN", "-inf", "0", "/ 0", "(" * 40, ")" * 40, "[t-2]", "[t+1]", "[0]", "h[t-1][t-1]", ";", ",", ":",
    "'", '"', "\\", "`", "$", "{", "}", "!", "==", "=", "@ @", "⊙", "×", "∑", "٣", "\u3000", "\u00a0",
    "\u2028", "\x00", "\x7f", "\ufeff", "é", "ä", "T", "B", "t", "np", "params", "range", "len", "None",
    "True", "sigma", "tanh", "sum(", "logsumexp(", "stop_gradient(", "clip(", "exp(", "identity(",
    "W_f", "U_f", "b_f", "x", "h", "c", "h[t-1]", "c[t-1]", "z_f", "d_h", "h_prev", "S_x", "P_x", "W_f_x",
]
TOKENS = ["+", "-", "*", "⊙", "/", "@", "^", "(", ")", "[", "]", "t", "1", "2", "0.5", "=", "h", "c", "x",
          "W_f", "U_f", "b_f", "z", "f", "sigma", "tanh", "h[t-1]", "c[t-1]", "-", "3"]
TOML_VALUES = ["5", "1.5", "true", "[1, 2]", "{ a = 1 }", '"H x H x H"', '""', '"H x"', '"1"', "nan", "inf",
               "1979-05-27", '"' + "A" * 300 + '"', "'''\nmulti\nline'''", '"a\\u0000b"', "[[1], [[2]]]",
               "-0", "0x10", '{ kind = "clip", bound = 0 }', '{ kind = "clip", bound = nan }',
               '{ kind = "clip", bound = 1e-300 }', '{ kind = ["tanh"] }', '["tanh"]', '"os.system"']


def real_specs() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(SPEC_DIR.glob("*.toml"))]


# ----------------------------------------------------------------------------------------- generators
def mutate(source: str, rng: random.Random) -> bytes:
    """One to four random edits of a spec file's text."""
    text = source
    for _ in range(rng.randint(1, 4)):
        lines = text.split("\n")
        how = rng.randrange(14)
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        if how == 0:  # delete a line
            del lines[i]
        elif how == 1:  # duplicate a line
            lines.insert(j, lines[i])
        elif how == 2:  # swap two lines
            lines[i], lines[j] = lines[j], lines[i]
        elif how in (3, 4):  # rename a name everywhere, or swap two names
            names = sorted(set(re.findall(r"\b[A-Za-z][A-Za-z0-9_]*\b", text)))
            a, b = rng.choice(names), rng.choice(names + HOSTILE)
            if how == 3:
                text = re.sub(rf"\b{re.escape(a)}\b", lambda m: b, text)  # noqa: B023 - called within the iteration
            else:
                text = re.sub(rf"\b({re.escape(a)}|{re.escape(b)})\b", lambda m: b if m.group(1) == a else a,  # noqa: B023 - called within the iteration
                              text)
            continue
        elif how in (5, 6, 7):  # a hostile token inside a line (most often an equation)
            k = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:k] + rng.choice([" ", ""]) + rng.choice(HOSTILE) + rng.choice([" ", ""]) + lines[i][k:]
        elif how == 8:  # replace a TOML value by one of another type
            if "=" in lines[i]:
                lines[i] = lines[i].split("=", 1)[0] + "= " + rng.choice(TOML_VALUES)
        elif how == 9:  # a number replaced by a huge or odd one
            text = re.sub(r"\b\d+\b", lambda m: rng.choice(["9" * rng.randint(5, 60), "0", "00", "8", "9"])
                          if rng.random() < 0.3 else m.group(0), text)
            continue
        elif how == 10:  # random Unicode characters
            k = rng.randrange(len(text) + 1)
            text = text[:k] + "".join(chr(rng.choice([rng.randrange(32, 0x2FFF), rng.randrange(0x10000, 0x10FFFF)]))
                                      for _ in range(rng.randint(1, 5))) + text[k:]
            continue
        elif how == 11:  # random bytes (maybe not UTF-8 any more)
            data = text.encode("utf-8")
            k = rng.randrange(len(data) + 1)
            return data[:k] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[k:]
        elif how == 12:  # truncate
            return text.encode("utf-8")[: rng.randrange(len(text) + 1)]
        else:  # an extra equation, maybe a long or deep one
            body = rng.choice([" + ".join(["h[t-1]"] * rng.randint(1, 400)), "(" * 80 + "x" + ")" * 80,
                               "-" * rng.randint(1, 100) + "x", "tanh(" * 40 + "x" + ")" * 40,
                               "x" + " * x" * rng.randint(1, 40), "x / (x - x)", "c[t-1] ^ 8 ^ 8"])
            at = next((n for n, line in enumerate(lines) if line.startswith("equations")), i) + 1
            lines.insert(at, f"{rng.choice(['q', 'h', 'c', 'x', 'W_f', 'z_f'])} = {body}")
        text = "\n".join(lines)
    return text.encode("utf-8", "surrogatepass")


# Names that look like what the generator invents or reads (adjoints d_*, products M_v, stacks S_v and P_v,
# buffers d_Z0, temporaries tmp0, auxiliaries tanh_c, initial states h0, the runtime's and the module's own
# names): a random cell takes some of these for its quantities, dimensions and functions. Some are reserved
# (a SpecError), the others must give modules that compute exactly what the plain names give.
ODD_NAMES = ["Z0", "Z1", "S", "P", "S_x", "P_x", "tmp0", "tmp1", "tmp2", "tanh_c", "aux_d_c", "mean_a0",
             "W_x", "q_x", "A_q", "x0", "c0", "U_h", "W0_x", "act_a0"]
REFUSED_NAMES = ["d_c", "h_prev", "S_h_prev", "unit_mean", "unit_count", "rsqrt", "sigmoid", "seq_matmul", "dims",
                 "np", "grads"]  # reserved: a SpecError, now and then
ODD_FUNCTIONS = ["d", "S", "P", "A", "A_q", "W", "tanh", "tmp", "Z", "unit_mean", "mean", "d_S"]


class _Namer:
    """The names of one random cell: the plain name, or (odd=True, now and then) an odd one, all distinct;
    some odd names are made from names already taken (A_q beside A and q_x: M_v products that meet)."""

    def __init__(self, rng: random.Random, odd: bool):
        self.rng, self.odd, self.used = rng, odd, set()

    def pick(self, plain: str, pool=ODD_NAMES) -> str:
        name, r = plain, self.rng.random() if self.odd else 1.0
        if r < 0.03:
            name = self.rng.choice(REFUSED_NAMES)
        elif r < 0.3:
            made = [f"{a}_{b}" for a in sorted(self.used) for b in sorted(self.used) if a != b][:40]
            name = self.rng.choice(pool + made)
        while name in self.used:
            name = f"{plain}q{len(self.used)}"
        self.used.add(name)
        return name


def random_cell(rng: random.Random, odd_names: bool = False) -> bytes:
    """A random, mostly well-formed cell: random expression trees over declared names (with odd_names, some
    of them named like what the generated code uses)."""
    kinds = {"g": "logistic", "act": "tanh", "lin": "identity", "ex": "exp", "sg": "stop_gradient",
             "clp": '{ kind = "clip", bound = %s }' % rng.choice(["0.5", "1", "2.5", "3"]), "total": "sum",
             "lse": "logsumexp", "avg": "mean"}
    N = _Namer(rng, odd_names)
    D, H, x = N.pick("D"), N.pick("H"), N.pick("x")
    states = [N.pick("h")] + ([N.pick("c")] if rng.random() < 0.5 else [])
    fn = {f: N.pick(f, ODD_FUNCTIONS) for f in kinds}
    E = _RandomExpressions(rng, N, x, states, fn)
    equations = []
    for k in range(rng.randint(1, 6)):
        a = N.pick(f"a{k}")
        equations.append(f"{a} = {E.vec(rng.randint(0, 3))}")
        E.defined.append(a)
    # states: each reads its previous value and every intermediate nobody used yet
    for n, s in enumerate(states):
        unused = [d for d in E.defined if not any(re.search(rf"\b{d}\b", e.split('=', 1)[1]) for e in equations)]
        rhs = " + ".join(unused + [f"{E.param('H x H')} @ {s}[t-1]"] + ([E.vec(1)] if rng.random() < 0.5 else []))
        if n == 0 and rng.random() < 0.5:
            rhs = E.call("act", rhs)
        equations.append(f"{s} = {rhs}")
    if not any(f"@ {x}" in e for e in equations):
        equations[-1] += f" + {E.param('H x D')} @ {x}"
    lines = ['name = "fuzzcell"', f'output = "{rng.choice(states)}"', "equations = '''"] + equations + ["'''",
             "[dimensions]", f'{D} = "in"', f'{H} = "hidden"', "[inputs]", f'{x} = "{D}"', "[states]"]
    lines += [f'{s} = "{H}"' for s in states] + ["[parameters]"]
    shown = {"H x D": f"{H} x {D}", "H x H": f"{H} x {H}", "H": H}
    lines += [f'{p} = "{shown[shape]}"' for p, shape in E.params.items()]
    lines += ["[functions]"] + [f'{fn[f]} = {kinds[f] if kinds[f].startswith("{") else chr(34) + kinds[f] + chr(34)}'
                                for f in sorted(E.calls)]
    return "\n".join(lines).encode("utf-8")


class _RandomExpressions:
    """Random vector expressions of one random cell over its input, states, the intermediates defined so
    far and parameters it declares on use (params: name -> 'H x D' | 'H x H' | 'H'; calls: the functions used)."""

    def __init__(self, rng: random.Random, names: _Namer, x: str, states: list, fn: dict):
        self.rng, self.names, self.x, self.states, self.fn = rng, names, x, states, fn
        self.params: dict[str, str] = {}
        self.defined: list[str] = []
        self.calls: set[str] = set()

    def param(self, shape):
        name = self.names.pick({"H x D": "W", "H x H": "U", "H": "b"}[shape] + str(len(self.params)))
        self.params[name] = shape
        return name

    def call(self, f, arg):
        self.calls.add(f)
        return f"{self.fn[f]}({arg})"

    def leaf(self):
        rng, leaf = self.rng, self.rng.random()
        if leaf < 0.3:
            return f"({self.param('H x D')} @ {self.x})"
        if leaf < 0.5:
            return f"({self.param('H x H')} @ {rng.choice([s + '[t-1]' for s in self.states] + self.defined)})"
        if leaf < 0.65:
            return self.param("H")
        return rng.choice([s + "[t-1]" for s in self.states] + self.defined)

    def vec(self, depth):
        rng, vec = self.rng, self.vec
        r = rng.random()
        if depth <= 0 or r < 0.3:
            return self.leaf()
        if r < 0.55:
            return f"{vec(depth - 1)} {rng.choice(['+', '-', '*', '⊙', '*'])} {vec(depth - 1)}"
        if r < 0.6:
            return f"{vec(depth - 1)} / {rng.choice(['2', '(1 + ' + vec(0) + ' ^ 2)'])}"
        if r < 0.65:
            return f"-{vec(depth - 1)}"
        if r < 0.7:
            return f"({vec(depth - 1)}) ^ {rng.randint(0, 3)}"
        if r < 0.75:
            return f"{rng.choice(['0.5', '2', '1'])} {rng.choice(['*', '+', '-'])} {vec(depth - 1)}"
        if r < 0.8:
            return f"{self.call(rng.choice(['total', 'lse', 'avg']), vec(depth - 1))} * {vec(0)}"
        return self.call(rng.choice(["g", "act", "lin", "ex", "sg", "clp"]), vec(depth - 1))


def token_soup(source: str, rng: random.Random) -> bytes:
    """A real spec whose equations get one random line of grammar tokens (and hostile ones)."""
    vocab = TOKENS + HOSTILE[: rng.randint(0, len(HOSTILE))]
    line = rng.choice(["h", "q", "z_f", "c"]) + " = " + " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 30)))
    lines = source.split("\n")
    at = next((n for n, text in enumerate(lines) if text.startswith("equations")), 0) + 1
    lines.insert(at + rng.randrange(3), line)
    return "\n".join(lines).encode("utf-8")


def generate(seed: int, n: int):
    """The n inputs of a run, as (label, bytes); the same seed gives the same inputs."""
    rng = random.Random(seed)
    specs = real_specs()
    for k in range(n):
        kind = k % 4
        if kind == 0:
            yield f"mutation-{k}", mutate(rng.choice(specs), rng)
        elif kind == 1:
            yield f"random-{k}", random_cell(rng)
        elif kind == 2:
            yield f"tokens-{k}", token_soup(rng.choice(specs), rng)
        else:
            yield f"named-{k}", random_cell(rng, odd_names=True)


# ----------------------------------------------------------------------------------------- running
class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    """Raise Hang after `seconds` (SIGALRM; a no-op outside the main thread or without SIGALRM)."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame):
        raise Hang(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


CS_SHAPES = [(1, 1, 3, 2), (3, 2, 2, 3), (2, 3, 4, 2)]  # (T, B, D, H): several lengths and batch sizes
CS_TOL = tolerance("fuzz_complex_step", "complex128")  # the table says why


class GradientMismatch(Exception):
    """The generated backward disagrees with complex-step derivatives of the generated forward."""


def push_further(cell, run: bool = True, stage: list | None = None, cs_tol: float | None = None,
                 outcome: dict | None = None) -> str:
    """Derive an accepted cell, generate its module, compile it and (run=True) run forward and backward
    once on a small random instance; with cs_tol, check its gradients against complex step on CS_SHAPES.
    Returns the generated text. Any exception here is a finding for an accepted spec; `stage` (a list)
    gets the name of each step as it starts, so a finding can say where it happened; `outcome` gets
    "cs_error" (or "cs_skipped" with the reason)."""
    stage = [] if stage is None else stage
    outcome = {} if outcome is None else outcome
    import numpy as np

    from lstm_spec.derivations import derive
    from lstm_spec.derivations.codegen import generate_module

    from . import cases
    from .mutants import load_module

    stage.append("derive")
    derivation = derive(cell)
    stage.append("generate")
    text = generate_module(derivation)
    stage.append("compile")
    compile(text, f"<generated from the spec of {cell.name}>", "exec")
    if run:
        stage.append("run")
        module = load_module(text, "lstm_spec_fuzzed")
        try:
            inst = cases.random_instance(module, (2, 2, 3, 2), seed=0)
        except RuntimeError as exc:  # every draw lands near a clip kink: nothing to run, not a crash
            if "kinks" in str(exc):
                outcome["cs_skipped"] = "kinks"
                return text
            raise
        with np.errstate(all="ignore"):
            cases.run(module, inst)
            if cs_tol is not None:
                stage.append("gradient")
                _check_gradients(module, cs_tol, outcome)
    return text


def _check_gradients(module, tol: float, outcome: dict) -> None:
    """Complex step against the generated backward (checks.numeric, the check `verify` runs), on the instances
    it draws; a disagreement is a finding unless one of those instances is not finite (an overflow of
    the random cell's polynomial, not an error of the derivation) or lies near a clip's kink."""
    import numpy as np

    from . import cases
    from .numeric import check_derivatives

    result = check_derivatives(module, "complex_step", shapes=CS_SHAPES, seed=0)
    outcome["cs_error"] = result["error"]
    if result["error"] <= tol:
        return
    seeds = [(CS_SHAPES[0], 0)] + [(shape, 10 + k) for k, shape in enumerate(CS_SHAPES)]
    try:
        for shape, seed in seeds:
            y, final, grads = cases.run(module, cases.random_instance(module, shape, seed))
            if not all(np.isfinite(a).all() for a in [y, *final.values(), *grads.values()]):
                outcome["cs_skipped"] = "non-finite values"
                return
    except RuntimeError as exc:
        if "kinks" in str(exc):
            outcome["cs_skipped"] = "kinks"
            return
        raise
    raise GradientMismatch(f"complex step disagrees with backward(): error {result['error']:.2e} at {result['worst']}")


# ----------------------------------------------------------------------------------------- hash seeds
def generated_digests(paths) -> dict[str, str]:
    """sha256 of the module generated from each spec file (in this process)."""
    import hashlib

    from lstm_spec.derivations import derive
    from lstm_spec.derivations.codegen import generate_module

    return {str(p): hashlib.sha256(generate_module(derive(load_file(p))).encode("utf-8")).hexdigest()
            for p in paths}


def other_hash_seed() -> str:
    """A PYTHONHASHSEED other than this process's (0 when this one is random: they differ but by chance)."""
    mine = os.environ.get("PYTHONHASHSEED", "random")
    return "1" if mine == "0" else "0"


def digests_in_another_process(paths, seed: str, timeout: float = 3600) -> dict[str, str]:
    """generated_digests(paths) computed by a second Python process with PYTHONHASHSEED=seed."""
    import json
    import subprocess

    code = ("import json, sys; from lstm_spec.checks.fuzz import generated_digests; "
            "print(json.dumps(generated_digests(sys.argv[1:])))")
    out = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
    return json.loads(out.stdout)


def hash_seed_differences(mine: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """The specs whose generated text differs between the two processes (or that one did not generate)."""
    return sorted(p for p in mine if theirs.get(p) != mine[p])


STAGES = ("load", "derive", "generate", "compile", "run", "gradient", "hash seed")


@dataclass
class FuzzReport:
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    derived: int = 0
    crashes: list = field(default_factory=list)  # findings: (label, saved path, summary, stage)
    without_line: int = 0  # rejections whose message names no line
    rejected_by_derivation: int = 0
    cs_checked: int = 0  # specs whose gradients were checked against complex step
    cs_skipped: int = 0  # ... or could not be (non-finite values, every draw near a kink)
    cs_max: float = 0.0  # the largest complex-step error seen
    hash_compared: int = 0  # generated texts compared with a second process's (another PYTHONHASHSEED)
    hash_seed: str = ""
    times: list = field(default_factory=list)
    slowest: tuple = (0.0, "")
    total: float = 0.0

    def lines(self) -> list[str]:
        median = statistics.median(self.times) if self.times else 0.0
        out = [f"inputs:   {self.inputs}",
               f"accepted: {self.accepted} (of which derived, generated, compiled and run: {self.derived}; "
               f"refused by the derivation with a SpecError: {self.rejected_by_derivation})",
               f"rejected: {self.rejected} (SpecError; {self.without_line} of the messages name no line: "
               "whole-file errors such as invalid UTF-8 nesting or size)",
               f"complex step: {self.cs_checked} run specs' gradients checked on (T, B, D, H) in {CS_SHAPES}, "
               f"largest error {self.cs_max:.1e}; {self.cs_skipped} not checkable (non-finite values or kinks)",
               f"hash seed: {self.hash_compared} generated texts compared with a second process "
               f"(PYTHONHASHSEED={self.hash_seed or '-'})",
               f"crashes:  {len(self.crashes)}" + "".join(
                   f", {sum(c[3] == st for c in self.crashes)} at {st}"
                   for st in STAGES if any(c[3] == st for c in self.crashes)),
               f"time per file: max {self.slowest[0]:.3f} s ({self.slowest[1]}), median {median * 1000:.2f} ms",
               f"total time: {self.total:.1f} s"]
        out += [f"  crash {label} at {stage}: {summary} (saved to {path})"
                for label, path, summary, stage in self.crashes]
        return out


def fuzz(n: int = 1000, seed: int = 0, derive_every: int = 10, timeout: float = 30.0,
         crash_dir: Path | str = "fuzz-crashes", run_generated: bool = True, progress=None,
         cs_tol: float | None = CS_TOL, hash_seed: bool = True) -> FuzzReport:
    """Run the fuzzer on n inputs; every derive_every-th accepted spec is derived, generated and run (its
    gradients checked against complex step unless cs_tol is None), and with hash_seed the generated texts
    are compared with a second process's under another PYTHONHASHSEED."""
    report = FuzzReport()
    crash_dir = Path(crash_dir)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lstm-spec-fuzz-") as tmp:
        path = Path(tmp) / "fuzzed.toml"
        generated: dict[str, tuple] = {}  # saved spec path -> (label, data, digest)
        for label, data in generate(seed, n):
            path.write_bytes(data)
            t0 = time.perf_counter()
            text = _one(report, path, label, data, crash_dir, derive_every, timeout, run_generated, cs_tol)
            if text is not None and hash_seed:
                saved = Path(tmp) / f"{label}.toml"
                saved.write_bytes(data)
                generated[str(saved)] = (label, data, _sha256(text))
            elapsed = time.perf_counter() - t0
            report.inputs += 1
            report.times.append(elapsed)
            if elapsed > report.slowest[0]:
                report.slowest = (elapsed, label)
            if progress and report.inputs % progress == 0:
                print(f"... {report.inputs} inputs, {len(report.crashes)} crashes", file=sys.stderr, flush=True)
        if generated:
            _compare_hash_seeds(report, generated, crash_dir)
    report.total = time.perf_counter() - started
    return report


def _one(report, path, label, data, crash_dir, derive_every, timeout, run_generated, cs_tol) -> str | None:
    """Load one input and, for every derive_every-th accepted one, push it further; count how it ends.
    Returns the generated text when there is one and nothing went wrong."""
    stage, outcome = ["load"], {}
    try:
        with time_limit(timeout):
            cell = load_file(path)
            report.accepted += 1
            if not (derive_every and report.accepted % derive_every == 0):
                return None
            text = push_further(cell, run_generated, stage, cs_tol if run_generated else None, outcome)
            report.derived += 1
            if "cs_skipped" in outcome:
                report.cs_skipped += 1
            elif "cs_error" in outcome:
                report.cs_checked += 1
                report.cs_max = max(report.cs_max, outcome["cs_error"])
            return text
    except SpecError as exc:
        if stage[-1] == "load":
            report.rejected += 1
        else:  # accepted by the loader, refused by the derivation (e.g. x / (a - a))
            report.rejected_by_derivation += 1
        if str(path) not in str(exc):  # every message names the file
            report.crashes.append(_save(crash_dir, label, data, f"SpecError without the file name: {exc}", stage[-1]))
        elif not re.search(r"\bline \d+", str(exc)):
            report.without_line += 1
    except Exception as exc:  # anything but SpecError is what we are looking for
        summary = f"{type(exc).__name__}: {str(exc)[:200]}"
        report.crashes.append(_save(crash_dir, label, data, summary + "\n\n" + traceback.format_exc(), stage[-1]))
    return None


def _compare_hash_seeds(report, generated: dict, crash_dir: Path) -> None:
    report.hash_seed = other_hash_seed()
    theirs = digests_in_another_process(list(generated), report.hash_seed)
    report.hash_compared = len(generated)
    for p in hash_seed_differences({p: v[2] for p, v in generated.items()}, theirs):
        label, data, _ = generated[p]
        report.crashes.append(_save(crash_dir, label, data, f"the generated text differs under PYTHONHASHSEED="
                                    f"{report.hash_seed} (a second process)", "hash seed"))


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _save(crash_dir: Path, label: str, data: bytes, details: str, stage: str) -> tuple:
    crash_dir.mkdir(parents=True, exist_ok=True)
    target = crash_dir / f"{label}.toml"
    target.write_bytes(data)
    (crash_dir / f"{label}.txt").write_text(details, encoding="utf-8")
    return label, str(target), details.split("\n", 1)[0], stage


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lstm_spec.checks.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="number of generated spec files (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--derive-every", type=int, default=10,
                    help="derive, generate and run every k-th accepted spec (0: none; default 10)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per file before it counts as a hang")
    ap.add_argument("--crash-dir", default="fuzz-crashes", help="where crashing inputs are saved")
    ap.add_argument("--no-run", action="store_true", help="compile the generated modules but do not run them")
    ap.add_argument("--cs-tol", type=float, default=CS_TOL,
                    help=f"complex-step error above which a run spec's gradients are a finding (default {CS_TOL})")
    ap.add_argument("--no-hash-seed", action="store_true",
                    help="do not compare the generated texts with a second process's (another PYTHONHASHSEED)")
    args = ap.parse_args(argv)
    report = fuzz(args.n, args.seed, args.derive_every, args.timeout, args.crash_dir, not args.no_run,
                  progress=1000, cs_tol=args.cs_tol, hash_seed=not args.no_hash_seed)
    print("\n".join(report.lines()))
    return 1 if report.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
