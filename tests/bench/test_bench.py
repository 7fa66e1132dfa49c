"""lstm-spec bench works and measures the right computation. Nothing here asserts on a time: benchmarks are
not timed tests (the machine is shared); the timeouts only guard against a hang."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lstm_spec.bench import problem as pr
from lstm_spec.bench import report
from lstm_spec.bench.runner import Bench, compare_grads, summary, time_command
from lstm_spec.bench.worker import CLASSES

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs" / "hooks"))
from lstm_spec_docs import bench_page  # noqa: E402 - the docs hooks are not a package of lstm_spec: on the path above


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "lstm_spec", "bench", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "quick.json"
    res = cli("--quick", "--json", str(path))
    return res, path


def test_quick_runs_and_every_point_agrees_with_the_reference(quick):
    res, path = quick
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(path.read_text())
    assert {r["status"] for r in data["points"]} == {"ok"}, [r.get("reason") for r in data["points"]]
    assert {r["point"]["dtype"] for r in data["points"]} == {"float32", "float64"}
    for rec in data["points"]:
        assert set(rec["impls"]) == {"reference", "torch", "jax"}
        for name, c in rec["check"].items():  # gradients computed both ways once, compared loosely
            assert c["ok"] and c["max_rel_err"] <= c["tol"], (rec["label"], name, c)
            assert c["tol"] == {"float32": 1e-3, "float64": 1e-8}[rec["point"]["dtype"]]
        for s in rec["impls"].values():
            assert len(s["times"]) == data["meta"]["reps"] == 3
            assert s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
        assert rec["memory"]["peak_bytes"] >= rec["min_cache_bytes"] == pr.min_cache_bytes(pr.Point(**rec["point"]))
        # the per-step cache of the reference holds at least what BPTT needs without recomputing a product
        assert rec["memory"]["cache_bytes"] >= rec["memory"]["per_step_cache_bytes"] >= rec["min_cache_bytes"]
    # the same threads everywhere, set before import
    for info in data["meta"]["workers"].values():
        assert info["threads"] == 1 and info["affinity"] == data["meta"]["cpus"]
        assert info["env"]["OMP_NUM_THREADS"] == "1"
    assert data["meta"]["workers"]["torch"]["torch_threads"] == 1
    assert "x torch" in res.stdout and "% GEMM" in res.stdout


def test_rendering_the_json_as_tables_and_a_plot(quick):
    _, path = quick
    data = report.load(path)
    md = bench_page.markdown_table(data)
    lines = md.splitlines()
    assert len(lines) == 2 + len(data["points"])
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "T=16 B=32 D=H=32 float64" in md
    assert bench_page.plot_svg(data).startswith(b"<?xml")
    assert "float64, B >= 32" in bench_page.targets_markdown(data)
    res = cli("--render", str(path))
    assert res.returncode == 0 and "x jax" in res.stdout, res.stderr


def test_a_skipped_point_is_listed_with_its_reason(quick):
    _, path = quick
    data = report.load(path)
    data["points"].append({"point": pr.Point(512, 128, 1024, 1024, "float64").as_dict(), "label": "big",
                           "status": "skipped", "reason": "estimated 900 s > --max-seconds 60", "flops": 1})
    assert "| big | skipped: estimated 900 s > --max-seconds 60 |" in bench_page.markdown_table(data)
    last = report.text_table(data).splitlines()[-1]
    assert last.startswith("big ") and last.endswith("  skipped: estimated 900 s > --max-seconds 60")


def test_broken_results_are_named():
    with pytest.raises(ValueError, match="points\\[0\\] has no 'status'"):
        report.validate({"meta": {}, "points": [{"point": {}, "label": "x", "flops": 1}]})
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        report.load("nope.json")


# --------------------------------------------------------------------------- negative controls
class _WrongGateOrder(CLASSES["torch"]):
    """PyTorch given the stacked weights in our per-gate order f, i, c, o instead of its i, f, g, o."""

    def __init__(self, problem):
        p = problem["params"]
        swapped = {**p, **{f"{k}_f": p[f"{k}_i"] for k in "WUb"}, **{f"{k}_i": p[f"{k}_f"] for k in "WUb"}}
        super().__init__({**problem, "params": swapped})


def test_negative_control_the_check_catches_a_peer_that_computes_something_else():
    point = pr.Point(4, 3, 5, 6, "float64")
    pb = pr.make_problem(point)
    want = CLASSES["reference"](pb).canonical_grads()
    right, _ = compare_grads(CLASSES["torch"](pb).canonical_grads(), want)
    wrong, where = compare_grads(_WrongGateOrder(pb).canonical_grads(), want)
    assert right <= 1e-10 < 1e-2 < wrong
    assert where
    # JAX in this process: float32 (float64 needs JAX_ENABLE_X64 before import, which only the workers set)
    pb32 = pr.make_problem(pr.Point(4, 3, 5, 6, "float32"))
    jax_err, _ = compare_grads(CLASSES["jax"](pb32).canonical_grads(), CLASSES["reference"](pb32).canonical_grads())
    assert jax_err <= 1e-5


def test_negative_control_a_doubled_bias_gradient_is_caught():
    """from_torch_lstm sums the two biases: summing their gradients would double ours."""
    point = pr.Point(3, 2, 4, 4, "float64")
    pb = pr.make_problem(point)
    want = CLASSES["reference"](pb).canonical_grads()
    got = CLASSES["torch"](pb).canonical_grads()
    got["hh:b_o"] = 2 * got["hh:b_o"]
    err, where = compare_grads(got, want)
    assert err > 0.5 and where == "hh:b_o"


def test_the_mismatch_status_fails_the_command(monkeypatch):
    """A point whose gradients disagree is reported as MISMATCH and the command exits 1."""
    from lstm_spec.bench import runner

    monkeypatch.setattr(runner, "check_tolerance", lambda dtype: -1.0)  # nothing can pass
    with Bench(peers=("torch",), reps=1, retries=0) as b:
        rec = b.measure(pr.Point(2, 1, 3, 3, "float64"))
    assert rec["status"] == "mismatch" and "torch" in rec["reason"]
    data = {"meta": {}, "points": [rec]}
    assert "MISMATCH" in bench_page.markdown_table(data)


def test_points_over_budget_are_skipped_with_a_reason():
    with Bench(peers=(), reps=1, max_seconds=1.0, max_memory_gb=0.5) as b:
        big = b.measure(pr.Point(512, 128, 1024, 1024, "float64"))
        slow = b.measure(pr.Point(512, 1, 1024, 1024, "float32"))
    assert big["status"] == "skipped" and "--max-memory-gb" in big["reason"]
    assert slow["status"] == "skipped" and "--max-seconds" in slow["reason"]


def test_problem_facts():
    p = pr.Point(2, 3, 4, 5, "float32")
    assert pr.flops(p) == 3 * 2 * 2 * 3 * 4 * 5 * 9
    assert pr.min_cache_bytes(p) == 5 * 2 * 3 * 5 * 4
    assert len(pr.grid()) == 4 * 3 * 3 * 2
    a, b = pr.make_problem(p, seed=3), pr.make_problem(p, seed=3)
    assert all(np.array_equal(a["params"][k], b["params"][k]) for k in a["params"]) and a["x"].dtype == np.float32
    with pytest.raises(ValueError, match="Point.H: got 0"):
        pr.Point(1, 1, 1, 0, "float32")
    with pytest.raises(ValueError, match="Point.dtype: got 'float16'"):
        pr.Point(1, 1, 1, 1, "float16")
    s = summary([3.0, 1.0, 2.0, 10.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 10.0


def test_bad_arguments_are_named():
    res = cli("--T", "0,1")
    assert res.returncode != 0 and "--T: got '0,1'" in res.stderr
    res = cli("--peers", "tensorflow")
    assert res.returncode != 0 and "--peers: got ['tensorflow']" in res.stderr
    res = cli("--what", "everything")
    assert res.returncode != 0 and "--what" in res.stderr


def test_tool_timing_reports_time_exit_code_and_timeout():
    ok = time_command([sys.executable, "-c", "pass"], timeout=120)
    assert ok["exit_code"] == 0 and ok["seconds"] > 0
    bad = time_command([sys.executable, "-c", "raise SystemExit(3)"], timeout=120)
    assert bad["exit_code"] == 3
    hang = time_command([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert hang["exit_code"] is None and "timed out" in hang["tail"]


def test_rerun_noisy_replaces_a_noisy_point_by_a_quieter_measurement(quick, tmp_path):
    _, path = quick
    data = json.loads(path.read_text())
    data["points"] = data["points"][:2]
    data["points"][0]["spread"] = 99.0  # pretend the first point was hopelessly noisy
    data["points"][1]["spread"] = 0.0  # and the second one perfectly quiet
    src, out = tmp_path / "noisy.json", tmp_path / "rerun.json"
    src.write_text(json.dumps(data))
    res = cli("--rerun-noisy", str(src), "--json", str(out), "--retries", "0")
    assert res.returncode == 0, res.stdout + res.stderr
    new = json.loads(out.read_text())
    assert new["points"][0]["spread"] < 99.0 and new["points"][0]["rerun"] is True
    assert new["points"][1] == data["points"][1]  # not re-measured
    assert new["meta"]["reruns"][-1]["points"] == 1 and new["meta"]["reruns"][-1]["replaced"] == 1


def test_profile_splits_the_reference_time_and_names_the_floor(tmp_path):
    """`bench --profile` (the profile behind a missed target): five parts that add up to the measured
    time, and the floor the GEMM rate sets. Only the accounting is asserted, never a time."""
    path = tmp_path / "profile.json"
    res = cli("--profile", "--T", "3", "--B", "2", "--H", "8", "--dtype", "float64", "--reps", "2", "--json", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    for text in ("seq_matmul", "tensordot", "recurrent products", "sigmoid and tanh", "the rest", "floor"):
        assert text in res.stdout
    (r,) = json.loads(path.read_text())["profiles"]
    assert r["label"] == "T=3 B=2 D=H=8 float64" and r["threads"] == 1 and r["reps"] == 2
    assert set(r["parts"]) == {"input", "params", "recurrent", "activations", "rest"}
    assert sum(r["parts"].values()) == pytest.approx(r["total"])
    assert all(r["parts"][k] > 0 for k in ("input", "params", "recurrent", "activations"))
    assert r["floor"] > 0 and r["gemm_gflops"] > 0
    table = bench_page.directive("bench-profile", path)  # the docs' table of it
    assert "T=3 B=2 D=H=8 float64" in table and "recurrent products" in table
    bad = cli("--profile", "--quick")
    assert bad.returncode != 0 and "choose one" in bad.stderr


def test_gemm_shape_is_never_thinner_than_the_points_own_products():
    """The GEMM a point is measured against keeps the point's rows up to 1024 (a cap in FLOPs alone left
    119 rows at H = 1024, a thin product slower than the reference's own: fractions above 1)."""
    assert pr.gemm_shape(pr.Point(16, 32, 1024, 1024, "float64")) == (512, 2048, 4096)
    assert pr.gemm_shape(pr.Point(512, 128, 1024, 1024, "float64")) == (1024, 2048, 4096)
    assert pr.gemm_shape(pr.Point(512, 128, 32, 32, "float32"))[0] == 512 * 128  # small: never capped
    assert pr.gemm_shape(pr.Point(1, 1, 8, 8, "float32")) == (1, 16, 32)
