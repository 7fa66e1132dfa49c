"""The ``lstm-spec bench`` subcommand (registered by lstm_spec/cli.py's build_parser)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

WHAT = ("lstm", "generate", "verify")


class UsageError(ValueError):
    """A bad option or file given to bench: one line on stderr, exit 2 (before anything is measured)."""


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if not vals or min(vals) < 1:
        raise UsageError(f"{name}: got {text!r}, expected comma-separated positive integers")
    return vals


def _names(text: str, name: str, allowed) -> tuple[str, ...]:
    vals = tuple(v for v in text.split(",") if v)
    bad = [v for v in vals if v not in allowed]
    if bad:
        raise UsageError(f"{name}: got {bad}, expected some of {', '.join(allowed)}")
    return vals


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def add_subcommand(sub) -> None:
    s = sub.add_parser("bench", help="time forward + BPTT of the generated reference against PyTorch and JAX",
                       description="Forward + full BPTT backward of lstm_spec.reference.lstm against PyTorch "
                       "nn.LSTM (autograd) and a jitted JAX scan LSTM (grad), each in its own process with the "
                       "same threads, repetitions interleaved; prints the median time, the ratio to each peer "
                       "(peer / reference, > 1: reference faster), the effective GFLOP/s (3 x 2*T*B*4H*(D+H)) as "
                       "a fraction of the measured NumPy GEMM rate, and the peak memory against the minimum "
                       "BPTT cache (5*T*B*H values). Gradients are compared with the reference on every point.")
    s.add_argument("--quick", action="store_true", help="a small subset (T=16, B=1 and 32, D=H=32, both dtypes, "
                   "3 repetitions): proves it works in seconds")
    s.add_argument("--what", default="lstm", help="comma-separated: lstm (the grid), generate (time `lstm-spec "
                   "generate --check` once), verify (time `lstm-spec verify` once); default lstm")
    s.add_argument("--T", default="1,16,128,512", help="sequence lengths (default 1,16,128,512)")
    s.add_argument("--B", default="1,32,128", help="batch sizes (default 1,32,128)")
    s.add_argument("--H", default="32,256,1024", help="hidden sizes, D = H (default 32,256,1024)")
    s.add_argument("--dtype", default="float32,float64", help="float32 and/or float64")
    s.add_argument("--peers", default="torch,jax", help="comma-separated peers: torch, jax (default both)")
    s.add_argument("--threads", type=int, default=1, help="threads (and CPUs) for every implementation (default 1)")
    s.add_argument("--reps", type=int, default=None, help="interleaved repetitions per point (default 7; --quick 3)")
    s.add_argument("--max-seconds", type=float, default=60.0, help="skip a point estimated to take longer (all "
                   "implementations, all repetitions; default 60)")
    s.add_argument("--max-memory-gb", type=float, default=4.0, help="skip a point estimated to need more memory "
                   "(all workers together; default 4)")
    s.add_argument("--noise", type=float, default=0.25, help="re-measure a point whose interquartile range exceeds "
                   "this fraction of the median (default 0.25)")
    s.add_argument("--retries", type=int, default=1, help="re-measurements of a noisy point (default 1)")
    s.add_argument("--tool-timeout", type=float, default=3600.0, help="timeout of generate/verify (default 3600 s)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", help="write the results to this JSON file")
    s.add_argument("--merge", action="store_true", help="with --json: keep the sections of an existing file that "
                   "this run does not measure (points or tools)")
    s.add_argument("--profile", action="store_true", help="measure no peers: profile the reference at each point "
                   "given by --T/--B/--H/--dtype (where its time goes: the GEMMs, the recurrent products, sigmoid "
                   "and tanh, the rest; and the floor the GEMM rate sets)")
    s.add_argument("--render", metavar="JSON", help="measure nothing: print the table of an existing result")
    s.add_argument("--rerun-noisy", metavar="JSON", help="measure again the points of an existing result whose "
                   "interquartile range exceeds --noise, keep the quieter measurement of each, and write the "
                   "result back (to --json if given, else to JSON itself)")
    s.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    try:
        if args.render:
            return render(args.render)
        for option, path in (("--json", args.json), ("--rerun-noisy", None if args.json else args.rerun_noisy)):
            if path:
                writable(path, option)
        return measure(args)
    except UsageError as exc:
        print(f"lstm-spec bench: {exc}", file=sys.stderr)
        return 2


def load_result(path: str, option: str) -> dict:
    """An existing result (--render, --rerun-noisy, --merge), or UsageError naming the file and the fault."""
    from . import report

    try:
        return report.load(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{option} {path}: {exc}") from None


def render(path: str) -> int:
    from . import report

    data = load_result(path, "--render")
    try:
        lines = [report.text_table(data), ""] + [f"{t}: {m} -> {v}" for t, m, v in report.targets(data)]
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise UsageError(f"--render {path}: not a result of lstm-spec bench --json "
                         f"({type(exc).__name__}: {str(exc)[:100]})") from None
    print("\n".join(lines))
    return 0


def writable(path: str, option: str) -> None:
    """Fail now, not after the measurement, when the result could not be written to path."""
    import os
    import tempfile

    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{option} {p}: is a directory; give the name of the JSON file to write")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"{option} {p}: cannot write there ({exc.strerror or exc})") from None
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{option} {p}: the file is not writable")


def measure(args) -> int:
    from . import problem as pr
    from .runner import Bench, BenchError, header, run_grid, run_tools

    if args.rerun_noisy:
        return rerun_noisy(args)
    if args.profile:
        return cmd_profile(args)
    what = _names(args.what, "--what", WHAT)
    if args.quick:
        points = pr.grid(**pr.QUICK, dtypes=_names(args.dtype, "--dtype", pr.DTYPES))
        reps = args.reps or 3
    else:
        points = pr.grid(T=_ints(args.T, "--T"), B=_ints(args.B, "--B"), H=_ints(args.H, "--H"),
                         dtypes=_names(args.dtype, "--dtype", pr.DTYPES))
        reps = args.reps or 7
    argv = sys.argv[2:] if len(sys.argv) > 2 and sys.argv[1] == "bench" else []
    data: dict = {}
    if args.json and args.merge and Path(args.json).exists():
        data = load_result(args.json, "--json")
    def log(*a):
        return print(*a, flush=True)
    signal.signal(signal.SIGTERM, _interrupted)  # `kill` of a long run: the workers are stopped too
    code = 0
    try:
        if "lstm" in what:
            log(f"lstm-spec bench: {len(points)} point(s), {reps} repetitions, {args.threads} thread(s)")
            with Bench(peers=_names(args.peers, "--peers", ("torch", "jax")), threads=args.threads, reps=reps,
                       max_seconds=args.max_seconds, max_memory_gb=args.max_memory_gb, noise=args.noise,
                       retries=args.retries, seed=args.seed, log=log) as bench:
                data["meta"] = header(bench, argv)
                data.update(run_grid(points, bench, log))
            data["meta"]["loadavg_end"] = list(__import__("os").getloadavg())
        elif "meta" not in data:
            data["meta"] = header(None, argv)
        tools = [w for w in what if w != "lstm"]
        if tools:
            data["tools"] = {**data.get("tools", {}), **run_tools(tools, args.tool_timeout, log)}
            code |= any(t["exit_code"] != 0 for t in data["tools"].values())
    except BenchError as exc:
        print(f"lstm-spec bench: {exc}", file=sys.stderr)
        return 2
    print_result(data)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    bad = [r for r in data.get("points", []) if r["status"] in ("mismatch", "error")]
    if bad:
        print(f"lstm-spec bench: {len(bad)} point(s) failed: " + "; ".join(f"{r['label']}: {r.get('reason')}"
              for r in bad), file=sys.stderr)
        code = 1
    return code


def print_result(data: dict) -> None:
    from . import report

    if data.get("points"):
        print()
        print(report.text_table(data))
        print()
        for target, measured, verdict in report.targets(data):
            print(f"{target}: {measured} -> {verdict}")
    for t in (data.get("tools") or {}).values():
        print(f"{t['command']}: {t['seconds']:.1f} s (exit code {t['exit_code']})")


def rerun_noisy(args) -> int:
    """Re-measure the noisy points of a result with its own settings (threads, repetitions, seed)."""
    import os

    from . import problem as pr
    from .runner import Bench, BenchError, status_line

    data = load_result(args.rerun_noisy, "--rerun-noisy")
    meta = data["meta"]
    noisy = [i for i, r in enumerate(data.get("points", [])) if r["status"] == "ok" and r["spread"] > args.noise]
    print(f"lstm-spec bench: {len(noisy)} point(s) of {args.rerun_noisy} have an IQR over {args.noise:.0%}", flush=True)
    signal.signal(signal.SIGTERM, _interrupted)
    replaced = 0
    try:
        with Bench(peers=_names(args.peers, "--peers", ("torch", "jax")), threads=meta.get("threads", args.threads),
                   reps=meta.get("reps", 7), max_seconds=meta.get("max_seconds", args.max_seconds),
                   max_memory_gb=args.max_memory_gb, noise=args.noise, retries=args.retries,
                   seed=meta.get("seed", 0), log=print) as bench:
            for i in noisy:
                old = data["points"][i]
                new = bench.measure(pr.Point(**old["point"]))
                keep = new["status"] == "ok" and new["spread"] < old["spread"]
                print(f"{status_line(new)}; spread {old['spread']:.0%} -> {new.get('spread', float('nan')):.0%}"
                      f" ({'kept' if keep else 'the earlier one kept'})", flush=True)
                if new["status"] == "mismatch":
                    data["points"][i] = new  # a disagreement is never hidden behind an earlier measurement
                elif keep:
                    new["rerun"] = True
                    data["points"][i] = new
                    replaced += 1
    except BenchError as exc:
        print(f"lstm-spec bench: {exc}", file=sys.stderr)
        return 2
    meta.setdefault("reruns", []).append({"date": __import__("time").strftime("%Y-%m-%d %H:%M:%S %Z"),
                                          "points": len(noisy), "replaced": replaced,
                                          "loadavg": list(os.getloadavg())})
    out = Path(args.json or args.rerun_noisy)
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"{replaced} of {len(noisy)} point(s) replaced; wrote {out}")
    return 1 if any(r["status"] == "mismatch" for r in data["points"]) else 0


def cmd_profile(args) -> int:
    from . import problem as pr
    from .profile import format_profile, profile
    from .runner import BenchError

    if args.quick:
        raise UsageError("--profile and --quick: choose one")
    points = pr.grid(T=_ints(args.T, "--T"), B=_ints(args.B, "--B"), H=_ints(args.H, "--H"),
                     dtypes=_names(args.dtype, "--dtype", pr.DTYPES))
    results = []
    try:
        for p in points:
            r = profile(p.T, p.B, p.D, p.H, p.dtype, threads=args.threads, reps=args.reps or 3)
            print(format_profile(r), flush=True)
            results.append(r)
    except BenchError as exc:
        print(f"lstm-spec bench: {exc}", file=sys.stderr)
        return 2
    if args.json:
        from .runner import header

        argv = sys.argv[2:] if len(sys.argv) > 2 and sys.argv[1] == "bench" else []
        data = {"meta": header(None, argv), "profiles": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0
