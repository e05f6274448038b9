"""checkpointing.py: save/restore, policies, torn saves, fallbacks, SIGTERM."""

import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mi_ssl_jax import checkpointing, sharding


def _state(mesh, value=1.0):
  repl = NamedSharding(mesh, P())
  rows = NamedSharding(mesh, P("data"))
  return {
      "step": jax.device_put(jnp.array(3, jnp.int32), repl),
      "params": {"w": jax.device_put(jnp.full((8, 2), value), rows),
                 "b": jax.device_put(jnp.arange(2.0) + value, repl)},
      "opt": ({"count": jax.device_put(jnp.array(5), repl)}, ()),
  }


def _abstract(state):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)


def _save_steps(ckpt, mesh, steps):
  for s in steps:
    ckpt.save(s, _state(mesh, float(s)))
  ckpt.wait()


@pytest.fixture
def mesh():
  return sharding.make_mesh()


def test_save_restore_roundtrip_keeps_sharding(tmp_path, mesh):
  ckpt = checkpointing.Checkpointer(str(tmp_path), 1)
  try:
    state = _state(mesh, 2.0)
    assert ckpt.save(7, state)
    ckpt.wait()
    step, restored = ckpt.restore(_abstract(state))
  finally:
    ckpt.close()
  assert step == 7
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state),
                       strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert got.sharding == want.sharding


def test_interval_latest_n_and_every_n(tmp_path, mesh):
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=2,
                                    keep=2, keep_every_steps=4)
  try:
    _save_steps(ckpt, mesh, range(1, 10))
    assert ckpt.all_steps() == [4, 6, 8]
    assert ckpt.latest_step() == 8
  finally:
    ckpt.close()


def test_torn_save_and_unreadable_latest_fall_back(tmp_path, mesh):
  ckpt = checkpointing.Checkpointer(str(tmp_path), 1, keep=3,
                                    async_save=False)
  _save_steps(ckpt, mesh, [1, 2])
  ckpt.close()
  # A save killed part-way leaves only a temporary folder behind.
  torn = tmp_path / "3.orbax-checkpoint-tmp"
  torn.mkdir()
  (torn / "junk").write_text("partial")
  # The newest complete checkpoint loses its array data (disk trouble).
  for entry in (tmp_path / "2" / "default").iterdir():
    if entry.is_dir():
      shutil.rmtree(entry)
  ckpt = checkpointing.Checkpointer(str(tmp_path), 1, keep=3)
  try:
    assert ckpt.latest_step() == 2
    step, restored = ckpt.restore(_abstract(_state(mesh)))
    assert step == 1
    np.testing.assert_array_equal(np.asarray(restored["params"]["b"]),
                                  [1.0, 2.0])
  finally:
    ckpt.close()
  assert not torn.exists()  # cleaned up when the manager was opened


def test_no_readable_checkpoint_is_a_clear_error(tmp_path, mesh):
  ckpt = checkpointing.Checkpointer(str(tmp_path), 1)
  try:
    with pytest.raises(checkpointing.CheckpointError, match="no readable"):
      ckpt.restore(_abstract(_state(mesh)))
  finally:
    ckpt.close()


def test_restore_subtree_for_init_from(tmp_path, mesh):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), 1)
  _save_steps(ckpt, mesh, [4, 5])
  ckpt.close()
  abstract = {"params": _abstract(_state(mesh))["params"]}
  loaded = checkpointing.restore_subtree(str(tmp_path), abstract)
  assert set(loaded) == {"params"}
  np.testing.assert_array_equal(np.asarray(loaded["params"]["b"]), [5., 6.])
  with pytest.raises(checkpointing.CheckpointError, match="holds no"):
    checkpointing.restore_subtree(str(tmp_path / "nothing"), abstract)


def test_sigterm_counts_as_preemption(tmp_path):
  previous = signal.getsignal(signal.SIGTERM)
  ckpt = checkpointing.Checkpointer(str(tmp_path), 100)
  try:
    assert not ckpt.reached_preemption(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert ckpt.reached_preemption(2)
  finally:
    ckpt.close()
  assert signal.getsignal(signal.SIGTERM) is previous


def test_remote_lock_backs_off_when_overwritten(tmp_path, monkeypatch):
  """Object stores have no exclusive create: the lock is read back after
  `settle_seconds`, and a trainer whose lock was replaced stops."""
  import json  # noqa: PLC0415
  import threading  # noqa: PLC0415

  from mi_ssl_jax import paths  # noqa: PLC0415
  monkeypatch.setattr(paths, "is_remote", lambda p: True)  # gs:// semantics
  lock = checkpointing.WorkdirLock(str(tmp_path), settle_seconds=0.5)
  lock.acquire()  # nobody else: held
  assert json.loads((tmp_path / ".lock").read_text())["token"]
  lock.release()
  assert not (tmp_path / ".lock").exists()

  racer = checkpointing.WorkdirLock(str(tmp_path), settle_seconds=1.0)
  other = {"pid": 1, "host": "other-host", "token": "theirs",
           "heartbeat_unix": 0.0}
  # Another host writes its lock while this one waits to confirm its own.
  timer = threading.Timer(0.3, lambda: (tmp_path / ".lock").write_text(
      json.dumps(other)))
  timer.start()
  with pytest.raises(checkpointing.WorkdirInUse, match="just locked"):
    racer.acquire()
  timer.join()
  racer.release()  # not held: the other trainer's lock stays
  assert json.loads((tmp_path / ".lock").read_text())["token"] == "theirs"


def test_gs_checkpoints_name_the_missing_package(monkeypatch):
  from mi_ssl_jax import paths  # noqa: PLC0415
  monkeypatch.setattr(paths, "_installed", lambda module: False)
  with pytest.raises(paths.MissingRemotePackage,
                     match=r"pip install .mi_ssl_jax\[gcs\]."):
    checkpointing.Checkpointer("gs://bucket/run/checkpoints", 10)
  paths.require_remote("/tmp/local/checkpoints")  # local: nothing needed


def _foreign_lock(path, age_seconds, job=""):
  """A lock written by a trainer on another host `age_seconds` ago."""
  import json  # noqa: PLC0415
  import time  # noqa: PLC0415
  path.write_text(json.dumps({
      "pid": 1, "host": "old-host-gone", "job": job, "token": "theirs",
      "started": "earlier", "heartbeat_unix": time.time() - age_seconds}))


@pytest.fixture
def no_job_id(monkeypatch):
  for name in checkpointing.JOB_ID_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


@pytest.mark.parametrize("variable", checkpointing.JOB_ID_VARIABLES)
def test_lock_taken_over_by_a_rerun_of_the_same_job(tmp_path, no_job_id,
                                                    variable):
  """After a hard preemption the rerun (a requeued SLURM job, a recreated
  TPU VM) has a new hostname and the old lock a fresh heartbeat: the same
  launcher job id takes it over at once; another live job is refused."""
  import json  # noqa: PLC0415
  lock_file = tmp_path / ".lock"
  no_job_id.setenv(variable, "job-17")
  _foreign_lock(lock_file, age_seconds=5, job=f"{variable}=job-17")
  lock = checkpointing.WorkdirLock(str(tmp_path))
  lock.acquire()
  held = json.loads(lock_file.read_text())
  assert held["token"] != "theirs" and held["job"] == f"{variable}=job-17"
  lock.release()

  _foreign_lock(lock_file, age_seconds=5, job=f"{variable}=job-16")
  with pytest.raises(checkpointing.WorkdirInUse, match="job-16"):
    checkpointing.WorkdirLock(str(tmp_path)).acquire()
  assert json.loads(lock_file.read_text())["token"] == "theirs"


def test_lock_timeout_is_configurable(tmp_path, no_job_id):
  """Without a job id, another host's lock is trusted for
  `stale_seconds` (config.lock_stale_seconds) after its last heartbeat."""
  from mi_ssl_jax.configs import common  # noqa: PLC0415
  lock_file = tmp_path / ".lock"
  _foreign_lock(lock_file, age_seconds=60)
  default = checkpointing.WorkdirLock(str(tmp_path)).stale_seconds
  assert default == common.LOCK_STALE_SECONDS == 900.0
  with pytest.raises(checkpointing.WorkdirInUse, match="lock_stale_seconds"):
    checkpointing.WorkdirLock(str(tmp_path)).acquire()  # 60 s < 900 s
  lock = checkpointing.WorkdirLock(str(tmp_path), stale_seconds=30)
  lock.acquire()  # 60 s > 30 s: stale
  lock.release()
  assert not lock_file.exists()


def test_stray_read_tracebacks_are_dropped_and_the_rest_kept():
  """After a failed read, TensorStore callbacks on several threads print
  `RuntimeError: Event loop is closed` tracebacks in fragments (the CLI's
  sys.stderr drops exactly those); every other line, tracebacks included,
  passes."""
  import io  # noqa: PLC0415
  import threading  # noqa: PLC0415
  out = io.StringIO()
  stream = checkpointing._StrayTracebackFilter(out)
  fragments = ["Traceback (most recent call last):\n",
               '  File "asyncio/base_events.py", line 519, in _check_closed\n',
               "    ", "raise RuntimeError('Event loop is closed')", "\n",
               "RuntimeError", ": ", "Event loop is closed", "\n"]
  threads = [threading.Thread(target=lambda: [stream.write(f)
                                               for f in fragments])
             for _ in range(4)]
  for t in threads:
    t.start()
  stream.write("error: one line")
  stream.write(" for the user\n")
  for t in threads:
    t.join()
  stream.write("Traceback (most recent call last):\n  File \"x\"\n"
               "ValueError: a real one\n")
  stream.write("no newline yet")
  stream.flush()
  assert out.getvalue() == (
      "error: one line for the user\nTraceback (most recent call last):\n"
      "  File \"x\"\nValueError: a real one\nno newline yet")
