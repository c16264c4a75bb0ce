"""The science of the service: six calibrated views + depths -> textured mesh.

Importable without Prefect or FastAPI; nothing here imports `jobs`, `tasks`, `flows` or `api`.
"""

__version__ = "0.1.0"
