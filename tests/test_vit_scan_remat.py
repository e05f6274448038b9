"""Scanned blocks and remat policies compute the unrolled model's function.

`config.model.scan_blocks` (one compiled block scanned over the depth) and
`config.model.remat` ("full", "dots", "dots_no_batch") are execution
strategies for large models (docs/scaling.md): the loss and every gradient
must equal the plain unrolled model's to float32 roundoff, with drop path
on (per-block rates and keys), and the parameters keep their layout.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mi_ssl_jax import config_lib, methods, model_state
from mi_ssl_jax.models import vit

pytestmark = pytest.mark.usefixtures("fast_compile")


def _loss_and_grads(scan_blocks, remat, drop_path_rate=0.1):
  from mi_ssl_jax.configs import fmnist_mae  # noqa: PLC0415
  config = fmnist_mae.fmnist_mae("mmae", 1.0, tiny=True)
  with config.unlocked():
    config.model.update(dict(depth=3, decoder_depth=2, remat=remat,
                             scan_blocks=scan_blocks,
                             drop_path_rate=drop_path_rate))
  method = methods.get_method("mmae")
  method.validate_config(config)
  model = method.init(model_state.method_config(config, 2, platform="tpu"),
                      nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(16, 28, 28, 1)),
                                jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}

  @nnx.jit
  def value_and_grad(model):
    return nnx.value_and_grad(
        lambda m: method.loss_fn(m, batch, jax.random.key(3), 0)[0])(model)

  loss, grads = value_and_grad(model)
  return float(loss), nnx.to_pure_dict(grads)


def test_scanned_and_rematerialised_blocks_equal_the_unrolled_model():
  ref_loss, ref_grads = _loss_and_grads(False, "none")
  flat_ref = jax.tree_util.tree_leaves_with_path(ref_grads)
  assert any("blocks" in jax.tree_util.keystr(p) for p, _ in flat_ref)
  for scan, remat in ((True, "none"), (True, "full"), (False, "dots"),
                      (True, "dots_no_batch")):
    loss, grads = _loss_and_grads(scan, remat)
    assert loss == pytest.approx(ref_loss, rel=1e-6), (scan, remat)
    flat = jax.tree_util.tree_leaves_with_path(grads)
    # Same parameter layout (per-block names), same gradients.
    assert [p for p, _ in flat] == [p for p, _ in flat_ref]
    for (path, g), (_, r) in zip(flat, flat_ref, strict=True):
      np.testing.assert_allclose(
          g, r, rtol=1e-4, atol=1e-6,
          err_msg=f"{jax.tree_util.keystr(path)} scan={scan} remat={remat}")


def test_drop_path_is_on_in_the_scanned_blocks():
  """With drop path the loss differs from the deterministic model's, in
  the scanned model as in the unrolled one (same draws, same value)."""
  on_unrolled, _ = _loss_and_grads(False, "none", drop_path_rate=0.5)
  on_scanned, _ = _loss_and_grads(True, "none", drop_path_rate=0.5)
  off, _ = _loss_and_grads(True, "none", drop_path_rate=0.0)
  assert on_scanned == pytest.approx(on_unrolled, rel=1e-6)
  assert abs(on_scanned - off) > 1e-4


def test_bad_remat_policy_is_one_config_error():
  from mi_ssl_jax.configs import fmnist_mae  # noqa: PLC0415
  config = fmnist_mae.fmnist_mae("mae", 1.0, tiny=True)
  with config.unlocked():
    config.model.remat = "everything"
  with pytest.raises(config_lib.ConfigError, match="config.model.remat"):
    methods.get_method("mae").validate_config(config)
  assert vit.remat_policy(True) == "full"
  assert vit.remat_policy(False) == "none"
