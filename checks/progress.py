"""Progress of a long command on stderr: on a terminal a bar with counts, elapsed time and an estimate
(rich); otherwise one plain line per finished step, so logs and CI output stay readable."""

from __future__ import annotations

import sys


class Counter:
    """``with Counter(n, "verify") as c: ... c.step("lstm: pass")``, once per finished step."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None):
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done, self._bar = 0, None

    @property
    def live(self) -> bool:
        """A bar is drawn (a terminal): per-step detail lines would only break it."""
        return self._bar is not None

    def __enter__(self):
        if self.enabled and self.total and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[last]}"),
                                 console=Console(file=self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, last="")
        return self

    def step(self, text: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            last = text if len(text) <= 48 else text[:47] + "…"  # the counts and the estimate stay visible
            self._bar.update(self._task, advance=1, last=last)
        else:
            print(f"  [{self.done}/{self.total}] {text}", file=self.stream, flush=True)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
        return False
