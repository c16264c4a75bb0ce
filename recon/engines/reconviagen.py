"""The `reconviagen` engine: ReconViaGen (TRELLIS conditioned on VGGT features) generates a mesh
that completes what no view saw; we then align it to the calibrated rig, conform its surface to
what the views observed (where they observed it) and re-texture it from the real views, because a
generated mesh lives in its own frame, its shape is only approximately the object's, and its
colours are hallucinated.

The upstream network is an optional runtime (package `trellis` from the ReconViaGen repository,
CUDA only, several GB of weights from the model store); see docs/RECONVIAGEN.md. Without it the
engine reports itself unavailable and the job fails at load_weights with MODEL_FAILED. The
post-processing (`finish_generated_mesh`) is ours, runs anywhere, and is what the tests and
bench/align.py measure on synthetic "generated" meshes.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
from pydantic import Field

from recon.engines.base import BaseEngine, EngineConfig, Resident, load_now
from recon.errors import ModelFailed, VramOOM
from recon.hooks import Hooks
from recon.mesh import TexturedMesh
from recon.options import ReconOptions
from recon.render.base import RenderBackend
from recon.types import Calibration, Inputs


class ReconViaGenConfig(EngineConfig):
    """Upstream pipeline, its weights in the model store and the sampler settings."""

    name: ClassVar[str] = "reconviagen"
    version: str = "0.4.0"
    upstream_module: str = "trellis.pipelines"
    upstream_class: str = "TrellisVGGTTo3DPipeline"
    # Model-store entry the service publishes the upstream weights under (jobs/models).
    weights: tuple[str, str] = ("trellis-vggt", "v0-2")
    # Sampler settings of the upstream demo; generation quality only matters up to alignment.
    run_params: dict[str, Any] = Field(default_factory=lambda: {
        "seed": 0,
        "sparse_structure_sampler_params": {"steps": 30, "cfg_strength": 7.5},
        "slat_sampler_params": {"steps": 12, "cfg_strength": 3.0},
        "mode": "multidiffusion",
    })
    texture_size: int = 2048  # unless the caller asks for another
    conform_max_faces: int | None = None  # None: recon.engines.align's CONFORM_MAX_FACES

    def setup(self, device: str) -> ReconViaGenEngine:
        return ReconViaGenEngine(self, device)


def finish_generated_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    inputs: Inputs,
    calibration: Calibration,
    *,
    vertex_colors: np.ndarray | None = None,
    texture_size: int = 2048,
    max_faces: int | None = None,
    backend: RenderBackend | None = None,
    hooks: Hooks = Hooks(),
) -> TexturedMesh:
    """Align any externally generated mesh to the rig, conform it to what the views saw, and
    re-texture it from the views.

    Generated colours (per vertex, [0, 1]) survive only on texels no view sees (bake_texture's
    fallback). mesh.info gets the alignment residuals and the conforming displacements
    (quality.json's engine_info). `max_faces` None: recon.engines.align's CONFORM_MAX_FACES.
    """
    from recon.engines.align import CONFORM_MAX_FACES, Alignment, align_to_rig, apply_alignment, conform_to_views
    from recon.texture.bake import bake_texture

    started = time.perf_counter()
    alignment: Alignment = align_to_rig(vertices, faces, inputs, calibration, hooks=hooks.sub(0.0, 0.3))
    aligned_v, aligned_f = apply_alignment(vertices, faces, alignment)
    align_s = time.perf_counter() - started
    conformed = conform_to_views(aligned_v, aligned_f, inputs, calibration,
                                 max_faces=CONFORM_MAX_FACES if max_faces is None else max_faces,
                                 hooks=hooks.sub(0.3, 0.45))
    conform_s = time.perf_counter() - started - align_s
    fallback = None if vertex_colors is None else np.asarray(vertex_colors)[conformed.source_vertex]
    mesh = bake_texture(
        conformed.vertices,
        conformed.faces,
        inputs,
        calibration,
        texture_size=texture_size,
        backend=backend,
        hooks=hooks.sub(0.45, 1.0),
        fallback_colors=fallback,
    )
    mesh.info["alignment"] = {**alignment.to_dict(), "conform": conformed.to_dict()}
    mesh.info["generated"] = {"vertices": int(len(vertices)), "faces": int(len(faces)),
                              "colours": vertex_colors is not None}
    mesh.info.setdefault("timings", {}).update({
        "align_s": round(align_s, 3), "conform_s": round(conform_s, 3),
        "texture_s": round(time.perf_counter() - started - align_s - conform_s, 3)})
    return mesh


def load_generated_mesh(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(vertices, faces, per-vertex colours in [0, 1] or None) of a generator's mesh file (GLB,
    PLY, OBJ): for meshes generated elsewhere, e.g. by the upstream demo on another host."""
    import trimesh

    mesh = cast(trimesh.Trimesh, trimesh.load(path, force="mesh", process=False))  # force="mesh": a Trimesh
    colours = None
    if getattr(mesh.visual, "kind", None) == "vertex":
        visual = cast(trimesh.visual.ColorVisuals, mesh.visual)  # only colour visuals are of kind "vertex"
        colours = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64), colours


# Sub-folders of the published weights folder that hold the auxiliary networks the upstream
# pipeline fetches by name at load time (DINOv2 via torch.hub; VGGT, BiRefNet via the Hugging Face
# hub), in those libraries' own cache layouts; docs/RECONVIAGEN.md says how to fill them.
BUNDLED_CACHES = {"TORCH_HOME": "torch", "HF_HOME": "huggingface"}


def use_bundled_caches(weights_dir: Path) -> None:
    """Point torch.hub and the Hugging Face hub at the caches inside the weights folder and keep
    them offline: workers have no internet, and a silent download would bypass the model store's
    hashes. Must run before the upstream package (and huggingface_hub) is imported."""
    for variable, folder in BUNDLED_CACHES.items():
        if (weights_dir / folder).is_dir():
            os.environ[variable] = str(weights_dir / folder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("SPCONV_ALGO", "native")  # spconv's autotuner can hang on first use


class ReconViaGenEngine(BaseEngine):
    """Adapter around the upstream pipeline; the loaded network stays resident through the
    caller's `resident` cache (the job service's jobs.models.RESIDENT)."""

    config: ReconViaGenConfig

    def __init__(self, config: ReconViaGenConfig, device: str) -> None:
        super().__init__(config, device)
        self.weights = config.weights
        self._pipeline: Any = None

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("trellis") is None:
            return (
                "the ReconViaGen runtime (Python package 'trellis' from the ReconViaGen repository) "
                "is not installed on this worker; build the GPU image with the reconviagen layer "
                "(docs/RECONVIAGEN.md)"
            )
        if self.device == "cpu":
            return "ReconViaGen needs a CUDA GPU (sparse convolutions and xformers have no CPU path)"
        return None

    def load(self, weights_dir: Path | None, resident: Resident = load_now) -> None:
        reason = self.unavailable_reason()
        if reason:
            raise ModelFailed(reason, model=self.name, pipeline_stage="load_weights")
        if weights_dir is None:
            raise ModelFailed("ReconViaGen weights were not provided", model=self.name, pipeline_stage="load_weights")
        self._pipeline = resident(lambda: self._load_pipeline(weights_dir))

    def _load_pipeline(self, weights_dir: Path) -> Any:
        import torch

        use_bundled_caches(weights_dir)
        module = importlib.import_module(self.config.upstream_module)
        pipeline_cls = getattr(module, self.config.upstream_class)
        try:
            pipeline = pipeline_cls.from_pretrained(str(weights_dir))  # a local folder: no download
            target = torch.device(self.device)
            pipeline.to(target)
            # the VGGT feature network and the matting network live outside `pipeline.models`
            for extra in ("VGGT_model", "birefnet_model"):
                if getattr(pipeline, extra, None) is not None:
                    getattr(pipeline, extra).to(target)
            pipeline._device = target  # upstream reads it when it moves inputs
        except Exception as exc:  # torch.cuda.OutOfMemoryError has no import here on CPU hosts
            if type(exc).__name__ == "OutOfMemoryError":
                raise VramOOM(str(exc).splitlines()[0], model=self.name) from exc
            raise
        return pipeline

    def run(self, inputs: Inputs, calibration: Calibration, hooks: Hooks,
            options: ReconOptions = ReconOptions()) -> TexturedMesh:
        if self._pipeline is None:
            raise ModelFailed("ReconViaGen is not loaded", model=self.name, pipeline_stage="inference")
        from PIL import Image

        from recon.render import get_backend

        started = time.perf_counter()
        hooks.check()
        hooks.progress(0.0, "generating mesh")
        images = []
        for image, mask in zip(inputs.images, inputs.masks):
            rgba = np.dstack([np.clip(image * 255, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255])
            images.append(self._pipeline.preprocess_image(Image.fromarray(rgba, "RGBA")))
        try:
            outputs, *_ = self._pipeline.run(image=images, formats=["mesh"], preprocess_image=False,
                                             **self.config.run_params)
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                raise VramOOM(str(exc).splitlines()[0], model=self.name) from exc
            raise
        generated = outputs["mesh"][0]
        vertices = generated.vertices.detach().cpu().numpy().astype(np.float64)
        faces = generated.faces.detach().cpu().numpy().astype(np.int64)
        colors = getattr(generated, "vertex_attrs", None)
        vertex_colors = colors[:, :3].detach().cpu().numpy() if colors is not None else None
        generate_s = time.perf_counter() - started
        hooks.progress(0.5, "aligning and re-texturing")
        max_faces = options.target_faces or self.config.conform_max_faces
        mesh = finish_generated_mesh(vertices, faces, inputs, calibration, vertex_colors=vertex_colors,
                                     texture_size=options.texture_size or self.config.texture_size,
                                     max_faces=max_faces, backend=get_backend(self.device),
                                     hooks=hooks.sub(0.5, 1.0))
        mesh.info["engine"] = {"name": self.name, "version": self.version, "weights": list(self.config.weights)}
        mesh.info["timings"]["generate_s"] = round(generate_s, 3)
        return mesh
