"""Misbehaving targets for the conformance runner (tests/conformance/test_conform_misbehaving.py).

Each is the hand-written NumpyLSTM with one misbehaviour: it raises, returns something that is not an
array, a wrong shape or dtype, NaN, hangs (in a Python loop or in C), kills its own process, or
modifies its inputs. Most misbehave only on cases with T = 4 (``_picked``), so that a test sees the
run go on to the next case and the other cases pass. Loaded by file path
(``tests/conformance/conform_misbehaving_targets.py:Name``) so that a worker process can load them too.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

from lstm_spec.conformance.examples import NumpyLSTM
from lstm_spec.conformance.targets import Target


def _picked(x, batch_major=False) -> bool:
    """The cases this module's targets misbehave on: T = 4 (x is time-major)."""
    return np.shape(x)[1 if batch_major else 0] == 4


class _Base(NumpyLSTM):
    def __init__(self):
        super().__init__()
        self.conformance = dict(self.conformance, name=type(self).__name__)


class Raises(_Base):
    def forward(self, params, x, **kw):
        if _picked(x):
            raise RuntimeError("boom at T = 4")
        return super().forward(params, x, **kw)


class ReturnsString(_Base):
    def forward(self, params, x, **kw):
        y, final = super().forward(params, x, **kw)
        return ("not an array" if _picked(x) else y), final


class WrongShape(_Base):
    def forward(self, params, x, **kw):
        y, final = super().forward(params, x, **kw)
        return (y[:, :, :-1] if _picked(x) else y), final


class UpcastFloat32(_Base):
    """Computes right, but returns float64 arrays in a float32 case: within the float32 tolerance, wrong dtype."""

    def forward(self, params, x, **kw):
        y, final = super().forward(params, x, **kw)
        return y.astype(np.float64), final


class NaNOutput(_Base):
    def forward(self, params, x, **kw):
        y, final = super().forward(params, x, **kw)
        if _picked(x):
            y = y.copy()
            y[1, 2, 0] = np.nan
        return y, final


class HangsInPython(_Base):
    def forward(self, params, x, **kw):
        while _picked(x):
            pass
        return super().forward(params, x, **kw)


class HangsInC(_Base):
    def forward(self, params, x, **kw):
        if _picked(x):
            time.sleep(10**6)  # one C call, no Python bytecode to interrupt
        return super().forward(params, x, **kw)


class Crashes(_Base):
    def forward(self, params, x, **kw):
        if _picked(x):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(params, x, **kw)


class MutatesX(_Base):
    def forward(self, params, x, **kw):
        out = super().forward(params, x, **kw)
        x[...] = 0.0
        return out


class MutatesParams(_Base):
    def forward(self, params, x, **kw):
        out = super().forward(params, x, **kw)
        params["W"] *= 2
        return out


class MutatesDyAndH0(_Base):
    """Right numbers, but backward scribbles on dy and h0 afterwards: only the mutation check sees it."""

    def backward(self, params, x, dy, d_final, **kw):
        g = super().backward(params, x, dy, d_final, **kw)
        dy[...] = 0.0
        kw["h0"][0, 0] += 1.0
        return g


class MutatesProblem(Target):
    """A Target subclass (not the protocol) that writes into the problem it is given."""

    name = "MutatesProblem"
    features = frozenset({"gradients"})

    def run(self, problem):
        from lstm_spec.conformance.problem import expected

        got = expected(problem, dtype=problem.case.dtype)
        problem.x[0, 0, 0] += 1.0
        return got


class Correct(_Base):
    pass


# ------------------------------------------------------------------ issue 13: hostile targets (test_conform_hostile.py)
class ExitsZero(_Base):
    """Calls sys.exit(0) during a case (a script's exit, a library's fatal-error path)."""

    def forward(self, params, x, **kw):
        if _picked(x):
            sys.exit(0)
        return super().forward(params, x, **kw)


class ExitsThree(_Base):
    """sys.exit(3): the code `conform` uses for "framework not installed"."""

    def forward(self, params, x, **kw):
        if _picked(x):
            sys.exit(3)
        return super().forward(params, x, **kw)


class Interrupts(_Base):
    def forward(self, params, x, **kw):
        if _picked(x):
            raise KeyboardInterrupt
        return super().forward(params, x, **kw)


class UsesPool(_Base):
    """A correct target that computes part of its work in a process pool (a child of the worker)."""

    def forward(self, params, x, **kw):
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply(abs, (-1,)) == 1
        return super().forward(params, x, **kw)


class OrphanThenHang(_Base):
    """Starts a child process that inherits the worker's stdout/stderr, writes its pid to the file named by
    $LSTM_SPEC_TEST_PIDFILE, then hangs: the child must not outlive the timeout's kill."""

    def forward(self, params, x, **kw):
        if _picked(x):
            import subprocess

            child = subprocess.Popen(["sleep", "60"])
            with open(os.environ["LSTM_SPEC_TEST_PIDFILE"], "w") as fh:
                fh.write(str(child.pid))
            time.sleep(10**6)
        return super().forward(params, x, **kw)


class Chatty(_Base):
    """Prints 200 kB per call to stdout and stderr (Python and C level), then raises on T = 4."""

    def forward(self, params, x, **kw):
        print("chatter " * 25_000)
        os.write(2, b"c-level chatter\n" * 100)
        if _picked(x):
            print("last words before the error")
            raise RuntimeError("boom after printing")
        return super().forward(params, x, **kw)


class ReturnsLists(_Base):
    def forward(self, params, x, **kw):
        y, (h, c) = super().forward(params, x, **kw)
        return y.tolist(), (h.tolist(), c.tolist())


def _exit_three():
    sys.exit(3)


def _fail_to_load():
    raise ValueError("this result cannot be unpickled")


class _ExitsOnUnpickle(np.ndarray):
    def __reduce__(self):
        return (_exit_three, ())


class _FailsToUnpickle(np.ndarray):
    def __reduce__(self):
        return (_fail_to_load, ())


class ResultExitsOnUnpickle(_Base):
    """Right numbers in an ndarray subclass whose unpickling calls sys.exit(3)."""

    def forward(self, params, x, **kw):
        y, final = super().forward(params, x, **kw)
        return y.view(_ExitsOnUnpickle), final


class ResultFailsToUnpickle(_Base):
    def forward(self, params, x, **kw):
        y, final = super().forward(params, x, **kw)
        return y.view(_FailsToUnpickle), final


class ClosesPipeAndExits(_Base):
    """Closes every descriptor of its worker process but 0-2 (its pipe to conform), then exits 7 a moment later."""

    def forward(self, params, x, **kw):
        if _picked(x):
            os.closerange(3, 65536)
            time.sleep(0.3)
            os._exit(7)
        return super().forward(params, x, **kw)


class SignalsInterrupt(_Base):
    """Sends SIGINT to its own process, as Ctrl-C would: a real interrupt, not the target's exception."""

    def forward(self, params, x, **kw):
        if _picked(x):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        return super().forward(params, x, **kw)
