"""Cancellation checks for long-running stages: reads the flow run's state (jobs.lifecycle.runs,
throttled), so `Hooks.check()` between stages and inside engine loops notices a job that
the API moved to Cancelling, even before the worker stops the process."""

from __future__ import annotations

import logging
import time
from uuid import UUID

log = logging.getLogger(__name__)


class CancelWatch:
    """`should_cancel()` is True once the flow run is Cancelling/Cancelled; asks the server at
    most every `interval` seconds (engine loops call it far more often)."""

    def __init__(self, flow_run_id: UUID | str | None, interval: float = 2.0) -> None:
        self.flow_run_id = UUID(str(flow_run_id)) if flow_run_id else None
        self.interval = interval
        self._last = float("-inf")
        self._cancelled = False

    def should_cancel(self) -> bool:
        if self._cancelled or self.flow_run_id is None:
            return self._cancelled
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        from jobs.lifecycle.runs import cancel_requested

        try:
            self._cancelled = cancel_requested(self.flow_run_id)
        except Exception as exc:  # the server being briefly unreachable is no reason to stop
            log.warning("cancellation check failed: %s", exc)
            return False
        return self._cancelled
