"""Fine-tuning job: ``config.job = "finetune"`` (configs/finetune.py).

  python -m mi_ssl_jax.main --config=configs/finetune.py \
      --config.init_from=<pretraining workdir> --workdir=<out>

Fine-tunes the pretraining run's backbone with protocol ``mae_finetune`` v1
(:mod:`mi_ssl_jax.finetune`) and evaluates it. The network is the method's
``backbone(model)`` if it defines one, else the first ``VisionTransformer`` /
``ResNet`` holding trainable parameters inside the method's model (e.g. the
MAE encoder), called as ``backbone(images, key=...)`` so drop path is active.
Without either, the whole model is fine-tuned through ``predict_fn`` (no drop
path). A linear head on top is trained with it, through the trainer's loop:
the state is checkpointed in ``<workdir>/checkpoints``, metrics go to
``<workdir>/metrics.jsonl`` with the trainer's progress line, and rerunning
the command resumes.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mi_ssl_jax import config_lib
from mi_ssl_jax.finetune import classifier as ft
from mi_ssl_jax.jobs import base


def _classifier(config: Any, pre: base.Pretrained,
                protocol: ft.FinetuneProtocol, classes: int
                ) -> tuple[ft.Classifier, nnx.Module, bool]:
  """(classifier, the fine-tuned network, whether it is a backbone)."""
  backbone = ft.find_backbone(pre.method, pre.model)
  if backbone is None:
    graph_model = pre.model
    features_fn = (lambda m, images, key: pre.method.predict_fn(
        m, {"image": images}))
  else:
    graph_model, features_fn = backbone, None
  shape = (1, int(pre.config.image_size), int(pre.config.image_size),
           int(pre.config.get("channels", 3)))
  dim = int(jax.eval_shape(
      lambda: ft.Classifier.features_of(graph_model, features_fn,
                                        jnp.zeros(shape), None)).shape[-1])
  model = ft.Classifier(graph_model, dim, classes,
                        head_init_std=protocol.head_init_std,
                        rngs=nnx.Rngs(int(config.seed)),
                        features_fn=features_fn)
  return model, graph_model, backbone is not None


def _train_batches(config: Any, pre: base.Pretrained, name: str, split: str,
                   protocol: ft.FinetuneProtocol):
  """``start_step -> iterator`` of host-local training batches."""
  from mi_ssl_jax import data  # noqa: PLC0415 (imports TensorFlow)
  kwargs = dict(global_batch_size=protocol.batch_size,
                image_size=int(pre.config.image_size),
                augment=data.Augmentation(recipe="mae",
                                          crop_scale=protocol.crop_scale),
                split=split, seed=int(config.seed),
                channels=int(pre.config.get("channels", 3)))
  if config.get("data_dir", ""):
    kwargs["data_dir"] = config.data_dir
  return lambda start: data.make_train_iterator(name, start_step=start,
                                                **kwargs)


def _channel_stats(config: Any, pre: base.Pretrained, name: str):
  """(mean, std) the uint8 training batches are normalised with on device."""
  from mi_ssl_jax import data  # noqa: PLC0415 (imports TensorFlow)
  return data.channel_stats(name, int(pre.config.get("channels", 3)),
                            config.get("data_dir", "") or None)


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Fine-tunes the pretrained backbone and evaluates it (resumable)."""
  start_time = time.time()
  try:
    protocol, overrides = ft.MAE_FINETUNE.with_overrides(
        **base.set_fields(config.get("overrides")))
  except ValueError as e:
    raise config_lib.ConfigError(f"config.overrides: {e}") from None
  mesh = base.job_mesh(config)
  # Drop path is a constructor argument of the backbone: rebuild the model
  # with the protocol's rate (if its config has the field) before restoring.
  pre = base.load_pretrained(config,
                             {"drop_path_rate": protocol.drop_path_rate},
                             mesh=mesh)
  name, _, train_split, eval_split = base.dataset_and_splits(
      config, pre)
  classes = base.num_classes(config, pre)
  model, graph_model, drop_path = _classifier(config, pre, protocol, classes)
  from mi_ssl_jax import data  # noqa: PLC0415 (imports TensorFlow)
  examples = int(config.get("max_train_examples", 0) or
                 data.split_num_examples(name, train_split,
                                         config.get("data_dir", "") or None))
  steps_per_epoch = max(1, examples // protocol.batch_size)
  total = max(1, int(round(protocol.epochs * steps_per_epoch)))
  model, train_metrics = ft.train_classifier(
      model, _train_batches(config, pre, name, train_split, protocol),
      protocol=protocol, num_classes=classes, total_steps=total,
      warmup_steps=int(round(protocol.warmup_epochs * steps_per_epoch)),
      mesh=mesh, seed=int(config.seed), workdir=workdir,
      log_every=int(config.get("log_steps", 100)),
      ckpt_steps=int(config.get("ckpt_steps", 1000)),
      nonfinite=config.get("nonfinite", "stop"),
      lock_stale_seconds=config.get("lock_stale_seconds"),
      normalize=_channel_stats(config, pre, name))
  metrics = ft.evaluate(model, base.eval_source(
      config, pre, eval_split, config.get("max_eval_examples")),
      num_classes=classes, mesh=mesh)
  if np.isfinite(train_metrics["train_loss"]):  # NaN when only re-evaluated
    metrics["train_loss"] = train_metrics["train_loss"]
  return base.finish(
      workdir, protocol=protocol.name, version=protocol.version,
      metrics=metrics, pre=pre, dataset=name,
      split=eval_split, recipe=dataclasses.asdict(protocol),
      overrides=overrides,
      extra={"train_split": train_split, "steps": total,
             "backbone": type(graph_model).__name__,
             "drop_path": drop_path,
             "layer_decay_applied": bool(train_metrics["layer_decay_applied"]),
             "total_seconds": round(time.time() - start_time, 1)})
