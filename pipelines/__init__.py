"""Prefect 3 flows that orchestrate the DVC DAG (no ML logic here)."""
