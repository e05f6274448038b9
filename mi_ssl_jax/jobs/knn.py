"""kNN job: ``config.job = "knn"`` (configs/knn.py).

  python -m mi_ssl_jax.main --config=configs/knn.py \
      --config.init_from=<pretraining workdir> --workdir=<out>

The protocol ``knn`` v1 (:func:`mi_ssl_jax.evaluators.knn.knn_accuracy`) on
the frozen features of a pretrained checkpoint (or a baseline), plus the
representation diagnostics of the evaluation features and, for methods with
a ``reconstruct_fn``, the MAE reconstruction figure.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from mi_ssl_jax import config_lib, paths
from mi_ssl_jax.evaluators import common, diagnostics, plots
from mi_ssl_jax.evaluators.knn import (
  DEFAULT_KS,
  DEFAULT_TEMPERATURE,
  knn_accuracy,
)
from mi_ssl_jax.jobs import base

PROTOCOL, VERSION = "knn", 1


def run(config: Any, workdir: str) -> dict[str, Any]:
  """kNN accuracy of a pretrained checkpoint, plus its spectrum diagnostics.

  Writes ``<workdir>/eval/knn-<dataset>-<split>-step<N>.json`` and the
  representation diagnostics of the evaluation features
  (``<workdir>/eval/diagnostics-<dataset>-<split>-step<N>.{json,png}``).
  With ``config.baseline`` set, the features are that baseline's
  (:mod:`mi_ssl_jax.evaluators.baselines`) and the files are named after it.
  """
  job = base.FeatureJob.load(config)
  return evaluate_features(config, workdir, job)


def evaluate_features(config: Any, workdir: str, job: Any) -> dict[str, Any]:
  """The kNN job on already extracted features (``base.FeatureJob``)."""
  pre, name, eval_split = job.pre, job.dataset, job.eval_split
  train, test = job.train_features(), job.eval_features()
  ks = tuple(int(k) for k in config.ks)
  if not ks or min(ks) < 1:
    raise config_lib.ConfigError(
        f"config.ks must be positive integers, got {ks}")
  metrics = knn_accuracy(
      train[0], train[1], test[0], test[1],
      num_classes=base.num_classes(config, pre), train_mask=train[2],
      test_mask=test[2], ks=ks, temperature=float(config.temperature),
      query_chunk=int(config.query_chunk), mesh=job.mesh)
  z, _ = common.compact_on_host(*test)
  diag = diagnostics.representation_diagnostics(z)
  if config.get("lidar", True):
    images = job.eval_images(diagnostics.LIDAR_IMAGES)
    diag.update(diagnostics.multiview_diagnostics(
        job.predict, job.state, images, jax.random.key(int(config.seed))))
  tag = (f"step{pre.step}" if pre.features == "pretrained"
         else pre.features + (f"-seed{config.seed}"
                              if pre.features == "random_init" else ""))
  diag_name = f"diagnostics-{name}-{eval_split}-{tag}".replace(
      ":", "_").replace("/", "_")
  if jax.process_index() == 0:
    diagnostics.save_diagnostics(
        diag, paths.to_str(paths.join(workdir, "eval")), diag_name,
        title=f"{pre.config.method} {tag}: {name}:{eval_split}")
  figure = None
  if (getattr(pre.method, "reconstruct_fn", None) and
      pre.features == "pretrained" and jax.process_index() == 0):
    figure = save_reconstructions(
        pre, name, base.eval_source(config, pre, eval_split, 8),
        paths.to_str(paths.join(
            workdir, "eval", f"reconstruction-{diag_name[12:]}.png")),
        title=f"{pre.config.method} step {pre.step}: {name}:{eval_split}")
  return base.finish(
      workdir, protocol=PROTOCOL, version=VERSION, metrics=metrics, pre=pre,
      dataset=name, split=eval_split,
      recipe={"ks": list(ks), "temperature": float(config.temperature),
              "similarity": "cosine (L2-normalised features)",
              "vote": "sum of exp(s / temperature) over the k neighbours"},
      overrides={k: v for k, v in (("ks", list(ks)),
                                   ("temperature", float(config.temperature)))
                 if v != {"ks": list(DEFAULT_KS),
                          "temperature": DEFAULT_TEMPERATURE}[k]},
      extra={"train_split": job.train_split,
             "num_train": job.num_train(), "num_eval": job.num_eval(),
             "diagnostics": {k: diag[k] for k in diagnostics.SCALAR_KEYS
                             + ("lidar", "dime", "crop_mutual_information")
                             if k in diag},
             "reconstruction_png": figure,
             "feature_seconds": round(job.feature_seconds, 1),
             "total_seconds": round(job.elapsed(), 1)})


def save_reconstructions(pre: Any, dataset: str, source: Any, path: str, *,
                         num: int = 8,
                         title: str | None = None) -> str:
  """Writes the MAE figure for the first ``num`` images of ``source``.

  Uses the method's ``reconstruct_fn`` (see ``methods/base.py``) with a fixed
  masking key, and de-normalises pixels with the dataset's channel statistics
  for display.
  """
  from mi_ssl_jax import data  # noqa: PLC0415 (imports TensorFlow)

  batch = next(iter(source()))
  images = np.asarray(batch["image"])[:num]  # [n, H, W, C]
  pred, mask, patch = pre.method.reconstruct_fn(
      base.local_copy(pre.model), {"image": jax.device_put(images)},
      jax.random.key(0))
  mean, std = data.channel_stats(
      dataset, images.shape[-1], pre.config.get("data_dir") or None)
  return plots.reconstruction_grid(
      images, np.asarray(jax.device_get(mask)),
      np.asarray(jax.device_get(pred)), path, patch_size=int(patch),
      pixel_mean=mean, pixel_std=std, title=title)
