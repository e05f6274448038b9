"""One program for every platform: the hardware choices and their branches.

The attention and log-det choices come from the run's devices or the
config (`mi_ssl_jax.platforms`), never from the host that traces; every
branch computes the same function, checked here on CPU with the accelerator
branches forced: the XLA attention of TPUs, the padded-and-masked attention
of the cuDNN path (through XLA, since cuDNN needs a GPU) and Cholesky vs
LU log-dets, in value and gradient, alone and in a whole M-MAE step.

The cuDNN kernel itself is checked on a GPU by
`test_cudnn_attention_matches_xla_on_gpu` (skipped without one; run it
there with `MI_SSL_TEST_ACCELERATOR=1 python -m pytest
tests/test_attention_kernels.py`, as `bench/accelerator.sh` does).
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mi_ssl_jax import config_lib, methods, model_state, platforms
from mi_ssl_jax.bench import attention as attention_bench
from mi_ssl_jax.models import vit

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mi_ssl_jax"


def test_auto_choices_follow_the_devices_platform():
  cfg = {"attention": "auto", "logdet": "auto"}
  assert platforms.resolve(cfg, "cpu") == platforms.Kernels(
      "xla_heads_first", "lu")
  assert platforms.resolve(cfg, "gpu") == platforms.Kernels(
      "cudnn", "cholesky")
  assert platforms.resolve(cfg, "tpu") == platforms.Kernels("xla", "cholesky")
  # A config value wins over the platform; unresolved "auto" is portable.
  assert platforms.resolve({"attention": "xla", "logdet": "lu"},
                           "gpu") == platforms.Kernels("xla", "lu")
  assert platforms.of_config(cfg) == platforms.Kernels("xla", "cholesky")
  assert platforms.devices_platform(jax.devices()) == "cpu"
  with pytest.raises(config_lib.ConfigError, match="config.attention"):
    platforms.resolve({"attention": "flash"}, "gpu")
  with pytest.raises(config_lib.ConfigError, match="config.logdet"):
    platforms.resolve({"logdet": "qr"}, "cpu")
  with pytest.raises(config_lib.ConfigError, match="seq_multiple"):
    platforms.resolve({"attention_seq_multiple": 0}, "gpu")


def test_no_model_loss_or_method_code_asks_the_tracing_host():
  """Trace-time code never branches on jax.default_backend()."""
  offenders = [
      str(p.relative_to(PACKAGE)) for sub in ("models", "losses", "matrix",
                                              "methods", "finetune")
      for p in (PACKAGE / sub).rglob("*.py")
      if "default_backend" in p.read_text()]
  offenders += [name for name in ("train.py", "loop.py", "model_state.py")
                if "default_backend" in (PACKAGE / name).read_text()]
  assert not offenders, offenders


@pytest.mark.parametrize("t,multiple", [(17, 8), (50, 64), (197, 64),
                                        (16, 8)])
def test_padded_attention_equals_unpadded_in_value_and_gradient(t, multiple):
  """The cuDNN path's padding + sequence-length mask, run through XLA."""
  b, n, h = 2, 3, 8
  errs = attention_bench.compare("xla", multiple, (b, t, n, h),
                                 dtype=jnp.float32, seed=t)
  # compare() measures against unpadded float32 XLA attention.
  assert max(errs.values()) < 1e-5, errs


def test_cudnn_choice_falls_back_to_xla_for_float32():
  """float32 activations take the XLA kernel (cuDNN is half precision
  only), so a float32 model with attention="cudnn" runs anywhere."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 16))
  out = {}
  for impl in ("xla", "cudnn", "xla_heads_first"):
    attn = vit.Attention(16, 2, impl=impl, rngs=nnx.Rngs(0))
    out[impl] = attn(x)
  np.testing.assert_array_equal(out["cudnn"], out["xla"])
  np.testing.assert_allclose(out["xla_heads_first"], out["xla"], rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(ValueError, match="attention must be one of"):
    vit.Attention(16, 2, impl="flash", rngs=nnx.Rngs(0))


def test_cudnn_choice_without_cudnn_falls_back_to_xla_in_bf16():
  """bf16 on a machine without cuDNN: JAX refuses while tracing, the XLA
  kernel serves (a TPU compile of a GPU-configured recipe, or this CPU)."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 16)).astype(jnp.bfloat16)
  outs = [vit.Attention(16, 2, impl=impl, dtype=jnp.bfloat16,
                        rngs=nnx.Rngs(0))(x) for impl in ("cudnn", "xla")]
  np.testing.assert_array_equal(outs[0], outs[1])


def _mmae_step_values(platform, **fields):
  """Loss and gradients of a tiny M-MAE for a target platform's choices."""
  from mi_ssl_jax.configs import fmnist_mae  # noqa: PLC0415
  config = fmnist_mae.fmnist_mae("mmae", 1.0, tiny=True)
  with config.unlocked():
    config.update(fields)
  mconfig = model_state.method_config(config, 2, platform=platform)
  method = methods.get_method("mmae")
  model = method.init(mconfig, nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(16, 28, 28, 1)),
                                jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}

  def loss(model):
    return method.loss_fn(model, batch, jax.random.key(1), 0)[0]

  value, grads = nnx.value_and_grad(loss)(model)
  return model, float(value), jax.tree.leaves(nnx.to_pure_dict(grads))


def test_mmae_step_is_the_same_function_on_every_platforms_branch():
  """The TPU program (XLA attention, Cholesky) and the CPU program
  (head-major attention, LU), both traced here, agree in loss and
  gradients; and the trainer's choice reaches the model."""
  cpu_model, cpu_loss, cpu_grads = _mmae_step_values("cpu")
  tpu_model, tpu_loss, tpu_grads = _mmae_step_values("tpu")
  assert cpu_model.mae.encoder.blocks[0].attn.impl == "xla_heads_first"
  assert tpu_model.mae.encoder.blocks[0].attn.impl == "xla"
  assert tpu_model.mae.decoder_blocks[0].attn.impl == "xla"
  assert (cpu_model.logdet, tpu_model.logdet) == ("lu", "cholesky")
  gpu_model, gpu_loss, gpu_grads = _mmae_step_values("gpu")
  assert gpu_model.mae.encoder.blocks[0].attn.impl == "cudnn"
  assert tpu_loss == pytest.approx(cpu_loss, rel=1e-6)
  assert gpu_loss == tpu_loss  # float32 tiny recipe: cuDNN falls back to XLA
  for a, b in zip(cpu_grads, tpu_grads, strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_config_override_beats_the_platform():
  model, _, _ = _mmae_step_values("gpu", attention="xla_heads_first",
                                  logdet="lu")
  assert model.mae.encoder.blocks[0].attn.impl == "xla_heads_first"
  assert model.logdet == "lu"


def _gpu_available() -> bool:
  try:
    return bool(jax.devices("gpu"))
  except RuntimeError:
    return False


@pytest.mark.skipif(not _gpu_available(), reason="needs a GPU (cuDNN)")
@pytest.mark.parametrize("shape", [(4, 197, 16, 32), (4, 50, 12, 64)])
def test_cudnn_attention_matches_xla_on_gpu(shape):
  """cuDNN flash attention (padded to 64 tokens) equals float32 attention
  within bf16 roundoff, in value and gradient, as accurately as XLA's bf16
  attention (`attention_bench.check_cudnn`)."""
  with jax.default_device(jax.devices("gpu")[0]):
    attention_bench.check_cudnn(shape, multiple=64)
