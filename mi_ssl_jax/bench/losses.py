r"""Times forward + backward of every SSL loss in ``mi_ssl_jax.losses``.

For each global batch B and feature dimension d, each loss is jitted as
``jax.value_and_grad`` with respect to its (student) inputs, compiled once,
and timed over ``--repeats`` calls on random float32 features; the table
reports the median in milliseconds (compile time excluded). View diagnostics
have no gradient and are timed forward only.

Usage (the docs/benchmarks.md table):
  python -m mi_ssl_jax.bench.losses
Subsets:
  python -m mi_ssl_jax.bench.losses --batch_sizes=256 --dims=256,768 \
      --losses=matrix_ssl,mmae --repeats=5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import jax
import numpy as np

from mi_ssl_jax import losses


def _two(fn: Callable) -> tuple[Callable, int, tuple[int, ...]]:
  return fn, 2, (0, 1)


def _four(fn: Callable) -> tuple[Callable, int, tuple[int, ...]]:
  return fn, 4, (1, 3)  # gradients into the students only


# name -> (fn(*features) -> scalar, number of [B, d] inputs, grad argnums)
LOSSES: dict[str, tuple[Callable, int, tuple[int, ...]]] = {
    "mmae": (losses.mmae_regularizer, 1, (0,)),
    "umae": (losses.umae_uniformity, 1, (0,)),
    "matrix_ssl": _four(losses.matrix_ssl_loss),
    "matrix_ssl_eigh": _four(
        lambda *x: losses.matrix_ssl_loss(*x, log_method="eigh")),
    "mec": _four(lambda *x: losses.mec_loss(*x, lamb=1 / 32)),
    "emi": _two(lambda a, b: losses.emi_loss(a, b).loss),
    "emi_taylor": _two(lambda a, b: losses.emi_loss(
        a, b, method="taylor").loss),
    "barlow_twins": _two(losses.barlow_twins_loss),
    "vicreg": _two(losses.vicreg_loss),
    "spectral_contrastive": _two(losses.spectral_contrastive_loss),
    "info_nce": _two(losses.info_nce_loss),
    "negative_cosine": _two(losses.negative_cosine_loss),
    "view_diagnostics": (lambda a, b: losses.view_diagnostics(
        a, b)["matrix_mutual_information"], 2, ()),
}


# Exact eigh on CPU costs seconds per call beyond this size.
EIGH_LOSSES = ("matrix_ssl_eigh",)


def time_loss(name: str, batch: int, dim: int, repeats: int) -> float:
  """Median milliseconds of one jitted forward(+backward) call."""
  fn, n_inputs, argnums = LOSSES[name]
  step = jax.jit(jax.value_and_grad(fn, argnums=argnums) if argnums else fn)
  rng = np.random.RandomState(0)
  xs = [jax.device_put(rng.randn(batch, dim).astype(np.float32))
        for _ in range(n_inputs)]
  jax.block_until_ready(step(*xs))  # compile + warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(*xs))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def machine_description() -> str:
  model = platform.processor() or "unknown CPU"
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True,
                         check=False).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        model = line.split(":", 1)[1].strip()
  except OSError:
    pass
  dev = jax.devices()[0]
  return (f"{model}, {len(__import__('os').sched_getaffinity(0))} cores "
          f"available, jax {jax.__version__} on {dev.platform} "
          f"({jax.device_count()} device)")


def _int_list(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_sizes", type=_int_list, default=[256, 1024])
  parser.add_argument("--dims", type=_int_list, default=[256, 768, 2048])
  parser.add_argument("--losses", type=lambda s: s.split(","),
                      default=list(LOSSES),
                      help=f"comma-separated subset of {','.join(LOSSES)}")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--max_eigh_dim", type=int, default=768,
                      help="skip eigh-based losses for larger d")
  args = parser.parse_args(argv)
  unknown = [n for n in args.losses if n not in LOSSES]
  if unknown:
    parser.error(f"unknown losses {unknown}; choose from {list(LOSSES)}")

  shapes = [(b, d) for b in args.batch_sizes for d in args.dims]
  print(f"Machine: {machine_description()}")
  print(f"Median of {args.repeats} jitted value_and_grad calls, ms "
        "(view_diagnostics: forward only; eigh losses skipped for d > "
        f"{args.max_eigh_dim})\n")
  header = "| loss | " + " | ".join(f"B={b}, d={d}" for b, d in shapes) + " |"
  print(header)
  print("|" + "---|" * (len(shapes) + 1))
  for name in args.losses:
    cells = ["skipped" if name in EIGH_LOSSES and d > args.max_eigh_dim
             else f"{time_loss(name, b, d, args.repeats):.1f}"
             for b, d in shapes]
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  main()
