"""Shared helpers of the loss functions (private to ``mi_ssl_jax.losses``).

Every helper works on the GLOBAL batch: reductions over examples are written as
plain einsums/means, so ``jax.jit`` with a batch-sharded input inserts the
collectives (docs/methods.md §10.1, docs/design.md §8.5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def as_compute(x: jax.Array) -> jax.Array:
  """Casts to at least float32 (float64 stays): matrix math is never bf16."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=HIGHEST)


def safe_norm(x: jax.Array, eps: float = 1e-12, axis: int = -1,
              keepdims: bool = True) -> jax.Array:
  """max(‖x‖₂, eps) with a finite gradient at x = 0."""
  sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
  return jnp.sqrt(jnp.maximum(sq, eps * eps))


def log_series_coeffs(order: int) -> list[float]:
  """Coefficients (−1)^{k+1}/k, k = 1..order, of log(1 + x)."""
  if order < 1:
    raise ValueError(f"Taylor order must be >= 1, got {order}")
  return [(-1.0) ** (k + 1) / k for k in range(1, order + 1)]


def trace_series(x: jax.Array, coeffs: Sequence[float],
                 weight: jax.Array | None = None) -> jax.Array:
  """Σ_k coeffs[k−1] · tr(W X^k), k = 1..n, without forming X^n.

  Written by hand because no library offers it: with h = ⌈n/2⌉ only the powers
  X..X^h are formed (h − 1 matmuls, plus one for W X^h when a weight W is
  given); each higher trace is an elementwise product,
  tr(A B) = Σ_ij A_ij B_ji. For the order-4 series that is 1 matmul instead of
  3 (docs/methods.md §10.4). Valid for non-symmetric X. Mathematically
  identical to ``tr(W · Σ_k c_k X^k)``, which tests check.

  Args:
    x: [n, n] matrix.
    coeffs: series coefficients c_1..c_n.
    weight: optional [n, n] matrix W (identity when None).

  Returns:
    Scalar.
  """
  n = len(coeffs)
  h = max(1, math.ceil(n / 2))
  powers = [x]
  for _ in range(1, h):
    powers.append(matmul(powers[-1], x))

  def tr_w(k_power):  # tr(W X^k)
    if weight is None:
      return jnp.trace(k_power)
    return jnp.sum(weight * k_power.T)

  high = powers[-1] if weight is None else matmul(weight, powers[-1])
  total = jnp.zeros((), x.dtype)
  for k, c in enumerate(coeffs, start=1):
    if k <= h:
      total = total + c * tr_w(powers[k - 1])
    else:  # tr(W X^h X^a), a = k − h <= h
      total = total + c * jnp.sum(high * powers[k - h - 1].T)
  return total


def gradient_scale(value: jax.Array, scale: float) -> jax.Array:
  """Returns `value` unchanged in the forward pass, its gradient × `scale`."""
  if scale == 1.0:
    return value
  scaled = value * scale
  return scaled + jax.lax.stop_gradient(value - scaled)


