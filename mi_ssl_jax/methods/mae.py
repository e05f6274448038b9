"""MAE (He et al. 2022), and the shared core of U-MAE and M-MAE.

Model: `mi_ssl_jax.models.MaskedAutoencoder` (ViT encoder on the visible 25%
of patches + a light decoder), plus an optional online linear probe on the
detached CLS feature (as the M-MAE/U-MAE code, docs/methods.md §3.2 item 6).

Loss (official code, `models_mae.py::forward_loss` + `engine_pretrain.py`):

  L = L_MAE + λ·R(F) + L_CE(probe)

* L_MAE: normalised-pixel MSE over masked patches (`losses.mae_loss`).
* R: none for MAE; U-MAE's uniformity ‖F̂F̂ᵀ‖²_F/B² (`umae.py`); M-MAE's
  −log det(I + (μ/d)·F̂ᵀF̂) (`mmae.py`). F = the CLS feature of the MASKED
  input, with the encoder's final LayerNorm applied twice as in the code
  (`model.cls_double_norm`), on the GLOBAL batch: jit all-reduces the d×d
  Gram, so R is the same on 1 and N devices.
* Official-run gradient scaling: the official gather gives the regulariser
  an effective weight λ/W on W GPUs (docs/methods.md §3.2 item 7). Our gradient
  is exact by default; `official_world_size=W` reproduces the released runs
  (λ_eff = λ/W). The ImageNet recipes set W = 8 (the released scripts).
* L_CE: cross-entropy of a linear head on `stop_gradient(CLS)` (weight 1, it
  trains only the head); examples with label < 0 are ignored. Off with
  `online_probe=False`.

Config fields read here (see configs/mae_vitb.py): `model` (kwargs of
MaskedAutoencoder: variant, decoder_width/depth/heads, cls_double_norm,
drop_path_rate, remat, and optional width/depth/mlp_dim/num_heads/patch_size
overrides), `image_size`, `channels`, `num_classes`, `mask_ratio`,
`norm_pix_loss`, `online_probe`, `dtype`, and for U-MAE/M-MAE `reg_lambda`,
`reg_mu`, `reg_centering`, `reg_form`, `official_world_size`.

Features for evaluators (`predict_fn`): by default the CLS of the final norm
on ALL patches, no masking (MAE/M-MAE `--cls_token` linear-probe feature);
`feature_pool` = "gap" | "cls+gap" | "tokens" selects another readout
(`MaskedAutoencoder.features`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mi_ssl_jax import config_lib, losses, matrix, models

INPUT = "single_view"
# The MAE loss is a mean over masked patches and every example masks the same
# number of patches, so micro-batch averages equal the full-batch average:
# gradient accumulation is exact. (U-MAE / M-MAE override this.)
BATCH_COUPLED = False
REGULARIZER = "none"  # "none" | "uniformity" (U-MAE) | "tcr" (M-MAE)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _torch_linear_init(fan_in: int):
  """PyTorch's default nn.Linear init, U(±1/sqrt(fan_in)) (the probe's)."""
  bound = fan_in**-0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class MAEFamily(nnx.Module):
  """The trained module: MAE + optional online probe + loss settings."""

  def __init__(self, config, regularizer: str, rngs: nnx.Rngs):
    kwargs = {k: v for k, v in config.model.to_dict().items()
              if v is not None}
    dtype = _DTYPES[config.get("dtype", "float32")]
    self.mae = models.MaskedAutoencoder(
        img_size=config.image_size, in_channels=config.channels,
        mask_ratio=config.mask_ratio, dtype=dtype, rngs=rngs, **kwargs)
    width = self.mae.encoder.width
    if config.get("online_probe", True):
      init = _torch_linear_init(width)
      self.probe = nnx.Linear(width, config.num_classes, kernel_init=init,
                              bias_init=init, rngs=rngs)
    else:
      self.probe = None
    self.regularizer = regularizer
    self.norm_pix = bool(config.get("norm_pix_loss", True))
    self.reg_lambda = float(config.get("reg_lambda", 0.0))
    self.reg_mu = float(config.get("reg_mu", 1.0))
    self.reg_centering = bool(config.get("reg_centering", False))
    self.reg_form = config.get("reg_form", "code")
    # 0 / None: exact gradient; W: the official W-GPU runs' λ/W scaling.
    self.official_world_size = config.get("official_world_size") or None
    self.feature_pool = str(config.get("feature_pool", "cls"))


def validate_config(config) -> None:
  config_lib.check_open_unit_interval(config.mask_ratio, "mask_ratio")
  if config.get("reg_lambda", 0.0) < 0:
    raise config_lib.ConfigError(
        f"config.reg_lambda must be ≥ 0, got {config.reg_lambda}")
  if config.get("reg_mu", 1.0) <= 0:
    raise config_lib.ConfigError(
        f"config.reg_mu must be > 0, got {config.reg_mu}")
  if config.get("dtype", "float32") not in _DTYPES:
    raise config_lib.ConfigError(
        f"config.dtype must be one of {sorted(_DTYPES)}, got {config.dtype!r}")
  if config.get("feature_pool", "cls") not in models.mae.FEATURE_POOLS:
    raise config_lib.ConfigError(
        f"config.feature_pool must be one of {models.mae.FEATURE_POOLS}, got "
        f"{config.feature_pool!r}")
  if config.image_size % _patch_size(config):
    raise config_lib.ConfigError(
        f"config.image_size={config.image_size} is not a multiple of the "
        f"patch size {_patch_size(config)}")


def _patch_size(config) -> int:
  if config.model.get("patch_size"):
    return int(config.model.patch_size)
  return models.decode_variant(config.model.variant)["patch_size"]


def build(config, rngs: nnx.Rngs, regularizer: str) -> MAEFamily:
  return MAEFamily(config, regularizer, rngs)


def init(config, rngs: nnx.Rngs) -> MAEFamily:
  return build(config, rngs, REGULARIZER)


def regularizer_value(model: MAEFamily, cls: jax.Array) -> jax.Array | None:
  """R(F) on the global batch of CLS features [B, D] (None for MAE)."""
  if model.regularizer == "tcr":
    return losses.mmae_regularizer(
        cls, mu=model.reg_mu, centering=model.reg_centering,
        form=model.reg_form, official_world_size=model.official_world_size)
  if model.regularizer == "uniformity":
    return losses.umae_uniformity(
        cls, official_world_size=model.official_world_size)
  return None


def loss_fn(model: MAEFamily, batch, key, step):
  """L = L_MAE + λ·R(CLS) + CE(probe(stop_gradient(CLS)))."""
  del step
  images = batch["image"]  # [B, H, W, C]
  out = model.mae(images, key=key)  # pred [B, L, P], mask [B, L], cls [B, D]
  reconstruction = losses.mae_loss(out.pred, model.mae.patchify(images),
                                   out.mask, norm_pix=model.norm_pix)
  loss = reconstruction
  metrics = {"mae_loss": reconstruction}
  reg = regularizer_value(model, out.cls)
  if reg is not None:
    loss = loss + model.reg_lambda * reg
    metrics[f"reg_{model.regularizer}"] = reg
  if model.probe is not None:
    labels = batch["label"]  # [B]
    logits = model.probe(jax.lax.stop_gradient(out.cls))  # [B, classes]
    valid = (labels >= 0).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.maximum(labels, 0))
    n = jnp.maximum(valid.sum(), 1.0)
    probe_ce = jnp.sum(ce * valid) / n
    loss = loss + probe_ce
    metrics["probe_ce"] = probe_ce
    metrics["probe_acc"] = jnp.sum(
        (jnp.argmax(logits, -1) == labels) * valid) / n
  return loss, metrics


def predict_fn(model: MAEFamily, batch) -> jax.Array:
  """Evaluation features of all patches, pooled by `config.feature_pool`
  (default "cls": the CLS token of the final norm, [B, D])."""
  return model.mae.features(batch["image"], model.feature_pool)


def reconstruct_fn(model: MAEFamily, batch, key):
  """Inputs of the MAE figure: predicted patches and the mask.

  Returns ``(pred, mask, patch_size)``: pred [B, L, p²C] in the pixel space of
  ``batch["image"]`` (with ``norm_pix_loss`` the prediction is de-normalised
  with each patch's own mean and unbiased variance, as MAE's visualisation
  does) and mask [B, L] (1 = removed).
  """
  images = batch["image"]  # [B, H, W, C]
  out = model.mae(images, key=key)
  pred = out.pred  # [B, L, P]
  if model.norm_pix:
    target = model.mae.patchify(images)  # [B, L, P]
    mean = target.mean(-1, keepdims=True)
    var = target.var(-1, ddof=1, keepdims=True)
    pred = pred * jnp.sqrt(var + 1e-6) + mean
  return pred, out.mask, model.mae.patch_size


def diagnostics_fn(model: MAEFamily, batch, key, step):
  """Spectrum of the masked-input CLS features (what R acts on), and the
  label-free predictors of downstream accuracy.

  * `rankme`, `effective_rank`, `matrix_entropy` of the CLS of one masking;
  * `lidar`: LiDAR of the CLS features with two independent maskings of
    each image as its two "augmentations" (masking is MAE's augmentation);
  * `alpha_req`: α-ReQ of the unmasked evaluation features;
  * `block<i>_token_entropy`: von Neumann entropy of each image's patch-token
    Gram matrix after every encoder block (unmasked input).
  """
  del step
  images = batch["image"]
  cls = model.mae(images, key=key).cls  # [B, D]
  cls2 = model.mae(images, key=jax.random.fold_in(key, 7)).cls  # [B, D]
  z = matrix.normalize_rows(cls)
  b, d = z.shape
  gram = z.T @ z if d <= b else z @ z.T  # non-zero spectra agree
  out = {"rankme": matrix.rankme(cls),
         "effective_rank": matrix.effective_rank(cls),
         "matrix_entropy": matrix.matrix_entropy(gram),
         "lidar": matrix.lidar(jnp.stack([cls, cls2], axis=1)),
         "alpha_req": matrix.alpha_req(predict_fn(model, batch))}
  for i, tokens in enumerate(model.mae.encoder.block_tokens(images)):
    out[f"block{i + 1}_token_entropy"] = matrix.token_entropy(tokens[:, 1:])
  return jax.tree.map(jax.lax.stop_gradient, out)
