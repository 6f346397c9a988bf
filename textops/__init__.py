"""Library code shared by the pipeline stages, flows and service (no side effects at import)."""
