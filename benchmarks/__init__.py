"""Benchmarks against the real test stack (``python -m benchmarks.<name>``)."""
