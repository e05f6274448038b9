"""`python -m mi_ssl_jax.study.gpu` (see `mi_ssl_jax.study.gpu.cli`)."""

from mi_ssl_jax.study.gpu.cli import main

if __name__ == "__main__":
  main()
