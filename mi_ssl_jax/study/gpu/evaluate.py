"""Evaluation for the GPU study: the CPU study's protocols on the device.

Features come from `evaluators.common.FeatureExtractor` (jitted, batches
split over the mesh) on the uint8 images normalised with the dataset's
statistics (what the evaluation pipeline feeds the encoder at 28×28); the
kNN is `evaluators.knn.knn_accuracy` and the probe
`evaluators.linear.train_linear_probe`, with the settings of the CPU study
(`configs/study/fmnist.py`: k, the `simclr_linear` probe on standardised
features, its epochs and batch). Baselines as there: raw pixels (the
normalised 784-d input) and random init (each family's architecture at
initialisation with the run's seed; BatchNorm statistics recomputed on
`configs/knn.py`'s `random_init_bn_batches` batches of training images,
`evaluators.baselines.recompute_batch_stats`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from mi_ssl_jax import configs, methods, platforms, train
from mi_ssl_jax.data import augment_jax, fashion_mnist
from mi_ssl_jax.evaluators import baselines, common, knn, linear


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The evaluation settings (from the CPU study's config)."""
  knn_k: int
  temperature: float
  batch_size: int  # feature extraction
  probe: linear.LinearProtocol
  probe_overrides: dict[str, Any]
  bn_batches: int  # random init: BN statistics from this many batches


def protocol(probe_epochs: int | None = None,
             probe_batch: int | None = None) -> Protocol:
  """The CPU study's protocol (`configs/study/fmnist.py`), optionally with
  fewer probe epochs or another probe batch (tests)."""
  study = configs.load("study/fmnist")
  knn_job = configs.load("knn")
  evaluate = study.evaluate
  overrides = dict(evaluate.overrides.overrides.to_dict())
  if probe_epochs is not None:
    overrides["epochs"] = int(probe_epochs)
  if probe_batch is not None:
    overrides["batch_size"] = int(probe_batch)
  probe, changed = linear.get_protocol(evaluate.protocol_name, **overrides)
  return Protocol(knn_k=int(study.knn_k), temperature=float(
      knn_job.temperature), batch_size=int(evaluate.overrides.batch_size),
                  probe=probe, probe_overrides=changed,
                  bn_batches=int(knn_job.random_init_bn_batches))


def describe(p: Protocol) -> dict[str, Any]:
  """The protocol as recorded in every result JSON."""
  return {"knn": {"k": p.knn_k, "temperature": p.temperature},
          "linear": {"protocol": p.probe.name, "version": p.probe.version,
                     "overrides": p.probe_overrides},
          "feature_batch": p.batch_size,
          "random_init_bn_batches": p.bn_batches}


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # u8 [N, 28, 28, 1]
  labels: np.ndarray  # i32 [N]


def normalised(images):
  """u8 [B, H, W, C] -> f32 (x/255 − mean)/std, Fashion-MNIST statistics."""
  mean, std = fashion_mnist.STATS
  return augment_jax.normalize(augment_jax.unit_range(images), mean, std)


def readout_fns(config, total_steps: int, readout: str):
  """(predict(state, batch) -> [B, D], init_state(), codec) of the run's
  model with the evaluation readout `readout` (the MAE family's
  `feature_pool`; "" keeps the recipe's), from `train.make_state_fns`."""
  config = config.copy_and_resolve_references()
  if readout:
    with config.unlocked():
      config.feature_pool = readout
  method = methods.get_method(config.method)
  codec, _, _, init = train.make_state_fns(
      config, method, total_steps, int(config.num_train_examples),
      int(config.num_train_examples) // int(config.batch_size),
      platforms.devices_platform(jax.devices()))

  def predict(state, batch):
    model = codec.model(state["params"], state["rest"])
    return method.predict_fn(model, {**batch, "image": normalised(
        batch["image"])})

  return predict, init, codec, method


def raw_pixels_predict(state, batch):
  del state
  return baselines.raw_pixels_predict_fn(
      None, {**batch, "image": normalised(batch["image"])})


def random_init_state(config, total_steps: int, readout: str,
                      train_split: Split, p: Protocol):
  """(predict, {"params", "rest"}, BN batches used) of the untrained model:
  its BatchNorm statistics recomputed on training images first."""
  predict, init, codec, method = readout_fns(config, total_steps, readout)
  state = jax.jit(init)()  # the train state at step 0
  model = codec.model(state["params"], state["rest"])
  b = p.batch_size

  def batches():
    for i in range(min(p.bn_batches, len(train_split.labels) // b)):
      yield {"image": normalised(train_split.images[i * b:(i + 1) * b])}

  used = baselines.recompute_batch_stats(model, method.predict_fn, batches())
  params, rest = codec.split(model)
  return predict, {"params": params, "rest": rest}, used


def evaluate(predict: Callable, state: Any, train_split: Split,
             test_split: Split, p: Protocol, seed: int) -> dict[str, float]:
  """kNN top-1 and linear-probe top-1 of `predict`'s features (percent)."""
  start = time.perf_counter()
  mesh = common.default_mesh()
  extract = common.FeatureExtractor(predict, mesh)
  source = lambda s: common.array_source(s.images, s.labels, p.batch_size)
  tr = extract(state, source(train_split))
  te = extract(state, source(test_split))
  acc = knn.knn_accuracy(tr[0], tr[1], te[0], te[1],
                         num_classes=fashion_mnist.NUM_CLASSES,
                         train_mask=tr[2], test_mask=te[2], ks=(p.knn_k,),
                         temperature=p.temperature, mesh=mesh)
  xtr, ytr = common.compact_on_host(*tr)
  xte, yte = common.compact_on_host(*te)
  probe, _ = linear.train_linear_probe(
      xtr, ytr, {"test": (xte, yte)}, num_classes=fashion_mnist.NUM_CLASSES,
      protocol=p.probe, seed=seed, mesh=mesh)
  return {"knn_top1": acc[f"top1_k{p.knn_k}"],
          "linear_top1": probe["test/top1"],
          "linear_train_loss": probe["train/loss"],
          "feature_dim": int(xtr.shape[1]),
          "eval_s": time.perf_counter() - start}


def evaluate_readouts(config, total_steps: int, state: Any,
                      readouts: Sequence[str], train_split: Split,
                      test_split: Split, p: Protocol) -> dict[str, Any]:
  """`evaluate` of a trained state for each readout."""
  state = {"params": state["params"], "rest": state["rest"]}
  out = {}
  for r in readouts:
    predict = readout_fns(config, total_steps, r)[0]
    out[r or "default"] = evaluate(predict, state, train_split, test_split,
                                   p, int(config.seed))
  return out

