"""View diagnostics: matrix mutual information and joint entropy of two views.

The quantities the Information Flow paper (Tan et al., ICML 2024;
docs/methods.md §1.3) tracks during training: with K_v = ẐvẐvᵀ the [B, B]
Gram matrix of the row-L2-normalised embeddings of view v,
  H_α(K) = log tr((K/B)^α) / (1 − α)   (matrix power; von Neumann at α = 1),
  H_α(K1, K2) = H_α(K1 ⊙ K2),
  I_α(K1; K2) = H_α(K1) + H_α(K2) − H_α(K1 ⊙ K2).
They are metrics for logging, computed without gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mi_ssl_jax import matrix


def view_diagnostics(z_1: jax.Array, z_2: jax.Array, alpha: float = 2.0,
                     method: str = "chebyshev") -> dict[str, jax.Array]:
  """Matrix MI, joint entropy and per-view entropies of two views (no grad).

  Uses ``mi_ssl_jax.matrix.matrix_entropy`` / ``matrix_joint_entropy`` /
  ``matrix_mutual_information`` on the B×B Gram matrices (docs/methods.md §1.3).
  The default α = 2 is the order of the paper's Barlow Twins / spectral
  contrastive bounds and uses the closed form −log(‖K‖²_F / B²); other α go
  through ``matrix_entropy`` with `method` (``"chebyshev"`` is matmul-only and
  exact for integer α; α = 1, von Neumann, needs ``"eigh"`` to be exact).

  Args:
    z_1: [B, d] embeddings of view 1 (global batch).
    z_2: [B, d] embeddings of view 2.
    alpha: Rényi order α > 0.
    method: ``"chebyshev"`` (matmul-only) or ``"eigh"`` (exact); unused
      for α = 2.

  Returns:
    Dict of scalars: ``matrix_mutual_information``, ``matrix_joint_entropy``,
    ``matrix_entropy_view1``, ``matrix_entropy_view2`` (nats).
  """
  if z_1.ndim != 2 or z_1.shape != z_2.shape:
    raise ValueError(f"view_diagnostics expects two [B, d] arrays of one "
                     f"shape, got {z_1.shape} and {z_2.shape}")
  k1 = matrix.gram(jax.lax.stop_gradient(z_1))  # [B, B], unit diagonal
  k2 = matrix.gram(jax.lax.stop_gradient(z_2))
  if alpha == 2:
    # Closed form H_2(K) = −log(‖K‖²_F / B²) (docs/methods.md §1.3): one pass
    # over K instead of a polynomial in K (B = 1024: ~50× faster).
    b = k1.shape[0]
    h_2 = lambda k: -jnp.log(jnp.sum(k * k) / (b * b))
    h1, h2, h12 = h_2(k1), h_2(k2), h_2(k1 * k2)
  else:
    h1 = matrix.matrix_entropy(k1, alpha=alpha, method=method)
    h2 = matrix.matrix_entropy(k2, alpha=alpha, method=method)
    h12 = matrix.matrix_joint_entropy(k1, k2, alpha=alpha, method=method)
  return {"matrix_mutual_information": h1 + h2 - h12,
          "matrix_joint_entropy": h12,
          "matrix_entropy_view1": h1,
          "matrix_entropy_view2": h2}
