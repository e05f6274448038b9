"""The step loop shared by pre-training, linear probing and fine-tuning.

Every job that trains something (`mi_ssl_jax.train` for pre-training,
`mi_ssl_jax.evaluators.linear.train_linear_probe`,
`mi_ssl_jax.finetune.train_classifier`) trains through `run` here, so they
share one state style, one non-finite policy, one checkpoint/resume path, one
metrics writer and one progress line.

State: a plain dict of pure pytrees (what jit donates and orbax saves),

  {"step": int32 [], "params": {...}, "rest": {...}, "opt": optax state,
   "nonfinite": int32 [] (skipped updates), "last_nonfinite": int32 []
   (0-based step of the last one, -1 if none), ...job-specific entries}

built by `init_state`; `params` / `rest` come from
`mi_ssl_jax.model_state.ModelCodec.split` (the `nnx.Param`s and every other
Variable).

Non-finite policy (`apply_gradients`): an update whose loss or gradient norm
is not finite is never applied, so a saved state is never poisoned; it is
counted. `run` reads the counters at each log step: with `nonfinite="stop"`
(default) it raises `NonFiniteError` (a `UserError`: `mi_ssl_jax.main`
prints it as one `error:` line), with `"skip"` it goes on.

A jitted step may run several optimizer steps per call (a `lax.scan`, as the
linear probe does: its steps are too small for one dispatch each); `run` is
told how many through `steps_in(batch)` and logs / checkpoints whenever a
multiple of `log_steps` / `ckpt_steps` is crossed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mi_ssl_jax import checkpointing, config_lib, errors, metrics_writer, paths
from mi_ssl_jax.errors import UserError


class TrainingError(UserError, RuntimeError):
  """A user-facing failure during training (printed as one line by main)."""


class NonFiniteError(TrainingError):
  """The loss or the gradients became NaN/inf and the policy is "stop"."""


Preempted = errors.Preempted  # a job saved its state and stopped early


NONFINITE_POLICIES = ("stop", "skip")


# ----------------------------------------------------------------- state ----


def init_state(params: Any, rest: Any, opt_state: Any) -> dict[str, Any]:
  """The train state at step 0 (see the module docstring)."""
  return {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest,
          "opt": opt_state, "nonfinite": jnp.zeros((), jnp.int32),
          "last_nonfinite": jnp.full((), -1, jnp.int32)}


def apply_gradients(state: Mapping[str, Any],
                    tx: optax.GradientTransformation, loss: jax.Array,
                    grads: Any, new_rest: Any,
                    post_update: Callable[[Any, Any], Any] | None = None
                    ) -> tuple[dict[str, Any], jax.Array, jax.Array]:
  """One optimizer update under the non-finite policy (inside jit).

  θ' = θ + tx(g), kept only if ok = isfinite(loss) ∧ isfinite(‖g‖₂); else
  params, rest and optimizer state keep their old values and the skip is
  counted (`nonfinite` += 1, `last_nonfinite` = step).

  Args:
    state: the current state (`init_state` keys).
    tx: the optimizer.
    loss: [] the step's loss.
    grads: gradients, same tree as `state["params"]`.
    new_rest: the non-Param variables after the forward pass (BatchNorm
      statistics, loss state).
    post_update: optional `(new_params, new_rest) -> new_rest` run after the
      update (e.g. an EMA teacher).

  Returns:
    (new state with `step` + 1, ‖g‖₂ [], ok [] bool).
  """
  params, rest, opt = state["params"], state["rest"], state["opt"]
  step = state["step"]
  grad_norm = optax.tree.norm(grads)
  updates, new_opt = tx.update(grads, opt, params)
  new_params = optax.apply_updates(params, updates)
  if post_update is not None:
    new_rest = post_update(new_params, new_rest)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(
      lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = {
      **state,
      "step": step + 1,
      "params": keep(new_params, params),
      "rest": keep(new_rest, rest),
      "opt": keep(new_opt, opt),
      "nonfinite": state["nonfinite"] + jnp.where(ok, 0, 1),
      "last_nonfinite": jnp.where(ok, state["last_nonfinite"], step),
  }
  return new_state, grad_norm, ok


def check_nonfinite_policy(policy: str, field: str = "config.nonfinite"
                           ) -> str:
  if policy not in NONFINITE_POLICIES:
    raise config_lib.ConfigError(
        f"{field} must be 'stop' or 'skip', got {policy!r}")
  return policy


# -------------------------------------------------------- run directory ----


class RunDir:
  """A run directory: its lock, its checkpoints and its metrics writer.

  Used as a context manager; everything opened is closed on exit (also on
  errors), and the lock is released last::

    with loop.RunDir(workdir, ckpt_steps) as run_dir:
      start, state = run_dir.restore_or_init(abstract, init_fn)
      writer = run_dir.open_writer(total_steps, start)
      ...
  """

  def __init__(self, workdir: str, ckpt_steps: int, *, keep: int = 2,
               keep_every: int | None = None, async_save: bool = True,
               checkpoints: str = "checkpoints",
               lock_stale_seconds: float | None = None):
    """Creates `workdir` (a `ConfigError` if it cannot be) and locks it.

    Args:
      workdir: the directory (local or gs://).
      ckpt_steps: checkpoint interval in steps.
      keep: newest checkpoints kept.
      keep_every: also keep every multiple of this step (None: none).
      async_save: write checkpoints in the background.
      checkpoints: sub-directory of the checkpoints.
      lock_stale_seconds: heartbeat age after which another host's lock is
        taken over (`config.lock_stale_seconds`; None: its default).
    """
    try:
      paths.makedirs(workdir)
    except OSError as e:
      raise config_lib.ConfigError(
          f"cannot create --workdir={workdir!r} ({e.strerror or e}); pick a "
          "writable directory") from None
    self.workdir = workdir
    self.ckpt_steps = int(ckpt_steps)
    self.lock = checkpointing.WorkdirLock(workdir, lock_stale_seconds)
    self.lock.acquire()
    self.writer = None
    try:
      self.ckpt = checkpointing.Checkpointer(
          paths.join(workdir, checkpoints), self.ckpt_steps, keep=keep,
          keep_every_steps=keep_every, async_save=async_save)
    except BaseException:
      self.lock.release()
      raise

  def restore_or_init(self, abstract: Any, init_fn: Callable[[], Any],
                      mismatch_hint: Callable[[], str] = lambda: ""
                      ) -> tuple[int, Any, bool]:
    """The newest checkpoint, else `init_fn()`.

    Args:
      abstract: the state's tree of `jax.ShapeDtypeStruct`s with shardings.
      init_fn: builds the initial state.
      mismatch_hint: text appended to a `CheckpointMismatch` (what changed).

    Returns:
      (start step, state, whether it was restored).
    """
    if self.ckpt.latest_step() is None:
      return 0, init_fn(), False
    try:
      step, state = self.ckpt.restore(abstract)
    except checkpointing.CheckpointMismatch as e:
      raise checkpointing.CheckpointMismatch(
          f"{e}{mismatch_hint()}; change the config back or use a new "
          "--workdir") from None
    logging.info("Resuming from checkpoint step %d in %s", step,
                 self.ckpt.directory)
    return int(step), state, True

  def open_writer(self, total_steps: int, start_step: int,
                  tensorboard: bool = False) -> metrics_writer.MetricsWriter:
    """The metrics writer (metrics.jsonl, TensorBoard, progress line)."""
    self.writer = metrics_writer.MetricsWriter(
        self.workdir, total_steps, start_step, tensorboard)
    return self.writer

  def __enter__(self) -> RunDir:
    return self

  def __exit__(self, *exc) -> None:
    try:
      self.ckpt.close()
      if self.writer is not None:
        self.writer.close()
    finally:
      self.lock.release()


@contextlib.contextmanager
def maybe_run_dir(workdir: str | None, ckpt_steps: int, **kw):
  """`RunDir(workdir, ...)`, or None (in memory) when `workdir` is None."""
  if workdir is None:
    yield None
    return
  with RunDir(workdir, ckpt_steps, **kw) as run_dir:
    yield run_dir


# ------------------------------------------------------------------ loop ----


@dataclasses.dataclass
class LoopResult:
  """What `run` ends with."""

  step: int  # the last step trained (the final step unless preempted)
  state: Any
  metrics: dict[str, float]  # last logged host metrics
  evals: dict[str, float]  # `evaluate` results of the last step
  evaluated_at: int | None  # last step `evaluate` returned results for
  preempted: bool


def crossed(prev: int, step: int, every: int | None) -> bool:
  """Whether a multiple of `every` lies in (prev, step]."""
  return bool(every) and step // every > prev // every


def _host_metrics(metrics: Any, window: list[Any] | None) -> dict[str, float]:
  """Scalars of the logged step (the last of a scanned call), or with a
  `window` the mean of every step since the previous log step."""
  if window is not None:
    rows = jax.device_get(window)
    return {k: float(np.mean(np.concatenate([np.ravel(r[k]) for r in rows])))
            for k in rows[-1]}
  return {k: float(np.ravel(v)[-1])
          for k, v in jax.device_get(metrics).items()}


@dataclasses.dataclass
class Loop:
  """How `run` trains: the step, its data, and what it logs and saves.

  Attributes:
    step_fn: jitted `(state, batch) -> (state, metrics)`; metrics are
      scalars, or [k] arrays when one call runs k steps.
    total_steps: the run's length.
    log_steps: log / check the non-finite counters when a multiple of this
      is crossed (also at the first and last call).
    run_dir: the `RunDir` (checkpoints, writer, lock), or None for a loop
      kept in memory (a periodic probe whose features are recomputed anyway).
    nonfinite: "stop" or "skip" (module docstring).
    nonfinite_hint: what the user can do, appended to a `NonFiniteError`.
    steps_in: optimizer steps one batch makes (default 1).
    log_extras: optional `(state, batch) -> {name: device scalar}` added to
      the logged metrics (method diagnostics).
    extras_steps: run `log_extras` on the first log line of a run (or
      resumed run), at the log steps that cross a multiple of this and at
      the last step; 0: never; None: at every log step.
    evaluate: optional `(step, state) -> {name: float}` after every call
      (periodic evaluators); results are written without a progress line.
    window_mean: log the mean of the metrics over the steps since the
      previous multiple of `log_steps` instead of the logged step's.
    transfer_guard: `jax.transfer_guard` level around each call (None: the
      surrounding one).
    what: the job's name in messages ("training", "linear probe", ...).
    watchdog: optional `mi_ssl_jax.watchdog.Watchdog` that times each phase
      of an iteration (step, log, diagnostics, evaluate, checkpoint) and
      ends a stalled process; entered for the duration of `run`.
  """

  step_fn: Callable[[Any, Any], tuple[Any, Any]]
  total_steps: int
  log_steps: int
  run_dir: RunDir | None = None
  nonfinite: str = "stop"
  nonfinite_hint: str = ("Lower base_lr, set grad_clip_norm, check the "
                         "inputs, or set config.nonfinite='skip'")
  steps_in: Callable[[Any], int] | None = None
  log_extras: Callable[[Any, Any], Mapping[str, Any]] | None = None
  extras_steps: int | None = None
  evaluate: Callable[[int, Any], Mapping[str, float]] | None = None
  window_mean: bool = False
  transfer_guard: str | None = None
  what: str = "training"
  watchdog: Any = None

  def _extras_due(self, prev: int, step: int, due: bool, first: bool
                  ) -> bool:
    """Whether the log line of the call (prev, step] runs `log_extras`."""
    if self.log_extras is None or self.extras_steps == 0:
      return False
    if self.extras_steps is None or first:  # every line / the first one
      return True
    return due and (step >= self.total_steps
                    or crossed(prev, step, self.extras_steps))

  def _log(self, step: int, start_step: int, state: Any, batch: Any,
           metrics: Any, window: list[Any] | None, extras: bool,
           phase: Callable[[str, int], Any]) -> dict[str, float]:
    host = _host_metrics(metrics, window)
    if extras:
      with phase("diagnostics", step):
        host.update({k: float(v) for k, v in jax.device_get(
            self.log_extras(state, batch)).items()})
    skipped, last_bad = jax.device_get(
        (state["nonfinite"], state["last_nonfinite"]))
    host["skipped_steps"] = float(skipped)
    if self.run_dir is not None:
      self.run_dir.writer.write_scalars(step, host)
      self.run_dir.lock.heartbeat()
    if last_bad >= start_step and self.nonfinite == "stop":
      raise NonFiniteError(
          f"non-finite loss or gradient at step {int(last_bad) + 1} "
          f"(loss={host.get('loss', float('nan')):.4g}); that update was "
          f"not applied and no bad state was saved. {self.nonfinite_hint}")
    return host

  def _save(self, prev: int, step: int, state: Any) -> tuple[bool, bool]:
    """(saved, preempted) after the call that ended at `step`."""
    ckpt = self.run_dir.ckpt
    # A scanned call can jump over a multiple of ckpt_steps: save there.
    every = self.run_dir.ckpt_steps
    saved = ckpt.save(step, state, force=crossed(prev, step, every)
                      and step % every != 0)
    if saved and self.run_dir.writer is not None:
      # The rows up to a checkpoint are written with it (a remote
      # metrics.jsonl buffers them): a resume from it misses none.
      self.run_dir.writer.flush_rows()
    if ckpt.reached_preemption(step):
      if not saved:
        ckpt.save(step, state, force=True)
        if self.run_dir.writer is not None:
          self.run_dir.writer.flush_rows()
      logging.warning("Preempted at step %d: checkpoint saved; rerun the "
                      "same command to continue.", step)
      return True, True
    return saved, False

  def run(self, state: Any, batches: Iterable[Any], start_step: int = 0
          ) -> LoopResult:
    """Trains from `start_step` to `total_steps` (or a preemption).

    Args:
      state: the state at `start_step` (restored or initial).
      batches: device batches from `start_step` on.
      start_step: the step `state` is at.

    Raises:
      TrainingError: the batches ran out.
      NonFiniteError: a non-finite update under the "stop" policy.
    """
    check_nonfinite_policy(self.nonfinite)
    it = iter(batches)
    host, evals, evaluated_at = {}, {}, None
    saved, preempted, step = True, False, start_step
    window = [] if self.window_mean else None
    guard = lambda: (jax.transfer_guard(self.transfer_guard)
                     if self.transfer_guard else contextlib.nullcontext())
    watchdog = (self.watchdog if self.watchdog is not None
                else contextlib.nullcontext())
    with watchdog:
      # `phase(name, step)`: the watchdog's timer of one phase.
      phase = lambda name, at: (
          self.watchdog.phase(name, at) if self.watchdog is not None
          else contextlib.nullcontext())
      while step < self.total_steps:
        prev = step
        with phase("step", prev + 1):
          # (A corrupt image found while reading raises DatasetError, a
          # UserError: one line from main.)
          batch = next(it, None)
          if batch is None:
            raise TrainingError(f"the {self.what} data ran out at step "
                                f"{step + 1} of {self.total_steps}")
          step += 1 if self.steps_in is None else int(self.steps_in(batch))
          with guard():
            state, metrics = self.step_fn(state, batch)
        if window is not None:
          window.append(metrics)
        if self.run_dir is not None:
          self.run_dir.writer.step_done(step)
        due = crossed(prev, step, self.log_steps) or step >= self.total_steps
        if due or prev == start_step:
          with phase("log", step):
            host = self._log(step, start_step, state, batch, metrics, window,
                             self._extras_due(prev, step, due,
                                              prev == start_step), phase)
          if window is not None and due:  # the first line keeps its window
            window = []
        with phase("evaluate", step):
          evals = dict(self.evaluate(step, state)) if self.evaluate else {}
        if evals:
          if self.run_dir is not None:
            self.run_dir.writer.write_scalars(step, evals, progress=False)
          evaluated_at = step
        if self.run_dir is not None:
          with phase("checkpoint", step):
            saved, preempted = self._save(prev, step, state)
          if preempted:
            break
      if self.run_dir is not None and not saved:
        with phase("checkpoint", step):
          self.run_dir.ckpt.save(step, state, force=True)
    return LoopResult(step=step, state=state, metrics=host, evals=evals,
                      evaluated_at=evaluated_at, preempted=preempted)


def train_job(state: Any, step_fn: Callable[[Any, Any], tuple[Any, Any]],
              batches: Callable[[int], Iterable[Any]], *, total_steps: int,
              log_steps: int, workdir: str | None = None,
              ckpt_steps: int = 1000, what: str = "training",
              lock_stale_seconds: float | None = None, **loop_kw: Any
              ) -> LoopResult:
  """`Loop.run` for the training inside a job (linear probe, fine-tuning).

  In memory (`workdir` None), or in the run directory `workdir`: resumed
  from its newest checkpoint, checkpointed every `ckpt_steps` and at the
  end (only the newest kept), `metrics.jsonl` and the progress line.

  Args:
    state: the initial state, placed with the shardings the step expects
      (a restore reuses them).
    step_fn: jitted `(state, batch) -> (state, metrics)`.
    batches: `start_step -> device batches from that step on`.
    total_steps: the run's length.
    log_steps: log interval.
    workdir: the run directory, or None.
    ckpt_steps: checkpoint interval.
    what: the job's name in messages.
    lock_stale_seconds: see `RunDir`.
    **loop_kw: further `Loop` fields (nonfinite, steps_in, window_mean...).

  Raises:
    Preempted: SIGTERM (or a preemption notice) stopped it; state saved.
  """
  with maybe_run_dir(workdir, ckpt_steps, keep=1,
                     lock_stale_seconds=lock_stale_seconds) as run_dir:
    start = 0
    if run_dir is not None:
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=x.sharding), state)
      start, state, _ = run_dir.restore_or_init(abstract, lambda: state)
      run_dir.open_writer(total_steps, start)
    out = Loop(step_fn, total_steps, log_steps, run_dir, what=what,
               **loop_kw).run(state, batches(start), start)
  if out.preempted:
    raise Preempted(f"{what} stopped at step {out.step} with its state "
                    f"saved in {workdir}; rerun the same command to "
                    "continue")
  return out
