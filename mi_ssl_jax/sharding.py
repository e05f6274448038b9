"""Device mesh, shardings and host-to-global batch assembly.

Only `train.py` and the evaluators use this module; methods, losses and models
never see the mesh. Data parallelism: the batch is split over every mesh axis
and parameters are replicated (`P()`), so every cross-example reduction
written on the global array (Gram, covariance) gets its all-reduce from jit.
`param_sharding="fsdp"` instead splits each large parameter along one
dimension over the `fsdp` mesh axis (big_vision's `fsdp` tactic, simplified).
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax.config_lib import ConfigError
from mi_ssl_jax.configs import common

# Only Auto axes: under Explicit axes every contraction over the batch
# dimension (the losses' Gram and covariance matrices, BatchNorm statistics)
# needs an `out_sharding`, i.e. the mesh inside code that must not know it
# (docs/design.md §8.5).
_AXIS_TYPES = {"auto": AxisType.Auto}


def make_mesh(axes: Sequence[tuple[str, int]] = (("data", -1),),
              axis_type: str = "auto",
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Builds a mesh from `[(name, size), ...]`; one size may be -1 (the rest).

  Axis types are always passed explicitly: `jax.make_mesh` defaults to
  Explicit while `Mesh` defaults to Auto (docs/design.md §2.2). Only Auto is
  offered (docs/design.md §8.5).

  Args:
    axes: axis names and sizes, e.g. `[("data", -1)]` or
      `[("data", 2), ("fsdp", -1)]`.
    axis_type: "auto" (XLA places the collectives).
    devices: the devices to use; default all. If the sizes multiply to fewer
      devices than given, the first ones are used (e.g. a 1-device debug run).

  Returns:
    The mesh.
  """
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(str(name) for name, _ in axes)
  sizes = [int(size) for _, size in axes]
  if axis_type == "explicit":
    raise ConfigError(
        "config.mesh_axis_type='explicit' is not supported: the losses "
        "contract over the batch-sharded axis (Gram and covariance "
        "matrices), which explicit axes refuse without an out_sharding; use "
        "--config.mesh_axis_type=auto (the default; XLA places the "
        "collectives)")
  if axis_type not in _AXIS_TYPES:
    raise ConfigError(f"config.mesh_axis_type must be 'auto', got "
                      f"{axis_type!r}")
  if sizes.count(-1) > 1:
    raise ConfigError(f"config.mesh {list(axes)}: at most one size may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if known <= 0 or len(devices) % known:
    raise ConfigError(f"config.mesh {list(axes)} does not fit "
                      f"{len(devices)} devices")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  count = math.prod(sizes)
  if count > len(devices):
    raise ConfigError(f"config.mesh {list(axes)} needs {count} devices, "
                      f"only {len(devices)} are available")
  return jax.make_mesh(
      tuple(sizes), names, devices=devices[:count],
      axis_types=(_AXIS_TYPES[axis_type],) * len(names))


def batch_spec(mesh: jax.sharding.Mesh, leading: int = 0) -> P:
  """The batch dimension, after `leading` unsharded ones, is split over
  every mesh axis."""
  return P(*([None] * leading), tuple(mesh.axis_names))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(mesh))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_shardings(params: Any, mesh: jax.sharding.Mesh,
                    strategy: str = "replicate",
                    min_size: int = common.FSDP_MIN_SIZE) -> Any:
  """Shardings for a tree of (abstract) parameters.

  Args:
    params: a pytree of arrays or `jax.ShapeDtypeStruct`s.
    mesh: the mesh.
    strategy: "replicate" (data parallel, every device holds all parameters)
      or "fsdp" (each parameter with ≥ `min_size` elements is split along its
      largest dimension divisible by the `fsdp` axis size; the rest stay
      replicated).
    min_size: smallest parameter that "fsdp" splits.

  Returns:
    A tree of NamedShardings with the structure of `params`.
  """
  if strategy == "replicate":
    return jax.tree.map(lambda _: replicated(mesh), params)
  if strategy != "fsdp":
    raise ConfigError(f"config.param_sharding must be 'replicate' or 'fsdp', "
                      f"got {strategy!r}")
  if "fsdp" not in mesh.axis_names:
    raise ConfigError("config.param_sharding='fsdp' needs an 'fsdp' axis in "
                      "config.mesh, e.g. [('data', 1), ('fsdp', -1)]")
  n = mesh.shape["fsdp"]

  def one(x):
    shape = tuple(np.shape(x))
    if math.prod(shape) < min_size:
      return replicated(mesh)
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
      if shape[d] % n == 0:
        spec = [None] * len(shape)
        spec[d] = "fsdp"
        return NamedSharding(mesh, P(*spec))
    return replicated(mesh)

  return jax.tree.map(one, params)


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh,
                     name: str = "batch_size") -> int:
  """Checks divisibility and returns the per-process (host-local) batch.

  The processes are those of the mesh's devices (the hosts of the slice
  the program is for: this run's, or an ahead-of-time target's).

  Raises:
    ConfigError: if the global batch is not divisible by the number of devices
      in the mesh or by the number of processes.
  """
  n_dev = mesh.devices.size
  if global_batch <= 0 or global_batch % n_dev:
    raise ConfigError(
        f"config.{name}={global_batch} is not divisible by the {n_dev} "
        f"devices of the mesh; use a multiple of {n_dev}")
  n_proc = mesh_process_count(mesh)
  if global_batch % n_proc:
    raise ConfigError(f"config.{name}={global_batch} is not divisible by the "
                      f"{n_proc} processes")
  return global_batch // n_proc


def mesh_process_count(mesh: jax.sharding.Mesh) -> int:
  """Number of processes (hosts) that own the mesh's devices."""
  return len({d.process_index for d in mesh.devices.flat})


def global_batch(local_batch: dict[str, np.ndarray],
                 sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global jax.Arrays sharded like `sharding`.

  Every leaf's leading axis is this process's slice of the global batch
  (`jax.make_array_from_process_local_data`); the global batch is the
  concatenation over processes in process order. The one place where host
  batches become global arrays (trainer, evaluators, data pipeline).

  Args:
    local_batch: dict (or pytree) of arrays [b, ...], b = the local batch.
    sharding: e.g. `batch_sharding(mesh)`.
  """
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def row_processes(sharding: jax.sharding.Sharding, rows: int) -> np.ndarray:
  """[rows] int: the process whose local batch fills each row of a global
  batch of `rows` rows placed with `sharding` (`global_batch`).

  A process's local rows land, in order, on the rows its devices hold,
  ascending; with the mesh's devices grouped by process (CPU, GPU) that is
  one block per process, in process order, but a TPU mesh may interleave
  hosts.
  """
  owner = np.full([rows], -1, np.int32)  # [rows]
  for device, index in sharding.devices_indices_map((rows,)).items():
    owner[index[0]] = device.process_index
  return owner


def prefetch_to_device(batches: Iterable[dict[str, np.ndarray]],
                       sharding: jax.sharding.Sharding,
                       size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Yields `global_batch(batch)` while `size` later batches transfer.

  Transfers are asynchronous, so keeping `size` batches in flight overlaps
  host->device copies with the train step (flax's prefetch_to_device, for
  jax.Array sharding instead of pmap).
  """
  queue = collections.deque()
  it = iter(batches)
  for b in itertools.islice(it, size):
    queue.append(global_batch(b, sharding))
  while queue:
    yield queue.popleft()
    for b in itertools.islice(it, 1):
      queue.append(global_batch(b, sharding))
