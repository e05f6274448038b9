"""Training for the GPU study: each run's program built by the trainer's own
functions, the training images held on the device, K steps per call.

`build` takes the train step exactly as `mi_ssl_jax.train` builds it
(`mi_ssl_jax.bench.step.build_program`: `train.make_state_fns`,
`train.make_train_step` with the device augmentation of
`train_inputs.make_device_inputs`, `train.state_shardings`) and wraps it in
a `lax.scan` over `steps_per_call` steps whose batches are gathered on the
device from the uint8 training images by index (no host pipeline, no
TensorFlow). Two-view methods get the same image as both views, each
cropped and flipped on the device (`crop_on_device`) before the colour
augmentation; MAE-family batches are cropped and flipped there as in the
trainer's `augment_on="device"` path.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mi_ssl_jax import configs, methods, sharding
from mi_ssl_jax.data import fashion_mnist
from mi_ssl_jax.methods import base as method_base
from mi_ssl_jax.study.gpu import grid


def run_config(method: str, seed: int, steps: int, n_train: int,
               tiny: bool = False) -> ml_collections.ConfigDict:
  """The recipe of `method` (`grid.RECIPES`) for one GPU-study run.

  Changed from the recipe: `seed`, `total_steps` (the sized run; the
  recipes' warm-ups in epochs stay, shortened by the trainer when longer
  than the run), the device augmentation, `num_train_examples`, and no
  periodic evaluation, TensorBoard or diagnostics. `tiny`: the recipe's
  tiny model (tests) on the 28-pixel images.
  """
  spec = grid.RECIPES[method][1] + (",tiny" if tiny else "")
  c = configs.load(spec)
  with c.unlocked():
    c.seed = int(seed)
    c.dataset = fashion_mnist.NAME
    c.image_size = 28
    if tiny and c.model.get("backbone") == "vit" and 28 % c.model.patch_size:
      # The tiny Siamese ViT's 8-px patches tile its 16-px images, not
      # these 28-px ones: 7-px patches (16 of them), as the full recipe.
      c.model.patch_size = 7
    c.num_train_examples = int(n_train)
    c.total_epochs = None
    c.total_steps = int(steps)
    c.augment.augment_on = "device"
    c.evals = ml_collections.ConfigDict()
    c.tensorboard = False
    c.diagnostics_steps = 0
  return c


@dataclasses.dataclass
class Program:
  """A run's compiled K-step program and what it needs."""
  config: ml_collections.ConfigDict
  method: Any
  built: dict[str, Any]  # bench.step.build_program's dict
  compiled: Any  # (state, images, labels, idx [K, B]) -> (state, metrics)
  compile_s: float
  steps_per_call: int


def _multi_step(step_fn, batch_sharding, two_view: bool):
  """`(state, images, labels, idx [K, B]) -> (state, mean metrics)`: K train
  steps, batch k = images[idx[k]] (uint8, gathered on the device)."""

  def run(state, images, labels, idx):
    def body(s, rows):  # rows [B]
      x = images[rows]  # u8 [B, H, W, C]
      batch = {"view1": x, "view2": x} if two_view else {"image": x}
      batch = jax.lax.with_sharding_constraint(
          {**batch, "label": labels[rows]}, batch_sharding)
      return step_fn(s, batch)

    state, metrics = jax.lax.scan(body, state, idx)
    return state, jax.tree.map(jnp.mean, metrics)

  return run


def build(config: ml_collections.ConfigDict, images: jax.Array,
          labels: jax.Array, steps_per_epoch: int, steps_per_call: int
          ) -> Program:
  """Builds and compiles the run's K-step program (timed)."""
  from mi_ssl_jax.bench import step as bench_step  # noqa: PLC0415
  method = methods.get_method(config.method)
  two_view = method_base.input_format(method) == "two_view"
  built = bench_step.build_program(
      config, total_steps=int(config.total_steps),
      steps_per_epoch=steps_per_epoch, crop_on_device=two_view)
  repl = sharding.replicated(built["mesh"])
  jitted = jax.jit(
      _multi_step(built["step_fn"], built["batch_sharding"], two_view),
      in_shardings=(built["state_sharding"], repl, repl, repl),
      out_shardings=(built["state_sharding"], repl), donate_argnums=0)
  idx = jax.ShapeDtypeStruct((steps_per_call, int(config.batch_size)),
                             jnp.int32)
  start = time.perf_counter()
  compiled = jitted.lower(built["abstract_state"], images, labels,
                          idx).compile()
  return Program(config, method, built, compiled,
                 time.perf_counter() - start, steps_per_call)


def init_state(program: Program) -> Any:
  """The run's initial train state (the trainer's `init_state`)."""
  built = program.built
  return jax.jit(built["init_state"],
                 out_shardings=built["state_sharding"])()


def time_steps(program: Program, images, labels, n: int, seed: int,
               seconds: float, max_calls: int = 6) -> float:
  """Median seconds per training step over calls after the first (which
  may warm up), calling until `seconds` passed or `max_calls` calls."""
  state = init_state(program)
  times = []
  start = time.perf_counter()
  chunk_iter = grid.chunks(n, int(program.config.batch_size), seed,
                           max_calls * program.steps_per_call,
                           program.steps_per_call)
  for i, idx in enumerate(chunk_iter):
    t = time.perf_counter()
    state, metrics = program.compiled(state, images, labels, idx)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
    if i >= 2 and time.perf_counter() - start >= seconds:
      break
  del state
  return statistics.median(times[1:] or times) / program.steps_per_call


def train(program: Program, images, labels, n: int, seed: int
          ) -> tuple[Any, dict[str, Any]]:
  """Trains the run from its initial state; (final state, summary)."""
  steps = int(program.config.total_steps)
  state = init_state(program)
  start = time.perf_counter()
  metrics = None
  for idx in grid.chunks(n, int(program.config.batch_size), seed, steps,
                         program.steps_per_call):
    state, metrics = program.compiled(state, images, labels, idx)
  metrics = jax.device_get(metrics)
  seconds = time.perf_counter() - start
  return state, {
      "steps": int(jax.device_get(state["step"])),
      "train_s": seconds, "step_s": seconds / max(steps, 1),
      "final_loss": float(np.asarray(metrics["loss"])),
      "nonfinite_steps": int(jax.device_get(state["nonfinite"]))}
