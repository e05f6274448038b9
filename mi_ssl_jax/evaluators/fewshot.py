"""Few-shot closed-form ridge probe (big_vision ``fewshot_lsr`` idea).

For a cheap periodic check of a representation: sample ``shots`` training
examples per class, whiten the features with their mean/std, append a constant
bias feature (100, so the bias is almost unregularised), regress the one-hot
labels rescaled to {-1, +1} with L2-regularised least squares, and classify
test examples by the arg-max of the regression output.

One eigendecomposition serves every L2 strength: with X [n, d] and Y [n, C],

  n >= d:  W = (XᵀX + λI)⁻¹ XᵀY = Q (Λ + λI)⁻¹ QᵀXᵀY,   XᵀX = QΛQᵀ,
  d >  n:  W = Xᵀ(XXᵀ + λI)⁻¹ Y = XᵀQ (Λ + λI)⁻¹ QᵀY,   XXᵀ = QΛQᵀ,

so a sweep over λ costs one matmul per value. When several λ are given, the
reported accuracy uses the λ with the best accuracy on held-out *training*
examples (``val_per_class`` per class, disjoint from the shots), never on the
test split. Runs on the host CPU backend, as big_vision does, so it does not
take accelerator memory from training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mi_ssl_jax.evaluators import common

BIAS_FEATURE = 100.0
DEFAULT_L2_REGS = tuple(2.0 ** k for k in range(-4, 16, 2))


@jax.jit
def _whiten_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  mean = jnp.mean(x, axis=0, keepdims=True)  # [1, d]
  std = jnp.std(x, axis=0, keepdims=True) + 1e-5  # [1, d]
  return mean, std


def _design(x, mean, std):
  x = (x - mean) / std  # [n, d]
  return jnp.pad(x, ((0, 0), (0, 1)), constant_values=BIAS_FEATURE)


def ridge_cache(x: jax.Array, y: jax.Array, num_classes: int
                ) -> dict[str, jax.Array]:
  """Eigendecomposition shared by every L2 strength.

  Args:
    x: [n, d] training features.
    y: [n] int labels.
    num_classes: C.

  Returns:
    Dict with ``eigs`` [r], ``lhs`` [d+1, r], ``rhs`` [r, C], ``mean``,
    ``std`` [1, d], where r = min(n, d + 1).
  """
  return _ridge_cache(x, y, num_classes)


def _ridge_cache_impl(x, y, num_classes):
  mean, std = _whiten_stats(x)
  xd = _design(x, mean, std)  # [n, d+1]
  targets = 2.0 * jax.nn.one_hot(y, num_classes, dtype=xd.dtype) - 1.0
  hi = jax.lax.Precision.HIGHEST
  if xd.shape[0] >= xd.shape[1]:
    eigs, q = jnp.linalg.eigh(jnp.matmul(xd.T, xd, precision=hi))
    rhs = jnp.matmul(q.T, jnp.matmul(xd.T, targets, precision=hi),
                     precision=hi)
    lhs = q
  else:
    eigs, q = jnp.linalg.eigh(jnp.matmul(xd, xd.T, precision=hi))
    rhs = jnp.matmul(q.T, targets, precision=hi)
    lhs = jnp.matmul(xd.T, q, precision=hi)
  return {"eigs": eigs, "lhs": lhs, "rhs": rhs, "mean": mean, "std": std}


_ridge_cache = jax.jit(_ridge_cache_impl, static_argnums=2)


@jax.jit
def ridge_weights(cache: dict[str, jax.Array], l2_reg: jax.Array) -> jax.Array:
  """W [d+1, C] = lhs (Λ + λI)⁻¹ rhs for one L2 strength λ."""
  scale = 1.0 / (cache["eigs"] + l2_reg)  # [r]
  return jnp.matmul(cache["lhs"] * scale[None, :], cache["rhs"],
                    precision=jax.lax.Precision.HIGHEST)


@jax.jit
def ridge_accuracy(cache: dict[str, jax.Array], x: jax.Array, y: jax.Array,
                   l2_reg: jax.Array) -> jax.Array:
  """Accuracy (fraction) of the ridge classifier with strength ``l2_reg``."""
  w = ridge_weights(cache, l2_reg)
  logits = jnp.matmul(_design(x, cache["mean"], cache["std"]), w,
                      precision=jax.lax.Precision.HIGHEST)  # [m, C]
  return jnp.mean(jnp.argmax(logits, axis=-1) == y)


def fewshot_accuracy(
    train_feats: np.ndarray, train_labels: np.ndarray,
    test_feats: np.ndarray, test_labels: np.ndarray, *, num_classes: int,
    shots: Sequence[int] = (5, 10), l2_regs: Sequence[float] = DEFAULT_L2_REGS,
    seeds: Sequence[int] = (0, 1, 2), val_per_class: int = 20,
) -> dict[str, float]:
  """Few-shot ridge accuracy (percent), averaged over seeds.

  Args:
    train_feats: [N, D] host features of the labelled pool (no padding).
    train_labels: [N] int labels.
    test_feats: [M, D] test features.
    test_labels: [M] int labels.
    num_classes: C.
    shots: examples per class to train on.
    l2_regs: candidate L2 strengths; with more than one, the best on held-out
      training examples is used.
    seeds: sampling seeds; the result is their mean.
    val_per_class: held-out training examples per class for choosing λ.

  Returns:
    ``{"{s}shot": mean %, "{s}shot_std": std %, "{s}shot_l2": λ of the last
    seed}`` for each s in ``shots``.
  """
  cpu = jax.devices("cpu")[0]
  # Explicit transfers only: the trainer runs evaluators under
  # jax.transfer_guard("disallow").
  put = lambda v: jax.device_put(np.float32(v), cpu)
  train_labels = np.asarray(train_labels)
  counts = np.bincount(train_labels, minlength=num_classes)
  l2_regs = tuple(float(v) for v in l2_regs)
  need_val = len(l2_regs) > 1
  for s in shots:
    need = s + (val_per_class if need_val else 0)
    if counts.min() < need:
      raise ValueError(
          f"fewshot with {s} shots{' + validation' if need_val else ''} needs "
          f"{need} training examples per class, the smallest class has "
          f"{counts.min()}; lower shots/val_per_class or give one l2_reg")
  x_test = jax.device_put(np.asarray(test_feats, np.float32), cpu)
  y_test = jax.device_put(np.asarray(test_labels), cpu)
  results: dict[str, float] = {}
  for s in shots:
    accs, chosen = [], l2_regs[0]
    for seed in seeds:
      rng = np.random.default_rng(seed)
      per_class = [rng.permutation(np.flatnonzero(train_labels == c))
                   for c in range(num_classes)]
      idx = np.concatenate([p[:s] for p in per_class])
      x = jax.device_put(np.asarray(train_feats[idx], np.float32), cpu)
      y = jax.device_put(train_labels[idx], cpu)
      cache = ridge_cache(x, y, num_classes)
      if need_val:
        vidx = np.concatenate([p[s:s + val_per_class] for p in per_class])
        xv = jax.device_put(np.asarray(train_feats[vidx], np.float32), cpu)
        yv = jax.device_put(train_labels[vidx], cpu)
        val = [float(jax.device_get(ridge_accuracy(cache, xv, yv, put(lam))))
               for lam in l2_regs]
        chosen = l2_regs[int(np.argmax(val))]
      accs.append(100.0 * float(jax.device_get(
          ridge_accuracy(cache, x_test, y_test, put(chosen)))))
    results[f"{s}shot"] = float(np.mean(accs))
    results[f"{s}shot_std"] = float(np.std(accs))
    results[f"{s}shot_l2"] = chosen
  return results


class Evaluator:
  """Periodic few-shot ridge probe: ``Evaluator(predict_fn, **cfg).run(state)``.

  Config entry example::

    fewshot=dict(type="fewshot", log_steps=500, num_classes=10,
                 train_data=dict(dataset="fashion_mnist", split="train"),
                 test_data=dict(dataset="fashion_mnist", split="test"),
                 shots=(5, 10), seeds=(0, 1, 2))
  """

  def __init__(self, predict_fn: common.PredictFn, *, train_data: Any,
               test_data: Any, num_classes: int,
               shots: Sequence[int] = (5, 10),
               l2_regs: Sequence[float] = DEFAULT_L2_REGS,
               seeds: Sequence[int] = (0, 1, 2), val_per_class: int = 20,
               batch_size: int = 256, mesh: jax.sharding.Mesh | None = None,
               data_fn: Callable[..., common.BatchSource] | None = None):
    self.mesh = mesh if mesh is not None else common.default_mesh()
    self.train_source = common.resolve_source(
        train_data, data_fn, batch_size, "fewshot train_data")
    self.test_source = common.resolve_source(
        test_data, data_fn, batch_size, "fewshot test_data")
    self.extract = common.FeatureExtractor(predict_fn, self.mesh)
    self.kwargs = dict(num_classes=int(num_classes), shots=tuple(shots),
                       l2_regs=tuple(l2_regs), seeds=tuple(seeds),
                       val_per_class=int(val_per_class))

  def run(self, state: Any, step: int | None = None
          ) -> Iterator[tuple[str, float]]:
    del step  # same signature for every evaluator; unused here
    xtr, ytr = common.compact_on_host(*self.extract(state, self.train_source))
    xte, yte = common.compact_on_host(*self.extract(state, self.test_source))
    yield from fewshot_accuracy(xtr, ytr, xte, yte, **self.kwargs).items()
