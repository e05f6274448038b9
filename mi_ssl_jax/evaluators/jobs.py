"""Plumbing shared by the standalone evaluation jobs (linear_probe, knn, ...).

A job is ``python -m mi_ssl_jax.main --config=configs/<job>.py
--config.init_from=<pretraining workdir> --workdir=<out>``. It reads the
pretraining run's ``config.json`` (method, model, image size), rebuilds the
model through the method interface and restores its parameters through
``mi_ssl_jax.train.restore_model`` (which reads the checkpoint with
``mi_ssl_jax.checkpointing``), then evaluates with the data pipeline of
``mi_ssl_jax.data``. Results go to ``<workdir>/eval/*.json`` with one printed
summary line (:mod:`mi_ssl_jax.evaluators.results`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import config_lib, methods, sharding
from mi_ssl_jax.evaluators import common, results


@dataclasses.dataclass
class Pretrained:
  """A restored pretraining run."""

  method: types.ModuleType
  model: nnx.Module
  config: ml_collections.ConfigDict  # the pretraining run's config
  step: int | None  # step of the restored checkpoint
  path: str  # init_from as given


def _find_run_config(path: str) -> str:
  """config.json of the run holding ``path`` (workdir, checkpoints/, step)."""
  path = os.path.abspath(path)
  for candidate in (path, os.path.dirname(path),
                    os.path.dirname(os.path.dirname(path))):
    f = os.path.join(candidate, "config.json")
    if os.path.isfile(f):
      return f
  raise config_lib.ConfigError(
      f"config.init_from={path!r}: no config.json there or in its parents; "
      "point it at a pretraining workdir written by mi_ssl_jax.main")


def checkpoint_step(path: str) -> int | None:
  """The step ``restore_model`` loads from ``path`` (newest if a folder)."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit() and not os.path.isdir(os.path.join(path, "checkpoints")):
    return int(base)
  steps = [int(d) for d in (os.listdir(path) if os.path.isdir(path) else [])
           if d.isdigit()]
  return max(steps) if steps else None


def load_pretrained(config: ml_collections.ConfigDict,
                    model_overrides: Mapping[str, Any] | None = None
                    ) -> Pretrained:
  """Rebuilds and restores the model of the run at ``config.init_from``.

  Args:
    config: the job config (``init_from`` required).
    model_overrides: fields of the pretraining ``config.model`` to change
      before building (e.g. ``drop_path_rate`` for fine-tuning); fields the
      pretraining config does not have are left out.
  """
  path = config.get("init_from", "")
  if not path:
    raise config_lib.ConfigError(
        "set --config.init_from=<pretraining workdir> (the directory given "
        "as --workdir when pretraining)")
  with open(_find_run_config(path)) as f:
    pre = ml_collections.ConfigDict(json.load(f))
  if model_overrides and "model" in pre:
    with pre.unlocked():
      for k, v in model_overrides.items():
        if k in pre.model:
          pre.model[k] = v
  from mi_ssl_jax import train  # noqa: PLC0415 (heavy; only jobs need it)
  model = train.restore_model(pre, path)
  return Pretrained(method=methods.get_method(pre.method), model=model,
                    config=pre, step=checkpoint_step(path), path=path)


def set_fields(overrides: Any) -> dict[str, Any]:
  """The fields of an overrides ConfigDict that are set (not None)."""
  if not overrides:
    return {}
  items = overrides.to_dict() if hasattr(overrides, "to_dict") else overrides
  return {k: v for k, v in items.items() if v is not None}


def job_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  return sharding.make_mesh(tuple(config.get("mesh", (("data", -1),))),
                            config.get("mesh_axis_type", "auto"))


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Puts every leaf on every device of the mesh (params of a frozen model)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def predict_fn_and_state(pre: Pretrained, mesh: jax.sharding.Mesh
                         ) -> tuple[common.PredictFn, Any]:
  """``(predict(state, batch) -> [B, D], state)`` via the method interface."""
  graphdef, state = nnx.split(pre.model)

  def predict(state, batch):
    return pre.method.predict_fn(nnx.merge(graphdef, state), batch)

  return predict, replicate(state, mesh)


def dataset_name(config: ml_collections.ConfigDict, pre: Pretrained) -> str:
  return config.get("dataset", "") or pre.config.dataset


def dataset_and_splits(config: ml_collections.ConfigDict, pre: Pretrained
                       ) -> tuple[str, Any, str, str]:
  """``(dataset, info, train_split, eval_split)`` of an evaluation job.

  The dataset defaults to the pretraining run's; the splits to the dataset's
  own train / evaluation splits (``config.train_split`` / ``eval_split``
  override them).
  """
  from mi_ssl_jax import data  # noqa: PLC0415 (imports TensorFlow)
  name = dataset_name(config, pre)
  info = data.dataset_info(name, config.get("data_dir", "") or None)
  return (name, info, config.get("train_split", "") or info.train_split,
          config.get("eval_split", "") or info.eval_split)


def eval_source(config: ml_collections.ConfigDict, pre: Pretrained,
                split: str, max_examples: int | None = None
                ) -> common.BatchSource:
  """Centre-crop evaluation batches (pad-and-mask) of ``split``.

  ``max_examples`` caps the number of batches (quick CPU runs), rounded up to
  whole batches; every process stops after the same number of batches.
  """
  data_fn = common.make_data_fn(
      int(pre.config.image_size), int(pre.config.get("channels", 3)),
      config.get("data_dir", "") or pre.config.get("data_dir", "") or "")
  return data_fn(dataset_name(config, pre), split, int(config.batch_size),
                 max_examples or None)


def num_classes(config: ml_collections.ConfigDict, pre: Pretrained) -> int:
  n = int(config.get("num_classes", 0) or 0)
  if n:
    return n
  from mi_ssl_jax import data  # noqa: PLC0415
  n = data.dataset_info(dataset_name(config, pre),
                        config.get("data_dir", "") or None).num_classes
  if not n:
    raise config_lib.ConfigError(
        "the dataset has no labelled classes; set --config.num_classes")
  return n


def finish(workdir: str, *, protocol: str, version: int,
           metrics: Mapping[str, Any], pre: Pretrained, dataset: str,
           split: str, recipe: Mapping[str, Any] | None = None,
           overrides: Mapping[str, Any] | None = None,
           extra: Mapping[str, Any] | None = None,
           echo: Callable[[str], None] = print) -> dict[str, Any]:
  """Writes the result JSON and prints its summary line."""
  extra = {"method": pre.config.method, **dict(extra or {})}
  result = results.make_result(
      protocol=protocol, version=version, metrics=metrics, step=pre.step,
      dataset=dataset, split=split, recipe=recipe, overrides=overrides,
      checkpoint=os.path.abspath(pre.path), extra=extra)
  path = results.write_result(workdir, result)
  if jax.process_index() == 0:
    echo(results.summary_line(result))
    echo(f"result written to {path}")
  return result
