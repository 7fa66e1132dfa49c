"""The spec fuzzer's grown properties (issue 13, Deliver): names that look generated, gradients against
complex step on several T and B, and the generated text under a second PYTHONHASHSEED. A bounded run here;
each property has a negative control that shows it can find what it looks for."""

import re

import sympy

from lstm_spec.checks import fuzz as spec_fuzz
from lstm_spec.derivations import names, reverse


def _run(tmp_path, **kw):
    args = {"n": 40, "seed": 0, "derive_every": 1, "timeout": 120, "crash_dir": tmp_path / "findings"} | kw
    return spec_fuzz.fuzz(**args)


def test_a_bounded_run_of_the_grown_fuzzer_finds_nothing(tmp_path):
    report = _run(tmp_path)
    text = "\n".join(report.lines())
    assert report.crashes == [], text
    assert report.cs_checked >= 5 and report.cs_max < spec_fuzz.CS_TOL, text
    assert report.hash_compared == report.derived >= 5 and report.hash_seed in ("0", "1"), text
    assert len({shape[0] for shape in spec_fuzz.CS_SHAPES}) > 1  # several T
    assert len({shape[1] for shape in spec_fuzz.CS_SHAPES}) > 1  # several B
    assert "complex step:" in text and "hash seed:" in text


def test_the_named_generator_uses_names_that_look_generated():
    """Odd names reach accepted specs: names of products, stacks, buffers and temporaries, and names made
    of two other names of the cell."""
    import random

    texts = [spec_fuzz.random_cell(random.Random(k), odd_names=True).decode() for k in range(60)]
    used = {n for t in texts for n in spec_fuzz.ODD_NAMES if re.search(rf"(?<![\w\[]){re.escape(n)}\b", t)}
    assert len(used) >= 10, used
    assert any(re.search(r"\b(S|P|Z0|tmp0|W_x)\b", t) for t in texts)
    assert any(re.search(r"\b(d|S|A_q|tanh) = \"", t) for t in texts)  # function names too


def test_without_the_namespace_the_fuzzer_finds_collisions(tmp_path, monkeypatch):
    """Negative control for the names: with every invented name taken as it comes (no allocation), the
    named cells collide and the fuzzer reports it."""
    def unchecked(self, base, source):
        self.owner[base] = source
        return base

    monkeypatch.setattr(names.Namespace, "fresh", unchecked)
    report = _run(tmp_path, hash_seed=False)
    assert report.crashes, "\n".join(report.lines())


def test_a_wrong_gradient_is_a_finding(tmp_path, monkeypatch):
    """Negative control for the complex-step property: every adjoint 1% off."""
    real = reverse._tidy
    monkeypatch.setattr(reverse, "_tidy", lambda e, simplify: real(e, simplify) * sympy.Rational(101, 100))
    report = _run(tmp_path, n=12, hash_seed=False)
    assert any(stage == "gradient" for *_, stage in report.crashes), "\n".join(report.lines())


def test_text_that_differs_under_another_hash_seed_is_a_finding(tmp_path, monkeypatch):
    """Negative control for the hash-seed property: the second process's digests disagree for one spec."""
    def other(paths, seed, timeout=0):
        return {p: ("0" * 64 if k == 0 else spec_fuzz.generated_digests([p])[p]) for k, p in enumerate(paths)}

    monkeypatch.setattr(spec_fuzz, "digests_in_another_process", other)
    report = _run(tmp_path, n=12, cs_tol=None)
    found = [c for c in report.crashes if c[3] == "hash seed"]
    assert len(found) == 1 and report.hash_compared >= 2, "\n".join(report.lines())


def test_hash_seed_differences():
    assert spec_fuzz.hash_seed_differences({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "9"}) == ["b", "c"]
