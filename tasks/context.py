"""What every stage task of one job needs, in one object, and the decorator all stage tasks share
(no caching or result persistence: stage results are in-memory meshes and images of this run;
Prefect retries with exponential backoff, only for transient failures)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from jobs.options import JobOptions
from jobs.settings import Settings
from jobs.storage import ObjectStore
from recon.hooks import Hooks
from recon.options import ReconOptions
from tasks.cancellation import CancelWatch
from tasks.failures import BACKOFF_FACTOR, RETRIES, retry_transient
from tasks.progress import ProgressReporter


@dataclass
class JobRun:
    job_id: str
    settings: Settings
    store: ObjectStore
    progress: ProgressReporter
    watch: CancelWatch
    workdir: Path  # per-run scratch directory, removed when the run ends
    device: str  # "cpu" or "cuda"
    options: ReconOptions = ReconOptions()  # the job's options (record), as recon takes them

    def check(self) -> None:
        """Raise recon's `Cancelled` if the job was cancelled (called before every stage)."""
        Hooks(should_cancel=self.watch.should_cancel).check()

    def hooks(self, model: str, stage: str) -> Hooks:
        """recon Hooks reporting `model`'s progress through `stage` and checking cancellation."""
        return self.progress.engine_hooks(model, stage, self.watch.should_cancel)


def recon_options(options: JobOptions) -> ReconOptions:
    """The job record's options as recon's engines and exporter take them."""
    return ReconOptions(target_faces=options.target_faces, texture_size=options.texture_size,
                        formats=options.mesh_formats())


def stage_task(name: str, retries: int = RETRIES) -> Callable[[Callable[..., Any]], Any]:
    """@task options shared by the pipeline stages."""
    return task(
        name=name,
        cache_policy=NO_CACHE,
        persist_result=False,
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=BACKOFF_FACTOR),
        retry_jitter_factor=0.5,
        retry_condition_fn=retry_transient,
    )
