"""The exported glTF material: an open surface is drawn from both sides, a closed one is not."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import trimesh

from recon.export.meshfiles import export_mesh
from recon.mesh import TexturedMesh


def _material(glb: Path) -> dict:
    data = glb.read_bytes()
    length = struct.unpack_from("<I", data, 12)[0]  # the JSON chunk follows the 12-byte header
    return json.loads(data[20:20 + length])["materials"][0]


def _textured(mesh: trimesh.Trimesh) -> TexturedMesh:
    uv = np.asarray(mesh.vertices[:, :2] - mesh.vertices[:, :2].min(0), np.float32)
    uv /= max(float(uv.max()), 1e-6)
    texture = np.full((8, 8, 3), 128, np.uint8)
    return TexturedMesh(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32), uv, texture)


def test_open_surfaces_are_double_sided(tmp_path: Path) -> None:
    box = trimesh.creation.box()
    export_mesh(_textured(box), tmp_path / "closed", ["glb"])
    assert _material(tmp_path / "closed" / "mesh.glb").get("doubleSided", False) is False
    lid_off = trimesh.Trimesh(box.vertices, box.faces[np.asarray(box.face_normals)[:, 2] < 0.5])
    export_mesh(_textured(lid_off), tmp_path / "open", ["glb"])
    assert _material(tmp_path / "open" / "mesh.glb")["doubleSided"] is True
