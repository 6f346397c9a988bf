"""Orchestration benches: the Prefect flow's overhead against a local Prefect server."""
