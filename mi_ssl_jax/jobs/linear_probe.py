"""Linear-probe job: ``config.job = "linear_probe"`` (configs/linear_probe.py).

  python -m mi_ssl_jax.main --config=configs/linear_probe.py \
      --config.init_from=<pretraining workdir> --workdir=<out>

Restores the pretraining run's model, computes frozen features (the method's
``predict_fn``, centre crops) of the training and evaluation splits, trains
the linear head of the named protocol (``mae_linear`` or ``simclr_linear``,
see :mod:`mi_ssl_jax.evaluators.linear`) through the trainer's loop and
writes ``<out>/eval/<protocol>-<dataset>-<split>-step<N>.json``.

The head trains in its own run directory,
``<out>/probe/<result name>-<recipe hash>/`` (checkpoints, ``metrics.jsonl``;
the progress line on the console): rerunning the same command resumes it
(the features are extracted again, deterministically), while any change of
recipe, features or data trains a fresh head in another directory. It is a
sub-directory so that ``<out>`` may be the pretraining workdir itself (the
study runner evaluates runs in place).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

import ml_collections

from mi_ssl_jax import config_lib, paths
from mi_ssl_jax.evaluators import common, linear
from mi_ssl_jax.jobs import base, results

PROBE_DIR = "probe"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the probe; returns the result record."""
  resolve_protocol(config)  # a bad protocol fails before any reading
  return evaluate_features(config, workdir, base.FeatureJob.load(config))


def resolve_protocol(config: ml_collections.ConfigDict):
  """(protocol, overrides) of `config.protocol` + `config.overrides`.

  Raises:
    ConfigError: unknown protocol or override field.
  """
  try:
    return linear.get_protocol(
        config.protocol, **base.set_fields(config.get("overrides")))
  except ValueError as e:
    raise config_lib.ConfigError(f"config.protocol/overrides: {e}") from None


def probe_dir(workdir: str, config: ml_collections.ConfigDict,
              job: base.FeatureJob, protocol: linear.LinearProtocol,
              num_train: int, dim: int) -> str:
  """``<workdir>/probe/<result name>-<hash>``: one directory per probe
  (local or gs://, :mod:`mi_ssl_jax.paths`).

  The hash (8 hex digits of SHA-1) covers everything the head's training
  depends on: the recipe, the features (checkpoint, step, baseline, readout
  overrides), the data (dataset, splits, example caps, N, D) and the seed.
  """
  pre = job.pre
  name = os.path.splitext(os.path.basename(results.result_path(workdir, {
      "protocol": protocol.name, "dataset": job.dataset,
      "split": job.eval_split, "checkpoint_step": pre.step,
      "features": pre.features, "seed": pre.seed})))[0]
  identity = {
      "recipe": dataclasses.asdict(protocol),
      "checkpoint": (pre.path if not pre.path or paths.is_remote(pre.path)
                     else os.path.abspath(pre.path)),
      "step": pre.step, "features": pre.features,
      "pretrained_overrides": base.set_fields(
          config.get("pretrained_overrides")),
      "dataset": job.dataset, "train_split": job.train_split,
      "max_train_examples": config.get("max_train_examples"),
      "num_train": num_train, "feature_dim": dim,
      "num_classes": base.num_classes(config, pre),
      "seed": int(config.seed)}
  digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str)
                        .encode()).hexdigest()[:8]
  return paths.to_str(paths.join(workdir, PROBE_DIR, f"{name}-{digest}"))


def evaluate_features(config: ml_collections.ConfigDict, workdir: str,
                      job: base.FeatureJob) -> dict[str, Any]:
  """The linear-probe job on already extracted features."""
  protocol, overrides = resolve_protocol(config)
  pre = job.pre
  xtr, ytr = common.compact_on_host(*job.train_features())
  xte, yte = common.compact_on_host(*job.eval_features())
  start = time.time()
  try:
    metrics, _ = linear.train_linear_probe(
        xtr, ytr, {"eval": (xte, yte)},
        num_classes=base.num_classes(config, pre), protocol=protocol,
        seed=int(config.seed), mesh=job.mesh,
        workdir=probe_dir(workdir, config, job, protocol, len(ytr),
                          int(xtr.shape[1])),
        log_steps=config.get("log_steps") or None,
        ckpt_steps=int(config.get("ckpt_steps") or 1000),
        nonfinite=config.get("nonfinite", "stop"),
        lock_stale_seconds=config.get("lock_stale_seconds"))
  except ValueError as e:
    raise config_lib.ConfigError(f"linear probe: {e}") from None
  return base.finish(
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
