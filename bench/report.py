"""Rendering of a benchmark result (the JSON of ``lstm-spec bench --json``): the console table, the
Markdown tables of docs/performance.md and its plot (matplotlib, SVG, drawn offline at docs build time).

Conventions: times are medians over the repetitions; "x torch" is PyTorch's median over the reference's
(> 1: the reference is faster); "% GEMM" is the effective rate 3 * 2*T*B*4H*(D+H) / time as a fraction of
the rate NumPy reaches on the (B*T, D+H) x (D+H, 4H) product of the same point, dtype and threads.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

PEER_LABELS = {"torch": "PyTorch", "jax": "JAX"}


def load(path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"benchmark results: {path} does not exist (run `lstm-spec bench --json {path}`)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"benchmark results: {path} is not JSON ({exc})") from exc
    validate(data, str(path))
    return data


def validate(data: dict, where: str = "results") -> None:
    if not isinstance(data, dict) or "meta" not in data:
        raise ValueError(f"{where}: expected an object with 'meta' (a result of lstm-spec bench --json)")
    for i, rec in enumerate(data.get("points", [])):
        for key in ("point", "label", "status", "flops"):
            if key not in rec:
                raise ValueError(f"{where}: points[{i}] has no {key!r}")
        if rec["status"] in ("ok", "mismatch") and "reference" not in rec.get("impls", {}):
            raise ValueError(f"{where}: points[{i}] ({rec['label']}) is measured but has no reference time")


def peers(data: dict) -> list[str]:
    seen = []
    for rec in data.get("points", []):
        for n in rec.get("impls", {}):
            if n != "reference" and n not in seen:
                seen.append(n)
    return seen


def _ms(s: dict) -> str:
    v = s["median"] * 1e3
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _spread(s: dict) -> str:
    return f"{(s['q3'] - s['q1']) / s['median']:.0%}" if s["median"] else "-"


def _ratio(s: dict) -> str:
    """Wall-clock ratio, and in parentheses the ratio of CPU times (robust to a busy machine)."""
    return f"{s['ratio']:.2f}" + (f" ({s['cpu_ratio']:.2f})" if "cpu_ratio" in s else "")


def rows(data: dict) -> tuple[list[str], list[list[str]]]:
    ps = peers(data)
    head = ["point", "reference ms", "IQR"]
    for n in ps:
        head += [f"{PEER_LABELS.get(n, n)} ms", f"x {n} (cpu)"]
    head += ["GEMM GF/s", "ref % GEMM"] + [f"{n} % GEMM" for n in ps] + ["peak / min cache", "max grad err", "load"]
    out = []
    for rec in data.get("points", []):
        if rec["status"] not in ("ok", "mismatch"):
            out.append([rec["label"], f"{rec['status']}: {rec.get('reason', '')}"])  # a short row
            continue
        im = rec["impls"]
        r = [rec["label"], _ms(im["reference"]), _spread(im["reference"])]
        for n in ps:
            r += [_ms(im[n]), _ratio(im[n])] if n in im else ["-", "-"]
        r.append(f"{rec['gemm']['gflops']:.1f}")
        r += [f"{im[n]['fraction_of_gemm']:.0%}" if n in im else "-" for n in ["reference", *ps]]
        r.append(f"{rec['memory']['peak_over_min_cache']:.1f}")
        errs = [c["max_rel_err"] for c in rec.get("check", {}).values()]
        r.append((f"{max(errs):.0e}" if errs else "-") + ("" if rec["status"] == "ok" else " MISMATCH"))
        r.append(f"{rec['load_before'][0]:.1f}")
        out.append(r)
    return head, out


def text_table(data: dict) -> str:
    head, body = rows(data)
    full = [b for b in body if len(b) == len(head)]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *full, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    for b in body:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(b, widths, strict=True)) if len(b) == len(head)
                     else f"{b[0].ljust(widths[0])}  {b[1]}")
    return "\n".join(lines)


def md_table(header, body) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in [*row, *[""] * (len(header) - len(row))]) + " |"
            for row in body]
    return "\n".join(out)


def markdown_table(data: dict) -> str:
    head, body = rows(data)
    return md_table(head, body)


def targets(data: dict) -> list[tuple[str, str, str]]:
    """The issue's targets (reported, not asserted): (target, what was measured, verdict). The verdict is
    on wall-clock medians; the CPU-time figures are given beside them (a busy machine inflates wall time)."""
    ok = [r for r in data.get("points", []) if r["status"] == "ok"]
    out = []

    def verdict(vals, good):
        if not vals:
            return "no measured point"
        return "met" if all(good(v) for v in vals) else f"not met at {sum(not good(v) for v in vals)} of {len(vals)}"

    def stats(vals, worst):
        return f"{'min' if worst is min else 'max'} {worst(vals):.2f}, median {sorted(vals)[len(vals) // 2]:.2f}"

    def measured(wall, cpu, what, worst):
        return f"{what}: {stats(wall, worst)} (CPU time: {stats(cpu, worst)})" if wall else "-"

    sel = [r for r in ok if r["point"]["dtype"] == "float64" and r["point"]["B"] >= 32 and "torch" in r["impls"]]
    wall = [r["impls"]["torch"]["ratio"] for r in sel]
    cpu = [r["impls"]["torch"].get("cpu_ratio", float("nan")) for r in sel]
    out.append(("float64, B >= 32: reference >= 1.5x faster than PyTorch",
                measured(wall, cpu, "PyTorch time / reference time", min), verdict(wall, lambda v: v >= 1.5)))
    sel = [r for r in ok if r["point"]["dtype"] == "float32" and "torch" in r["impls"]]
    wall = [1 / r["impls"]["torch"]["ratio"] for r in sel]
    cpu = [1 / r["impls"]["torch"].get("cpu_ratio", float("nan")) for r in sel]
    out.append(("float32: reference within 1.2x of PyTorch",
                measured(wall, cpu, "reference time / PyTorch time", max), verdict(wall, lambda v: v <= 1.2)))
    sel = [r for r in ok if r["point"]["H"] >= 256 and r["point"]["B"] >= 32]
    wall = [r["impls"]["reference"]["fraction_of_gemm"] for r in sel]
    cpu = [r["impls"]["reference"].get("fraction_of_gemm_cpu", float("nan")) for r in sel]
    out.append((">= 75% of the measured GEMM rate at H >= 256, B >= 32",
                measured(wall, cpu, "reference, fraction of the GEMM rate", min), verdict(wall, lambda v: v >= 0.75)))
    return out


def targets_markdown(data: dict) -> str:
    return md_table(["target (reported, not asserted)", "measured", "verdict"], targets(data))


def tools_markdown(data: dict) -> str:
    tools = data.get("tools") or {}
    if not tools:
        return "(not measured in this result)"
    body = [(f"`{t['command'].split(' -m lstm_spec ', 1)[-1].join(['lstm-spec ', ''])}`", f"{t['seconds']:.1f} s",
             str(t["exit_code"]), f"{t['load_before'][0]:.1f}") for t in tools.values()]
    return md_table(["command", "wall time (once)", "exit code", "load average before"], body)


def meta_markdown(data: dict) -> str:
    m = data["meta"]
    mach = m.get("machine", {})
    workers = m.get("workers", {})
    versions = []
    for n, key in (("reference", "numpy"), ("torch", "torch"), ("jax", "jax")):
        if key in workers.get(n, {}):
            versions.append(f"{key} {workers[n][key]}")
    n_ok = sum(r["status"] == "ok" for r in data.get("points", []))
    n_all = len(data.get("points", []))
    items = [f"measured {m.get('date', '?')} on commit `{m.get('commit') or 'unknown'}`",
             f"machine: {mach.get('cpu', '?')}, {mach.get('cores', '?')} cores, Python {mach.get('python', '?')}; "
             + ", ".join(versions),
             f"{m.get('threads', '?')} thread(s) for every implementation (CPU affinity {m.get('cpus', '?')}, "
             "thread variables set before import), "
             f"{m.get('reps', '?')} interleaved repetitions per point, median and interquartile range",
             "square 1024 GEMM rate: "
             + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in m.get("gemm_peak_gflops", {}).items()),
             f"{n_ok} of {n_all} grid points measured; the others are listed with the reason they were skipped",
             f"command: `{m.get('command', '?')}`; 1-minute load average at the start "
             f"{m['loadavg_start'][0]:.1f}" if "loadavg_start" in m else "load average not recorded"]
    for rr in m.get("reruns", []):
        items.append(f"{rr['points']} point(s) with an IQR over the noise limit measured again on {rr['date']} "
                     f"(`lstm-spec bench --rerun-noisy`), {rr['replaced']} replaced by the quieter measurement; "
                     f"1-minute load average then {rr['loadavg'][0]:.1f}")
    return "\n".join(f"- {i}" for i in items)


def plot_svg(data: dict, fmt: str = "svg") -> bytes:
    """Two panels against the point's FLOP count: peer time / reference time, and each implementation's
    effective rate as a fraction of the measured GEMM rate."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "lstm-spec-bench"
    import matplotlib.pyplot as plt

    ok = [r for r in data.get("points", []) if r["status"] == "ok"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    markers = {"float32": "o", "float64": "s"}
    colors = {"reference": "C0", "torch": "C1", "jax": "C2"}
    for dt, mk in markers.items():
        pts = [r for r in ok if r["point"]["dtype"] == dt]
        for n in peers(data):
            xs = [r["flops"] for r in pts if n in r["impls"]]
            ys = [r["impls"][n]["ratio"] for r in pts if n in r["impls"]]
            if xs:
                a1.scatter(xs, ys, marker=mk, color=colors.get(n), alpha=0.8, label=f"{PEER_LABELS.get(n, n)}, {dt}")
        for n in ["reference", *peers(data)]:
            xs = [r["flops"] for r in pts if n in r["impls"]]
            ys = [100 * r["impls"][n]["fraction_of_gemm"] for r in pts if n in r["impls"]]
            if xs:
                a2.scatter(xs, ys, marker=mk, color=colors.get(n), alpha=0.8,
                           label=f"{PEER_LABELS.get(n, n)}, {dt}")
    a1.axhline(1.0, color="k", lw=0.8)
    a1.set_xscale("log")
    a1.set_yscale("log")
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

    a1.yaxis.set_major_locator(FixedLocator([0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50]))
    a1.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    a1.yaxis.set_minor_formatter(NullFormatter())
    a1.set_xlabel("FLOPs of forward + backward, 3 x 2TB4H(D+H)")
    a1.set_ylabel("peer time / reference time (> 1: reference faster)")
    a1.set_title("Speed of the generated reference")
    a2.axhline(75, color="k", lw=0.8, ls="--")
    a2.set_xscale("log")
    a2.set_xlabel("FLOPs of forward + backward")
    a2.set_ylabel("% of the NumPy GEMM rate of the same shape")
    a2.set_title("Effective rate")
    for a in (a1, a2):
        a.grid(True, which="both", alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, **({"metadata": {"Date": None}} if fmt == "svg" else {"dpi": 90}))
    plt.close(fig)
    return buf.getvalue()


PROFILE_COLUMNS = (("input", "input proj. + dx GEMMs"), ("params", "param-grad GEMMs"),
                   ("recurrent", "recurrent products"), ("activations", "sigmoid, tanh"), ("rest", "the rest"))


def profile_markdown(data: dict) -> str:
    """The profiles of `lstm-spec bench --profile --json` (bench/profile.py): each part's time and share."""
    profs = data.get("profiles") or []
    if not profs:
        return "(no profile in this result)"
    head = ["point", "time"] + [label for _, label in PROFILE_COLUMNS] + ["floor (GEMM rate)"]

    def part(v, total):
        return f"{v * 1e3:.1f} ms ({100 * v / total:.0f} %)"

    body = []
    for r in profs:
        body.append([r["label"], f"{r['total'] * 1e3:.1f} ms"]
                    + [part(r["parts"][k], r["total"]) for k, _ in PROFILE_COLUMNS] + [part(r["floor"], r["total"])])
    return md_table(head, body)


def directive(what: str, path) -> str:
    """The docs' ``<!-- lstm-spec: bench-... PATH -->`` directives."""
    data = load(path)
    if what == "bench-table":
        return markdown_table(data)
    if what == "bench-targets":
        return targets_markdown(data)
    if what == "bench-tools":
        return tools_markdown(data)
    if what == "bench-meta":
        return meta_markdown(data)
    if what == "bench-profile":
        return profile_markdown(data)
    raise ValueError(f"unknown benchmark directive {what!r}; expected bench-table, bench-targets, bench-tools, "
                     "bench-meta, bench-profile")
