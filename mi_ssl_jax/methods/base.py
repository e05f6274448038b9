"""The method interface: what a file in `mi_ssl_jax/methods/` must provide.

A method is ONE module (model + views + loss + optional EMA teacher) plus one
config in `configs/`. The trainer (`mi_ssl_jax/train.py`) loads it by name from
`config.method` (`"mmae"` → `mi_ssl_jax.methods.mmae`; a dotted path loads any
importable module). There is no registry file: adding a method is adding a
file. The module defines these names:

Required
--------
`init(config, rngs: nnx.Rngs) -> nnx.Module`
    Builds everything the method trains or carries: the student network, an
    optional EMA teacher, optional loss state (e.g. EMI's running statistics),
    and the method's hyperparameters as plain Python attributes (read them from
    `config` here; `loss_fn` does not get the config). The trainer has resolved
    durations before calling it, so `config.total_steps` (int) is set, e.g. for
    EMA-momentum or λ warm-up schedules. Rules:
    * trainable weights are `nnx.Param` (the optimizer and the gradients see
      only `nnx.Param`);
    * an EMA teacher's weights use a Variable type that is NOT `nnx.Param`
      (e.g. the models package's teacher variable), so it is saved and
      restored but never differentiated or decayed;
    * loss state and BatchNorm statistics are non-Param Variables updated in
      place by `loss_fn` (NNX propagates the updates; the trainer keeps them);
    * no RNG state is kept in the module: randomness comes from `key`.
    `init` is called inside `jax.jit`/`nnx.eval_shape`: no host I/O, no
    concrete values read back.

`loss_fn(model, batch, key, step) -> (loss, metrics)`
    The training objective for one global batch.
    * `batch`: dict of GLOBAL batch-sharded arrays (see `mi_ssl_jax.data`):
      single-view `{"image": f32[B, H, W, C], "label": i32[B]}` or two-view
      `{"view1", "view2", "label"}` (`INPUT` below says which).
    * `key`: a PRNG key already folded with the step (`fold_in(seed, step)`);
      split it for masking, drop path, on-device augmentation.
    * `step`: int32 scalar (traced), for schedules inside the loss.
    * returns a float32 scalar loss (mean over the batch) and a dict of float32
      scalars (loss terms, diagnostics) that is logged at `log_steps`.
    Write every cross-example reduction (Gram, covariance, similarity matrix)
    on the global arrays: jit inserts the collectives, so the loss and its
    gradient are the same on 1 and on N devices.

`predict_fn(model, batch) -> features f32[B, D]`
    Deterministic features for evaluators (kNN, linear probe, few-shot):
    no masking, no dropout, uses `batch["image"]`.

Optional
--------
`post_update(model, step) -> None`
    Runs inside the jitted step right after the optimizer update, on the
    updated student; e.g. the EMA teacher update
    `teacher ← m(step)·teacher + (1 − m(step))·student`.

`diagnostics_fn(model, batch, key, step) -> dict of f32 scalars`
    Heavier diagnostics (RankMe, effective rank, matrix entropy of the
    embeddings; matrix MI between views) computed on device, only at log steps.

`reconstruct_fn(model, batch, key) -> (pred [B, L, p²C], mask [B, L], p)`
    For masked-image models: predicted patches in the pixel space of
    `batch["image"]` and the mask (1 = removed); the kNN job then also writes
    the MAE figure (original / masked / reconstruction) as a PNG.

`validate_config(config) -> None`
    Raise `mi_ssl_jax.config_lib.ConfigError` with a one-line message for a bad
    value (e.g. a mask ratio outside (0, 1)). Called before anything is written.

`INPUT: str = "single_view"`
    The batch format the data pipeline must yield: "single_view" or "two_view".

`BATCH_COUPLED: bool = True`
    Whether the loss couples the examples of a batch (Gram/covariance/
    contrastive terms, BatchNorm). With gradient accumulation
    (`config.grad_accum_steps > 1`) each term is then computed on micro-batches
    of `batch_size / grad_accum_steps` examples, which changes the loss (e.g. a
    log-det over a smaller Gram matrix, fewer negatives); the trainer refuses
    accumulation for coupled losses unless `config.allow_coupled_accumulation`.
    Per-example losses (plain MAE) give the same gradient either way.
"""

from __future__ import annotations

import types
from typing import Any, Protocol, runtime_checkable

import jax

from mi_ssl_jax.config_lib import ConfigError

REQUIRED = ("init", "loss_fn", "predict_fn")
OPTIONAL = ("post_update", "diagnostics_fn", "reconstruct_fn",
            "validate_config")
INPUTS = ("single_view", "two_view")

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@runtime_checkable
class Method(Protocol):
  """Static description of a method module (for type checkers and docs)."""

  INPUT: str
  BATCH_COUPLED: bool

  def init(self, config: Any, rngs: Any) -> Any: ...

  def loss_fn(self, model: Any, batch: Batch, key: jax.Array,
              step: jax.Array) -> tuple[jax.Array, Metrics]: ...

  def predict_fn(self, model: Any, batch: Batch) -> jax.Array: ...


def input_format(method: types.ModuleType) -> str:
  return getattr(method, "INPUT", "single_view")


def batch_coupled(method: types.ModuleType) -> bool:
  return bool(getattr(method, "BATCH_COUPLED", True))


def check_method_module(module: types.ModuleType) -> None:
  """Raises ConfigError if `module` does not implement the interface."""
  missing = [n for n in REQUIRED if not callable(getattr(module, n, None))]
  if missing:
    raise ConfigError(f"method module {module.__name__} lacks "
                      f"{', '.join(missing)} (see mi_ssl_jax/methods/base.py)")
  if input_format(module) not in INPUTS:
    raise ConfigError(f"method module {module.__name__}: INPUT must be one of "
                      f"{INPUTS}, got {input_format(module)!r}")
