"""Exact large-batch gradients (`config.grad_chunks`, train.py
`_chunked_loss_and_grads_fn`; `models.rng.ChunkKey`).

Fast (CI):
* a chunk's random draws are the rows of the whole batch's draws;
* M-MAE on a LayerNorm ViT with masking and drop path: 4 chunks on 8
  devices give the unchunked 1-device loss, metrics and gradient (float32
  roundoff);
* Matrix-SSL (EMA teacher, predictor) on a ViT with BatchNorm-free heads: 2
  chunks give the unchunked loss and gradient;
* BatchNorm (Matrix-SSL's heads on the ViT): the chunked gradient is that of
  the objective of per-chunk-BatchNorm embeddings (ghost batch norm,
  computed here chunk by chunk with plain autodiff), and the running
  statistics take one update with the mean of the chunks' updates;
* the config checks: divisibility, no accumulation beside it, methods
  without `embed_fn` / `objective_fn` refused.
Slow: every batch-coupled method (the Siamese objectives, U-MAE, M-MAE) on a
LayerNorm ViT: chunked = unchunked.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import config_lib, methods, train
from mi_ssl_jax.methods import base as method_base
from mi_ssl_jax.models import rng
from tests.test_methods_siamese_vit import load

pytestmark = pytest.mark.usefixtures("fast_compile")
B = 16


def mae_config(method="mmae"):
  config = load("fmnist_mae", f"method={method},tiny")
  config.model.drop_path_rate = 0.2  # random per example, like the mask
  return config


def siamese_config(method, batchnorm_heads=False):
  """A tiny ViT Siamese config; its heads have no BatchNorm (then the
  network has none: chunking is exact) unless `batchnorm_heads`."""
  config = load("fmnist_siamese", f"method={method},vit,tiny")
  if not batchnorm_heads:
    config.model.proj_hidden_dims = ()
    config.model.proj_out_norm = ""
    config.model.pred_hidden_dims = ()
  return config


def batch_for(config, seed=0):
  r = np.random.default_rng(seed)
  shape = (B, config.image_size, config.image_size, config.channels)
  images = {name: jnp.asarray(r.standard_normal(shape, np.float32))
            for name in ("image", "view1", "view2")}
  return {**images, "label": jnp.asarray(r.integers(0, 10, B), jnp.int32)}


def state_and_grad_fn(config, k):
  method = methods.get_method(config.method)
  codec, _, _, init_state = train.make_state_fns(config, method, 10, 1000,
                                                 10, "cpu")
  state = jax.jit(init_state)()
  return state, jax.jit(train._loss_and_grads_fn(method, codec, 1, k))


def run(config, k, batch, state=None):
  """(loss, metrics, rest, grads) of one step with `k` chunks."""
  fresh, fn = state_and_grad_fn(config, k)
  state = fresh if state is None else state
  return fn(state["params"], state["rest"], batch, jax.random.key(3),
            jnp.int32(1))


def assert_grads_close(got, want, rtol=1e-4):
  """Leaf by leaf, relative to the largest gradient entry (some entries are
  zero up to roundoff)."""
  flat_got, flat_want = jax.tree.leaves(got), jax.tree.leaves(want)
  assert flat_want
  scale = max(float(jnp.max(jnp.abs(w))) for w in flat_want)
  assert scale > 0
  for g, w in zip(flat_got, flat_want, strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol,
                               atol=rtol * scale)


def test_chunk_key_draws_are_rows_of_the_whole_batch_draws():
  key = jax.random.key(0)
  whole_u = jax.random.uniform(key, (12, 5))  # [B, L]
  whole_b = jax.random.bernoulli(jax.random.fold_in(key, 2), 0.3, (12, 1))
  for c in range(3):
    ck = rng.ChunkKey(key, jnp.int32(c), 3)
    np.testing.assert_array_equal(rng.uniform(ck, (4, 5)), whole_u[c::3])
    np.testing.assert_array_equal(
        rng.bernoulli(rng.fold_in(ck, 2), 0.3, (4, 1)), whole_b[c::3])
    a, b = rng.split(ck)
    ka, kb = jax.random.split(key)
    np.testing.assert_array_equal(rng.uniform(b, (4,)),
                                  jax.random.uniform(kb, (12,))[c::3])
    del a, ka
  # A plain key is exactly jax.random.
  np.testing.assert_array_equal(rng.uniform(key, (12, 5)), whole_u)


def test_mmae_chunks_on_eight_devices_equal_the_whole_batch_on_one():
  config = mae_config()
  batch = batch_for(config)
  loss1, metrics1, _, grads1 = run(config, 1, batch)
  state, fn = state_and_grad_fn(config, 4)
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  state = jax.device_put(state, NamedSharding(mesh, P()))
  sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
  loss4, metrics4, _, grads4 = fn(state["params"], state["rest"], sharded,
                                  jax.random.key(3), jnp.int32(1))
  assert len(grads4["mae"]["encoder"]["cls_token"].sharding.device_set) == 8
  np.testing.assert_allclose(float(loss4), float(loss1), rtol=1e-6)
  for name in ("mae_loss", "reg_tcr", "probe_ce"):
    np.testing.assert_allclose(float(metrics4[name]), float(metrics1[name]),
                               rtol=1e-5)
  assert_grads_close(grads4, grads1)


def test_siamese_vit_two_chunks_equal_the_whole_batch():
  config = siamese_config("matrix_ssl")
  batch = batch_for(config)
  loss1, _, _, grads1 = run(config, 1, batch)
  loss2, _, _, grads2 = run(config, 2, batch)
  np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-6)
  assert_grads_close(grads2, grads1)


def test_batchnorm_chunks_are_ghost_batchnorm_with_mean_running_stats():
  config = siamese_config("matrix_ssl", batchnorm_heads=True)
  batch = batch_for(config)
  k = 2
  method = methods.get_method(config.method)
  state, fn = state_and_grad_fn(config, k)
  codec = train.make_state_fns(config, method, 10, 1000, 10, "cpu")[0]
  key, step = jax.random.key(3), jnp.int32(1)
  loss, _, rest, grads = fn(state["params"], state["rest"], batch, key, step)

  # Reference: the objective of the embeddings of each chunk (every k-th
  # example) run separately, by plain autodiff through all of them.
  def reference(params):
    parts, rests = [], []
    for c in range(k):
      model = codec.model(params, state["rest"])
      chunk = jax.tree.map(lambda x, c=c: x[c::k], batch)
      parts.append(method.embed_fn(model, chunk, key, step))
      rests.append(codec.split(model)[1])
    emb = jax.tree.map(lambda *xs: jnp.stack(xs, 1).reshape(
        -1, *xs[0].shape[1:]), *parts)
    model = codec.model(params, state["rest"])
    value, _ = method.objective_fn(model, emb, batch, key, step)
    return value, rests

  (ref_loss, ref_rests), ref_grads = jax.jit(jax.value_and_grad(
      reference, has_aux=True))(state["params"])
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  assert_grads_close(grads, ref_grads)
  # And not the whole batch's: BatchNorm statistics differ per chunk.
  _, _, _, whole = run(config, 1, batch, state)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves(whole), jax.tree.leaves(grads), strict=True))
  assert diff > 1e-3
  # Running statistics: old + mean over chunks of each chunk's update.
  changed = 0
  for got, old, *per_chunk in zip(
      jax.tree.leaves(rest), jax.tree.leaves(state["rest"]),
      *(jax.tree.leaves(r) for r in ref_rests), strict=True):
    want = old + sum(p - old for p in per_chunk) / k
    np.testing.assert_allclose(np.asarray(got), np.asarray(want),
                               rtol=1e-5, atol=1e-6)
    changed += not np.array_equal(np.asarray(got), np.asarray(old))
  assert changed > 0


def _validate(config, method):
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  return train.validate_config(config, method, mesh)


def test_config_checks():
  config = mae_config()
  method = methods.get_method("mmae")
  assert method_base.splits_loss(method)
  config.batch_size, config.grad_chunks = 64, 4
  _validate(config, method)  # 64 = 4 chunks × 8 devices × 2
  config.grad_chunks = 3
  with pytest.raises(config_lib.ConfigError, match="grad_chunks × devices"):
    _validate(config, method)
  config.grad_chunks, config.grad_accum_steps = 2, 2
  with pytest.raises(config_lib.ConfigError, match="cannot both"):
    _validate(config, method)
  config.grad_accum_steps = 1
  no_split = types.SimpleNamespace(
      **{n: getattr(method, n) for n in
         ("init", "loss_fn", "predict_fn", "INPUT", "BATCH_COUPLED",
          "Hparams", "validate_config")})
  assert not method_base.splits_loss(no_split)
  with pytest.raises(config_lib.ConfigError, match="no embed_fn"):
    _validate(config, no_split)


COUPLED = [name for name in methods.available()
           if method_base.batch_coupled(methods.get_method(name))]


def test_every_shipped_method_splits_its_loss():
  assert set(COUPLED) == set(methods.available()) - {"mae"}
  assert all(method_base.splits_loss(methods.get_method(name))
             for name in methods.available())


@pytest.mark.slow
@pytest.mark.parametrize("method", COUPLED)
def test_every_coupled_method_chunked_equals_unchunked(method):
  config = (mae_config(method) if method in ("umae", "mmae")
            else siamese_config(method))
  batch = batch_for(config)
  loss1, _, _, grads1 = run(config, 1, batch)
  loss4, _, _, grads4 = run(config, 4, batch)
  np.testing.assert_allclose(float(loss4), float(loss1), rtol=1e-5)
  # EMI's log-dets of 16-example Gram matrices amplify float32 roundoff.
  assert_grads_close(grads4, grads1, rtol=1e-3 if method == "emi" else 1e-4)
