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

Results record ``features = "raw_pixels" | "random_init" | "pretrained"``.
"""

from __future__ import annotations

import types

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
