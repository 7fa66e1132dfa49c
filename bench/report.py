"""A benchmark result (the JSON of ``lstm-spec bench --json``): reading and validating it, its rows, the
console table and the issue's targets. The docs' Markdown tables and plot of it are the docs' own
(docs/hooks/lstm_spec_docs/bench_page.py): bench/ sits below docs and renders no page.

Conventions: times are medians over the repetitions; "x torch" is PyTorch's median over the reference's
(> 1: the reference is faster); "% GEMM" is the effective rate 3 * 2*T*B*4H*(D+H) / time as a fraction of
the rate NumPy reaches on the (B*T, D+H) x (D+H, 4H) product of the same point, dtype and threads.
"""

from __future__ import annotations

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
