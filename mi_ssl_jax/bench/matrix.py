"""Times the matrix-information core and its error against float64.

    python -m mi_ssl_jax.bench.matrix                      # CPU: ~5 min
    python -m mi_ssl_jax.bench.matrix --sizes 64,256 --orders 8,16

For each size n it builds a trace-1 covariance ρ = ẐᵀẐ/B (n×n, B = 2n) from
features with a power-law spectrum (like trained SSL embeddings), then times,
on the default backend in float32, forward and forward+backward (value and
gradient w.r.t. the matrix) of:

* ``eigh``:          von Neumann entropy S(ρ) by :func:`matrix_entropy` (exact);
* ``chebyshev-m``:   S(ρ) by the eigh-free degree-m Chebyshev method;
* ``cholesky``, ``lu``: log det(I + n·ρ) by :func:`logdet_psd` (TCR/M-MAE
  form) with ``method="cholesky"`` / ``"lu"`` (``"auto"`` picks LU on CPU);
* ``taylor-m``:      tr log_T(I + ρ) by the official order-m series (the
  Matrix-SSL regime C + μI, μ = 1; the reference is the exact tr log(I + ρ),
  so the error column is the truncation error);
* ``mce-eigh``:      matrix cross-entropy tr(−ρ log Q + Q), Q = ρ + I/n, with
  the exact eigh log (Daleckii–Krein gradient).

The error column is |value − reference| / |reference| with the reference
computed in float64 by NumPy from the same float64 matrix. Times are the
minimum over --reps calls of the ahead-of-time compiled function (compile
excluded) after one warm-up call; for n > 512 a single call, no warm-up.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from mi_ssl_jax import matrix, platforms

DEFAULT_SIZES = (64, 128, 256, 512, 1024, 2048)
DEFAULT_ORDERS = (8, 16, 32)


def make_density(n: int, seed: int = 0, decay: float = 1.0) -> np.ndarray:
  """Trace-1 covariance of 2n row-normalised features, σ_k² ∝ k^(−decay)."""
  rng = np.random.default_rng(seed)
  b = 2 * n
  q = np.linalg.qr(rng.normal(size=(n, n)))[0]
  z = rng.normal(size=(b, n)) * np.arange(1, n + 1) ** (-decay / 2) @ q.T
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  return z.T @ z / b  # [n, n], float64


def _ref_log(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(a)
  return (v * np.log(w)) @ v.T


def references(rho: np.ndarray) -> dict[str, float]:
  n = rho.shape[0]
  w = np.clip(np.linalg.eigvalsh(rho), 0, None)
  w = w[w > 1e-300]
  eye = np.eye(n)
  q = rho + eye / n
  return {
      "entropy": float(-np.sum(w * np.log(w))),
      "logdet": float(np.linalg.slogdet(eye + n * rho)[1]),
      "taylor": float(np.sum(np.log1p(np.linalg.eigvalsh(rho)))),
      "mce": float(np.trace(-rho @ _ref_log(q) + q)),
  }


def methods(n: int, orders) -> dict[str, tuple[str, callable]]:
  eye = jnp.eye(n, dtype=jnp.float32)
  out = {
      "eigh": ("entropy", lambda a: matrix.matrix_entropy(a)),
  }
  for m in orders:
    out[f"chebyshev-{m}"] = (
        "entropy",
        lambda a, m=m: matrix.matrix_entropy(a, method="chebyshev", order=m))
  for how in ("cholesky", "lu"):
    out[how] = ("logdet", lambda a, how=how: matrix.logdet_psd(eye + n * a,
                                                               method=how))
  for m in (4, 8):
    out[f"taylor-{m}"] = (
        "taylor",
        lambda a, m=m: jnp.trace(matrix.taylor_log(eye + a, m)))
  out["mce-eigh"] = (
      "mce", lambda a: matrix.matrix_cross_entropy(a, a + eye / n))
  return out


def _time(fn, x, reps: int, warmup: bool):
  """(min wall time of `reps` calls of the AOT-compiled `fn`, its output)."""
  compiled = jax.jit(fn).lower(x).compile()  # compile time excluded
  if warmup:
    jax.block_until_ready(compiled(x))
  best, out = float("inf"), None
  for _ in range(reps):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(x))
    best = min(best, time.perf_counter() - t0)
  return best, out


def describe_machine() -> str:
  cpu = platforms.cpu_model()
  dev = jax.devices()[0]
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  return (f"backend {jax.default_backend()} ({dev.device_kind}), "
          f"{os.cpu_count()} CPU cores, {cpu}; jax {jax.__version__}; "
          f"load average at start {load}")


def run(sizes, orders, reps: int, only=None) -> list[dict]:
  rows = []
  for n in sizes:
    rho64 = make_density(n)
    refs = references(rho64)
    rho = jnp.asarray(rho64, jnp.float32)
    for name, (quantity, f) in methods(n, orders).items():
      if only and not any(name.startswith(o) for o in only):
        continue
      # Large sizes: one timed call, no warm-up (keeps the default run short).
      r = reps if n <= 256 else (max(1, reps // 2) if n <= 512 else 1)
      t_fwd, value = _time(f, rho, r, warmup=n <= 512)
      t_both, _ = _time(jax.value_and_grad(f), rho, r, warmup=n <= 512)
      value = float(value)
      err = abs(value - refs[quantity]) / abs(refs[quantity])
      row = dict(n=n, method=name, quantity=quantity, fwd_ms=1e3 * t_fwd,
                 fwd_bwd_ms=1e3 * t_both, rel_err=err, value=value,
                 ref=refs[quantity])
      rows.append(row)
      print(f"| {n} | {name} | {quantity} | {row['fwd_ms']:.2f} | "
            f"{row['fwd_bwd_ms']:.2f} | {err:.1e} |", flush=True)
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                      help="comma-separated matrix sizes")
  parser.add_argument("--orders", default=",".join(map(str, DEFAULT_ORDERS)),
                      help="comma-separated Chebyshev degrees")
  parser.add_argument("--reps", type=int, default=5,
                      help="timed repetitions (half for n = 512, 1 above)")
  parser.add_argument("--methods", default="",
                      help="comma-separated method-name prefixes to run")
  args = parser.parse_args(argv)
  try:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    orders = [int(s) for s in args.orders.split(",") if s]
  except ValueError:
    parser.error("--sizes and --orders take comma-separated integers, "
                 "e.g. --sizes 64,256")
  only = [m for m in args.methods.split(",") if m]
  print(f"# Matrix core benchmark: {describe_machine()}")
  print("# float32 on the default backend; error vs float64 NumPy reference")
  print("| n | method | quantity | forward ms | fwd+bwd ms | rel. error |")
  print("|---:|---|---|---:|---:|---:|")
  t0 = time.perf_counter()
  run(sizes, orders, args.reps, only)
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print(f"# total {time.perf_counter() - t0:.0f} s; load average at end {load}")


if __name__ == "__main__":
  main()
