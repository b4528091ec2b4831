"""Benchmarks: `python -m benchmarks.<name>`; each writes benchmarks/results/<name>.json."""
