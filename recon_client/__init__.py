"""Client of the 3D reconstruction API: `ReconClient` (Python) and the `recon` command (cli.py).

Separate from `recon/`, the reconstruction library: a client needs only httpx, not torch."""

from recon_client.client import ApiError, ReconClient

__all__ = ["ApiError", "ReconClient"]
