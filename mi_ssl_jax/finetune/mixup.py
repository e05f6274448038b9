"""Mixup / CutMix with label smoothing, in JAX (timm ``Mixup`` semantics).

MAE / M-MAE fine-tuning (docs/methods.md §3.3) uses timm's ``Mixup`` with
mixup α = 0.8, cutmix α = 1.0, prob 1.0, switch prob 0.5, mode "batch", label
smoothing 0.1, and ``SoftTargetCrossEntropy``. Per call (one λ for the whole
batch, timm's "batch" mode):

* with probability ``prob`` mixing happens; then CutMix is chosen with
  probability ``switch_prob`` when both α > 0 (else whichever is enabled);
* Mixup: λ ~ Beta(α_m, α_m); x = λ·x + (1 − λ)·flip(x);
* CutMix: λ ~ Beta(α_c, α_c); a box of size (H·√(1−λ), W·√(1−λ)) with a
  uniformly drawn centre, clipped to the image, is pasted from flip(x); λ is
  then corrected to 1 − box area / (H·W);
* targets: y_s = one_hot·(1 − ε) + ε/C (timm ``mixup_target``); mixed target
  λ·y_s + (1 − λ)·flip(y_s).

flip(x) reverses the batch order, as timm's ``x.flip(0)``. On a sharded batch
that pairs examples across devices (jit inserts the permutation); mixing is
over the GLOBAL batch, as with a single GPU in timm.

The random draws (λ, the CutMix box, which of the two) are made on the host
with numpy, exactly as timm does, by :func:`sample_mix` from a generator
seeded with (seed, step), so resumed runs redraw the same values. Only
:func:`apply_mix` runs inside the jitted step. Why not ``jax.random.beta``:
its rejection sampler costs seconds of XLA compile time on CPU (measured 7 s
for one scalar draw under load), for one scalar per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def smooth_labels(labels: jax.Array, num_classes: int,
                  smoothing: float = 0.0) -> jax.Array:
  """One-hot targets with label smoothing: (1 − ε)·onehot + ε/C.  [B, C]"""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def soft_target_cross_entropy(logits: jax.Array, targets: jax.Array
                              ) -> jax.Array:
  """timm ``SoftTargetCrossEntropy``: mean_b Σ_c −t_bc log softmax(z)_bc."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, C]
  return jnp.mean(-jnp.sum(targets * logp, axis=-1))


def sample_mix(rng: np.random.Generator, height: int, width: int, *,
               mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
               prob: float = 1.0, switch_prob: float = 0.5
               ) -> dict[str, np.ndarray]:
  """Host-side draw of one batch's mixing (timm ``_params_per_batch``).

  Args:
    rng: numpy generator, e.g. ``np.random.default_rng([seed, step])``.
    height: image height H.
    width: image width W.
    mixup_alpha: Beta parameter of Mixup (0 disables).
    cutmix_alpha: Beta parameter of CutMix (0 disables).
    prob: probability of mixing at all.
    switch_prob: probability of CutMix when both are enabled.

  Returns:
    ``{"lam": float32 [], "box": int32 [4] (y0, y1, x0, x1)}``; an empty box
    means Mixup (or nothing, when lam = 1). λ is the corrected value for CutMix
    (1 − box area / HW).
  """
  lam, box = 1.0, (0, 0, 0, 0)
  if (mixup_alpha > 0 or cutmix_alpha > 0) and rng.random() < prob:
    if mixup_alpha > 0 and cutmix_alpha > 0:
      use_cutmix = rng.random() < switch_prob
    else:
      use_cutmix = cutmix_alpha > 0
    if use_cutmix:
      lam = float(rng.beta(cutmix_alpha, cutmix_alpha))
      # timm rand_bbox: side ratio √(1−λ), uniform centre, clipped.
      ratio = np.sqrt(1.0 - lam)
      cut_h, cut_w = int(height * ratio), int(width * ratio)
      cy, cx = rng.integers(height), rng.integers(width)
      y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
      x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
      box = (int(y0), int(y1), int(x0), int(x1))
      lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    else:
      lam = float(rng.beta(mixup_alpha, mixup_alpha))
  return {"lam": np.float32(lam), "box": np.asarray(box, np.int32)}


def apply_mix(images: jax.Array, labels: jax.Array, mix: dict[str, jax.Array],
              *, num_classes: int, label_smoothing: float = 0.1
              ) -> tuple[jax.Array, jax.Array]:
  """Applies a :func:`sample_mix` draw inside jit; returns soft targets.

  Args:
    images: [B, H, W, C] images.
    labels: [B] int labels.
    mix: ``{"lam": [], "box": [4]}`` from :func:`sample_mix`.
    num_classes: C.
    label_smoothing: ε.

  Returns:
    (mixed images [B, H, W, C], targets [B, C] = λ·y_s + (1 − λ)·flip(y_s)).
  """
  _, height, width, _ = images.shape
  lam = jnp.asarray(mix["lam"], jnp.float32)
  y0, y1, x0, x1 = (mix["box"][i] for i in range(4))
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  box = ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1))
  is_cutmix = (y1 > y0) & (x1 > x0)
  flipped = images[::-1]
  cut = jnp.where(box[None, :, :, None], flipped, images)
  blend = lam * images + (1.0 - lam) * flipped
  out = jnp.where(is_cutmix, cut, blend).astype(images.dtype)
  targets = smooth_labels(labels, num_classes, label_smoothing)  # [B, C]
  return out, lam * targets + (1.0 - lam) * targets[::-1]
