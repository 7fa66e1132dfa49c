"""The `conform` and `vectors` subcommands of `lstm-spec` (registered by lstm_spec/cli.py)."""

from __future__ import annotations

import sys
import time


def cmd_conform(args) -> int:
    from .runner import conform, default_cases, format_report, stderr_progress
    from .targets import TargetError, Unavailable, load_target

    try:
        target = load_target(args.target)
    except Unavailable as exc:
        print(f"lstm-spec conform {args.target}: skipped: {exc}")
        return 0 if args.allow_missing else 3
    except TargetError as exc:
        print(f"lstm-spec conform: {exc}", file=sys.stderr)
        return 2
    cells = args.cells or list(target.cells)
    dtypes = args.dtypes or [d for d in ("float64", "float32") if d in target.dtypes]
    cases = default_cases(cells, dtypes)
    if args.quick:
        cases = [c for c in cases if c.direction == "forward" and c.lengths is None and c.layers == 1]
    if args.case:
        from .runner import expand_variants

        cases = [c for c in expand_variants(target, cases) if args.case in c.name]
        if not cases:
            print(f"lstm-spec conform: no case name contains {args.case!r}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    print(f"lstm-spec conform: {target.name}, {len(cases)} cases", file=sys.stderr)
    report = conform(target, cases, progress=None if args.quiet else stderr_progress)
    print(format_report(report, verbose=not args.failures_only))
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0 if report.passed else 1


def cmd_vectors(args) -> int:
    from pathlib import Path

    from .vectors import check_vectors, write_vectors

    out = Path(args.outdir)
    if args.check:
        problems = check_vectors(out)
        for p in problems:
            print(f"  {p}")
        print(f"{out}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 0 if not problems else 1
    manifest = write_vectors(out, cells=args.cells or None)
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
    s.add_argument("--failures-only", action="store_true", help="print the rows of failing cases only")
    s.add_argument("--allow-missing", action="store_true",
                   help="exit 0 (not 3) when the target's framework is not installed")
    s.add_argument("--quiet", action="store_true", help="no progress lines")
    s.set_defaults(func=cmd_conform)

    s = sub.add_parser("vectors", help="write golden test vectors (NPZ + JSON manifest), or check a directory")
    s.add_argument("outdir", help="directory to write (or to check with --check)")
    s.add_argument("--check", action="store_true", help="validate a vectors directory: manifest, files, sha256")
    s.add_argument("--cell", dest="cells", action="append", help="cell(s) to write (default: every cell)")
    s.set_defaults(func=cmd_vectors)
