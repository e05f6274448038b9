"""MEC: maximum entropy coding (Liu et al., NeurIPS 2022) and its λ warm-up.

Follows ``xinliu20/MEC/main_pretrain.py`` at 35045dc (functions ``mec`` and
``lamda_scheduler``; identical in Matrix-SSL, where it is logged only;
docs/methods.md §5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mi_ssl_jax import matrix
from mi_ssl_jax.losses._common import (
    log_series_coeffs,
    matmul,
    trace_series,
)


def _scaled_cross_gram(t: jax.Array, s: jax.Array, lamb) -> jax.Array:
  """λ·T̂Ŝᵀ (B×B) or λ·ŜᵀT̂ (d×d): same tr of every power; smaller side."""
  th = matrix.normalize_rows(t)
  sh = matrix.normalize_rows(s)
  b, d = th.shape
  g = matmul(th, sh.T) if b <= d else matmul(sh.T, th)
  return lamb * g


def mec_terms(teacher_1: jax.Array, student_1: jax.Array,
              teacher_2: jax.Array, student_2: jax.Array, *, lamb,
              order: int = 4,
              log_method: str = "taylor") -> dict[str, jax.Array]:
  """MEC loss and diagnostics; see :func:`mec_loss`.

  Returns:
    Dict with ``loss``, ``log_det`` (½[T(T1,S2) + T(T2,S1)], the series
    estimate of log det(I + λP̂Ẑᵀ)) and ``taylor_radius`` (spectral-radius
    estimate of λ·T̂Ŝᵀ, no gradient: the series converges iff it is < 1).
  """
  if log_method not in ("taylor", "slogdet"):
    raise ValueError(
        f"log_method must be 'taylor' or 'slogdet', got {log_method!r}")
  for name, x in (("teacher_1", teacher_1), ("student_1", student_1),
                  ("teacher_2", teacher_2), ("student_2", student_2)):
    if x.ndim != 2 or x.shape != teacher_1.shape:
      raise ValueError(f"mec_loss expects four [B, d] arrays of one shape; "
                       f"{name} has {x.shape}, teacher_1 {teacher_1.shape}")
  b = teacher_1.shape[0]
  lamb = jnp.asarray(lamb, jnp.promote_types(teacher_1.dtype, jnp.float32))
  coeffs = log_series_coeffs(order)
  t1 = jax.lax.stop_gradient(teacher_1)
  t2 = jax.lax.stop_gradient(teacher_2)
  g12 = _scaled_cross_gram(t1, student_2, lamb)
  g21 = _scaled_cross_gram(t2, student_1, lamb)

  def series(g):  # T(P, Z; λ) = tr log(I + λ P̂Ẑᵀ)
    if log_method == "taylor":
      return trace_series(g, coeffs)
    return jnp.linalg.slogdet(jnp.eye(g.shape[0], dtype=g.dtype) + g)[1]

  total = series(g12) + series(g21)
  radius = jnp.maximum(matrix.spectral_radius(g12), matrix.spectral_radius(g21))
  return {"loss": -0.5 * total / (lamb * b),
          "log_det": 0.5 * total,
          "taylor_radius": jax.lax.stop_gradient(radius)}


def mec_loss(teacher_1: jax.Array, student_1: jax.Array,
             teacher_2: jax.Array, student_2: jax.Array, *, lamb,
             order: int = 4, log_method: str = "taylor") -> jax.Array:
  """MEC loss of the official code.

  With P̂ = row-normalised teacher (EMA, stop-gradient) and Ẑ = row-normalised
  student (predictor) features, global batch B (docs/methods.md §5):
    T(P, Z; λ) = tr Σ_{k=1}^{n} (−1)^{k+1} (λ P̂Ẑᵀ)^k / k   ≈ log det(I + λP̂Ẑᵀ)
    L = −(1/(λ B)) · ½ · [T(T1, S2; λ) + T(T2, S1; λ)].
  The 1/(λB) rescaling (instead of the paper's μ) makes the first-order term
  the negative mean cosine. The paper's loss is −μ log det(I_B + λ Z1ᵀZ2) with
  μ = (B + d)/2; ``log_method="slogdet"`` evaluates the exact log det (LU,
  since P̂Ẑᵀ is not symmetric) instead of the series. The traces are taken
  on the smaller of the B×B and d×d sides (tr((P̂Ẑᵀ)^k) = tr((ẐᵀP̂)^k)).

  ``lamb`` may be a traced value (it changes every step during warm-up, see
  :func:`mec_lambda_schedule`) without retracing.

  Args:
    teacher_1: [B, d] teacher features of view 1 (no gradient flows in).
    student_1: [B, d] student features of view 1.
    teacher_2: [B, d] teacher features of view 2 (no gradient flows in).
    student_2: [B, d] student features of view 2.
    lamb: λ = d / (B ε²) after warm-up (1/32 for B = 1024, d = 2048, ε² = 64).
    order: Taylor order n (official: 4).
    log_method: ``"taylor"`` (official) or ``"slogdet"`` (exact).

  Returns:
    Scalar loss.
  """
  return mec_terms(teacher_1, student_1, teacher_2, student_2, lamb=lamb,
                   order=order, log_method=log_method)["loss"]


def mec_lambda(batch_size: int, dim: int, eps_sq: float = 64.0) -> float:
  """λ = d / (B·ε²) of MEC (``--eps 64`` is ε²): 1/32 for B=1024, d=2048."""
  return dim / (batch_size * eps_sq)


def mec_lambda_schedule(step, *, batch_size: int, dim: int,
                        warmup_steps: int, eps_sq: float = 64.0,
                        warmup_factor: float = 8.0) -> jax.Array:
  """λ at `step` with the official MEC warm-up of 1/λ.

  ``lamda_scheduler`` of the official code: 1/λ goes linearly (per iteration,
  ``np.linspace`` with both endpoints) from ``warmup_factor``/λ₀ = 8/λ₀ to
  1/λ₀ over ``warmup_steps`` (10 epochs of iterations), then stays at 1/λ₀,
  with λ₀ = :func:`mec_lambda`. Written in jnp (not optax) because
  ``losses/`` imports only jax; works with a traced `step`.

  Args:
    step: current iteration (int or scalar array), from 0.
    batch_size: global batch B.
    dim: feature dimension d.
    warmup_steps: number of warm-up iterations (10 · steps_per_epoch).
    eps_sq: ε² (``--eps``).
    warmup_factor: initial multiple of 1/λ₀ (official: 8).

  Returns:
    Scalar float32 λ, to pass as ``mec_loss(..., lamb=...)``.
  """
  lamb0 = mec_lambda(batch_size, dim, eps_sq)
  start, end = warmup_factor / lamb0, 1.0 / lamb0
  step = jnp.asarray(step, jnp.float32)
  if warmup_steps <= 1:
    inv = jnp.where(step < warmup_steps, start, end)
  else:
    frac = jnp.clip(step / (warmup_steps - 1), 0.0, 1.0)
    inv = start + (end - start) * frac
  return (1.0 / inv).astype(jnp.float32)
