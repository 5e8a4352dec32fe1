"""Benchmarks of pvgate, each runnable as ``python -m benchmarks.<name>``."""
