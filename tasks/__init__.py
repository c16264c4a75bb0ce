"""Prefect tasks, one per pipeline stage (validate, load_weights, inference, export, metrics), and the
progress, cancellation, failure and result-publishing helpers they share."""
