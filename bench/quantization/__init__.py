"""Quantization benches: INT8 schemes, per-layer INT8 sensitivity, Hub-shaped random models."""
