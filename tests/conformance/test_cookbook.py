"""The cookbook of docs/conformance.md (issue 15 item 10): each wrapper in docs/examples/cookbook/ is under 25
lines, is included by the page, and conforms (with the conventions it declares) when its library is
installed; otherwise its test is skipped with the install command."""
from pathlib import Path

import pytest

from lstm_spec.checks.cases import CONFORM_SHAPES
from lstm_spec.conformance.runner import conform, default_cases, format_report
from lstm_spec.conformance.targets import ProtocolTarget, load_object

ROOT = Path(__file__).resolve().parents[2]
COOKBOOK = ROOT / "docs" / "examples" / "cookbook"
MAX_LINES = 25  # each wrapper has fewer (issue 15: the wrappers took 31 to 93 lines before the declarations)

# (file, object, constructor arguments, module it needs, how to install it)
WRAPPERS = [
    ("numpy_combined.py", "NumpyCombinedLSTM", {}, "numpy", "pip install numpy"),
    ("tf1_lstm_cell.py", "TF1LSTMCell", {}, "tensorflow", 'pip install "lstm-spec[keras]" (tensorflow-cpu)'),
    ("tf1_lstm_cell.py", "TF1LSTMCell", {"cell": "peephole_projection", "use_peepholes": True}, "tensorflow",
     'pip install "lstm-spec[keras]" (tensorflow-cpu)'),
    ("tf1_lstm_cell.py", "TF1LSTMCell", {"cell": "projection_clip", "cell_clip": 2.0, "proj_clip": 0.5}, "tensorflow",
     'pip install "lstm-spec[keras]" (tensorflow-cpu)'),
    ("haiku_lstm.py", "HaikuLSTM", {}, "haiku", 'pip install "lstm-spec[jax]" (dm-haiku)'),
    ("equinox_lstm_cell.py", "EquinoxLSTMCell", {}, "equinox", 'pip install "lstm-spec[jax]" (equinox)'),
]


def _id(w):
    file, obj, args = w[:3]
    return f"{file[:-3]}-{args.get('cell', 'default')}" + ("-keras" if w[3] == "tensorflow" else "")


@pytest.mark.parametrize("wrapper", WRAPPERS, ids=[_id(w) for w in WRAPPERS])
def test_a_cookbook_wrapper_conforms(wrapper):
    file, obj, args, module, install = wrapper
    pytest.importorskip(module, reason=f"{module} is not installed; install it with: {install}")
    cls = load_object(f"{COOKBOOK / file}:{obj}").__class__  # loaded as `lstm-spec conform FILE:OBJ` loads it
    target = ProtocolTarget(cls(**args), file)
    cases = default_cases(target.cells, [d for d in ("float64", "float32") if d in target.dtypes])
    report = conform(target, cases)
    assert report.passed and report.exit_code == 0, format_report(report, verbose=False)
    assert sum(r.status == "pass" for r in report.results) == 2 * len(CONFORM_SHAPES)  # every shape in both dtypes


@pytest.mark.parametrize("file", sorted(p.name for p in COOKBOOK.glob("*.py")))
def test_a_cookbook_wrapper_is_short_and_on_the_page(file):
    lines = (COOKBOOK / file).read_text(encoding="utf-8").splitlines()
    assert len(lines) < MAX_LINES, f"{file}: {len(lines)} lines"
    page = (ROOT / "docs" / "conformance.md").read_text(encoding="utf-8")
    assert f"<!-- lstm-spec: include-code docs/examples/cookbook/{file} python -->" in page
    assert file in {w[0] for w in WRAPPERS}, f"{file} has no conform test"
