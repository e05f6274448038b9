"""Plumbing shared by the standalone evaluation jobs (linear_probe, knn, ...).

A job is ``python -m mi_ssl_jax.main --config=configs/<job>.py
--config.init_from=<pretraining workdir> --workdir=<out>``. It reads the
pretraining run's ``config.json`` (method, model, image size), rebuilds the
model through the method interface and restores its parameters through
``mi_ssl_jax.model_state.restore_model`` (which reads the checkpoint with
``mi_ssl_jax.checkpointing``), then evaluates with the data pipeline of
``mi_ssl_jax.data``. Results go to ``<workdir>/eval/*.json`` with one printed
summary line (:mod:`mi_ssl_jax.jobs.results`).
"""

from __future__ import annotations

import dataclasses
import os
import time
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import (
    config_lib,
    interop,
    methods,
    model_state,
    paths,
    sharding,
)
from mi_ssl_jax.evaluators import baselines, common
from mi_ssl_jax.jobs import results, weights


@dataclasses.dataclass
class Pretrained:
  """A restored pretraining run."""

  method: types.ModuleType
  model: nnx.Module
  config: ml_collections.ConfigDict  # the pretraining run's config
  step: int | None  # step of the restored checkpoint
  path: str  # init_from as given
  features: str = baselines.PRETRAINED  # or a baseline name
  seed: int | None = None  # initialisation seed of a random_init baseline
  bn_stat_batches: int = 0  # random_init: batches its BN statistics took


def _find_run_config(path: str) -> str:
  """config.json of the run holding ``path`` (workdir, checkpoints/, step).

  ``path`` may be local or remote (gs://...; :mod:`mi_ssl_jax.paths`).
  """
  p = paths.as_path(path)
  for candidate in (p, p.parent, p.parent.parent):
    f = candidate / "config.json"
    if f.is_file():
      return os.fspath(f)
  raise config_lib.ConfigError(
      f"config.init_from={os.fspath(p)!r}: no config.json there or in its "
      "parents; point it at a pretraining workdir written by mi_ssl_jax.main")


def checkpoint_step(path: str) -> int | None:
  """The step ``restore_model`` loads from ``path`` (newest if a folder)."""
  p = paths.as_path(path)
  if (p / "checkpoints").is_dir():
    p = p / "checkpoints"
  if p.name.isdigit() and not (p / "checkpoints").is_dir():
    return int(p.name)
  steps = [int(d) for d in paths.listdir(p) if d.isdigit()]
  return max(steps) if steps else None


def _raw_pixels(config: ml_collections.ConfigDict, path: str) -> Pretrained:
  """The ``raw_pixels`` baseline: the inputs of the run at ``path`` (if
  given, same image size, channels and data) or of ``config.dataset``."""
  if path:
    run = paths.read_json(_find_run_config(path))
  else:
    from mi_ssl_jax import data  # noqa: PLC0415 (imports TensorFlow)
    name = config.get("dataset", "") or "fashion_mnist"
    try:
      shape = data.dataset_info(name, config.get("data_dir") or None
                                ).image_shape
    except data.DatasetError as e:
      raise config_lib.ConfigError(str(e)) from e
    if shape is None:
      raise config_lib.ConfigError(
          f"baseline=raw_pixels: {name} images vary in size; set "
          "--config.init_from=<run> to use that run's image size")
    run = {"dataset": name, "image_size": shape[0], "channels": shape[2],
           "data_dir": config.get("data_dir", "")}
  pre = ml_collections.ConfigDict(dict(
      method="raw_pixels", dataset=run["dataset"],
      image_size=int(run["image_size"]), channels=int(run.get("channels", 3)),
      data_dir=run.get("data_dir", "") or ""))
  return Pretrained(method=baselines.RAW_PIXELS_METHOD,
                    model=baselines.RawPixels(), config=pre, step=None,
                    path=path, features="raw_pixels")


def load_pretrained(config: ml_collections.ConfigDict,
                    model_overrides: Mapping[str, Any] | None = None,
                    mesh: jax.sharding.Mesh | None = None) -> Pretrained:
  """Rebuilds and restores the model of the run at ``config.init_from``.

  With ``config.baseline`` set (see :mod:`mi_ssl_jax.evaluators.baselines`)
  the features are a baseline instead: ``raw_pixels`` (``init_from``
  optional: it only fixes the inputs) or ``random_init`` (the run's model at
  initialisation with ``config.seed``; no checkpoint is read).

  Args:
    config: the job config (``init_from`` required unless
      ``baseline="raw_pixels"``).
    model_overrides: fields of the pretraining ``config.model`` to change
      before building (e.g. ``drop_path_rate`` for fine-tuning); fields the
      pretraining config does not have are left out.
    mesh: the job's mesh (default ``job_mesh(config)``); the model's arrays
      are restored (or initialised) replicated over it, on every process.
  """
  path = config.get("init_from", "")
  try:
    baseline = baselines.check_baseline(config.get("baseline", ""))
  except ValueError as e:
    raise config_lib.ConfigError(f"config.baseline: {e}") from None
  if interop.parse_spec(path)[0]:
    # PyTorch weights ("mae:<file>", "timm:<file>"): the bare backbone.
    if baseline:
      raise config_lib.ConfigError(
          f"config.baseline={baseline!r} needs a pretraining run; "
          f"config.init_from={path!r} holds imported weights")
    return weights.load_imported(
        config, model_overrides, mesh if mesh is not None else
        job_mesh(config))
  if baseline == "raw_pixels":
    return _raw_pixels(config, path)
  if not path:
    raise config_lib.ConfigError(
        "set --config.init_from=<pretraining workdir> (the directory given "
        "as --workdir when pretraining)")
  # A run written before a field was renamed (config_lib.RENAMED_FIELDS,
  # e.g. `dtype` -> `compute_dtype`) is read under the new names.
  pre = ml_collections.ConfigDict(config_lib.upgrade_renamed_fields(
      paths.read_json(_find_run_config(path))))
  if model_overrides and "model" in pre:
    with pre.unlocked():
      for k, v in model_overrides.items():
        if k in pre.model:
          pre.model[k] = v
  for k, v in set_fields(config.get("pretrained_overrides")).items():
    if k not in pre:
      raise config_lib.ConfigError(
          f"config.pretrained_overrides.{k}: the pretraining config has no "
          f"field {k!r}")
    with pre.unlocked():
      pre[k] = v
  repl = sharding.replicated(mesh if mesh is not None else job_mesh(config))
  if baseline == "random_init":
    with jax.transfer_guard("allow"):
      model = model_state.initial_model(pre, repl, int(config.get("seed", 0)))
    return Pretrained(method=methods.get_method(pre.method), model=model,
                      config=pre, step=0, path=path, features=baseline,
                      seed=int(config.get("seed", 0)))
  model = model_state.restore_model(pre, path, repl)
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


def local_copy(model: nnx.Module) -> nnx.Module:
  """``model`` with each (replicated) array on this process's first device.

  For work that one process does alone (process 0's figures): a
  computation over arrays that span other hosts' devices would wait for
  those hosts.
  """
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.tree.map(
      lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a,
      state))


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


def recompute_random_init_stats(config: ml_collections.ConfigDict,
                                pre: Pretrained) -> None:
  """BN statistics of a random-init model from the training split:
  ``config.random_init_bn_batches`` full batches of ``config.batch_size``
  centre-cropped training images (default 10; 0 keeps the initial
  statistics); `baselines.recompute_batch_stats`. Sets
  ``pre.bn_stat_batches``."""
  count = int(config.get("random_init_bn_batches", 10) or 0)
  if count <= 0:
    return
  _, _, train_split, _ = dataset_and_splits(config, pre)
  source = eval_source(config, pre, train_split,
                       count * int(config.batch_size))

  def full_batches():
    for batch in source():
      if np.asarray(batch[common.MASK_KEY], bool).all():  # no padding
        yield {k: v for k, v in batch.items() if k != common.MASK_KEY}

  with jax.transfer_guard("allow"):
    pre.bn_stat_batches = baselines.recompute_batch_stats(
        pre.model, pre.method.predict_fn, full_batches())


class FeatureJob:
  """A loaded model (or baseline) and its lazily extracted features.

  Shared by the kNN, linear-probe and ``evaluate`` jobs so that running
  several protocols extracts the features of each split only once.
  """

  def __init__(self, config: ml_collections.ConfigDict, pre: Pretrained,
               mesh: jax.sharding.Mesh, start: float):
    self.config, self.pre, self.mesh, self.start = config, pre, mesh, start
    self.predict, self.state = predict_fn_and_state(pre, mesh)
    self.extract = common.FeatureExtractor(self.predict, mesh)
    (self.dataset, _, self.train_split,
     self.eval_split) = dataset_and_splits(config, pre)
    self._cache: dict[str, Any] = {}
    self.feature_seconds = 0.0

  @classmethod
  def load(cls, config: ml_collections.ConfigDict) -> FeatureJob:
    start = time.time()
    mesh = job_mesh(config)
    pre = load_pretrained(config, mesh=mesh)
    if pre.features == "random_init":
      recompute_random_init_stats(config, pre)
    return cls(config, pre, mesh, start)

  def _features(self, split: str, limit_key: str):
    if split not in self._cache:
      t = time.time()
      self._cache[split] = self.extract(self.state, eval_source(
          self.config, self.pre, split, self.config.get(limit_key)))
      self.feature_seconds += time.time() - t
    return self._cache[split]

  def train_features(self):
    """(features [N, D], labels [N], mask [N]) of the training split."""
    return self._features(self.train_split, "max_train_examples")

  def eval_features(self):
    """(features [M, D], labels [M], mask [M]) of the evaluation split."""
    return self._features(self.eval_split, "max_eval_examples")

  def eval_images(self, num: int) -> np.ndarray:
    """The first ``num`` images [n, H, W, C] of the evaluation split, as the
    model sees them: the same array on every process (n < num only when the
    split is smaller).

    Each process reads the start of its own share; on several processes
    the shares are then sent, in process order (which is the split's
    order), from as many processes as it takes to reach ``num`` (usually
    process 0 alone), so a multi-host job sees the images of a 1-process
    job.
    """
    count = jax.process_count()
    out, have = [], 0
    for batch in eval_source(self.config, self.pre, self.eval_split,
                             num * count)():
      keep = np.asarray(batch[common.MASK_KEY], bool)
      out.append(np.asarray(batch["image"], np.float32)[keep])
      have += int(keep.sum())
      if have >= num:
        break
    size = int(self.pre.config.image_size)
    shape = (size, size, int(self.pre.config.get("channels", 3)))
    local = np.concatenate(out)[:num] if out else np.zeros((0, *shape),
                                                           np.float32)
    if count == 1:
      return local
    counts = multihost_utils.process_allgather(np.int32(len(local)))  # [P]
    padded = np.zeros((num, *shape), np.float32)  # [num, H, W, C]
    padded[:len(local)] = local
    shares, have = [], 0
    for p in range(count):
      if have >= num:
        break
      share = multihost_utils.broadcast_one_to_all(
          padded, is_source=jax.process_index() == p)
      shares.append(np.asarray(share)[:int(counts[p])])
      have += int(counts[p])
    return np.concatenate(shares)[:num]

  def num_train(self) -> int:
    return int(common.host_gather(self.train_features()[2]).sum())

  def num_eval(self) -> int:
    return int(common.host_gather(self.eval_features()[2]).sum())

  def elapsed(self) -> float:
    return time.time() - self.start


def finish(workdir: str, *, protocol: str, version: int,
           metrics: Mapping[str, Any], pre: Pretrained, dataset: str,
           split: str, recipe: Mapping[str, Any] | None = None,
           overrides: Mapping[str, Any] | None = None,
           extra: Mapping[str, Any] | None = None,
           echo: Callable[[str], None] = print) -> dict[str, Any]:
  """Writes the result JSON and prints its summary line."""
  extra = {"method": pre.config.method, **dict(extra or {})}
  if pre.bn_stat_batches:
    extra["bn_stat_batches"] = pre.bn_stat_batches
  result = results.make_result(
      protocol=protocol, version=version, metrics=metrics, step=pre.step,
      dataset=dataset, split=split, recipe=recipe, overrides=overrides,
      checkpoint=paths.to_str(pre.path) if pre.path else None,
      extra=extra, features=pre.features, seed=pre.seed)
  path = results.write_result(workdir, result)
  if jax.process_index() == 0:
    echo(results.summary_line(result))
    echo(f"result written to {path}")
  return result
