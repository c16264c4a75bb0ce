"""Open and thin test meshes: normalised, really open, and rendered with their insides visible."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from recon.calibration.rig import rig_cameras
from recon.render import get_backend
from recon.render.views import render_mesh
from recon.synth.cases import load_test_mesh, render_case
from recon.synth.open_surfaces import INSIDE_VIEW, OPEN_CASES, load_open_mesh


@pytest.mark.parametrize("name", OPEN_CASES)
def test_open_meshes_are_normalised_open_and_in_one_piece(name):
    mesh = load_open_mesh(name)
    assert np.allclose(mesh.bounds.sum(axis=0), 0, atol=1e-6)  # centred
    assert np.isclose(np.ptp(mesh.bounds, axis=0).max(), 1.0)
    assert not mesh.is_watertight
    edges, counts = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    assert (counts == 1).sum() >= 20  # a real rim, not a stray crack
    assert (counts <= 2).all()  # manifold: no fins or doubled walls
    assert len(mesh.split(only_watertight=False)) == 1


@pytest.mark.parametrize("name", OPEN_CASES)
def test_the_inside_view_sees_the_inner_side(name):
    """Through the opening (or at the sheet's other side) the view sees faces whose winding
    points away from it: the renderer does not cull them, and the mesh really is open there."""
    mesh = load_open_mesh(name)
    cams = {c.slot: c for c in rig_cameras(40.0, 96, 96, distance=3.0)}
    cam = cams[INSIDE_VIEW[name]]
    view = render_mesh(get_backend("cpu"), cam, mesh.vertices, mesh.faces)
    towards_camera = cam.position[None, None] - 0.0  # the object sits at the origin
    facing = (view.normal * towards_camera).sum(-1)
    back = (facing < 0) & view.mask
    assert back.sum() > 0.1 * view.mask.sum()


def test_cut_opening_shows_depth_behind_the_closed_surface():
    """The penguin's bottom view looks into its hollow: farther than the closed penguin's base."""
    cams = {c.slot: c for c in rig_cameras(40.0, 96, 96, distance=3.0)}
    backend = get_backend("cpu")
    closed = render_mesh(backend, cams["bottom"], *_vf(load_test_mesh("penguin"))).depth
    opened = render_mesh(backend, cams["bottom"], *_vf(load_open_mesh("penguin-open"))).depth
    both = (closed > 0) & (opened > 0)
    assert np.median(opened[both] - closed[both]) > 0.2


def _vf(mesh):
    return mesh.vertices, mesh.faces


def test_render_case_writes_inside_colours(tmp_path):
    """render_case's albedo covers exactly what its depth covers, inside faces included."""
    render_case(load_open_mesh("bowl-thin"), tmp_path, fov_deg=40.0, view_res=64, depth_res=64,
                novel_views=1, supersample=1)
    colour = np.asarray(Image.open(tmp_path / "views" / "top.png").convert("RGB"))
    depth = np.asarray(Image.open(tmp_path / "depths" / "top.png"))
    covered = (colour < 250).any(-1)
    assert (covered == (depth > 0)).mean() > 0.98
    assert (depth > 0).mean() > 0.2


def test_unknown_open_mesh_is_rejected():
    with pytest.raises(ValueError):
        load_open_mesh("teapot")
