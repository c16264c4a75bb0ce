"""The `reconviagen` engine: ReconViaGen (TRELLIS conditioned on VGGT features) generates a mesh
that completes what no view saw; we then align it to the calibrated rig and re-texture it from the
real views, because a generated mesh lives in its own frame and its colours are hallucinated.

The upstream network is an optional runtime (package `trellis` from the ReconViaGen repository,
CUDA only, several GB of weights from the model store); see README "ReconViaGen". Without it the
engine reports itself unavailable and the job fails at load_weights with MODEL_FAILED. The
post-processing (`finish_generated_mesh`) is ours, runs anywhere, and is what the tests and
bench/align.py measure on synthetic "generated" meshes.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np

from recon.align import Alignment, align_to_rig, apply_alignment
from recon.errors import ModelFailed, VramOOM
from recon.hooks import Hooks
from recon.mesh import TexturedMesh
from recon.types import Calibration, Inputs

UPSTREAM_MODULE = "trellis.pipelines"
UPSTREAM_CLASS = "TrellisVGGTTo3DPipeline"
# Model-store entry the service publishes the upstream weights under (jobs/models.py).
WEIGHTS = ("trellis-vggt", "v0-2")

# Sampler settings of the upstream demo; generation quality only matters up to alignment.
RUN_PARAMS: dict[str, Any] = {
    "seed": 0,
    "sparse_structure_sampler_params": {"steps": 30, "cfg_strength": 7.5},
    "slat_sampler_params": {"steps": 12, "cfg_strength": 3.0},
    "mode": "multidiffusion",
}


def finish_generated_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    inputs: Inputs,
    calibration: Calibration,
    *,
    vertex_colors: np.ndarray | None = None,
    texture_size: int = 2048,
    hooks: Hooks = Hooks(),
) -> TexturedMesh:
    """Align any externally generated mesh to the rig and re-texture it from the views.

    Generated colours (if any) survive only on texels no view sees (bake_texture's fallback).
    """
    from recon.texture import bake_texture

    started = time.perf_counter()
    alignment: Alignment = align_to_rig(vertices, faces, inputs, calibration, hooks=hooks.sub(0.0, 0.5))
    aligned_v, aligned_f = apply_alignment(vertices, faces, alignment)
    mesh = bake_texture(
        aligned_v,
        aligned_f,
        inputs,
        calibration,
        texture_size=texture_size,
        hooks=hooks.sub(0.5, 1.0),
        fallback_colors=vertex_colors,
    )
    mesh.info["alignment"] = alignment.to_dict()
    mesh.info["alignment_seconds"] = round(time.perf_counter() - started, 3)
    return mesh


class ReconViaGenEngine:
    """Adapter around the upstream pipeline; keeps the loaded network resident per process."""

    name = "reconviagen"
    version = "0.1.0"
    weights = WEIGHTS

    def __init__(self) -> None:
        self._pipeline: Any = None
        self._loaded_from: Path | None = None

    def unavailable_reason(self, device: str) -> str | None:
        if importlib.util.find_spec("trellis") is None:
            return (
                "the ReconViaGen runtime (Python package 'trellis' from the ReconViaGen repository) "
                "is not installed on this worker; build the GPU image with the reconviagen layer"
            )
        if device == "cpu":
            return "ReconViaGen needs a CUDA GPU (sparse convolutions and xformers have no CPU path)"
        return None

    def load(self, weights_dir: Path | None, device: str) -> None:
        reason = self.unavailable_reason(device)
        if reason:
            raise ModelFailed(reason, model=self.name, pipeline_stage="load_weights")
        if weights_dir is None:
            raise ModelFailed("ReconViaGen weights were not provided", model=self.name, pipeline_stage="load_weights")
        if self._pipeline is not None and self._loaded_from == weights_dir:
            return
        module = importlib.import_module(UPSTREAM_MODULE)
        pipeline_cls = getattr(module, UPSTREAM_CLASS)
        try:
            pipeline = pipeline_cls.from_pretrained(str(weights_dir))
            pipeline.cuda()
        except Exception as exc:  # torch.cuda.OutOfMemoryError has no import here on CPU hosts
            if type(exc).__name__ == "OutOfMemoryError":
                raise VramOOM(str(exc).splitlines()[0], model=self.name) from exc
            raise
        self._pipeline, self._loaded_from = pipeline, weights_dir

    def run(self, inputs: Inputs, calibration: Calibration, hooks: Hooks) -> TexturedMesh:
        if self._pipeline is None:
            raise ModelFailed("ReconViaGen is not loaded", model=self.name, pipeline_stage="inference")
        from PIL import Image

        hooks.check()
        hooks.progress(0.0, "generating mesh")
        images = []
        for image, mask in zip(inputs.images, inputs.masks):
            rgba = np.dstack([np.clip(image * 255, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255])
            images.append(self._pipeline.preprocess_image(Image.fromarray(rgba, "RGBA")))
        try:
            outputs, *_ = self._pipeline.run(image=images, formats=["mesh"], preprocess_image=False, **RUN_PARAMS)
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                raise VramOOM(str(exc).splitlines()[0], model=self.name) from exc
            raise
        generated = outputs["mesh"][0]
        vertices = generated.vertices.detach().cpu().numpy().astype(np.float64)
        faces = generated.faces.detach().cpu().numpy().astype(np.int64)
        colors = getattr(generated, "vertex_attrs", None)
        vertex_colors = colors[:, :3].detach().cpu().numpy() if colors is not None else None
        hooks.progress(0.5, "aligning and re-texturing")
        return finish_generated_mesh(
            vertices, faces, inputs, calibration, vertex_colors=vertex_colors, hooks=hooks.sub(0.5, 1.0)
        )


ENGINE = ReconViaGenEngine()
