"""What a newcomer meets first (issue 18): the commands' first answers are right and say what to do."""

from lstm_spec import cli
from lstm_spec.checks import torch_check


def test_verify_without_torch_stops_at_once_with_the_install_command(monkeypatch, capsys):
    monkeypatch.setattr(torch_check, "torch_available", lambda: False)
    assert cli.main(["verify", "rnn_tanh", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not installed" in err and "--index-url https://download.pytorch.org/whl/cpu" in err
    assert "--no-torch" in err


def test_verify_names_the_rows_that_failed(monkeypatch, capsys):
    from lstm_spec.checks import runner

    real = runner.verify_cells

    def one_failing(cells, *a, **kw):
        rows = real(cells, *a, **kw)
        rows[0].passed = False
        return rows

    monkeypatch.setattr(runner, "verify_cells", one_failing)
    assert cli.main(["verify", "rnn_tanh", "--quiet", "--no-torch"]) == 1
    out = capsys.readouterr().out
    assert "SOME CHECKS FAILED (1: rnn_tanh / " in out
