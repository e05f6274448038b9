"""The training loop shared by every method (big_vision style, one file).

Sections: setup → mesh → data → model & optimizer → train step →
restore-or-init → loop. A method (`mi_ssl_jax/methods/<name>.py`, interface in
`methods/base.py`) supplies the model, the loss and optional hooks; this file
owns everything else.

Design (docs/design.md §8.4–8.6):
* Data parallel on a mesh from `config.mesh` (axis types explicit): the batch
  is split over all mesh axes, parameters are replicated (or FSDP-split with
  `config.param_sharding="fsdp"`).
* A functional step: the NNX model is split once into (graphdef, params,
  rest) where params are the `nnx.Param`s and rest is everything else (EMA
  teacher, BatchNorm statistics, loss state). The train state is a plain dict
  of pure pytrees, `{"step", "params", "rest", "opt", "nonfinite",
  "last_nonfinite"}`, jitted with donation, and is exactly what is
  checkpointed.
* The step's RNG is `fold_in(key(seed), step)`, so a resumed run draws the same
  masks as an uninterrupted one without storing RNG state.
* Gradient accumulation (`grad_accum_steps`) scans over micro-batches and
  averages the gradients. For per-example losses this equals the large-batch
  gradient; for batch-coupled losses (Gram/covariance/log-det terms,
  contrastive negatives, BatchNorm) every term is computed per micro-batch,
  which is a different objective, so it is refused unless
  `allow_coupled_accumulation=True`.
* Non-finite policy: a step whose loss or gradient norm is not finite never
  changes the state (parameters, optimizer, teacher and loss state keep their
  old values) and is counted. `nonfinite="stop"` (default) then stops at the
  next log step with a clear message; `"skip"` goes on. Skipped steps do not
  advance optax's internal count, so the learning rate lags by that many
  steps.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
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
  methods,
  metrics_writer,
  model_state,
  optim,
  paths,
  sharding,
)
from mi_ssl_jax import train_inputs as inputs
from mi_ssl_jax.errors import UserError
from mi_ssl_jax.methods import base as method_base

ConfigError = config_lib.ConfigError
_KEEP_ALIVE = []  # training pipelines, see train_and_evaluate
_AUGMENT_STREAM = 0x6175  # fold_in constant of the device-augmentation key


class TrainingError(UserError, RuntimeError):
  """A user-facing failure during training (printed as one line by main)."""


class NonFiniteError(TrainingError):
  """The loss or the gradients became NaN/inf and the policy is "stop"."""


# ------------------------------------------------------------- train step ----


def make_train_step(method: types.ModuleType, codec: model_state.ModelCodec,
                    tx: optax.GradientTransformation,
                    schedule: optax.Schedule, base_key: jax.Array,
                    grad_accum_steps: int = 1, device_augment=None):
  """Returns `train_step(state, batch) -> (state, metrics)` (not jitted).

  `device_augment(batch, key)` (`augment_on="device"`,
  `train_inputs.make_device_augment`) runs first, with the step's key folded
  with a constant, so a resumed run augments exactly like an uninterrupted
  one. The returned function counts its traces in `train_step.num_traces`.
  """

  def loss_and_grads(params, rest, batch, key, step):
    def loss_of(params):
      model = codec.model(params, rest)
      loss, metrics = method.loss_fn(model, batch, key, step)
      return loss, (metrics, codec.split(model)[1])
    (loss, (metrics, rest)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(params)
    return loss, metrics, rest, grads

  def accumulated(params, rest, batch, key, step):
    # Micro-batch i takes every grad_accum_steps-th example, so each
    # micro-batch stays evenly split over the devices.
    n = grad_accum_steps
    micro = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1),
        batch)

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
        (jnp.arange(n), micro))
    grads = jax.tree.map(lambda g: g / n, grads)
    metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
    return loss / n, metrics, rest, grads

  post_update = getattr(method, "post_update", None)

  def train_step(state, batch):
    train_step.num_traces += 1
    step = state["step"]
    key = jax.random.fold_in(base_key, step)
    if device_augment is not None:
      batch = device_augment(batch, jax.random.fold_in(key, _AUGMENT_STREAM))
    params, rest, opt = state["params"], state["rest"], state["opt"]
    grad_fn = accumulated if grad_accum_steps > 1 else loss_and_grads
    loss, metrics, new_rest, grads = grad_fn(params, rest, batch, key, step)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt = tx.update(grads, opt, params)
    new_params = optax.apply_updates(params, updates)
    if post_update is not None:  # e.g. the EMA teacher
      model = codec.model(new_params, new_rest)
      post_update(model, step)
      new_rest = codec.split(model)[1]
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(ok, n, o), new, old)
    new_state = {
        "step": step + 1,
        "params": keep(new_params, params),
        "rest": keep(new_rest, rest),
        "opt": keep(new_opt, opt),
        "nonfinite": state["nonfinite"] + jnp.where(ok, 0, 1),
        "last_nonfinite": jnp.where(ok, state["last_nonfinite"], step),
    }
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
  if (accum > 1 and method_base.batch_coupled(method)
      and not config.get("allow_coupled_accumulation", False)):
    raise ConfigError(
        f"method {config.method!r} has a batch-coupled loss: with "
        f"grad_accum_steps={accum} each term would see only "
        f"{config.batch_size // accum} examples (a different objective); use "
        "more devices or set config.allow_coupled_accumulation=True")
  if config.get("nonfinite", "stop") not in ("stop", "skip"):
    raise ConfigError(f"config.nonfinite must be 'stop' or 'skip', got "
                      f"{config.nonfinite!r}")
  config_lib.check_positive(config, "batch_size", "base_lr")
  validate = getattr(method, "validate_config", None)
  if validate is not None:
    validate(config)
  return local_batch


# ------------------------------------------------------------------- main ----


def make_state_fns(config, method, total_steps: int, data_size: int,
                   steps_per_epoch: int):
  """(codec, tx, schedule, init_state) of a run: the model codec, optimizer,
  learning-rate schedule and the function that builds the initial train
  state {"step", "params", "rest", "opt", "nonfinite", "last_nonfinite"}.
  Shared by the trainer and `mi_ssl_jax.bench.step`."""
  mconfig = model_state.method_config(config, total_steps, data_size)
  new_model = lambda: method.init(mconfig, nnx.Rngs(config.seed))
  codec = model_state.ModelCodec(nnx.eval_shape(new_model))
  tx, schedule = optim.make_optimizer(config, total_steps, steps_per_epoch)

  def init_state():
    params, rest = codec.split(new_model())
    return {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest,
            "opt": tx.init(params), "nonfinite": jnp.zeros((), jnp.int32),
            "last_nonfinite": jnp.full((), -1, jnp.int32)}

  return codec, tx, schedule, init_state


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
  # ---- Setup: everything that can fail on user input, before any write.
  method = methods.get_method(config.method)
  input_format = method_base.input_format(method)
  mesh = sharding.make_mesh(config.get("mesh", (("data", -1),)),
                            config.get("mesh_axis_type", "auto"))
  local_batch = validate_config(config, method, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  if not workdir:
    raise ConfigError("--workdir is empty; give the run directory, e.g. "
                      "--workdir=workdirs/my_run")
  if config.get("init_from") and not paths.exists(config.init_from):
    raise ConfigError(f"config.init_from={config.init_from!r} does not exist")

  # ---- Data (only its size here; the iterator starts after the restore).
  data_size = (config.get("num_train_examples") if train_iter is not None
               else inputs.dataset_size(config))
  total_steps = config_lib.steps("total", config, data_size,
                                 config.batch_size)
  steps_per_epoch = (data_size // config.batch_size) if data_size else None
  log_steps = config_lib.steps("log", config, data_size, config.batch_size,
                               total_steps, default=50)
  ckpt_steps = config_lib.steps("ckpt", config, data_size, config.batch_size,
                                total_steps, default=1000)
  keep_every = config_lib.steps("keep_ckpt", config, data_size,
                                config.batch_size, total_steps, default=None)
  for name, value in (("total", total_steps), ("log", log_steps),
                      ("ckpt", ckpt_steps)):
    if value < 1:
      raise ConfigError(
          f"config.{name}_steps/_epochs/_examples resolve to {value} steps; "
          "use a positive duration")
  if keep_every is not None and keep_every < 1:
    raise ConfigError(f"config.keep_ckpt_* resolves to {keep_every} steps; "
                      "use a positive duration or leave it unset")

  # ---- Model & optimizer (abstract first, then created sharded).
  codec, tx, schedule, init_state = make_state_fns(
      config, method, total_steps, data_size, steps_per_epoch)
  abstract_state = jax.eval_shape(init_state)
  state_sharding = sharding.param_shardings(
      abstract_state, mesh, config.get("param_sharding", "replicate"))
  repl = sharding.replicated(mesh)

  # ---- Train step.
  base_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  device_augment = inputs.make_device_augment(config, input_format)
  step_fn = make_train_step(method, codec, tx, schedule, base_key,
                            int(config.get("grad_accum_steps", 1)),
                            device_augment)
  train_step = jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding),
                       out_shardings=(state_sharding, repl), donate_argnums=0)
  diagnostics = None
  if getattr(method, "diagnostics_fn", None) is not None:
    def diagnose(s, b):
      key = jax.random.fold_in(base_key, s["step"])
      if device_augment is not None:  # what the loss saw
        b = device_augment(b, jax.random.fold_in(key, _AUGMENT_STREAM))
      return method.diagnostics_fn(codec.model(s["params"], s["rest"]), b,
                                   key, s["step"])

    diagnostics = jax.jit(diagnose, out_shardings=repl)

  def initial_eval_state():  # the `random_init` evaluation baseline
    state = jax.jit(init_state, out_shardings=state_sharding)()
    return {"params": state["params"], "rest": state["rest"]}

  evaluators = inputs.make_evaluators(config, method, codec, mesh, data_size,
                                      total_steps, initial_eval_state)

  # ---- Restore or init: workdir checkpoint > config.init_from > scratch.
  try:
    paths.makedirs(workdir)
  except OSError as e:
    raise ConfigError(f"cannot create --workdir={workdir!r} ({e.strerror or e}"
                      "); pick a writable directory") from None
  lock = checkpointing.WorkdirLock(workdir)
  lock.acquire()
  writer = ckpt = None
  try:
    ckpt = checkpointing.Checkpointer(
        paths.join(workdir, "checkpoints"), ckpt_steps,
        keep=config.get("keep_ckpts", 2), keep_every_steps=keep_every,
        async_save=config.get("async_checkpointing", True))
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, state_sharding)
    if ckpt.latest_step() is not None:
      try:
        step, state = ckpt.restore(abstract)
      except checkpointing.CheckpointMismatch as e:
        raise checkpointing.CheckpointMismatch(
            f"{e}{_config_changes(workdir, config)}; change the config back "
            "or use a new --workdir") from None
      logging.info("Resuming from checkpoint step %d in %s", step,
                   ckpt.directory)
    else:
      state = jax.jit(init_state, out_shardings=state_sharding)()
      if config.get("init_from"):
        loaded = checkpointing.restore_subtree(
            config.init_from, {"params": abstract["params"]})
        state["params"] = loaded["params"]
        state["opt"] = jax.jit(tx.init, out_shardings=state_sharding["opt"])(
            state["params"])
        logging.info("Initialised parameters from %s", config.init_from)
    start_step = int(jax.device_get(state["step"]))

    writer = metrics_writer.MetricsWriter(
        workdir, total_steps, start_step, config.get("tensorboard", True))
    if start_step == 0:
      metrics_writer.write_config(workdir, config)
      writer.write_hparams(config)
    if train_iter is None:
      train_iter = inputs.make_train_iter(config, local_batch, input_format,
                                          start_step)
      # Destroying a tf.data iterator can deadlock in TF 2.21 (its autotune
      # thread; seen once at the end of the quick start), so the pipeline is
      # kept alive until the process exits (main.py exits with os._exit).
      _KEEP_ALIVE.append(train_iter)
    batches = inputs.device_batches(train_iter, batch_sharding)
    logging.info("Training %s for %d steps (global batch %d on %d devices, "
                 "%d processes).", config.method, total_steps,
                 config.batch_size, mesh.devices.size, jax.process_count())

    # ---- Loop.
    metrics, host_metrics, saved, preempted = None, {}, True, False
    eval_results, evaluated_at = {}, None
    guard = config.get("transfer_guard", "disallow")
    first_step = start_step + 1
    for step in range(first_step, total_steps + 1):
      # (A corrupt image found while reading raises DatasetError, a
      # UserError: one line from main.)
      batch = next(batches, None)
      if batch is None:
        raise TrainingError(f"the training data ran out at step {step} of "
                            f"{total_steps}")
      with jax.transfer_guard(guard):
        state, metrics = train_step(state, batch)
      writer.step_done(step)
      if step % log_steps == 0 or step in (first_step, total_steps):
        host_metrics = jax.device_get(metrics)
        if diagnostics is not None:
          host_metrics.update(jax.device_get(diagnostics(state, batch)))
        host_metrics["skipped_steps"], last_bad = jax.device_get(
            (state["nonfinite"], state["last_nonfinite"]))
        writer.write_scalars(step, host_metrics)
        lock.heartbeat()
        if last_bad >= start_step and config.get("nonfinite", "stop") == "stop":
          raise NonFiniteError(
              f"non-finite loss or gradient at step {int(last_bad) + 1} "
              f"(loss={host_metrics['loss']:.4g}); that update was not "
              "applied and no bad state was saved. Lower base_lr, set "
              "grad_clip_norm, check the inputs, or set config.nonfinite="
              "'skip'")
      eval_results = inputs.run_evaluators(evaluators, state, step)
      if eval_results:
        writer.write_scalars(step, eval_results, progress=False)
        evaluated_at = step
      saved = ckpt.save(step, state)
      if ckpt.reached_preemption(step):
        if not saved:
          ckpt.save(step, state, force=True)
        saved, preempted = True, True
        logging.warning("Preempted at step %d: checkpoint saved; rerun the "
                        "same command to continue.", step)
        break
    if not saved:
      ckpt.save(int(jax.device_get(state["step"])), state, force=True)
    final_step = int(jax.device_get(state["step"]))
    if evaluators and not preempted and evaluated_at != final_step:
      eval_results = inputs.run_evaluators(evaluators, state, final_step,
                                           final=True)
      writer.write_scalars(final_step, eval_results, progress=False)
    for key, value in eval_results.items():
      logging.info("Evaluation at step %d: %s = %.4f", final_step, key, value)
    ckpt.wait()
    if step_fn.num_traces > 1:
      logging.warning("The train step was traced %d times (expected 1).",
                      step_fn.num_traces)
    logging.info("Done at step %d; checkpoints in %s", final_step,
                 ckpt.directory)
    return {"step": final_step, "metrics": host_metrics, "state": state,
            "evals": eval_results, "num_step_traces": step_fn.num_traces,
            "preempted": preempted}
  finally:
    if ckpt is not None:
      ckpt.close()
    if writer is not None:
      writer.close()
    lock.release()


_RUN_LENGTH_FIELDS = ("total_steps", "total_epochs", "total_examples",
                      "log_steps", "log_epochs", "ckpt_steps", "ckpt_epochs",
                      "evals", "tensorboard", "keep_ckpts", "keep_ckpt_steps",
                      "keep_ckpt_epochs", "nonfinite", "transfer_guard")


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
