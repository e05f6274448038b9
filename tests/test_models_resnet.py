"""Tests for ResNets, projector/predictor heads and the EMA teacher."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import models
from mi_ssl_jax.models import resnet as resnet_lib
from mi_ssl_jax.models.param_count import count_params

pytestmark = pytest.mark.usefixtures("fast_compile")


def tiny_resnet(depth=18, stem="cifar", **kw):
  return models.ResNet(depth, stem=stem, width=4, rngs=nnx.Rngs(0), **kw)


@nnx.jit(static_argnames=("train",))
def resnet_fwd(model, x, train):
  return model(x, train=train)


# ---------------------------------------------------------- parameter counts
def test_resnet_param_counts_torchvision():
  # torchvision resnet50/18/34 have 25,557,032 / 11,689,512 / 21,797,672
  # parameters; without fc (2048*1000+1000 resp. 512*1000+1000):
  # 23,508,032 / 11,176,512 / 21,284,672. BN weight+bias count, running
  # statistics do not (they are nnx.BatchStat here, buffers in PyTorch).
  assert count_params(lambda r: models.ResNet(50, rngs=r)) == 23_508_032
  assert count_params(lambda r: models.ResNet(18, rngs=r)) == 11_176_512
  # CIFAR stem: 3x3x3x64 conv instead of 7x7x3x64 (-40*3*64 = -7,680).
  assert count_params(
      lambda r: models.ResNet(18, stem="cifar", rngs=r)) == 11_168_832


def test_head_param_counts_match_official_builders():
  # MEC/Matrix-SSL builder.py (same as SimSiam), PyTorch sum(p.numel()):
  # projector 2*(2048*2048) + 2*(2*2048) + (2048*2048 + 2048) = 12,593,152;
  # predictor 2048*512 + 2*512 + (512*2048 + 2048) = 2,100,224.
  assert count_params(
      lambda r: models.projector("matrix_ssl", 2048, rngs=r)) == 12_593_152
  assert count_params(
      lambda r: models.predictor("matrix_ssl", rngs=r)) == 2_100_224
  # Barlow Twins 2048-8192-8192-8192, bias-free linears, affine BNs.
  assert count_params(lambda r: models.projector(
      "barlow_twins", 2048, rngs=r)) == (
          2048 * 8192 + 2 * 8192 * 8192 + 2 * 2 * 8192)


# ------------------------------------------------------------------- shapes
@pytest.mark.parametrize("depth", [18, 34, 50])
@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_resnet_shapes_every_variant_abstract(depth, stem):
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  out = jax.eval_shape(
      lambda x: models.ResNet(depth, stem=stem, rngs=nnx.Rngs(0))(
          x, train=True), x)
  assert out.shape == (2, 2048 if depth == 50 else 512)


def test_zero_init_residual_last_bn_gamma():
  layers = resnet_lib._Layers(jnp.float32, jnp.float32, nnx.Rngs(0))
  bottleneck = resnet_lib.Bottleneck(8, 4, 2, True, layers)
  basic = resnet_lib.BasicBlock(8, 4, 1, True, layers)
  np.testing.assert_array_equal(bottleneck.bn3.scale.get_value(), 0.0)
  np.testing.assert_array_equal(basic.bn2.scale.get_value(), 0.0)
  np.testing.assert_array_equal(bottleneck.bn1.scale.get_value(), 1.0)
  plain = resnet_lib.BasicBlock(8, 4, 1, False, layers)
  np.testing.assert_array_equal(plain.bn2.scale.get_value(), 1.0)


def test_resnet_tiny_forward_and_modes():
  model = tiny_resnet(18, stem="imagenet", num_classes=5)
  assert model.num_features == 4 * 8
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  logits = resnet_fwd(model, x, train=False)
  assert logits.shape == (4, 5) and np.isfinite(logits).all()
  after_eval = nnx.state(model, nnx.BatchStat)
  jax.tree.map(np.testing.assert_array_equal, before, after_eval)
  resnet_fwd(model, x, train=True)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before,
                         nnx.state(model, nnx.BatchStat))
  assert all(jax.tree.leaves(changed))


def test_resnet_bf16_forward_close_to_float32():
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  a = resnet_fwd(tiny_resnet(), x, train=True)
  b = resnet_fwd(tiny_resnet(dtype=jnp.bfloat16), x, train=True)
  assert b.dtype == jnp.float32 and np.isfinite(b).all()
  assert np.linalg.norm(a - b) / np.linalg.norm(a) < 3e-2


# ------------------------------------------------------ 8-device BatchNorm
def test_batch_sharded_forward_equals_single_device_with_bn_stats():
  # BN statistics over the GLOBAL batch: jit on a batch-sharded array gives
  # the same outputs and running statistics as one device (SyncBatchNorm).
  backbone = tiny_resnet()
  head = models.projector("matrix_ssl", backbone.num_features,
                          hidden_dims=(16, 16), out_dim=8, rngs=nnx.Rngs(1))
  model = nnx.List([backbone, head])
  graphdef, state = nnx.split(model)

  def forward(state, x):
    backbone, head = nnx.merge(graphdef, state)
    z = head(backbone(x, train=True), train=True)  # [B, 8]
    return z, nnx.state((backbone, head), nnx.BatchStat)

  x = jax.random.normal(jax.random.key(0), (16, 16, 16, 3))
  dev0 = jax.devices()[0]
  z1, stats1 = jax.jit(forward)(jax.device_put(state, dev0),
                                jax.device_put(x, dev0))
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))
  x8 = jax.device_put(x, NamedSharding(mesh, P("data")))
  state8 = jax.device_put(state, NamedSharding(mesh, P()))
  z8, stats8 = jax.jit(forward)(state8, x8)
  assert len(z8.sharding.device_set) == 8
  np.testing.assert_allclose(z8, z1, atol=2e-5, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6,
                                                       rtol=1e-5),
               stats8, stats1)


# -------------------------------------------------------------------- heads
@pytest.mark.parametrize("recipe", sorted(models.HEAD_RECIPES))
def test_head_recipes_shapes(recipe):
  proj = models.projector(recipe, 8, hidden_dims=(16,), out_dim=12,
                          rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (6, 8))
  z = proj(x, train=True)
  assert z.shape == (6, 12) and z.dtype == jnp.float32
  if models.HEAD_RECIPES[recipe]["predictor"] is not None:
    pred = models.predictor(recipe, 12, hidden_dims=(4,), out_dim=12,
                            rngs=nnx.Rngs(1))
    assert pred(z, train=True).shape == (6, 12)
  else:
    with pytest.raises(ValueError, match="no predictor"):
      models.predictor(recipe, 12, rngs=nnx.Rngs(1))


def test_matrix_ssl_projector_ends_in_affine_free_bn():
  proj = models.projector("matrix_ssl", 8, hidden_dims=(16, 16), out_dim=12,
                          rngs=nnx.Rngs(0))
  assert proj.out_norm.scale is None and proj.out_norm.bias is None
  assert all(lin.bias is None for lin, _ in proj.hidden)
  z = proj(jax.random.normal(jax.random.key(0), (32, 8)), train=True)
  np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(z.var(0), 1, atol=1e-3)


# ---------------------------------------------------------------------- EMA
def test_cosine_ema_momentum_closed_form():
  assert models.cosine_ema_momentum(0, 100) == pytest.approx(0.996)
  assert models.cosine_ema_momentum(50, 100) == pytest.approx(0.998)
  assert models.cosine_ema_momentum(100, 100) == pytest.approx(1.0)
  steps = np.arange(0, 11)
  traced = jax.jit(models.cosine_ema_momentum)(steps, 10)
  ref = 1 - (1 - 0.996) * (1 + np.cos(np.pi * steps / 10)) / 2
  np.testing.assert_allclose(traced, ref, rtol=1e-7)


def test_ema_update_matches_closed_form_schedule():
  # Constant student s: t_n = s + prod_i m_i * (t_0 - s).
  student = models.projector("byol", 4, hidden_dims=(8,), out_dim=3,
                             rngs=nnx.Rngs(0))
  teacher = models.make_teacher(
      models.projector("byol", 4, hidden_dims=(8,), out_dim=3,
                       rngs=nnx.Rngs(1)))
  t0 = nnx.to_pure_dict(nnx.state(teacher, models.EMAParam))
  stats0 = nnx.to_pure_dict(nnx.state(teacher, nnx.BatchStat))
  s = nnx.to_pure_dict(nnx.state(student, nnx.Param))
  total = 5
  # Functional, jitted update with a traced step (as the train step does).
  graphdef, state = nnx.split((teacher, student))

  @jax.jit
  def update(state, step):
    teacher, student = nnx.merge(graphdef, state)
    models.ema_update(teacher, student,
                      models.cosine_ema_momentum(step, total))
    return nnx.state((teacher, student))

  for step in range(total):
    state = update(state, jnp.asarray(step))
  nnx.update((teacher, student), state)
  prod = np.prod([models.cosine_ema_momentum(i, total) for i in range(total)])
  expected = jax.tree.map(lambda t, s: s + prod * (t - s), t0, s)
  got = nnx.to_pure_dict(nnx.state(teacher, models.EMAParam))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7),
               got, expected)
  # Batch statistics are not EMA'd.
  jax.tree.map(np.testing.assert_array_equal, stats0,
               nnx.to_pure_dict(nnx.state(teacher, nnx.BatchStat)))
  # Pure pytree form gives the same result.
  out = models.ema_update({"a": jnp.ones(3)}, {"a": jnp.zeros(3)}, 0.9)
  np.testing.assert_allclose(out["a"], 0.9)


def test_teacher_is_invisible_to_optimizer_and_grads():
  class Siamese(nnx.Module):

    def __init__(self):
      self.student = models.MLPHead(4, (8,), 3, rngs=nnx.Rngs(0))
      self.teacher = models.make_teacher(self.student)

  model = Siamese()
  assert not nnx.state(model.teacher, nnx.Param)
  opt = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
  adam_mu = nnx.to_pure_dict(nnx.state(opt, nnx.OptState))["opt_state"][0][
      "mu"]
  assert set(adam_mu) == {"student"}  # no optimizer state for the teacher
  x = jax.random.normal(jax.random.key(0), (5, 4))

  def loss_fn(m):
    target = jax.lax.stop_gradient(m.teacher(x, train=True))
    return ((m.student(x, train=True) - target - 1.0) ** 2).mean()

  teacher_before = jax.tree.map(
      np.asarray, nnx.to_pure_dict(nnx.state(model.teacher, models.EMAParam)))
  student_before = jax.tree.map(
      np.asarray, nnx.to_pure_dict(nnx.state(model.student, nnx.Param)))
  @nnx.jit
  def train_step(model, opt):
    grads = nnx.grad(loss_fn)(model)
    opt.update(model, grads)
    return grads

  grads = train_step(model, opt)
  assert set(nnx.to_pure_dict(grads)) == {"student"}
  jax.tree.map(np.testing.assert_array_equal, teacher_before,
               nnx.to_pure_dict(nnx.state(model.teacher, models.EMAParam)))
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), student_before,
                       nnx.to_pure_dict(nnx.state(model.student, nnx.Param)))
  assert any(jax.tree.leaves(moved))
