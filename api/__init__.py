"""The REST facade of the API contract (docs/api.md): FastAPI routes over Prefect flow runs and the object store.
Never imports recon/ or torch, so it starts fast and stays small (tests check this)."""
