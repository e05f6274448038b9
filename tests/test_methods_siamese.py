"""Siamese methods (mi_ssl_jax/methods/{matrix_ssl,mec,emi,simsiam,byol,
barlow_twins,vicreg,simclr,spectral}.py) and their configs.

Fast (CI), on the `tiny` configs (ResNet-18 of width 4, 16-px views, 32-d
heads; the compiled op caches are shared because every method has the same
tiny backbone):
* wiring: each method's `loss_fn` equals the direct call of its
  `mi_ssl_jax.losses` function on outputs computed module by module, with a
  teacher made different from the student and two different views, so a
  wrong view pairing or a student used as teacher changes the value;
* the EMA teacher gets no gradient and moves by the closed-form momentum;
* 1 device vs 8 devices: equal loss (Matrix-SSL, EMI);
* the real trainer (`train.train_and_evaluate`) runs Matrix-SSL for 2 steps
  on Fashion-MNIST on 8 simulated devices, and its teacher after step 2 is
  m(1)·teacher(1) + (1 − m(1))·student(2) (checkpoint of step 1).
Slow: every Siamese config, and the Fashion-MNIST recipe of every method,
trains 2 steps through the trainer on 8 simulated devices.
"""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import (
    checkpointing,
    config_lib,
    losses,
    methods,
    models,
    train,
    train_inputs,
)
from mi_ssl_jax.data import sources

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {  # method -> its main recipe
    "matrix_ssl": "matrix_ssl_r50", "mec": "mec_r50",
    "emi": "emi_r18_cifar", "simsiam": "simsiam_r18_cifar",
    "byol": "byol_r18_cifar", "barlow_twins": "barlow_twins_r18_cifar",
    "vicreg": "vicreg_r18_cifar", "simclr": "simclr_r18_cifar",
    "spectral": "spectral_r18_cifar"}
HAVE_FMNIST = sources.fashion_mnist_dir() is not None


pytestmark = pytest.mark.usefixtures("fast_compile")


def load(name, arg="tiny"):
  spec = importlib.util.spec_from_file_location(
      f"config_{name}", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def method_config(method, **overrides):
  config = load(CONFIGS[method])
  config.total_steps = 10
  config.update(overrides)
  return config


def two_views(config, batch=16, seed=0):
  rng = np.random.default_rng(seed)
  shape = (batch, config.image_size, config.image_size, config.channels)
  return {"view1": jnp.asarray(rng.standard_normal(shape, np.float32)),
          "view2": jnp.asarray(rng.standard_normal(shape, np.float32)),
          "label": jnp.zeros((batch,), jnp.int32)}


def perturb_teacher(model, scale=0.05):
  """Makes the EMA teacher differ from the student (it starts as a copy)."""
  state = nnx.state(model.teacher, models.EMAParam)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  new = [x + scale * jax.random.normal(k, x.shape, x.dtype)
         for x, k in zip(leaves, keys, strict=True)]
  nnx.update(model.teacher, jax.tree.unflatten(treedef, new))


_MODELS = {}


def tiny_model(method, **overrides):
  """(config, method module, model) with a perturbed teacher; cached."""
  key = (method, tuple(sorted(overrides.items())))
  if key not in _MODELS:
    config = method_config(method, **overrides)
    module = methods.get_method(config.method)
    module.validate_config(config)
    model = module.init(config, nnx.Rngs(0))
    if model.teacher is not None:
      perturb_teacher(model)
    _MODELS[key] = (config, module, model)
  config, module, model = _MODELS[key]
  return config, module, nnx.clone(model)


def explicit_outputs(model, batch):
  """Per-view outputs computed module by module (train-mode BatchNorm)."""
  out = {}
  for v in (1, 2):
    x = batch[f"view{v}"]
    z = model.encoder.projector(model.encoder.backbone(x, train=True),
                                train=True)
    out[f"z{v}"] = z
    out[f"p{v}"] = (model.predictor(z, train=True)
                    if model.predictor is not None else None)
    if model.teacher is not None:
      t = model.teacher.projector(model.teacher.backbone(x, train=True),
                                  train=True)
      out[f"t{v}"] = t
  return out


def direct_loss(method, config, o, step):
  """The losses-package call each method must reduce to."""
  nc = losses.negative_cosine_loss
  if method == "matrix_ssl":
    return losses.matrix_ssl_loss(o["t1"], o["p1"], o["t2"], o["p2"],
                                  lamb=1.0, mu=1.0, gamma=1.0, order=4)
  if method == "mec":
    b, d = o["t1"].shape
    warmup = config_lib.warmup_steps("mec_warmup", config,
                                     config.num_train_examples,
                                     config.batch_size, config.total_steps)
    lamb = losses.mec_lambda_schedule(step, batch_size=b, dim=d,
                                      warmup_steps=warmup, eps_sq=64.0)
    return losses.mec_loss(o["t1"], o["p1"], o["t2"], o["p2"], lamb=lamb)
  if method == "emi":
    return losses.emi_momentum_loss(o["t1"], o["p1"], o["t2"], o["p2"],
                                    method=config.emi_method).loss
  if method == "simsiam":
    return 0.5 * (nc(o["p1"], o["z2"]) + nc(o["p2"], o["z1"]))
  if method == "byol":
    return 4.0 + 2.0 * (nc(o["p1"], o["t2"]) + nc(o["p2"], o["t1"]))
  if method == "barlow_twins":
    return 0.1 * losses.barlow_twins_loss(o["z1"], o["z2"], lambd=0.0051)
  if method == "vicreg":
    return losses.vicreg_loss(o["z1"], o["z2"])
  if method == "simclr":
    return losses.info_nce_loss(o["z1"], o["z2"], temperature=0.2)
  if method == "spectral":
    return losses.spectral_contrastive_loss(o["z1"], o["z2"], mu=1.0)
  raise AssertionError(method)


@pytest.mark.parametrize("method", list(CONFIGS))
def test_loss_fn_equals_direct_loss_call(method):
  config, module, model = tiny_model(method)
  batch = two_views(config)
  step = jnp.int32(3)
  loss, metrics = module.loss_fn(nnx.clone(model), batch, jax.random.key(0),
                                 step)
  want = direct_loss(method, config, explicit_outputs(model, batch), step)
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(float(loss), float(want), rtol=2e-5, atol=1e-6)
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_emi_taylor_state_is_threaded():
  config, module, model = tiny_model("emi", emi_method="taylor")
  batch = two_views(config)
  o = explicit_outputs(model, batch)
  want = losses.emi_momentum_loss(
      o["t1"], o["p1"], o["t2"], o["p2"],
      losses.emi_init_state(o["p1"].shape[1], config.batch_size),
      method="taylor")
  loss, metrics = module.loss_fn(model, batch, jax.random.key(0),
                                 jnp.int32(0))
  np.testing.assert_allclose(float(loss), float(want.loss), rtol=2e-5)
  assert 0 < float(metrics["taylor_radius"]) < 1
  state = model.emi_state.get()
  assert int(state["count"]) == 1
  for k in ("eig_max", "vec_1", "vec_joint"):
    np.testing.assert_allclose(np.asarray(state[k]),
                               np.asarray(want.state[k]), rtol=1e-5)
  # The state is loss state, not a parameter.
  assert "emi_state" not in nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("method", [
    "matrix_ssl",
    pytest.param("byol", marks=pytest.mark.slow),
    pytest.param("mec", marks=pytest.mark.slow),
    pytest.param("emi", marks=pytest.mark.slow)])
def test_teacher_gets_no_gradient(method):
  config, module, model = tiny_model(method)
  batch = two_views(config)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert "teacher" not in params  # the optimizer never sees it
  def loss_of(m):
    return module.loss_fn(m, batch, jax.random.key(0), jnp.int32(0))[0]

  wrt = nnx.DiffState(0, nnx.Any(models.EMAParam, nnx.Param))
  grads = nnx.to_pure_dict(nnx.grad(loss_of, argnums=wrt)(model))
  g_teacher, g_student = grads["teacher"], grads["encoder"]
  assert jax.tree.leaves(g_teacher)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0
             for g in jax.tree.leaves(g_teacher))
  assert max(float(jnp.max(jnp.abs(g)))
             for g in jax.tree.leaves(g_student)) > 0  # the student learns


def test_post_update_moves_teacher_by_closed_form():
  config, module, model = tiny_model("byol")
  # Move the student away from the teacher, as an optimizer step would.
  student = nnx.state(model.encoder, nnx.Param)
  nnx.update(model.encoder, jax.tree.map(lambda x: 1.5 * x + 0.01, student))
  old_t = nnx.to_pure_dict(nnx.state(model.teacher, models.EMAParam))
  old_stats = nnx.to_pure_dict(nnx.state(model.teacher, nnx.BatchStat))
  new_s = nnx.to_pure_dict(nnx.state(model.encoder, nnx.Param))
  step = 4
  module.post_update(model, jnp.int32(step))
  m = models.cosine_ema_momentum(step, config.total_steps,
                                 config.ema_momentum)
  assert 0.99 < m < 1.0
  new_t = nnx.to_pure_dict(nnx.state(model.teacher, models.EMAParam))
  for got, t, s in zip(jax.tree.leaves(new_t), jax.tree.leaves(old_t),
                       jax.tree.leaves(new_s), strict=True):
    np.testing.assert_allclose(np.asarray(got), m * t + (1 - m) * s,
                               rtol=1e-6, atol=1e-7)
  for got, want in zip(
      jax.tree.leaves(nnx.to_pure_dict(nnx.state(model.teacher,
                                                 nnx.BatchStat))),
      jax.tree.leaves(old_stats), strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("method", ["matrix_ssl", "emi"])
def test_one_device_equals_eight_devices(method):
  config, module, model = tiny_model(method)
  batch = two_views(config)
  key, step = jax.random.key(0), jnp.int32(0)
  one = module.loss_fn(nnx.clone(model), batch, key, step)[0]
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
  graphdef, state = nnx.split(model)

  @jax.jit
  def eight(state, batch):
    return module.loss_fn(nnx.merge(graphdef, state), batch, key, step)[0]

  got = eight(jax.device_put(state, NamedSharding(mesh, P())), sharded)
  # EMI's loss is a difference of three log-determinants of ridge-regularised
  # covariances, each ~d·log(ridge) in size: float32 reduction-order noise of
  # ~1e-6 relative to those terms is ~1e-5 relative to their difference.
  rtol = 5e-5 if method == "emi" else 1e-5
  np.testing.assert_allclose(float(got), float(one), rtol=rtol, atol=1e-6)


def test_bad_config_values_are_one_line_errors():
  config = method_config("matrix_ssl", mce_log_method="exact")
  with pytest.raises(config_lib.ConfigError, match="mce_log_method"):
    methods.get_method("matrix_ssl").validate_config(config)
  config = method_config("emi", emi_method="svd")
  with pytest.raises(config_lib.ConfigError, match="emi_method"):
    methods.get_method("emi").validate_config(config)
  config = method_config("byol")
  config.model.head = "nope"
  with pytest.raises(config_lib.ConfigError, match="head"):
    methods.get_method("byol").validate_config(config)
  config = method_config("simclr")
  config.augment.augment_on = "device"  # supported by the trainer
  methods.get_method("simclr").validate_config(config)
  config.augment.augment_on = "tpu"
  with pytest.raises(config_lib.ConfigError, match="augment_on"):
    train_inputs.make_device_inputs(config, "two_view")
  with pytest.raises(config_lib.ConfigError, match="method='nope'"):
    load("fmnist_siamese", "method=nope")


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
def test_trainer_two_steps_on_fashion_mnist_with_ema(tmp_path):
  config = load("fmnist_siamese", "method=matrix_ssl,tiny")
  config.ckpt_steps = 1
  config.async_checkpointing = False
  config.lock()
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 2 and result["num_step_traces"] == 1
  metrics = result["metrics"]
  assert np.isfinite(metrics["loss"]) and metrics["skipped_steps"] == 0
  assert metrics["matrix_mutual_information"] > 0  # diagnostics_fn ran
  assert 1 <= metrics["rankme_embedding"] <= 32
  state2 = result["state"]
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), 1)
  try:
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        state2)
    _, state1 = ckpt.restore(abstract, step=1)
  finally:
    ckpt.close()
  m = models.cosine_ema_momentum(1, 2, config.ema_momentum)
  assert m == pytest.approx(0.995)
  student2 = _flat(state2["params"]["encoder"])
  teacher1 = _flat(state1["rest"]["teacher"])
  teacher2 = _flat(state2["rest"]["teacher"])
  assert set(student2) <= set(teacher2)
  moved = 0.0
  for path, s in student2.items():
    np.testing.assert_allclose(teacher2[path],
                               m * teacher1[path] + (1 - m) * s,
                               rtol=1e-5, atol=1e-7)
    moved = max(moved, float(np.max(np.abs(teacher2[path] - teacher1[path]))))
  assert moved > 0


SLOW_CONFIGS = sorted(CONFIGS.values()) + [
    f"fmnist_siamese:method={m}" for m in CONFIGS]


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_CONFIGS)
def test_config_trains_two_steps_on_eight_devices(name, tmp_path):
  file, _, arg = name.partition(":")
  config = load(file, f"{arg},tiny" if arg else "tiny")
  if config.dataset == "fashion_mnist" and not HAVE_FMNIST:
    pytest.skip("Fashion-MNIST not installed")
  config.lock()
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 2 and result["num_step_traces"] == 1
  assert len(jax.devices()) == 8
  assert all(np.isfinite(v) for v in result["metrics"].values())
