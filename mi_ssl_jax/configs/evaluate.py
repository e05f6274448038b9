r"""kNN and linear probe of a pretrained checkpoint on one feature extraction.

  python -m mi_ssl_jax.main --config=configs/evaluate.py \
      --config.init_from=/tmp/mmae --workdir=/tmp/mmae_eval

  # the same protocols on baseline features:
  python -m mi_ssl_jax.main --config=configs/evaluate.py \
      --config.baseline=raw_pixels --workdir=/tmp/pixels_eval

Runs `config.protocols` (default both "knn" and "linear") exactly as
configs/knn.py and configs/linear_probe.py do (same fields, same result
files), extracting the features of each split once.
"""


from mi_ssl_jax.config_lib import parse_arg
from mi_ssl_jax.configs import knn, linear_probe


def get_config(arg=None):
  arg = parse_arg(arg, protocol="simclr_linear", runlocal=False)
  c = linear_probe.get_config(
      f"protocol={arg.protocol},runlocal={arg.runlocal}")
  k = knn.get_config(f"runlocal={arg.runlocal}")
  with c.unlocked():
    c.job = "evaluate"
    c.protocols = ("knn", "linear")
    c.ks = k.ks
    c.temperature = k.temperature
    c.query_chunk = k.query_chunk
    c.lidar = k.lidar
  return c
