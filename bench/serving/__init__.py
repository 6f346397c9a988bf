"""Serving benches: load tests of the Bento services against a naive FastAPI baseline, batching A/B."""
