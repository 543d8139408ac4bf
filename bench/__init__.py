"""Benchmarks: speed is measured here, never in tests (see bench/README.md)."""
