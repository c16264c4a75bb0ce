"""Progress and cancellation hooks that long-running stages call.

The flow provides real callbacks (Prefect progress artifact, flow-run state); the CLI provides a
progress bar; tests provide counters. Stages call `hooks.progress(...)` at milestones and
`hooks.check()` before each stage and every N iterations of long loops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from recon.errors import Cancelled


def _no_progress(fraction: float, message: str) -> None:  # noqa: ARG001
    return None


def _never() -> bool:
    return False


@dataclass
class Hooks:
    """`progress(fraction, message)` with fraction in [0, 1] for the current engine run;
    `should_cancel()` returns True once the job is cancelled."""

    progress: Callable[[float, str], None] = field(default=_no_progress)
    should_cancel: Callable[[], bool] = field(default=_never)

    def check(self) -> None:
        """Raise `Cancelled` if the job was cancelled; call between stages and in long loops."""
        if self.should_cancel():
            raise Cancelled("job cancelled")

    def sub(self, start: float, end: float) -> Hooks:
        """Hooks for a sub-stage whose own 0..1 maps onto [start, end] of this one."""
        parent = self.progress

        def progress(fraction: float, message: str) -> None:
            parent(start + (end - start) * min(max(fraction, 0.0), 1.0), message)

        return Hooks(progress=progress, should_cancel=self.should_cancel)
