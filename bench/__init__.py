"""Benchmarks for sorahook: throughput and latency measurements run by `make bench`."""
