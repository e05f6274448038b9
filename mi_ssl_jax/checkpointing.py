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

Multi-host: every decision about which checkpoint to read is taken once for
all processes. Process 0's list of steps is the list everyone tries; each
process reads its shards without orbax's closing barrier (a process whose
read failed would never reach it), then all processes exchange a verdict
(read, unreadable, written by another model) and act on the worst one
together: all accept the step, all move it aside and try the next older
one, or all stop with the same error.
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
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as cm

from mi_ssl_jax import paths
from mi_ssl_jax.configs import common
from mi_ssl_jax.errors import UserError, one_line

# The launcher's identity of a job, in order of preference: a run id that
# survives requeues and recreated VMs (launch/tpu/run.sh exports it), then
# SLURM's job id (kept by `scontrol requeue`).
JOB_ID_VARIABLES = ("MI_SSL_RUN_ID", "SLURM_JOB_ID")
# Test hook (tests/test_multihost.py): the first checkpoint read of this
# process index fails, as a transient read error on one host would.
FAIL_RESTORE_VARIABLE = "MI_SSL_TEST_FAIL_RESTORE_ON_PROCESS"


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


def job_identity() -> str:
  """This job's identity as its launcher exports it, e.g. "SLURM_JOB_ID=42".

  The first set variable of `JOB_ID_VARIABLES`; "" when none is (a run
  started by hand). The same job restarted (a requeued SLURM job, a rerun
  of launch/tpu/run.sh on a recreated VM) keeps it, on whichever host.
  """
  for name in JOB_ID_VARIABLES:
    if os.environ.get(name, ""):
      return f"{name}={os.environ[name]}"
  return ""


class WorkdirLock:
  """`<workdir>/.lock`: one trainer per run directory.

  Process 0 of a job writes `{"pid", "host", "job", "token", "started",
  "heartbeat"}`. A second trainer on the same workdir stops with
  `WorkdirInUse` naming the holder. A lock is stale, and taken over with a
  warning, when
  * its process is gone (same host, pid not alive);
  * it was written by an earlier run of this same job on another host
    (same `job_identity()`: a SLURM job requeued on another node, a TPU VM
    recreated after a preemption; the launcher never runs two at once);
  * or its heartbeat is older than `stale_seconds`
    (`config.lock_stale_seconds`; other hosts, object stores). The
    heartbeat is refreshed at log steps, at most once per
    `heartbeat_seconds` = min(`configs.common.LOCK_HEARTBEAT_SECONDS`,
    `stale_seconds` / 10) (one small write a minute, not one per log
    step), so `stale_seconds` must exceed the time between two log steps
    plus that.

  Remote workdirs (gs://): object stores have no exclusive create, so the
  lock is written, then read back after `settle_seconds`; if another
  trainer's token replaced it meanwhile, this one stops with `WorkdirInUse`
  (the last writer keeps the lock; GCS reads are strongly consistent). This
  stops a second trainer started while one runs, and one of two started
  together unless both write within `settle_seconds` of each other's read
  (then both may run): a guard against mistakes, not a mutex.
  """

  def __init__(self, workdir: str, stale_seconds: float | None = None,
               settle_seconds: float = 1.0):
    """Args: the run directory; the heartbeat age after which another
    host's lock is stale (None: `configs.common.LOCK_STALE_SECONDS`); how
    long a remote lock is left before it is read back."""
    self.path = paths.join(workdir, ".lock")
    self.stale_seconds = float(common.LOCK_STALE_SECONDS
                               if stale_seconds is None else stale_seconds)
    self.settle_seconds = float(settle_seconds)
    self.heartbeat_seconds = min(common.LOCK_HEARTBEAT_SECONDS,
                                 self.stale_seconds / 10)
    self._held = False
    self._beat = -float("inf")  # time.monotonic() of the last write
    self._info = {"pid": os.getpid(), "host": socket.gethostname(),
                  "job": job_identity(), "token": uuid.uuid4().hex,
                  "started": _utc_now()}

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
    if self._info["job"] and holder.get("job") == self._info["job"]:
      return False  # an earlier run of this job, on a host now gone
    try:
      beat = float(holder.get("heartbeat_unix", 0.0))
    except (TypeError, ValueError):
      beat = 0.0
    return time.time() - beat < self.stale_seconds

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirInUse (process 0 only)."""
    if jax.process_index() != 0:
      return
    holder = self._holder() if self.path.exists() else None
    if holder is not None and self._alive(holder):
      job = f", job {holder['job']}" if holder.get("job") else ""
      raise WorkdirInUse(
          f"workdir {self.path.parent} is in use by process "
          f"{holder.get('pid')} on host {holder.get('host')}{job} (started "
          f"{holder.get('started')}, heartbeat {holder.get('heartbeat')}); "
          "wait for it to finish, stop it, or use another --workdir (delete "
          f"{self.path} only if that process is gone; a lock whose heartbeat "
          f"is older than {self.stale_seconds:.0f} s "
          "(config.lock_stale_seconds) is taken over)")
    if holder is not None and self._info["job"] and (
        holder.get("job") == self._info["job"]):
      logging.warning("Taking over the lock of process %s on %s (%s): an "
                      "earlier run of this job (%s).", holder.get("pid"),
                      holder.get("host"), self.path, self._info["job"])
    elif holder is not None:
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
    self._beat = time.monotonic()

  def heartbeat(self) -> bool:
    """Refreshes the heartbeat if `heartbeat_seconds` have passed since the
    last one; returns whether it wrote."""
    if not self._held or (time.monotonic() - self._beat
                          < self.heartbeat_seconds):
      return False
    self._write()
    return True

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


# ------------------------------------------------- multi-host agreement ----

# Verdicts of one process on one checkpoint, worst last.
_READ, _UNREADABLE, _MISMATCH = 0, 1, 2


def _verdicts(verdict: int) -> list[int]:
  """Every process's verdict, in process order (a collective: all call)."""
  if jax.process_count() == 1:
    return [int(verdict)]
  return [int(v) for v in np.ravel(
      multihost_utils.process_allgather(np.int32(verdict)))]


def _from_process_0(values: list[int]) -> list[int]:
  """Process 0's list of small ints, on every process (a collective)."""
  if jax.process_count() == 1:
    return list(values)
  n = int(multihost_utils.broadcast_one_to_all(np.int32(len(values))))
  mine = np.full([n], -1, np.int32)  # [n], only process 0's is read
  mine[:min(n, len(values))] = np.asarray(values[:n], np.int32)
  return [int(v) for v in multihost_utils.broadcast_one_to_all(mine)]


def _injected_read_failure(_fired: list[bool] = []) -> None:  # noqa: B006
  """Test hook: with `MI_SSL_TEST_FAIL_RESTORE_ON_PROCESS=<p>`, the first
  checkpoint read of process p raises, once (a transient read error on one
  host). Unset (always, outside tests) it does nothing."""
  target = os.environ.get(FAIL_RESTORE_VARIABLE, "")
  if target and not _fired and int(target) == jax.process_index():
    _fired.append(True)
    raise OSError(f"injected read failure on process {target} "
                  f"({FAIL_RESTORE_VARIABLE})")


class _QuietAsyncReadErrors:
  """Drops the echoes of a failed orbax read, which is reported once.

  A read that fails leaves orbax's other read tasks behind: asyncio logs
  each one ("Task exception was never retrieved", with the TensorStore
  spec), and TensorStore's completion callbacks, firing after orbax closed
  its event loop, print "RuntimeError: Event loop is closed" tracebacks on
  `sys.stderr` from their own threads: hundreds of lines for one
  unreadable checkpoint, which `Checkpointer.restore` summarises in one
  warning line. The first kind is filtered out of the `asyncio` logger by
  every restore; the second by `_StrayTracebackFilter`, which the command
  line (`quiet_orbax_info_logs`, from `mi_ssl_jax.main`) puts on
  `sys.stderr` of its own process. Everything else passes unchanged.
  """

  installed = False

  @staticmethod
  def filter(record) -> bool:
    text = record.getMessage()
    return not ("Task exception was never retrieved" in text and
                "/orbax/" in text)

  @classmethod
  def install(cls) -> None:
    if not cls.installed:
      cls.installed = True
      import logging as std_logging  # noqa: PLC0415
      std_logging.getLogger("asyncio").addFilter(cls.filter)


class _StrayTracebackFilter:
  """A text stream that drops "Event loop is closed" tracebacks.

  Wraps `sys.stderr` (see `_QuietAsyncReadErrors`). Text is assembled into
  lines per writing thread (the callbacks of several threads interleave
  their fragments); a traceback is held until its last line, then dropped
  if that line is `RuntimeError: Event loop is closed` and written
  otherwise. Every other line is written as soon as it is complete.
  """

  _START = "Traceback (most recent call last):"
  _STRAY = "RuntimeError: Event loop is closed"

  def __init__(self, stream):
    self._stream = stream
    self._lock = threading.Lock()
    self._partial: dict[int, str] = {}  # thread -> text after its last \n
    self._held: dict[int, list[str]] = {}  # thread -> open traceback lines

  def write(self, text: str) -> int:
    tid = threading.get_ident()
    with self._lock:
      lines = (self._partial.pop(tid, "") + text).split("\n")
      if lines[-1]:
        self._partial[tid] = lines[-1]
      out = []
      for line in lines[:-1]:
        held = self._held.get(tid)
        if held is None and line.startswith(self._START):
          self._held[tid] = [line]
        elif held is None:
          out.append(line)
        elif line.startswith(" "):
          held.append(line)
        else:  # the exception line ends the traceback
          del self._held[tid]
          if line != self._STRAY:
            out += [*held, line]
      if out:
        self._stream.write("\n".join(out) + "\n")
    return len(text)

  def flush(self) -> None:
    with self._lock:
      tid = threading.get_ident()
      if tid not in self._held and tid in self._partial:
        self._stream.write(self._partial.pop(tid))
    self._stream.flush()

  def __getattr__(self, name: str) -> Any:
    return getattr(self._stream, name)


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
    """The newest complete checkpoint's step, or None (process 0's view,
    on every process)."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def all_steps(self) -> list[int]:
    """Complete checkpoint steps, ascending: process 0's list on every
    process, so that all of them try the same steps."""
    return _from_process_0(sorted(self._manager.all_steps()))

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
    outside orbax, or a read error on any one process), it is moved aside
    and older ones are tried, newest first, with a one-line warning; all
    processes take each of these decisions together (module docstring).

    Args:
      abstract_state: tree of `jax.ShapeDtypeStruct`s with shardings.
      step: a specific step; None means the newest readable one.

    Returns:
      (step, state), the same step on every process.

    Raises:
      CheckpointMismatch: a checkpoint written by a different model.
      CheckpointError: if no checkpoint can be read.
    """
    _QuietAsyncReadErrors.install()
    candidates = [step] if step is not None else self.all_steps()[::-1]
    errors = []
    for s in candidates:
      state, verdict, problem = self._read(s, abstract_state)
      verdicts = _verdicts(verdict)
      if max(verdicts) == _READ:
        if errors:
          logging.warning("Restored older checkpoint %d instead.", s)
        return s, state
      del state  # read on some processes only: dropped everywhere
      if max(verdicts) == _MISMATCH:
        raise CheckpointMismatch(problem if verdict == _MISMATCH else (
            f"checkpoint step {s} in {self.directory} was written by a "
            "different model (process "
            f"{verdicts.index(_MISMATCH)} names the differing arrays)"))
      failed = [i for i, v in enumerate(verdicts) if v == _UNREADABLE]
      moved = self._quarantine(s)
      where = "" if failed == [0] and len(verdicts) == 1 else (
          f" on process{'es' if len(failed) > 1 else ''} "
          f"{', '.join(map(str, failed))}")
      logging.warning("Checkpoint %d in %s is unreadable%s (%s); moved it "
                      "to %s and trying an older one.", s, self.directory,
                      where, problem or "see that process's log", moved)
      errors.append(f"step {s} moved to {moved}")
    raise CheckpointError(
        f"no readable checkpoint in {self.directory} "
        f"({'; '.join(errors) or 'none found'}); the unreadable ones were "
        "moved aside, not deleted: rerun to start from scratch, or restore "
        "them by renaming")

  def _read(self, step: int, abstract_state: Any
            ) -> tuple[Any, int, str]:
    """Reads `step` on this process: (state or None, verdict, message).

    Reads through orbax's handler, not its manager: the manager ends every
    restore with a barrier that a process whose read failed never reaches.
    """
    item = self.directory / str(step) / "default"
    # A leaf whose stored shape differs (e.g. a changed width) is named
    # before orbax tries to read it (quietly, and never moved aside).
    stored = stored_tree(item)
    resized = [m for m in shape_mismatches(stored, abstract_state)
               if ": stored " in m] if stored is not None else []
    if resized:
      return None, _MISMATCH, (
          f"checkpoint step {step} in {self.directory} was written by a "
          f"different model ({'; '.join(resized)})")
    try:
      _injected_read_failure()
      handler = ocp.StandardCheckpointHandler()
      try:
        state = handler.restore(
            item, args=ocp.args.StandardRestore(abstract_state))
      finally:
        handler.close()
      return state, _READ, ""
    except Exception as e:  # noqa: BLE001 (any read failure: try older)
      # Readable metadata whose leaves differ from this config's: the
      # checkpoint is fine, the config changed. Say which; never move it.
      mismatch = (shape_mismatches(stored, abstract_state)
                  if stored is not None else [])
      if mismatch:
        return None, _MISMATCH, (
            f"checkpoint step {step} in {self.directory} was written by a "
            f"different model ({'; '.join(mismatch)})")
      return None, _UNREADABLE, one_line(e)

  def _quarantine(self, step: int) -> str:
    """Renames an unreadable step folder to `corrupt-<step>-<time>` (orbax
    ignores it: never counted as kept, never blocks saving that step).

    Process 0 renames; every process then learns whether that worked (the
    exchange is also the barrier before the managers re-list the steps).
    """
    src = self.directory / str(step)
    now = datetime.datetime.now()
    day, second = _from_process_0([int(now.strftime("%Y%m%d")),
                                   int(now.strftime("%H%M%S"))])
    dst = self.directory / f"corrupt-{step}-{day:08d}{second:06d}"
    problem = ""
    if jax.process_index() == 0:
      try:
        src.rename(dst)
      except OSError as e:
        problem = one_line(e)
    if _from_process_0([int(bool(problem))])[0]:
      raise CheckpointError(
          f"checkpoint {src} is unreadable and cannot be moved aside "
          f"({problem or 'see process 0'}); move it yourself") from None
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
      logging.warning("Closing the checkpoint manager failed: %s",
                      one_line(e))
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
  _QuietAsyncReadErrors.install()
  item_path = step_item_path(path)
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_subtree)
  stored = stored_tree(item_path)
  mismatch = shape_mismatches(
      {k: stored[k] for k in abstract_subtree if k in stored},
      abstract_subtree) if stored is not None else []
  resized = [m for m in mismatch if ": stored " in m]
  loaded, verdict, problem = None, _MISMATCH if resized else _READ, ""
  if not resized:
    # The handler, not a Checkpointer: no closing barrier that a process
    # whose read failed would never reach (see Checkpointer._read).
    handler = ocp.PyTreeCheckpointHandler()
    try:
      _injected_read_failure()
      loaded = handler.restore(item_path, args=ocp.args.PyTreeRestore(
          item=abstract_subtree, restore_args=restore_args,
          partial_restore=True))
    except Exception as e:  # noqa: BLE001
      verdict, problem = (_MISMATCH, "") if mismatch else (_UNREADABLE,
                                                            one_line(e))
    finally:
      handler.close()
  verdicts = _verdicts(verdict)
  if max(verdicts) == _READ:
    return loaded
  if max(verdicts) == _MISMATCH:
    differ = "; ".join(resized or mismatch) or (
        f"process {verdicts.index(_MISMATCH)} names the differing arrays")
    raise CheckpointMismatch(
        f"config.init_from={os.fspath(item_path.parent)!r} was written by a "
        f"different model ({differ}); use a run of the same architecture")
  where = problem or f"the read failed on process {verdicts.index(_UNREADABLE)}"
  raise CheckpointError(
      f"cannot read config.init_from={os.fspath(item_path)!r} ({where}); "
      "the checkpoint is damaged or incomplete: point config.init_from at "
      "another step folder (<workdir>/checkpoints/<step>) of that run")


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
  """absl-logging filter: orbax logs several INFO lines per save, two
  warnings about metadata that every read of `<step>/default` (the item
  folder, whose step metadata is one level up) or of an unreadable step
  prints (`Checkpointer.restore` reports unreadable steps itself), and the
  traceback of a failed background save when it happens (`save`, `wait`
  and `close` report it in one line when orbax hands it over)."""

  NOISE = ("Metadata file does not exist", "Failed to get item metadata")

  def filter(self, record) -> bool:
    if "/orbax/" not in record.pathname:
      return True
    if record.pathname.endswith("future.py") and record.levelno >= 40:
      return False  # a failed background save: re-raised as one line
    return record.levelno >= 30 and not str(record.msg).startswith(
        self.NOISE)


def quiet_orbax_info_logs() -> None:
  """For the command line: hides orbax's INFO log lines, its two metadata
  warnings and its background tracebacks (other warnings and errors still
  show), and the stray tracebacks of a failed read (`_QuietAsyncReadErrors`;
  `sys.stderr` is wrapped, so only a program that owns its process calls
  this)."""
  import sys  # noqa: PLC0415

  from absl import logging as absl_logging
  absl_logging.get_absl_handler().addFilter(_DropOrbaxInfo())
  _QuietAsyncReadErrors.install()
  if not isinstance(sys.stderr, _StrayTracebackFilter):
    sys.stderr = _StrayTracebackFilter(sys.stderr)
