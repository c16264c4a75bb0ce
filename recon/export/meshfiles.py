"""Write a TexturedMesh as the service's mesh files: GLB, OBJ + MTL + PNG, PLY, STL, glTF + BIN.

All go through trimesh's exporters so that what we write is what common tools read; the
only choices made here are the materials (white factors so viewers show the texture unchanged,
not trimesh's default grey Kd 0.4) and the PLY's per-vertex colours sampled from the texture
(PLY viewers show vertex colours, not textures).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import trimesh
from PIL import Image
from trimesh.exchange.gltf import export_glb, export_gltf
from trimesh.exchange.obj import export_obj
from trimesh.visual.material import PBRMaterial, SimpleMaterial

from recon.mesh import TexturedMesh
from recon.options import DEFAULT_FORMATS, MESH_FORMATS
from recon.threads import map_in_threads

MATERIAL_NAME = "texture"  # trimesh names the OBJ's image after the material: texture.png
TEXTURE_FILE = "texture.png"
GLTF_BUFFER = "mesh.bin"
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963  # glTF bufferView targets


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


def _set_buffer_view_targets(tree: dict[str, Any]) -> None:
    """Mark vertex and index bufferViews with their GPU targets (the validator hints otherwise)."""
    views = tree.get("bufferViews", [])
    accessors = tree.get("accessors", [])

    def mark(accessor: int, target: int) -> None:
        view = accessors[accessor].get("bufferView")
        if view is not None and view < len(views):
            views[view]["target"] = target

    for gltf_mesh in tree.get("meshes", []):
        for primitive in gltf_mesh.get("primitives", []):
            for accessor in primitive.get("attributes", {}).values():
                mark(accessor, ARRAY_BUFFER)
            if "indices" in primitive:
                mark(primitive["indices"], ELEMENT_ARRAY_BUFFER)


def _closed(mesh: TexturedMesh) -> bool:
    """Watertight once the texture seams' split vertices are merged."""
    return bool(trimesh.Trimesh(mesh.vertices, mesh.faces, process=True).is_watertight)


def _pbr_scene(mesh: TexturedMesh, image: Image.Image) -> trimesh.Trimesh:
    # an open surface (a wall of no thickness, a cut-open shell) is seen from both sides, as the
    # service's own renders show it; a closed one keeps back-face culling
    pbr = PBRMaterial(
        name=MATERIAL_NAME, baseColorTexture=image, baseColorFactor=[255, 255, 255, 255],
        metallicFactor=0.0, roughnessFactor=1.0, doubleSided=not _closed(mesh),
    )
    return _textured(mesh, pbr)


def _write_glb(mesh: TexturedMesh, image: Image.Image, out: Path) -> list[Path]:
    glb = export_glb(_pbr_scene(mesh, image), tree_postprocessor=_set_buffer_view_targets)
    (out / "mesh.glb").write_bytes(glb)
    return [out / "mesh.glb"]


def _external_images(tree: dict[str, Any], blob: bytes) -> bytes:
    """Point the (single) image at texture.png and drop its bytes from the buffer.

    trimesh embeds textures in the buffer even for a .gltf; a separate-files glTF is meant to
    reference its image by URI, so the image's bufferView is removed and the others repacked
    (4-byte aligned, indices renumbered)."""
    views = tree.get("bufferViews", [])
    image_views = {img.pop("bufferView") for img in tree.get("images", []) if "bufferView" in img}
    for img in tree.get("images", []):
        img.pop("mimeType", None)
        img["uri"] = TEXTURE_FILE
    kept: list[dict[str, Any]] = []
    renumber: dict[int, int] = {}
    packed = bytearray()
    for index, view in enumerate(views):
        if index in image_views:
            continue
        start = view.get("byteOffset", 0)
        chunk = blob[start:start + view["byteLength"]]
        packed += b"\0" * (-len(packed) % 4)
        renumber[index] = len(kept)
        kept.append({**view, "byteOffset": len(packed)})
        packed += chunk
    for accessor in tree.get("accessors", []):
        if "bufferView" in accessor:
            accessor["bufferView"] = renumber[accessor["bufferView"]]
    tree["bufferViews"] = kept
    tree["buffers"] = [{"uri": GLTF_BUFFER, "byteLength": len(packed)}]
    return bytes(packed)


def _write_gltf(mesh: TexturedMesh, image: Image.Image, out: Path) -> list[Path]:
    files = export_gltf(_pbr_scene(mesh, image), merge_buffers=True)
    tree = json.loads(files["model.gltf"])
    blob = _external_images(tree, files[tree["buffers"][0]["uri"]])
    _set_buffer_view_targets(tree)  # after the repack: export_gltf builds its views last
    (out / "mesh.gltf").write_text(json.dumps(tree, separators=(",", ":")))
    (out / GLTF_BUFFER).write_bytes(blob)
    return [out / "mesh.gltf", out / GLTF_BUFFER]


def _write_obj(mesh: TexturedMesh, image: Image.Image, out: Path) -> list[Path]:
    # trimesh encodes the material's image for the MTL's files; export_mesh writes texture.png
    # itself, so the material carries a 1 x 1 stand-in that names it (map_Kd texture.png) and
    # the full texture is not PNG-encoded once more only to be dropped
    stand_in = Image.new("RGB", (1, 1))
    stand_in.format = "PNG"
    simple = SimpleMaterial(
        image=stand_in, name=MATERIAL_NAME, diffuse=[255, 255, 255, 255],
        ambient=[255, 255, 255, 255], specular=[0, 0, 0, 255], glossiness=1.0,
    )
    text, files = export_obj(
        _textured(mesh, simple), include_normals=True, include_texture=True,
        return_texture=True, mtl_name="mesh.mtl",
    )
    (out / "mesh.obj").write_text(text)
    (out / "mesh.mtl").write_bytes(files["mesh.mtl"])
    return [out / "mesh.obj", out / "mesh.mtl"]


def _write_ply(mesh: TexturedMesh, image: Image.Image, out: Path) -> list[Path]:
    """Vertex colours sampled from the texture and no uv: trimesh's PLY reader (like several
    viewers) drops vertex colours in favour of an image-less texture when uv are present."""
    colours = np.rint(sample_texture(mesh.texture[..., :3], mesh.uv)).astype(np.uint8)
    rgba = np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], axis=1)
    coloured = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=rgba, process=False)
    (out / "mesh.ply").write_bytes(cast(bytes, coloured.export(file_type="ply", encoding="binary")))  # binary PLY
    return [out / "mesh.ply"]


def _write_stl(mesh: TexturedMesh, image: Image.Image, out: Path) -> list[Path]:
    """Geometry only (STL has no colour): for printing and CAD tools."""
    plain = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    (out / "mesh.stl").write_bytes(cast(bytes, plain.export(file_type="stl")))  # binary STL
    return [out / "mesh.stl"]


def _write_texture(mesh: TexturedMesh, image: Image.Image, out: Path) -> list[Path]:
    """texture.png beside the OBJ and glTF: the exact texture, not trimesh's re-encoding."""
    image.save(out / TEXTURE_FILE)
    return [out / TEXTURE_FILE]


_WRITERS: dict[str, Callable[[TexturedMesh, Image.Image, Path], list[Path]]] = {
    "glb": _write_glb, "obj": _write_obj, "ply": _write_ply, "stl": _write_stl, "gltf": _write_gltf,
}
assert tuple(_WRITERS) == MESH_FORMATS
# Formats whose files reference texture.png beside them.
_USES_TEXTURE_FILE = ("obj", "gltf")


def mesh_files(formats: Sequence[str] = DEFAULT_FORMATS) -> tuple[str, ...]:
    """The file names export_mesh writes for `formats`, in MESH_FORMATS order."""
    names = {"glb": ("mesh.glb",), "obj": ("mesh.obj", "mesh.mtl"), "ply": ("mesh.ply",),
             "stl": ("mesh.stl",), "gltf": ("mesh.gltf", GLTF_BUFFER)}
    out = [name for fmt in MESH_FORMATS if fmt in formats for name in names[fmt]]
    if any(fmt in formats for fmt in _USES_TEXTURE_FILE):
        out.append(TEXTURE_FILE)
    return tuple(out)


def export_mesh(mesh: TexturedMesh, out_dir: Path, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    """Write the mesh files of `formats` into `out_dir` (names: `mesh_files(formats)`): GLB with
    the texture embedded, OBJ + MTL, PLY with vertex colours, STL, glTF + BIN; OBJ and glTF
    share texture.png. Returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(mesh.texture[..., :3]).astype(np.uint8), "RGB")
    writers = [_WRITERS[fmt] for fmt in MESH_FORMATS if fmt in formats]
    if any(fmt in formats for fmt in _USES_TEXTURE_FILE):
        writers.append(_write_texture)
    # each writer its own files, side by side: PNG encoding (the GLB's texture, texture.png)
    # releases the GIL while the OBJ's text is formatted
    written = map_in_threads(lambda write: write(mesh, image, out), writers)
    return [path for paths in written for path in paths]


MESH_FILES = mesh_files(DEFAULT_FORMATS)  # the spec's default set
