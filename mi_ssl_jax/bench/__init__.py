"""Benchmark commands (`python -m mi_ssl_jax.bench.<name>`)."""
