"""Tracking benches: screenshots of the MLflow UI (a shell script)."""
