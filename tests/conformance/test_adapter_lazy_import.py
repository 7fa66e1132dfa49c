"""Item 9 of issue 15 (speed): a built-in adapter whose framework takes seconds to import loads in
conform's main process without importing it (the main process only reads the target's cells, cases and
versions; the worker process, which runs the cases, imports the framework once). No timed asserts: the
test checks what is imported."""
import subprocess
import sys

import pytest

CHECK = """
import sys
from lstm_spec.conformance.targets import load_target
from lstm_spec.conformance.runner import default_cases, expand_variants, header
target = load_target({name!r})
cases = expand_variants(target, default_cases(target.cells))
assert all(target.supports(c) is None or isinstance(target.supports(c), str) for c in cases)
lines = header(target)
heavy = [m for m in {modules!r} if m in sys.modules]
print("VERSIONS", lines[2])
print("IMPORTED", heavy)
"""


@pytest.mark.parametrize(("name", "modules", "versions"), [
    ("keras", ("tensorflow", "keras"), ("keras 3", "tensorflow 2")),
    ("onnxruntime", ("onnxruntime", "onnx"), ("onnx 1", "onnxruntime 1")),
])
def test_loading_an_adapter_does_not_import_its_framework(name, modules, versions):
    pytest.importorskip(modules[0])
    out = subprocess.run([sys.executable, "-c", CHECK.format(name=name, modules=modules)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "IMPORTED []" in out.stdout, out.stdout
    assert all(v in out.stdout for v in versions), out.stdout  # the header still names the versions
