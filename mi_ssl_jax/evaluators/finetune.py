"""End-to-end fine-tuning: protocol ``mae_finetune`` v1 and its job.

  python -m mi_ssl_jax.main --config=configs/finetune.py \
      --config.init_from=<pretraining workdir> --workdir=<out>

Recipe (MAE ``main_finetune.py`` ViT-B / M-MAE ``finetune.sh``, docs/methods.md
§3.3): AdamW (β = 0.9, 0.999), lr = 5e-4·B/256 with B = 2048, weight decay
0.05 (not on biases, norms, tokens, position embeddings), layer-wise lr decay
0.65 (:mod:`.layer_decay`), drop path 0.1, 100 epochs with 5 warm-up epochs
then cosine to 1e-6, Mixup 0.8 / CutMix 1.0 (switch 0.5) with label
smoothing 0.1 and soft-target cross-entropy (:mod:`.mixup`), head initialised
N(0, (2e-5)²) (MAE: trunc-normal 2e-5), RandomResizedCrop(scale 0.08–1) +
flip. Not implemented, and recorded in every result as
``augmentation``: RandAugment (rand-m9-mstd0.5-inc1) and random erasing 0.25.

The network is the pretraining run's backbone: the method's
``backbone(model)`` if it defines one, else the first ``VisionTransformer`` /
``ResNet`` holding trainable parameters inside the method's model (e.g. the
MAE encoder), called as ``backbone(images, key=...)`` so drop path is active.
Without either, the whole model is fine-tuned through ``predict_fn`` (no drop
path). A linear head on top is trained with it. The fine-tune state is
checkpointed in ``<workdir>/checkpoints`` and rerunning the command resumes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax.evaluators import common, layer_decay, mixup


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


def make_optimizer(protocol: FinetuneProtocol, total_steps: int,
                   warmup_steps: int, use_layer_decay: bool = True
                   ) -> optax.GradientTransformation:
  """AdamW + layer decay + warm-up/cosine schedule of the protocol.

  Layer decay is MAE's ViT rule; for a model without transformer blocks
  (``use_layer_decay=False``, e.g. a ResNet) every layer gets the full lr.
  """
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, protocol.lr, max(warmup_steps, 0), max(total_steps, 1),
      protocol.min_lr)
  return layer_decay.finetune_adamw(
      schedule, weight_decay=protocol.weight_decay,
      layer_decay=protocol.layer_decay if use_layer_decay else 1.0,
      b1=protocol.b1, b2=protocol.b2)


def make_train_step(graphdef: Any, protocol: FinetuneProtocol,
                    num_classes: int, mesh: jax.sharding.Mesh,
                    state_sharding: Any, seed: int) -> Callable:
  """jit(step(state, batch, mix, step) -> (state, metrics)), functional NNX.

  The drop-path key is fold_in(key(seed), step), derived inside jit.
  """
  base_key = jax.random.key(seed)

  def step(state, batch, mix, step):
    key = jax.random.fold_in(base_key, step)
    model, opt = nnx.merge(graphdef, state)
    images, targets = mixup.apply_mix(
        batch["image"], batch["label"], mix, num_classes=num_classes,
        label_smoothing=protocol.label_smoothing)

    def loss_fn(model):
      logits = model(images, key)
      return mixup.soft_target_cross_entropy(logits, targets)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return nnx.state((model, opt)), {"loss": loss}

  batch_sh = NamedSharding(mesh, common.batch_spec(mesh))
  repl = NamedSharding(mesh, P())
  return jax.jit(step, donate_argnums=0,
                 in_shardings=(state_sharding, batch_sh, repl, repl),
                 out_shardings=(state_sharding, repl))


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


def train_classifier(
    model: Classifier, batches: Iterable[Mapping[str, np.ndarray]], *,
    protocol: FinetuneProtocol, num_classes: int, total_steps: int,
    warmup_steps: int, mesh: jax.sharding.Mesh | None = None, seed: int = 0,
    checkpointer: Any = None, log: Callable[[str], None] | None = None,
    log_every: int = 100,
) -> tuple[Classifier, dict[str, float]]:
  """Fine-tunes ``model`` for ``total_steps`` on host-local ``batches``.

  Mixing (Mixup / CutMix) is drawn on the host per step from
  ``np.random.default_rng([seed, step])`` and the PRNG key for drop path is
  ``fold_in(key(seed), step)``, so a resumed run repeats the same draws.

  Args:
    model: the classifier (its parameters are updated in place).
    batches: iterator of host-local ``{"image", "label"}`` batches; if a
      checkpoint is restored, it should already start at the restored step.
    protocol: the recipe.
    num_classes: C.
    total_steps: optimizer steps.
    warmup_steps: linear warm-up steps.
    mesh: data-parallel mesh.
    seed: mixing / drop-path seed.
    checkpointer: optional ``mi_ssl_jax.checkpointing.Checkpointer``.
    log: optional callable for progress lines.
    log_every: steps between progress lines.

  Returns:
    (the trained model, {"train_loss": mean loss of the last logged window,
    "layer_decay_applied": 1.0 or 0.0 (no transformer blocks found)}).
  """
  mesh = mesh if mesh is not None else common.default_mesh()
  use_ld = layer_decay.has_blocks(nnx.state(model, nnx.Param))
  if not use_ld and log and protocol.layer_decay != 1.0:
    log("no transformer blocks in the backbone: layer decay not applied")
  opt = nnx.Optimizer(model, make_optimizer(protocol, total_steps,
                                            warmup_steps, use_ld),
                      wrt=nnx.Param)
  graphdef, state = nnx.split((model, opt))
  repl = NamedSharding(mesh, P())
  state_sharding = jax.tree.map(lambda _: repl, state)
  start = 0
  if checkpointer is not None and checkpointer.latest_step() is not None:
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
        nnx.to_pure_dict(state))
    start, pure = checkpointer.restore(abstract)
    nnx.replace_by_pure_dict(state, pure)
    if log:
      log(f"resumed fine-tuning at step {start}")
  state = jax.device_put(state, repl)
  step_fn = make_train_step(graphdef, protocol, num_classes, mesh,
                            state_sharding, seed)
  window: list[jax.Array] = []
  last_mean = float("nan")
  it = iter(batches)
  for step in range(start, total_steps):
    batch = next(it)
    h, w = batch["image"].shape[1:3]
    mix = mixup.sample_mix(
        np.random.default_rng([seed, step]), h, w,
        mixup_alpha=protocol.mixup_alpha, cutmix_alpha=protocol.cutmix_alpha,
        prob=protocol.mix_prob, switch_prob=protocol.switch_prob)
    batch = common.to_global({"image": batch["image"],
                              "label": batch["label"]}, mesh)
    mix, step_arr = jax.device_put((mix, np.int32(step)), repl)
    state, metrics = step_fn(state, batch, mix, step_arr)
    window.append(metrics["loss"])
    if (step + 1) % log_every == 0 or step + 1 == total_steps:
      last_mean = float(np.mean(jax.device_get(window)))
      window = []
      if not np.isfinite(last_mean):
        raise FloatingPointError(
            f"fine-tuning loss is not finite at step {step + 1}; lower "
            "--config.overrides.base_lr")
      if log:
        log(f"fine-tune step {step + 1}/{total_steps} loss {last_mean:.4f}")
      if checkpointer is not None:
        checkpointer.save(step + 1, nnx.to_pure_dict(state))
  if checkpointer is not None:
    if checkpointer.latest_step() != total_steps:
      checkpointer.save(total_steps, nnx.to_pure_dict(state), force=True)
    checkpointer.wait()
  model, _ = nnx.merge(graphdef, state)
  return model, {"train_loss": last_mean,
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


# ----------------------------------------------------------------------------
# Standalone job: config.job = "finetune" (configs/finetune.py).
# ----------------------------------------------------------------------------


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Fine-tunes the pretrained backbone and evaluates it (resumable)."""
  from mi_ssl_jax import checkpointing, data  # noqa: PLC0415
  from mi_ssl_jax.evaluators import jobs  # noqa: PLC0415

  start_time = time.time()
  protocol, overrides = MAE_FINETUNE.with_overrides(
      **jobs.set_fields(config.get("overrides")))
  mesh = jobs.job_mesh(config)
  # Drop path is a constructor argument of the backbone: rebuild the model
  # with the protocol's rate (if its config has the field) before restoring.
  pre = jobs.load_pretrained(config,
                             {"drop_path_rate": protocol.drop_path_rate})
  name, info, train_split, eval_split = jobs.dataset_and_splits(
      config, pre)
  classes = jobs.num_classes(config, pre)
  backbone = find_backbone(pre.method, pre.model)
  if backbone is None:
    graph_model = pre.model
    features_fn = (lambda m, images, key: pre.method.predict_fn(
        m, {"image": images}))
  else:
    graph_model, features_fn = backbone, None
  shape = (1, int(pre.config.image_size), int(pre.config.image_size),
           int(pre.config.get("channels", 3)))
  dim = int(jax.eval_shape(
      lambda: Classifier.features_of(graph_model, features_fn,
                                     jnp.zeros(shape), None)).shape[-1])
  model = Classifier(graph_model, dim, classes,
                     head_init_std=protocol.head_init_std,
                     rngs=nnx.Rngs(int(config.seed)), features_fn=features_fn)
  examples = int(config.get("max_train_examples", 0) or
                 info.num_examples[train_split])
  steps_per_epoch = max(1, examples // protocol.batch_size)
  total = max(1, int(round(protocol.epochs * steps_per_epoch)))
  warmup = int(round(protocol.warmup_epochs * steps_per_epoch))
  ckpt = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      save_interval_steps=int(config.get("ckpt_steps", 1000)), keep=1)
  first = ckpt.latest_step() or 0
  kwargs = dict(global_batch_size=protocol.batch_size,
                image_size=int(pre.config.image_size), recipe="mae",
                split=train_split, seed=int(config.seed), start_step=first,
                channels=int(pre.config.get("channels", 3)),
                crop_scale=protocol.crop_scale)
  if config.get("data_dir", ""):
    kwargs["data_dir"] = config.data_dir
  batches = data.make_train_iterator(name, **kwargs)
  echo = print if jax.process_index() == 0 else (lambda s: None)
  model, train_metrics = train_classifier(
      model, batches, protocol=protocol, num_classes=classes,
      total_steps=total, warmup_steps=warmup, mesh=mesh,
      seed=int(config.seed), checkpointer=ckpt, log=echo,
      log_every=int(config.get("log_steps", 100)))
  ckpt.close()
  metrics = evaluate(model, jobs.eval_source(
      config, pre, eval_split, config.get("max_eval_examples")),
      num_classes=classes, mesh=mesh)
  if np.isfinite(train_metrics["train_loss"]):  # NaN when only re-evaluated
    metrics["train_loss"] = train_metrics["train_loss"]
  return jobs.finish(
      workdir, protocol=protocol.name, version=protocol.version,
      metrics=metrics, pre=pre, dataset=name,
      split=eval_split, recipe=dataclasses.asdict(protocol),
      overrides=overrides,
      extra={"train_split": train_split, "steps": total,
             "backbone": type(graph_model).__name__,
             "drop_path": backbone is not None,
             "layer_decay_applied": bool(train_metrics["layer_decay_applied"]),
             "total_seconds": round(time.time() - start_time, 1)})
