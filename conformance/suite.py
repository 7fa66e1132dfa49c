"""The conformance suite as pytest tests, for a project's own CI (see conformance/PROTOCOL.md):

    LSTM_SPEC_TARGET=mypkg.rnn:MyLSTM python -m pytest --pyargs lstm_spec.conformance.suite

One test per case (its id is the case's name); a failure prints the rows of the failing quantities,
the diagnosis and a command that reproduces it. Known deviations go in a TOML file given by
``--lstm-spec-xfail`` or ``LSTM_SPEC_XFAIL``:

    [[skip]]
    case = "float64"          # a substring of the case id ("*" = every case)
    reason = "float32 only"

    [[xfail]]
    case = "reverse"
    quantities = ["y"]        # optional: xfail only when nothing else fails
    reason = "outputs of the reverse pass come back reversed (issue #12)"

An xfail that passes fails the run (strict), so a fixed deviation is noticed. The target runs in a
worker process that is killed when a case takes longer than ``--lstm-spec-timeout`` /
``LSTM_SPEC_TIMEOUT`` seconds (default 300; 0: in the pytest process), as with `lstm-spec conform`.
"""

from __future__ import annotations

import pytest

from .pytest_plugin import configured_target, configured_timeout, configured_xfail


def _load_deviations(path):
    if not path:
        return [], []
    import tomllib

    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    unknown = set(data) - {"skip", "xfail"}
    if unknown:
        raise pytest.UsageError(f"{path}: unknown table(s) {sorted(unknown)}; expected [[skip]] and [[xfail]]")
    for kind in ("skip", "xfail"):
        for entry in data.get(kind, []):
            if "case" not in entry or "reason" not in entry:
                raise pytest.UsageError(f"{path}: every [[{kind}]] needs `case` and `reason`, got {entry}")
    return data.get("skip", []), data.get("xfail", [])


def _matches(entry, name):
    return entry["case"] == "*" or entry["case"] in name


def pytest_generate_tests(metafunc):
    if "lstm_spec_case" not in metafunc.fixturenames:
        return
    spec = configured_target(metafunc.config)
    if not spec:
        metafunc.parametrize("lstm_spec_case", [pytest.param(None, marks=pytest.mark.skip(
            reason="no target: set LSTM_SPEC_TARGET=module:object or --lstm-spec-target"))], ids=["no-target"])
        return
    from .runner import default_cases, expand_variants
    from .targets import TargetError, Unavailable, load_target

    try:
        target = load_target(spec)
    except Unavailable as exc:
        metafunc.parametrize("lstm_spec_case", [pytest.param(None, marks=pytest.mark.skip(reason=str(exc)))],
                             ids=[spec])
        return
    except TargetError as exc:
        raise pytest.UsageError(f"lstm-spec target {spec}: {exc}") from exc
    skips, xfails = _load_deviations(configured_xfail(metafunc.config))
    params = []
    dtypes = [d for d in ("float64", "float32") if d in target.dtypes]
    for case in expand_variants(target, default_cases(target.cells, dtypes)):
        marks = []
        for s in skips:
            if _matches(s, case.name):
                marks.append(pytest.mark.skip(reason=f"known deviation: {s['reason']}"))
        params.append(pytest.param((target, case, [x for x in xfails if _matches(x, case.name)]), marks=marks,
                                   id=case.name))
    metafunc.parametrize("lstm_spec_case", params)


@pytest.fixture(scope="module")
def lstm_spec_workers():
    """One worker process per target for the whole module (started on first use), stopped at the end."""
    workers = {}
    yield workers
    for w in workers.values():
        w.stop()


def test_conformance(lstm_spec_case, request, lstm_spec_workers):
    from .runner import CaseWorker, Report, format_report, run_case

    target, case, xfails = lstm_spec_case
    timeout = configured_timeout(request.config)
    worker = None
    if timeout and target.supports(case) is None:
        worker = (lstm_spec_workers.get(id(target))
                  or lstm_spec_workers.setdefault(id(target), CaseWorker(target, timeout)))
    r = run_case(target, case, worker=worker)
    if r.status == "skip":
        pytest.skip(r.detail)
    spec = configured_target(request.config)
    text = format_report(Report(target, [r]), verbose=False)
    repro = f"reproduce: lstm-spec conform {spec} --case '{case.name}'"
    failing = {row.quantity for row in r.failing}
    for x in xfails:
        allowed = set(x.get("quantities", [])) or None
        if r.status != "pass" and (allowed is None or failing <= allowed):
            pytest.xfail(f"known deviation: {x['reason']}")
        if r.status == "pass":
            pytest.fail(f"[XPASS(strict)] listed as a known deviation ({x['reason']}) but it passes: remove the entry",
                        pytrace=False)
    if r.status != "pass":
        pytest.fail(f"{text}\n{repro}", pytrace=False)
