import os

import pytest

from lstm_spec.derivations import derive
from lstm_spec.spec import load


@pytest.fixture(scope="session")
def lstm_cell():
    return load("lstm")


@pytest.fixture(scope="session")
def lstm_derivation(lstm_cell):
    return derive(lstm_cell)


@pytest.fixture(scope="session")
def lstm_text(lstm_derivation):
    from lstm_spec.derivations.codegen import generate_module

    return generate_module(lstm_derivation)


# the tests leave nothing in the user's cache folder: no persistent JAX compilation cache (flax adapter)
os.environ.setdefault("LSTM_SPEC_JAX_CACHE", "off")


def write_spec(tmp_path, body: str, name="cell.toml"):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


# Markers by where a test lives or what it exercises, so the fast subset (`-m "not slow"`) and the
# per-framework selections need no decorator on each test. A test may also mark itself.
_FILE_MARKS = {
    "test_docs.py": ("docs",),
    "test_docs_pages.py": ("docs",),
    "test_docs_browser.py": ("docs", "browser", "slow"),
    "test_torch.py": ("torch",),
    "test_tf1_cells.py": ("keras",),  # TensorFlow's TF1 LSTMCell
}
# whole files or single tests over about 20 s on 2 cores (measured with --durations; see CONTRIBUTING.md)
_SLOW = {
    "test_cells.py": None,          # sympy.diff form of checks (a) and (b) for every cell
    "test_cli.py": ("test_verify_prints_table_and_passes",),  # runs the whole `lstm-spec verify`
    "test_docs.py": None,           # builds the site
    "test_docs_pages.py": None,     # builds the site
    # single tests measured over 20 s on 2 cores (CI run of this session, --durations)
    "test_regularisation.py": ("test_a_users_layer_normalised_rnn_goes_through_the_same_checks",),
    "test_conform_misbehaving.py": ("test_report_is_the_same_in_two_processes",),
    "test_conform.py": ("test_catalogue_diagnoses_are_specific", "test_framework_adapter"),
    "test_symbolic_checks.py": ("test_b_generated_code_equals_sympy_diff_of_unrolled_loss_exactly",
                                "test_b_longer_sequence_and_batch_at_random_points"),
    "test_conform_suite.py": ("test_broken_target_fails_with_diagnosis_and_reproducer",),
}
# files whose tests name the framework they run (e.g. test_framework_adapter_conforms[keras-keras])
_FRAMEWORK_FILES = {"test_conform.py", "test_torch.py", "test_regularisation.py", "test_bidirectional.py",
                    "test_api.py", "test_input_validation.py", "test_cookbook.py"}
_FRAMEWORK_WORDS = {"torch": ("torch", "pytorch"), "keras": ("keras", "tf1"), "flax": ("flax",),
                    "onnxruntime": ("onnxruntime",), "jax": ("haiku", "equinox")}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        for mark in _FILE_MARKS.get(name, ()):
            item.add_marker(mark)
        if name in _SLOW and (_SLOW[name] is None or item.name.startswith(_SLOW[name])):
            item.add_marker("slow")
        words = item.name.lower() if name in _FRAMEWORK_FILES else ""
        for mark, keys in _FRAMEWORK_WORDS.items():
            if words and any(k in words for k in keys):
                item.add_marker(mark)
