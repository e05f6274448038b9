"""Checkpoints: the only module that imports orbax (v0 `CheckpointManager`).

Layout: `<workdir>/checkpoints/<step>/default/...`, written asynchronously.
Each save goes to a temporary directory that orbax renames into place only
once every file is written, so a save that is killed part-way (SIGKILL,
preemption, full disk) leaves the previous checkpoint as the latest good one;
leftover temporary directories are removed when the manager is next opened.

Policies (conventions.md §8.6):
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

import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as cm


class CheckpointError(RuntimeError):
  """A checkpoint could not be read; the message says which and what to do."""


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
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._sigterm = _SigtermFlag() if jax.process_count() == 1 else None

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Saves `state` at `step` if the policies say so (or `force`)."""
    return self._manager.save(step, args=ocp.args.StandardSave(state),
                              force=force)

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
      try:
        state = self._manager.restore(
            s, args=ocp.args.StandardRestore(abstract_state))
        if errors:
          logging.warning("Restored older checkpoint %d instead.", s)
        return s, state
      except Exception as e:  # noqa: BLE001 (any read failure: try older)
        msg = " ".join(str(e).split())[:300]
        logging.warning("Cannot read checkpoint %d in %s: %s", s,
                        self.directory, msg)
        errors.append(f"step {s}: {msg}")
    raise CheckpointError(
        f"no readable checkpoint in {self.directory} ({'; '.join(errors)}); "
        "move the directory away to start from scratch")

  def reached_preemption(self, step: int) -> bool:
    """True if this job is being preempted (all processes agree)."""
    if self._sigterm is not None and self._sigterm.received.is_set():
      return True
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
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
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  if not os.path.isdir(os.path.join(path, "default")):
    steps = sorted(int(d) for d in (os.listdir(path) if os.path.isdir(path)
                                    else []) if d.isdigit())
    if not steps:
      raise CheckpointError(
          f"config.init_from={path!r} holds no checkpoint; give a run's "
          "workdir, its checkpoints/ folder or one step folder")
    path = os.path.join(path, str(steps[-1]))
  item_path = os.path.join(path, "default")
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_subtree)
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      return ckptr.restore(item_path, args=ocp.args.PyTreeRestore(
          item=abstract_subtree, restore_args=restore_args,
          partial_restore=True))
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(
        f"cannot read config.init_from={item_path!r}: "
        f"{' '.join(str(e).split())[:300]}") from e


class _DropOrbaxInfo:
  """absl-logging filter: orbax logs several INFO lines per save."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or "/orbax/" not in record.pathname


def quiet_orbax_info_logs() -> None:
  """Hides orbax's INFO log lines (warnings and errors still show)."""
  from absl import logging as absl_logging
  absl_logging.get_absl_handler().addFilter(_DropOrbaxInfo())
