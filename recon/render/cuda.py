"""nvdiffrast rendering backend (CUDA), from PyPI's `diffrp-nvdiffrast` (optional extra `gpu`).

nvdiffrast is imported lazily, so importing this module is safe on CPU-only hosts; the backend
is only constructed when CUDA is present (`recon.render.get_backend`).

Two facts about the packaged nvdiffrast that this module handles once, so callers never see them:
- the plugin is compiled with `torch.utils.cpp_extension.load` on first use (about 40 s on the
  GPU host), so the first `NvdiffrastBackend()` is slow and later ones are not;
- on recent torch (2.11 measured) the freshly built extension is not importable by name
  afterwards, and nvdiffrast's own `import <plugin>` fails with an ImportError naming it. We then
  load the built shared library from torch's extension build directory, register it in
  `sys.modules` under that name, and retry.

Status: written against nvdiffrast's documented API; not yet run on GPU hardware by its author.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import sys
import threading
import weakref
from types import ModuleType
from typing import Any

import torch

from recon.render.base import RenderBackend

_LOCK = threading.Lock()
_DR: ModuleType | None = None


def _missing_module_name(exc: ImportError) -> str | None:
    """The module name an ImportError complains about (attribute first, message as fallback)."""
    if getattr(exc, "name", None):
        return exc.name
    match = re.search(r"No module named '([^']+)'", str(exc))
    return match.group(1) if match else None


def _built_extension_paths(name: str) -> list[str]:
    """Shared libraries torch's JIT builder produced for extension `name`, newest first."""
    from torch.utils import cpp_extension

    dirs = []
    try:
        dirs.append(cpp_extension._get_build_directory(name, verbose=False))
    except Exception:  # noqa: BLE001 - private helper; fall back to scanning the root below
        pass
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch_extensions"
    )
    dirs.append(root)
    found: list[str] = []
    for base in dirs:
        for pattern in (f"{name}*.so", f"{name}*.pyd", f"**/{name}*.so", f"**/{name}*.pyd"):
            found.extend(glob.glob(os.path.join(base, pattern), recursive=True))
    return sorted(set(found), key=os.path.getmtime, reverse=True)


def _register_built_extension(name: str) -> None:
    """Import the compiled extension `name` from its .so and put it into sys.modules."""
    paths = _built_extension_paths(name)
    if not paths:
        raise ImportError(f"nvdiffrast plugin '{name}' was not found in torch's extension build dir")
    spec = importlib.util.spec_from_file_location(name, paths[0])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load nvdiffrast plugin from {paths[0]}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module


def load_nvdiffrast() -> ModuleType:
    """`nvdiffrast.torch` with its plugin compiled and importable (the import fix lives here)."""
    global _DR
    with _LOCK:
        if _DR is not None:
            return _DR
        import nvdiffrast.torch as dr
        from nvdiffrast.torch import ops

        registered: set[str] = set()
        while True:
            try:
                ops._get_plugin()  # compiles on first use, then imports the plugin by name
                break
            except ImportError as exc:
                name = _missing_module_name(exc)
                if name is None or name == "nvdiffrast" or name in registered:
                    raise  # nvdiffrast itself is missing, or the fix below did not help
                _register_built_extension(name)
                registered.add(name)
        _DR = dr
        return dr


def _mip_level(uv: torch.Tensor, tex_hw: tuple[int, int]) -> torch.Tensor:
    """Per-pixel mip level from finite differences of `uv` between neighbouring pixels.

    The base interface passes no uv derivatives, so they are estimated here: per axis the
    smaller of the forward and backward difference (a seam or the silhouette is a jump on one side
    only), scaled to texels; the level is log2 of the larger footprint, >= 0. Not differentiated.
    """
    with torch.no_grad():
        scale = uv.new_tensor([tex_hw[1], tex_hw[0]])
        texel = uv * scale

        def axis_footprint(dim: int) -> torch.Tensor:
            d = torch.diff(texel, dim=dim).abs()
            backward = torch.cat([d.narrow(dim, 0, 1), d], dim=dim)
            forward = torch.cat([d, d.narrow(dim, d.shape[dim] - 1, 1)], dim=dim)
            return torch.minimum(backward, forward).norm(dim=-1)

        footprint = torch.maximum(axis_footprint(1), axis_footprint(2))
        return torch.log2(footprint.clamp_min(1.0)).contiguous()


class NvdiffrastBackend(RenderBackend):
    """The four nvdiffrast primitives on one CUDA device (RasterizeCudaContext, no OpenGL)."""

    name = "nvdiffrast"

    def __init__(self, device: str | torch.device = "cuda") -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("NvdiffrastBackend needs CUDA")
        self.device = torch.device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._dr = load_nvdiffrast()
        self._ctx = self._dr.RasterizeCudaContext(device=self.device)
        self._topology_ref: tuple[weakref.ref, Any] | None = None

    def rasterize(
        self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]
    ) -> torch.Tensor:
        if pos.dim() == 2:  # the interface's [B,V,4]; a single view may come without B
            pos = pos[None]
        rast, _ = self._dr.rasterize(
            self._ctx, pos.contiguous(), tri.contiguous(), (int(resolution[0]), int(resolution[1])),
            grad_db=False,
        )
        return rast

    def interpolate(
        self, attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor
    ) -> torch.Tensor:
        """[V,C] attributes are shared by every image of the batch: passed as [1,V,C], which
        nvdiffrast broadcasts in instanced mode (a 2D attr would select its range mode)."""
        if attr.dim() == 2:
            attr = attr[None]
        out, _ = self._dr.interpolate(attr.contiguous(), rast, tri.contiguous())
        return out

    def texture(
        self, tex: torch.Tensor, uv: torch.Tensor, filter_mode: str = "linear",
        boundary_mode: str = "clamp",
    ) -> torch.Tensor:
        """Bilinear, or trilinear over a mip pyramid when `filter_mode` names mipmaps; 'clamp' at
        the borders by default like the CPU backend ('wrap' is nvdiffrast's own default).

        Mip levels come from `_mip_level` because the interface carries no uv derivatives.
        """
        tex, uv = tex.contiguous(), uv.contiguous()
        if "mipmap" in filter_mode:
            level = _mip_level(uv, (tex.shape[-3], tex.shape[-2]))
            return self._dr.texture(
                tex, uv, mip_level_bias=level, filter_mode=filter_mode, boundary_mode=boundary_mode
            )
        return self._dr.texture(tex, uv, filter_mode=filter_mode, boundary_mode=boundary_mode)

    def antialias(
        self, color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor
    ) -> torch.Tensor:
        """Analytic silhouette antialiasing; its gradient moves silhouette vertices.

        The topology hash depends only on `tri`, so it is kept while the same tensor is passed.
        """
        ref = self._topology_ref
        if ref is None or ref[0]() is not tri:
            ref = (weakref.ref(tri), self._dr.antialias_construct_topology_hash(tri.contiguous()))
            self._topology_ref = ref
        topo = ref[1]
        return self._dr.antialias(
            color.contiguous(), rast, pos.contiguous(), tri.contiguous(), topology_hash=topo
        )
