"""Engine registry: `fusion` (depth fusion + texture baking), `nvdiffrec` (differentiable-render
refinement of the fusion result), `reconviagen` (generative mesh, aligned and re-textured).

The registry maps each name to its config class (recon/engines/base.py); `config.setup(device)`
builds the engine. Config modules are light (no torch, no upstream runtime), so versions and
availability can be read anywhere; a missing optional runtime (the upstream ReconViaGen package)
only makes that engine report itself unavailable.
"""

from __future__ import annotations

from collections.abc import Mapping

from recon.engines.base import Engine, EngineConfig
from recon.engines.fusion import FusionConfig
from recon.engines.nvdiffrec.config import NvdiffrecConfig
from recon.engines.reconviagen import ReconViaGenConfig
from recon.errors import ModelFailed

# The concrete configs (every field has a default, so each builds with no arguments).
ENGINE_CONFIGS: dict[str, type[FusionConfig] | type[NvdiffrecConfig] | type[ReconViaGenConfig]] = {
    cls.name: cls for cls in (FusionConfig, NvdiffrecConfig, ReconViaGenConfig)
}

Configs = Mapping[str, EngineConfig]


def engine_config(name: str, configs: Configs | None = None) -> EngineConfig:
    """`name`'s config from `configs` (the service's settings), else its defaults; MODEL_FAILED
    for an unknown name."""
    if name not in ENGINE_CONFIGS:
        raise ModelFailed(f"Unknown engine '{name}'", model=name, available=sorted(ENGINE_CONFIGS))
    if configs is not None and name in configs:
        return configs[name]
    return ENGINE_CONFIGS[name]()


def build_engine(name: str, device: str, configs: Configs | None = None) -> Engine:
    """The engine `name` for the resolved `device`, from `configs` or the defaults."""
    return engine_config(name, configs).setup(device)


def available_engines(device: str, configs: Configs | None = None) -> list[str]:
    """Names of the engines that can run on this host with the resolved `device`."""
    return [name for name in ENGINE_CONFIGS if build_engine(name, device, configs).unavailable_reason() is None]


__all__ = ["ENGINE_CONFIGS", "Engine", "EngineConfig", "available_engines", "build_engine", "engine_config"]
