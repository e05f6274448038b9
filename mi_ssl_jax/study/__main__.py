"""`python -m mi_ssl_jax.study` (see `mi_ssl_jax.study`)."""

from absl import app

from mi_ssl_jax.study import cli

if __name__ == "__main__":
  app.run(cli.main, flags_parser=cli.flags_parser)
