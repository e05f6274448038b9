"""Label-free representation diagnostics from second-order statistics.

Pure jax functions of embeddings (no gradients needed, but all are
differentiable where it makes sense), computed in float32 or wider:

* :func:`lidar` — LiDAR (Thilak et al., ICLR 2024): the effective rank of the
  linear-discriminant matrix Σ_w^{-1/2} Σ_b Σ_w^{-1/2} with the images as
  surrogate classes and their augmentations as samples.
* :func:`alpha_req` — α-ReQ (Agrawal et al., NeurIPS 2022): the power-law
  decay exponent α of the covariance eigenspectrum, λ_k ∝ k^{-α}.
* :func:`token_entropy` — matrix-based entropy of the Gram matrix of each
  example's tokens (image patches or spatial positions), averaged over the
  batch: the per-layer "prompt entropy" of Skean et al. 2025 ("Layer by
  Layer") for vision models.
* :func:`dime` — DiME-style mutual information (Skean et al. 2023): the joint
  matrix entropy of two views under a random pairing minus under the true
  pairing, a permutation-baseline estimate next to the exact matrix MI
  H(K₁) + H(K₂) − H(K₁ ⊙ K₂) (:func:`matrix_mutual_information`).

Formulas, constants and sources are in each docstring and docs/methods.md
("Diagnostics").

Batches of matrices are decomposed one matrix per LAPACK call
(:func:`map_matrices`, a `lax.map`), never as one batched `eigh`: jaxlib
0.10.2's batched CPU LAPACK kernels split their batch over XLA's intra-op
thread pool from inside a pool thread and block on it, which deadlocks when
as many batched calls run at once as the pool has threads (a multi-device
CPU run's diagnostics did, every time; docs/known_issues.md, "Batched eigh
on multi-device CPU hangs"). :func:`token_entropy` also has an eigh-free
path (``method="chebyshev"``, batched matmuls only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mi_ssl_jax.matrix.entropy import (
  DEFAULT_CHEBYSHEV_ORDER,
  ENTROPY_METHODS,
  matrix_entropy,
)
from mi_ssl_jax.matrix.features import _spectral_entropy_of
from mi_ssl_jax.matrix.linalg import as_compute, gram, normalize_rows
from mi_ssl_jax.matrix.spectral import eigvalsh

HIGHEST = jax.lax.Precision.HIGHEST
LIDAR_DELTA = 1e-4  # ridge on Σ_w (LiDAR paper)
LIDAR_EPS = 1e-7  # added to the normalised eigenvalues (as RankMe)


def map_matrices(fn, a: jax.Array) -> jax.Array:
  """`fn` of each matrix of a batch, one matrix per call: [..., n, m] -> [...].

  A `lax.map` over the flattened batch axes, so every LAPACK call inside
  `fn` sees a single matrix (jaxlib runs those inline; batched calls can
  deadlock XLA:CPU's thread pool, see the module docstring). Under a
  batch-sharded jit the loop runs on every device over the whole batch
  (XLA gathers it): use it for few matrices, or where the batch is not
  sharded.

  Args:
    fn: `[n, m] -> []` (a scalar per matrix).
    a: [..., n, m].

  Returns:
    [...] the values of `fn`.
  """
  batch = a.shape[:-2]
  flat = a.reshape((-1,) + a.shape[-2:])  # [N, n, m]
  return jax.lax.map(fn, flat).reshape(batch)


def lidar(embeddings: jax.Array, delta: float = LIDAR_DELTA,
          eps: float = LIDAR_EPS) -> jax.Array:
  """LiDAR of embeddings of n images × q augmentations each.

  With e_ij [D] the embedding of augmentation j of image i, μ_i = mean_j e_ij
  and μ = mean_i μ_i:

      Σ_b = 1/(n−1) Σ_i (μ_i − μ)(μ_i − μ)ᵀ
      Σ_w = 1/(n(q−1)) Σ_ij (e_ij − μ_i)(e_ij − μ_i)ᵀ + δ I
      Σ = Σ_w^{-1/2} Σ_b Σ_w^{-1/2},  p_k = λ_k(Σ)/Σ_l λ_l + ε
      LiDAR = exp(−Σ_k p_k log p_k)

  (Thilak et al., "LiDAR: Sensing Linear Probing Performance in Joint
  Embedding SSL Architectures", ICLR 2024, §3; δ = 1e-4, ε = 1e-7). The
  eigenvalues of Σ equal those of the symmetric Σ_w^{-1/2}Σ_bΣ_w^{-1/2},
  computed here through the eigendecomposition of Σ_w.

  Args:
    embeddings: [n, q, D], q ≥ 2.
    delta: ridge δ added to Σ_w.
    eps: ε added to the normalised eigenvalues.

  Returns:
    Scalar in [1, D].
  """
  if embeddings.ndim != 3 or embeddings.shape[1] < 2:
    raise ValueError("lidar expects embeddings [n, q, D] with q >= 2 "
                     f"augmentations per image, got {embeddings.shape}")
  e = as_compute(embeddings)
  n, q, d = e.shape
  mu_i = jnp.mean(e, axis=1)  # [n, D]
  mu = jnp.mean(mu_i, axis=0)  # [D]
  cb = mu_i - mu
  sigma_b = jnp.einsum("nd,ne->de", cb, cb, precision=HIGHEST) / max(n - 1, 1)
  cw = (e - mu_i[:, None]).reshape(n * q, d)
  sigma_w = (jnp.einsum("nd,ne->de", cw, cw, precision=HIGHEST)
             / (n * (q - 1)) + delta * jnp.eye(d, dtype=e.dtype))
  w, v = jnp.linalg.eigh(sigma_w)
  inv_sqrt = (v * jax.lax.rsqrt(jnp.maximum(w, delta))[None, :]) @ v.T
  sigma = inv_sqrt @ sigma_b @ inv_sqrt
  lam = jnp.clip(eigvalsh(0.5 * (sigma + sigma.T)), 0.0, None)
  p = lam / jnp.maximum(jnp.sum(lam), jnp.finfo(lam.dtype).tiny) + eps
  return jnp.exp(_spectral_entropy_of(p))


def alpha_req(z: jax.Array, k_min: int = 1, k_max: int | None = None,
              center: bool = True) -> jax.Array:
  """α-ReQ: the power-law exponent of the covariance eigenspectrum.

  Fits log λ_k = c − α log k by least squares over the eigenvalues of the
  covariance of z (centred by default), ranks k_min ≤ k ≤ k_max (default:
  up to min(N, D) − 1, the largest rank a centred N-sample covariance can
  have), ignoring eigenvalues below 1e-12 of the largest. Agrawal et al.,
  "α-ReQ: Assessing Representation Quality in SSL by Measuring Eigenspectrum
  Decay", NeurIPS 2022 (§3: α near 1 predicts good linear probes; larger α
  means faster decay, i.e. fewer effective dimensions).

  Args:
    z: [N, D] embeddings.
    k_min: first rank of the fit (1-based).
    k_max: last rank (default min(N, D) − 1 with centring, else min(N, D)).
    center: subtract the mean first.

  Returns:
    Scalar α.
  """
  z = as_compute(z)
  n, d = z.shape
  if center:
    z = z - jnp.mean(z, axis=0, keepdims=True)
  small = jnp.einsum("nd,ne->de", z, z, precision=HIGHEST) if d <= n else (
      jnp.einsum("nd,md->nm", z, z, precision=HIGHEST))
  lam = jnp.flip(eigvalsh(small)) / n  # descending
  top = min(n, d) - (1 if center else 0)
  k_max = top if k_max is None else min(k_max, top)
  if not 1 <= k_min < k_max:
    raise ValueError(f"alpha_req needs 1 <= k_min < k_max, got {k_min}, "
                     f"{k_max} for z of shape {z.shape}")
  lam = lam[k_min - 1:k_max]
  k = jnp.arange(k_min, k_max + 1, dtype=lam.dtype)
  valid = lam > 1e-12 * jnp.max(lam)
  x = jnp.where(valid, jnp.log(k), 0.0)
  y = jnp.where(valid, jnp.log(jnp.where(valid, lam, 1.0)), 0.0)
  m = jnp.maximum(jnp.sum(valid), 2)
  mx, my = jnp.sum(x) / m, jnp.sum(y) / m
  cov = jnp.sum(jnp.where(valid, (x - mx) * (y - my), 0.0))
  var = jnp.sum(jnp.where(valid, (x - mx) ** 2, 0.0))
  return -cov / jnp.maximum(var, jnp.finfo(var.dtype).tiny)


def token_entropy(tokens: jax.Array, alpha: float = 1.0,
                  normalize: bool = True, method: str = "eigh",
                  order: int = DEFAULT_CHEBYSHEV_ORDER) -> jax.Array:
  """Mean over examples of H_α of each example's token Gram matrix.

  For tokens X_b [T, D] of example b (rows L2-normalised when `normalize`),
  K_b = X_b X_bᵀ / tr(X_b X_bᵀ) [T, T] and the result is mean_b H_α(K_b):
  high when an example's tokens point in many directions, low when they
  collapse (the layer-wise "prompt entropy" of Skean et al. 2025, "Layer by
  Layer: Uncovering Hidden Representations in Language Models", applied to
  image patches / spatial positions).

  Methods (as :func:`matrix_entropy`):
  * ``"eigh"``: exact; one eigendecomposition per example
    (:func:`map_matrices`), so on a batch-sharded input every device loops
    over the whole batch: give it a few examples.
  * ``"chebyshev"``: eigh-free, one batched matmul series over all examples
    (sharded with the batch); integer α ≤ order/2 is exact, but for α = 1
    the error grows with the number of eigenvalues near 0, where −λ log λ
    is steep (many for nearly collapsed tokens).

  Args:
    tokens: [B, T, D].
    alpha: entropy order (1 = von Neumann).
    normalize: L2-normalise each token first.
    method: "eigh" or "chebyshev".
    order: Chebyshev degree ("chebyshev" only).

  Returns:
    Scalar entropy in nats (at most log T).
  """
  if method not in ENTROPY_METHODS:
    raise ValueError(f"entropy method must be one of {ENTROPY_METHODS}, "
                     f"got {method!r}")
  x = normalize_rows(tokens) if normalize else as_compute(tokens)
  _, t, d = x.shape
  # X_b X_bᵀ [T, T] and X_bᵀ X_b [D, D] share their non-zero spectrum: the
  # smaller one is decomposed (a ResNet stage has T = h·w ≫ D channels).
  k = (jnp.einsum("btd,bsd->bts", x, x, precision=HIGHEST) if t <= d else
       jnp.einsum("btd,bte->bde", x, x, precision=HIGHEST))  # [B, m, m]
  if method == "chebyshev":
    return jnp.mean(matrix_entropy(k, alpha, "chebyshev", order))
  return jnp.mean(map_matrices(lambda kb: matrix_entropy(kb, alpha), k))


def dime(z_1: jax.Array, z_2: jax.Array, key: jax.Array,
         alpha: float = 2.0, num_permutations: int = 4,
         method: str = "eigh") -> jax.Array:
  """DiME-style matrix mutual information with a permutation baseline.

      DiME(Z₁; Z₂) = mean_π H_α(K₁ ⊙ K₂^π) − H_α(K₁ ⊙ K₂)

  K_v = Ẑ_vẐ_vᵀ (unit rows), K₂^π the Gram matrix of the rows of Z₂ in a
  random order π: the joint entropy of unpaired views minus that of the true
  pairs (Skean et al., "DiME: Maximizing Mutual Information by a Difference of
  Matrix-Based Entropies", 2023, §3). Where views carry no information about
  each other the two joint entropies agree and DiME ≈ 0.

  Args:
    z_1, z_2: [B, d] embeddings of the two views (row b of each = image b).
    key: PRNG key of the permutations.
    alpha: entropy order.
    num_permutations: random pairings averaged.
    method: as :func:`matrix_entropy`.

  Returns:
    Scalar, nats.
  """
  k1, k2 = gram(z_1), gram(z_2)
  joint = matrix_entropy(k1 * k2, alpha, method)
  perms = jax.vmap(lambda k: jax.random.permutation(k, z_2.shape[0]))(
      jax.random.split(key, num_permutations))  # [P, B]
  # One pairing per call (lax.map): never a batched eigh (module docstring).
  shuffled = jax.lax.map(
      lambda p: matrix_entropy(k1 * k2[p][:, p], alpha, method), perms)  # [P]
  return jnp.mean(shuffled) - joint
