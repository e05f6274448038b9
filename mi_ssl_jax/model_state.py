"""Model state as pure pytrees, and models built from a run's checkpoint.

Shared by the trainer (`mi_ssl_jax.train`), which checkpoints the pure
`(params, rest)` dicts, and by the offline evaluation jobs
(`mi_ssl_jax.jobs`), which rebuild a run's model from its config
and checkpoint; neither imports the other.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from mi_ssl_jax import checkpointing, methods, platforms


class ModelCodec:
  """Converts between an NNX model and pure (params, rest) pytrees.

  `params` holds the `nnx.Param`s; `rest` every other Variable (EMA teacher,
  BatchNorm statistics, loss state). Both are nested dicts of arrays (as
  `nnx.to_pure_dict`), which optax, jit and orbax handle directly.
  """

  def __init__(self, abstract_model: nnx.Module):
    self.graphdef, params, rest = nnx.split(abstract_model, nnx.Param, ...)
    self._params_def = jax.tree.structure(params)
    self._rest_def = jax.tree.structure(rest)
    self.abstract_params = nnx.to_pure_dict(params)
    self.abstract_rest = nnx.to_pure_dict(rest)
    # Pure dicts and nnx.State flatten their keys in the same sorted order;
    # check it once so a future flax change fails loudly instead of silently.
    for state, pure in ((params, self.abstract_params),
                        (rest, self.abstract_rest)):
      shapes = [np.shape(x) for x in jax.tree.leaves(state)]
      if shapes != [np.shape(x) for x in jax.tree.leaves(pure)]:
        raise RuntimeError("internal: nnx.State and pure-dict leaf order "
                           "differ; update ModelCodec for this flax version")

  def model(self, params: Any, rest: Any) -> nnx.Module:
    return nnx.merge(
        self.graphdef,
        jax.tree.unflatten(self._params_def, jax.tree.leaves(params)),
        jax.tree.unflatten(self._rest_def, jax.tree.leaves(rest)))

  def split(self, model: nnx.Module) -> tuple[Any, Any]:
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def method_config(config: ml_collections.ConfigDict, total_steps: int,
                  data_size: int | None = None, *, platform: str
                  ) -> ml_collections.ConfigDict:
  """A copy of the config given to method.init: `total_steps` resolved,
  `num_train_examples` set when known (for a method's own `*_epochs`
  schedules, e.g. MEC's λ warm-up), and the hardware-dependent choices
  (`attention`, `logdet`) resolved for devices of `platform` ("cpu" |
  "gpu" | "tpu": the platform of the run's mesh, `platforms.mesh_platform`,
  or of an ahead-of-time target)."""
  kernels = platforms.resolve(config, platform)
  mconfig = config.copy_and_resolve_references()
  with mconfig.unlocked():
    mconfig.total_steps = int(total_steps)
    if data_size:
      mconfig.num_train_examples = int(data_size)
    mconfig.attention = kernels.attention
    mconfig.logdet = kernels.logdet
    mconfig.attention_seq_multiple = kernels.attention_seq_multiple
  return mconfig


def restore_model(config: ml_collections.ConfigDict, workdir: str,
                  sharding: jax.sharding.Sharding,
                  total_steps: int = 1) -> nnx.Module:
  """Builds the method's model and loads params + rest from a run directory.

  For evaluators: `method.predict_fn(restore_model(config, workdir, repl),
  batch)`. Every array is read straight into `sharding` (a job passes its
  mesh's replicated sharding), so every process of a multi-host job reads
  the shards of its own devices; nothing goes through one device first.

  Args:
    config: the run's config (its `method` and model fields).
    workdir: the run directory (or its checkpoints/ or a step folder).
    sharding: where the arrays land, e.g. `NamedSharding(mesh, P())`.
    total_steps: passed to `method.init` (only schedules depend on it).

  The hardware choices (`method_config`) are those of `sharding`'s devices.
  """
  method = methods.get_method(config.method)
  mconfig = method_config(
      config, total_steps,
      platform=platforms.devices_platform(sharding.device_set))
  codec = ModelCodec(nnx.eval_shape(
      lambda: method.init(mconfig, nnx.Rngs(config.seed))))
  with_sharding = lambda t: jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), t)
  loaded = checkpointing.restore_subtree(
      workdir, {"params": with_sharding(codec.abstract_params),
                "rest": with_sharding(codec.abstract_rest)})
  return codec.model(loaded["params"], loaded["rest"])


def initial_model(config: ml_collections.ConfigDict,
                  sharding: jax.sharding.Sharding, seed: int | None = None
                  ) -> nnx.Module:
  """The method's model at initialisation, as training would start it.

  For the `random_init` evaluation baseline: `method.init` with
  `nnx.Rngs(seed)` (default `config.seed`), no checkpoint read, computed
  under jit straight into `sharding` (as `restore_model`: every process of
  a multi-host job computes the same values on its own devices).
  """
  method = methods.get_method(config.method)
  seed = config.seed if seed is None else seed
  mconfig = method_config(
      config, 1, platform=platforms.devices_platform(sharding.device_set))
  new_model = lambda: method.init(mconfig, nnx.Rngs(seed))
  codec = ModelCodec(nnx.eval_shape(new_model))
  params, rest = jax.jit(lambda: codec.split(new_model()),
                         out_shardings=sharding)()
  return codec.model(params, rest)
