"""kNN evaluator: accuracy on clusters / random labels, sharding, padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_ssl_jax.evaluators import common, knn


def _clusters(rng, n_per_class, num_classes, dim, spread):
  centers = rng.normal(size=(num_classes, dim))
  labels = np.repeat(np.arange(num_classes), n_per_class)
  feats = centers[labels] + spread * rng.normal(size=(len(labels), dim))
  perm = rng.permutation(len(labels))
  return feats[perm].astype(np.float32), labels[perm].astype(np.int32)


def test_knn_separated_clusters_is_perfect():
  rng = np.random.default_rng(0)
  xtr, ytr = _clusters(rng, 60, 10, 32, 0.05)
  xte, yte = _clusters(np.random.default_rng(0), 20, 10, 32, 0.05)
  acc = knn.knn_accuracy(jnp.asarray(xtr), jnp.asarray(ytr), jnp.asarray(xte),
                         jnp.asarray(yte), num_classes=10, ks=(20, 200))
  assert acc["top1_k20"] == 100.0
  assert acc["top1_k200"] == 100.0
  assert acc["top5_k20"] == 100.0


def test_knn_random_labels_is_at_chance():
  rng = np.random.default_rng(1)
  xtr = rng.normal(size=(2000, 16)).astype(np.float32)
  ytr = rng.integers(0, 10, 2000).astype(np.int32)
  xte = rng.normal(size=(1000, 16)).astype(np.float32)
  yte = rng.integers(0, 10, 1000).astype(np.int32)
  acc = knn.knn_accuracy(jnp.asarray(xtr), jnp.asarray(ytr), jnp.asarray(xte),
                         jnp.asarray(yte), num_classes=10)
  # Chance is 10 %; 1000 queries give a binomial std of ~1 point.
  for k in (20, 200):
    assert abs(acc[f"top1_k{k}"] - 10.0) < 4.0, acc


def _numpy_knn(xtr, ytr, xte, yte, k, t, c):
  a = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
  b = xte / np.linalg.norm(xte, axis=1, keepdims=True)
  s = b @ a.T
  idx = np.argsort(-s, axis=1)[:, :k]
  w = np.exp(np.take_along_axis(s, idx, 1) / t)
  scores = np.zeros((len(b), c))
  for i in range(len(b)):
    np.add.at(scores[i], ytr[idx[i]], w[i])
  return 100.0 * np.mean(scores.argmax(1) == yte)


def test_knn_matches_numpy_and_8_devices_equal_1():
  rng = np.random.default_rng(2)
  xtr, ytr = _clusters(rng, 50, 5, 8, 1.0)  # overlapping: accuracy < 100
  xte, yte = _clusters(rng, 30, 5, 8, 1.0)
  want = _numpy_knn(xtr, ytr, xte, yte, 20, 0.07, 5)
  mesh1 = common.default_mesh(jax.devices()[:1])
  mesh8 = common.default_mesh(jax.devices())
  args = tuple(jnp.asarray(a) for a in (xtr, ytr, xte, yte))
  acc1 = knn.knn_accuracy(*args, num_classes=5, ks=(20,), mesh=mesh1,
                          query_chunk=64)
  acc8 = knn.knn_accuracy(*args, num_classes=5, ks=(20,), mesh=mesh8,
                          query_chunk=64)
  assert acc1 == acc8
  assert acc1["top1_k20"] == pytest.approx(want)
  assert acc1["top1_k20"] < 100.0


def test_knn_memory_is_bounded_per_device():
  """Compiled temporaries stay far below one full [m, N] similarity block."""
  mesh = common.default_mesh()
  n, m, d = 8 * 2048, 128, 16
  fn = knn._jitted_knn((20, 200), 0.07, 10, 8, m, mesh)
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  bank = jax.device_put(jnp.zeros((n, d)), shard)
  labels = jax.device_put(jnp.zeros((n,), jnp.int32), shard)
  mask = jax.device_put(jnp.ones((n,), bool), shard)
  q = jnp.zeros((4 * m, d))
  compiled = fn.lower(bank, labels, mask, q, jnp.zeros((4 * m,), jnp.int32),
                      jnp.ones((4 * m,), bool)).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  full_block = m * n * 4
  assert temp < full_block / 2, (temp, full_block)


def test_knn_padded_batches_equal_unpadded():
  rng = np.random.default_rng(3)
  xtr, ytr = _clusters(rng, 40, 4, 8, 1.0)
  xte, yte = _clusters(rng, 25, 4, 8, 1.0)
  # Unpadded: arrays straight in. Padded: through the evaluator, batch 48 on
  # 8 devices, so the last batch of each split is padded and masked.
  want = knn.knn_accuracy(*(jnp.asarray(a) for a in (xtr, ytr, xte, yte)),
                          num_classes=4, ks=(5, 20))
  ev = knn.Evaluator(
      common.identity_predict_fn,
      train_data=common.array_source(xtr, ytr, 48),
      test_data=common.array_source(xte, yte, 48),
      num_classes=4, ks=(5, 20), query_chunk=32)
  got = dict(ev.run(None))
  assert len(ytr) % 48 and len(yte) % 48  # padding really happens
  assert got == want


def test_knn_on_two_axis_mesh_equals_one_device():
  """A trainer mesh such as (("data", 2), ("fsdp", 4)) splits the bank 8-way."""
  rng = np.random.default_rng(4)
  xtr, ytr = _clusters(rng, 30, 3, 8, 1.0)
  xte, yte = _clusters(rng, 10, 3, 8, 1.0)
  mesh2 = jax.sharding.Mesh(
      np.array(jax.devices()).reshape(2, 4), ("data", "fsdp"),
      axis_types=(jax.sharding.AxisType.Auto,) * 2)
  args = tuple(jnp.asarray(a) for a in (xtr, ytr, xte, yte))
  acc1 = knn.knn_accuracy(*args, num_classes=3, ks=(10,),
                          mesh=common.default_mesh(jax.devices()[:1]))
  acc2 = knn.knn_accuracy(*args, num_classes=3, ks=(10,), mesh=mesh2)
  assert acc1 == acc2
