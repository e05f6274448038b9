"""The evaluator protocol, its registry, and feature extraction over a mesh.

An evaluator follows big_vision's protocol (docs/design.md §1.1, §8.9)::

  evaluator = module.Evaluator(predict_fn, **cfg)
  for name, value in evaluator.run(state):
    ...

``predict_fn(state, batch) -> features [B, D]`` is supplied by the trainer (it
binds the method's ``predict_fn`` to the model graph), ``state`` is whatever
the trainer passes (typically the pure NNX state of the model). Evaluators are
built from ``config.evals``, a dict of ``{name: {type, log_steps, ...}}``;
``type`` names a module ``mi_ssl_jax.evaluators.<type>`` that defines
``Evaluator``.

Data reaches an evaluator as a *batch source*: a zero-argument callable that
returns an iterable of HOST-LOCAL numpy batches ``{"image": [b, ...], "label":
int [b], "_mask": bool [b]}`` (the pad-and-mask evaluation format of
``mi_ssl_jax.data``). A batch without ``_mask`` or shorter than the others is
padded here, so every batch has one shape and the step compiles once.

Everything in this module is mesh-aware (only ``train.py`` and the evaluators
know the mesh, docs/design.md §8.2): features are computed under ``jax.jit``
with the batch split over every mesh axis (the trainer's convention), and stay
on device as global
sharded arrays until an evaluator decides otherwise.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from mi_ssl_jax import sharding

Batch = Mapping[str, Any]
BatchSource = Callable[[], Iterable[Batch]]
PredictFn = Callable[[Any, Batch], jax.Array]
MASK_KEY = "_mask"
LABEL_KEY = "label"
DATA_AXIS = "data"


class Evaluator(Protocol):
  """What every ``mi_ssl_jax.evaluators.<type>.Evaluator`` implements."""

  def run(self, state: Any, step: int | None = None
          ) -> Iterator[tuple[str, Any]]:
    """Evaluates ``state`` and yields ``(metric_name, value)`` pairs.

    ``step`` (optional) is the training step, used by evaluators that write
    files (diagnostics); big_vision's ``run(state)`` calls work unchanged.
    """
    ...


# ----------------------------------------------------------------------------
# Mesh and batches.
# ----------------------------------------------------------------------------


def default_mesh(devices: Any = None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over ``devices`` (default: all devices)."""
  return sharding.make_mesh(((DATA_AXIS, -1),), devices=devices)


batch_spec = sharding.batch_spec  # one home: mi_ssl_jax/sharding.py


def data_size(mesh: jax.sharding.Mesh) -> int:
  """Number of shards of the batch dimension (all devices of the mesh)."""
  return int(mesh.size)


def pad_batch(batch: Batch, size: int) -> dict[str, np.ndarray]:
  """Pads every leaf of a host-local batch to ``size`` rows; adds ``_mask``.

  Padding rows repeat zeros and carry ``_mask = False``, so metrics that
  weight by the mask are unchanged (big_vision ``input_pipeline`` pads the
  same way).

  Args:
    batch: dict of arrays with a common leading dimension b <= size.
    size: target leading dimension.

  Returns:
    A new dict with every array of leading dimension ``size``.
  """
  batch = {k: np.asarray(v) for k, v in batch.items()}
  b = len(next(iter(batch.values())))
  if MASK_KEY not in batch:
    batch[MASK_KEY] = np.ones([b], bool)
  if b > size:
    raise ValueError(f"batch of {b} rows is larger than the padded size {size}")
  if b == size:
    return batch
  out = {}
  for k, v in batch.items():
    pad = np.zeros((size - b,) + v.shape[1:], v.dtype)
    out[k] = np.concatenate([v, pad], axis=0)
  return out


def to_global(batch: Batch, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Host-local batch -> global ``jax.Array``s, batch split over the mesh
  (`sharding.global_batch`; multi-host safe)."""
  return sharding.global_batch(dict(batch), sharding.batch_sharding(mesh))


def host_gather(x: jax.Array) -> np.ndarray:
  """Global array -> full numpy array on every host."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


# ----------------------------------------------------------------------------
# Feature extraction.
# ----------------------------------------------------------------------------


class FeatureExtractor:
  """Runs ``predict_fn`` over a batch source; keeps the results on device.

  The jitted step is built once per extractor, so calling :meth:`__call__` at
  every evaluation reuses the compiled function (fixed batch shape through
  :func:`pad_batch`).
  """

  def __init__(self, predict_fn: PredictFn, mesh: jax.sharding.Mesh | None,
               label_key: str = LABEL_KEY):
    self.mesh = mesh if mesh is not None else default_mesh()
    self.label_key = label_key
    shard = NamedSharding(self.mesh, batch_spec(self.mesh))

    def step(state, batch):
      feats = predict_fn(state, batch)  # [B, D]
      if feats.ndim != 2:
        raise ValueError(
            f"predict_fn must return features of shape [batch, dim], got "
            f"{feats.shape}; pool or flatten inside the method's predict_fn")
      # Matrix math and similarities run in float32 even for bf16 backbones.
      return jnp.asarray(feats, jnp.promote_types(feats.dtype, jnp.float32))

    self._shard = shard
    self._step = jax.jit(step, out_shardings=shard)
    self._concat = jax.jit(lambda xs: jnp.concatenate(xs, axis=0),
                           out_shardings=shard)
    self._ordered: dict[tuple[int, int], Any] = {}  # (batches, B) -> jit

  def __call__(self, state: Any, source: BatchSource
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Features of every example in ``source``.

    Args:
      state: model state passed to ``predict_fn``.
      source: batch source (see module docstring).

    Returns:
      ``(features [N, D] float32, labels [N] int32, mask [N] bool)``, global
      arrays batch-sharded over the mesh, rows in the source's order
      (`dataset_order`: the same rows, in the same order, on any number of
      processes). Rows with ``mask == False`` are padding.
    """
    ndata = data_size(self.mesh)
    feats, labels, masks = [], [], []
    size = None
    for batch in source():
      b = len(np.asarray(batch[self.label_key]))
      if size is None:
        # Local rows per process, rounded up so the global batch splits evenly
        # over the data axis.
        local = ndata // jax.process_count() or 1
        size = -(-b // local) * local
      batch = to_global(pad_batch(batch, size), self.mesh)
      feats.append(self._step(state, batch))
      labels.append(batch[self.label_key].astype(jnp.int32))
      masks.append(batch[MASK_KEY].astype(bool))
    if not feats:
      raise ValueError("the evaluation data source yielded no batches; check "
                       "the dataset name and split in config.evals")
    concat = self._concat
    if jax.process_count() > 1:  # rows back in the split's order
      key = (len(feats), int(feats[0].shape[0]))
      if key not in self._ordered:
        order = dataset_order(key[0], sharding.row_processes(self._shard,
                                                             key[1]))
        self._ordered[key] = jax.jit(
            lambda xs: jnp.take(jnp.concatenate(xs, axis=0), order, axis=0),
            out_shardings=self._shard)
      concat = self._ordered[key]
    return concat(feats), concat(labels), concat(masks)


class Baselines:
  """The evaluation baselines of one periodic evaluator, computed once.

  ``fns``: name -> ``(predict_fn, state_fn)`` (the trainer supplies them, see
  ``mi_ssl_jax.evaluators.baselines``); ``names``: those the config entry
  asked for (``baselines=("raw_pixels", "random_init")``). ``results(fn)``
  runs ``fn(extractor, state) -> {metric: value}`` for each baseline the
  first time and then returns the cached ``{"<name>/<metric>": value}``:
  baseline features do not change during training.
  """

  def __init__(self, names, fns, mesh: jax.sharding.Mesh):
    self.names = tuple(names or ())
    fns = dict(fns or {})
    missing = [b for b in self.names if b not in fns]
    if missing:
      raise ValueError(f"baselines {missing}: unknown here; available: "
                       f"{sorted(fns) or 'none'}")
    self.fns = {b: fns[b] for b in self.names}
    self.mesh = mesh
    self._cache: dict[str, float] | None = None

  def results(self, evaluate: Callable[[FeatureExtractor, Any],
                                       Mapping[str, float]]
              ) -> dict[str, float]:
    if self._cache is None:
      self._cache = {}
      for name, (predict, state_fn) in self.fns.items():
        extract = FeatureExtractor(predict, self.mesh)
        for k, v in evaluate(extract, state_fn()).items():
          self._cache[f"{name}/{k}"] = v
    return dict(self._cache)


def dataset_order(num_batches: int, owner: np.ndarray) -> np.ndarray:
  """Positions that put stacked global batches back in the split's order.

  Each process reads its own contiguous, ordered share of an evaluation
  split, process p's share before process p + 1's (`mi_ssl_jax.data`), and
  its local batch fills the rows of a global batch that `owner` gives it
  (`sharding.row_processes`). Taking the rows process by process, batch by
  batch, restores the split's order, each process's padding rows at the
  end of its share: after dropping masked rows, features, labels and masks
  are the same arrays on 1 or on N processes (a linear probe shuffles them
  by position, so their order matters).

  Args:
    num_batches: how many global batches are stacked.
    owner: [B] the process of each row of one global batch.

  Returns:
    [num_batches · B] int32 row positions (a permutation).
  """
  b = len(owner)
  rows = [np.flatnonzero(owner == p) for p in range(int(owner.max()) + 1)]
  return np.concatenate([i * b + r for r in rows
                         for i in range(num_batches)]).astype(np.int32)


def compact_on_host(feats: jax.Array, labels: jax.Array, mask: jax.Array
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Gathers features to the host and drops padding rows."""
  mask = host_gather(mask).astype(bool)
  return host_gather(feats)[mask], host_gather(labels)[mask]


def array_source(images: np.ndarray, labels: np.ndarray, batch_size: int,
                 image_key: str = "image") -> BatchSource:
  """A batch source over in-memory arrays (tests, notebooks, small data).

  The last batch is shorter; :class:`FeatureExtractor` pads it and masks the
  padding. In multi-host runs each process must pass its own shard.
  """
  images, labels = np.asarray(images), np.asarray(labels)

  def source():
    for i in range(0, len(labels), batch_size):
      yield {image_key: images[i:i + batch_size],
             LABEL_KEY: labels[i:i + batch_size]}

  return source


def identity_predict_fn(state: Any, batch: Batch) -> jax.Array:
  """``predict_fn`` for precomputed features stored under ``batch["image"]``."""
  del state
  return batch["image"]


# ----------------------------------------------------------------------------
# Registry: evaluators from config.evals.
# ----------------------------------------------------------------------------

_GENERIC_KEYS = ("type", "prefix", "log_steps", "log_epochs", "log_examples",
                 "log_percent", "skip_first")


def from_config(
    config: Any,
    predict_fn: PredictFn | Mapping[str, PredictFn],
    data_fn: Callable[..., BatchSource] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    get_steps: Callable[[str, Mapping[str, Any]], int | None] | None = None,
    baseline_fns: Mapping[str, tuple[PredictFn, Callable[[], Any]]]
    | None = None,
) -> list[tuple[str, Evaluator, int | None, str]]:
  """Builds the evaluators listed in ``config.evals`` (big_vision semantics).

  Each entry ``config.evals.<name> = dict(type=..., log_steps=..., **kw)``
  becomes ``mi_ssl_jax.evaluators.<type>.Evaluator(predict_fn, **kw)``.
  ``pred`` (optional) selects one of several predict functions.

  Args:
    config: the run config (``ConfigDict`` or dict) with an ``evals`` field.
    predict_fn: one predict function, or a dict of them selected by ``pred``.
    data_fn: ``data_fn(dataset=..., split=..., batch_size=...)`` returning a
      batch source, for evaluators that load data by name (default:
      :func:`make_data_fn` with the config's ``image_size``, ``channels``
      and ``data_dir``).
    mesh: the trainer's mesh (default: all devices on ``"data"``).
    get_steps: resolves the logging period from the entry (default: its
      ``log_steps``); the trainer passes its ``config_lib.steps``.
    baseline_fns: name -> ``(predict_fn, state_fn)`` of the evaluation
      baselines (``mi_ssl_jax.evaluators.baselines``), given to entries that
      list ``baselines=(...)``.

  Returns:
    A list of ``(name, evaluator, log_steps, prefix)``.
  """
  specs = config.get("evals", None) or {}
  if hasattr(specs, "to_dict"):
    specs = specs.to_dict()
  get_steps = get_steps or (lambda key, cfg: cfg.get(f"{key}_steps"))
  if data_fn is None and config.get("image_size", None):
    data_fn = make_data_fn(config.image_size, config.get("channels", 3),
                           config.get("data_dir", "") or "")
  evaluators = []
  for name, cfg in specs.items():
    cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    kind = cfg.get("type", name)
    prefix = cfg.get("prefix", f"{name}/")
    log_steps = get_steps("log", cfg)
    pred_key = cfg.pop("pred", None)
    kwargs = {k: v for k, v in cfg.items() if k not in _GENERIC_KEYS}
    try:
      module = importlib.import_module(f"mi_ssl_jax.evaluators.{kind}")
    except ModuleNotFoundError as e:
      raise ValueError(
          f"config.evals.{name}: unknown evaluator type '{kind}'; use one of "
          f"{', '.join(EVALUATOR_TYPES)}") from e
    if isinstance(predict_fn, Mapping):
      key = pred_key or "predict"
      if key not in predict_fn:
        raise ValueError(f"config.evals.{name}: unknown pred '{key}'; "
                         f"available: {', '.join(predict_fn)}")
      fn = predict_fn[key]
    else:
      fn = predict_fn
    if kwargs.get("baselines"):
      kwargs["baseline_fns"] = dict(baseline_fns or {})
    evaluator = module.Evaluator(fn, mesh=mesh, data_fn=data_fn, **kwargs)
    evaluators.append((name, evaluator, log_steps, prefix))
  return evaluators


EVALUATOR_TYPES = ("knn", "fewshot", "linear", "diagnostics")


def make_data_fn(image_size: int, channels: int = 3, data_dir: str = "",
                 **eval_kwargs: Any) -> Callable[..., BatchSource]:
  """``data_fn(dataset, split, batch_size)`` over ``mi_ssl_jax.data``.

  Each source is the pad-and-mask evaluation pipeline
  (``mi_ssl_jax.data.make_eval_iterator``: resize + centre crop, the
  dataset's normalisation), built once and re-iterated at every evaluation.

  Args:
    image_size: side of the model's input images.
    channels: channels the model expects.
    data_dir: TFDS / IDX data directory ("" = default locations).
    **eval_kwargs: more arguments of ``make_eval_iterator``.
  """

  def data_fn(dataset: str, split: str | None = None, batch_size: int = 256,
              max_examples: int | None = None, **kw: Any) -> BatchSource:
    from mi_ssl_jax import data  # noqa: PLC0415 (imports TensorFlow)
    args = dict(global_batch_size=int(batch_size), image_size=int(image_size),
                split=split or None, channels=int(channels),
                **eval_kwargs, **kw)
    if data_dir:
      args["data_dir"] = data_dir
    iterator = data.make_eval_iterator(dataset, **args)
    limit = None if not max_examples else -(-int(max_examples) //
                                             int(batch_size))

    def source():
      for i, batch in enumerate(iterator):
        if limit is not None and i >= limit:
          return
        yield batch

    return source

  return data_fn


def resolve_source(data: Any, data_fn: Callable[..., BatchSource] | None,
                   batch_size: int, what: str) -> BatchSource:
  """A batch source from a callable, or from a ``{dataset, split}`` spec.

  Args:
    data: a batch source (callable), or a dict with ``dataset`` and ``split``
      (and optional ``batch_size``) resolved through ``data_fn``.
    data_fn: the trainer's loader for evaluation data.
    batch_size: default global evaluation batch size.
    what: name used in error messages.
  """
  if callable(data):
    return data
  if isinstance(data, Mapping):
    if data_fn is None:
      raise ValueError(
          f"{what}: got a dataset spec {dict(data)} but no data_fn; build the "
          f"evaluators with from_config(..., data_fn=...) or pass a batch "
          f"source (a callable returning batches)")
    spec = dict(data)
    spec.setdefault("batch_size", batch_size)
    return data_fn(**spec)
  raise TypeError(f"{what}: expected a batch source or a dict with 'dataset' "
                  f"and 'split', got {type(data).__name__}")
