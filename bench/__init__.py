"""Benchmarks (figures only, never in CI): `make bench`, `make bench-cluster`, `make bench-scale`.

A package so that the scripts, run as `bench/<name>.py`, share bench/common.py."""
