"""Shared wiring of the Siamese methods: backbone, heads, EMA teacher, views.

Not a method itself (the trainer's `config.method` names one of
matrix_ssl, mec, emi, simsiam, byol, barlow_twins, vicreg, simclr, spectral,
frossl, ivne, mmcr, lejepa); each of those files declares only its
hyperparameters and its objective, and `SiameseMethod` (below) makes the
method interface.
The network (MEC / Matrix-SSL `mec/builder.py`, SimSiam, BYOL):

    student:  x ─ backbone ─ h ─ projector ─ z [─ predictor ─ p]
    teacher:  x ─ EMA(backbone + projector) ─ t        (stop-gradient)

* Backbone (`config.model.backbone`):
  - "resnet" (default): `mi_ssl_jax.models.ResNet(depth, stem)`; h is the
    global-average-pooled feature;
  - "vit": `ViTBackbone`, the MAE family's `models.VisionTransformer`
    (`config.model.variant` from its table `models.VIT_VARIANTS`, e.g.
    "S/16", with optional overrides `vit_width`, `vit_depth`,
    `vit_mlp_dim`, `vit_num_heads`, `patch_size`); h is the CLS token of
    the final LayerNorm (`config.model.pool="cls"`, MoCo v3 `vits.py`) or
    the mean of the patch tokens ("gap"); `config.model.pos_embed` is
    "learn" (default) or "sincos2d" (a fixed 2-D sin-cos table, as MoCo
    v3's). `config.model.freeze_patch_embed` keeps the random patch
    projection fixed (MoCo v3 §4.2, random patch projection;
    `--stop-grad-conv1` of `facebookresearch/moco-v3` main_moco.py): its
    weights are `FrozenParam`, which no optimizer, gradient or weight decay
    sees (in PyTorch, `requires_grad=False` leaves them out of AdamW too).
    A ViT has no BatchNorm, so `zero_init_residual` and per-view backbone
    statistics do not apply to it (the heads keep their BatchNorm).
  h is what evaluators see (`predict_fn`).
* Heads: `mi_ssl_jax.models.projector/predictor` with a named recipe
  (`config.model.head`) and optional size overrides.
* Teacher: `models.make_teacher(student encoder)`: its weights are
  `EMAParam` (not `nnx.Param`), so the optimizer and the gradients never see
  them; it runs in train mode (batch statistics, own running statistics), as
  the official MEC / Matrix-SSL / BYOL code. `post_update` applies
  `teacher ← m·teacher + (1 − m)·student` with the cosine schedule
  `m_i = 1 − (1 − m₀)(1 + cos(π i / N))/2` (`config.ema_momentum` = m₀).
* Each view goes through the networks in its own call, so BatchNorm
  statistics are per view over the GLOBAL batch (SyncBatchNorm semantics:
  under a batch-sharded jit XLA inserts the collectives), as in the official
  PyTorch code (`encoder(x1)`, `encoder(x2)`).

Config fields read here (`config.model`): backbone; for ResNets depth,
stem, width, zero_init_residual; for ViTs variant, pool, pos_embed,
freeze_patch_embed, drop_path_rate (0: drop path would need a key the
encoder does not get), remat, scan_blocks and the size overrides; head,
proj_hidden_dims, proj_dim, proj_out_norm, predictor, pred_hidden_dims.
Also `config.compute_dtype` (backbone and heads compute in it; BatchNorm
statistics and every output stay float32), `config.ema_momentum`,
`config.channels`, `config.image_size` (ViT), `config.attention` (ViT,
resolved by the trainer) and `config.total_steps`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mi_ssl_jax import config_lib, losses, matrix, models, platforms
from mi_ssl_jax.methods import base as method_base

INPUT = "two_view"
BATCH_COUPLED = True  # BatchNorm and Gram/covariance terms over the batch


BACKBONES = ("resnet", "vit")
# `config.model` fields of a ViT backbone -> `models.VisionTransformer`
# arguments, passed when set (None: the variant's value). Prefixed `vit_`
# because the ResNet fields `width` and `depth` mean something else.
_VIT_OVERRIDES = {"vit_width": "width", "vit_depth": "depth",
                  "vit_mlp_dim": "mlp_dim", "vit_num_heads": "num_heads",
                  "patch_size": "patch_size"}


class FrozenParam(nnx.Variable):
  """A weight kept at its initial value: not an `nnx.Param`, so neither the
  optimizer (no update, no weight decay) nor the gradients see it; it is
  saved and restored with the model (MoCo v3's frozen patch projection)."""


class ViTBackbone(models.VisionTransformer):
  """`models.VisionTransformer` with the ResNet's backbone interface.

  ``__call__(x, *, train)`` returns the pooled feature [B, width] (the ViT
  has no train-mode behaviour without drop path, so `train` changes
  nothing); `num_features` is the width; `freeze_patch_embed` turns the
  patch projection's kernel and bias into `FrozenParam`.
  """

  def __init__(self, variant: str, *, freeze_patch_embed: bool = False,
               **kwargs):
    super().__init__(variant, **kwargs)
    self.num_features = self.width
    if freeze_patch_embed:
      conv = self.patch_embed
      conv.kernel = FrozenParam(conv.kernel.get_value())
      conv.bias = FrozenParam(conv.bias.get_value())

  def __call__(self, images: jax.Array, *, train: bool = True,
               key: jax.Array | None = None) -> jax.Array:
    """images [B, H, W, C] -> float32 [B, width] (CLS or mean patch)."""
    del train
    return super().__call__(images, key=key)


class Encoder(nnx.Module):
  """Backbone + projector: x [B, H, W, C] -> (h [B, F], z [B, D])."""

  def __init__(self, backbone: models.ResNet | ViTBackbone,
               projector: models.MLPHead):
    self.backbone = backbone
    self.projector = projector

  def __call__(self, x: jax.Array, *, train: bool
               ) -> tuple[jax.Array, jax.Array]:
    h = self.backbone(x, train=train)  # [B, F]
    return h, self.projector(h, train=train)  # [B, D]


class Siamese(nnx.Module):
  """Student encoder, optional predictor and optional EMA teacher.

  Method hyperparameters are set as plain Python attributes by each method's
  `init` (they are static: changing one recompiles).
  """

  def __init__(self, encoder: Encoder, predictor: models.MLPHead | None,
               with_teacher: bool, *, total_steps: int, ema_base: float,
               logdet: str = "cholesky"):
    self.encoder = encoder
    self.predictor = predictor
    self.teacher = models.make_teacher(encoder) if with_teacher else None
    self.total_steps = int(total_steps)
    self.ema_base = float(ema_base)
    self.logdet = logdet  # exact log-dets' factorisation (platforms)


class Views(NamedTuple):
  """Outputs for the two views (None where the network has no such part).

  h: backbone features [B, F]; z: projector outputs [B, D]; p: predictor
  outputs [B, D] (student side of predictor methods); t: teacher projector
  outputs [B, D], already stop-gradient.
  """
  h1: jax.Array
  h2: jax.Array
  z1: jax.Array
  z2: jax.Array
  p1: jax.Array | None
  p2: jax.Array | None
  t1: jax.Array | None
  t2: jax.Array | None

  def student(self, view: int) -> jax.Array:
    """Student output of `view` (1 or 2): p with a predictor, else z."""
    p, z = (self.p1, self.z1) if view == 1 else (self.p2, self.z2)
    return z if p is None else p


def _dims(value) -> tuple[int, ...]:
  return tuple(int(v) for v in (value or ()))


def validate_model_config(config) -> None:
  """One-line ConfigErrors for the shared fields (called by each method)."""
  m = config.get("model")
  if m is None:
    raise config_lib.ConfigError("config.model is missing (Siamese recipes "
                                 "set depth, stem, width, head, ...)")
  backbone = m.get("backbone", "resnet")
  config_lib.check_choice(backbone, "model.backbone", BACKBONES)
  if backbone == "vit":
    _validate_vit(config)
  else:
    if m.depth not in models.RESNET_LAYOUTS:
      raise config_lib.ConfigError(
          f"config.model.depth must be one of "
          f"{sorted(models.RESNET_LAYOUTS)}, got {m.depth!r}")
    if m.stem not in ("imagenet", "cifar"):
      raise config_lib.ConfigError(f"config.model.stem must be 'imagenet' "
                                   f"or 'cifar', got {m.stem!r}")
  if m.head not in models.HEAD_RECIPES:
    raise config_lib.ConfigError(
        f"config.model.head must be one of {sorted(models.HEAD_RECIPES)}, "
        f"got {m.head!r}")
  method_base.compute_dtype(config)
  ema = config.get("ema_momentum", 0.996)
  if not 0.0 <= ema <= 1.0:
    raise config_lib.ConfigError(
        f"config.ema_momentum must be in [0, 1], got {ema!r}")


def _validate_vit(config) -> None:
  """One-line ConfigErrors for the ViT backbone's fields."""
  m = config.model
  try:
    spec = models.decode_variant(m.get("variant") or "")
  except ValueError as e:
    raise config_lib.ConfigError(f"config.model.variant: {e}") from None
  patch = m.get("patch_size") or spec.get("patch_size")
  if not patch:
    raise config_lib.ConfigError(
        f"config.model.variant={m.variant!r} has no patch size: write e.g. "
        "'S/16' or set config.model.patch_size")
  if config.image_size % int(patch):
    raise config_lib.ConfigError(
        f"config.image_size={config.image_size} is not a multiple of the "
        f"ViT patch size {patch}")
  config_lib.check_choice(m.get("pool", "cls"), "model.pool", ("cls", "gap"))
  config_lib.check_choice(m.get("pos_embed", "learn"), "model.pos_embed",
                          ("learn", "sincos2d"))
  if m.get("drop_path_rate"):
    raise config_lib.ConfigError(
        "config.model.drop_path_rate must be 0 for a Siamese ViT (the "
        "encoder gets no PRNG key; MoCo v3 trains ViT-S/B without it)")
  try:
    models.vit.remat_policy(m.get("remat", "none"))
  except ValueError as e:
    raise config_lib.ConfigError(f"config.model.{e}") from None


def build_backbone(config, rngs: nnx.Rngs) -> models.ResNet | ViTBackbone:
  """The backbone of `config.model.backbone` in `config.compute_dtype`."""
  m = config.model
  dtype = method_base.compute_dtype(config)
  if m.get("backbone", "resnet") == "vit":
    kernels = platforms.of_config(config)
    sizes = {arg: int(m[k]) for k, arg in _VIT_OVERRIDES.items()
             if m.get(k) is not None}
    return ViTBackbone(
        m.variant, freeze_patch_embed=bool(m.get("freeze_patch_embed")),
        img_size=config.image_size, in_channels=config.channels,
        pool=m.get("pool", "cls"), pos_embed=m.get("pos_embed", "learn"),
        remat=m.get("remat", "none"),
        scan_blocks=bool(m.get("scan_blocks", False)),
        attention=kernels.attention,
        attention_seq_multiple=kernels.attention_seq_multiple, dtype=dtype,
        rngs=rngs, **sizes)
  return models.ResNet(
      m.depth, stem=m.stem, in_channels=config.channels, width=m.width,
      zero_init_residual=m.get("zero_init_residual", True), dtype=dtype,
      rngs=rngs)


def build(config, rngs: nnx.Rngs, *, predictor: bool, teacher: bool
          ) -> Siamese:
  """Builds the Siamese network described by `config.model`.

  Args:
    config: the method config (trainer-resolved `total_steps`).
    rngs: construction RNGs.
    predictor: default for `config.model.predictor` (the method's recipe).
    teacher: whether to build an EMA teacher of backbone + projector.
  """
  m = config.model
  dtype = method_base.compute_dtype(config)
  backbone = build_backbone(config, rngs)
  overrides: dict[str, Any] = {"dtype": dtype}
  if m.get("proj_hidden_dims") is not None:
    overrides["hidden_dims"] = _dims(m.proj_hidden_dims)
  if m.get("proj_dim") is not None:
    overrides["out_dim"] = int(m.proj_dim)
  if m.get("proj_out_norm") is not None:
    overrides["out_norm"] = m.proj_out_norm or None  # "" means none
  proj = models.projector(m.head, backbone.num_features, rngs=rngs,
                          **overrides)
  pred = None
  if m.get("predictor", predictor):
    pred_overrides: dict[str, Any] = {"dtype": dtype,
                                      "out_dim": proj.out.out_features}
    if m.get("pred_hidden_dims") is not None:
      pred_overrides["hidden_dims"] = _dims(m.pred_hidden_dims)
    recipe = (m.head if models.HEAD_RECIPES[m.head]["predictor"]
              else "matrix_ssl")
    pred = models.predictor(recipe, proj.out.out_features, rngs=rngs,
                            **pred_overrides)
  return Siamese(Encoder(backbone, proj), pred, teacher,
                 total_steps=config.total_steps,
                 ema_base=config.get("ema_momentum", 0.996),
                 logdet=platforms.of_config(config).logdet)


def forward(model: Siamese, batch: dict[str, jax.Array], *,
            train: bool = True) -> Views:
  """Runs student (and teacher) on `batch["view1"]`, `batch["view2"]`.

  Each network call sees one view (per-view BatchNorm statistics). Teacher
  outputs get stop-gradient.
  """
  h1, z1 = model.encoder(batch["view1"], train=train)
  h2, z2 = model.encoder(batch["view2"], train=train)
  p1 = p2 = t1 = t2 = None
  if model.predictor is not None:
    p1 = model.predictor(z1, train=train)
    p2 = model.predictor(z2, train=train)
  if model.teacher is not None:
    t1 = jax.lax.stop_gradient(model.teacher(batch["view1"], train=train)[1])
    t2 = jax.lax.stop_gradient(model.teacher(batch["view2"], train=train)[1])
  return Views(h1, h2, z1, z2, p1, p2, t1, t2)


def ema_momentum(model: Siamese, step) -> jax.Array:
  """The teacher momentum m(step) of the cosine schedule."""
  return models.cosine_ema_momentum(step, model.total_steps, model.ema_base)


def post_update(model: Siamese, step) -> None:
  """EMA teacher update after the optimizer step (no-op without teacher)."""
  if model.teacher is not None:
    models.ema_update(model.teacher, model.encoder, ema_momentum(model, step))


def predict_fn(model: Siamese, batch: dict[str, jax.Array]) -> jax.Array:
  """Backbone features of `batch["image"]` in eval mode: [B, F]."""
  return model.encoder.backbone(batch["image"], train=False)


def diagnostics_fn(model: Siamese, batch, key, step) -> dict[str, jax.Array]:
  """Spectrum and information diagnostics of the current batch (no grad).

  * matrix mutual information / joint entropy / per-view entropies of the
    projector outputs z1, z2 (`losses.view_diagnostics`, α = 2);
  * RankMe of the backbone features and of the projector outputs of view 1;
  * `effective_rank_cov`: exp of the von Neumann entropy of the covariance
    of the row-normalised z1 (a trace-1 density matrix);
  * `embedding_std`: mean per-dimension std of ẑ1 times sqrt(D) (≈1 for
    spread embeddings, → 0 at collapse; SimSiam §4.1);
  * `ema_momentum` for teacher methods;
  * the label-free predictors of downstream accuracy
    (`mi_ssl_jax.matrix`): `lidar` of the backbone features with the two
    views of each image as its samples, `alpha_req` of the backbone
    features, `dime` of the projector outputs (permutation baseline, α = 2),
    and `stage<i>_token_entropy`, the von Neumann entropy of each image's
    spatial-position Gram matrix at the end of every ResNet stage (view 1;
    mean over `method_base.TOKEN_ENTROPY_EXAMPLES` evenly spaced images,
    BatchNorm on their statistics); for a ViT backbone
    `block<i>_token_entropy`, that of the patch tokens after every block
    (as the MAE family's diagnostics).
  BatchNorm uses the statistics of the diagnostics subsample
  (`config.diagnostics_examples`); the running statistics updated by this
  forward pass are discarded by the trainer.
  """
  v = forward(model, batch, train=True)
  z1, z2 = jax.lax.stop_gradient(v.z1), jax.lax.stop_gradient(v.z2)
  h1, h2 = jax.lax.stop_gradient(v.h1), jax.lax.stop_gradient(v.h2)
  out = dict(losses.view_diagnostics(z1, z2))
  out["lidar_backbone"] = matrix.lidar(jnp.stack([h1, h2], axis=1))
  out["alpha_req_backbone"] = matrix.alpha_req(h1)
  out["dime"] = matrix.dime(z1, z2, key)
  few = method_base.spread_rows(batch["view1"],
                                method_base.TOKEN_ENTROPY_EXAMPLES)
  backbone = model.encoder.backbone
  if isinstance(backbone, ViTBackbone):
    for i, tokens in enumerate(backbone.block_tokens(few)):  # [b, 1+N, D]
      out[f"block{i + 1}_token_entropy"] = matrix.token_entropy(
          jax.lax.stop_gradient(tokens[:, 1:]))
  else:
    maps = backbone.stage_outputs(few, train=True)
    for i, fmap in enumerate(maps):
      b, hh, ww, c = fmap.shape
      out[f"stage{i + 1}_token_entropy"] = matrix.token_entropy(
          jax.lax.stop_gradient(fmap).reshape(b, hh * ww, c))
  out["rankme_backbone"] = matrix.rankme(jax.lax.stop_gradient(v.h1))
  out["rankme_embedding"] = matrix.rankme(z1)
  zh = matrix.normalize_rows(z1)
  out["effective_rank_cov"] = matrix.effective_rank(matrix.covariance(zh))
  out["embedding_std"] = jnp.mean(jnp.std(zh, axis=0)) * jnp.sqrt(
      jnp.float32(zh.shape[-1]))
  if model.teacher is not None:
    out["ema_momentum"] = ema_momentum(model, step)
  return out


# --------------------------------------------------------- the interface ----


@dataclasses.dataclass(frozen=True)
class NoHparams:
  """A method without hyperparameters of its own (SimSiam, BYOL)."""


Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class SiameseMethod:
  """The method interface (`mi_ssl_jax/methods/base.py`) of a two-view method.

  A Siamese method file declares its `Hparams` and its objective and ends
  with ``METHOD = SiameseMethod(...)``; `mi_ssl_jax.methods.get_method`
  returns that object. Everything else (network, views, EMA teacher,
  features, diagnostics, config checks) is this module's.

  Attributes:
    objective: ``(model, views, step) -> (loss, metrics)`` on the views of
      one global batch (`forward`); the hyperparameters are ``model.hp``.
      With ``uses_key`` it is ``(model, views, step, key)`` and gets the
      step's PRNG key (LeJEPA's random SIGReg directions).
    Hparams: frozen dataclass of the method's config fields and defaults.
    predictor: default of ``config.model.predictor`` for the method.
    teacher: whether the method has an EMA teacher, or a function of its
      hyperparameters that says so (EMI's ``emi_teacher``).
    configure: optional ``(model, config) -> None`` that adds what depends
      on more than the hyperparameters (MEC: the warm-up in steps; EMI: its
      eigenvalue-tracking state).
    uses_key: whether the objective takes the step's PRNG key.
  """

  objective: Objective
  Hparams: type = NoHparams
  predictor: bool = False
  teacher: bool | Callable[[Any], bool] = False
  configure: Callable[[Siamese, Any], None] | None = None
  uses_key: bool = False

  INPUT: ClassVar[str] = INPUT
  BATCH_COUPLED: ClassVar[bool] = BATCH_COUPLED  # BatchNorm, Gram terms

  def validate_config(self, config) -> None:
    validate_model_config(config)
    method_base.read_hparams(self.Hparams, config)

  def init(self, config, rngs: nnx.Rngs) -> Siamese:
    hp = method_base.read_hparams(self.Hparams, config)
    teacher = self.teacher(hp) if callable(self.teacher) else self.teacher
    model = build(config, rngs, predictor=self.predictor, teacher=teacher)
    model.hp = hp  # static graph metadata (a frozen, hashable dataclass)
    if self.configure is not None:
      self.configure(model, config)
    return model

  def embed_fn(self, model: Siamese, batch, key, step) -> Views:
    """The per-example outputs of both views (`forward`)."""
    del key, step
    return forward(model, batch)

  def objective_fn(self, model: Siamese, views: Views, batch, key, step):
    """The method's objective on the whole batch's views."""
    del batch
    if self.uses_key:
      return self.objective(model, views, step, key)
    return self.objective(model, views, step)

  def loss_fn(self, model: Siamese, batch, key, step):
    return self.objective_fn(model, self.embed_fn(model, batch, key, step),
                             batch, key, step)

  predict_fn = staticmethod(predict_fn)
  post_update = staticmethod(post_update)
  diagnostics_fn = staticmethod(diagnostics_fn)
