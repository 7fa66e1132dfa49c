"""The quickstart of the Home page and of the conformance guide (one text, shown on both): install, a
minimal target class (docs/examples/my_lstm.py, included verbatim and run by tests/docs/test_docs_pages.py),
the command, and a failing report produced while the site is built, by running the command on a
deliberately broken example of ``lstm_spec.conformance.examples``."""

from __future__ import annotations

import contextlib
import functools
import io
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = "docs/examples/my_lstm.py"
USAGE = "docs/examples/usage.py"
SAMPLE = ["lstm-spec", "conform", "lstm_spec.conformance.examples:broken_gate_order",
          "--case", "T=1 B=1 D=3 H=2 float64"]


# two real reports on the conformance guide: a bug in the backward, and a bug in the forward
DIAGNOSIS_EXAMPLES = (
    ("A bug in the backward: the cell state's gradient is not carried back",
     ["lstm-spec", "conform", "lstm_spec.conformance.examples:broken_no_cell_carry_grad",
      "--case", "T=2 B=1 D=2 H=3 float64"]),
    ("A bug in the forward: a forget bias of 1 added at run time (with its own, consistent backward)",
     ["lstm-spec", "conform", "lstm_spec.conformance.examples:broken_forget_bias",
      "--case", "T=2 B=1 D=2 H=3 float64"]),
)


@functools.cache
def report_of(command: tuple) -> str:
    """What ``command`` (an ``lstm-spec conform`` of a deliberately broken example) prints on stdout, run in
    this process; the build fails if the example conforms (the page would no longer show what it says)."""
    from lstm_spec.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*command[1:], "--timeout", "0", "--quiet"])
    if code != 1 or "DOES NOT CONFORM" not in out.getvalue():
        raise RuntimeError(f"docs sample: {shlex.join(command)} exited {code}, expected 1 and a failing "
                           f"report; stderr: {err.getvalue().strip()[-300:]}")
    return out.getvalue().rstrip()


def diagnosis_examples_md() -> str:
    """The two reports, each as the command and its output, produced while the page is built."""
    parts = []
    for title, command in DIAGNOSIS_EXAMPLES:
        report = "\n".join("    " + line if line else "" for line in report_of(tuple(command)).splitlines())
        parts += [f'??? example "{title}"', f"    `{shlex.join(command)}` prints (produced while this page was built):",
                  "", "    ```text", report, "    ```", ""]
    return "\n".join(parts)


def sample_report() -> str:
    """What SAMPLE prints on stdout: the command itself, run in this process (``--timeout 0``: the target
    runs here rather than in a worker process, which changes nothing in the report; ``--quiet``: no progress
    lines on stderr). The example is broken on purpose: if it conformed, the page would no longer show what
    it says, so the build fails."""
    return report_of(tuple(SAMPLE))


def _code(path: str, lang: str, indent: str = "") -> str:
    text = (ROOT / path).read_text(encoding="utf-8").rstrip()
    return "\n".join(indent + line if line else "" for line in [f"```{lang}", *text.splitlines(), "```"])


def md() -> str:
    report = "\n".join("    " + line if line else "" for line in sample_report().splitlines())
    return "\n".join([
        "1. **Install** (Python 3.11 or later, in a checkout of lstm-spec): `pip install .`",
        "2. **Describe your LSTM** by a class with a `conformance` dict and a `forward` method; add a "
        "`backward` and every gradient is compared too ([the protocol](conformance.md#protocol-for-your-own-"
        "implementation-and-golden-vectors)). The smallest target, [`my_lstm.py`](examples/my_lstm.py):",
        "",
        _code(EXAMPLE, "python", "    "),
        "",
        "3. **Run** `lstm-spec conform my_lstm.py:MyLSTM`. It runs the same random cases on your code and on "
        "the reference, compares every output, and ends with `CONFORMS` (exit status 0) or `DOES NOT "
        "CONFORM` (exit status 1) with the name of the bug that reproduces your numbers.",
        "",
        '??? failure "A failing report: one case of an LSTM that swaps two gate blocks"',
        f"    Produced while this page was built, by `{shlex.join(SAMPLE)}` (a hand-written NumPy LSTM of "
        "`lstm_spec.conformance.examples` that reads the c and o blocks of its stacked weights swapped). "
        "Each row compares one quantity with the reference; the diagnosis names the bug.",
        "",
        "    ```text",
        report,
        "    ```",
    ])


def usage_md() -> str:
    return _code(USAGE, "python")
