"""Prefect flows: thin wrappers around the pipeline stage functions."""
