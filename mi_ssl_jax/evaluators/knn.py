"""Weighted cosine k-nearest-neighbour classifier on sharded device features.

The protocol of InstDisc (Wu et al. 2018) as used by DINO / solo-learn /
lightly: features are L2-normalised, the similarity is the cosine
s_ij = ẑ_iᵀ ẑ_j, and each of the k nearest training examples votes for its
label with weight exp(s_ij / τ); the prediction is the class with the largest
summed weight. Defaults: k ∈ {20, 200}, τ = 0.07.

Memory stays bounded: the training bank [N, D] stays sharded over the mesh's
devices (N / S rows on each of S devices), and test queries are processed in
chunks of ``query_chunk`` rows (``lax.map``). For one chunk each device
computes its [m, N / S] block of similarities and its local top-k; the global
top-k is then taken over the S·k candidates. Peak memory per device is
O(m · N / S), never the full [m, N] block (``tests/test_eval_knn.py`` checks
the compiled temporaries).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import matrix
from mi_ssl_jax.evaluators import common

DEFAULT_KS = (20, 200)
DEFAULT_TEMPERATURE = 0.07


def _knn_correct(bank, bank_labels, bank_mask, queries, query_labels,
                 query_mask, *, ks, temperature, num_classes, num_shards,
                 query_chunk, mesh):
  """Correct-prediction counts of the weighted kNN classifier (jit body).

  Shapes: bank [N, D], bank_labels/bank_mask [N] sharded over the mesh,
  queries [M, D], query_labels/query_mask [M]; N divisible by num_shards, M by
  query_chunk. Returns a dict of int32 counts ``top1_k{k}`` (and ``top5_k{k}``).
  """
  kmax = max(ks)
  per_shard = bank.shape[0] // num_shards
  local_k = min(kmax, per_shard)
  bank = matrix.normalize_rows(bank)  # [N, D]
  queries = matrix.normalize_rows(queries)  # [M, D]

  # Stage 1 runs per device with shard_map: XLA's SPMD partitioner does not
  # partition TopK (it all-gathers the whole [m, N] similarity block, checked
  # on jax 0.10.2), which would defeat the bounded-memory design. No
  # collective is written by hand: the [m, S·k'] candidates are concatenated
  # by out_specs and stage 2 runs on that small global array under jit.
  def local_topk(q, b, b_labels, b_mask):
    # q [m, D] (replicated), b [N/S, D], b_labels/b_mask [N/S] (local shard).
    sims = jnp.einsum("md,nd->mn", q, b,
                      precision=jax.lax.Precision.HIGHEST)  # [m, N/S]
    sims = jnp.where(b_mask[None, :], sims, -jnp.inf)
    vals, idx = jax.lax.top_k(sims, local_k)  # [m, k']
    return vals, b_labels[idx]

  local_topk = jax.shard_map(
      local_topk, mesh=mesh,
      in_specs=(P(), common.batch_spec(mesh), common.batch_spec(mesh),
                common.batch_spec(mesh)),
      out_specs=(common.batch_spec(mesh, 1), common.batch_spec(mesh, 1)))

  def one_chunk(args):
    q, q_labels, q_mask = args  # [m, D], [m], [m]
    cand_vals, cand_labels = local_topk(
        q, bank, bank_labels, bank_mask)  # [m, S·k'] each
    vals, pos = jax.lax.top_k(cand_vals, kmax)  # [m, kmax], descending
    nb_labels = jnp.take_along_axis(cand_labels, pos, axis=1)  # [m, kmax]
    # Weights exp(s/τ) shifted by the largest possible cosine (1) so they
    # never overflow; a common factor leaves the vote unchanged. exp(-inf) = 0:
    # padding neighbours never vote.
    weights = jnp.exp((vals - 1.0) / temperature)  # [m, kmax]
    votes = weights[..., None] * jax.nn.one_hot(
        nb_labels, num_classes, dtype=weights.dtype)  # [m, kmax, C]
    out = {}
    for k in ks:
      scores = jnp.sum(votes[:, :k], axis=1)  # [m, C]
      pred = jnp.argmax(scores, axis=-1)
      out[f"top1_k{k}"] = jnp.sum((pred == q_labels) & q_mask)
      if num_classes > 5:
        _, top5 = jax.lax.top_k(scores, 5)
        hit = jnp.any(top5 == q_labels[:, None], axis=-1)
        out[f"top5_k{k}"] = jnp.sum(hit & q_mask)
    return out

  m = queries.shape[0] // query_chunk
  chunks = (queries.reshape(m, query_chunk, -1),
            query_labels.reshape(m, query_chunk),
            query_mask.reshape(m, query_chunk))
  counts = jax.lax.map(one_chunk, chunks)
  return {k: jnp.sum(v).astype(jnp.int32) for k, v in counts.items()}


def _pad_rows(x: jax.Array, multiple: int) -> jax.Array:
  pad = (-x.shape[0]) % multiple
  if pad == 0:
    return x
  return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


def knn_accuracy(
    train_feats: jax.Array, train_labels: jax.Array, test_feats: jax.Array,
    test_labels: jax.Array, *, num_classes: int,
    train_mask: jax.Array | None = None, test_mask: jax.Array | None = None,
    ks: Sequence[int] = DEFAULT_KS, temperature: float = DEFAULT_TEMPERATURE,
    query_chunk: int = 256, mesh: jax.sharding.Mesh | None = None,
) -> dict[str, float]:
  """Weighted cosine kNN top-1 (and top-5) accuracy, in percent.

  Args:
    train_feats: [N, D] bank features (any sharding; resharded over the mesh).
    train_labels: [N] int labels of the bank.
    test_feats: [M, D] query features.
    test_labels: [M] int labels of the queries.
    num_classes: number of classes C.
    train_mask: [N] bool, False for padding rows (default all True).
    test_mask: [M] bool, False for padding rows (default all True).
    ks: neighbour counts to report.
    temperature: τ of the vote weights exp(s / τ).
    query_chunk: queries per on-device chunk (memory ∝ query_chunk · N / S).
    mesh: the mesh; the bank is split over all its axes (default: all
      devices on one "data" axis).

  Returns:
    ``{"top1_k20": ..., "top5_k20": ..., ...}`` in percent (top-5 only when
    C > 5), over the valid (unmasked) queries.
  """
  mesh = mesh if mesh is not None else common.default_mesh()
  shards = common.data_size(mesh)
  ks = tuple(sorted({int(k) for k in ks}))
  if not ks or ks[0] < 1:
    raise ValueError(f"knn ks must be positive integers, got {ks}")
  if train_mask is None:
    train_mask = jnp.ones(train_labels.shape, bool)
  if test_mask is None:
    test_mask = jnp.ones(test_labels.shape, bool)
  n_train = int(np.sum(common.host_gather(train_mask)))
  if n_train < max(ks):
    raise ValueError(f"kNN with k={max(ks)} needs at least {max(ks)} training "
                     f"examples, got {n_train}; lower config ks")
  n_test = int(np.sum(common.host_gather(test_mask)))
  if n_test == 0:
    raise ValueError("kNN got no valid test examples (all rows masked)")
  query_chunk = max(1, min(query_chunk, test_labels.shape[0]))

  # Padding rows are masked out, so padding to a shardable size is exact.
  bank = _pad_rows(train_feats, shards)
  bank_labels = _pad_rows(train_labels.astype(jnp.int32), shards)
  bank_mask = _pad_rows(train_mask.astype(bool), shards)
  queries = _pad_rows(test_feats, query_chunk)
  q_labels = _pad_rows(test_labels.astype(jnp.int32), query_chunk)
  q_mask = _pad_rows(test_mask.astype(bool), query_chunk)

  fn = _jitted_knn(tuple(ks), float(temperature), int(num_classes), shards,
                   int(query_chunk), mesh)
  shard = NamedSharding(mesh, common.batch_spec(mesh))
  bank, bank_labels, bank_mask = jax.device_put(
      (bank, bank_labels, bank_mask), shard)
  counts = jax.device_get(fn(bank, bank_labels, bank_mask, queries, q_labels,
                             q_mask))
  return {k: 100.0 * float(v) / n_test for k, v in sorted(counts.items())}


@functools.lru_cache(maxsize=16)
def _jitted_knn(ks, temperature, num_classes, num_shards, query_chunk, mesh):
  return jax.jit(functools.partial(
      _knn_correct, ks=ks, temperature=temperature, num_classes=num_classes,
      num_shards=num_shards, query_chunk=query_chunk, mesh=mesh))


class Evaluator:
  """Periodic kNN evaluation: ``Evaluator(predict_fn, **cfg).run(state)``.

  Config entry example (``config.evals``)::

    knn=dict(type="knn", log_steps=1000, num_classes=10,
             train_data=dict(dataset="fashion_mnist", split="train"),
             test_data=dict(dataset="fashion_mnist", split="test"),
             ks=(20, 200), temperature=0.07)

  Yields ``top1_k20``, ``top5_k20``, ``top1_k200``, ... in percent.

  ``baselines=("raw_pixels", "random_init")`` also evaluates those features
  (:mod:`mi_ssl_jax.evaluators.baselines`) with the same protocol, once (they
  do not change during training), and yields ``raw_pixels/top1_k20``, ...
  The trainer supplies their predict functions and states through
  ``baseline_fns``: name -> ``(predict_fn, state_fn)``.
  """

  def __init__(self, predict_fn: common.PredictFn, *, train_data: Any,
               test_data: Any, num_classes: int,
               ks: Sequence[int] = DEFAULT_KS,
               temperature: float = DEFAULT_TEMPERATURE,
               batch_size: int = 256, query_chunk: int = 256,
               baselines: Sequence[str] = (),
               baseline_fns: dict[str, tuple[common.PredictFn,
                                             Callable[[], Any]]] | None = None,
               mesh: jax.sharding.Mesh | None = None,
               data_fn: Callable[..., common.BatchSource] | None = None):
    self.mesh = mesh if mesh is not None else common.default_mesh()
    self.train_source = common.resolve_source(
        train_data, data_fn, batch_size, "knn train_data")
    self.test_source = common.resolve_source(
        test_data, data_fn, batch_size, "knn test_data")
    self.extract = common.FeatureExtractor(predict_fn, self.mesh)
    self.num_classes = int(num_classes)
    self.ks = tuple(ks)
    self.temperature = float(temperature)
    self.query_chunk = int(query_chunk)
    if any(k < 1 for k in self.ks) or not self.ks:
      raise ValueError(f"knn ks must be positive integers, got {self.ks}")
    self.baselines = common.Baselines(baselines, baseline_fns, self.mesh)

  def _accuracy(self, extract: common.FeatureExtractor, state: Any
                ) -> dict[str, float]:
    train = extract(state, self.train_source)
    test = extract(state, self.test_source)
    return knn_accuracy(
        train[0], train[1], test[0], test[1], num_classes=self.num_classes,
        train_mask=train[2], test_mask=test[2], ks=self.ks,
        temperature=self.temperature, query_chunk=self.query_chunk,
        mesh=self.mesh)

  def run(self, state: Any, step: int | None = None
          ) -> Iterator[tuple[str, float]]:
    del step  # same signature for every evaluator; unused here
    yield from self._accuracy(self.extract, state).items()
    yield from self.baselines.results(self._accuracy).items()
