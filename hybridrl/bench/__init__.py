"""Benchmark suites, the grid runner and the report."""
