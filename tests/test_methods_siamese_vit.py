"""Siamese methods on a ViT backbone and LeJEPA (methods/_siamese.py,
methods/lejepa.py, configs/fmnist_siamese.py:vit, configs/siamese_vits16.py).

Fast (CI), on the `tiny` configs (a 1-block ViT of width 32 on 16-px views,
32-d heads; BYOL's with MoCo v3's frozen patch projection, one model for
every test):
* BYOL-on-ViT and LeJEPA `loss_fn` equal the direct `mi_ssl_jax.losses`
  call on outputs computed module by module (LeJEPA with the same key);
* the EMA teacher gets no gradient; a frozen patch projection (MoCo v3)
  is no parameter, gets no update and the teacher's copy stays equal;
* 1 device vs 8 devices: equal loss and gradients of a ViT BYOL step;
* LeJEPA on a fixed batch of Fashion-MNIST images: 8 AdamW steps lower its
  loss.
Slow: the ViT recipes train 2 steps through the trainer on 8 devices.
"""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import config_lib, losses, methods, models, train
from mi_ssl_jax.data import sources
from mi_ssl_jax.methods import _siamese
from tests.test_methods_siamese import two_views

ROOT = Path(__file__).resolve().parents[1]
HAVE_FMNIST = sources.fashion_mnist_dir() is not None

pytestmark = pytest.mark.usefixtures("fast_compile")


def load(name, arg):
  spec = importlib.util.spec_from_file_location(
      f"config_{name}", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


_MODELS = {}


def tiny(method, **model_overrides):
  """(config, method, model) of fmnist_siamese:<method>,vit,tiny with
  `config.model` overrides; cached."""
  key = (method, tuple(sorted(model_overrides.items())))
  if key not in _MODELS:
    config = load("fmnist_siamese", f"method={method},vit,tiny")
    config.total_steps = 10
    config.model.update(model_overrides)
    module = methods.get_method(method)
    module.validate_config(config)
    model = module.init(config, nnx.Rngs(0))
    if model.teacher is not None:  # make the teacher differ from the student
      state = nnx.state(model.teacher, models.EMAParam)
      nnx.update(model.teacher, jax.tree.map(lambda x: 1.05 * x + 0.01,
                                             state))
    _MODELS[key] = (config, module, model)
  config, module, model = _MODELS[key]
  return config, module, nnx.clone(model)


def test_vit_backbone_is_built_from_the_config():
  config, _, model = tiny("byol", freeze_patch_embed=True)
  backbone = model.encoder.backbone
  assert isinstance(backbone, _siamese.ViTBackbone)
  assert isinstance(backbone, models.VisionTransformer)  # finetune finds it
  assert (backbone.width, backbone.depth, backbone.patch_size) == (32, 1, 8)
  feats = methods.get_method("byol").predict_fn(
      model, {"image": two_views(config)["view1"]})
  assert feats.shape == (16, 32) and feats.dtype == jnp.float32
  bad = load("fmnist_siamese", "method=byol,vit,tiny")
  bad.model.patch_size = 5
  with pytest.raises(config_lib.ConfigError, match="multiple of the ViT"):
    methods.get_method("byol").validate_config(bad)
  bad.model.update(dict(patch_size=8, variant="Q/8"))
  with pytest.raises(config_lib.ConfigError, match="variant"):
    methods.get_method("byol").validate_config(bad)


def test_loss_fn_equals_direct_loss_call():
  config, module, model = tiny("byol", freeze_patch_embed=True)
  batch = two_views(config)
  loss, _ = module.loss_fn(nnx.clone(model), batch, jax.random.key(0),
                           jnp.int32(1))
  o = {}
  for v in (1, 2):
    x = batch[f"view{v}"]
    z = model.encoder.projector(model.encoder.backbone(x), train=True)
    o[f"p{v}"] = model.predictor(z, train=True)
    o[f"t{v}"] = model.teacher.projector(model.teacher.backbone(x),
                                         train=True)
  nc = losses.negative_cosine_loss
  want = 4.0 + 2.0 * (nc(o["p1"], o["t2"]) + nc(o["p2"], o["t1"]))
  np.testing.assert_allclose(float(loss), float(want), rtol=2e-5)

  config, module, model = tiny("lejepa")
  key = jax.random.key(5)
  loss, metrics = module.loss_fn(nnx.clone(model), batch, key, jnp.int32(1))
  z = jnp.stack([model.encoder(batch[f"view{v}"], train=True)[1]
                 for v in (1, 2)])
  want = losses.lejepa_terms(z, key, lamb=0.05, num_slices=1024)
  np.testing.assert_allclose(float(loss), float(want["loss"]), rtol=2e-5)
  np.testing.assert_allclose(float(metrics["sigreg"]),
                             float(want["sigreg"]), rtol=2e-5)
  other = module.loss_fn(nnx.clone(model), batch, jax.random.key(6),
                         jnp.int32(1))[0]
  assert float(other) != float(loss)  # the directions follow the key


def test_teacher_gets_no_gradient_and_frozen_patch_embed_stays():
  config, module, model = tiny("byol", freeze_patch_embed=True)
  batch = two_views(config)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert "teacher" not in params
  assert not jax.tree.leaves(  # not trained
      params["encoder"]["backbone"].get("patch_embed", {}))
  frozen = nnx.state(model, _siamese.FrozenParam)
  assert len(jax.tree.leaves(frozen)) == 4  # student + teacher kernel, bias

  def loss_of(m):
    return module.loss_fn(m, batch, jax.random.key(0), jnp.int32(0))[0]

  wrt = nnx.DiffState(0, nnx.Any(models.EMAParam, nnx.Param))
  grads = nnx.to_pure_dict(
      nnx.jit(lambda m: nnx.grad(loss_of, argnums=wrt)(m))(model))
  assert jax.tree.leaves(grads["teacher"])
  assert all(float(jnp.max(jnp.abs(g))) == 0.0
             for g in jax.tree.leaves(grads["teacher"]))
  assert max(float(jnp.max(jnp.abs(g)))
             for g in jax.tree.leaves(grads["encoder"])) > 0
  # The EMA update runs (teacher and student parameter trees still match)
  # and leaves both frozen projections equal.
  before = jax.tree.leaves(frozen)
  module.post_update(model, jnp.int32(3))
  after = jax.tree.leaves(nnx.state(model, _siamese.FrozenParam))
  for a, b in zip(before, after, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  s = model.encoder.backbone.patch_embed
  t = model.teacher.backbone.patch_embed
  np.testing.assert_array_equal(np.asarray(s.kernel.get_value()),
                                np.asarray(t.kernel.get_value()))


def test_one_device_equals_eight_devices_loss_and_grads():
  config, module, model = tiny("byol", freeze_patch_embed=True)
  batch = two_views(config)
  key, step = jax.random.key(0), jnp.int32(0)

  @nnx.jit
  def value_and_grad(m, batch):
    return nnx.value_and_grad(
        lambda m: module.loss_fn(m, batch, key, step)[0])(m)

  model8 = nnx.clone(model)
  v1, g1 = value_and_grad(model, batch)
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  nnx.update(model8, jax.device_put(nnx.state(model8),
                                    NamedSharding(mesh, P())))
  sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
  assert len(sharded["view1"].sharding.device_set) == 8
  v8, g8 = value_and_grad(model8, sharded)
  np.testing.assert_allclose(float(v8), float(v1), rtol=1e-5)
  flat1, flat8 = jax.tree.leaves(g1), jax.tree.leaves(g8)
  assert flat1
  # Relative to the largest gradient: some are zero up to roundoff (the
  # bias of a Linear that a BatchNorm follows).
  scale = max(float(jnp.max(jnp.abs(b))) for b in flat1)
  assert scale > 0
  for a, b in zip(flat8, flat1, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5 * scale)


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
def test_lejepa_learns_on_fashion_mnist_batch():
  config, module, model = tiny("lejepa")
  images, _ = sources._load_fashion_mnist(sources.fashion_mnist_dir(),
                                          "train")
  x = jnp.asarray(images[:64, 6:22, 6:22].astype(np.float32) / 255.0)
  batch = {"view1": (x - 0.29) / 0.35,  # two views: the crop and its
           "view2": (x[:, :, ::-1] - 0.29) / 0.35,  # mirror image
           "label": jnp.zeros((64,), jnp.int32)}
  del config
  opt = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, key):
    def loss_of(m):
      return module.loss_fn(m, batch, key, jnp.int32(0))[0]
    loss, grads = nnx.value_and_grad(loss_of)(model)
    opt.update(model, grads)
    return loss

  key = jax.random.key(0)  # fixed directions: a deterministic objective
  history = [float(step(model, opt, key)) for _ in range(8)]
  final = float(module.loss_fn(model, batch, key, jnp.int32(0))[0])
  assert np.all(np.isfinite(history))
  assert final < 0.8 * history[0], history + [final]


SLOW_CONFIGS = ("fmnist_siamese:method=matrix_ssl,vit",
                "fmnist_siamese:method=lejepa",
                "siamese_vits16:method=emi",
                "siamese_vits16:method=lejepa")


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_CONFIGS)
def test_vit_config_trains_two_steps_on_eight_devices(name, tmp_path):
  file, _, arg = name.partition(":")
  config = load(file, f"{arg},tiny")
  if config.dataset == "fashion_mnist" and not HAVE_FMNIST:
    pytest.skip("Fashion-MNIST not installed")
  config.lock()
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 2 and result["num_step_traces"] == 1
  assert all(np.isfinite(v) for v in result["metrics"].values())
  assert "block1_token_entropy" in result["metrics"]
