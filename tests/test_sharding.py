"""sharding.py: meshes, batch checks, parameter shardings, global batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import sharding
from mi_ssl_jax.config_lib import ConfigError


def test_make_mesh_resolves_minus_one_and_sets_axis_types():
  mesh = sharding.make_mesh([("data", -1)])
  assert dict(mesh.shape) == {"data": 8}
  assert mesh.axis_types == (AxisType.Auto,)
  mesh = sharding.make_mesh([("data", 2), ("fsdp", -1)], "auto")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
  assert sharding.make_mesh([("data", 1)]).devices.size == 1


@pytest.mark.parametrize("axes, match", [
    ([("data", 3)], "does not fit"),
    ([("data", -1), ("fsdp", -1)], "at most one"),
    ([("data", 16)], "does not fit"),
])
def test_make_mesh_errors(axes, match):
  with pytest.raises(ConfigError, match=match):
    sharding.make_mesh(axes)


def test_explicit_axes_are_refused_with_the_way_out():
  """Explicit axes cannot compile the losses' batch contractions (here
  `z.T @ z` over a batch-sharded z, as every Gram/covariance loss does), so
  the option is refused and the message names "auto"."""
  with pytest.raises(ConfigError, match="mesh_axis_type=auto"):
    sharding.make_mesh([("data", -1)], "explicit")
  with pytest.raises(ConfigError, match="must be 'auto'"):
    sharding.make_mesh([("data", -1)], "manual")
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(AxisType.Explicit,))
  z = jax.device_put(jnp.ones((16, 4)), sharding.batch_sharding(mesh))
  with pytest.raises(Exception, match="Contracting dimensions are sharded"):
    jax.jit(lambda z: z.T @ z)(z)


def test_check_batch_size():
  mesh = sharding.make_mesh()
  assert sharding.check_batch_size(64, mesh) == 64  # one process
  with pytest.raises(ConfigError, match="not divisible by the 8 devices"):
    sharding.check_batch_size(12, mesh)


def test_param_shardings_replicate_and_fsdp():
  params = {"big": jax.ShapeDtypeStruct((64, 4096), jnp.float32),
            "odd": jax.ShapeDtypeStruct((3, 100003), jnp.float32),
            "bias": jax.ShapeDtypeStruct((4096,), jnp.float32)}
  mesh = sharding.make_mesh([("data", 1), ("fsdp", -1)])
  repl = sharding.param_shardings(params, mesh)
  assert all(s.spec == P() for s in jax.tree.leaves(repl))
  fsdp = sharding.param_shardings(params, mesh, "fsdp")
  assert fsdp["big"].spec == P(None, "fsdp")  # largest divisible dim
  assert fsdp["odd"].spec == P()  # no dimension divisible by 8
  assert fsdp["bias"].spec == P()  # small: replicated
  with pytest.raises(ConfigError, match="needs an 'fsdp' axis"):
    sharding.param_shardings(params, sharding.make_mesh(), "fsdp")


def test_global_batch_is_sharded_and_equal():
  mesh = sharding.make_mesh()
  local = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3),
           "label": np.arange(16, dtype=np.int32)}
  batch = sharding.global_batch(local, sharding.batch_sharding(mesh))
  assert batch["image"].sharding.spec == P(("data",))
  assert len(batch["image"].addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(batch["image"]), local["image"])


class _Device:
  def __init__(self, process_index):
    self.process_index = process_index


class _Sharding:
  """A stand-in sharding placing 2 rows per device on 4 devices whose
  processes interleave (as a TPU mesh's host order may)."""

  def devices_indices_map(self, shape):
    per = shape[0] // 4
    return {_Device(p): (slice(i * per, (i + 1) * per),)
            for i, p in enumerate((0, 1, 0, 1))}


def test_row_processes_and_dataset_order_restore_the_split_order():
  """Feature extraction on several processes (evaluators.common): each
  process's local batch fills the rows of its devices; reading the rows
  process by process, batch by batch, gives back the split's order."""
  from mi_ssl_jax.evaluators import common  # noqa: PLC0415
  mesh = sharding.make_mesh()  # one process here: every row is process 0's
  assert sharding.row_processes(sharding.batch_sharding(mesh), 16).tolist(
      ) == [0] * 16
  owner = sharding.row_processes(_Sharding(), 8)
  assert owner.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
  # Split rows 0..11 on process 0, 12..23 on process 1, local batch 4, three
  # global batches of 8: what the devices hold, row by row.
  share = {0: iter(range(12)), 1: iter(range(12, 24))}
  stacked = [next(share[p]) for _ in range(3) for p in owner]
  order = common.dataset_order(3, owner)
  assert [stacked[i] for i in order] == list(range(24))
