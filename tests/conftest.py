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


def write_spec(tmp_path, body: str, name="cell.toml"):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path
