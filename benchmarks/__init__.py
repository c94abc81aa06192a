"""Benchmarks: measurements of speed and of learning, never run as tests."""
