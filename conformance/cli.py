"""The `conform` and `vectors` subcommands of `lstm-spec` (registered by lstm_spec/cli.py)."""

from __future__ import annotations

import sys
import time

DEFAULT_TIMEOUT = 300.0  # seconds per case; the slowest built-in adapter (flax, jit) takes a few seconds


def cmd_conform(args) -> int:
    """Exit status 0: conforms, 1: a case fails or errs, 2: a bad target, option or a result that breaks the
    protocol (Report.exit_code), 3: a built-in adapter's
    framework is not installed. The target's code never chooses it (sys.exit, KeyboardInterrupt and any
    other exception of the target are its failures; conformance/PROTOCOL.md, section 6)."""
    import math

    from lstm_spec.checks.progress import Counter
    from lstm_spec.spec import builtin_cells, did_you_mean

    from .runner import conform, default_cases, expand_variants, format_report, progress_text, redirect_output
    from .targets import TargetError, Unavailable, load_target, terminating_cleanly

    bad = next((f"--cell {c!r}: not a built-in cell; {did_you_mean(c)}`lstm-spec list` shows them"
                for c in args.cells or () if c not in builtin_cells()), "")
    if not (math.isfinite(args.timeout) and args.timeout >= 0):
        bad = f"--timeout: expected seconds >= 0, finite (0: no worker process), got {args.timeout:g}"
    if args.seed < 0:
        bad = f"--seed: expected an integer >= 0, got {args.seed}"
    if bad:
        print(f"lstm-spec conform: {bad}", file=sys.stderr)
        return 2
    with terminating_cleanly():
        try:
            with redirect_output(2):  # what its import prints goes to stderr: stdout is the report
                target = load_target(args.target)
        except Unavailable as exc:
            print(f"lstm-spec conform {args.target}: skipped: {exc}")
            return 0 if args.allow_missing else 3
        except TargetError as exc:
            print(f"lstm-spec conform: {exc}", file=sys.stderr)
            return 2
        cells = args.cells or list(target.cells)
        dtypes = args.dtypes or [d for d in ("float64", "float32") if d in target.dtypes]
        cases = default_cases(cells, dtypes, seed=args.seed)
        if args.quick:
            cases = [c for c in cases if c.direction == "forward" and c.lengths is None and c.layers == 1]
        if args.case:
            cases = [c for c in expand_variants(target, cases) if args.case in c.name]
            if not cases:
                print(f"lstm-spec conform: no case name contains {args.case!r}", file=sys.stderr)
                return 2
        cases = expand_variants(target, cases)  # the count printed is the count run
        t0 = time.perf_counter()
        where = f"a worker process, timeout {args.timeout:g} s per case" if args.timeout else "this process, no timeout"
        print(f"lstm-spec conform: {target.name}, {len(cases)} cases, in {where}", file=sys.stderr)
        with Counter(len(cases), "conform", enabled=not args.quiet) as counter:
            report = conform(target, cases, progress=lambda k, n, r: counter.step(progress_text(r)),
                             timeout=args.timeout or None)
        if args.json:
            import json

            from .runner import report_dict

            print(json.dumps(report_dict(report), indent=1, sort_keys=True, default=str))
        else:
            print(format_report(report, verbose=args.verbose, timings=args.timings))
        # the time goes to stderr: stdout, the report, is the same in every run with the same seed
        print(f"lstm-spec conform: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return report.exit_code


def cmd_vectors(args) -> int:
    """Exit 0: written, or every check holds; 1: --check found problems, or writing failed (the previous
    OUTDIR untouched); 2: refused before writing anything (OUTDIR not ours to replace, --cell, --seed)."""
    import signal
    import warnings
    from pathlib import Path

    from .vectors import VectorsError, VectorsWarning, check_vectors, write_vectors

    out = Path(args.outdir)
    if args.check:
        try:
            problems = check_vectors(out)
        except OSError as exc:
            problems = [f"{exc.filename or out}: cannot be read ({exc.strerror or exc})"]
        for p in problems:
            print(f"  {p}")
        print(f"{out}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 0 if not problems else 1

    def terminated(signum, frame):  # SIGTERM (a CI timeout, kill): unwind, so the temporary directory is removed
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", VectorsWarning)
            manifest = write_vectors(out, cells=args.cells or None, seed=args.seed)
    except VectorsError as exc:
        print(f"lstm-spec vectors: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"lstm-spec vectors: cannot write {out}: {exc.strerror or exc}{where}; the previous {out}, if any, "
              "is untouched: free space or choose a directory you can write", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    for w in caught:
        if issubclass(w.category, VectorsWarning):
            print(f"lstm-spec vectors: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(f"wrote {len(manifest['cases'])} cases to {out} (manifest.json, schema {manifest['schema_version']})")
    return 0


def add_subcommands(sub) -> None:
    s = sub.add_parser("conform", help="test an LSTM implementation against the reference and diagnose failures")
    s.add_argument("target", help="torch, keras, flax, onnxruntime, package.module:object or path/to/file.py:object")
    s.add_argument("--cell", dest="cells", action="append", help="cell(s) to test (default: the target's)")
    s.add_argument("--dtype", dest="dtypes", action="append", choices=["float32", "float64"],
                   help="dtype(s) to test (default: both)")
    s.add_argument("--quick", action="store_true", help="forward-direction, full-length, one-layer cases only")
    s.add_argument("--case", help="run only the cases whose name contains this text (as printed in the report)")
    s.add_argument("--verbose", action="store_true",
                   help="print every case with every row (default: a summary table and the failing cases in full)")
    s.add_argument("--json", action="store_true",
                   help="print the report as JSON (cases, rows, localisation, diagnoses) instead of text")
    s.add_argument("--failures-only", action="store_true",
                   help="the default since 0.1: a summary table, then the failing cases in full (kept for scripts)")
    s.add_argument("--allow-missing", action="store_true",
                   help="exit 0 (not 3) when the target's framework is not installed")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="run the target in a worker process and kill it (with the processes it started) when a "
                        f"case takes longer than this (default {DEFAULT_TIMEOUT:g}; 0: run it in this process, no "
                        "timeout)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the cases, an integer >= 0 (default 0); the same seed, the same report")
    s.add_argument("--timings", action="store_true",
                   help="print each case's seconds in the report (they vary from run to run)")
    s.set_defaults(func=cmd_conform)

    s = sub.add_parser("vectors", help="write golden test vectors (NPZ + JSON manifest), or check a directory")
    s.add_argument("outdir", help="directory to write: absent, empty, or one vectors wrote (only its listed files "
                   "are replaced); or to check with --check")
    s.add_argument("--check", action="store_true", help="validate a vectors directory: manifest, case list, files, "
                   "sha256, arrays, values")
    s.add_argument("--cell", dest="cells", action="append", help="cell(s) to write (default: every cell)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the cases, 0 to 2**32-1 (default 0); the same seed gives the same bytes in every file")
    s.set_defaults(func=cmd_vectors)
