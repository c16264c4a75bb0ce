"""Prefect flows: reconstruct (one job), cleanup (retention, hourly), reprocess (engine upgrades, nightly)."""
