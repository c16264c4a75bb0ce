"""What every engine is: a typed config (pydantic, so the service's settings tree can hold and
validate it) that builds the engine for one device, and the engine object that config builds.

The config carries the engine's `version`, which must change whenever the engine's output changes
(tests/test_golden.py enforces it): the job service records it with each result and reprocesses
results of older versions (flows/reprocess.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from recon.hooks import Hooks
from recon.mesh import TexturedMesh
from recon.options import ReconOptions
from recon.types import Calibration, Inputs

# The caller's cache of loaded weights: given a loader, the resident model (loading it at most
# once per process). The job service passes jobs.models.RESIDENT; the default just loads.
Resident = Callable[[Callable[[], Any]], Any]


def load_now(loader: Callable[[], Any]) -> Any:
    return loader()


class EngineConfig(BaseModel):
    """Base of the engines' configs: `setup(device)` builds the engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str]
    version: str

    def setup(self, device: str) -> Engine:
        raise NotImplementedError


class Engine(Protocol):
    """An engine built for one resolved device ("cpu", "cuda" or "cuda:N")."""

    device: str
    weights: tuple[str, str] | None  # (name, version) in the model store, if it has weights

    @property
    def config(self) -> EngineConfig:
        """Read-only here, so that an engine may declare its own config subclass."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def unavailable_reason(self) -> str | None:
        """None when it can run on this host and device, else why not."""

    def load(self, weights_dir: Path | None, resident: Resident = load_now) -> None:
        """Load the weights (if any) for `run`; called once per job."""

    def run(self, inputs: Inputs, calibration: Calibration, hooks: Hooks,
            options: ReconOptions = ReconOptions()) -> TexturedMesh:
        """The textured mesh for the caller's target_faces and texture_size (recon/options.py)."""


class BaseEngine:
    """What engines without weights share: the config and device they were built with, and
    nothing to check or load."""

    weights: tuple[str, str] | None = None

    def __init__(self, config: EngineConfig, device: str) -> None:
        self.config, self.device = config, device

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        return self.config.version

    def unavailable_reason(self) -> str | None:
        return None

    def load(self, weights_dir: Path | None, resident: Resident = load_now) -> None:
        """No weights."""
