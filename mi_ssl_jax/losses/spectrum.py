"""Matrix-spectrum objectives beyond the three papers: FroSSL, I-VNE, MMCR.

Each is a pure function of GLOBAL [B, d] view embeddings (every batch
statistic is a reduction over the global batch, so under a batch-sharded jit
XLA inserts the collectives) with its matrix math in float32 or wider. The
formulas and the code semantics they follow are documented per function and
in docs/methods.md ("Matrix-spectrum objectives").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mi_ssl_jax import matrix
from mi_ssl_jax.losses._common import as_compute


def _check_views(name: str, views: tuple[jax.Array, ...]) -> None:
  shapes = {v.shape for v in views}
  if len(views) < 2 or len(shapes) != 1 or views[0].ndim != 2:
    raise ValueError(f"{name} expects two or more [B, d] arrays of one shape, "
                     f"got {[v.shape for v in views]}")


def _normalize_columns(z: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Each feature (column) scaled to unit L2 norm over the batch: [B, d].

  z / max(‖z_j‖, eps), written with the floor inside the square root so the
  gradient stays finite at an all-zero column.
  """
  sum_sq = jnp.sum(z * z, axis=0, keepdims=True)  # [1, d]
  return z * jax.lax.rsqrt(jnp.maximum(sum_sq, eps * eps))


def _renyi2_entropy(z: jax.Array) -> jax.Array:
  """H₂(ρ) = −log ‖ρ‖²_F for ρ = ZᵀZ / tr(ZᵀZ), Z [B, d]: scalar.

  ‖ZᵀZ‖_F = ‖ZZᵀ‖_F (same non-zero spectrum), so the smaller of the d×d and
  B×B products is formed; matmuls only, no eigendecomposition. The floors
  keep an all-zero Z finite (ρ is undefined there; value −log 1e-30, gradient
  zero).
  """
  hi = jax.lax.Precision.HIGHEST
  b, d = z.shape
  cov = (jnp.einsum("bi,bj->ij", z, z, precision=hi) if d <= b else
         jnp.einsum("id,jd->ij", z, z, precision=hi))
  rho = cov / jnp.maximum(jnp.trace(cov), 1e-12)
  return -jnp.log(jnp.maximum(jnp.sum(rho * rho), 1e-30))


def frossl_terms(*views: jax.Array, invariance_weight: float = 1.0
                 ) -> dict[str, jax.Array]:
  """FroSSL (Skean et al., ECCV 2024) and its two parts.

  With V views Z_v [B, d], each column normalised to unit norm over the batch
  (PyTorch ``F.normalize(z, dim=0)``), Z̄ = mean_v Z_v and
  ρ_v = Z_vᵀZ_v / tr(Z_vᵀZ_v):

      L = Σ_v [ log ‖ρ_v‖²_F  +  V · d · w · mean_{b,j} (Z_v − Z̄)²_bj ]

  log ‖ρ‖²_F = log tr ρ² = −H₂(ρ) is minus the Rényi-2 matrix entropy, so the
  first term spreads the spectrum (no eigendecomposition: a Frobenius norm of
  the smaller of the d×d / B×B matrices, same non-zero spectrum), the second
  is the invariance MSE to the views' mean. Follows
  ``multiview_frossl_loss_func`` in OFSkean/FroSSL ``solo/losses/frossl.py``
  (there ``tr`` is a constant: with unit columns tr ZᵀZ = d).

  Args:
    *views: V ≥ 2 arrays [B, d].
    invariance_weight: w (1 in the official recipes).

  Returns:
    ``{"loss", "entropy"  (mean_v H₂(ρ_v)), "invariance" (Σ_v of the MSE
    term)}``, scalars.
  """
  _check_views("frossl_loss", views)
  zs = [_normalize_columns(as_compute(v)) for v in views]
  mean = sum(zs) / len(zs)  # [B, d]
  n_views, d = len(zs), zs[0].shape[1]
  entropy, invariance = 0.0, 0.0
  for z in zs:
    entropy = entropy + _renyi2_entropy(z)
    invariance = invariance + n_views * d * invariance_weight * jnp.mean(
        (z - mean) ** 2)
  return {"loss": invariance - entropy, "entropy": entropy / n_views,
          "invariance": invariance}


def frossl_loss(*views: jax.Array, invariance_weight: float = 1.0
                ) -> jax.Array:
  """FroSSL loss (see :func:`frossl_terms`): scalar."""
  return frossl_terms(*views, invariance_weight=invariance_weight)["loss"]


def ivne_terms(z_1: jax.Array, z_2: jax.Array, *, alpha_cos: float = 1.0,
               alpha_vne: float = 1.0) -> dict[str, jax.Array]:
  """I-VNE: invariance + von Neumann entropy maximisation (Kim et al., CVPR
  2023, "VNE"; the two-view SSL form of OFSkean/FroSSL
  ``solo/losses/ivne.py``).

      L = −( α_cos · mean_b cos(z_1b, z_2b)  +  α_vne · ½ (S(ρ_1) + S(ρ_2)) )

  with ρ_v = Ẑ_vᵀẐ_v / B for row-normalised Ẑ_v (trace 1) and S the von
  Neumann entropy −tr ρ log ρ, i.e. −Σ σ_k² log σ_k² over the singular values
  of Ẑ_v/√B as in the code. Computed by ``mi_ssl_jax.matrix.feature_entropy``
  (eigh on the smaller side, exact NaN-free gradient).

  Args:
    z_1, z_2: [B, d] projector outputs of the two views.
    alpha_cos: weight of the cosine invariance term.
    alpha_vne: weight of the entropy term.

  Returns:
    ``{"loss", "entropy" (mean of S(ρ_1), S(ρ_2)), "cosine"}``, scalars.
  """
  _check_views("ivne_loss", (z_1, z_2))
  a, b = matrix.normalize_rows(z_1), matrix.normalize_rows(z_2)
  cosine = jnp.mean(jnp.sum(a * b, axis=-1))
  entropy = 0.5 * (matrix.feature_entropy(a, alpha=1.0, normalize=False) +
                   matrix.feature_entropy(b, alpha=1.0, normalize=False))
  return {"loss": -(alpha_cos * cosine + alpha_vne * entropy),
          "entropy": entropy, "cosine": cosine}


def ivne_loss(z_1: jax.Array, z_2: jax.Array, *, alpha_cos: float = 1.0,
              alpha_vne: float = 1.0) -> jax.Array:
  """I-VNE loss (see :func:`ivne_terms`): scalar."""
  return ivne_terms(z_1, z_2, alpha_cos=alpha_cos,
                    alpha_vne=alpha_vne)["loss"]


def mmcr_terms(*views: jax.Array, local_weight: float = 0.0
               ) -> dict[str, jax.Array]:
  """MMCR, maximum manifold capacity representations (Yerxa et al., NeurIPS
  2023).

  With V views of B images, rows L2-normalised, the centroid matrix
  C = mean_v Ẑ_v [B, d] and the per-image view matrices Z_b = [ẑ_1b; ...]
  [V, d]:

      L = λ · mean_b ‖Z_b‖_*  −  ‖C‖_*          (‖·‖_*: nuclear norm)

  λ = 0 is the ImageNet recipe (and ``maximum_manifold_capacity_loss_func``
  of OFSkean/FroSSL ``solo/losses/mmcr.py``); λ > 0 is the paper's local
  term. Singular values come from ``mi_ssl_jax.matrix.singular_values``
  (derivative u_kᵀ dZ v_k, finite at repeated values). The nuclear norm of
  the global C couples the whole batch.

  Args:
    *views: V ≥ 2 arrays [B, d].
    local_weight: λ.

  Returns:
    ``{"loss", "centroid_nuclear_norm", "local_nuclear_norm"}``, scalars.
  """
  _check_views("mmcr_loss", views)
  zs = jnp.stack([matrix.normalize_rows(v) for v in views])  # [V, B, d]
  centroid = jnp.sum(matrix.singular_values(jnp.mean(zs, axis=0)))
  local = jnp.mean(jnp.sum(matrix.singular_values(
      jnp.swapaxes(zs, 0, 1)), axis=-1))  # mean_b ‖Z_b‖_*
  return {"loss": local_weight * local - centroid,
          "centroid_nuclear_norm": centroid, "local_nuclear_norm": local}


def mmcr_loss(*views: jax.Array, local_weight: float = 0.0) -> jax.Array:
  """MMCR loss (see :func:`mmcr_terms`): scalar."""
  return mmcr_terms(*views, local_weight=local_weight)["loss"]
