"""Linear-probe job: ``config.job = "linear_probe"`` (configs/linear_probe.py).

  python -m mi_ssl_jax.main --config=configs/linear_probe.py \
      --config.init_from=<pretraining workdir> --workdir=<out>

Restores the pretraining run's model, computes frozen features (the method's
``predict_fn``, centre crops) of the training and evaluation splits, trains
the linear head of the named protocol (``mae_linear`` or ``simclr_linear``,
see :mod:`mi_ssl_jax.evaluators.linear`) and writes
``<out>/eval/<protocol>-<dataset>-<split>-step<N>.json``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import ml_collections

from mi_ssl_jax import config_lib
from mi_ssl_jax.evaluators import common, jobs, linear


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the probe; returns the result record."""
  resolve_protocol(config)  # a bad protocol fails before any reading
  return evaluate_features(config, workdir, jobs.FeatureJob.load(config))


def resolve_protocol(config: ml_collections.ConfigDict):
  """(protocol, overrides) of `config.protocol` + `config.overrides`.

  Raises:
    ConfigError: unknown protocol or override field.
  """
  try:
    return linear.get_protocol(
        config.protocol, **jobs.set_fields(config.get("overrides")))
  except ValueError as e:
    raise config_lib.ConfigError(f"config.protocol/overrides: {e}") from None


def evaluate_features(config: ml_collections.ConfigDict, workdir: str,
                      job: jobs.FeatureJob) -> dict[str, Any]:
  """The linear-probe job on already extracted features."""
  protocol, overrides = resolve_protocol(config)
  pre = job.pre
  xtr, ytr = common.compact_on_host(*job.train_features())
  xte, yte = common.compact_on_host(*job.eval_features())
  start = time.time()
  try:
    metrics, _ = linear.train_linear_probe(
        xtr, ytr, {"eval": (xte, yte)},
        num_classes=jobs.num_classes(config, pre), protocol=protocol,
        seed=int(config.seed), mesh=job.mesh)
  except (ValueError, FloatingPointError) as e:
    raise config_lib.ConfigError(f"linear probe: {e}") from None
  return jobs.finish(
      workdir, protocol=protocol.name, version=protocol.version,
      metrics={"top1": metrics["eval/top1"],
               **({"top5": metrics["eval/top5"]} if "eval/top5" in metrics
                  else {}),
               "train_loss": metrics["train/loss"]},
      pre=pre, dataset=job.dataset, split=job.eval_split,
      recipe=dataclasses.asdict(protocol), overrides=overrides,
      extra={"train_split": job.train_split, "num_train": int(len(ytr)),
             "num_eval": int(len(yte)), "feature_dim": int(xtr.shape[1]),
             "feature_seconds": round(job.feature_seconds, 1),
             "probe_seconds": round(time.time() - start, 1),
             "total_seconds": round(job.elapsed(), 1)})
