"""Differentiable losses and mesh regularisers for optimisation-based engines (nvdiffrec).

Kept apart from the engine so that other refiners can reuse them; everything is plain torch and
runs on CPU and CUDA alike.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Per-pixel SSIM of images [B, H, W, C] in [0, 1], mean over channels -> [B, H, W].

    Uniform window (like skimage's default, which recon.quality.metrics reports) computed with two 1D
    avg_pool2d passes over the five moment images: much cheaper on CPU than Gaussian convolutions.
    """
    c = x.shape[-1]
    xs, ys = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)
    moments = torch.cat([xs, ys, xs * xs, ys * ys, xs * ys], dim=1)
    for kernel in ((window, 1), (1, window)):  # separable box filter
        pad = (kernel[0] // 2, kernel[1] // 2)
        moments = F.avg_pool2d(moments, kernel, stride=1, padding=pad, count_include_pad=False)
    mu_x, mu_y, xx, yy, xy = moments.split(c, dim=1)
    sxx, syy, sxy = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean(dim=1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `mask` (broadcast over trailing channels); 0 when the mask is empty."""
    while mask.dim() < values.dim():
        mask = mask[..., None]
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error for signals in [0, 1]."""
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


class MeshRegulariser:
    """Laplacian, normal-consistency and edge-length terms for one fixed triangle topology.

    Built once from the (welded) faces: the uniform Laplacian as a sparse matrix, the unique
    edges and the pairs of faces sharing an edge. The Laplacian acts on vertex *offsets*, so it
    smooths the correction, not the shape the optimisation started from.
    """

    def __init__(self, faces: np.ndarray, num_vertices: int, rest_vertices: torch.Tensor) -> None:
        import trimesh

        device = rest_vertices.device
        mesh = trimesh.Trimesh(
            rest_vertices.detach().cpu().numpy(), np.asarray(faces), process=False, validate=False
        )
        edges = np.array(mesh.edges_unique, dtype=np.int64)
        self.edges = torch.as_tensor(edges, device=device)
        self.faces = torch.as_tensor(np.asarray(faces, dtype=np.int64), device=device)
        self.face_pairs = torch.as_tensor(np.array(mesh.face_adjacency, dtype=np.int64), device=device)
        self.pair_edges = torch.as_tensor(
            np.array(mesh.face_adjacency_edges, dtype=np.int64), device=device
        )
        rows = np.concatenate([edges[:, 0], edges[:, 1]])
        cols = np.concatenate([edges[:, 1], edges[:, 0]])
        degree = np.bincount(rows, minlength=num_vertices).astype(np.float32)
        weights = -1.0 / np.maximum(degree[rows], 1.0)
        idx = np.concatenate([np.stack([rows, cols]), np.stack([np.arange(num_vertices)] * 2)], axis=1)
        val = np.concatenate([weights, np.ones(num_vertices, np.float32)])
        self.laplacian = torch.sparse_coo_tensor(
            torch.as_tensor(idx, device=device), torch.as_tensor(val, device=device),
            (num_vertices, num_vertices), check_invariants=False,
        ).coalesce()
        self.rest_lengths = self.edge_lengths(rest_vertices).detach()
        # Relative to each rest length, floored at a tenth of the mean: a near-degenerate edge
        # (contour snapping can leave some) made one Adam step raise this term 10^4-fold.
        self.length_scale = self.rest_lengths.clamp_min(0.1 * float(self.rest_lengths.mean()) + 1e-12)

    def edge_lengths(self, vertices: torch.Tensor) -> torch.Tensor:
        return (vertices[self.edges[:, 0]] - vertices[self.edges[:, 1]]).norm(dim=1)

    def face_normals(self, vertices: torch.Tensor) -> torch.Tensor:
        v = vertices[self.faces]
        return F.normalize(torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=1), dim=1)

    def laplacian_loss(self, offsets: torch.Tensor) -> torch.Tensor:
        """Mean squared uniform Laplacian of the offsets (in squared world units)."""
        return torch.sparse.mm(self.laplacian, offsets).pow(2).sum(dim=1).mean()

    def normal_consistency_loss(self, vertices: torch.Tensor) -> torch.Tensor:
        """Mean of 1 - cos(angle) between the normals of faces that share an edge."""
        n = self.face_normals(vertices)
        return (1.0 - (n[self.face_pairs[:, 0]] * n[self.face_pairs[:, 1]]).sum(dim=1)).mean()

    def edge_length_loss(self, vertices: torch.Tensor) -> torch.Tensor:
        """Mean squared relative change of edge lengths: keeps triangles from collapsing or
        stretching while vertices move (edge-length control instead of remeshing)."""
        return ((self.edge_lengths(vertices) - self.rest_lengths) / self.length_scale).pow(2).mean()

    def contour_vertices(self, vertices: torch.Tensor, eyes: torch.Tensor) -> torch.Tensor:
        """Bool [E,V]: per eye position (rows of `eyes` [E,3]), the vertices on an edge between a
        face turned towards it and one turned away (the mesh's silhouette seen from there)."""
        with torch.no_grad():
            n = self.face_normals(vertices)
            centre = vertices[self.faces].mean(dim=1)
            facing = (eyes[:, None, :] - centre[None]) * n[None]  # [E,F,3]
            front = facing.sum(dim=2) > 0
            on = front[:, self.face_pairs[:, 0]] != front[:, self.face_pairs[:, 1]]  # [E,P]
            mark = torch.zeros(eyes.shape[0], vertices.shape[0], device=vertices.device)
            for k in (0, 1):
                idx = self.pair_edges[:, k][None].expand_as(on)
                mark.scatter_reduce_(1, idx, on.to(mark.dtype), reduce="amax")
            return mark > 0

    def vertex_normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """Area-weighted unit vertex normals [V,3]."""
        v = vertices[self.faces]
        cross = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=1)
        acc = torch.zeros_like(vertices).index_add_(0, self.faces.reshape(-1), cross.repeat_interleave(3, dim=0))
        return torch.nn.functional.normalize(acc, dim=1)

    def contour_edges(self, vertices: torch.Tensor, eye: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Seen from `eye` [3]: the edges [K,2] between a face turned towards it and one turned
        away (the mesh's contour), and per edge the third vertex of its front face [K], which
        tells on which side of the projected edge the visible surface lies."""
        with torch.no_grad():
            n = self.face_normals(vertices)
            centre = vertices[self.faces].mean(dim=1)
            front = ((eye[None] - centre) * n).sum(dim=1) > 0
            first, second = front[self.face_pairs[:, 0]], front[self.face_pairs[:, 1]]
            on = first != second
            face = torch.where(first, self.face_pairs[:, 0], self.face_pairs[:, 1])[on]
            edges = self.pair_edges[on]
            return edges, self.faces[face].sum(dim=1) - edges.sum(dim=1)
