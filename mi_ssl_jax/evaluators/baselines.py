"""Reference features that give every evaluation number its meaning.

An accuracy on its own says little: on Fashion-MNIST the raw pixels already
reach ~85 % kNN top-1, so a learned representation is only useful if it beats
that. Every evaluation job (kNN, linear probe) and the trainer's kNN evaluator
can therefore evaluate two baselines with the same protocol:

* ``raw_pixels``: the flattened input images exactly as the encoder receives
  them (the evaluation pipeline's resize / centre crop and the dataset's
  per-channel normalisation), ``[B, H·W·C]``. The kNN protocol L2-normalises
  them like any feature.
* ``random_init``: the method's own ``predict_fn`` on the model at
  initialisation (``method.init`` with the job's seed), i.e. the same
  architecture before any training. A method that does not beat this has not
  learned anything the architecture's inductive bias does not give for free.
  A network with BatchNorm gets its BN statistics recomputed on training
  images first (`recompute_batch_stats`): with the initial running
  statistics (mean 0, variance 1) the features would be those of
  un-normalised activations, not of the architecture as it is used.

Results record ``features = "raw_pixels" | "random_init" | "pretrained"``.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import Any

import jax
from flax import nnx

from mi_ssl_jax.methods import base as method_base

BASELINES = ("raw_pixels", "random_init")
PRETRAINED = "pretrained"


def check_baseline(name: str) -> str:
  """Returns ``name`` ("" for a pretrained checkpoint) or raises ValueError."""
  if name and name not in BASELINES:
    raise ValueError(f"unknown baseline {name!r}; use one of "
                     f"{', '.join(BASELINES)} (or '' for the checkpoint)")
  return name


def features_kind(baseline: str) -> str:
  """The ``features`` field of a result: the baseline name or "pretrained"."""
  return baseline or PRETRAINED


class RawPixels(nnx.Module):
  """A parameter-free "model" whose features are the input pixels."""


def raw_pixels_predict_fn(model: nnx.Module, batch: method_base.Batch
                          ) -> jax.Array:
  """Flattened normalised input pixels: [B, H, W, C] -> [B, H·W·C]."""
  del model
  images = batch["image"]
  return images.reshape(images.shape[0], -1)


# The method-interface view of raw pixels (evaluation only: no loss).
RAW_PIXELS_METHOD = types.SimpleNamespace(
    __name__="raw_pixels", predict_fn=raw_pixels_predict_fn,
    INPUT="single_view")


def random_init_model(method: types.ModuleType, config, seed: int
                      ) -> nnx.Module:
  """``method.init(config)`` with ``nnx.Rngs(seed)``: the untrained model."""
  return method.init(config, nnx.Rngs(seed))


def recompute_batch_stats(model: nnx.Module,
                          predict_fn: Callable[[nnx.Module, Any], Any],
                          batches: Iterable[Any]) -> int:
  """Sets every BatchNorm's running mean / variance of ``model`` to the
  average of its batch statistics over ``batches`` ("precise BN": Wu &
  Johnson 2021, "Rethinking 'Batch' in BatchNorm", §3.1; fvcore
  ``nn/precise_bn.py``), by calling ``predict_fn`` with the layers in
  batch-statistics mode and momentum i/(i+1) at batch i (running =
  m·running + (1−m)·batch, so the running value is the mean over batches).

  Only layers of :class:`mi_ssl_jax.models.norm.BatchNorm` (the models'
  BatchNorm) are affected; a model without any is left as is. Scale and bias
  stay as initialised (e.g. a zero-initialised last scale of a residual
  block keeps that branch at 0).

  Returns:
    the number of batches used (0 when the model has no BatchNorm).
  """
  from mi_ssl_jax.models import norm  # noqa: PLC0415
  layers = [m for _, m in nnx.iter_graph(model)
            if isinstance(m, norm.BatchNorm)]
  if not layers:
    return 0
  momenta = [m.momentum for m in layers]
  count = 0
  try:
    for m in layers:
      m.collect_stats = True
    for i, batch in enumerate(batches):
      for m in layers:
        m.momentum = i / (i + 1)
      jax.block_until_ready(predict_fn(model, batch))
      count = i + 1
  finally:
    for m, momentum in zip(layers, momenta, strict=True):
      m.momentum = momentum
      m.collect_stats = False
  return count
