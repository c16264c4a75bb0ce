"""The `nvdiffrec` engine, by concern: `config` (settings per device, version; no torch),
`problem` (what one refinement holds fixed and what it optimises), `objective` (the losses),
`stages` (joint, silhouette, re-bake, texture), `guard` (held-out pixels that decide which
stages are kept, and the check against fusion's own result) and `engine` (refine, starting meshes, the engine).
The package itself imports only the config, so reading versions needs no torch."""

from recon.engines.nvdiffrec.config import CudaNvdiffrecSettings, NvdiffrecConfig, NvdiffrecSettings

__all__ = ["CudaNvdiffrecSettings", "NvdiffrecConfig", "NvdiffrecSettings"]
