"""Deployment definitions, the embedded launcher and the process helpers they share."""
