"""The `lstm-spec` command: list, derive, generate, verify."""

from __future__ import annotations

import argparse
import sys
import time


def _cells(names):
    from lstm_spec.derivations.build import load_cells

    return load_cells(names)


def cmd_list(args) -> int:
    from lstm_spec.spec import builtin_cells, load

    names = builtin_cells()
    width = max(map(len, names))
    for name in names:
        cell = load(name)
        print(f"{name:<{width}}  {cell.title}: {cell.summary}")
    return 0


def cmd_derive(args) -> int:
    from lstm_spec.derivations import derive
    from lstm_spec.derivations.render import describe

    for cell in _cells([args.cell]):
        print(describe(derive(cell), latex=args.latex))
    return 0


def cmd_generate(args) -> int:
    from pathlib import Path

    from lstm_spec.derivations.build import GenerateError, generate, write

    t0 = time.perf_counter()
    cells = _cells(args.cells)
    try:
        generated = generate(cells, Path(args.out) if args.out else None)
        if args.check:
            return _check_generated(generated, time.perf_counter() - t0)
        written = write(generated)
    except GenerateError as exc:
        print(f"lstm-spec generate: {exc}", file=sys.stderr)
        return 2
    for p in written:
        print(f"wrote {p}")
    print(f"{len(generated)} cell(s), {len(written)} file(s) changed "
          f"(derive + generate {time.perf_counter() - t0:.1f} s).")
    return 0


def _check_generated(generated, elapsed: float) -> int:
    """generate --check: the diff of every stale file and the exact command that regenerates them."""
    from lstm_spec.derivations.build import is_builtin, regenerate_command

    stale = [g for g in generated if g.stale]
    for g in stale:
        sys.stdout.write(g.diff() or f"{g.path}: missing\n")
    if stale:
        commit = " and commit the result" if any(is_builtin(g.cell) and g.out is None for g in stale) else ""
        print(f"\n{len(stale)} generated file(s) are stale: run `{regenerate_command(stale)}`{commit}.",
              file=sys.stderr)
        return 1
    print(f"{len(generated)} generated file(s) up to date (derive + generate {elapsed:.1f} s).")
    return 0


def cmd_verify(args) -> int:
    import os

    from lstm_spec.checks.runner import SYMBOLIC_METHODS, Progress, all_passed, format_table, verify_cells, verify_rules
    from lstm_spec.checks.torch_check import INSTALL, torch_available

    if not args.no_torch and not torch_available():
        print(f"lstm-spec verify: check (d) compares with PyTorch, which is not installed: {INSTALL}; "
              "or leave (d) out with --no-torch", file=sys.stderr)
        return 2
    from lstm_spec.checks.progress import Counter

    t0 = time.perf_counter()
    cells = _cells(args.cells)
    constants, cells, error = _verify_constants(args.constants, cells, named=bool(args.cells))
    if error:
        print(f"lstm-spec verify: {error}", file=sys.stderr)
        return 2
    print(f"lstm-spec verify: {', '.join(c.name for c in cells)}", file=sys.stderr)
    jobs = args.jobs or min(2, os.cpu_count() or 1)
    with Counter(len(cells) + 1, "verify", enabled=not args.quiet) as counter:
        # one line per check only with --verbose and no bar (two workers' lines interleave)
        progress = Progress(enabled=args.verbose and not counter.live)
        rows = verify_rules(progress)
        counter.step(f"derivative rules: {rows[0].status}")
        rows += verify_cells(cells, progress, torch=not args.no_torch, jobs=jobs, proof=args.proof, counter=counter,
                             constants=constants)
    print(format_table(rows))
    print(f"\n{SYMBOLIC_METHODS[args.proof]}")
    if any(c.constants for c in cells):
        print(CONSTANTS_NOTE if not constants else "Constants: (c) and (d) ran at " + ", ".join(
            f"{k} = {v:g}" for k, v in constants.items()) + "; (a) and (b) take them as symbols (every value).")
    ok = all_passed(rows)
    failed = [f"{r.cell} / {r.check}" for r in rows if r.status not in ("pass", "n/a")]
    verdict = "all checks passed" if ok else f"SOME CHECKS FAILED ({len(failed)}: {', '.join(failed[:5])}" + (
        f" and {len(failed) - 5} more)" if len(failed) > 5 else ")")
    print(f"\n{verdict} ({len(rows)} rows, {time.perf_counter() - t0:.1f} s)")
    return 0 if ok else 1


def _verify_constants(texts, cells, named: bool):
    """(constants, cells, error) for `verify --constants NAME=VALUE ...`: the values as floats, checked against
    the spec of every cell named (no cells named: the built-in cells that have all of those constants)."""
    if not texts:
        return None, cells, ""
    constants = {}
    for text in (t for chunk in texts for t in chunk.split(",") if t.strip()):
        name, sep, value = text.partition("=")
        try:
            constants[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            return None, cells, f"--constants {text!r}: expected NAME=NUMBER, e.g. --constants forget_bias=1.0"
    if not named:
        cells = [c for c in cells if set(constants) <= set(c.constants)]
        if not cells:
            return None, cells, (f"no built-in cell has the constant(s) {sorted(constants)}; a cell's constants are "
                                 "its spec's [constants] table")
    for cell in cells:
        unknown = sorted(set(constants) - set(cell.constants))
        if unknown:
            return None, cells, (f"--constants {', '.join(unknown)}: not a constant of cell {cell.name!r} (its "
                                 f"constants: {', '.join(cell.constants) or 'none'})")
        bad = [n for n, v in constants.items() if v != v or abs(v) == float("inf")
               or (cell.constants[n].positive and not v > 0)]
        if bad:
            return None, cells, (f"--constants {bad[0]}={constants[bad[0]]}: expected a finite number"
                                 + (" above 0 (a clip bound)" if cell.constants[bad[0]].positive else ""))
    return constants, cells, ""


CONSTANTS_NOTE = ("Constants (a spec's [constants]): (c) and (d) ran at the defaults and at a non-default value of "
                  "each (a clip bound halved, 1 for a default 0, else twice the default); (a) and (b) take them as "
                  "symbols.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lstm-spec", description="A verified reference specification of the "
                                "LSTM forward pass and backpropagation through time.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list the cells of the spec",
                       description="Print one line per built-in cell: its name (what derive, generate, verify and "
                       "conform --cell take), its title and a one-line summary.")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("derive", help="print the derived equations of a cell")
    s.add_argument("cell", help="a built-in cell name or a path to a spec file")
    s.add_argument("--latex", action="store_true", help="print LaTeX instead of plain text")
    s.set_defaults(func=cmd_derive)

    s = sub.add_parser("generate", help="write the generated NumPy reference into reference/",
                       description="Derive each cell and write its NumPy module: a built-in cell's into the package's "
                       "reference/, a spec file's beside it named after the file (my_cell.toml -> my_cell.py). An "
                       "existing file is overwritten only when it was generated for the same cell; a hand-written "
                       "file, or one generated from another spec, is refused (exit 2) and nothing is written.")
    s.add_argument("cells", nargs="*", help="built-in cell names or paths to your own spec files (default: all "
                   "built-in cells); PATH/my_cell.toml writes PATH/my_cell.py")
    s.add_argument("--check", action="store_true", help="write nothing; exit 1 and show a diff if any file is stale")
    s.add_argument("--out", help="directory to write to, <spec file name>.py each (default: reference/ for a "
                   "built-in cell, beside the spec file for yours)")
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("verify", help="run every check on every cell and print the table")
    s.add_argument("cells", nargs="*", help="built-in cell names or paths to spec files (default: all built-in cells)")
    s.add_argument("--no-torch", action="store_true", help="leave out the PyTorch comparison")
    s.add_argument("--quiet", action="store_true", help="no progress (a bar on a terminal, else a line per cell)")
    s.add_argument("--verbose", action="store_true", help="also a line per check as it starts (not on a terminal)")
    s.add_argument("--jobs", type=int, default=0, help="cells verified in parallel, one worker process each "
                   "(default: min(2, number of cores); 1: in this process)")
    s.add_argument("--proof", action="store_true", help="checks (a) and (b) by sympy.diff, (a) expanded to a "
                   "proof (minutes per cell) instead of reverse accumulation at random points (seconds)")
    s.add_argument("--constants", action="append", metavar="NAME=VALUE[,NAME=VALUE]", help="run the numeric checks "
                   "(c) and PyTorch (d) with these values of the cells' [constants], e.g. forget_bias=1.0 (default: "
                   "at the defaults and at a non-default value of each); without cell names, the cells that have "
                   "these constants")
    s.set_defaults(func=cmd_verify)

    from lstm_spec.conformance.cli import add_subcommands  # conform, vectors

    add_subcommands(sub)
    from lstm_spec.bench.cli import add_subcommand as add_bench  # bench

    add_bench(sub)
    return p


def main(argv=None) -> int:
    from lstm_spec.spec import SpecError

    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe fails here, not at exit
        return code
    except SpecError as exc:
        print(f"lstm-spec: spec error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        return _quiet_after_closed_stdout()


def _stdout_closed() -> bool:
    """True when the reader of stdout has gone (`lstm-spec list | head -1`): the pipe reports an error."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poll.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def _quiet_after_closed_stdout() -> int:
    """End as Unix tools do when their reader has gone: no message; exit 128 + SIGPIPE. stdout is pointed
    at /dev/null so that the interpreter's last flush fails no more."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    raise SystemExit(main())
