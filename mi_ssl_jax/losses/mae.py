"""MAE reconstruction loss and the M-MAE / U-MAE feature regularisers.

Follows the official code (docs/methods.md §3.2, §4): ``yifanzhang-pro/M-MAE``
``models_mae.py`` (``forward_loss``) and ``loss_func.py``
(``uniformity_loss_TCR``), ``zhangq327/U-MAE`` ``loss_func.py``.

Gradient scaling of the official gather (docs/methods.md §3.2 item 7). The
M-MAE/U-MAE ``GatherLayer.backward`` returns only its rank's slice of its own
gradient (no all-reduce) and DDP then averages over W ranks, so the released
runs optimised ``L_MAE + (λ/W)·R`` in effect, while logging ``λ·R``. Our losses
are exact functions of the global batch, so by default the gradient is the
true gradient of ``λ·R``. Pass ``official_world_size=W`` to reproduce the
released runs exactly: the forward value is unchanged and the gradient of the
regulariser is divided by W (W = 8 for the official ``pretrain.sh``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mi_ssl_jax import matrix
from mi_ssl_jax.losses._common import as_compute, gradient_scale, matmul


def mae_loss_terms(pred: jax.Array, target: jax.Array, mask: jax.Array,
                   norm_pix: bool = True) -> tuple[jax.Array, jax.Array]:
  """Per-example parts of `mae_loss`: (Σ_l m_bl·mse_bl [B], Σ_l m_bl [B]).

  `mae_loss` is Σ_b of the first over Σ_b of the second; a batch run in
  chunks (the trainer's `grad_chunks`) sums them over all chunks before
  dividing, so its loss is the whole batch's. Arguments as `mae_loss`.
  """
  if pred.shape != target.shape or pred.shape[:2] != mask.shape:
    raise ValueError(
        "mae_loss expects pred and target [B, L, P] and mask [B, L]; got "
        f"{pred.shape}, {target.shape}, {mask.shape}")
  pred = as_compute(pred)
  target = jax.lax.stop_gradient(as_compute(target))
  if norm_pix:
    mean = jnp.mean(target, axis=-1, keepdims=True)  # [B, L, 1]
    var = jnp.var(target, axis=-1, keepdims=True, ddof=1)  # unbiased
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean((pred - target) ** 2, axis=-1)  # [B, L]
  mask = mask.astype(per_patch.dtype)
  return jnp.sum(per_patch * mask, axis=1), jnp.sum(mask, axis=1)  # [B], [B]


def mae_loss(pred: jax.Array, target: jax.Array, mask: jax.Array,
             norm_pix: bool = True) -> jax.Array:
  """MAE loss: per-patch (normalised-pixel) MSE averaged over masked patches.

  L = Σ_{b,l} m_bl · mean_p (pred_blp − t̂_blp)² / Σ_{b,l} m_bl, with
  t̂ = (t − mean_p t) / sqrt(var_p t + 1e-6) (unbiased variance, as
  ``torch.var``) when ``norm_pix``. Follows ``models_mae.py::forward_loss``
  of facebookresearch/mae, identical in M-MAE and U-MAE (docs/methods.md §3.2
  item 8), where ``norm_pix_loss`` is forced on.

  Args:
    pred: [B, L, P] predicted patches (P = patch_size² · channels).
    target: [B, L, P] patchified images (no gradient flows into it).
    mask: [B, L], 1 for masked (removed, to be reconstructed) patches, 0 for
      visible ones.
    norm_pix: normalise each target patch by its mean and std.

  Returns:
    Scalar loss. If no patch is masked the loss is 0 (the official code
    divides by zero there).
  """
  sums, counts = mae_loss_terms(pred, target, mask, norm_pix)  # [B], [B]
  return jnp.sum(sums) / jnp.maximum(jnp.sum(counts), 1.0)


def _centered_normalized(features: jax.Array, centering: bool) -> jax.Array:
  f = matrix.normalize_rows(features)  # [B, d]
  if centering:  # F̂ᵀ H F̂ = (F̂ − mean)ᵀ(F̂ − mean): H_B is idempotent
    f = f - jnp.mean(f, axis=0, keepdims=True)
  return f


def _logdet_identity_plus(f: jax.Array, c: jax.Array | float,
                          logdet: str) -> jax.Array:
  """log det(I_d + c·FᵀF) = log det(I_B + c·FFᵀ) (Sylvester), smaller side,
  factorised by `logdet` ("cholesky" | "lu", `matrix.logdet_psd`)."""
  b, d = f.shape
  if d <= b:  # d×d: under a batch-sharded jit this is a psum of local FᵀF
    a = jnp.eye(d, dtype=f.dtype) + c * matmul(f.T, f)
  else:
    a = jnp.eye(b, dtype=f.dtype) + c * matmul(f, f.T)
  return matrix.logdet_psd(a, logdet)


def mmae_regularizer(features: jax.Array, mu: float = 1.0,
                     centering: bool = False, form: str = "code",
                     official_world_size: int | None = None,
                     logdet: str = "cholesky") -> jax.Array:
  """M-MAE regulariser R (the loss adds λ·R; λ = 0.01 in the official runs).

  ``form="code"`` (default), the official ``uniformity_loss_TCR`` of
  ``M-MAE/loss_func.py`` (docs/methods.md §3.2):
    R = −log det(I_d + (μ/d) · F̂ᵀ Ĵ F̂),
  with F̂ the row-L2-normalised global-batch features [B, d], Ĵ = I_B or the
  centring matrix H_B (``centering``, the official ``--centering``), and the
  divisor d (not B, despite the code comment "mu/m"). μ = 1 (ViT-B) or 3
  (ViT-L) in the paper. No ½ factor.

  ``form="tcr"``: the paper's −TCR_μ(Z) with the standard MCR² / EMP-SSL
  parameterisation, ε² = μ (docs/methods.md §1.4; the paper's exact scale is
  unverified, §11):
    R = −½ log det(I_d + d/(B·μ) · F̂ᵀ Ĵ F̂).

  Computed by Cholesky on the smaller of the d×d and B×B sides (Sylvester's
  identity, docs/methods.md §1.1): exact, finite for any input including zero
  and collapsed features.

  Args:
    features: [B, d] features (global batch; CLS features for M-MAE).
    mu: μ (``--uniformity_mu``), or ε² for ``form="tcr"``.
    centering: use Ĵ = H_B (batch-centred covariance).
    form: ``"code"`` or ``"tcr"``.
    official_world_size: if set to W, reproduce the official gather's
      gradient scaling (gradient ÷ W, value unchanged; see the module doc).
    logdet: ``"cholesky"`` or ``"lu"`` (exact either way; the trainer picks
      per platform, `mi_ssl_jax.platforms`).

  Returns:
    Scalar R (≤ 0).
  """
  if features.ndim != 2:
    raise ValueError(f"mmae_regularizer expects [B, d], got {features.shape}")
  f = _centered_normalized(features, centering)  # [B, d]
  b, d = f.shape
  if form == "code":
    r = -_logdet_identity_plus(f, mu / d, logdet)
  elif form == "tcr":
    r = -0.5 * _logdet_identity_plus(f, d / (b * mu), logdet)
  else:
    raise ValueError(f"mmae_regularizer form must be 'code' or 'tcr', got "
                     f"{form!r}")
  return _official_scale(r, official_world_size)


def umae_uniformity(features: jax.Array,
                    official_world_size: int | None = None) -> jax.Array:
  """U-MAE uniformity L_unif = ‖F̂F̂ᵀ‖²_F / B² = mean_ij (f̂_iᵀ f̂_j)².

  Official ``U-MAE/loss_func.py`` (docs/methods.md §4): the sum includes the
  diagonal (constant 1/B), F̂ = row-normalised global-batch features. Computed
  as ‖F̂ᵀF̂‖²_F / B² when d < B (same value: both are Σ λ_i² of the same
  non-zero spectrum), so the sharded version all-reduces a d×d matrix.

  Args:
    features: [B, d] features (global batch).
    official_world_size: if set to W, reproduce the official gather's
      gradient scaling (gradient ÷ W, value unchanged; see the module doc).

  Returns:
    Scalar in [1/B, 1].
  """
  if features.ndim != 2:
    raise ValueError(f"umae_uniformity expects [B, d], got {features.shape}")
  f = matrix.normalize_rows(features)  # [B, d]
  b, d = f.shape
  k = matmul(f.T, f) if d < b else matmul(f, f.T)  # [min, min]
  return _official_scale(jnp.sum(k * k) / (b * b), official_world_size)


def _official_scale(value: jax.Array, world_size: int | None) -> jax.Array:
  if world_size is None:
    return value
  if int(world_size) < 1:
    raise ValueError(f"official_world_size must be >= 1, got {world_size}")
  return gradient_scale(value, 1.0 / int(world_size))
