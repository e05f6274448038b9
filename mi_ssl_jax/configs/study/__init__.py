"""Study recipes (`python -m mi_ssl_jax.study --config=study/fmnist`)."""
