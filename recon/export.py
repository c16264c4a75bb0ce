"""Write a TexturedMesh as the service's mesh files: GLB, OBJ + MTL + PNG, PLY.

All three go through trimesh's exporters so that what we write is what common tools read; the
only choices made here are the materials (white factors so viewers show the texture unchanged,
not trimesh's default grey Kd 0.4) and the PLY's per-vertex colours sampled from the texture
(PLY viewers show vertex colours, not textures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from trimesh.exchange.obj import export_obj
from trimesh.visual.material import PBRMaterial, SimpleMaterial

from recon.mesh import TexturedMesh

MESH_FILES = ("mesh.glb", "mesh.obj", "mesh.mtl", "texture.png", "mesh.ply")
MATERIAL_NAME = "texture"  # trimesh names the OBJ's image after the material: texture.png


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear colours (N, C) of `texture` (H, W, C) row 0 on top, at v-up uv (N, 2), clamped."""
    h, w = texture.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0, w - 1)
    y = np.clip((1.0 - uv[:, 1]) * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    t = texture.astype(np.float32)
    top = t[y0, x0] * (1 - fx) + t[y0, x1] * fx
    bottom = t[y1, x0] * (1 - fx) + t[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _textured(mesh: TexturedMesh, material) -> trimesh.Trimesh:
    visual = trimesh.visual.TextureVisuals(uv=mesh.uv, material=material)
    return trimesh.Trimesh(mesh.vertices, mesh.faces, visual=visual, process=False)


def export_mesh(mesh: TexturedMesh, out_dir: Path) -> list[Path]:
    """Write mesh.glb (embedded texture), mesh.obj + mesh.mtl + texture.png and mesh.ply
    (vertex colours) into `out_dir`; returns the paths in MESH_FILES order.

    The PLY carries no uv: trimesh's PLY reader (like several viewers) then drops the vertex
    colours in favour of an image-less texture, and GLB/OBJ already carry the atlas."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(mesh.texture[..., :3]).astype(np.uint8), "RGB")

    pbr = PBRMaterial(
        name=MATERIAL_NAME, baseColorTexture=image, baseColorFactor=[255, 255, 255, 255],
        metallicFactor=0.0, roughnessFactor=1.0, doubleSided=False,
    )
    (out / "mesh.glb").write_bytes(_textured(mesh, pbr).export(file_type="glb"))

    simple = SimpleMaterial(
        image=image, name=MATERIAL_NAME, diffuse=[255, 255, 255, 255],
        ambient=[255, 255, 255, 255], specular=[0, 0, 0, 255], glossiness=1.0,
    )
    text, files = export_obj(
        _textured(mesh, simple), include_normals=True, include_texture=True,
        return_texture=True, mtl_name="mesh.mtl",
    )
    (out / "mesh.obj").write_text(text)
    (out / "mesh.mtl").write_bytes(files["mesh.mtl"])
    image.save(out / "texture.png")  # the exact texture, not trimesh's re-encoding

    colours = np.rint(sample_texture(mesh.texture[..., :3], mesh.uv)).astype(np.uint8)
    rgba = np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], axis=1)
    coloured = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=rgba, process=False)
    (out / "mesh.ply").write_bytes(coloured.export(file_type="ply", encoding="binary"))
    return [out / name for name in MESH_FILES]
