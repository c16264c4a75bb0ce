"""The pipeline as five stage functions plus `reconstruct`, which chains them (docs/engines.md).

The job service's Prefect tasks call the stages one by one (tasks/validate, inference, export,
metrics), the CLI calls `reconstruct`; each stage is usable on its own.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from recon.calibration.calibrate import calibrate as _calibrate
from recon.calibration.rig import SLOTS
from recon.device import resolve_device
from recon.engines.base import Engine, EngineConfig
from recon.errors import ModelFailed, ValidationFailed
from recon.hooks import Hooks
from recon.inputs.decode import decode_inputs
from recon.mesh import TexturedMesh
from recon.options import DEFAULT_FORMATS, ReconOptions
from recon.types import Calibration, Inputs


class ExportConfig(BaseModel):
    """Previews are rendered at the views' size, within [preview_min, preview_max] pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preview_min: int = 512
    preview_max: int = 1024


def output_files(formats: Sequence[str] = DEFAULT_FORMATS) -> tuple[str, ...]:
    """Every file a model's output folder holds when its mesh files are `formats`."""
    from recon.export.meshfiles import mesh_files
    from recon.export.preview import PREVIEW_FILES, TURNTABLE_FILE
    from recon.quality.metrics import comparison_files

    comparisons = tuple(name for slot in SLOTS for name in comparison_files(slot))
    return (*mesh_files(formats), *PREVIEW_FILES, TURNTABLE_FILE, "quality.json", "cameras.json",
            *comparisons)


OUTPUT_FILES = output_files()  # with the default formats (GLB, OBJ, PLY)


def load_inputs(view_paths: Sequence[str | Path], depth_paths: Sequence[str | Path],
                transforms_path: str | Path | None = None, max_pixels: int | None = None) -> Inputs:
    """Decode the uploaded PNGs (typed errors for anything malformed)."""
    return decode_inputs(view_paths, depth_paths, transforms_path, max_pixels)


def calibrate(inputs: Inputs, hooks: Hooks = Hooks()) -> Calibration:
    """Rig variant, field of view and metric depths."""
    return _calibrate(inputs, hooks)


def prepare_engine(name: str, device: str = "auto", weights_dir: Path | None = None,
                   configs: Mapping[str, EngineConfig] | None = None) -> Engine:
    """The engine `name` (from `configs`, else its defaults) built for `device`, checked to be
    able to run here and loaded: once per job. MODEL_FAILED when it is unknown or cannot run."""
    from recon.engines import build_engine

    resolved = resolve_device(device)
    engine = build_engine(name, resolved, configs)
    reason = engine.unavailable_reason()
    if reason is not None:
        raise ModelFailed(f"Engine '{name}' cannot run here: {reason}", model=name, device=resolved)
    engine.load(weights_dir)
    return engine


def run_engine(engine: Engine | str, inputs: Inputs, calibration: Calibration, hooks: Hooks = Hooks(),
               device: str = "auto", options: ReconOptions = ReconOptions(),
               configs: Mapping[str, EngineConfig] | None = None) -> TexturedMesh:
    """Run a prepared engine (or prepare the one called so, from `configs` or its defaults) with
    the caller's target_faces and texture_size; records its name, version and time in mesh.info."""
    if isinstance(engine, str):
        hooks.check()
        engine = prepare_engine(engine, device, configs=configs)
    hooks.check()
    start = time.perf_counter()
    mesh = engine.run(inputs, calibration, hooks, options)
    mesh.info.setdefault("engine", {"name": engine.name, "version": engine.version})
    mesh.info.setdefault("timings", {})["engine_s"] = round(time.perf_counter() - start, 3)
    return mesh


def export_outputs(mesh: TexturedMesh, calibration: Calibration, out_dir: str | Path,
                   device: str = "auto", hooks: Hooks = Hooks(),
                   formats: Sequence[str] = DEFAULT_FORMATS,
                   config: ExportConfig = ExportConfig()) -> list[Path]:
    """The mesh files of `formats` (default GLB, OBJ+MTL+PNG, PLY), the four previews, the
    turntable and cameras.json into `out_dir`."""
    from recon.export.meshfiles import export_mesh
    from recon.export.preview import write_previews, write_turntable
    from recon.render import get_backend

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hooks.check()
    paths = list(export_mesh(mesh, out, formats))
    hooks.progress(0.4, "export: meshes written")
    hooks.check()
    backend = get_backend(resolve_device(device))
    size = int(min(config.preview_max, max(config.preview_min, calibration.cameras[0].width)))
    paths += write_previews(mesh, out, backend, calibration.fov_deg, size)
    hooks.progress(0.7, "export: previews written")
    hooks.check()
    paths.append(write_turntable(mesh, out, backend, calibration.fov_deg))
    hooks.progress(0.9, "export: turntable written")
    cameras = out / "cameras.json"
    content = calibration.to_json()
    if "view_gains" in mesh.info.get("texture", {}):  # per-view photometric corrections of the bake
        content["view_gains"] = mesh.info["texture"]["view_gains"]
    if "view_shading" in mesh.info.get("texture", {}):  # and the key light each view's colours were divided by
        content["view_shading"] = mesh.info["texture"]["view_shading"]
    cameras.write_text(json.dumps(content, indent=1, default=_json_default))
    paths.append(cameras)
    hooks.progress(1.0, "export: done")
    return paths


def measure_quality(mesh: TexturedMesh, inputs: Inputs, calibration: Calibration,
                    out_dir: str | Path, model: str, device: str = "auto",
                    hooks: Hooks = Hooks(), options: ReconOptions = ReconOptions()) -> dict[str, Any]:
    """Re-render the mesh at the input views, write quality.json (with the options the result
    was made with) and each view's input/render pair (view_{slot}_*.png); returns the report."""
    from recon.quality.metrics import quality_report
    from recon.render import get_backend

    hooks.check()
    start = time.perf_counter()
    report = quality_report(mesh, inputs, calibration, get_backend(resolve_device(device)), model,
                            images_dir=Path(out_dir))
    report["options"] = options.to_json()
    report["engine"] = mesh.info.get("engine", {"name": model})
    report["calibration"] = calibration_summary(calibration)
    timings = dict(mesh.info.get("timings", {}))
    timings["quality_s"] = round(time.perf_counter() - start, 3)
    report["timings"] = timings
    write_quality(report, out_dir)
    hooks.progress(1.0, "quality: done")
    return report


def calibration_summary(calibration: Calibration) -> dict[str, Any]:
    scores = calibration.scores
    return {
        "variant": calibration.variant.name,
        "fov_deg": round(float(calibration.fov_deg), 3),
        "source": scores.get("source"),
        "rim_score": scores.get("rim_score"),
        "depth_residual": scores.get("depth_residual"),
    }


def write_quality(report: dict[str, Any], out_dir: str | Path) -> Path:
    path = Path(out_dir) / "quality.json"
    path.write_text(json.dumps(report, indent=1, default=_json_default))
    return path


def reconstruct(views: str | Path | Sequence[str | Path], depths: str | Path | Sequence[str | Path],
                out_dir: str | Path, engine: str = "fusion", hooks: Hooks = Hooks(),
                device: str = "auto", transforms: str | Path | None = None,
                options: ReconOptions = ReconOptions(),
                configs: Mapping[str, EngineConfig] | None = None,
                export: ExportConfig = ExportConfig()) -> dict[str, Any]:
    """Every stage in order; `views`/`depths` are folders of PNGs or lists of files; the engine
    from `configs` (name -> config) or its defaults.

    Returns the quality report with `timings` per stage (also written to quality.json).
    """
    timings: dict[str, float] = {}
    total = time.perf_counter()

    def timed(stage: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[f"{stage}_s"] = round(time.perf_counter() - start, 3)
        return result

    hooks.check()
    inputs = timed("decode", load_inputs, _png_files(views), _png_files(depths), transforms)
    hooks.progress(0.03, "inputs decoded")
    calibration = timed("calibrate", calibrate, inputs, hooks.sub(0.03, 0.15))
    resolved = resolve_device(device)
    mesh = timed("engine", run_engine, engine, inputs, calibration, hooks.sub(0.15, 0.8), resolved,
                 options=options, configs=configs)
    timed("export", export_outputs, mesh, calibration, out_dir, resolved, hooks.sub(0.8, 0.9),
          options.formats, export)
    report = timed("quality", measure_quality, mesh, inputs, calibration, out_dir, engine, resolved,
                   hooks.sub(0.9, 1.0), options)
    report["timings"] = {**report.get("timings", {}), **timings,
                         "total_s": round(time.perf_counter() - total, 3)}
    write_quality(report, out_dir)
    hooks.progress(1.0, "done")
    return report


def _png_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """A folder's files in natural name order (view2 before view10), or the given list."""
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        files = [p for p in Path(source).iterdir() if p.is_file() and not p.name.startswith(".")]
        return sorted(files, key=lambda p: [int(t) if t.isdigit() else t.lower()
                                            for t in re.split(r"(\d+)", p.name)])
    if isinstance(source, (str, Path)):
        if not Path(source).exists():
            raise ValidationFailed(f"'{source}' does not exist", path=str(source))
        return [Path(source)]
    return [Path(p) for p in source]


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays in reports -> plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
