"""The method interface: what a file in `mi_ssl_jax/methods/` must provide.

A method is ONE module (model + views + loss + optional EMA teacher) plus one
config in `configs/`. The trainer (`mi_ssl_jax/train.py`) loads it by name from
`config.method` (`"mmae"` → `mi_ssl_jax.methods.mmae`; a dotted path loads any
importable module). There is no registry file: adding a method is adding a
file. The module defines these names (or a ``METHOD`` object that has them:
the Siamese methods build theirs with `_siamese.SiameseMethod`, so their
files hold only their hyperparameters and objective):

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
    * no RNG state is kept in the module: randomness comes from `key`;
    * networks compute in `compute_dtype(config)` (`config.compute_dtype`,
      the one precision field) with float32 parameters, and hand float32
      outputs to the loss.
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
    embeddings; matrix MI between views) computed on device, every
    `config.diagnostics_steps` steps, on the first log line and at the last
    step, on a fixed subsample of `config.diagnostics_examples` examples of
    the batch (the trainer slices it; `batch` has that many rows).
    Decompose batches of matrices one matrix at a time
    (`matrix.map_matrices`, as `matrix.token_entropy` does) or eigh-free:
    batched CPU eigh can deadlock (docs/known_issues.md).

`reconstruct_fn(model, batch, key) -> (pred [B, L, p²C], mask [B, L], p)`
    For masked-image models: predicted patches in the pixel space of
    `batch["image"]` and the mask (1 = removed); the kNN job then also writes
    the MAE figure (original / masked / reconstruction) as a PNG.

`embed_fn(model, batch, key, step) -> embeddings` and
`objective_fn(model, embeddings, batch, key, step) -> (loss, metrics)`
    `loss_fn` split at the network's per-example outputs, for the trainer's
    exact large-batch gradient (`config.grad_chunks`, `mi_ssl_jax/train.py`):
    `loss_fn(m, b, k, s)` is `objective_fn(m, embed_fn(m, b, k, s), b, k, s)`.
    * `embeddings`: a pytree of float arrays whose leading axis is the
      examples of `batch`; row i depends only on example i (and on the
      BatchNorm statistics of the batch the network sees), e.g. the Siamese
      views' h/z/p/t, or MAE's per-example reconstruction sums and CLS;
    * `embed_fn` draws its randomness with `mi_ssl_jax.models.rng` from
      `key`, which is a `models.ChunkKey` when the batch runs in chunks, so
      each example draws what it would draw in the whole batch;
    * `objective_fn` runs no network on images: it couples the examples
      (Gram, covariance, log-det, negatives), may apply parameters to the
      embeddings (an online probe head), reads `batch` for labels and may
      update loss state.
    Both or neither; without them `grad_chunks` is refused.

`Hparams`
    A frozen dataclass of the method's own hyperparameters: each field is a
    top-level config key and its default is written there and nowhere else
    (recipes get the fields from it through `config_fields`, so
    `--config.<field>=...` works on every recipe of the method). `init` reads
    it with `read_hparams(Hparams, config)` and stores it on the model as
    `model.hp` (static: part of the graph definition, not of the state);
    `__post_init__` raises ConfigError for a bad value.

`validate_config(config) -> None`
    Raise `mi_ssl_jax.config_lib.ConfigError` with a one-line message for a bad
    value (e.g. a mask ratio outside (0, 1)). Called before anything is written.
    The trainer also reads `Hparams` (which validates it) in any case.

`INPUT: str = "single_view"`
    The batch format the data pipeline must yield: "single_view" or "two_view".

`BATCH_COUPLED: bool = True`
    Whether the loss couples the examples of a batch (Gram/covariance/
    contrastive terms, BatchNorm). With gradient accumulation
    (`config.grad_accum_steps > 1`) each term is then computed on micro-batches
    of `batch_size / grad_accum_steps` examples, which changes the loss (e.g. a
    log-det over a smaller Gram matrix, fewer negatives); the trainer refuses
    accumulation for coupled losses unless `config.allow_coupled_accumulation`.
    `config.grad_chunks` (with `embed_fn` / `objective_fn`) is the exact
    alternative.
    Per-example losses (plain MAE) give the same gradient either way.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import jax
import jax.numpy as jnp

from mi_ssl_jax.config_lib import (
  ConfigError,
  check_choice,
  check_renamed_fields,
)

REQUIRED = ("init", "loss_fn", "predict_fn")
OPTIONAL = ("post_update", "diagnostics_fn", "reconstruct_fn",
            "validate_config", "Hparams", "embed_fn", "objective_fn")
INPUTS = ("single_view", "two_view")

# The one precision field of every family, `config.compute_dtype` (default in
# configs/common.py): what the networks compute in. Parameters, BatchNorm
# statistics, the losses and all matrix math stay float32.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Examples of the diagnostics subsample whose per-layer token entropies the
# diagnostics compute (`spread_rows`): exact, one eigendecomposition per
# example and layer (`matrix.token_entropy`), so they are bounded.
TOKEN_ENTROPY_EXAMPLES = 64

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]



def spread_rows(x: jax.Array, k: int) -> jax.Array:
  """k evenly spaced rows of x [n, ...] (every (n // k)-th; all if n <= k).

  [min(n, k), ...]; spread over the batch's device shards like the batch.
  """
  n = x.shape[0]
  return x[::max(1, n // k)][:k]

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


def splits_loss(method: types.ModuleType) -> bool:
  """Whether the method has `embed_fn` and `objective_fn` (`grad_chunks`)."""
  return all(callable(getattr(method, n, None))
             for n in ("embed_fn", "objective_fn"))


HparamsT = TypeVar("HparamsT")
_SCALARS = (bool, int, float, str)


def _coerce(name: str, kind: Any, value: Any) -> Any:
  """`value` as the field type `kind` (bool/int/float/str, tuples, unions)."""
  if kind in _SCALARS:
    if kind is bool and not isinstance(value, bool):
      raise ConfigError(f"config.{name} must be true or false, got {value!r}")
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(
        value, (int, float)) or (kind is int and value != int(value))):
      raise ConfigError(f"config.{name} must be {kind.__name__}, got "
                        f"{value!r}")
    if kind is str and not isinstance(value, str):
      raise ConfigError(f"config.{name} must be a string, got {value!r}")
    return kind(value)
  origin = typing.get_origin(kind)
  if origin is tuple:
    (item, *_) = typing.get_args(kind) or (Any,)
    return tuple(value) if item is Any else tuple(
        _coerce(name, item, v) for v in value)
  if origin in (typing.Union, types.UnionType):
    options = [k for k in typing.get_args(kind) if k is not type(None)]
    for k in options:
      try:
        return _coerce(name, k, value)
      except ConfigError:
        continue
    raise ConfigError(f"config.{name}: {value!r} is not a {kind}")
  return value


def read_hparams(cls: type[HparamsT], config: Mapping[str, Any]) -> HparamsT:
  """The method's declared hyperparameters `cls`, read from `config`.

  Each field of the frozen dataclass `cls` takes ``config[field]`` where the
  config has the key and it is not None, checked and converted to the
  field's type (an int where a float is declared becomes a float; a string
  where a number is declared is a ConfigError); otherwise the field's
  default. `cls.__post_init__` then validates the values.

  Raises:
    ConfigError: a value of the wrong type or one `__post_init__` refuses.
  """
  hints = typing.get_type_hints(cls)
  values = {}
  for field in dataclasses.fields(cls):
    if field.name in config and config[field.name] is not None:
      values[field.name] = _coerce(field.name, hints[field.name],
                                   config[field.name])
  return cls(**values)


def config_fields(cls: type) -> dict[str, Any]:
  """The defaults of the dataclass `cls` as config fields (for recipes)."""
  return {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}


def compute_dtype(config: Mapping[str, Any]) -> Any:
  """The networks' compute dtype, `config.compute_dtype` (`COMPUTE_DTYPES`).

  Raises:
    ConfigError: a name outside `COMPUTE_DTYPES` (one line).
  """
  name = config.get("compute_dtype")
  check_choice(name, "compute_dtype", tuple(COMPUTE_DTYPES))
  return COMPUTE_DTYPES[name]


def validate(module: types.ModuleType, config: Any) -> None:
  """Refuses renamed fields (`config_lib.RENAMED_FIELDS`), reads the
  method's `Hparams` and runs its `validate_config`, if any.

  Raises:
    ConfigError: one line naming the bad field.
  """
  check_renamed_fields(config)
  hparams = getattr(module, "Hparams", None)
  if hparams is not None:
    read_hparams(hparams, config)
  check = getattr(module, "validate_config", None)
  if check is not None:
    check(config)


def check_method_module(module: types.ModuleType | object,
                        name: str | None = None) -> None:
  """Raises ConfigError if `module` (or a METHOD object) lacks the interface.

  Args:
    module: the method module, or the ``METHOD`` object it defines.
    name: the module's name for messages (default ``module.__name__``).
  """
  name = name or getattr(module, "__name__", type(module).__name__)
  missing = [n for n in REQUIRED if not callable(getattr(module, n, None))]
  if missing:
    raise ConfigError(f"method module {name} lacks "
                      f"{', '.join(missing)} (see mi_ssl_jax/methods/base.py)")
  if input_format(module) not in INPUTS:
    raise ConfigError(f"method module {name}: INPUT must be one of "
                      f"{INPUTS}, got {input_format(module)!r}")
  hparams = getattr(module, "Hparams", None)
  if hparams is not None and not (
      dataclasses.is_dataclass(hparams) and isinstance(hparams, type)
      and hparams.__dataclass_params__.frozen):
    raise ConfigError(f"method module {name}: Hparams must be a "
                      "frozen dataclass (see mi_ssl_jax/methods/base.py)")
