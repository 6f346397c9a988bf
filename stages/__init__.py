"""DVC stages: each module runs as `python -m stages.<name>` (see dvc.yaml)."""
