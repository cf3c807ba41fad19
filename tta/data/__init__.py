"""Datasets and corruption benchmarks."""
