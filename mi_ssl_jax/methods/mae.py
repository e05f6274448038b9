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
overrides), `image_size`, `channels`, `num_classes`, and the method's
declared hyperparameters `Hparams` (mask ratio, loss, probe, regulariser,
readout; their defaults are written only there). The ViT computes in
`config.compute_dtype` (`method_base.compute_dtype`); the loss, R and the
probe get its float32 outputs.

Features for evaluators (`predict_fn`): by default the CLS of the final norm
on ALL patches, no masking (MAE/M-MAE `--cls_token` linear-probe feature);
`feature_pool` = "gap" | "cls+gap" | "tokens" selects another readout
(`MaskedAutoencoder.features`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mi_ssl_jax import config_lib, losses, matrix, models, platforms
from mi_ssl_jax.methods import base as method_base

INPUT = "single_view"



@dataclasses.dataclass(frozen=True)
class Hparams:
  """The MAE family's hyperparameters (defaults: MAE / M-MAE ViT-B code).

  Attributes:
    mask_ratio: fraction of patches removed (0.75).
    norm_pix_loss: MSE against per-patch normalised pixels.
    online_probe: train a linear head on the detached CLS.
    reg_lambda: λ, the weight of R (0 for MAE).
    reg_mu: μ of M-MAE's log-det (1 for ViT-B, 3 for ViT-L).
    reg_centering: centre F̂ before R (the code's `--centering`).
    reg_form: "code" (official −log det(I + μ/d F̂ᵀF̂)) or "tcr" (paper).
    official_world_size: W > 0 scales R's gradient by 1/W as the released
      W-GPU runs; 0 is the exact gradient.
    feature_pool: evaluation readout ("cls", "gap", "cls+gap", "tokens").
  """

  mask_ratio: float = 0.75
  norm_pix_loss: bool = True
  online_probe: bool = True
  reg_lambda: float = 0.0
  reg_mu: float = 1.0
  reg_centering: bool = False
  reg_form: str = "code"
  official_world_size: int = 0
  feature_pool: str = "cls"

  def __post_init__(self):
    config_lib.check_open_unit_interval(self.mask_ratio, "mask_ratio")
    if self.reg_lambda < 0:
      raise config_lib.ConfigError(
          f"config.reg_lambda must be ≥ 0, got {self.reg_lambda}")
    if self.reg_mu <= 0:
      raise config_lib.ConfigError(
          f"config.reg_mu must be > 0, got {self.reg_mu}")
    if self.official_world_size < 0:
      raise config_lib.ConfigError(
          f"config.official_world_size must be ≥ 0, got "
          f"{self.official_world_size}")
    config_lib.check_choice(self.reg_form, "reg_form", ("code", "tcr"))
    config_lib.check_choice(self.feature_pool, "feature_pool",
                            models.mae.FEATURE_POOLS)


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
    hp = method_base.read_hparams(Hparams, config)
    kernels = platforms.of_config(config)  # resolved by the trainer
    self.mae = models.MaskedAutoencoder(
        img_size=config.image_size, in_channels=config.channels,
        mask_ratio=hp.mask_ratio, attention=kernels.attention,
        attention_seq_multiple=kernels.attention_seq_multiple,
        dtype=method_base.compute_dtype(config), rngs=rngs, **kwargs)
    width = self.mae.encoder.width
    if hp.online_probe:
      init = _torch_linear_init(width)
      self.probe = nnx.Linear(width, config.num_classes, kernel_init=init,
                              bias_init=init, rngs=rngs)
    else:
      self.probe = None
    self.regularizer = regularizer
    self.logdet = kernels.logdet  # static: "cholesky" | "lu"
    self.hp = hp  # static graph metadata (a frozen, hashable dataclass)


def validate_config(config) -> None:
  method_base.read_hparams(Hparams, config)
  try:
    models.vit.remat_policy(config.model.get("remat", "none"))
  except ValueError as e:
    raise config_lib.ConfigError(f"config.model.{e}") from None
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


def regularizer_value(model: MAEFamily, cls: jax.Array) -> jax.Array | None:
  """R(F) on the global batch of CLS features [B, D] (None for MAE)."""
  hp = model.hp
  world = hp.official_world_size or None  # None: the exact gradient
  if model.regularizer == "tcr":
    return losses.mmae_regularizer(
        cls, mu=hp.reg_mu, centering=hp.reg_centering, form=hp.reg_form,
        official_world_size=world, logdet=model.logdet)
  if model.regularizer == "uniformity":
    return losses.umae_uniformity(cls, official_world_size=world)
  return None


def embed_fn(model: MAEFamily, batch, key, step) -> dict[str, jax.Array]:
  """The network's per-example outputs that the objective needs.

  One masked forward pass of `batch["image"]` [B, H, W, C]:
  ``{"reconstruction_sum": [B], "masked_patches": [B], "cls": [B, D]}``,
  the per-example parts of L_MAE (`losses.mae_loss_terms`) and the CLS
  feature R acts on. `key` is a PRNG key or a `models.ChunkKey` (the
  trainer's `grad_chunks`: each example draws its mask and drop path as in
  the whole batch).
  """
  del step
  images = batch["image"]  # [B, H, W, C]
  out = model.mae(images, key=key)  # pred [B, L, P], mask [B, L], cls [B, D]
  sums, counts = losses.mae_loss_terms(
      out.pred, model.mae.patchify(images), out.mask,
      norm_pix=model.hp.norm_pix_loss)  # [B], [B]
  return {"reconstruction_sum": sums, "masked_patches": counts,
          "cls": out.cls}


def objective_fn(model: MAEFamily, embeddings, batch, key, step):
  """L = L_MAE + λ·R(CLS) + CE(probe(stop_gradient(CLS))) on the whole
  batch's `embed_fn` outputs (R couples the batch; the probe reads
  `batch["label"]`)."""
  del key, step
  reconstruction = jnp.sum(embeddings["reconstruction_sum"]) / jnp.maximum(
      jnp.sum(embeddings["masked_patches"]), 1.0)
  cls = embeddings["cls"]  # [B, D]
  loss = reconstruction
  metrics = {"mae_loss": reconstruction}
  reg = regularizer_value(model, cls)
  if reg is not None:
    loss = loss + model.hp.reg_lambda * reg
    metrics[f"reg_{model.regularizer}"] = reg
  if model.probe is not None:
    labels = batch["label"]  # [B]
    logits = model.probe(jax.lax.stop_gradient(cls))  # [B, classes]
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


def loss_fn(model: MAEFamily, batch, key, step):
  """L = L_MAE + λ·R(CLS) + CE(probe(stop_gradient(CLS)))."""
  return objective_fn(model, embed_fn(model, batch, key, step), batch, key,
                      step)


def predict_fn(model: MAEFamily, batch) -> jax.Array:
  """Evaluation features of all patches, pooled by `config.feature_pool`
  (default "cls": the CLS token of the final norm, [B, D])."""
  return model.mae.features(batch["image"], model.hp.feature_pool)


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
  if model.hp.norm_pix_loss:
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
    Gram matrix after every encoder block (unmasked input; mean over
    `method_base.TOKEN_ENTROPY_EXAMPLES` evenly spaced images).
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
  few = method_base.spread_rows(images, method_base.TOKEN_ENTROPY_EXAMPLES)
  for i, tokens in enumerate(model.mae.encoder.block_tokens(few)):
    out[f"block{i + 1}_token_entropy"] = matrix.token_entropy(tokens[:, 1:])
  return jax.tree.map(jax.lax.stop_gradient, out)


@dataclasses.dataclass(frozen=True)
class MAEMethod:
  """The method interface (`methods/base.py`) of one member of the family.

  MAE, U-MAE and M-MAE differ only in the regulariser R and in whether it
  couples the examples of a batch; each file is one line,
  ``METHOD = mae.MAEMethod(regularizer=..., BATCH_COUPLED=...)``.
  """

  regularizer: str  # "none" | "uniformity" (U-MAE) | "tcr" (M-MAE)
  BATCH_COUPLED: bool

  INPUT: ClassVar[str] = INPUT
  Hparams: ClassVar[type] = Hparams

  def init(self, config, rngs: nnx.Rngs) -> MAEFamily:
    return build(config, rngs, self.regularizer)

  validate_config = staticmethod(validate_config)
  loss_fn = staticmethod(loss_fn)
  embed_fn = staticmethod(embed_fn)
  objective_fn = staticmethod(objective_fn)
  predict_fn = staticmethod(predict_fn)
  reconstruct_fn = staticmethod(reconstruct_fn)
  diagnostics_fn = staticmethod(diagnostics_fn)


# The MAE loss is a mean over masked patches and every example masks the same
# number of patches, so micro-batch averages equal the full-batch average:
# gradient accumulation is exact.
METHOD = MAEMethod(regularizer="none", BATCH_COUPLED=False)
