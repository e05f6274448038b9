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

from mi_ssl_jax.evaluators import common, jobs, linear


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the probe; returns the result record."""
  start = time.time()
  protocol, overrides = linear.get_protocol(
      config.protocol, **jobs.set_fields(config.get("overrides")))
  mesh = jobs.job_mesh(config)
  pre = jobs.load_pretrained(config)
  predict, state = jobs.predict_fn_and_state(pre, mesh)
  name, _, train_split, eval_split = jobs.dataset_and_splits(
      config, pre)
  extract = common.FeatureExtractor(predict, mesh)
  xtr, ytr = common.compact_on_host(*extract(state, jobs.eval_source(
      config, pre, train_split, config.get("max_train_examples"))))
  xte, yte = common.compact_on_host(*extract(state, jobs.eval_source(
      config, pre, eval_split, config.get("max_eval_examples"))))
  features_s = time.time() - start
  metrics, _ = linear.train_linear_probe(
      xtr, ytr, {"eval": (xte, yte)},
      num_classes=jobs.num_classes(config, pre), protocol=protocol,
      seed=int(config.seed), mesh=mesh)
  return jobs.finish(
      workdir, protocol=protocol.name, version=protocol.version,
      metrics={"top1": metrics["eval/top1"],
               **({"top5": metrics["eval/top5"]} if "eval/top5" in metrics
                  else {}),
               "train_loss": metrics["train/loss"]},
      pre=pre, dataset=name, split=eval_split,
      recipe=dataclasses.asdict(protocol), overrides=overrides,
      extra={"train_split": train_split, "num_train": int(len(ytr)),
             "num_eval": int(len(yte)), "feature_dim": int(xtr.shape[1]),
             "feature_seconds": round(features_s, 1),
             "total_seconds": round(time.time() - start, 1)})
