"""Pre-training: every method through one functional step (big_vision style).

Sections: train step → checks → durations → build (model, optimizer,
shardings, jitted step) → restore-or-init → `train_and_evaluate`. A method
(`mi_ssl_jax/methods/<name>.py`, interface in `methods/base.py`) supplies the
model, the loss and optional hooks; the step loop itself (logging, the
non-finite policy, checkpoints, preemption) is `mi_ssl_jax.loop`, shared with
the linear probe and fine-tuning.

Design (docs/design.md §8.4–8.6):
* Data parallel on a mesh from `config.mesh` (axis types explicit): the batch
  is split over all mesh axes, parameters are replicated (or FSDP-split with
  `config.param_sharding="fsdp"`).
* A functional step: the NNX model is split once into (graphdef, params,
  rest) where params are the `nnx.Param`s and rest is everything else (EMA
  teacher, BatchNorm statistics, loss state). The train state is a plain dict
  of pure pytrees, `{"step", "params", "rest", "opt", "nonfinite",
  "last_nonfinite"}` (`loop.init_state`), jitted with donation, and is
  exactly what is checkpointed.
* The step's RNG is `fold_in(key(seed), step)`, so a resumed run draws the same
  masks as an uninterrupted one without storing RNG state.
* Gradient accumulation (`grad_accum_steps`) scans over micro-batches and
  averages the gradients. For per-example losses this equals the large-batch
  gradient; for batch-coupled losses (Gram/covariance/log-det terms,
  contrastive negatives, BatchNorm) every term is computed per micro-batch,
  which is a different objective, so it is refused unless
  `allow_coupled_accumulation=True`. `grad_chunks` is the exact alternative
  for them: the whole batch's objective and gradient with the activations of
  1/grad_chunks of the batch at a time (`_chunked_loss_and_grads_fn`).
* Non-finite policy (`loop.apply_gradients`): a step whose loss or gradient
  norm is not finite never changes the state (parameters, optimizer, teacher
  and loss state keep their old values) and is counted. `nonfinite="stop"`
  (default) then stops at the next log step with a clear message; `"skip"`
  goes on. Skipped steps do not advance optax's internal count, so the
  learning rate lags by that many steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from mi_ssl_jax import (
  checkpointing,
  config_lib,
  interop,
  loop,
  methods,
  metrics_writer,
  model_state,
  models,
  optim,
  paths,
  platforms,
  sharding,
  watchdog,
)
from mi_ssl_jax import train_inputs as inputs
from mi_ssl_jax.configs import common
from mi_ssl_jax.methods import base as method_base

ConfigError = config_lib.ConfigError
TrainingError = loop.TrainingError  # one line from main (a UserError)
NonFiniteError = loop.NonFiniteError  # non-finite loss, policy "stop"
_AUGMENT_STREAM = 0x6175  # fold_in constant of the device-augmentation key
# Unset `config.diagnostics_steps`: the first multiple of the log interval
# that is at least this many steps (docs/benchmarks.md, "Diagnostics":
# measured diagnostics cost, so that they take <= 2 % of training time).
DEFAULT_DIAGNOSTICS_STEPS = 1000
MIN_DIAGNOSTICS_EXAMPLES = 4  # α-ReQ fits a line to >= 2 of n - 1 eigenvalues
WATCHDOG_FIELDS = ("watchdog_factor", "watchdog_min_s", "watchdog_first_s",
                   "watchdog_sigterm_s")


# ------------------------------------------------------------- train step ----


def _chunk(tree: Any, k: int) -> Any:
  """[B, ...] leaves -> [k, B/k, ...]: part c holds examples c, c + k, ...

  Strided, so every part stays evenly split over the devices of a
  batch-sharded array (a contiguous slice would sit on B/k's devices).
  """
  return jax.tree.map(
      lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1),
      tree)


def _unchunk(tree: Any) -> Any:
  """[k, B/k, ...] leaves -> [B, ...] in the original order (inverse of
  `_chunk`)."""
  return jax.tree.map(
      lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), tree)


def _loss_and_grads_fn(method: types.ModuleType,
                       codec: model_state.ModelCodec, grad_accum_steps: int,
                       grad_chunks: int = 1):
  """`(params, rest, batch, key, step) -> (loss, metrics, rest, grads)`.

  With `grad_accum_steps` = n > 1 the batch is split into n micro-batches
  (micro-batch i takes every n-th example, so each stays evenly split over
  the devices) scanned in sequence; gradients and metrics are averaged.
  With `grad_chunks` = k > 1: `_chunked_loss_and_grads_fn`.
  """

  def loss_and_grads(params, rest, batch, key, step):
    def loss_of(params):
      model = codec.model(params, rest)
      loss, metrics = method.loss_fn(model, batch, key, step)
      return loss, (metrics, codec.split(model)[1])
    (loss, (metrics, rest)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(params)
    return loss, metrics, rest, grads

  if grad_chunks > 1:
    return _chunked_loss_and_grads_fn(method, codec, grad_chunks)
  if grad_accum_steps == 1:
    return loss_and_grads

  def accumulated(params, rest, batch, key, step):
    n = grad_accum_steps

    def body(carry, inputs):
      grads_sum, loss_sum, rest = carry
      i, mb = inputs
      loss, metrics, rest, grads = loss_and_grads(
          params, rest, mb, jax.random.fold_in(key, i), step)
      grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
      return (grads_sum, loss_sum + loss, rest), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, loss, rest), metrics = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32), rest),
        (jnp.arange(n), _chunk(batch, n)))
    grads = jax.tree.map(lambda g: g / n, grads)
    metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
    return loss / n, metrics, rest, grads

  return accumulated


def _chunked_loss_and_grads_fn(method: types.ModuleType,
                               codec: model_state.ModelCodec, k: int):
  """The whole batch's gradient with the activations of 1/k of it at a time.

  For a loss that couples the batch, L(θ) = J(θ, e(θ)) with e = the
  network's per-example outputs on the B examples (`method.embed_fn`) and J
  the objective on all of them (`method.objective_fn`), the chain rule
  splits over examples: dL/dθ = ∂J/∂θ + Σ_c (∂e_c/∂θ)ᵀ ∂J/∂e_c over any
  partition of the batch into chunks c. So (GradCache: Gao et al., "Scaling
  Deep Contrastive Learning Batch Size under Memory Limited Setup", RepL4NLP
  2021, §3.2; luyug/GradCache):
    1. forward every chunk (`_chunk`: every k-th example) in a `lax.scan`
       without keeping activations; stack the embeddings e [B, ...];
    2. J, ∂J/∂θ and the cotangent ∂J/∂e on the whole batch;
    3. for each chunk again, the forward pass and its backward pass with the
       cotangent of its rows (`jax.vjp`), summed into the gradient.
  The loss, metrics and gradient are those of the unchunked step up to
  float32 roundoff, for one extra forward pass, when row i of e depends only
  on example i: LayerNorm networks (ViTs), with randomness drawn per
  example through `models.ChunkKey`. BatchNorm networks see batch
  statistics of each chunk of B/k examples (ghost batch norm) and their
  running statistics take one update per step with the mean over the
  chunks of each chunk's update. Sharded arrays stay sharded: each chunk
  and its cotangent are split over the devices like the batch.
  """

  def embed(params, rest, chunk, c, key, step):
    model = codec.model(params, rest)
    emb = method.embed_fn(model, chunk, models.ChunkKey(key, c, k), step)
    return emb, codec.split(model)[1]

  def loss_and_grads(params, rest, batch, key, step):
    chunks = _chunk(batch, k)  # [k, B/k, ...]
    index = jnp.arange(k, dtype=jnp.int32)
    first = jax.tree.map(lambda x: x[0], chunks)
    # The state leaves a forward pass writes (BatchNorm running statistics):
    # found while tracing, as those the network returns as new arrays.
    old = jax.tree.leaves(rest)
    written = []

    def record(params, rest):
      new = jax.tree.leaves(embed(params, rest, first, 0, key, step)[1])
      written[:] = [n is not o for n, o in zip(
          new, jax.tree.leaves(rest), strict=True)]

    jax.eval_shape(record, params, rest)
    written = [i for i, w in enumerate(written) if w]

    def forward(delta, inputs):  # 1. no activations kept
      c, chunk = inputs
      emb, new_rest = embed(params, rest, chunk, c, key, step)
      new = jax.tree.leaves(new_rest)
      delta = [d + (new[i] - old[i]) if jnp.issubdtype(d.dtype, jnp.inexact)
               else new[i] for d, i in zip(delta, written, strict=True)]
      return delta, emb

    delta, emb = jax.lax.scan(forward, [jnp.zeros_like(old[i])
                                        for i in written], (index, chunks))
    leaves = list(old)
    for d, i in zip(delta, written, strict=True):
      leaves[i] = (old[i] + d / k if jnp.issubdtype(d.dtype, jnp.inexact)
                   else d)
    rest_after_forward = jax.tree.unflatten(jax.tree.structure(rest), leaves)

    def objective(params, emb):  # 2. on the whole batch
      model = codec.model(params, rest_after_forward)
      loss, metrics = method.objective_fn(model, emb, batch, key, step)
      return loss, (metrics, codec.split(model)[1])

    (loss, (metrics, new_rest)), (grads, cotangent) = jax.value_and_grad(
        objective, argnums=(0, 1), has_aux=True)(params, _unchunk(emb))

    def backward(grads, inputs):  # 3. one chunk's activations at a time
      c, chunk, chunk_cotangent = inputs
      _, vjp = jax.vjp(lambda p: embed(p, rest, chunk, c, key, step)[0],
                       params)
      return jax.tree.map(jnp.add, grads, vjp(chunk_cotangent)[0]), None

    grads, _ = jax.lax.scan(backward, grads,
                            (index, chunks, _chunk(cotangent, k)))
    return loss, metrics, new_rest, grads

  return loss_and_grads


def make_train_step(method: types.ModuleType, codec: model_state.ModelCodec,
                    tx: optax.GradientTransformation,
                    schedule: optax.Schedule, base_key: jax.Array,
                    grad_accum_steps: int = 1, device_inputs=None,
                    grad_chunks: int = 1):
  """Returns `train_step(state, batch) -> (state, metrics)` (not jitted).

  The update follows the non-finite policy of `loop.apply_gradients`.
  `device_inputs(batch, key)` (`train_inputs.make_device_inputs`: uint8
  pixels -> normalised float32, and the device augmentation with
  `augment_on="device"`) runs first, with the step's key folded with a
  constant, so a resumed run augments exactly like an uninterrupted one;
  None feeds the batch as it comes. The returned function counts its
  traces in `train_step.num_traces`.
  """
  grad_fn = _loss_and_grads_fn(method, codec, grad_accum_steps, grad_chunks)
  post_update = getattr(method, "post_update", None)

  def train_step(state, batch):
    train_step.num_traces += 1
    step = state["step"]
    key = jax.random.fold_in(base_key, step)
    if device_inputs is not None:
      batch = device_inputs(batch, jax.random.fold_in(key, _AUGMENT_STREAM))
    loss, metrics, new_rest, grads = grad_fn(
        state["params"], state["rest"], batch, key, step)

    def post(new_params, new_rest):  # e.g. the EMA teacher
      model = codec.model(new_params, new_rest)
      post_update(model, step)
      return codec.split(model)[1]

    new_state, grad_norm, _ = loop.apply_gradients(
        state, tx, loss, grads, new_rest,
        post if post_update is not None else None)
    metrics = {
        **metrics, "loss": loss, "grad_norm": grad_norm,
        "learning_rate": schedule(step),
        "param_norm": optax.tree.norm(new_state["params"]),
    }
    return new_state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32),
                                   metrics)

  train_step.num_traces = 0
  return train_step


def eval_summary_lines(evals: dict[str, float], step: int) -> list[str]:
  """Console lines of the final evaluation, baselines beside each result.

  ``knn/top1_k20 = 88.10 (step 2340; raw pixels 85.21, random init 71.70)``
  when the kNN evaluator also ran its baselines (``knn/raw_pixels/...``).
  """
  from mi_ssl_jax.evaluators import baselines  # noqa: PLC0415
  lines = []
  for name, value in evals.items():
    parts = name.split("/")
    if any(p in baselines.BASELINES for p in parts) or "top1" not in parts[-1]:
      continue  # baselines are shown beside their metric; top-1 only
    # "<evaluator>/<metric...>" -> "<evaluator>/<baseline>/<metric...>"
    refs = [f"{b.replace('_', ' ')} "
            f"{evals['/'.join([parts[0], b, *parts[1:]])]:.2f}"
            for b in baselines.BASELINES
            if "/".join([parts[0], b, *parts[1:]]) in evals]
    extra = "; " + ", ".join(refs) if refs else ""
    lines.append(f"{name} = {value:.2f} (step {step}{extra})")
  return lines


# ---------------------------------------------------------------- checks ----


def validate_config(config: ml_collections.ConfigDict,
                    method: types.ModuleType, mesh: jax.sharding.Mesh) -> int:
  """All checks that need no data and write nothing. Returns the local batch."""
  local_batch = sharding.check_batch_size(config.batch_size, mesh)
  accum = int(config.get("grad_accum_steps", 1))
  if accum < 1 or config.batch_size % (accum * mesh.devices.size):
    raise ConfigError(
        f"config.batch_size={config.batch_size} must be divisible by "
        f"grad_accum_steps × devices = {accum} × {mesh.devices.size}")
  chunks = int(config.get("grad_chunks", 1))
  if chunks < 1 or config.batch_size % (chunks * mesh.devices.size):
    raise ConfigError(
        f"config.batch_size={config.batch_size} must be divisible by "
        f"grad_chunks × devices = {chunks} × {mesh.devices.size}")
  if chunks > 1 and accum > 1:
    raise ConfigError(
        "config.grad_chunks and config.grad_accum_steps cannot both be > 1: "
        "grad_chunks already gives the whole batch's gradient with the "
        "activations of 1/grad_chunks of it; set grad_accum_steps=1")
  if chunks > 1 and not method_base.splits_loss(method):
    raise ConfigError(
        f"method {config.method!r} has no embed_fn/objective_fn "
        "(mi_ssl_jax/methods/base.py), so config.grad_chunks must be 1")
  if (accum > 1 and method_base.batch_coupled(method)
      and not config.get("allow_coupled_accumulation", False)):
    raise ConfigError(
        f"method {config.method!r} has a batch-coupled loss: with "
        f"grad_accum_steps={accum} each term would see only "
        f"{config.batch_size // accum} examples (a different objective); use "
        "config.grad_chunks (the exact whole-batch gradient), more devices, "
        "or set config.allow_coupled_accumulation=True")
  loop.check_nonfinite_policy(config.get("nonfinite", "stop"))
  platforms.resolve(config, platforms.mesh_platform(mesh))
  config_lib.check_positive(config, "batch_size", "base_lr")
  diagnostics_subsample(config)
  for name in WATCHDOG_FIELDS:
    value = config.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(
        value, (int, float)) or not 0 <= value < float("inf")):
      raise ConfigError(f"config.{name} must be a number >= 0 (0: off), got "
                        f"{value!r}")
  method_base.validate(method, config)
  method_base.compute_dtype(config)
  return local_batch


def diagnostics_subsample(config: ml_collections.ConfigDict
                          ) -> tuple[int, int]:
  """(n, stride): the diagnostics see examples 0, stride, ..., (n−1)·stride
  of every global batch, n = min(config.diagnostics_examples, batch_size).

  Evenly spaced, so the subsample is spread over the devices' shards like
  the batch. Unset `diagnostics_examples`: the whole batch.

  Raises:
    ConfigError: `diagnostics_examples` is not an int >= 4.
  """
  batch = int(config.batch_size)
  n = config.get("diagnostics_examples")
  if n is None:
    return batch, 1
  if (isinstance(n, bool) or not isinstance(n, int)
      or n < MIN_DIAGNOSTICS_EXAMPLES):
    raise ConfigError(
        f"config.diagnostics_examples must be an integer >= "
        f"{MIN_DIAGNOSTICS_EXAMPLES} (examples of each batch the diagnostics "
        f"see), got {n!r}")
  n = min(n, batch)
  return n, batch // n


# ------------------------------------------------------------------- main ----


def make_state_fns(config, method, total_steps: int, data_size: int,
                   steps_per_epoch: int, platform: str):
  """(codec, tx, schedule, init_state) of a run: the model codec, optimizer,
  learning-rate schedule and the function that builds the initial train
  state {"step", "params", "rest", "opt", "nonfinite", "last_nonfinite"}.
  `platform` is that of the run's devices (`platforms.mesh_platform`).
  Shared by the trainer and `mi_ssl_jax.bench.step`."""
  mconfig = model_state.method_config(config, total_steps, data_size,
                                      platform=platform)
  new_model = lambda: method.init(mconfig, nnx.Rngs(config.seed))
  codec = model_state.ModelCodec(nnx.eval_shape(new_model))
  tx, schedule = optim.make_optimizer(config, total_steps, steps_per_epoch)

  def init_state():
    params, rest = codec.split(new_model())
    return loop.init_state(params, rest, tx.init(params))

  return codec, tx, schedule, init_state


def state_shardings(config: ml_collections.ConfigDict, abstract_state: Any,
                    mesh: jax.sharding.Mesh) -> Any:
  """The train state's shardings: replicated, or `config.param_sharding=
  "fsdp"` (parameters and optimizer state of >= `config.fsdp_min_size`
  elements split over the `fsdp` axis; `sharding.param_shardings`).
  Shared by the trainer and `mi_ssl_jax.bench.step`.

  Raises:
    ConfigError: an unknown `param_sharding`, "fsdp" without an `fsdp`
      mesh axis, or an `fsdp_min_size` that is not a positive integer.
  """
  min_size = config.get("fsdp_min_size", common.FSDP_MIN_SIZE)
  if isinstance(min_size, bool) or not isinstance(min_size, int) or (
      min_size < 1):
    raise ConfigError(f"config.fsdp_min_size must be a positive integer "
                      f"(elements), got {min_size!r}")
  return sharding.param_shardings(
      abstract_state, mesh, config.get("param_sharding", "replicate"),
      min_size)


@dataclasses.dataclass(frozen=True)
class Durations:
  """A run's lengths in steps (from `config.<name>_steps/_examples/_epochs`).
  """

  total: int
  log: int
  ckpt: int
  keep_every: int | None
  steps_per_epoch: int | None
  diagnostics: int = 0  # 0: off; else a multiple of `log`


def resolve_durations(config: ml_collections.ConfigDict,
                      data_size: int | None) -> Durations:
  """`Durations` of a run over `data_size` examples per epoch.

  Raises:
    ConfigError: a duration that resolves to fewer than one step.
  """
  get = lambda name, **kw: config_lib.steps(
      name, config, data_size, config.batch_size, **kw)
  total = get("total")
  log = get("log", total_steps=total, default=50)
  d = Durations(
      total=total, log=log,
      ckpt=get("ckpt", total_steps=total, default=1000),
      keep_every=get("keep_ckpt", total_steps=total, default=None),
      steps_per_epoch=(data_size // config.batch_size) if data_size else None,
      diagnostics=resolve_diagnostics_steps(config, log))
  for name, value in (("total", d.total), ("log", d.log), ("ckpt", d.ckpt)):
    if value < 1:
      raise ConfigError(
          f"config.{name}_steps/_epochs/_examples resolve to {value} steps; "
          "use a positive duration")
  if d.keep_every is not None and d.keep_every < 1:
    raise ConfigError(f"config.keep_ckpt_* resolves to {d.keep_every} "
                      "steps; use a positive duration or leave it unset")
  return d


def resolve_diagnostics_steps(config: ml_collections.ConfigDict,
                              log: int) -> int:
  """`config.diagnostics_steps`, or its default: the first multiple of `log`
  that is >= DEFAULT_DIAGNOSTICS_STEPS. 0 turns the diagnostics off.

  Raises:
    ConfigError: not 0 and not a positive multiple of the log interval.
  """
  value = config.get("diagnostics_steps")
  if value is None:
    return -(-DEFAULT_DIAGNOSTICS_STEPS // max(log, 1)) * max(log, 1)
  if (isinstance(value, bool) or not isinstance(value, int) or value < 0
      or (value and log > 0 and value % log)):
    raise ConfigError(
        f"config.diagnostics_steps={value!r} must be a multiple of the log "
        f"interval ({log} steps), or 0 to turn the diagnostics off")
  return value


def _check_setup(config: ml_collections.ConfigDict, workdir: str):
  """(method, mesh, local batch): every check of the user's input that
  needs no data, before anything is written."""
  method = methods.get_method(config.method)
  mesh = sharding.make_mesh(config.get("mesh", (("data", -1),)),
                            config.get("mesh_axis_type", "auto"))
  local_batch = validate_config(config, method, mesh)
  if not workdir:
    raise ConfigError("--workdir is empty; give the run directory, e.g. "
                      "--workdir=workdirs/my_run")
  if config.get("init_from") and not paths.exists(
      interop.parse_spec(config.init_from)[1]):
    raise ConfigError(f"config.init_from={config.init_from!r} does not exist")
  return method, mesh, local_batch


@dataclasses.dataclass
class _Run:
  """The compiled pieces of a pre-training run (`_build`)."""

  codec: model_state.ModelCodec
  tx: optax.GradientTransformation
  init_state: Any  # () -> state
  abstract: Any  # the state's ShapeDtypeStructs with shardings
  state_sharding: Any
  step_fn: Any  # the un-jitted step (counts its traces)
  train_step: Any  # jitted, donating
  diagnostics: Any  # jitted (state, batch) -> {name: []}, or None


def _build(config, method, mesh, d: Durations, data_size: int | None
           ) -> _Run:
  """Model, optimizer, shardings, the jitted train step and diagnostics."""
  codec, tx, schedule, init_state = make_state_fns(
      config, method, d.total, data_size, d.steps_per_epoch,
      platforms.mesh_platform(mesh))
  abstract_state = jax.eval_shape(init_state)
  state_sharding = state_shardings(config, abstract_state, mesh)
  repl = sharding.replicated(mesh)
  base_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  device_inputs = inputs.make_device_inputs(
      config, method_base.input_format(method))
  step_fn = make_train_step(method, codec, tx, schedule, base_key,
                            int(config.get("grad_accum_steps", 1)),
                            device_inputs,
                            grad_chunks=int(config.get("grad_chunks", 1)))
  train_step = jax.jit(
      step_fn, in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=(state_sharding, repl), donate_argnums=0)
  diagnostics = make_diagnostics(config, method, codec, base_key,
                                 device_inputs, repl)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, state_sharding)
  return _Run(codec, tx, init_state, abstract, state_sharding, step_fn,
              train_step, diagnostics)


def make_diagnostics(config, method, codec: model_state.ModelCodec,
                     base_key: jax.Array, device_inputs, repl):
  """The jitted `(state, batch) -> {name: []}` of `method.diagnostics_fn` on
  the fixed subsample of the batch (`diagnostics_subsample`), or None.

  The batch goes through `device_inputs` first as in the step (uint8 to
  float32, device augmentation: what the loss saw), then is subsampled.
  Shared by the trainer and `mi_ssl_jax.bench.step`.
  """
  if getattr(method, "diagnostics_fn", None) is None:
    return None
  n, stride = diagnostics_subsample(config)

  def diagnose(s, b):
    key = jax.random.fold_in(base_key, s["step"])
    b = device_inputs(b, jax.random.fold_in(key, _AUGMENT_STREAM))
    b = jax.tree.map(lambda x: x[::stride][:n], b)  # [n, ...]
    return method.diagnostics_fn(codec.model(s["params"], s["rest"]), b,
                                 key, s["step"])

  return jax.jit(diagnose, out_shardings=repl)


def make_watchdog(config: ml_collections.ConfigDict, workdir: str,
                  run_dir: loop.RunDir) -> watchdog.Watchdog | None:
  """The hang watchdog of `config.watchdog_*` (None when all are 0 or
  unset); it dumps stacks into `workdir` and releases the lock on firing.
  """
  values = {name: float(config.get(name) or 0) for name in WATCHDOG_FIELDS}
  wd = watchdog.Watchdog(
      factor=values["watchdog_factor"], min_s=values["watchdog_min_s"],
      first_s=values["watchdog_first_s"],
      sigterm_s=(values["watchdog_sigterm_s"]
                 if jax.process_count() == 1 else 0.0),
      dump_dir=workdir, process_index=jax.process_index(),
      on_fire=run_dir.lock.release)
  return wd if wd.active else None


def _restore_or_init(run_dir: loop.RunDir, run: _Run, config, workdir: str
                     ) -> tuple[int, Any, list[str]]:
  """Workdir checkpoint > `config.init_from` params > scratch.

  Returns (start step, state, the run-length changes a resume accepted:
  `check_resume`; config.json is then rewritten).
  """
  fresh = lambda: jax.jit(run.init_state, out_shardings=run.state_sharding)()
  lengths = []
  if run_dir.ckpt.latest_step() is not None:
    lengths = check_resume(_stored_config(workdir), config)
  start, state, restored = run_dir.restore_or_init(
      run.abstract, fresh, lambda: _config_changes(workdir, config))
  if restored and lengths:
    logging.warning(
        "%s changed since the checkpoint was written: the learning-rate "
        "schedule (warm-up unchanged, then the cosine) is re-derived for "
        "the new length and followed from step %d on.", ", ".join(lengths),
        start)
  if not restored and config.get("init_from"):
    if interop.parse_spec(config.init_from)[0]:
      # PyTorch weights ("mae:<file>", "timm:<file>"): into every part of
      # the model with their names, BatchNorm statistics and EMA teacher
      # included (mi_ssl_jax/interop.py).
      loaded = interop.import_into(
          config.init_from, {"params": state["params"], "rest": state["rest"]},
          image_size=int(config.image_size))
      state["rest"] = loaded["rest"]
    else:
      loaded = checkpointing.restore_subtree(
          config.init_from, {"params": run.abstract["params"]})
    state["params"] = loaded["params"]
    state["opt"] = jax.jit(run.tx.init,
                           out_shardings=run.state_sharding["opt"])(
                               state["params"])
    logging.info("Initialised parameters from %s", config.init_from)
  return start, state, lengths if restored else []


@contextlib.contextmanager
def _train_batches(config, train_iter, local_batch: int, method, mesh,
                   start_step: int) -> Iterator[Iterator[Any]]:
  """Device batches from `start_step` on (injected or `config.dataset`),
  for the duration of the `with` block.

  When the block ends, however it ends, the device prefetch and the
  pipeline built here (its tf.data iterator, threads and prefetched
  batches) are closed, so a process that trains several runs (a notebook)
  keeps none of the finished ones'. An injected `train_iter` is the
  caller's and is not closed. Releasing an iterator while the process runs
  is what every evaluation does with its own; the TF 2.21 hang seen once at
  the end of the quick start was a pipeline destroyed during interpreter
  exit, which no pipeline outlives now (and `main.py` still leaves with
  `os._exit`). docs/design.md §8.8.
  """
  own = None
  if train_iter is None:
    own = train_iter = inputs.make_train_iter(
        config, local_batch, method_base.input_format(method), start_step)
  batches = sharding.prefetch_to_device(train_iter,
                                        sharding.batch_sharding(mesh))
  try:
    yield batches
  finally:
    batches.close()
    if own is not None and hasattr(own, "close"):
      own.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       train_iter: Iterable[dict[str, np.ndarray]] | None
                       = None) -> dict[str, Any]:
  """Trains `config.method`; resumes from `workdir` if it has a checkpoint.

  Args:
    config: the experiment config (see configs/common.py for the fields).
    workdir: run directory: checkpoints/, metrics.jsonl, TensorBoard events,
      config.json.
    train_iter: optional iterable of HOST-LOCAL numpy batches (tests,
      notebooks); by default batches come from `config.dataset`. An injected
      iterable is consumed from its start, also after a resume.

  Returns:
    {"step": final step, "metrics": last logged metrics (floats), "state":
    final train state, "evals": the last evaluator results ({"knn/top1_k20":
    ...}), "num_step_traces": times the train step was traced, "preempted":
    whether the run stopped early for a preemption}.
  """
  # Everything that can fail on user input comes before any write.
  method, mesh, local_batch = _check_setup(config, workdir)
  data_size = (config.get("num_train_examples") if train_iter is not None
               else inputs.dataset_size(config))
  d = resolve_durations(config, data_size)
  run = _build(config, method, mesh, d, data_size)

  def initial_eval_state():  # the `random_init` evaluation baseline
    state = jax.jit(run.init_state, out_shardings=run.state_sharding)()
    return {"params": state["params"], "rest": state["rest"]}

  evaluators = inputs.make_evaluators(config, method, run.codec, mesh,
                                      data_size, d.total, initial_eval_state)
  with loop.RunDir(workdir, d.ckpt, keep=config.get("keep_ckpts", 2),
                   keep_every=d.keep_every,
                   async_save=config.get("async_checkpointing", True),
                   lock_stale_seconds=config.get("lock_stale_seconds")
                   ) as run_dir:
    start_step, state, lengths = _restore_or_init(run_dir, run, config,
                                                  workdir)
    writer = run_dir.open_writer(d.total, start_step,
                                 config.get("tensorboard", True))
    if start_step == 0 or lengths:  # the run's config, as it now trains
      metrics_writer.write_config(workdir, config)
    if start_step == 0:
      writer.write_hparams(config)
    logging.info("Training %s for %d steps (global batch %d on %d devices, "
                 "%d processes).", config.method, d.total,
                 config.batch_size, mesh.devices.size, jax.process_count())
    with _train_batches(config, train_iter, local_batch, method, mesh,
                        start_step) as batches:
      out = loop.Loop(
          run.train_step, d.total, d.log, run_dir,
          nonfinite=config.get("nonfinite", "stop"),
          log_extras=run.diagnostics, extras_steps=d.diagnostics,
          watchdog=make_watchdog(config, workdir, run_dir),
          evaluate=lambda step, s: inputs.run_evaluators(evaluators, s,
                                                         step),
          transfer_guard=config.get("transfer_guard", "disallow"),
      ).run(state, batches, start_step)
    evals = out.evals
    if evaluators and not out.preempted and out.evaluated_at != out.step:
      evals = inputs.run_evaluators(evaluators, out.state, out.step,
                                    final=True)
      writer.write_scalars(out.step, evals, progress=False)
    for key, value in evals.items():
      logging.info("Evaluation at step %d: %s = %.4f", out.step, key, value)
    run_dir.ckpt.wait()
    if run.step_fn.num_traces > 1:
      logging.warning("The train step was traced %d times (expected 1).",
                      run.step_fn.num_traces)
    logging.info("Done at step %d; checkpoints in %s", out.step,
                 run_dir.ckpt.directory)
    return {"step": out.step, "metrics": out.metrics, "state": out.state,
            "evals": evals, "num_step_traces": run.step_fn.num_traces,
            "preempted": out.preempted}


# Fields a restored step is read against: the step counts batches of
# `batch_size` examples and the learning rate at a step depends on the
# warm-up, so changing one on resume would silently move the run to another
# point of its schedule and data order: refused (`check_resume`).
RESUME_FIXED_FIELDS = ("batch_size", "warmup_steps", "warmup_examples",
                       "warmup_epochs")
# The run's length may change on resume (train longer or stop earlier):
# the schedule is re-derived for the new length from the restored step on,
# with a warning.
RESUME_LENGTH_FIELDS = ("total_steps", "total_examples", "total_epochs")


def _stored_config(workdir: str) -> dict[str, Any] | None:
  """The run's config.json as a dict (None if missing or unreadable)."""
  try:
    return paths.read_json(paths.join(workdir, "config.json"))
  except (OSError, ValueError):
    return None


def check_resume(stored: dict[str, Any] | None,
                 config: ml_collections.ConfigDict) -> list[str]:
  """Compares the config of a resumed run with the one it was started with.

  Args:
    stored: the run's config.json (None: unknown, nothing is checked).
    config: the config of this invocation.

  Returns:
    The accepted changes of `RESUME_LENGTH_FIELDS`, "config.total_steps 4
    -> 6" each.

  Raises:
    ConfigError: a field of `RESUME_FIXED_FIELDS` changed (all of them are
      named, with the values to rerun with).
  """
  if stored is None:
    return []
  now = {k: config.get(k) for k in (*RESUME_FIXED_FIELDS,
                                    *RESUME_LENGTH_FIELDS)}
  changed = lambda names: [k for k in names if stored.get(k) != now[k]]
  diff = lambda k: f"config.{k} {stored.get(k)!r} -> {now[k]!r}"
  fixed = changed(RESUME_FIXED_FIELDS)
  if fixed:
    show = lambda k: (f"--config.{k}={stored[k]}" if stored.get(k) is not None
                      else f"no --config.{k} (unset)")
    raise ConfigError(
        f"{', '.join(diff(k) for k in fixed)}"
        " changed since this run's checkpoints were written: the restored "
        "step would be read against another batch size or warm-up; rerun "
        f"with {', '.join(show(k) for k in fixed)}, or train with the new "
        "value in a new --workdir (its --config.init_from=<this workdir> "
        "starts from these weights)")
  return [diff(k) for k in changed(RESUME_LENGTH_FIELDS)]


_RUN_LENGTH_FIELDS = ("total_steps", "total_epochs", "total_examples",
                      "log_steps", "log_epochs", "ckpt_steps", "ckpt_epochs",
                      "evals", "tensorboard", "keep_ckpts", "keep_ckpt_steps",
                      "keep_ckpt_epochs", "nonfinite", "transfer_guard",
                      "lock_stale_seconds",
                      "diagnostics_steps", "diagnostics_examples",
                      *WATCHDOG_FIELDS)


def _config_changes(workdir: str, config: ml_collections.ConfigDict) -> str:
  """"; config fields changed since the checkpoint: model.width 32 -> 48"
  from the run's config.json (empty if unknown)."""
  import json  # noqa: PLC0415
  try:
    stored = json.loads(paths.join(workdir, "config.json").read_text())
  except (OSError, ValueError):
    return ""
  now = json.loads(config.to_json_best_effort())

  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict):
        out.update(flat(v, f"{prefix}{k}."))
      else:
        out[f"{prefix}{k}"] = v
    return out

  a, b = flat(stored), flat(now)
  changed = [f"{k} {a.get(k)!r} -> {b.get(k)!r}"
             for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k) and k.split(".")[0] not in
             _RUN_LENGTH_FIELDS]
  if not changed:
    return ""
  return "; config fields changed since it was written: " + ", ".join(
      changed[:5]) + (", ..." if len(changed) > 5 else "")
