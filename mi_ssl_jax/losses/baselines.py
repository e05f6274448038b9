"""Baseline SSL objectives: Barlow Twins, VICReg, spectral contrastive,
SimCLR NT-Xent (InfoNCE) and the BYOL / SimSiam negative cosine.

Each is a pure function of GLOBAL [B, d] arrays: batch statistics are
global-batch statistics (the official Barlow Twins and VICReg code gathers or
all-reduces them too), and under a batch-sharded jit XLA inserts the
collectives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mi_ssl_jax.losses._common import as_compute, matmul, safe_norm


def _check_pair(name: str, z_1: jax.Array, z_2: jax.Array) -> None:
  if z_1.ndim != 2 or z_1.shape != z_2.shape:
    raise ValueError(f"{name} expects two [B, d] arrays of one shape, got "
                     f"{z_1.shape} and {z_2.shape}")


def _batch_norm(z: jax.Array, eps: float) -> jax.Array:
  """Affine-free BatchNorm in training mode: biased variance over the batch."""
  mean = jnp.mean(z, axis=0, keepdims=True)
  var = jnp.mean((z - mean) ** 2, axis=0, keepdims=True)
  return (z - mean) / jnp.sqrt(var + eps)


def barlow_twins_loss(z_1: jax.Array, z_2: jax.Array, *,
                      lambd: float = 0.0051, bn_eps: float = 1e-5
                      ) -> jax.Array:
  """Barlow Twins: L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij².

  C = BN(Z1)ᵀ BN(Z2) / B with BN the affine-free ``BatchNorm1d`` (eps 1e-5,
  biased batch variance) over the global batch, as in
  ``facebookresearch/barlowtwins/main.py`` (SyncBN + all-reduced C;
  docs/methods.md §6). λ = 0.0051.

  Args:
    z_1: [B, d] projector outputs of view 1.
    z_2: [B, d] projector outputs of view 2.
    lambd: off-diagonal weight λ.
    bn_eps: BatchNorm epsilon.

  Returns:
    Scalar loss.
  """
  _check_pair("barlow_twins_loss", z_1, z_2)
  a = _batch_norm(as_compute(z_1), bn_eps)
  b = _batch_norm(as_compute(z_2), bn_eps)
  c = matmul(a.T, b) / a.shape[0]  # [d, d]
  diag = jnp.diagonal(c)
  on = jnp.sum((1.0 - diag) ** 2)
  off = jnp.sum(c * c) - jnp.sum(diag * diag)
  return on + lambd * off


def vicreg_loss(z_1: jax.Array, z_2: jax.Array, *, sim_coeff: float = 25.0,
                std_coeff: float = 25.0, cov_coeff: float = 1.0,
                eps: float = 1e-4) -> jax.Array:
  """VICReg: λ·MSE(Z1, Z2) + μ·[v(Z1) + v(Z2)]/2 + ν·[c(Z1) + c(Z2)].

  ``facebookresearch/vicreg/main_vicreg.py``: v(Z) = mean_j relu(1 −
  sqrt(Var_j + 1e-4)) (unbiased variance), c(Z) = Σ_{i≠j} Cov_ij² / d with
  Cov = Z̄ᵀZ̄/(B − 1); coefficients 25, 25, 1. The official code gathers the
  batch for the variance and covariance terms, as we do (global arrays).

  Args:
    z_1: [B, d] expander outputs of view 1.
    z_2: [B, d] expander outputs of view 2.
    sim_coeff: invariance weight λ.
    std_coeff: variance weight μ.
    cov_coeff: covariance weight ν.
    eps: added to the variance inside the square root.

  Returns:
    Scalar loss.
  """
  _check_pair("vicreg_loss", z_1, z_2)
  x = as_compute(z_1)
  y = as_compute(z_2)
  b, d = x.shape
  repr_loss = jnp.mean((x - y) ** 2)
  x = x - jnp.mean(x, axis=0, keepdims=True)
  y = y - jnp.mean(y, axis=0, keepdims=True)
  std_x = jnp.sqrt(jnp.sum(x * x, axis=0) / (b - 1) + eps)
  std_y = jnp.sqrt(jnp.sum(y * y, axis=0) / (b - 1) + eps)
  std_loss = (jnp.mean(jax.nn.relu(1.0 - std_x)) / 2
              + jnp.mean(jax.nn.relu(1.0 - std_y)) / 2)

  def off_diag_sq(z):
    cov = matmul(z.T, z) / (b - 1)  # [d, d]
    return (jnp.sum(cov * cov) - jnp.sum(jnp.diagonal(cov) ** 2)) / d

  cov_loss = off_diag_sq(x) + off_diag_sq(y)
  return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


def spectral_contrastive_loss(z_1: jax.Array, z_2: jax.Array, *,
                              mu: float = 1.0) -> jax.Array:
  """Spectral contrastive loss (HaoChen et al. 2021), official form.

  ``jhaochenz96/spectral_contrastive_learning/models/spectral.py`` (``D``):
  each embedding is clamped to norm ≤ sqrt(μ) (projected onto that sphere if
  longer), then
    L = [−2·mean_i z1_iᵀz2_i + mean_{i≠j} (z1_iᵀz2_j)²] / μ.
  The sum of squares uses Σ_ij (z1_iᵀz2_j)² = Σ (Z1ᵀZ1 ⊙ Z2ᵀZ2) on the d×d
  side when d < B. The official code uses each GPU's local batch; we use the
  global batch (the loss is then independent of the device count).
  μ = 1 (CIFAR-10) or 10 (ImageNet configs).

  Args:
    z_1: [B, d] embeddings of view 1.
    z_2: [B, d] embeddings of view 2.
    mu: μ (norm clamp sqrt(μ) and loss scale 1/μ).

  Returns:
    Scalar loss.
  """
  _check_pair("spectral_contrastive_loss", z_1, z_2)
  radius = float(mu) ** 0.5

  def clamp(z):
    z = as_compute(z)
    norm = safe_norm(z)  # [B, 1]
    return jnp.where(norm < radius, z, z / norm * radius)

  x, y = clamp(z_1), clamp(z_2)
  b, d = x.shape
  part1 = -2.0 * jnp.mean(jnp.sum(x * y, axis=-1))
  if d < b:
    full = jnp.sum(matmul(x.T, x) * matmul(y.T, y))
  else:
    full = jnp.sum(matmul(x, y.T) ** 2)
  diag = jnp.sum(jnp.sum(x * y, axis=-1) ** 2)
  part2 = (full - diag) / (b * (b - 1))
  return (part1 + part2) / mu


def info_nce_loss(z_1: jax.Array, z_2: jax.Array, *,
                  temperature: float = 0.1) -> jax.Array:
  """SimCLR NT-Xent (InfoNCE) over the global batch of 2B embeddings.

  With ẑ the L2-normalised embeddings of both views stacked [2B, d] and
  s_ij = ẑ_iᵀẑ_j / τ, each anchor i has its other view as positive and the
  other 2B − 2 embeddings as negatives (self-similarity masked):
    L = mean_i −log( exp s_{i,p(i)} / Σ_{j≠i} exp s_ij ).
  As in ``google-research/simclr`` (``objective.py``, τ = 0.1 for ImageNet,
  0.5 on CIFAR), with negatives from the whole global batch.

  Args:
    z_1: [B, d] projections of view 1.
    z_2: [B, d] projections of view 2.
    temperature: τ.

  Returns:
    Scalar loss.
  """
  _check_pair("info_nce_loss", z_1, z_2)
  z = jnp.concatenate([as_compute(z_1), as_compute(z_2)], axis=0)  # [2B, d]
  z = z / safe_norm(z)
  n = z.shape[0]
  b = n // 2
  logits = matmul(z, z.T) / temperature  # [2B, 2B]
  logits = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, logits)
  positive = jnp.concatenate([jnp.arange(b, n), jnp.arange(0, b)])  # [2B]
  pos_logit = jnp.take_along_axis(logits, positive[:, None], axis=1)[:, 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos_logit)


def negative_cosine_loss(prediction: jax.Array, target: jax.Array
                         ) -> jax.Array:
  """Negative cosine similarity −mean_i cos(p_i, sg(z_i)) (SimSiam, BYOL).

  SimSiam (``facebookresearch/simsiam``) uses D(p, z) = −cos(p, sg(z)) and
  the symmetric ½D(p1, z2) + ½D(p2, z1); BYOL's 2 − 2cos is 2 + 2·this. The
  target gets stop-gradient here.

  Args:
    prediction: [B, d] predictor outputs.
    target: [B, d] targets (other view's projection or EMA teacher output).

  Returns:
    Scalar in [−1, 1].
  """
  _check_pair("negative_cosine_loss", prediction, target)
  p = as_compute(prediction)
  z = jax.lax.stop_gradient(as_compute(target))
  p = p / safe_norm(p)
  z = z / safe_norm(z)
  return -jnp.mean(jnp.sum(p * z, axis=-1))
