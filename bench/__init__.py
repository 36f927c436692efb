"""Benchmarks of mmserve: `python bench/run_bench.py` (see README, Benchmark)."""
