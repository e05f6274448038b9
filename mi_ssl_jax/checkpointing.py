"""Checkpoints: the only module that imports orbax (v0 `CheckpointManager`).

Layout: `<workdir>/checkpoints/<step>/default/...`, written asynchronously.
Each save goes to a temporary directory that orbax renames into place only
once every file is written, so a save that is killed part-way (SIGKILL,
preemption, full disk) leaves the previous checkpoint as the latest good one;
leftover temporary directories are removed when the manager is next opened.

Policies (docs/design.md §8.6):
* save every `save_interval_steps` steps (`FixedIntervalPolicy`) and when the
  JAX preemption service reports a preemption (`PreemptionCheckpointingPolicy`,
  multi-host TPU/GPU jobs); single-process jobs also treat SIGTERM (sent by
  SLURM and most schedulers before the kill) as a preemption;
* keep the latest `keep` checkpoints (`LatestN`) plus every
  `keep_every_steps`-th step (`EveryNSteps`) for later probing.

The saved tree is whatever the trainer passes (params, optimizer state, EMA
teacher and loss state as plain nested dicts, and the step). Restores take an
abstract tree whose leaves carry shardings, so arrays land already sharded.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as cm

from mi_ssl_jax import paths
from mi_ssl_jax.errors import UserError


class CheckpointError(UserError, RuntimeError):
  """A checkpoint could not be read; the message says which and what to do."""


class CheckpointMismatch(CheckpointError):
  """A readable checkpoint written by a different model (shapes differ)."""


class WorkdirInUse(UserError, RuntimeError):
  """Another live trainer holds the workdir's lock."""


def _metadata_tree(meta: Any) -> Any:
  """The nested dict of array metadata inside orbax's metadata objects."""
  for attr in ("item_metadata", "tree"):
    meta = getattr(meta, attr, meta)
  return meta if isinstance(meta, dict) else None


def stored_tree(item_path: Any) -> dict[str, Any] | None:
  """Array metadata (shapes, dtypes) of a saved item, or None if unreadable.

  Read with a PyTreeCheckpointer: a fresh CheckpointManager cannot read item
  metadata without the handler registry.
  """
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      return _metadata_tree(ckptr.metadata(item_path))
  except Exception:  # noqa: BLE001 (missing/truncated metadata)
    return None


def _key_name(k: Any) -> str:
  """A path entry as a plain name: dict key, sequence index or attribute
  (optax's namedtuple states are attributes in a live tree and dict keys in
  a checkpoint's metadata)."""
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k).lstrip(".")


def _leaves_with_paths(tree: Any) -> dict[str, Any]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_key_name(k) for k in kp): leaf for kp, leaf in flat}


def shape_mismatches(stored: Any, wanted: Any, limit: int = 3) -> list[str]:
  """Leaves whose stored shape differs from the abstract tree's (or that
  exist on one side only): "params/.../kernel: stored (32, 96), this config
  builds (48, 96)"."""
  have, want = _leaves_with_paths(stored), _leaves_with_paths(wanted)
  out = []
  for name, leaf in want.items():
    if name not in have:
      out.append(f"{name}: not in the checkpoint")
    elif tuple(getattr(have[name], "shape", ())) != tuple(leaf.shape):
      out.append(f"{name}: stored {tuple(have[name].shape)}, this config "
                 f"builds {tuple(leaf.shape)}")
    if len(out) >= limit:
      break
  if len(out) < limit:
    extra = [n for n in have if n not in want and n.split("/")[0] in
             {w.split("/")[0] for w in want}]
    out += [f"{n}: only in the checkpoint" for n in extra[:limit - len(out)]]
  return out


class WorkdirLock:
  """`<workdir>/.lock`: one trainer per run directory.

  Process 0 of a job writes `{"pid", "host", "token", "started",
  "heartbeat"}`. A second trainer on the same workdir stops with
  `WorkdirInUse` naming the holder. A lock is stale (taken over with a
  warning) when its process is gone (same host, pid not alive) or its
  heartbeat, refreshed at every log step, is older than `stale_seconds`
  (other hosts, object stores).

  Remote workdirs (gs://): object stores have no exclusive create, so the
  lock is written, then read back after `settle_seconds`; if another
  trainer's token replaced it meanwhile, this one stops with `WorkdirInUse`
  (the last writer keeps the lock; GCS reads are strongly consistent). This
  stops a second trainer started while one runs, and one of two started
  together unless both write within `settle_seconds` of each other's read
  (then both may run): a guard against mistakes, not a mutex.
  """

  def __init__(self, workdir: str, stale_seconds: float = 900.0,
               settle_seconds: float = 1.0):
    self.path = paths.join(workdir, ".lock")
    self.stale_seconds = float(stale_seconds)
    self.settle_seconds = float(settle_seconds)
    self._held = False
    self._info = {"pid": os.getpid(), "host": socket.gethostname(),
                  "token": uuid.uuid4().hex, "started": _utc_now()}

  def _holder(self) -> dict[str, Any] | None:
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):
      return None

  def _alive(self, holder: dict[str, Any]) -> bool:
    if holder.get("host") == socket.gethostname():
      try:
        pid = int(holder["pid"])
      except (KeyError, ValueError, TypeError):
        return False
      if pid == os.getpid():
        return False
      try:
        os.kill(pid, 0)
      except ProcessLookupError:
        return False
      except PermissionError:
        return True
      return True
    beat = holder.get("heartbeat_unix", 0.0)
    return time.time() - float(beat) < self.stale_seconds

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirInUse (process 0 only)."""
    if jax.process_index() != 0:
      return
    holder = self._holder() if self.path.exists() else None
    if holder is not None and self._alive(holder):
      raise WorkdirInUse(
          f"workdir {self.path.parent} is in use by process "
          f"{holder.get('pid')} on host {holder.get('host')} (started "
          f"{holder.get('started')}); wait for it to finish, stop it, or use "
          f"another --workdir (delete {self.path} only if that process is "
          "gone)")
    if holder is not None:
      logging.warning("Taking over the stale lock of process %s on %s (%s).",
                      holder.get("pid"), holder.get("host"), self.path)
    self._write()
    if paths.is_remote(self.path):
      time.sleep(self.settle_seconds)
      holder = self._holder()
      if holder is not None and holder.get("token") != self._info["token"]:
        raise WorkdirInUse(
            f"workdir {self.path.parent} was just locked by process "
            f"{holder.get('pid')} on host {holder.get('host')} (two trainers "
            "started together); wait for it to finish or stop it")
    self._held = True

  def _write(self) -> None:
    paths.write_text(self.path, json.dumps(
        {**self._info, "heartbeat_unix": time.time(),
         "heartbeat": _utc_now()}))

  def heartbeat(self) -> None:
    if self._held:
      self._write()

  def release(self) -> None:
    if self._held:
      try:
        holder = self._holder()
        if holder and holder.get("token") == self._info["token"]:
          self.path.unlink()
      except OSError:
        pass
      self._held = False


def _utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")


class _SigtermFlag:
  """Records SIGTERM so a single-process job can save before it is killed."""

  def __init__(self):
    self.received = threading.Event()
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.received.set()

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


_CPU_HANDLER_SET = False


def _plain_array_handler_on_cpu() -> None:
  """On CPU, saves whole replicas instead of replica-parallel slices.

  Replica-parallel saving compiles a slicing op per array and device; on CPU
  hosts (laptops, CI, 8 simulated devices) that made a save of ~300 small
  arrays block ~2.5 s instead of ~0.2 s. Orbax already turns it off on GPU;
  TPU keeps the default.
  """
  global _CPU_HANDLER_SET
  if not _CPU_HANDLER_SET and jax.default_backend() == "cpu":
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
        override=True)
    _CPU_HANDLER_SET = True


class Checkpointer:
  """Saves and restores the train state of one run directory."""

  def __init__(self, directory: str, save_interval_steps: int,
               keep: int = 2, keep_every_steps: int | None = None,
               async_save: bool = True):
    """Opens (or creates) the checkpoint directory.

    Args:
      directory: where checkpoints live, e.g. `<workdir>/checkpoints`.
      save_interval_steps: save every this many steps.
      keep: number of most recent checkpoints to keep (≥ 1).
      keep_every_steps: additionally keep every checkpoint whose step is a
        multiple of this (None: none).
      async_save: write in a background thread while training continues.
    """
    _plain_array_handler_on_cpu()
    preserve = [cm.LatestN(max(1, int(keep)))]
    if keep_every_steps:
      preserve.append(cm.EveryNSteps(int(keep_every_steps)))
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=cm.AnySavePolicy([
            cm.PreemptionCheckpointingPolicy(),
            cm.FixedIntervalPolicy(max(1, int(save_interval_steps))),
        ]),
        preservation_policy=cm.AnyPreservationPolicy(preserve),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
    )
    self.directory = paths.as_path(directory)
    paths.require_remote(self.directory)
    self._options = options
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._sigterm = _SigtermFlag() if jax.process_count() == 1 else None
    self.quarantined: list[str] = []

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Saves `state` at `step` if the policies say so (or `force`).

    A failed write (full disk, no permission) raises CheckpointError; the
    previous checkpoints are left as they were.
    """
    try:
      return self._manager.save(step, args=ocp.args.StandardSave(state),
                                force=force)
    except Exception as e:  # noqa: BLE001 (I/O errors of several types)
      raise CheckpointError(
          f"cannot write checkpoint step {step} to {self.directory} "
          f"({' '.join(str(e).split())[:200]}); free space or fix "
          "permissions, then rerun to continue from the last saved step"
      ) from None

  def restore(self, abstract_state: Any, step: int | None = None
              ) -> tuple[int, Any]:
    """Restores the newest readable checkpoint (or `step`).

    If the newest checkpoint cannot be read (files deleted or truncated
    outside orbax), older ones are tried, newest first, with a warning.

    Args:
      abstract_state: tree of `jax.ShapeDtypeStruct`s with shardings.
      step: a specific step; None means the newest readable one.

    Returns:
      (step, state).

    Raises:
      CheckpointError: if no checkpoint can be read.
    """
    candidates = [step] if step is not None else self.all_steps()[::-1]
    errors = []
    for s in candidates:
      # A leaf whose stored shape differs (e.g. a changed width) is named
      # before orbax tries to read it (quietly, and never moved aside).
      stored = stored_tree(self.directory / str(s) / "default")
      resized = [m for m in shape_mismatches(stored, abstract_state)
                 if ": stored " in m] if stored is not None else []
      if resized:
        raise CheckpointMismatch(
            f"checkpoint step {s} in {self.directory} was written by a "
            f"different model ({'; '.join(resized)})")
      try:
        state = self._manager.restore(
            s, args=ocp.args.StandardRestore(abstract_state))
        if errors:
          logging.warning("Restored older checkpoint %d instead.", s)
        return s, state
      except Exception as e:  # noqa: BLE001 (any read failure: try older)
        # Readable metadata whose leaves differ from this config's: the
        # checkpoint is fine, the config changed. Say which; never move it.
        mismatch = (shape_mismatches(stored, abstract_state)
                    if stored is not None else [])
        if mismatch:
          raise CheckpointMismatch(
              f"checkpoint step {s} in {self.directory} was written by a "
              f"different model ({'; '.join(mismatch)})") from None
        msg = " ".join(str(e).split())[:200]
        moved = self._quarantine(s)
        logging.warning("Checkpoint %d in %s is unreadable (%s); moved it to "
                        "%s and trying an older one.", s, self.directory, msg,
                        moved)
        errors.append(f"step {s} moved to {moved}")
    raise CheckpointError(
        f"no readable checkpoint in {self.directory} "
        f"({'; '.join(errors) or 'none found'}); the unreadable ones were "
        "moved aside, not deleted: rerun to start from scratch, or restore "
        "them by renaming")

  def _quarantine(self, step: int) -> str:
    """Renames an unreadable step folder to `corrupt-<step>-<time>` (orbax
    ignores it: never counted as kept, never blocks saving that step)."""
    src = self.directory / str(step)
    dst = self.directory / (
        f"corrupt-{step}-{datetime.datetime.now().strftime('%Y%m%d%H%M%S')}")
    if jax.process_index() == 0:
      try:
        src.rename(dst)
      except OSError as e:
        raise CheckpointError(
            f"checkpoint {src} is unreadable and cannot be moved aside "
            f"({e}); move it yourself") from None
    self.quarantined.append(os.fspath(dst))
    self._manager.reload()
    return os.fspath(dst)

  def reached_preemption(self, step: int) -> bool:
    """True if this job is being preempted (all processes agree)."""
    if self._sigterm is not None and self._sigterm.received.is_set():
      return True
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 (an async write failed)
      raise CheckpointError(
          f"a checkpoint write to {self.directory} failed "
          f"({' '.join(str(e).split())[:200]}); free space or fix "
          "permissions, then rerun to continue from the last saved step"
      ) from None

  def close(self) -> None:
    try:
      self._manager.wait_until_finished()
      self._manager.close()
    except Exception as e:  # noqa: BLE001
      logging.warning("Closing the checkpoint manager failed: %s", e)
    if self._sigterm is not None:
      self._sigterm.restore()


def restore_subtree(path: str, abstract_subtree: dict[str, Any]
                    ) -> dict[str, Any]:
  """Restores only some top-level entries (e.g. params) of another run.

  Used for `config.init_from`. `path` is a run's workdir, its `checkpoints`
  folder, or one step's folder; the newest step is taken when a folder of
  steps is given. The optimizer state is not read.

  Args:
    path: where the checkpoint is.
    abstract_subtree: `{"params": abstract_params, ...}` with shardings.

  Returns:
    The restored entries.

  Raises:
    CheckpointError: with a one-line explanation if nothing can be read.
  """
  item_path = step_item_path(path)
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_subtree)
  stored = stored_tree(item_path)
  mismatch = shape_mismatches(
      {k: stored[k] for k in abstract_subtree if k in stored},
      abstract_subtree) if stored is not None else []
  resized = [m for m in mismatch if ": stored " in m]
  if resized:
    raise CheckpointMismatch(
        f"config.init_from={os.fspath(item_path.parent)!r} was written by a "
        f"different model ({'; '.join(resized)}); use a run of the same "
        "architecture")
  with ocp.PyTreeCheckpointer() as ckptr:
    try:
      return ckptr.restore(item_path, args=ocp.args.PyTreeRestore(
          item=abstract_subtree, restore_args=restore_args,
          partial_restore=True))
    except Exception as e:  # noqa: BLE001
      if mismatch:
        raise CheckpointMismatch(
            f"config.init_from={os.fspath(item_path.parent)!r} was written "
            f"by a different model ({'; '.join(mismatch)}); use a run of "
            "the same architecture") from None
      raise CheckpointError(
          f"cannot read config.init_from={os.fspath(item_path)!r}: "
          f"{' '.join(str(e).split())[:200]}") from None


def checkpoint_steps(path: str) -> list[int]:
  """Complete checkpoint steps under a run's workdir or checkpoints/."""
  p = paths.as_path(path)
  if (p / "checkpoints").is_dir():
    p = p / "checkpoints"
  if not p.is_dir():
    return []
  return sorted(int(d.name) for d in p.iterdir() if d.name.isdigit() and
                (d / "default").exists())


def step_item_path(path: str) -> Any:
  """`<step>/default` of `path`: a workdir, its checkpoints/ (newest step)
  or one step folder."""
  p = paths.as_path(path)
  if (p / "default").is_dir():
    return p / "default"
  steps = checkpoint_steps(path)
  if not steps:
    raise CheckpointError(
        f"config.init_from={os.fspath(p)!r} holds no checkpoint; give a "
        "run's workdir, its checkpoints/ folder or one step folder")
  base = p / "checkpoints" if (p / "checkpoints").is_dir() else p
  return base / str(steps[-1]) / "default"


def read_arrays(path: str) -> dict[str, Any]:
  """Every array of a stored step as numpy, read without a model.

  For inspecting and comparing runs (the multi-host and soak tests compare
  two runs' checkpoints leaf by leaf).

  Args:
    path: a workdir, its checkpoints/ folder (newest step) or one step folder
      (see `step_item_path`).

  Raises:
    CheckpointError: no checkpoint there, or its metadata is unreadable.
  """
  item = step_item_path(path)
  meta = stored_tree(item)
  if meta is None:
    raise CheckpointError(f"{os.fspath(item)} is not a readable checkpoint")
  restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  with ocp.PyTreeCheckpointer() as ckptr:
    return ckptr.restore(item, args=ocp.args.PyTreeRestore(
        restore_args=restore_args))


class _DropOrbaxInfo:
  """absl-logging filter: orbax logs several INFO lines per save."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or "/orbax/" not in record.pathname


def quiet_orbax_info_logs() -> None:
  """Hides orbax's INFO log lines (warnings and errors still show)."""
  from absl import logging as absl_logging
  absl_logging.get_absl_handler().addFilter(_DropOrbaxInfo())
