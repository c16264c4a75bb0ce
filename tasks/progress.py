"""The flow's side of a job's progress: where the job is (validate, then each model's stages) as
a 0-100 percentage and one row per model, published through jobs.lifecycle.progress's artifacts
(which the API reads back as `ReportedProgress`).

Why throttled: engine hooks report many times a second; every artifact write is an HTTP request
to the Prefect server, so fraction updates are written at most every `min_interval` seconds,
while stage and status changes (what a client polls for) are always written at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from jobs.lifecycle.progress import ModelRow, ProgressArtifacts
from recon.hooks import Hooks

# Share of the job's 0-100 before the first model starts, and of each model's own 0..1 per stage.
VALIDATE_SHARE = 0.10
STAGE_SPANS: dict[str, tuple[float, float]] = {
    "load_weights": (0.00, 0.05),
    "inference": (0.05, 0.80),
    "export": (0.80, 0.90),
    "metrics": (0.90, 1.00),
}


class ProgressReporter:
    """Tracks and publishes a job's progress; one instance per flow run."""

    def __init__(self, job_id: str, models: list[str], min_interval: float = 1.0) -> None:
        self.job_id = job_id
        self.models = list(models)
        self.rows: dict[str, ModelRow] = {
            m: ModelRow(model=m, status="pending", stage="", progress=0, error=None) for m in models
        }
        self.percent = 0.0
        self.min_interval = min_interval
        self._artifacts = ProgressArtifacts(job_id)
        self._description = ""
        self._last_write = 0.0
        self._lock = threading.Lock()

    # ---- what the flow and tasks call -------------------------------------------------------

    def validate(self, fraction: float, message: str = "validate") -> None:
        self._set_percent(100.0 * VALIDATE_SHARE * _clip(fraction), message)

    def stage(self, model: str, stage: str, fraction: float = 0.0, message: str = "") -> None:
        """`model` is at `stage`, `fraction` (0..1) through it; a stage change writes at once."""
        row = self.rows[model]
        changed = row.get("stage") != stage or row.get("status") != "running"
        row["status"] = "running"
        row["stage"] = stage
        start, end = STAGE_SPANS[stage]
        within = start + (end - start) * _clip(fraction)
        row["progress"] = int(round(100 * within))
        index = self.models.index(model)
        share = (1.0 - VALIDATE_SHARE) / len(self.models)
        self._set_percent(100.0 * (VALIDATE_SHARE + share * (index + within)), message or f"{model}: {stage}",
                          force=changed, table=True)

    def model_done(self, model: str) -> None:
        row = self.rows[model]
        row["status"] = "completed"
        row["progress"] = 100
        self._write(force=True, table=True)

    def model_failed(self, model: str | None, status: str, error: dict | None) -> None:
        """Mark `model` (or, if None, every unfinished model) failed/cancelled."""
        for name, row in self.rows.items():
            if (model is None and row.get("status") in ("pending", "running")) or name == model:
                row["status"] = status
                row["error"] = error
        self._write(force=True, table=True)

    def finished(self) -> None:
        self._set_percent(100.0, "completed", force=True, table=True)

    def engine_hooks(self, model: str, stage: str, should_cancel: Callable[[], bool]) -> Hooks:
        """recon Hooks whose progress moves this model through `stage`."""
        return Hooks(progress=lambda f, msg: self.stage(model, stage, f, msg), should_cancel=should_cancel)

    # ---- artifact writes ---------------------------------------------------------------------

    def _set_percent(self, percent: float, message: str, force: bool = False, table: bool = False) -> None:
        self.percent = max(self.percent, min(100.0, percent))  # never goes backwards for a client
        self._description = message
        self._write(force=force, table=table)

    def _write(self, force: bool, table: bool) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last_write < self.min_interval:
                return
            self._last_write = now
            self._artifacts.write(self.percent, self._description, list(self.rows.values()) if table else None)


def _clip(x: float) -> float:
    return min(max(float(x), 0.0), 1.0)
