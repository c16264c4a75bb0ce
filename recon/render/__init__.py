"""Rendering through one interface with two backends (DESIGN.md §6).

`get_backend("auto")` picks nvdiffrast when CUDA is present, else the CPU (Embree) backend.
High-level helpers (render a TexturedMesh into cameras: colour, mask, depth, normals, face ids)
live in `recon.render.views` and are written once against `RenderBackend`.
"""
