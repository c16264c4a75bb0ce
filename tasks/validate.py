"""Stage 1 (once per job): fetch the job's inputs from the object store into the run's work dir,
decode them (recon.pipeline.load_inputs) and calibrate the rig (recon.pipeline.calibrate)."""

from __future__ import annotations

from pathlib import Path

from jobs.lifecycle.keys import input_name, input_prefix, transforms_key
from jobs.storage import ObjectStore
from recon.hooks import Hooks
from recon.types import Calibration, Inputs
from tasks.context import JobRun, stage_task
from tasks.failures import failing_as


def _upload_order(key: str) -> tuple[int, str]:
    """Input keys name their upload index: sort by it."""
    index, name = input_name(key)
    return (1 << 30 if index is None else index, name)


def download_inputs(store: ObjectStore, job_id: str, dest: Path) -> tuple[list[Path], list[Path], Path | None]:
    """Views and depths in upload order, each under its original file name (slots are matched by
    name stem); plus transforms.json when the client uploaded cameras."""
    groups: dict[str, list[Path]] = {}
    for kind in ("views", "depths"):
        keys = sorted((o.key for o in store.list(input_prefix(job_id, kind))), key=_upload_order)
        paths = []
        for i, key in enumerate(keys):
            path = dest / kind / str(i) / input_name(key)[1]  # one folder per file: names may repeat
            store.download_file(key, path)
            paths.append(path)
        groups[kind] = paths
    transforms = None
    if store.exists(transforms_key(job_id)):
        transforms = dest / "transforms.json"
        store.download_file(transforms_key(job_id), transforms)
    return groups["views"], groups["depths"], transforms


@stage_task("validate")
def validate(run: JobRun) -> tuple[Inputs, Calibration]:
    with failing_as(None, "validate"):
        from recon import pipeline  # lazy: loading the flow (worker hooks, maintenance) skips torch

        run.check()
        run.progress.validate(0.0, "downloading inputs")
        views, depths, transforms = download_inputs(run.store, run.job_id, run.workdir / "inputs")
        run.progress.validate(0.2, "decoding inputs")
        inputs = pipeline.load_inputs(views, depths, transforms, max_pixels=run.settings.max_pixels)
        run.progress.validate(0.4, "calibrating cameras")
        hooks = Hooks(lambda f, msg: run.progress.validate(0.4 + 0.6 * f, msg), run.watch.should_cancel)
        calibration = pipeline.calibrate(inputs, hooks=hooks)
        run.progress.validate(1.0, "inputs valid")
        return inputs, calibration
