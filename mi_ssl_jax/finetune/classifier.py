"""End-to-end fine-tuning: protocol ``mae_finetune`` v1 (the recipe).

Recipe (MAE ``main_finetune.py`` ViT-B / M-MAE ``finetune.sh``, docs/methods.md
§3.3): AdamW (β = 0.9, 0.999), lr = 5e-4·B/256 with B = 2048, weight decay
0.05 (not on biases, norms, tokens, position embeddings), layer-wise lr decay
0.65 (:mod:`.layer_decay`), drop path 0.1, 100 epochs with 5 warm-up epochs
then cosine to 1e-6, Mixup 0.8 / CutMix 1.0 (switch 0.5) with label
smoothing 0.1 and soft-target cross-entropy (:mod:`.mixup`), head initialised
N(0, (2e-5)²) (MAE: trunc-normal 2e-5), RandomResizedCrop(scale 0.08–1) +
flip. Not implemented, and recorded in every result as
``augmentation``: RandAugment (rand-m9-mstd0.5-inc1) and random erasing 0.25.

The network is the pretraining run's backbone (:func:`find_backbone`) with a
linear head on top (:class:`Classifier`); :func:`train_classifier` trains it
through the trainer's loop (:mod:`mi_ssl_jax.loop`: pure-dict state, the
non-finite policy, checkpoints and resume, metrics and progress line). The
job (``config.job = "finetune"``) is :mod:`mi_ssl_jax.jobs.finetune`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import loop, model_state
from mi_ssl_jax.data import augment_jax
from mi_ssl_jax.evaluators import common
from mi_ssl_jax.finetune import layer_decay, mixup


@dataclasses.dataclass(frozen=True)
class FinetuneProtocol:
  """A fine-tuning recipe. ``lr = base_lr * batch_size / 256``."""

  name: str = "mae_finetune"
  version: int = 1
  base_lr: float = 5e-4
  batch_size: int = 2048
  epochs: float = 100.0
  warmup_epochs: float = 5.0
  min_lr: float = 1e-6
  weight_decay: float = 0.05
  layer_decay: float = 0.65
  b1: float = 0.9
  b2: float = 0.999
  drop_path_rate: float = 0.1
  mixup_alpha: float = 0.8
  cutmix_alpha: float = 1.0
  mix_prob: float = 1.0
  switch_prob: float = 0.5
  label_smoothing: float = 0.1
  head_init_std: float = 2e-5
  crop_scale: tuple[float, float] = (0.08, 1.0)
  augmentation: str = ("random-resized-crop + flip + mixup/cutmix; no "
                       "RandAugment, no random erasing")
  source: str = ("MAE main_finetune.py / M-MAE finetune.sh "
                 "(docs/methods.md §3.3)")

  @property
  def lr(self) -> float:
    return self.base_lr * self.batch_size / 256.0

  def with_overrides(self, **kw: Any) -> tuple[FinetuneProtocol, dict]:
    fields = {f.name for f in dataclasses.fields(self)}
    bad = set(kw) - fields
    if bad or {"name", "version"} & set(kw):
      raise ValueError(f"cannot override fine-tuning fields "
                       f"{sorted(bad | ({'name', 'version'} & set(kw)))}; "
                       f"valid: {sorted(fields - {'name', 'version'})}")
    if "crop_scale" in kw:
      kw["crop_scale"] = tuple(kw["crop_scale"])
    changed = {k: v for k, v in kw.items() if getattr(self, k) != v}
    return dataclasses.replace(self, **kw), changed


MAE_FINETUNE = FinetuneProtocol()


def find_backbone(method: Any, model: nnx.Module) -> nnx.Module | None:
  """The network to fine-tune inside a method's model (see module doc)."""
  if hasattr(method, "backbone"):
    return method.backbone(model)
  from mi_ssl_jax import models  # noqa: PLC0415
  kinds = tuple(getattr(models, n) for n in ("VisionTransformer", "ResNet")
                if hasattr(models, n))
  for _, module in nnx.iter_modules(model):
    if isinstance(module, kinds) and jax.tree.leaves(
        nnx.state(module, nnx.Param)):
      return module
  return None


class Classifier(nnx.Module):
  """backbone(images, key) -> features [B, D] -> linear head -> logits."""

  def __init__(self, backbone: nnx.Module, dim: int, num_classes: int, *,
               head_init_std: float, rngs: nnx.Rngs,
               features_fn: Callable[..., jax.Array] | None = None):
    self.backbone = backbone
    self.features_fn = features_fn  # (backbone, images, key) -> [B, D]
    self.head = nnx.Linear(dim, num_classes,
                           kernel_init=nnx.initializers.truncated_normal(
                               head_init_std),
                           bias_init=nnx.initializers.zeros, rngs=rngs)

  @staticmethod
  def features_of(backbone, features_fn, images, key) -> jax.Array:
    if features_fn is not None:
      return features_fn(backbone, images, key)
    return backbone(images, key=key)

  def features(self, images: jax.Array, key: jax.Array | None) -> jax.Array:
    return self.features_of(self.backbone, self.features_fn, images, key)

  def __call__(self, images: jax.Array, key: jax.Array | None = None
               ) -> jax.Array:
    feats = self.features(images, key).astype(jnp.float32)  # [B, D]
    return self.head(feats)  # [B, C]


def make_schedule(protocol: FinetuneProtocol, total_steps: int,
                  warmup_steps: int) -> optax.Schedule:
  """Linear warm-up to ``protocol.lr``, then cosine to ``min_lr``."""
  return optax.warmup_cosine_decay_schedule(
      0.0, protocol.lr, max(warmup_steps, 0), max(total_steps, 1),
      protocol.min_lr)


def make_optimizer(protocol: FinetuneProtocol, total_steps: int,
                   warmup_steps: int, use_layer_decay: bool = True
                   ) -> optax.GradientTransformation:
  """AdamW + layer decay + warm-up/cosine schedule of the protocol.

  Layer decay is MAE's ViT rule; for a model without transformer blocks
  (``use_layer_decay=False``, e.g. a ResNet) every layer gets the full lr.
  """
  return layer_decay.finetune_adamw(
      make_schedule(protocol, total_steps, warmup_steps),
      weight_decay=protocol.weight_decay,
      layer_decay=protocol.layer_decay if use_layer_decay else 1.0,
      b1=protocol.b1, b2=protocol.b2)


def make_train_step(codec: model_state.ModelCodec, protocol: FinetuneProtocol,
                    num_classes: int, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, seed: int,
                    normalize: tuple[Any, Any] | None = None) -> Callable:
  """``step(state, batch) -> (state, metrics)`` (not jitted).

  ``batch = {"image": [B, H, W, C], "label": [B], "mix": sample_mix(...)}``;
  the loss is the soft-target cross-entropy of the mixed batch,
  ``mean_b Σ_c −t_bc log softmax(z_b)_c``. The drop-path key is
  ``fold_in(key(seed), step)``, derived inside jit from ``state["step"]``.
  uint8 images (the pipeline's pixels) are first normalised on the device,
  (x / 255 − mean) / std with ``normalize = (mean, std)``; float images are
  taken as normalised.
  """
  base_key = jax.random.key(seed)

  def step(state, batch):
    key = jax.random.fold_in(base_key, state["step"])
    images = batch["image"]  # [B, H, W, C]
    if images.dtype == jnp.uint8:
      if normalize is None:
        raise ValueError("uint8 images need normalize=(mean, std)")
      images = augment_jax.normalize(augment_jax.unit_range(images),
                                     *normalize)
    images, targets = mixup.apply_mix(
        images, batch["label"], batch["mix"], num_classes=num_classes,
        label_smoothing=protocol.label_smoothing)

    def loss_of(params):
      model = codec.model(params, state["rest"])
      logits = model(images, key)
      return (mixup.soft_target_cross_entropy(logits, targets),
              codec.split(model)[1])

    (loss, rest), grads = jax.value_and_grad(loss_of, has_aux=True)(
        state["params"])
    new, grad_norm, _ = loop.apply_gradients(state, tx, loss, grads, rest)
    return new, {"loss": loss, "grad_norm": grad_norm,
                 "learning_rate": jnp.asarray(schedule(state["step"]),
                                              jnp.float32)}

  return step


def evaluate(model: Classifier, source: common.BatchSource, *,
             num_classes: int, mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Top-1 / top-5 (%) of ``model`` over a padded-and-masked batch source."""
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  ks = (1, 5) if num_classes > 5 else (1,)

  @jax.jit
  def counts(state, batch):
    logits = nnx.merge(graphdef, state)(batch["image"])  # [B, C]
    m = batch[common.MASK_KEY]
    out = {}
    for k in ks:
      _, top = jax.lax.top_k(logits, k)
      out[k] = jnp.sum(jnp.any(top == batch["label"][:, None], -1) & m)
    return out, jnp.sum(m)

  totals, valid = dict.fromkeys(ks, 0), 0
  size = None
  for batch in source():
    if size is None:
      local = max(1, common.data_size(mesh) // jax.process_count())
      size = -(-len(batch["label"]) // local) * local
    c, n = jax.device_get(counts(state, common.to_global(
        common.pad_batch(batch, size), mesh)))
    valid += int(n)
    for k in ks:
      totals[k] += int(c[k])
  if valid == 0:
    raise ValueError("fine-tuning evaluation got no valid examples")
  return {f"top{k}": 100.0 * totals[k] / valid for k in ks}


def _mixed_batches(batches: Iterable[Mapping[str, np.ndarray]], *,
                   protocol: FinetuneProtocol, seed: int, start_step: int,
                   mesh: jax.sharding.Mesh) -> Iterator[dict[str, Any]]:
  """Global ``{"image", "label", "mix"}`` batches from ``start_step`` on.

  The mixing of step s is drawn on the host from
  ``np.random.default_rng([seed, s])``, so a resumed run redraws it.
  """
  repl = NamedSharding(mesh, P())
  for step, batch in enumerate(batches, start_step):
    h, w = batch["image"].shape[1:3]
    mix = mixup.sample_mix(
        np.random.default_rng([seed, step]), h, w,
        mixup_alpha=protocol.mixup_alpha, cutmix_alpha=protocol.cutmix_alpha,
        prob=protocol.mix_prob, switch_prob=protocol.switch_prob)
    yield {**common.to_global({"image": batch["image"],
                               "label": batch["label"]}, mesh),
           "mix": jax.device_put(mix, repl)}


def train_classifier(
    model: Classifier,
    batches: (Iterable[Mapping[str, np.ndarray]]
              | Callable[[int], Iterable[Mapping[str, np.ndarray]]]), *,
    protocol: FinetuneProtocol, num_classes: int, total_steps: int,
    warmup_steps: int, mesh: jax.sharding.Mesh | None = None, seed: int = 0,
    workdir: str | None = None, log_every: int = 100, ckpt_steps: int = 1000,
    nonfinite: str = "stop", lock_stale_seconds: float | None = None,
    normalize: tuple[Any, Any] | None = None,
) -> tuple[Classifier, dict[str, float]]:
  """Fine-tunes ``model`` for ``total_steps`` through ``mi_ssl_jax.loop``.

  Mixing (Mixup / CutMix) is drawn on the host per step from
  ``np.random.default_rng([seed, step])`` and the PRNG key for drop path is
  ``fold_in(key(seed), step)``, so a resumed run repeats the same draws.

  Args:
    model: the classifier (its initial parameters; not changed).
    batches: host-local ``{"image", "label"}`` batches, or a function of the
      start step returning them (called after a restore, so a resumed run's
      data can start at the restored step).
    protocol: the recipe.
    num_classes: C.
    total_steps: optimizer steps.
    warmup_steps: linear warm-up steps.
    mesh: data-parallel mesh.
    seed: mixing / drop-path seed.
    workdir: the run directory (``<workdir>/checkpoints``, metrics.jsonl,
      the progress line; rerunning resumes), or None to train in memory.
    log_every: steps between logged (and progress) lines.
    ckpt_steps: checkpoint interval with a ``workdir`` (and at the end).
    nonfinite: the loop's policy, "stop" or "skip".
    lock_stale_seconds: the ``workdir`` lock's timeout (``loop.RunDir``).
    normalize: (mean, std) per channel for uint8 batches (the pipeline's
      pixels, normalised inside the jitted step); None for float batches.

  Returns:
    (the trained model, {"train_loss": mean loss since the previous log step
    at the last one (NaN if nothing was trained), "layer_decay_applied": 1.0
    or 0.0 (no transformer blocks found)}).

  Raises:
    loop.NonFiniteError: a non-finite loss (policy "stop").
    loop.Preempted: stopped by SIGTERM (state saved; ``workdir`` only).
  """
  mesh = mesh if mesh is not None else common.default_mesh()
  codec = model_state.ModelCodec(model)
  params, rest = codec.split(model)
  use_ld = layer_decay.has_blocks(params)
  if not use_ld and protocol.layer_decay != 1.0:
    logging.info("No transformer blocks in the backbone: layer decay not "
                 "applied.")
  tx = make_optimizer(protocol, total_steps, warmup_steps, use_ld)
  repl = NamedSharding(mesh, P())
  state = jax.device_put(loop.init_state(params, rest, tx.init(params)), repl)
  state_sharding = jax.tree.map(lambda _: repl, state)
  batch_sh = NamedSharding(mesh, common.batch_spec(mesh))
  step_fn = jax.jit(
      make_train_step(codec, protocol, num_classes, tx, make_schedule(
          protocol, total_steps, warmup_steps), seed, normalize),
      donate_argnums=0,
      in_shardings=(state_sharding, {"image": batch_sh, "label": batch_sh,
                                     "mix": repl}),
      out_shardings=(state_sharding, repl))
  out = loop.train_job(
      state, step_fn, lambda start: _mixed_batches(
          batches(start) if callable(batches) else batches,
          protocol=protocol, seed=seed, start_step=start, mesh=mesh),
      total_steps=total_steps, log_steps=log_every, workdir=workdir,
      ckpt_steps=ckpt_steps, what="fine-tuning", nonfinite=nonfinite,
      lock_stale_seconds=lock_stale_seconds,
      nonfinite_hint="Lower --config.overrides.base_lr.", window_mean=True)
  model = codec.model(out.state["params"], out.state["rest"])
  return model, {"train_loss": out.metrics.get("loss", float("nan")),
                 "layer_decay_applied": float(use_ld)}


def backbone_features(model: Classifier, *sources: common.BatchSource,
                      mesh: jax.sharding.Mesh | None = None
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Frozen backbone features (no drop path) and labels of each source.

  For comparing a fine-tuned model with a linear probe on its frozen
  starting point (e.g. :func:`mi_ssl_jax.evaluators.linear.train_linear_probe`
  or the closed-form ridge of :mod:`mi_ssl_jax.evaluators.fewshot`).
  """
  mesh = mesh if mesh is not None else common.default_mesh()
  graphdef, state = nnx.split(model)

  def predict(state, batch):
    return nnx.merge(graphdef, state).features(batch["image"], None)

  extract = common.FeatureExtractor(predict, mesh)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  return [common.compact_on_host(*extract(state, s)) for s in sources]
