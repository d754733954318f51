"""Helpers shared by the tests and the benchmarks (importable without pytest)."""
