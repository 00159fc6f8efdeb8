"""Benchmark scripts: run each from the repo root as `python -m bench.NAME` (see bench/README.md)."""
