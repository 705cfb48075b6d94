"""Benchmarks: scripts that measure the zoo and write JSON results under ``benchmarks/results/``."""
