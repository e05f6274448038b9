"""Representation diagnostics: RankMe, effective rank, entropies, spectrum.

What the matrix-information objectives do to a representation shows in the
spectrum of its embedding covariance (dimensional collapse = a few dominant
eigenvalues). For embeddings Z [N, D] of an evaluation set:

* ``rankme``: RankMe (Garrido et al., ICML 2023) of Z itself,
  exp(−Σ p log p) with p = σ(Z)/‖σ(Z)‖₁ + 1e-7 (``mi_ssl_jax.matrix.rankme``).
* ``effective_rank``: Roy & Vetterli effective rank of the covariance ρ,
  = exp S(ρ) (``mi_ssl_jax.matrix.effective_rank``).
* ``vn_entropy``: von Neumann entropy S(ρ) = −tr ρ log ρ of ρ / tr ρ, in nats
  (maximum log D); ``renyi2_entropy``: H₂(ρ) = −log tr ρ²
  (docs/methods.md §1.3).
* ``spectrum``: eigenvalues of ρ / tr ρ, descending.
* ``alpha_req``: α-ReQ, the power-law decay exponent of the centred
  covariance spectrum of Z (``mi_ssl_jax.matrix.alpha_req``).
* ``lidar`` (:func:`lidar_of_images`): LiDAR (``mi_ssl_jax.matrix.lidar``)
  with the first 1000 evaluation images as surrogate classes and 4 random
  resized crops + flips of each (scale 0.2–1, on device) as their samples.

ρ is the covariance of the L2-normalised embeddings, uncentred by default:
ρ = ẐᵀẐ / N, the trace-1 density matrix the Matrix-SSL / M-MAE losses work
with (docs/methods.md §1.1); ``center=True`` gives the centred covariance
used in dimensional-collapse studies. All matrix functions come from
``mi_ssl_jax.matrix`` (float32 or better, eigh).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mi_ssl_jax import matrix, paths
from mi_ssl_jax.evaluators import common, plots

SCALAR_KEYS = ("rankme", "effective_rank", "vn_entropy", "renyi2_entropy",
               "alpha_req")
# LiDAR on evaluation images: n images x q crops of each (surrogate classes).
LIDAR_IMAGES, LIDAR_VIEWS = 1000, 4
MI_IMAGES = 256  # images of the DiME / crop-MI Gram matrices ([256, 256])


@functools.partial(jax.jit, static_argnames="center")
def _device_diagnostics(z: jax.Array, center: bool) -> dict[str, jax.Array]:
  z = z.astype(jnp.promote_types(z.dtype, jnp.float32))  # [N, D]
  rho = matrix.covariance(z, center=center, normalize=True)  # [D, D]
  return {
      "finite": jnp.all(jnp.isfinite(z)),
      "rankme": matrix.rankme(z),
      "effective_rank": matrix.effective_rank(rho),
      "vn_entropy": matrix.matrix_entropy(rho, alpha=1.0),
      "renyi2_entropy": matrix.matrix_entropy(rho, alpha=2.0),
      "spectrum": jnp.flip(matrix.eigvalsh(rho / jnp.trace(rho))),
      "alpha_req": matrix.alpha_req(z),
  }


def representation_diagnostics(z: np.ndarray | jax.Array,
                               center: bool = False) -> dict[str, Any]:
  """Spectral diagnostics of embeddings ``z`` [N, D] (padding already removed).

  Args:
    z: [N, D] embeddings (N ≥ 2).
    center: use the centred covariance of the normalised embeddings.

  Returns:
    Dict of floats ``rankme``, ``effective_rank``, ``vn_entropy``,
    ``renyi2_entropy``, ``max_entropy`` (= log D), ints ``num_examples``,
    ``dim``, and ``spectrum`` (list of D floats, descending, sum 1).
  """
  # Explicit transfer (the trainer runs evaluators under transfer_guard).
  z = z if isinstance(z, jax.Array) else jax.device_put(np.asarray(z))
  if z.ndim != 2 or z.shape[0] < 2:
    raise ValueError(f"diagnostics need embeddings [N >= 2, D], got {z.shape}")
  out = jax.device_get(_device_diagnostics(z, center=bool(center)))
  if not out["finite"]:
    raise FloatingPointError("embeddings contain NaN/inf; diagnostics skipped "
                             "(check the checkpoint / training loss)")
  result = {k: float(out[k]) for k in SCALAR_KEYS}
  result.update(max_entropy=float(np.log(z.shape[1])),
                num_examples=int(z.shape[0]), dim=int(z.shape[1]),
                centered=bool(center),
                spectrum=[float(v) for v in np.clip(out["spectrum"], 0, None)])
  return result


def multiview_diagnostics(predict: Callable[[Any, dict], jax.Array],
                          state: Any, images: np.ndarray, key: jax.Array,
                          num_views: int = LIDAR_VIEWS,
                          crop_scale: tuple[float, float] = (0.2, 1.0),
                          batch_size: int = 500) -> dict[str, float]:
  """Diagnostics of ``predict`` features of ``num_views`` crops per image.

  * ``lidar``: LiDAR of all crops (each image a surrogate class);
  * ``dime``: DiME of the first two crops' embeddings of the first
    ``MI_IMAGES`` images (permutation baseline, α = 2;
    ``mi_ssl_jax.matrix.dime``; Gram matrices are MI_IMAGES² in size);
  * ``crop_mutual_information``: the exact matrix mutual information
    H₂(K₁) + H₂(K₂) − H₂(K₁ ⊙ K₂) of the same two crops' Gram matrices.
  """
  e = _crop_features(predict, state, images, key, num_views, crop_scale,
                     batch_size)  # [n, q, D]
  pair = jax.device_get(e[:MI_IMAGES, :2])  # [m, 2, D], one host array
  k1, k2 = matrix.gram(pair[:, 0]), matrix.gram(pair[:, 1])  # [m, m]
  out = {"lidar": matrix.lidar(e),
         "dime": matrix.dime(pair[:, 0], pair[:, 1],
                             jax.random.fold_in(key, num_views)),
         "crop_mutual_information": matrix.matrix_mutual_information(
             k1, k2, alpha=2.0)}
  return {k: float(v) for k, v in jax.device_get(out).items()}


def lidar_of_images(predict: Callable[[Any, dict], jax.Array], state: Any,
                    images: np.ndarray, key: jax.Array,
                    num_views: int = LIDAR_VIEWS,
                    crop_scale: tuple[float, float] = (0.2, 1.0),
                    batch_size: int = 500) -> float:
  """LiDAR of ``predict`` features of ``num_views`` crops of each image.

  Args:
    predict: ``predict(state, {"image": [b, H, W, C]}) -> [b, D]``.
    state: its state.
    images: [n, H, W, C] evaluation images (normalised, as the model sees).
    key: PRNG key of the crops.
    num_views: q, crops per image.
    crop_scale: RandomResizedCrop area range.
    batch_size: images per jitted call.
  """
  e = _crop_features(predict, state, images, key, num_views, crop_scale,
                     batch_size)
  return float(jax.device_get(matrix.lidar(e)))


def _crop_features(predict, state, images, key, num_views, crop_scale,
                   batch_size) -> jax.Array:
  """[n, q, D] float32 features of q random crops of each image."""
  from mi_ssl_jax.data import augment_jax  # noqa: PLC0415 (jax only)
  size = images.shape[1]

  @jax.jit
  def views_features(state, x, key):  # x [b, H, W, C] -> [b, q, D]
    feats = []
    for v in range(num_views):
      crops = augment_jax.crop_and_flip(x, jax.random.fold_in(key, v), size,
                                        scale=crop_scale)
      feats.append(predict(state, {"image": crops}))
    return jnp.stack(feats, axis=1).astype(jnp.float32)

  chunks = []
  for i in range(0, len(images), batch_size):
    x = jax.device_put(np.asarray(images[i:i + batch_size], np.float32))
    chunks.append(views_features(state, x, jax.random.fold_in(key, i)))
  return jnp.concatenate(chunks)


def save_diagnostics(diag: dict[str, Any], outdir: str, name: str,
                     title: str | None = None) -> tuple[str, str]:
  """Writes ``<outdir>/<name>.json`` and ``<outdir>/<name>.png``.

  Returns:
    (json path, png path).
  """
  json_path = os.path.join(outdir, name + ".json")
  paths.write_json(json_path, diag)
  note = "\n".join(f"{k:>15s} {diag[k]:8.3f}" for k in SCALAR_KEYS +
                   ("lidar", "dime") if k in diag)
  png_path = plots.plot_spectrum(
      {name: np.asarray(diag["spectrum"])}, os.path.join(outdir, name + ".png"),
      title=title or f"Embedding covariance spectrum ({name})",
      annotation=note)
  return json_path, png_path


class Evaluator:
  """Periodic spectrum diagnostics: ``Evaluator(predict_fn, **cfg).run(state)``.

  Config entry example::

    spectrum=dict(type="diagnostics", log_steps=1000,
                  data=dict(dataset="fashion_mnist", split="test"),
                  max_examples=4096, outdir="/path/to/workdir/diagnostics")

  Yields the scalars in :data:`SCALAR_KEYS`; with ``outdir`` it also writes
  the JSON and PNG, named ``step<step>`` when ``run(state, step=...)`` is
  given (else ``latest``).
  """

  def __init__(self, predict_fn: common.PredictFn, *, data: Any,
               max_examples: int | None = 4096, center: bool = False,
               outdir: str | None = None, batch_size: int = 256,
               mesh: jax.sharding.Mesh | None = None,
               data_fn: Callable[..., common.BatchSource] | None = None):
    self.mesh = mesh if mesh is not None else common.default_mesh()
    self.source = common.resolve_source(data, data_fn, batch_size,
                                        "diagnostics data")
    self.extract = common.FeatureExtractor(predict_fn, self.mesh)
    self.max_examples = max_examples
    self.center = center
    self.outdir = outdir

  def run(self, state: Any, step: int | None = None
          ) -> Iterator[tuple[str, float]]:
    z, _ = common.compact_on_host(*self.extract(state, self.source))
    if self.max_examples is not None:
      z = z[:self.max_examples]
    diag = representation_diagnostics(z, center=self.center)
    if self.outdir and jax.process_index() == 0:
      save_diagnostics(diag, self.outdir,
                       "latest" if step is None else f"step{step}")
    for k in SCALAR_KEYS:
      yield k, diag[k]
