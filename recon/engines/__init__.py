"""Engine registry: `fusion` (depth fusion + texture baking), `nvdiffrec` (differentiable-render
refinement of the fusion result), `reconviagen` (generative mesh, aligned and re-textured).

Engines are imported lazily by name so that a missing optional runtime (e.g. the upstream
ReconViaGen package) never breaks the others. Each engine module defines `ENGINE`, an object with:

    name: str
    version: str                       # bump when outputs change; reprocess reruns older results
    weights: tuple[str, str] | None    # optional: (name, version) in the model store to load
    def unavailable_reason(device: str) -> str | None   # None when it can run on this host
    def load(weights_dir: Path | None, device: str) -> None   # idempotent; keeps weights resident
    def run(inputs: Inputs, calibration: Calibration, hooks: Hooks,
            options: ReconOptions = ReconOptions()) -> TexturedMesh
        # options: the caller's target_faces (an upper limit) and texture_size (recon/options.py)
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

from recon.errors import ModelFailed
from recon.hooks import Hooks
from recon.mesh import TexturedMesh
from recon.options import ReconOptions
from recon.types import Calibration, Inputs

ENGINE_MODULES: dict[str, str] = {
    "fusion": "recon.engines.fusion",
    "nvdiffrec": "recon.engines.nvdiffrec",
    "reconviagen": "recon.engines.reconviagen",
}


class Engine(Protocol):
    name: str
    version: str

    def unavailable_reason(self, device: str) -> str | None: ...

    def load(self, weights_dir: Path | None, device: str) -> None: ...

    def run(self, inputs: Inputs, calibration: Calibration, hooks: Hooks,
            options: ReconOptions = ReconOptions()) -> TexturedMesh: ...


def get_engine(name: str) -> Engine:
    """The engine called `name`; MODEL_FAILED if unknown or its module cannot be imported."""
    if name not in ENGINE_MODULES:
        raise ModelFailed(f"Unknown engine '{name}'", model=name, available=sorted(ENGINE_MODULES))
    try:
        module = importlib.import_module(ENGINE_MODULES[name])
    except ImportError as exc:
        raise ModelFailed(f"Engine '{name}' cannot be imported: {exc}", model=name) from exc
    return module.ENGINE


def available_engines(device: str) -> list[str]:
    """Names of the engines that can run on this host with `device` ("cpu" or "cuda")."""
    names = []
    for name in ENGINE_MODULES:
        try:
            if get_engine(name).unavailable_reason(device) is None:
                names.append(name)
        except ModelFailed:
            continue
    return names
