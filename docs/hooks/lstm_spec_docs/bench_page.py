"""The performance page's tables and plot, from a result of ``lstm-spec bench --json``: the directives
``<!-- lstm-spec: bench-table|bench-targets|bench-tools|bench-meta|bench-profile PATH -->`` and img/bench.svg.

Conventions: times are medians over the repetitions; "x torch" is PyTorch's median over the reference's
(> 1: the reference is faster); "% GEMM" is the effective rate 3 * 2*T*B*4H*(D+H) / time as a fraction of
the rate NumPy reaches on the (B*T, D+H) x (D+H, 4H) product of the same point, dtype and threads. The
result's rows and the targets' verdicts are bench's own (lstm_spec.bench.report).
"""

from __future__ import annotations

import io

from lstm_spec.bench.report import PEER_LABELS, load, peers, rows, targets


def md_table(header, body) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in [*row, *[""] * (len(header) - len(row))]) + " |"
            for row in body]
    return "\n".join(out)


def markdown_table(data: dict) -> str:
    head, body = rows(data)
    return md_table(head, body)


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
