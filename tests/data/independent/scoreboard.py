"""Run `lstm-spec conform` on every independent target and print its diagnosis next to the ground truth.

    python tests/data/independent/scoreboard.py                 # every target in MANIFEST.toml
    python tests/data/independent/scoreboard.py --only keras    # files whose name contains "keras"
    python tests/data/independent/scoreboard.py --full          # also the whole report of each

A human reads each block and counts the buggy targets whose bug conform names right, names wrong,
or does not explain. `--lstm-spec "python other_checkout_launcher.py"` runs another command in place
of `lstm-spec` (e.g. a frozen checkout while the working tree is being edited).
"""
import argparse
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUANTITY_ROW = "    "  # report rows are indented by four spaces: "    d W_f  ...  FAIL"


def load_manifest():
    with open(HERE / "MANIFEST.toml", "rb") as fh:
        return tomllib.load(fh)["target"]


def run_conform(entry, command="lstm-spec", extra=()):
    """(exit code, stdout, seconds) of conform on one manifest entry, in this process' environment."""
    cmd = shlex.split(command) + ["conform", f"{HERE / entry['file']}:{entry['object']}",
                                  "--timeout", "0", "--quiet", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - start


def failing_quantities(report):
    """Quantities with a FAIL row in any case, in order of first appearance."""
    names = []
    for line in report.splitlines():
        parts = line.split()
        if line.startswith(QUANTITY_ROW) and parts and parts[-1] == "FAIL":
            name = " ".join(parts[:2]) if parts[0] == "d" else parts[0]
            if name not in names:
                names.append(name)
    return names


def diagnosis_text(report):
    """The run's summary diagnosis block if there is one, else each distinct per-case diagnosis line."""
    lines = report.splitlines()
    for k, line in enumerate(lines):
        if line.startswith("diagnosis over all failing cases"):
            block = []
            for rest in lines[k + 1:]:
                if not rest.startswith(" "):
                    break
                block.append(rest.strip())
            return block
    seen = []
    for line in lines:
        if line.strip().startswith("diagnosis:") and line.strip() not in seen:
            seen.append(line.strip())
    return seen


def expected_exit(entry):
    return 0 if entry["correct"] and not entry.get("partial") else 1


def print_block(entry, code, report, seconds, full):
    verdict = "correct" + (" (parameter gradients only)" if entry.get("partial") else "") \
        if entry["correct"] else "buggy"
    ok = code == expected_exit(entry) or (entry.get("partial") and code in (0, 1))
    print(f"=== {entry['file']}:{entry['object']}  [{verdict}]  exit {code} "
          f"({'as expected' if ok else 'UNEXPECTED'}), {seconds:.1f} s")
    print(f"  style: {entry['style']}")
    for bug in entry.get("bug", []):
        print(f"  truth: {bug['where']}, {bug['kind']}: {bug['statement']}")
        print(f"         first wrong: {bug['first_wrong']}")
        print(f"         {bug['description']}")
    fails = failing_quantities(report)
    if fails:
        print(f"  failing quantities: {', '.join(fails)}")
    for line in diagnosis_text(report) or ["(no diagnosis printed)"]:
        print(f"  conform: {line}")
    if full:
        print(report)
    print()
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only files whose name contains this text")
    parser.add_argument("--full", action="store_true", help="print each whole report too")
    parser.add_argument("--lstm-spec", default="lstm-spec", help="command to run instead of lstm-spec")
    args = parser.parse_args(argv)
    entries = [e for e in load_manifest() if args.only in e["file"]]
    tally = {"as expected": 0, "unexpected": 0}
    total = 0.0
    for entry in entries:
        code, report, seconds = run_conform(entry, args.lstm_spec)
        total += seconds
        ok = print_block(entry, code, report, seconds, args.full)
        tally["as expected" if ok else "unexpected"] += 1
    buggy = sum(not e["correct"] for e in entries)
    print(f"{len(entries)} targets ({buggy} buggy, {len(entries) - buggy} correct): "
          f"{tally['as expected']} exit as expected, {tally['unexpected']} unexpected; {total:.0f} s")
    return 0 if tally["unexpected"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
