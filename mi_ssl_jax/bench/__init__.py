"""Benchmarks, each runnable as ``python -m mi_ssl_jax.bench.<name>``.

Every number in docs/benchmarks.md comes from one of these commands.
"""
