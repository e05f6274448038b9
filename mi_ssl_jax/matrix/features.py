"""Functions of a feature matrix Z [B, D]: coding rate and rank diagnostics.

Each works on the smaller side: by Sylvester's identity
det(I_D + c ZᵀZ) = det(I_B + c ZZᵀ), and the singular values of Z are those of
Zᵀ, so a [B, D] batch costs O(min(B, D)³) after one skinny matmul / SVD.
Under jit with a batch-sharded Z, the contraction over examples becomes an
all-reduce inserted by XLA (no manual gather).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mi_ssl_jax.matrix.entropy import DEFAULT_CHEBYSHEV_ORDER, matrix_entropy
from mi_ssl_jax.matrix.linalg import (
  HIGHEST,
  as_compute,
  logdet_psd,
  normalize_rows,
)
from mi_ssl_jax.matrix.spectral import EIG_EPS

RANKME_EPS = 1e-7  # Garrido et al. 2023 (RankMe), added to each p_k.


def total_coding_rate(z: jax.Array, eps: float = 0.5,
                      normalize: bool = True) -> jax.Array:
  """Total coding rate TCR_ε(Z) = ½ log det(I_D + D/(B ε²) · ZᵀZ).

  MCR² (Yu et al. 2020) / EMP-SSL definition (docs/methods.md §1.4), Z with
  L2-normalised rows by default (as both). Computed by Cholesky on the smaller
  of the D×D and B×B sides (Sylvester). The M-MAE code's regulariser
  −log det(I_D + (μ/D) ẐᵀẐ) equals −2·TCR with D/(Bε²) = μ/D.

  Args:
    z: [..., B, D] features.
    eps: distortion ε > 0 (0.5 in MCR²; EMP-SSL uses ε² = 0.2).
    normalize: L2-normalise rows first.

  Returns:
    [...] coding rate in nats.
  """
  if eps <= 0:
    raise ValueError(f"total_coding_rate eps must be > 0, got {eps}")
  z = normalize_rows(z) if normalize else as_compute(z)
  b, d = z.shape[-2], z.shape[-1]
  scale = d / (b * eps**2)
  small = _smaller_side(z)  # [D, D] or [B, B]
  n = small.shape[-1]
  return 0.5 * logdet_psd(jnp.eye(n, dtype=z.dtype) + scale * small)


def _smaller_side(z: jax.Array) -> jax.Array:
  """ZᵀZ [D, D] if D <= B else ZZᵀ [B, B]: same non-zero spectrum."""
  if z.shape[-1] <= z.shape[-2]:
    return jnp.einsum("...bi,...bj->...ij", z, z, precision=HIGHEST)
  return jnp.einsum("...id,...jd->...ij", z, z, precision=HIGHEST)


def feature_entropy(z: jax.Array, alpha: float = 1.0, method: str = "eigh",
                    order: int = DEFAULT_CHEBYSHEV_ORDER, center: bool = False,
                    normalize: bool = True,
                    eps: float = EIG_EPS) -> jax.Array:
  """Matrix entropy of the embedding covariance, on the smaller side.

  H_α(ρ) with ρ = ẐᵀHẐ / tr(ẐᵀHẐ) (D×D); computed from whichever of ẐᵀHẐ
  (D×D) and HẐẐᵀH (B×B) is smaller, which have the same non-zero spectrum.
  For unit rows and no centring this is also H_α of the Gram matrix K = ẐẐᵀ
  (docs/methods.md §1.1), i.e. ``matrix_entropy(gram(z))``. A diagnostic for
  dimensional collapse (exp of it is the effective rank of the covariance).

  Args:
    z: [..., B, D] features.
    alpha: entropy order (1 = von Neumann).
    method: "eigh" or "chebyshev", as :func:`matrix_entropy`.
    order: Chebyshev degree.
    center: subtract the batch mean (covariance instead of second moment).
    normalize: L2-normalise rows first.
    eps: as :func:`matrix_entropy`.

  Returns:
    [...] entropy in nats.
  """
  z = normalize_rows(z) if normalize else as_compute(z)
  if center:
    z = z - jnp.mean(z, axis=-2, keepdims=True)
  return matrix_entropy(_smaller_side(z), alpha, method, order, eps)


def singular_values(z: jax.Array) -> jax.Array:
  """Singular values of z, NaN-free derivative dσ_k = u_kᵀ dZ v_k.

  ``jnp.linalg.svd(compute_uv=False)`` differentiates the singular values only
  (no 1/(σ_i² − σ_j²) terms), so it is finite at repeated and zero singular
  values; LAPACK reduces a tall/wide matrix to its smaller side itself.

  Args:
    z: [..., B, D].

  Returns:
    [..., min(B, D)] singular values, descending.
  """
  return jnp.linalg.svd(as_compute(z), compute_uv=False)


def _spectral_entropy_of(p: jax.Array) -> jax.Array:
  """−Σ p log p with 0 log 0 = 0.  [...]"""
  safe = jnp.where(p > 0, p, 1.0)
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(safe), 0.0), axis=-1)


def effective_rank(z: jax.Array) -> jax.Array:
  """Effective rank (Roy & Vetterli 2007): exp(−Σ p_k log p_k), p = σ / Σσ.

  σ are the singular values of z (docs/methods.md §1.2). For a trace-1 PSD ρ
  (for example the covariance of L2-normalised features), σ = λ and
  effective_rank(ρ) = exp S(ρ) = d · exp(−MKL(ρ‖I/d)). Apply it to the
  features Z [B, D] for the spectrum of Z (the RankMe convention, see
  :func:`rankme`), or to covariance(z) for exp of the von Neumann entropy.

  Args:
    z: [..., B, D] features or a PSD matrix.

  Returns:
    [...] effective rank in [1, min(B, D)].
  """
  s = singular_values(z)
  p = s / jnp.sum(s, axis=-1, keepdims=True)
  return jnp.exp(_spectral_entropy_of(p))


def rankme(z: jax.Array, eps: float = RANKME_EPS) -> jax.Array:
  """RankMe (Garrido et al., ICML 2023): exp(−Σ p log p), p = σ/‖σ‖₁ + ε.

  Singular values of the embedding matrix Z [B, D] itself (not of its
  covariance; the paper's definition, avoiding the reptrix#16 ambiguity),
  ε = 1e-7 as in the paper. Equals :func:`effective_rank` up to ε.

  Args:
    z: [..., B, D] embeddings.
    eps: additive smoothing of each p_k.

  Returns:
    [...] RankMe score.
  """
  s = singular_values(z)
  p = s / jnp.sum(s, axis=-1, keepdims=True) + eps
  return jnp.exp(-jnp.sum(p * jnp.log(p), axis=-1))
