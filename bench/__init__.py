"""Benchmarks: `make bench` runs them all; `make bench BENCH=engine` runs one."""
